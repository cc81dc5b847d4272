"""The symbolic network: symbols, shapes, forward expressions and the loss.

How it works: every entry of every variable is its own SymPy symbol (see :mod:`symbp.names`). The
forward pass is a list of *stages* ``z1, a1, z2, a2, ..., zL, aL``; each stage holds a matrix of symbols
and a matrix of *local* expressions giving each entry in terms of the symbols of earlier stages and the
parameters (``z1_0_0 = W1_0_0*x_0_0 + ... + b1_0_0``, ``a1_0_0 = relu(z1_0_0)``). Substituting the local
expressions into one another writes the whole network out (:meth:`MLP.written_out`), which is what the
``expand`` method differentiates; the ``chain`` method works on the local expressions instead.

Conventions (see the README): single example (``batch=None``): column vectors, ``z_l = W_l a_{l-1} + b_l``;
batch of ``N``: rows are examples, ``z_l = a_{l-1} W_l^T + 1_N b_l^T``, and the loss is the mean (or sum)
of the per-example losses. With ``residual``, a hidden layer whose width equals its input's gets
``a_l = a_{l-1} + f(z_l)``.
"""

from __future__ import annotations

from functools import cached_property

from . import registry
from .errors import SymbpError
from .stages import Stage, Staged


class MLP(Staged):
    """A multilayer perceptron written symbolically, entry by entry.

    >>> net = MLP([4, 5, 3, 3], hidden="relu", output="softmax", loss="cross_entropy")
    >>> net.shape("W1"), net.shape("z3"), net.params
    ((5, 4), (3, 1), ('W1', 'b1', 'W2', 'b2', 'W3', 'b3'))
    >>> net.local("a1")[0]
    relu(z1_0_0)
    >>> MLP([2, 3], output="identity", loss="mse", batch=4).shape("z1")
    (4, 3)
    """

    def __init__(self, sizes, *, hidden="relu", output="softmax", loss="cross_entropy", bias=True,
                 batch=None, reduction="mean", residual=False):
        self.sizes = _check_sizes(sizes)
        self.L = len(self.sizes) - 1
        self.hidden = _check_hidden(hidden, self.L)
        self.output = registry.output(output)
        self.loss_row = registry.loss(loss)
        if self.loss_row.needs_unit_interval and not self.output.in_unit_interval:
            raise SymbpError(f"loss '{loss}' takes the log of the outputs, which output '{output}' does not "
                             "keep in (0, 1); use output 'softmax' or 'sigmoid', or loss 'mse'")
        self.fused = registry.FUSED.get((self.output.name, self.loss_row.name))
        if not isinstance(bias, bool):
            raise SymbpError(f"bias: expected true or false, got {bias!r}")
        self.bias = bias
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 0):
            raise SymbpError(f"batch: expected a positive number of examples (or 0/None for one example), got {batch!r}")
        self.batch = batch or None
        if reduction not in ("mean", "sum"):
            raise SymbpError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.residual_layers = _check_residual(residual, self.sizes)
        self.stages = self._build_stages()
        self._stage = {s.name: s for s in self.stages}

    # ------------------------------------------------------------------ names and shapes

    @property
    def params(self) -> tuple[str, ...]:
        names = []
        for l in range(1, self.L + 1):
            names += [f"W{l}", f"b{l}"] if self.bias else [f"W{l}"]
        return tuple(names)

    @property
    def intermediates(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("x", "y")

    @property
    def names(self) -> tuple[str, ...]:
        return self.inputs + self.params + self.intermediates

    def shape(self, name: str) -> tuple[int, int]:
        """The shape of variable ``name`` (``x, y, W1, b1, z1, a1, ...``; ``a0`` is ``x``)."""
        if not isinstance(name, str):
            raise SymbpError(f"a variable's name is a string such as 'W1', not {type(name).__name__} {name!r}")
        if name == "a0":
            name = "x"
        kind, layer = name[:1], name[1:]
        if name in ("x", "y"):
            width = self.sizes[0] if name == "x" else self.sizes[-1]
            return (self.batch, width) if self.batch else (width, 1)
        if not layer.isdigit() or not 1 <= int(layer) <= self.L or kind not in "Wbza" or \
                (kind == "b" and not self.bias):
            raise SymbpError(f"unknown variable '{name}'; this network has {', '.join(self.names)}")
        l = int(layer)
        if kind == "W":
            return (self.sizes[l], self.sizes[l - 1])
        if kind == "b":
            return (self.sizes[l], 1)
        return (self.batch, self.sizes[l]) if self.batch else (self.sizes[l], 1)

    @property
    def columns(self) -> set[str]:
        """Names of the variables that are column vectors (for printing one index)."""
        single = {"x", "y"} | set(self.intermediates) if not self.batch else set()
        return single | {f"b{l}" for l in range(1, self.L + 1)}

    @property
    def n_params(self) -> int:
        return sum(r * c for r, c in map(self.shape, self.params))


    def size_names(self) -> dict[str, int]:
        """The sizes as names of the formula language: ``n0, ..., nL`` (the widths) and, when batched,
        ``N`` (the batch size). Claims may write them anywhere a number may (``(a2 - y) / n2``).

        >>> MLP([4, 5, 3], batch=8).size_names()
        {'n0': 4, 'n1': 5, 'n2': 3, 'N': 8}
        """
        names = {f"n{l}": n for l, n in enumerate(self.sizes)}
        if self.batch:
            names["N"] = self.batch
        return names

    def activation(self, layer: int):
        """The registry row of hidden layer ``layer`` (1-based), or the output row for the last."""
        return self.output if layer == self.L else self.hidden[layer - 1]

    # ------------------------------------------------------------------ forward

    def _layers(self):
        """This MLP as layers of the op table: ``affine`` (z_l, W_l, b_l), then its activation (a_l);
        a residual hidden layer's activation adds its input in the same stage."""
        from .ops import OPS, activation_op
        from .ops.table import skip_activation_op

        layers = []
        for l in range(1, self.L + 1):
            affine = {"op": "affine", "out": self.sizes[l], "bias": self.bias, "name": f"z{l}", "W": f"W{l}"}
            if self.bias:
                affine["b"] = f"b{l}"
            layers.append(affine)
            if l < self.L:
                row = self.hidden[l - 1]
                if l in self.residual_layers:
                    layers.append({"op": skip_activation_op(row), "name": f"a{l}",
                                   "from": f"a{l - 1}" if l > 1 else "x"})
                else:
                    layers.append({"op": activation_op(row), "name": f"a{l}"})
            else:
                layers.append({"op": OPS[self.output.name], "name": f"a{l}"})
        return layers

    @cached_property
    def network(self):
        """The same network as a :class:`symbp.layers.Network` (its stages are this MLP's)."""
        from .layers import Network

        return Network(self._layers(), input=self.sizes[0], batch=self.batch, loss=self.loss_row,
                       reduction=self.reduction)

    def _build_stages(self):
        """The stages of :attr:`network`, each labelled with its MLP layer (``z2`` and ``a2``: 2)."""
        return [Stage(s.name, int(s.name[1:]), s.symbols, s.local) for s in self.network.stages]

    @property
    def output_name(self) -> str:
        """The last output, ``aL``: what the loss reads."""
        return f"a{self.L}"

    @property
    def loss_stage(self) -> str:
        """The stage :attr:`local_loss` is written in: ``zL`` (fused pair) or ``aL``."""
        return f"z{self.L}" if self.fused else f"a{self.L}"

    # ------------------------------------------------------------------ presentation

    def describe(self) -> str:
        """One line: sizes, activations, loss, batch convention.

        >>> MLP([4, 5, 3, 3]).describe()
        'MLP [4, 5, 3, 3]: hidden relu, relu; output softmax; loss cross_entropy; one example (column vectors); with biases'
        """
        hidden = ", ".join(a.name for a in self.hidden) or "none"
        batch = (f"batch of {self.batch} (rows are examples, {self.reduction} over the batch)"
                 if self.batch else "one example (column vectors)")
        text = (f"MLP {list(self.sizes)}: hidden {hidden}; output {self.output.name}; loss {self.loss_row.name}; "
                f"{batch}; {'with' if self.bias else 'no'} biases")
        if self.residual_layers:
            text += f"; residual layers {', '.join(map(str, self.residual_layers))}"
        return text

    def __repr__(self):
        hidden = [a.name for a in self.hidden]
        hidden = hidden[0] if len(set(hidden)) == 1 else hidden
        extra = f", batch={self.batch}, reduction={self.reduction!r}" if self.batch else ""
        extra += "" if self.bias else ", bias=False"
        extra += f", residual={list(self.residual_layers)}" if self.residual_layers else ""
        return (f"MLP({list(self.sizes)}, hidden={hidden!r}, output={self.output.name!r}, "
                f"loss={self.loss_row.name!r}{extra})")


def _check_sizes(sizes):
    if isinstance(sizes, str) or not hasattr(sizes, "__iter__"):
        raise SymbpError(f"sizes: expected a list of layer widths such as [4, 5, 3, 3], got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise SymbpError(f"sizes {sizes}: need at least two widths (input and output)")
    for k, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SymbpError(f"sizes {sizes}: width n{k} = {n!r} must be a positive integer")
    return tuple(sizes)


def _check_hidden(hidden, L):
    if isinstance(hidden, (list, tuple)):
        if len(hidden) != L - 1:
            raise SymbpError(f"hidden: {len(hidden)} activations given for {L - 1} hidden layer(s)")
        return tuple(registry.activation(h) for h in hidden)
    return tuple([registry.activation(hidden)] * (L - 1))


def _check_residual(residual, sizes):
    qualify = [l for l in range(1, len(sizes) - 1) if sizes[l] == sizes[l - 1]]
    if residual is False or residual is None:
        return ()
    if residual is True:
        if not qualify:
            raise SymbpError(f"residual: no hidden layer of {list(sizes)} has the width of its input "
                             "(a_l = a_(l-1) + f(z_l) needs n_l = n_(l-1))")
        return tuple(qualify)
    if isinstance(residual, (str, bytes)) or not hasattr(residual, "__iter__"):
        raise SymbpError(f"residual: expected true, false or a list of hidden layers (1-based), got {residual!r}")
    layers = list(residual)
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or l not in qualify:
            raise SymbpError(f"residual: layer {l} cannot have a skip connection in {list(sizes)} "
                             f"(layers that can: {', '.join(map(str, qualify)) or 'none'})")
    return tuple(sorted(set(layers)))
