"""Gradient flow: why deep gradients vanish or explode, and what a residual connection changes.

How it works, in two halves:

The identity, proved by the machine
    For a block ``H(x) = F(x) + x`` with ``F(x) = f(W x + b)`` and a square ``W``, :func:`residual_block`
    writes every ``H_i`` out in the symbols ``x_j, W_ij, b_i``, takes ``sympy.diff`` of each ``H_i`` with
    respect to each ``x_j`` (the Jacobian, entry by entry) and checks with
    :func:`symbp.exact.frozen_zero` that ``dH/dx - (dF/dx + I)`` is exactly zero, entry by entry. The
    same is checked for the plain block ``H = F`` (``dH/dx = dF/dx = diag(f'(z)) W``). At the network
    level, :func:`network_identity` takes the gradients that :func:`symbp.derive` found for a network and
    checks, per layer, ``dL/da_(l-1) = dL/da_l + W_l^T (dL/da_l * f'(z_l))`` for a residual layer and the
    same without the first term for a plain one. :func:`identity_check` reports which entries differ, so
    a wrong claim (the residual Jacobian without its ``+ I``) is caught, not waved through.

The flow, measured
    :func:`flow` builds the network ``[W] * (D + 1) + [C]`` (``D`` hidden layers of width ``W``, softmax
    + cross-entropy), draws weights from ``N(0, S^2 / fan_in)`` with zero biases, a normal input and a
    one-hot target, and evaluates the *derived* gradients (``symbp.lambdify(net, symbp.derive(net))``)
    there. Each run is cross-checked against the plain NumPy backprop
    (:func:`symbp.numeric.reference_gradients`), and the largest relative difference is reported. With
    ``residual=True`` the same weights go through both the plain and the residual network, so the two
    can be compared layer by layer. The norms reported per layer ``l = 1..D+1`` are ``||dL/dW_l||_F``,
    ``||dL/da_l||_F`` (none for the output layer) and ``||dL/dz_l||``; for one example
    ``dL/dW_l = dL/dz_l a_(l-1)^T`` is an outer product, so ``||dL/dW_l||_F = ||dL/dz_l|| ||a_(l-1)||``:
    the weight gradient mixes the backward signal with the forward one.

:func:`flow_document` renders the LaTeX document (``templates/flow.tex.j2``) and :func:`write_flow`
writes it, optionally with the PDF and a PNG of the page that holds the plots.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from . import registry
from .derive import Gradients, derive
from .errors import SymbpError
from .exact import frozen_zero
from .names import matrix_symbols
from .network import MLP
from .numeric import error_exponent

#: Above this many parameters the per-element derivation takes minutes; :func:`flow` refuses.
MAX_PARAMS = 60_000

#: Thresholds of :func:`regime`: a first-to-last ratio below ``1 / SPREAD`` vanishes, above ``SPREAD`` explodes.
SPREAD = 100.0


# =========================================================================== the identity


@dataclass(frozen=True)
class IdentityCheck:
    """The verdict of ``derived == claimed``, entry by entry: ``ok``, and the entries that differ as
    ``(i, j, difference)`` (0-based)."""

    ok: bool
    failures: tuple = ()

    def __bool__(self):
        return self.ok


def identity_check(derived: sp.Matrix, claimed: sp.Matrix) -> IdentityCheck:
    """Whether ``derived - claimed`` is exactly zero in every entry (:func:`symbp.exact.frozen_zero`).

    >>> x = sp.Symbol("x")
    >>> identity_check(sp.Matrix([[sp.diff(sp.tanh(x) + x, x)]]), sp.Matrix([[2 - sp.tanh(x)**2]])).ok
    True
    >>> identity_check(sp.Matrix([[sp.diff(sp.tanh(x) + x, x)]]), sp.Matrix([[1 - sp.tanh(x)**2]]))
    IdentityCheck(ok=False, failures=((0, 0, 1),))
    """
    if derived.shape != claimed.shape:
        raise SymbpError(f"identity check: shapes {derived.shape} and {claimed.shape} differ")
    failures = []
    for i in range(derived.rows):
        for j in range(derived.cols):
            difference = derived[i, j] - claimed[i, j]
            if not frozen_zero(difference):
                failures.append((i, j, difference))
    return IdentityCheck(not failures, tuple(failures))


@dataclass(frozen=True)
class BlockJacobians:
    """One block ``F(x) = f(W x + b)`` with a square ``W``, its Jacobians, and the verdicts.

    ``dF`` is ``dF/dx``, ``dH`` is ``d(F + x)/dx``, both from ``sympy.diff`` of each entry with respect
    to each ``x_j``; ``closed_form`` is ``diag(f'(z)) W`` written with the symbols ``z`` (``z = W x + b``).
    """

    n: int
    hidden: str
    x: sp.Matrix
    W: sp.Matrix
    b: sp.Matrix
    z: sp.Matrix  # the symbols z_i standing for (W x + b)_i
    F: sp.Matrix  # f(z), in the symbols z
    dF: sp.Matrix  # in the symbols z
    dH: sp.Matrix  # in the symbols z
    closed_form: sp.Matrix  # diag(f'(z)) W
    residual: IdentityCheck  # dH == dF + I
    plain: IdentityCheck  # dF == diag(f'(z)) W

    @property
    def identity(self) -> sp.Matrix:
        return sp.eye(self.n)


def residual_block(*, n: int = 2, hidden: str = "tanh") -> BlockJacobians:
    """The Jacobian of ``H(x) = f(W x + b) + x``, derived entry by entry, and ``dH/dx = dF/dx + I`` checked.

    >>> block = residual_block(n=2, hidden="tanh")
    >>> block.residual.ok, block.plain.ok
    (True, True)
    >>> block.dH - block.dF
    Matrix([
    [1, 0],
    [0, 1]])
    >>> block.dF[0, 1]
    W1_0_1*(1 - tanh(z1_0_0)**2)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SymbpError(f"residual block: n = {n!r} must be a positive integer (W is n x n)")
    row = registry.activation(hidden)
    x, W, b = matrix_symbols("x", (n, 1)), matrix_symbols("W1", (n, n)), matrix_symbols("b1", (n, 1))
    z = matrix_symbols("z1", (n, 1))
    pre = W * x + b  # written out: diff must see x inside it
    F_written = pre.applyfunc(row.sympy)
    H_written = F_written + x
    back = dict(zip(pre, z))  # name each pre-activation z_i again, for reading

    def jacobian(V):
        # subs, not xreplace: z_i must be found inside a larger sum too (ELU's exp(W x + b - relu(z)))
        return sp.Matrix(n, n, lambda i, j: sp.diff(V[i, 0], x[j, 0]).xreplace(back).subs(back))

    dF, dH = jacobian(F_written), jacobian(H_written)
    fprime = registry.derivative(row)
    closed_form = sp.diag(*[fprime(z[i, 0]) for i in range(n)]) * W
    return BlockJacobians(n=n, hidden=row.name, x=x, W=W, b=b, z=z, F=z.applyfunc(row.sympy), dF=dF, dH=dH,
                          closed_form=closed_form, residual=identity_check(dH, dF + sp.eye(n)),
                          plain=identity_check(dF, closed_form))


@dataclass(frozen=True)
class LayerIdentity:
    """``dL/da_(l-1)`` as derived, against the formula through layer ``l`` (with or without the skip term)."""

    layer: int  # l: the formula goes from a_l back to a_(l-1)
    residual: bool  # whether the network has the skip connection at layer l
    with_identity: bool  # whether the claim has the + dL/da_l term
    derived: sp.Matrix  # grads[a_(l-1)] in the forward symbols
    claimed: sp.Matrix
    check: IdentityCheck

    @property
    def holds(self) -> bool:
        return self.check.ok


def network_identity(net: MLP, grads: Gradients | None = None, *, with_identity=None) -> list[LayerIdentity]:
    """Check ``dL/da_(l-1) = [skip] dL/da_l + W_l^T (dL/da_l * f'(z_l))`` against ``symbp.derive``.

    One result per hidden layer ``l >= 2`` (``a_(l-1)`` must be a hidden activation). The ``+ dL/da_l``
    term is in the claim for the layers in ``with_identity`` (default: the network's residual layers,
    which is the true statement). For ``chain`` gradients both sides are written in the forward symbols
    (``z``, ``a``, ``W``, ``y``), the derived side by substituting the error terms of ``grads``; for
    ``expand`` gradients both are written out in ``x``, ``y`` and the parameters.

    >>> import symbp
    >>> net = symbp.MLP([2, 2, 2, 2], hidden="tanh", residual=True)
    >>> [(r.layer, r.holds) for r in network_identity(net)]
    [(2, True)]
    >>> [(r.layer, r.holds) for r in network_identity(net, with_identity=())]   # the plain formula
    [(2, False)]
    """
    if net.batch:
        raise SymbpError("network identity: written for one example (column vectors); use batch=None")
    grads = grads if grads is not None else derive(net)
    if grads.net is not net:
        raise SymbpError("network identity: grads must come from symbp.derive of this network")
    grads = grads.with_layout("denominator")
    chosen = set(net.residual_layers if with_identity is None else with_identity)
    env = net.forward_env() if grads.method == "expand" else {}

    def resolved(name):
        return grads[name].xreplace(grads.resolved())

    results = []
    for l in range(2, net.L):
        upstream = resolved(f"a{l}")
        derived = resolved(f"a{l - 1}")
        fprime = registry.derivative(net.hidden[l - 1])
        z = net.symbols(f"z{l}")
        dz = sp.Matrix(z.rows, 1, lambda i, _: upstream[i, 0] * fprime(z[i, 0]).xreplace(env))
        claimed = net.symbols(f"W{l}").T * dz
        if l in chosen:
            claimed = claimed + upstream
        results.append(LayerIdentity(l, l in net.residual_layers, l in chosen, derived, claimed,
                                     identity_check(derived, claimed)))
    return results


# =========================================================================== the flow, measured


@dataclass(frozen=True)
class LayerNorms:
    """The gradient norms of one layer ``l`` at one point (``activation_grad_norm`` is ``None`` for the
    output layer); ``input_norm`` is ``||a_(l-1)||`` and ``dead_units`` counts ``f'(z_l) = 0``."""

    layer: int
    weight_grad_norm: float
    activation_grad_norm: float | None
    preactivation_grad_norm: float
    input_norm: float
    dead_units: int | None

    def to_json(self) -> dict:
        return {"layer": self.layer, "weight_grad_norm": self.weight_grad_norm,
                "activation_grad_norm": self.activation_grad_norm,
                "preactivation_grad_norm": self.preactivation_grad_norm,
                "input_norm": self.input_norm, "dead_units": self.dead_units}


@dataclass(frozen=True)
class FlowRun:
    """The norms of every layer of one network (plain or residual) at one point."""

    residual: bool
    layers: tuple
    loss: float
    reference_max_rel_error: float  # derived gradients vs the NumPy reference backprop
    seconds: dict = field(default_factory=dict)  # derive, lambdify, evaluate

    @property
    def depth(self) -> int:
        return len(self.layers) - 1

    @property
    def finite(self) -> bool:
        """Whether every norm is a finite number (float64 overflows, or gives 0/0, at a large init scale)."""
        norms = [getattr(layer, key) for layer in self.layers
                 for key in ("weight_grad_norm", "activation_grad_norm", "preactivation_grad_norm", "input_norm")]
        return all(math.isfinite(v) for v in norms if v is not None)

    def column(self, key: str) -> list:
        return [getattr(layer, key) for layer in self.layers]

    @property
    def activation_ratio(self) -> float:
        """``||dL/da_1|| / ||dL/da_D||``: how much of the last hidden layer's gradient reaches the first."""
        norms = self.column("activation_grad_norm")[:-1]
        return _ratio(norms[0], norms[-1])

    @property
    def weight_ratio(self) -> float:
        """``||dL/dW_1|| / ||dL/dW_(D+1)||``: the first layer's weight gradient against the last layer's."""
        norms = self.column("weight_grad_norm")
        return _ratio(norms[0], norms[-1])

    @property
    def per_layer_factor(self) -> float:
        """The geometric mean of ``||dL/da_(l-1)|| / ||dL/da_l||`` over the hidden layers (1 for D = 1)."""
        steps = self.depth - 1
        return self.activation_ratio ** (1 / steps) if steps else 1.0

    def to_json(self) -> dict:
        return {"residual": self.residual, "layers": [layer.to_json() for layer in self.layers], "loss": self.loss,
                "activation_ratio": _finite_or_none(self.activation_ratio),
                "weight_ratio": _finite_or_none(self.weight_ratio),
                "reference_max_rel_error": self.reference_max_rel_error,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def _ratio(a: float, b: float) -> float:
    """``a / b``; ``inf`` for ``a / 0`` and ``nan`` for ``0 / 0`` (a saturated softmax can zero every gradient)."""
    if b == 0:
        return math.inf if a else math.nan
    return a / b


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def regime(ratio: float) -> str:
    """``"vanishes"`` below ``1/SPREAD``, ``"explodes"`` above ``SPREAD``, else ``"is kept"``.

    >>> regime(6e-7), regime(3.2), regime(1e4), regime(float("nan"))
    ('vanishes', 'is kept', 'explodes', 'is zero throughout')
    """
    if math.isnan(ratio):
        return "is zero throughout"
    if ratio < 1 / SPREAD:
        return "vanishes"
    if ratio > SPREAD:
        return "explodes"
    return "is kept"


def flow_network(*, depth: int, width: int, hidden: str = "tanh", classes: int = 10, residual: bool = False) -> MLP:
    """The network ``[width] * (depth + 1) + [classes]``: ``depth`` hidden layers, softmax + cross-entropy;
    with ``residual`` every hidden layer has the skip connection (they all have their input's width).

    >>> flow_network(depth=3, width=4, classes=2, residual=True)
    MLP([4, 4, 4, 4, 2], hidden='tanh', output='softmax', loss='cross_entropy', residual=[1, 2, 3])
    """
    for name, value, low in (("depth", depth, 1), ("width", width, 1), ("classes", classes, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SymbpError(f"{name} = {value!r}: expected a whole number >= {low}")
    if not isinstance(residual, bool):
        raise SymbpError(f"residual = {residual!r}: expected true or false")
    if isinstance(hidden, (list, tuple)):
        raise SymbpError("hidden: the flow network takes one activation for all its hidden layers")
    n_params = depth * (width * width + width) + classes * width + classes
    if n_params > MAX_PARAMS:
        raise SymbpError(f"depth {depth}, width {width}: {n_params} parameters; the per-element derivation "
                         f"is limited to {MAX_PARAMS} here (it takes minutes beyond); choose a smaller depth or width")
    net = MLP([width] * (depth + 1) + [classes], hidden=hidden, output="softmax", loss="cross_entropy",
              residual=residual)
    assert net.n_params == n_params
    return net


def initial_values(net: MLP, *, init_scale: float, seed: int = 0) -> dict:
    """The point of the measurement: ``x ~ N(0, 1)``, ``W_l ~ N(0, init_scale^2 / fan_in)``, ``b_l = 0``,
    ``y`` one-hot at a uniformly drawn class. The same seed gives the same point for the plain and the
    residual network (their parameters have the same shapes).

    >>> v = initial_values(flow_network(depth=2, width=3, classes=2), init_scale=1.0, seed=0)
    >>> v["y"].ravel().tolist(), v["b1"].ravel().tolist(), v["W1"].shape
    ([0.0, 1.0], [0.0, 0.0, 0.0], (3, 3))
    """
    scale = _check_scale(init_scale)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SymbpError(f"seed = {seed!r}: expected a whole number >= 0")
    rng = np.random.default_rng(seed)
    values = {"x": rng.normal(size=net.shape("x"))}
    for l in range(1, net.L + 1):
        values[f"W{l}"] = rng.normal(size=net.shape(f"W{l}")) * (scale / np.sqrt(net.sizes[l - 1]))
        if net.bias:
            values[f"b{l}"] = np.zeros(net.shape(f"b{l}"))
    y = np.zeros(net.shape("y"))
    y[rng.integers(net.sizes[-1]), 0] = 1.0
    values["y"] = y
    return values


def _check_scale(init_scale):
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or \
            not math.isfinite(init_scale) or init_scale <= 0:
        raise SymbpError(f"init scale = {init_scale!r}: expected a positive number (weights ~ N(0, S^2 / fan_in))")
    return float(init_scale)


class FlowModel:
    """A flow network, derived (:func:`symbp.derive`) and lambdified (:func:`symbp.lambdify`) once, to be
    measured at as many points as wanted (:meth:`measure`).

    >>> model = FlowModel(depth=2, width=3, hidden="tanh", classes=2)
    >>> run = model.measure(initial_values(model.net, init_scale=1.0, seed=0))
    >>> [layer.layer for layer in run.layers], run.layers[-1].activation_grad_norm
    ([1, 2, 3], None)
    >>> run.reference_max_rel_error < 1e-12
    True
    """

    def __init__(self, *, depth: int, width: int, hidden: str = "tanh", classes: int = 10, residual: bool = False):
        from .numeric import lambdify

        self.net = flow_network(depth=depth, width=width, hidden=hidden, classes=classes, residual=residual)
        self.grads = derive(self.net)
        start = time.perf_counter()
        names = [f"W{l}" for l in range(1, self.net.L + 1)] + list(self.net.intermediates)
        self.function = lambdify(self.net, self.grads, names=names)
        self.seconds = {"derive": self.grads.seconds, "lambdify": time.perf_counter() - start}

    def measure(self, values: dict) -> FlowRun:
        """The norms per layer from the lambdified gradients at ``values``, cross-checked against the
        NumPy reference backprop. Overflow gives infinite norms (see :attr:`FlowRun.finite`), silently:
        NumPy's warnings would quote generated code."""
        with np.errstate(all="ignore"):
            return self._measure(values)

    def _measure(self, values: dict) -> FlowRun:
        from .numeric import forward_pass, max_rel_error, reference_gradients

        net = self.net
        start = time.perf_counter()
        got = self.function(**values)
        seconds = dict(self.seconds, evaluate=time.perf_counter() - start)
        reference = reference_gradients(net, values)
        error = max_rel_error(got, reference, names=list(got))
        forward = forward_pass(net, values)
        layers = []
        for l in range(1, net.L + 1):
            previous = values["x"] if l == 1 else forward[f"a{l - 1}"]
            hidden = l < net.L
            dead = None
            if hidden and net.hidden[l - 1].kinks:
                dead = int(np.sum(net.hidden[l - 1].numpy_derivative(forward[f"z{l}"]) == 0))
            layers.append(LayerNorms(
                layer=l,
                weight_grad_norm=float(np.linalg.norm(got[f"W{l}"])),
                activation_grad_norm=float(np.linalg.norm(got[f"a{l}"])) if hidden else None,
                preactivation_grad_norm=float(np.linalg.norm(got[f"z{l}"])),
                input_norm=float(np.linalg.norm(previous)),
                dead_units=dead))
        return FlowRun(residual=bool(net.residual_layers), layers=tuple(layers), loss=float(forward["L"]),
                       reference_max_rel_error=error, seconds=seconds)


@dataclass(frozen=True)
class Flow:
    """The result of :func:`flow`: the plain run, and the residual run on the same weights if asked."""

    depth: int
    width: int
    hidden: str
    init_scale: float
    classes: int
    seed: int
    plain: FlowRun
    residual: FlowRun | None = None
    #: the derived and lambdified networks, to measure again at other points without deriving again
    models: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def main(self) -> FlowRun:
        """The run that was asked for: the residual one with ``residual=True``, else the plain one."""
        return self.residual or self.plain

    @property
    def runs(self) -> list:
        return [self.plain] + ([self.residual] if self.residual else [])

    @property
    def reference_max_rel_error(self) -> float:
        """The largest relative difference of any run's derived gradients from the NumPy reference."""
        return max(run.reference_max_rel_error for run in self.runs)

    @property
    def sizes(self) -> list:
        return [self.width] * (self.depth + 1) + [self.classes]

    @property
    def ok(self) -> bool:
        """Whether the measurement can be read: the derived gradients agree with the NumPy reference
        (relative error at most 1e-8; a nan error is undecidable) and every norm is finite."""
        return self.reference_max_rel_error <= 1e-8 and all(run.finite for run in self.runs)

    def to_json(self) -> dict:
        """``{"residual", "layers", ...}`` as in INTERFACE; with ``residual`` also ``plain_layers``."""
        payload = {"residual": self.residual is not None,
                   "layers": [layer.to_json() for layer in self.main.layers],
                   "depth": self.depth, "width": self.width, "hidden": self.hidden, "init_scale": self.init_scale,
                   "classes": self.classes, "seed": self.seed, "sizes": self.sizes,
                   "runs": {("residual" if run.residual else "plain"): run.to_json() for run in self.runs}}
        if self.residual:
            payload["plain_layers"] = payload["runs"]["plain"]["layers"]
        return payload

    def reading(self) -> list[str]:
        """Sentences reading the numbers: first-to-last ratios and what they mean."""
        lines = []
        for run in self.runs:
            name = "with the skip connections" if run.residual else "without skip connections"
            if not run.finite:
                lines.append(f"{name}: some norms are not finite (float64 overflow or 0/0 at init scale "
                             f"{self.init_scale:g}): the flow cannot be read from these numbers")
                continue
            lines.append(f"{name}: ||dL/da_1|| is {run.activation_ratio:.2g} of ||dL/da_{self.depth}|| "
                         f"(the gradient {regime(run.activation_ratio)}; {run.per_layer_factor:.3g} per layer); "
                         f"||dL/dW_1|| is {run.weight_ratio:.2g} of ||dL/dW_{self.depth + 1}||")
        return lines

    def text(self) -> str:
        """A table per layer, then the reading."""
        head = (f"gradient flow: MLP {self.sizes} ({self.depth} hidden {self.hidden} layers, softmax + cross-entropy), "
                f"W_l ~ N(0, {self.init_scale:g}^2 / fan_in), b_l = 0, seed {self.seed}; one example")
        lines = [head, "norms are Frobenius norms of the derived (lambdified) gradients; layer 1 is next to the input", ""]
        columns = ["layer", "||dL/dW_l||", "||dL/da_l||"]
        if self.residual:
            columns = ["layer", "plain ||dL/dW_l||", "plain ||dL/da_l||", "resid ||dL/dW_l||", "resid ||dL/da_l||"]
        lines.append("  ".join(f"{c:>17}" if k else f"{c:>5}" for k, c in enumerate(columns)))
        for k in range(self.depth + 1):
            cells = [f"{k + 1:>5}"]
            for run in self.runs:
                layer = run.layers[k]
                cells.append(f"{layer.weight_grad_norm:>17.4e}")
                cells.append(f"{layer.activation_grad_norm:>17.4e}" if layer.activation_grad_norm is not None
                             else f"{'-':>17}")
            lines.append("  ".join(cells))
        lines.append("")
        lines += self.reading()
        error = self.reference_max_rel_error
        if not math.isfinite(error):
            verdict = "UNDECIDABLE: the gradients are not finite, nothing is checked"
        elif error > 1e-8:
            verdict = "DISAGREE: do not trust these numbers"
        elif not self.ok:
            verdict = "agree, but both overflowed float64 alike: do not read these numbers"
        else:
            verdict = "agree"
        lines.append(f"check: derived gradients vs NumPy reference backprop, max relative error {error:.1e} ({verdict})")
        return "\n".join(lines)


def flow(*, depth: int, width: int, hidden: str = "tanh", init_scale: float = 1.0, classes: int = 10,
         residual: bool = False, seed: int = 0) -> Flow:
    """Gradient norms per layer of ``[width] * (depth + 1) + [classes]`` at a random point.

    Weights ``N(0, init_scale^2 / fan_in)``, biases zero, ``x ~ N(0, 1)``, a one-hot target. The numbers
    come from the derived, lambdified gradients (and are checked against the NumPy reference backprop).
    With ``residual=True`` the plain network is measured too, at the same point.

    >>> result = flow(depth=4, width=3, hidden="tanh", init_scale=0.5, classes=2, residual=True, seed=1)
    >>> [layer["layer"] for layer in result.to_json()["layers"]]
    [1, 2, 3, 4, 5]
    >>> result.plain.activation_ratio < result.residual.activation_ratio
    True
    """
    _check_scale(init_scale)
    plain_model = FlowModel(depth=depth, width=width, hidden=hidden, classes=classes)
    values = initial_values(plain_model.net, init_scale=init_scale, seed=seed)
    plain = plain_model.measure(values)
    models, resid = {"plain": plain_model}, None
    if residual:
        models["residual"] = FlowModel(depth=depth, width=width, hidden=hidden, classes=classes, residual=True)
        resid = models["residual"].measure(values)
    return Flow(depth=depth, width=width, hidden=plain_model.net.hidden[0].name, init_scale=float(init_scale),
                classes=classes, seed=seed, plain=plain, residual=resid, models=models)


# =========================================================================== the document


def flow_document(result: Flow, *, title: str | None = None, user_dir=None) -> str:
    """The LaTeX source of the flow document for ``result`` (``templates/flow.tex.j2``)."""
    from .latex import render

    block = residual_block(n=2, hidden=result.hidden)
    small = MLP([2, 2, 2, 2], hidden=result.hidden, output="softmax", loss="cross_entropy", residual=True)
    small_grads = derive(small)
    small_plain = MLP([2, 2, 2, 2], hidden=result.hidden, output="softmax", loss="cross_entropy")
    checks = {"residual": network_identity(small, small_grads),
              "plain": network_identity(small_plain),
              "residual_without_identity": network_identity(small, small_grads, with_identity=())}
    row = registry.activation(result.hidden)
    u = sp.Symbol("z", real=True)
    return render("flow.tex.j2", user_dir=user_dir, author="symbp flow",
                  title=title or f"Gradient flow through {result.depth} {result.hidden} layers",
                  flow=result, block=block, small=small, small_grads=small_grads, checks=checks,
                  activation_tex=_tex(row.sympy(u)), derivative_tex=_tex(registry.derivative(row)(u)),
                  number=_tex_number, regime=regime, spread=SPREAD, error_exponent=error_exponent)


def _tex(expr, **kw) -> str:
    from .latex import latex

    return latex(expr, **kw)


def _tex_number(value, digits: int = 2) -> str:
    """A float for LaTeX math mode with ``digits`` significant digits: ``88``, ``0.019``, and through
    SymPy's printer ``6.2 \\cdot 10^{-7}`` where Python would write an exponent.

    >>> print(_tex_number(88.04), _tex_number(6.24e-7))
    88 6.2 \\cdot 10^{-7}
    """
    if value is None:
        return "-"
    if math.isnan(value):
        return r"\text{undefined}"
    if not math.isfinite(value):
        return r"\infty"
    plain = f"{value:.{digits}g}"
    return plain if "e" not in plain else _tex(sp.Float(value, digits))


def _plot_page(pdf: Path, marker: str) -> int:
    """The 1-based page of ``pdf`` whose text contains ``marker``."""
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    for page, content in enumerate(text.split("\f"), start=1):
        if marker in content:
            return page
    raise SymbpError(f"{pdf}: no page contains {marker!r}")  # pragma: no cover


PLOT_MARKER = "Figure 1: Gradient norms per layer"


def write_flow(result: Flow, tex_path, *, pdf: bool = False, title: str | None = None, user_dir=None) -> dict:
    """Write the flow document to ``tex_path``; with ``pdf`` also the PDF and a PNG of the plot page
    next to it (``pdftoppm -png -singlefile -r 100``). Returns ``{"tex", "pdf", "png"}`` (paths or None).
    Nothing is written if the document does not compile."""
    from .latex import check_output, compile_pdf, write_atomic

    tex_path = check_output(tex_path, also=(".pdf", ".png") if pdf else ())  # before the slow work
    if not (all(run.finite for run in result.runs) and math.isfinite(result.reference_max_rel_error)):
        raise SymbpError(f"flow document: the gradient norms are not finite at init scale {result.init_scale:g} "
                         "(float64 overflow or 0/0), so there is nothing to plot or read; choose a smaller init scale")
    if pdf:
        for tool in ("pdftoppm", "pdftotext"):
            if shutil.which(tool) is None:
                raise SymbpError(f"{tool} not found: install poppler-utils (it finds and renders the plot page)")
    tex = flow_document(result, title=title, user_dir=user_dir)
    written = {"tex": None, "pdf": None, "png": None}
    if pdf:
        with tempfile.TemporaryDirectory(prefix="symbp-flow-") as work:
            built = compile_pdf(tex, Path(work) / "flow.pdf")
            page = _plot_page(built, PLOT_MARKER)
            done = subprocess.run(["pdftoppm", "-png", "-singlefile", "-r", "100", "-f", str(page), "-l", str(page),
                                   str(built), str(Path(work) / "plot")], capture_output=True, text=True)
            if done.returncode != 0:
                raise SymbpError(f"pdftoppm could not render the plot page: {done.stderr.strip()[:200]}")
            written["tex"] = str(write_atomic(tex_path, tex))
            written["pdf"] = str(write_atomic(tex_path.with_suffix(".pdf"), built.read_bytes()))
            written["png"] = str(write_atomic(tex_path.with_suffix(".png"), (Path(work) / "plot.png").read_bytes()))
    else:
        written["tex"] = str(write_atomic(tex_path, tex))
    return written


# --------------------------------------------------------------------------- the derivation's section


def product_tex(L: int) -> str | None:
    r"""The unrolled error term of the first layer for an MLP of ``L`` layers, written for that ``L``:
    ``D_{1} W^{(2)\top} \delta^{(2)}`` for ``L = 2``; at most four pairs are written out, more elide the
    middle with ``\cdots``. None when there is no hidden layer.

    >>> product_tex(2)
    '\\delta^{(1)} = D_{1} W^{(2)\\top} \\delta^{(2)}'
    >>> product_tex(6)
    '\\delta^{(1)} = D_{1} W^{(2)\\top} D_{2} W^{(3)\\top} \\cdots D_{5} W^{(6)\\top} \\delta^{(6)}'
    """
    if L < 2:
        return None
    pair = lambda l: rf"D_{{{l}}} W^{{({l + 1})\top}}"  # noqa: E731
    pairs = [pair(l) for l in range(1, L)]
    if len(pairs) > 4:
        pairs = pairs[:2] + [r"\cdots"] + pairs[-1:]
    return rf"\delta^{{(1)}} = {' '.join(pairs)} \delta^{{({L})}}"


def derivative_bounds(row) -> dict:
    """What an activation's derivative does to a gradient, from its NumPy derivative on a fine grid
    of ``[-8, 8]`` (a measurement, stated as one): ``{"max": sup |f'|, "zero": whether f' = 0
    somewhere, "below": the kink below which it is 0, if any}``.

    >>> from symbp.registry import ACTIVATIONS
    >>> derivative_bounds(ACTIVATIONS["sigmoid"])["max"], derivative_bounds(ACTIVATIONS["relu"])
    (0.25, {'max': 1.0, 'zero': True, 'below': 0.0})
    """
    z = np.linspace(-8.0, 8.0, 16001)  # wider, float64 rounds tanh' to 0
    with np.errstate(all="ignore"):  # a custom activation may overflow: then there is no bound to state
        d = np.abs(np.asarray(row.numpy_derivative(z), dtype=float) + np.zeros_like(z))
    if not np.all(np.isfinite(d)):
        return {"max": math.inf, "zero": False, "below": None}
    zero = bool(np.any(d == 0))
    below = None
    for kink in row.kinks:
        if zero and np.all(d[z <= kink] == 0):
            below = float(kink)
    return {"max": float(np.round(d.max(), 4)), "zero": zero, "below": below}


def derivation_section(net) -> dict:
    """The context of the derivation's gradient-flow section (``templates/flow_section.tex.j2``): the
    product written for this network's ``L``, what each hidden activation's derivative does, and the
    norms of the error terms ``delta_l`` and of ``dL/dW_l`` at the worked example's point
    (:func:`symbp.document.example_values`), by the independent NumPy backprop; the verdict reads
    ``||delta_1|| / ||delta_L||``."""
    from . import numeric
    from .document import example_values
    from .example import plain_name, significant

    L = net.L
    activations = []
    for row in dict.fromkeys(net.hidden):
        bounds = derivative_bounds(row)
        if not math.isfinite(bounds["max"]):
            continue  # its derivative is unbounded (or not finite) near 0: no sentence to state
        activations.append({"title": plain_name(row), "max": _short(bounds["max"]),
                            "shrinks": bounds["max"] < 1,
                            "factor": _short(1 / bounds["max"]) if 0 < bounds["max"] < 1 else None,
                            "zero": bounds["zero"], "below": None if bounds["below"] is None
                            else significant(bounds["below"], 3)})
    norms, ratio = None, None
    if L > 1:
        values = {k: np.array(v.tolist(), dtype=float) for k, v in example_values(net).items()}
        with np.errstate(all="ignore"):  # a custom activation may give nan or inf here: then no table
            grads = numeric.reference_gradients(net, values)
            delta = [float(np.linalg.norm(grads[f"z{l}"])) for l in range(1, L + 1)]
            weight = [float(np.linalg.norm(grads[f"W{l}"])) for l in range(1, L + 1)]
        if all(math.isfinite(v) for v in delta + weight):
            norms = [{"l": l, "delta": significant(delta[l - 1]), "W": significant(weight[l - 1])}
                     for l in range(1, L + 1)]
            if delta[-1] > 0:
                ratio = {"value": significant(delta[0] / delta[-1]), "grows": delta[0] > delta[-1]}
    pairs = L - 1
    return {"L": L, "product": product_tex(L), "pairs": pairs, "pair_word": "pair" if pairs == 1 else "pairs",
            "batch": bool(net.batch), "residual": list(net.residual_layers), "activations": activations,
            "norms": norms, "ratio": ratio}


def _short(x) -> str:
    """Three significant digits without trailing zeros: ``4``, ``0.25``, ``1.13``."""
    from .example import significant

    text = significant(x, 3)
    return text.rstrip("0").rstrip(".") if "." in text else text
