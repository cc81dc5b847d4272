"""Per-element partials dL/dV_ij, assembled into matrices shaped like V (denominator layout).

How it works, for the two methods:

``expand``
    ``sympy.diff`` of the fully written-out loss, one entry at a time. For an intermediate ``V`` the
    loss is written out from ``V`` onwards, differentiated, and ``V`` is then written out too. Slow
    (the written-out loss grows with every layer) and as independent as it gets: the ground truth.

``chain``
    Reverse mode, entry by entry. Walking the stages ``aL, zL, ..., a1, z1`` backwards, each stage's
    entries get their gradient as the sum of the contributions pushed to them (the multivariable chain
    rule, with ``+=`` as in micrograd); each is named by a symbol ``dV_i_j``, and its contribution to
    every symbol ``s`` in its local definition is ``dV_i_j * diff(term, s)`` for each term of that
    definition containing ``s``. Every local derivative is taken, never written by hand (nothing like
    ``a - y``): by ``sympy.diff``, except for a plain product of atoms such as ``W2_0_3*a1_3_0``, whose
    derivative with respect to one factor is the product of the others (the product rule; the tests
    compare the result with ``sympy.diff`` of the written-out loss). The cost grows with the number of
    edges of the network (about twice the number of parameters), not with the size of the written-out
    loss: about 2 s for the 109,386 parameters of [784, 128, 64, 10] on a laptop-class core.

The result, :class:`Gradients`, maps every parameter and intermediate to a ``sympy.Matrix``. For
``chain`` its entries are compact (``dL/dW1_ij = dz1_i * x_j``) and :attr:`Gradients.definitions`
holds the error terms in the order they are computed; :meth:`Gradients.written_out` substitutes
everything to ``x, y, W*, b*``.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from collections.abc import Mapping

import sympy as sp

from .errors import SymbpError, UnknownName, closest
from .names import TextPrinter, times
from .layers import Network
from .network import MLP

METHODS = ("chain", "expand")
LAYOUTS = ("denominator", "numerator")


class Gradients(Mapping):
    """dL/dV for every parameter and intermediate ``V`` of a network, as SymPy matrices.

    ``grads[name]`` is in the requested layout (denominator: shaped like ``V``; numerator: its
    transpose).

    >>> import symbp
    >>> net = symbp.MLP([2, 2], output="identity", loss="mse")
    >>> grads = symbp.derive(net)
    >>> grads["W1"][0, 1]
    dz1_0_0*x_1_0
    >>> grads.written_out("W1")[0, 1]
    x_1_0*(W1_0_0*x_0_0 + W1_0_1*x_1_0 + b1_0_0 - y_0_0)
    """

    def __init__(self, net: MLP, matrices: dict, *, method: str, layout: str = "denominator",
                 definitions=(), seconds: float = 0.0):
        self.net, self.method, self.layout, self.seconds = net, method, layout, seconds
        self._matrices = matrices  # denominator layout
        self.definitions = list(definitions)  # (dV_i_j, expression), in the order computed
        self._input = None  # with_input: {"x": dL/dx once computed}

    def _names(self):
        return ("x", *self._matrices) if self._input is not None else tuple(self._matrices)

    def __getitem__(self, name):
        if isinstance(name, str) and name == "x" and self._input is not None:
            if "x" not in self._input:
                self._input["x"] = _input_gradient(self.net, self.method)
            M = self._input["x"]
        elif not isinstance(name, str) or name not in self._matrices:
            names = self._names()
            raise UnknownName(f"no gradient named {name!r}; have {', '.join(names)}{closest(str(name), names)}")
        else:
            M = self._matrices[name]
        return M.T if self.layout == "numerator" else M

    def __contains__(self, name):
        return name in self._names()

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def with_layout(self, layout: str) -> "Gradients":
        _check_layout(layout)
        out = Gradients(self.net, self._matrices, method=self.method, layout=layout,
                        definitions=self.definitions, seconds=self.seconds)
        out._input = self._input
        return out

    def with_input(self) -> "Gradients":
        """These gradients and also dL/dx, the network input's, derived (by the same method) when first
        read. ``derive`` leaves ``x`` out: it is data, neither a parameter nor an intermediate, and the
        documents show what a network learns; ``verify`` judges claims for ``x`` too (one layer on its
        own: its backward is the gradient of its input, given the upstream gradient ``y``).

        >>> import symbp
        >>> net = symbp.MLP([2, 1], output="identity", loss="mse")
        >>> grads = symbp.derive(net)
        >>> "x" in grads, list(grads.with_input())
        (False, ['x', 'W1', 'b1', 'z1', 'a1'])
        >>> grads.with_input()["x"]
        Matrix([
        [W1_0_0*dz1_0_0],
        [W1_0_1*dz1_0_0]])
        """
        if self._input is not None:
            return self
        out = self.with_layout(self.layout)
        out._input = {}
        return out

    def resolved(self) -> dict:
        """Each error-term symbol -> its value in the forward symbols (no ``d`` symbols left)."""
        if not hasattr(self, "_resolved"):
            resolved = {}
            for symbol, expression in self.definitions:
                resolved[symbol] = expression.xreplace(resolved)
            self._resolved = resolved
        return self._resolved

    def written_out(self, name: str) -> sp.Matrix:
        """``grads[name]`` with every error term and intermediate substituted: in ``x, y, W*, b*`` only."""
        return self[name].xreplace(self.resolved()).xreplace(self.net.forward_env())

    def text(self, name: str, i: int = 0, j: int = 0) -> str:
        """One entry as plain text with 1-based indices, e.g. ``dL/dW1[1,1] = dz1[1]*x[1]``."""
        printer = TextPrinter(self.net.columns)
        label = printer.doprint(self.net.symbols(name)[i, j] if self.layout == "denominator"
                                else self.net.symbols(name)[j, i])
        return f"dL/d{label} = {printer.doprint(self[name][i, j])}"

    def _repr_latex_(self):
        from sympy import latex

        rows = [rf"\frac{{\partial L}}{{\partial {n}}} &= {latex(self[n])}" for n in self.net.params]
        return r"$\displaystyle \begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}$"

    def __repr__(self):
        return f"Gradients({self.net!r}, method={self.method!r}, layout={self.layout!r}, names={list(self)})"


def derive(net: MLP, *, method: str = "chain", layout: str = "denominator", progress=None, sizes: str = "given"):
    """Every dL/dV_ij of ``net``, assembled into matrices.

    ``sizes="symbolic"`` derives instead in index notation for all sizes (the widths and the batch as
    symbols, every step checked; :func:`symbp.indexform.derive_index`): an
    :class:`symbp.indexform.IndexDerivation`, whose ``write(path, pdf=True)`` writes the document.

    ``method`` is ``"chain"`` (fast; compact entries in named error terms) or ``"expand"`` (diff of the
    written-out loss). ``progress`` shows the stage being derived on stderr: ``None`` (default) only on
    a terminal once it has taken more than a second, ``True`` always, ``False`` never.

    >>> import symbp
    >>> net = symbp.MLP([1, 1], hidden=[], output="sigmoid", loss="binary_cross_entropy")
    >>> symbp.derive(net, method="expand")["z1"]
    Matrix([[-y_0_0 + sigmoid(W1_0_0*x_0_0 + b1_0_0)]])
    """
    if not isinstance(net, (MLP, Network)):
        raise SymbpError(f"derive: expected a symbp.MLP or symbp.network, got {type(net).__name__}")
    if sizes not in ("given", "symbolic"):
        raise SymbpError(f"sizes: expected 'given' or 'symbolic', got {sizes!r}")
    if sizes == "symbolic":
        from .indexform import derive_index

        return derive_index(net)
    if method not in METHODS:
        raise SymbpError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    _check_layout(layout)
    start = time.perf_counter()
    steps = len(net.intermediates) + (len(net.params) if method == "expand" else 1)
    report = _Progress(progress, total=steps)
    with paused_gc():
        if method == "expand":
            matrices, definitions = _expand(net, report), []
        else:
            matrices, definitions = _chain(net, report)
    report.done()
    return Gradients(net, matrices, method=method, layout=layout, definitions=definitions,
                     seconds=time.perf_counter() - start)


@contextmanager
def paused_gc():
    """Python's cyclic garbage collector paused for the duration (and resumed as it was).

    A derivation allocates millions of small SymPy objects that form no cycles; each of the
    collector's full passes walks every live object, the caller's included, so the time grows with
    whatever else is in memory (measured at [784, 128, 64, 10]: 1.6 s alone, 4.5 s with three smaller
    derivations kept alive, 2.0 s with the collector paused). Reference counting still frees
    everything meanwhile; cycles, if any, are collected once it resumes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise SymbpError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")


