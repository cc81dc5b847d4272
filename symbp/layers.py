"""Networks of layers: an input, a list of ops of :mod:`symbp.ops` applied in order, and a loss.

How it works: each layer is a row of the op table with its fields, its parameter names and its output
name. Building the network walks the layers once: every parameter and every output gets a matrix of
symbols (one per entry, :mod:`symbp.names`), and each output (and each internal stage an op defines,
such as attention's ``Q`` or a norm's mean) becomes a :class:`~symbp.stages.Stage` whose *local*
expressions give each entry in the symbols of its inputs, exactly as the stages of an MLP. Everything
downstream (``derive``'s chain and expand methods, the written-out loss) reads only the stages, so a
layer norm is derived by ``sympy.diff`` of its forward like a dense layer.

Conventions (those of :class:`symbp.MLP`): one example (``batch=None``) is a column per variable, ``x``
is ``(n0, 1)``; a batch has one row per example, ``x`` is ``(N, n0)``; the loss is summed over the output
units as its registry row says (or as the expression given) and averaged (``"mean"``) or summed over
the examples. For attention the rows are the tokens of one sequence.

>>> net = network([{"op": "affine", "out": 3}, {"op": "layernorm"}, {"op": "relu"},
...                {"op": "affine", "out": 2}, {"op": "softmax"}], input=4, batch=2)
>>> net.intermediates
('z1', 'ln2mean', 'ln2var', 'ln2', 'a1', 'z2', 'a2')
>>> net.params, net.shape("gamma2"), net.shape("ln2mean")
(('W1', 'b1', 'gamma2', 'beta2', 'W2', 'b2'), (3, 1), (2, 1))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Mapping

import sympy as sp

from . import registry
from .errors import SymbpError, closest
from .expression import literal, parse_scalar
from .stages import Stage, Staged
from .ops import REQUIRED, Context, Op, activation_op, op as lookup

RESERVED = frozenset({"x", "y", "N", "pi", "a0"})


@dataclass(frozen=True)
class Layer:
    """One layer: its op, where it is, what it is called, what it reads and its settings."""

    position: int  # 1-based
    op: Op
    name: str  # its output
    inp: str  # the output it reads ("x" for the first layer)
    params: Mapping[str, str]  # role -> parameter name
    extra: Mapping[str, str]  # field -> name of another input (add's "from", dropout's "mask")
    stages: Mapping[str, str]  # internal stage -> its name
    cfg: Mapping[str, object]
    n_in: int
    n_out: int

    @property
    def label(self) -> str:
        """How messages name it: ``layer 3 (ln2, layernorm)``."""
        return f"layer {self.position} ({self.name}, {self.op.name})"

    def context(self, net) -> Context:
        mean = " / N" if net.batch and net.reduction == "mean" else ""
        return Context(self.name, self.inp, self.params, self.extra, self.stages, self.cfg, net.batch,
                       self.n_in, self.n_out, mean)


class Loss:
    """A loss given as an expression in ``a`` and ``y``, summed over the output units of an example."""

    def __init__(self, text: str):
        self.a, self.y = sp.Symbol("a", real=True), sp.Symbol("y", real=True)
        self.expression = parse_scalar(text, {"a": self.a, "y": self.y}, what="loss")
        if self.a not in self.expression.free_symbols:
            raise SymbpError(f"loss {text!r}: does not depend on a (the network's output)")
        self.name = text
        self.text = text
        self.latex = r"\sum_{k} \ell(a_{k}, y_{k})"
        self.needs_unit_interval = False

    def sympy(self, a, y):
        return sp.Add(*[self.expression.xreplace({self.a: ak, self.y: yk}) for ak, yk in zip(a, y)])

    @cached_property
    def _numpy(self):
        modules = [registry.NUMPY_FUNCTIONS, "numpy"]
        return (sp.lambdify([self.a, self.y], self.expression, modules=modules),
                sp.lambdify([self.a, self.y], sp.diff(self.expression, self.a), modules=modules))

    def numpy(self, a, y):
        import numpy as np

        with np.errstate(all="ignore"):
            return (self._numpy[0](a, y) + np.zeros_like(a)).sum(axis=1)

    def numpy_grad(self, a, y):
        import numpy as np

        with np.errstate(all="ignore"):
            return self._numpy[1](a, y) + np.zeros_like(a)

    @property
    def backward(self) -> str | None:
        from .formula import formula_text

        return formula_text(sp.diff(self.expression, self.a), {"a": "a", "y": "y"})


def loss_row(spec):
    """A registry loss by name, or a :class:`Loss` from an expression in ``a`` and ``y``."""
    if isinstance(spec, (registry.Loss, Loss)):
        return spec
    if not isinstance(spec, str):
        raise SymbpError(f"loss: expected a name or an expression in a and y, got {spec!r}")
    if spec in registry.LOSSES:
        return registry.LOSSES[spec]
    if spec.isidentifier():
        raise SymbpError(f"unknown loss '{spec}'{closest(spec, registry.LOSSES)}; known: "
                         f"{', '.join(registry.LOSSES)}, or an expression in a and y such as 'log(cosh(a - y))'")
    return Loss(spec)


class Network(Staged):
    """A network of layers written symbolically, entry by entry (see the module docstring).

    The interface is :class:`symbp.MLP`'s: ``params``, ``intermediates``, ``inputs``, ``names``,
    ``shape``, ``symbols``, ``grad_symbols``, ``stages``, ``local``, ``loss``, ``loss_from``..., so
    that ``derive``, ``verify`` and the rest take either.
    """

    def __init__(self, layers, *, input, batch=None, loss="cross_entropy", reduction="mean"):
        if isinstance(input, bool) or not isinstance(input, int) or input < 1:
            raise SymbpError(f"input: expected the number of features per example (a positive whole number), "
                             f"got {input!r}")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 0):
            raise SymbpError(f"batch: expected a positive number of examples (or 0/None for one example), got {batch!r}")
        if reduction not in ("mean", "sum"):
            raise SymbpError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        if isinstance(layers, (str, bytes, Mapping)) or not hasattr(layers, "__iter__"):
            raise SymbpError(f"layers: expected a list of layers such as [{{'op': 'affine', 'out': 5}}], got {layers!r}")
        self.input_width, self.batch, self.reduction = input, batch or None, reduction
        self.loss_row = loss_row(loss)
        self.layers = self._read_layers(list(layers))
        if not self.layers:
            raise SymbpError("layers: a network needs at least one layer")
        last = self.layers[-1]
        self.fused = registry.FUSED.get((last.op.name, self.loss_row.name))
        if self.loss_row.needs_unit_interval and not _unit_interval(last.op):
            raise SymbpError(f"loss '{self.loss_row.name}' takes the log of the outputs, which {last.label} "
                             "does not keep in (0, 1); end with softmax or sigmoid, or use loss 'mse'")
        self.stages, self._stage = [], {}
        self._build_stages()
        self.stages = tuple(self.stages)

    # ------------------------------------------------------------------ reading the layers

    def _read_layers(self, specs):
        layers, used, widths, affines = [], {"x": self.input_width}, {}, 0
        masks = {}
        prev, n_in = "x", self.input_width
        for position, spec in enumerate(specs, 1):
            if not isinstance(spec, Mapping):
                raise SymbpError(f"layer {position}: expected a table of fields such as op = \"affine\", got {spec!r}")
            name_of_op = spec.get("op")
            given = f" ({spec['name']})" if isinstance(spec.get("name"), str) else ""
            if name_of_op is None:
                raise SymbpError(f"layer {position}{given}: missing field 'op' (such as op = \"affine\")")
            if isinstance(name_of_op, Op):  # a row given directly (symbp.MLP's builder; tests of rows)
                row_op, allowed = name_of_op, set()
            elif name_of_op == "activation":
                given = f" ({spec['name']}, activation)" if given else " (activation)"
                if "expr" not in spec:
                    raise SymbpError(f"layer {position}{given}: missing field 'expr' (an expression in x)")
                try:
                    row = registry.custom_activation(spec["expr"])
                except SymbpError as error:
                    raise SymbpError(f"layer {position}{given}: {error}") from None
                row_op, allowed = activation_op(row), {"expr"}
            else:
                try:
                    row_op = lookup(name_of_op)
                except SymbpError as error:
                    raise SymbpError(f"layer {position}{given}: {error}") from None
                allowed = set()
            affines += row_op.name == "affine"
            number = affines if row_op.prefix in ("z", "a") and affines else position
            name = spec.get("name", f"{row_op.prefix}{number}")
            label = f"layer {position} ({name}, {row_op.name})"
            cfg = {}
            for key, default in row_op.fields.items():
                if key in spec:
                    cfg[key] = _value(spec[key], default, f"{label}: {key}")
                elif default is REQUIRED:
                    raise SymbpError(f"{label}: missing field '{key}'{_REQUIRED_HINTS.get(key, '')}")
                else:
                    cfg[key] = default
            roles = [r for r in row_op.params if _has_param(row_op, r, cfg)]
            known = {"op", "name", *row_op.fields, *row_op.params, *allowed}
            for key in spec:
                if key not in known:
                    raise SymbpError(f"{label}: unknown field '{key}'{closest(str(key), known)}; "
                                     f"{row_op.name} takes {', '.join(sorted(known - {'op'}))}")
            default_param = (lambda r: f"{r}{affines}") if row_op.name == "affine" else (lambda r: f"{r}{position}")
            params = {r: spec.get(r, default_param(r)) for r in roles}
            stages = {k: f"{name}{k}" for k in row_op.stages}
            extra = {}
            for key in row_op.extra:
                extra[key] = cfg[key]
            for new in [name, *params.values(), *stages.values()]:
                self._check_name(new, label, used)
                used[new] = label
            for key, other in extra.items():
                if key == "mask":
                    self._check_name(other, label, used)
                    used[other] = label
                    masks[other] = (self.batch or 1, n_in)
                elif other not in widths and other != "x":
                    raise SymbpError(f"{label}: {key} = {other!r} is not an earlier output; earlier: "
                                     f"{', '.join(['x', *widths]) }")
                elif (widths.get(other, self.input_width)) != n_in:
                    raise SymbpError(f"{label}: {key} = {other!r} has {widths.get(other, self.input_width)} "
                                     f"features per example, {prev} has {n_in}; add needs the same shape")
            if row_op.check is not None:
                problem = row_op.check(cfg, n_in, self.batch)
                if problem:
                    raise SymbpError(f"{label}: {problem}")
            n_out = row_op.width(cfg, n_in)
            layers.append(Layer(position, row_op, name, prev, params, extra, stages, cfg, n_in, n_out))
            widths[name] = n_out
            prev, n_in = name, n_out
        self._masks = masks
        return tuple(layers)

    def _check_name(self, name, label, used):
        if not isinstance(name, str) or not name.isascii() or not name.isidentifier() or "_" in name:
            raise SymbpError(f"{label}: name {name!r} must be a letter followed by letters and digits")
        if name in RESERVED or name in _FUNCTION_NAMES or re.fullmatch(r"n\d+", name):
            raise SymbpError(f"{label}: name {name!r} is reserved (x, y, N, pi, the sizes n0, n1, ... and the "
                             "function names)")
        if name in used:
            raise SymbpError(f"{label}: name {name!r} is already used by {used[name]}")
        if name.startswith("d"):
            raise SymbpError(f"{label}: name {name!r} begins with d, which claims read as a gradient "
                             f"(dV is dL/dV); choose another")

    # ------------------------------------------------------------------ names and shapes

    @cached_property
    def params(self) -> tuple[str, ...]:
        return tuple(p for layer in self.layers for p in layer.params.values())

    @property
    def intermediates(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The layers' outputs (the intermediates without the internal stages)."""
        return tuple(layer.name for layer in self.layers)

    @property
    def output_name(self) -> str:
        """The last layer's output: what the loss reads."""
        return self.layers[-1].name

    @property
    def masks(self) -> tuple[str, ...]:
        return tuple(self._masks)

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("x", "y", *self._masks)

    @property
    def names(self) -> tuple[str, ...]:
        return self.inputs + self.params + self.intermediates

    def layer_of(self, name: str) -> Layer | None:
        """The layer that defines output or stage ``name`` (or owns parameter ``name``)."""
        for layer in self.layers:
            if name == layer.name or name in layer.stages.values() or name in layer.params.values():
                return layer
        return None

    def _rows_shape(self, name):
        if name in ("x", "a0"):
            return (self.batch or 1, self.input_width)
        if name == "y":
            return (self.batch or 1, self.layers[-1].n_out)
        if name in self._masks:
            return self._masks[name]
        return None

    def shape(self, name: str) -> tuple[int, int]:
        """The shape of variable ``name`` (inputs, parameters, outputs and internal stages)."""
        if not isinstance(name, str):
            raise SymbpError(f"a variable's name is a string such as 'W1', not {type(name).__name__} {name!r}")
        rows = self._rows_shape(name)
        if rows is not None:
            return rows if self.batch else (rows[1], rows[0])
        for layer in self.layers:
            for role, param in layer.params.items():
                if param == name:
                    return layer.op.param_shape(role, layer.cfg, layer.n_in)
        stage = self._stage.get(name)
        if stage is not None:
            return stage.symbols.shape
        raise SymbpError(f"unknown variable '{name}'{closest(name, self.names)}; this network has {', '.join(self.names)}")

    @property
    def columns(self) -> set[str]:
        """Names of the variables that are column vectors (printed with one index)."""
        cols = {n for n in self.params if self.shape(n)[1] == 1}
        if not self.batch:
            cols |= {"x", "y", *self._masks, *(s.name for s in self.stages if s.symbols.cols == 1)}
        return cols

    @property
    def n_params(self) -> int:
        return sum(r * c for r, c in map(self.shape, self.params))

    def size_names(self) -> dict:
        """The sizes by name, for claims: ``n0`` (the input's width), ``n_<name>`` for every output and
        stage (its features per example), and ``N`` for a batch."""
        sizes = {"n0": self.input_width, "n_x": self.input_width}
        for stage in self.stages:
            rows, cols = stage.symbols.shape
            sizes[f"n_{stage.name}"] = cols if self.batch else rows
        if self.batch:
            sizes["N"] = self.batch
        return sizes

    # ------------------------------------------------------------------ forward

    def _rows(self, M):
        return M if self.batch else M.T

    def _add(self, stage):
        self.stages.append(stage)
        self._stage[stage.name] = stage

    def _build_stages(self):
        for layer in self.layers:
            X = self._rows(self.symbols(layer.inp))
            P = {role: self.symbols(name) for role, name in layer.params.items()}
            E = {key: self._rows(self.symbols(name)) for key, name in layer.extra.items()}

            def stage(key, local, layer=layer):
                name = layer.stages[key]
                symbols = self._symbols(name, self._rows(local).shape)
                self._add(Stage(name, layer.position, symbols, self._rows(local)))
                return self._rows(symbols)

            local = self._rows(layer.op.forward(X, P, E, layer.cfg, stage))
            self._add(Stage(layer.name, layer.position, self._symbols(layer.name, local.shape), local))

    @property
    def loss_stage(self) -> str:
        """The stage :attr:`local_loss` is written in: the last layer's input when the output/loss pair is
        written in the logits (softmax + cross-entropy: log-sum-exp), else the last output."""
        return self.layers[-1].inp if self.fused else self.output_name

    # ------------------------------------------------------------------ presentation

    def describe(self) -> str:
        """One line: the layers, the loss, the batch convention.

        >>> network([{"op": "affine", "out": 2}, {"op": "tanh"}], input=3, loss="mse").describe()
        'network of 2 layers: affine z1 (2), tanh a1 (2); input 3; loss mse; one example (column vectors)'
        """
        parts = ", ".join(f"{layer.op.name} {layer.name} ({layer.n_out})" for layer in self.layers)
        batch = (f"batch of {self.batch} (rows are examples, {self.reduction} over the batch)"
                 if self.batch else "one example (column vectors)")
        return (f"network of {len(self.layers)} layers: {parts}; input {self.input_width}; "
                f"loss {self.loss_row.name}; {batch}")

    def __repr__(self):
        return f"<symbp network: {self.describe()}>"