class _Progress:
    """Which stage a derivation is at, on stderr.

    ``wanted=None`` (the default): only on a terminal, and only once the derivation has taken more than
    a second; one line rewritten in place. ``True``: every stage, from the start (one line each when
    stderr is not a terminal, e.g. a log file). ``False``: nothing.
    """

    def __init__(self, wanted, total=0):
        self.terminal = sys.stderr.isatty()
        self.wanted = self.terminal if wanted is None else bool(wanted)
        self.patience = 1.0 if wanted is None else 0.0
        self.start, self.count, self.total, self.shown = time.perf_counter(), 0, total, False

    def step(self, label):
        """A new stage begins."""
        self.count += 1
        self.label = label
        self.within("")

    def within(self, detail):
        """Progress inside the current stage (on a terminal only: a log gets one line a stage)."""
        elapsed = time.perf_counter() - self.start
        if not self.wanted or elapsed < self.patience or detail and not self.terminal:
            return
        self.shown = True
        line = f"symbp derive: {self.label}{detail} (stage {self.count}/{self.total}, {elapsed:.1f} s)"
        if self.terminal:
            print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self):
        if self.shown and self.terminal:
            print(file=sys.stderr)


# --------------------------------------------------------------------------- expand

def _expand(net, report):
    matrices = {}
    env = net.forward_env()
    for name in reversed(net.intermediates):
        report.step(f"expand {name}")
        loss = net.loss_from(name)
        V = net.symbols(name)
        matrices[name] = V.applyfunc(lambda v: sp.diff(loss, v)).xreplace(env)
    loss = net.loss
    for name in reversed(net.params):
        report.step(f"expand {name}")
        matrices[name] = net.symbols(name).applyfunc(lambda v: sp.diff(loss, v))
    return {n: matrices[n] for n in net.params + net.intermediates}