_FUNCTION_NAMES = frozenset({"relu", "leaky_relu", "step", "sigmoid", "tanh", "softplus", "exp", "log", "softmax",
                             "sum", "ones", "diag", "outer", "mean", "var", "sqrt", "erf", "cosh", "gelu", "silu",
                             "elu"})


EPS_DEFAULT = Fraction(1, 100000)  # for the doctest of _value: any Fraction default reads a number

#: What a missing required field holds, for its message.
_REQUIRED_HINTS = {
    "out": " (its number of output units, e.g. out = 5)",
    "dk": " (the head's width, e.g. dk = 4)",
    "mask": " (the name of its 0/1 mask, an input like x, e.g. mask = \"m1\")",
    "from": " (the earlier output to add, e.g. from = \"z1\")",
}


def _has_param(row: Op, role: str, cfg) -> bool:
    if role == "b":
        return bool(cfg.get("bias", True))
    if role in ("gamma", "beta") and "affine" in row.fields:
        return bool(cfg.get("affine", True))
    return True


def _value(value, default, where):
    """A field's value, checked against the type of its default. A number field (a :class:`Fraction`
    default) is exact: a string or a float is read as the decimal it is written as (a float's ``repr``,
    which the spec reader makes the text of the file: ``1e-5`` is ``1/100000``, ``-0.5`` is ``-1/2``).

    >>> _value("1e-5", EPS_DEFAULT, "eps"), _value(-0.5, EPS_DEFAULT, "p"), _value(2, EPS_DEFAULT, "p")
    (Fraction(1, 100000), Fraction(-1, 2), Fraction(2, 1))
    """
    if default is REQUIRED:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SymbpError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, Fraction):
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Fraction)):
            raise SymbpError(f"{where}: expected a number, got {value!r}")
        if not isinstance(value, (float, str)):
            return Fraction(value)
        text = (repr(value) if isinstance(value, float) else value).strip()  # a float's repr: its shortest decimal
        sign = -1 if text.startswith("-") else 1
        try:
            return sign * literal(text[1:] if text[:1] in "+-" else text, float(value) if isinstance(value, float) else 0.0)
        except (ValueError, ZeroDivisionError, SymbpError):
            raise SymbpError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, str) and not isinstance(value, str):
        raise SymbpError(f"{where}: expected a name, got {value!r}")
    return value


def _unit_interval(row: Op) -> bool:
    output = registry.OUTPUTS.get(row.name)
    return bool(output and output.in_unit_interval)


def network(layers, *, input, batch=None, loss="cross_entropy", reduction="mean") -> Network:
    """A :class:`Network` from a list of layers (dicts with ``op`` and its fields), as INTERFACE.md's
    "Networks of layers" describes.

    >>> net = network([{"op": "affine", "out": 2, "name": "z1", "W": "W1", "b": "b1"},
    ...                {"op": "sigmoid", "name": "a1"}], input=3, loss="binary_cross_entropy")
    >>> net.shape("W1"), net.fused is not None
    ((2, 3), True)
    """
    return Network(layers, input=input, batch=batch, loss=loss, reduction=reduction)