def _input_gradient(net, method) -> sp.Matrix:
    """dL/dx by ``method``: ``expand`` differentiates the written-out loss; ``chain`` pushes each
    local definition that reads ``x`` with its stage's error terms (``dV_i_j``, as in ``definitions``),
    exactly as :func:`_chain` pushes to the parameters, from the same stages."""
    X = net.symbols("x")
    if method == "expand":
        loss = net.loss
        return X.applyfunc(lambda v: sp.diff(loss, v))
    tracked = set(X)
    acc = _Accumulator(tracked)
    if net.local_loss.free_symbols & tracked:
        acc.push(net.local_loss, sp.S.One)
    side = net.output_name if net.loss_stage != net.output_name else None  # its local is not chained
    for stage in net.stages:
        if stage.name == side:
            continue
        for u, local in zip(net.grad_symbols(stage.name), stage.local):
            if local.free_symbols & tracked:
                acc.push(local, u)
    return acc.gradient(X)


# --------------------------------------------------------------------------- chain

class _Accumulator:
    """Contributions to each symbol's gradient, pushed term by term (``grad += upstream * local``).

    Each contribution is ``upstream * d(term)/ds`` for a term of a local definition and a tracked
    symbol ``s`` in it. Almost every term of an MLP is a plain product of distinct atoms
    (``W2_0_3*a1_3_0``: SymPy's ``Mul`` merges a repeated factor into a power), and the derivative of
    such a product with respect to one of its factors is the product of the other factors: the product
    rule with every other factor constant. That case is taken directly (the same canonical ``Mul``
    ``sympy.diff`` returns, without its generic machinery, which dominates the cost at scale); every
    other term (``relu(z)``, ``log(sum(exp(z)))``, powers) goes to ``sympy.diff``.
    """

    def __init__(self, tracked):
        self.tracked = tracked
        self.parts = defaultdict(list)

    def push(self, expression, upstream):
        tracked, parts = self.tracked, self.parts
        for term in sp.Add.make_args(expression):
            if term.is_Symbol:
                if term in tracked:
                    parts[term].append(upstream)  # d s / d s = 1
            elif term.is_Mul and all(f.is_Symbol or f.is_Number for f in term.args):
                factors = term.args
                for k, s in enumerate(factors):
                    if s in tracked:
                        rest = term._new_rawargs(*factors[:k], *factors[k + 1:])
                        parts[s].append(times(upstream, rest))
            else:
                for s in term.free_symbols & tracked:
                    parts[s].append(upstream * sp.diff(term, s))

    def gradient(self, M: sp.Matrix) -> sp.Matrix:
        return M.applyfunc(lambda s: sp.Add(*self.parts.pop(s, ())))


def _chain(net, report):
    tracked = set()
    for name in net.params + net.intermediates:
        tracked.update(net.symbols(name))
    acc = _Accumulator(tracked)
    matrices, definitions = {}, []
    last = net.output_name
    if net.loss_stage != last:
        # dL/da_L is a side branch when the loss is written in the logits: the loss's own derivative.
        side = _Accumulator(tracked)
        side.push(net.output_loss, sp.S.One)
        matrices[last] = side.gradient(net.symbols(last))
    acc.push(net.local_loss, sp.S.One)
    for stage in reversed(net.stages):
        report.step(f"chain {stage.name}")
        if stage.name in matrices:
            continue
        G = acc.gradient(stage.symbols)
        matrices[stage.name] = G
        upstream = net.grad_symbols(stage.name)
        for k, (u, g, local) in enumerate(zip(upstream, G, stage.local), 1):
            definitions.append((u, g))
            acc.push(local, u)
            if k % 16 == 0:
                report.within(f", entry {k} of {len(upstream)}")
    report.step("chain: the parameters' gradients")
    for name in net.params:
        matrices[name] = acc.gradient(net.symbols(name))
    return {n: matrices[n] for n in net.params + net.intermediates}, definitions
