"""Numbers: the derived gradients lambdified to NumPy, and two independent engines to check them.

How it works:

* :func:`lambdify` turns a :class:`~symbp.derive.Gradients` into one generated NumPy function. Its
  body is the forward pass (each stage's local definitions) followed by the error terms, passed to
  ``sympy.lambdify`` through its ``cse`` hook, so the named intermediates become the generated code's
  assignments. Softmax logits are shifted by their maximum right after they are computed: everything
  that uses them afterwards (softmax, the log-sum-exp loss and its derivatives) is invariant under that
  shift, so large logits cannot overflow.
* :func:`reference_gradients` is a plain NumPy backprop written from the conventions, matrix by matrix;
  it never looks at SymPy.
* :func:`finite_differences` perturbs one entry at a time (central differences with one Richardson
  step, step chosen per entry) of the NumPy forward pass, and reports any entry whose perturbation
  crosses a kink of ReLU-like activations instead of trusting it.
"""

from __future__ import annotations

import linecache
import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .derive import Gradients, paused_gc
from .errors import SymbpError
from .layers import Network
from .network import MLP
from .registry import NUMPY_FUNCTIONS

# --------------------------------------------------------------------------- values


def check_values(net: MLP, values: dict, names=None) -> dict:
    """``values`` as float64 arrays, each checked against the network's shape for that name."""
    names = names or net.inputs + net.params
    out = {}
    for name in names:
        if name not in values:
            raise SymbpError(f"missing value for '{name}' (expected shape {net.shape(name)})")
        array = np.asarray(values[name], dtype=float)
        if array.ndim == 1 and net.shape(name)[1] == 1:
            array = array.reshape(-1, 1)
        if array.shape != net.shape(name):
            raise SymbpError(f"{name}: expected shape {net.shape(name)}, got {array.shape}")
        out[name] = array
    return out


class RandomPoint(dict):
    """The arrays of a random point (``{name: ndarray}``), and ``near_kinks``: the pre-activation
    entries ``(name, (i, j))`` that could not be moved ``margin`` away from a kink (empty unless a
    batch is so large that no single bias moves every row of a unit clear)."""

    def __init__(self, values, near_kinks=()):
        super().__init__(values)
        self.near_kinks = list(near_kinks)


def random_values(net: MLP, seed=0, *, margin: float = 0.05) -> RandomPoint:
    """Random float64 inputs and parameters for ``net``, with every pre-activation of a kinked
    activation at least ``margin`` away from its kink wherever that can be arranged.

    ``x ~ N(0, 1)``, ``W_l ~ N(0, 1 / n_(l-1))``, ``b_l ~ N(0, 1)``. Targets fit the loss: rows of
    probabilities summing to 1 for cross-entropy, entries in (0, 1) for binary cross-entropy, normal
    numbers for mse. A unit near a kink only matters for the gradients it touches, so units are
    cleared one at a time, layer by layer: a unit with a row within ``margin`` of a kink has its bias
    shifted by the smallest amount (at most ``0.5 + 2 * margin``) that clears every row; failing that
    (no bias, or a batch too dense for any such shift), its incoming weights and bias are redrawn a
    few times; an entry still near a kink is listed in ``near_kinks`` rather than hidden. This never
    raises for a valid network, whatever its width or batch.

    >>> import symbp
    >>> net = symbp.MLP([64, 192, 10])
    >>> point = random_values(net, 0)
    >>> min_kink_distance(net, point) >= 0.05, point.near_kinks
    (True, [])
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SymbpError(f"seed: expected a whole number >= 0, got {seed!r}")
    if isinstance(net, Network):
        return _random_network_values(net, seed, margin)
    rng = np.random.default_rng(seed)
    values = {name: rng.normal(size=net.shape(name)) for name in ("x",) + net.params}
    for l in range(1, net.L + 1):
        values[f"W{l}"] *= 1.0 / np.sqrt(net.sizes[l - 1])
    values["y"] = _random_target(net, rng)
    near = []
    for l in range(1, net.L):
        kinks = np.asarray(net.hidden[l - 1].kinks, dtype=float)
        if kinks.size:
            with np.errstate(all="ignore"):  # an activation such as log(relu(x)) is not finite everywhere
                near += _clear_layer(net, values, l, kinks, margin, rng)
    return RandomPoint(values, near)


def _clear_layer(net, values, l, kinks, margin, rng):
    """Move the units of layer ``l`` off their kinks (see :func:`random_values`); the entries left."""
    forward = forward_pass(net, values)
    a = _rows(net, values["x"] if l == 1 else forward[f"a{l - 1}"])
    z = _rows(net, forward[f"z{l}"])
    W, b = values[f"W{l}"], values.get(f"b{l}")
    left = []
    for i in np.nonzero(_near(z, kinks, margin).any(axis=0))[0]:
        column = z[:, i]
        for attempt in range(8):
            if attempt:  # redraw the unit's incoming weights (and bias)
                W[i] = rng.normal(size=W.shape[1]) / np.sqrt(W.shape[1])
                column = a @ W[i]
                if b is not None:
                    b[i, 0] = rng.normal()
                    column = column + b[i, 0]
            if not _near(column, kinks, margin).any():
                break
            shift = _clearing_shift(column, kinks, margin) if b is not None else None
            if shift is not None:
                b[i, 0] += shift
                column = column + shift
                break
        left += [(f"z{l}", (int(n), int(i)) if net.batch else (int(i), 0))
                 for n in np.nonzero(_near(column, kinks, margin))[0]]
    return left


def _near(z, kinks, margin):
    return np.min(np.abs(np.asarray(z)[..., None] - kinks), axis=-1) < margin


def _clearing_shift(column, kinks, margin):
    """The shift ``s`` of smallest size, at most ``0.5 + 2 * margin``, that puts every entry of
    ``column + s`` at least ``margin`` from every kink; ``None`` if there is none."""
    wide = margin * 1.01  # endpoints a hair outside, so rounding cannot put them back inside
    centres = np.sort((kinks[None, :] - column[:, None]).ravel())
    merged = []  # the forbidden shifts, as disjoint open intervals in increasing order
    for c in centres:
        if merged and c - wide <= merged[-1][1]:
            merged[-1][1] = c + wide
        else:
            merged.append([c - wide, c + wide])
    best = None
    for low, high in merged:
        if low < 0 < high:
            best = min((low, high), key=abs)
            break
    else:
        return 0.0
    return best if abs(best) <= 0.5 + 2 * margin else None


def _random_target(net, rng):
    shape = net.shape("y")
    rows = shape if net.batch else shape[::-1]
    kind = getattr(net.loss_row, "target", "any")  # the loss row's column (a custom loss: any)
    if kind == "one-hot":  # rows summing to 1, as a one-hot target's do
        y = rng.dirichlet(np.ones(rows[1]), size=rows[0])
    elif kind == "binary":  # strictly inside (0, 1), as the logs of its loss need
        y = rng.uniform(0.05, 0.95, size=rows)
    else:
        y = rng.normal(size=rows)
    return y if net.batch else y.T


def min_kink_distance(net: MLP, values: dict) -> float:
    """The smallest distance of a pre-activation to a kink of its activation (inf if none)."""
    if isinstance(net, Network):
        return _network_min_kink_distance(net, values)
    forward = forward_pass(net, values)
    best = np.inf
    for l in range(1, net.L):
        for kink in net.hidden[l - 1].kinks:
            best = min(best, float(np.min(np.abs(forward[f"z{l}"] - kink))))
    return best


# --------------------------------------------------------------------------- lambdify


class GradientFunction:
    """The lambdified gradients: call with keyword arrays ``x, y, W1, b1, ...``; get ``{name: ndarray}``.

    ``source`` is the generated code.
    """

    def __init__(self, net, names, layout, fn, source, args):
        self.net, self.names, self.layout = net, names, layout
        self._fn, self.source, self._args = fn, source, args

    def __call__(self, **values):
        arrays = check_values(self.net, values)
        flat = []
        for name in self._args:
            flat.extend(arrays[name].ravel())
        # The generated code's own float warnings (overflow, 0/0) never reach the user: non-finite
        # results are reported by the checks that read them (max_abs_error returns nan for them).
        with np.errstate(all="ignore"):
            results = self._fn(*flat)
        out = {}
        for name, result in zip(self.names, results):
            shape = self.net.shape(name)
            array = np.array(result, dtype=float).reshape(shape)
            out[name] = array.T if self.layout == "numerator" else array
        return out

    def __repr__(self):
        return f"GradientFunction({self.net!r}, names={self.names})"


def _program(net: MLP, grads: Gradients, shift: str | None):
    """The assignments of the generated function: forward stages, the shift of the logits stage
    ``shift`` (if any), the error terms."""
    program = []
    for stage in net.stages:
        program.extend(zip(stage.symbols, stage.local))
        if stage.name == shift:
            for n, row in enumerate(net._examples(stage.symbols)):
                top = sp.Symbol(f"_zmax_{n}")
                program.append((top, sp.Max(*row)))
                program.extend((z, z - top) for z in row)
    return program + list(grads.definitions)


def _restage(net: MLP, matrices):
    """Replace written-out forward subexpressions (from ``expand``) by the stage symbols."""
    written = {}
    for symbol, expr in net.forward_env().items():
        if not expr.is_Atom:
            written[expr] = symbol
            written[-expr] = -symbol  # as in exp(-z), which diff produces from 1/softmax
    return [M.xreplace(written) for M in matrices]


def _all_logits_staged(net, outputs, logits):
    """Whether no ``exp`` of a written-out logit is left (``expand`` results are restaged only as far
    as their forms match); the logit shift is safe only then."""
    if isinstance(net, Network):
        owner = net.layer_of(logits)
        names = tuple(owner.params.values()) if owner is not None else ()
        if not names:
            return False
    else:
        names = tuple(name for name in (f"W{net.L}", f"b{net.L}") if name in net.params)
    last = {s for name in names for s in net.symbols(name)}
    return not any(e.args[0].free_symbols & last for M in outputs for entry in M for e in entry.atoms(sp.exp))


def _logits(net) -> str | None:
    """The stage whose rows may be shifted by their maximum in the generated code: the input of a
    last layer whose output (and the loss written in it) does not change under that shift.

    For an MLP, ``z_L`` under softmax. For a network, read from the table, never from a name: the last
    op's ``numpy`` column (and the fused loss's) give the same numbers for rows shifted by a constant,
    its input is computed by a layer with parameters and read by nothing else."""
    if not isinstance(net, Network):
        return f"z{net.L}" if net.output.name == "softmax" else None
    last = net.layers[-1]
    owner = net.layer_of(last.inp)
    if owner is None or not owner.params or last.params or last.extra or last.stages:
        return None
    if any(last.inp in layer.extra.values() for layer in net.layers):
        return None
    probe = np.random.default_rng(0).normal(size=(2, last.n_in)) * 3
    shifted = probe - probe.max(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        same = np.allclose(last.op.numpy(probe, {}, {}, last.cfg, lambda k, v: v),
                           last.op.numpy(shifted, {}, {}, last.cfg, lambda k, v: v), rtol=1e-12, atol=1e-14)
        if same and net.fused:
            y = np.full((2, last.n_out), 1.0 / last.n_out)
            same = np.allclose(net.fused.numpy(probe, y), net.fused.numpy(shifted, y), rtol=1e-12, atol=1e-14)
    return last.inp if same else None


def lambdify(net: MLP, grads: Gradients, *, names=None) -> GradientFunction:
    """A NumPy function computing the derived gradients ``names`` (default: all) from raw arrays.

    >>> import symbp
    >>> net = symbp.MLP([2, 2], output="softmax", loss="cross_entropy")
    >>> fn = symbp.lambdify(net, symbp.derive(net))
    >>> g = fn(x=[[1.0], [2.0]], y=[[0.0], [1.0]], W1=np.eye(2), b1=[[1000.0], [999.0]])
    >>> g["z1"].ravel().tolist()  # logits 1001 and 1001: softmax 1/2 each, a - y
    [0.5, -0.5]
    """
    if not isinstance(grads, Gradients) or grads.net is not net:
        raise SymbpError("lambdify: grads must come from symbp.derive of this network")
    names = list(names or grads)
    for name in names:
        if name not in grads:
            raise SymbpError(f"lambdify: no gradient named '{name}'; have {', '.join(grads)}")
    args = list(net.inputs + net.params)
    arg_symbols = [s for name in args for s in net.symbols(name)]
    denominator = grads.with_layout("denominator")
    outputs = [denominator[name] for name in names]
    if grads.method == "expand":
        outputs = _restage(net, outputs)
    # chain results are written in the stage symbols (exp(z3_0_0), never exp(W3_0_0*a2_0_0 + ...)), so
    # the shift is always safe for them; only expand results need the (costly at scale) look.
    logits = _logits(net)
    staged = logits is not None and (grads.method == "chain" or _all_logits_staged(net, outputs, logits))
    program = _program(net, grads, logits if staged else None)
    targets = set(net.symbols("y"))
    flat_outputs = [[guard_target_ratios(e, targets) for e in M] for M in outputs]
    program = [(s, guard_target_ratios(e, targets)) for s, e in program]
    with paused_gc():  # printing allocates as much as deriving: see derive.paused_gc
        fn = sp.lambdify(arg_symbols, flat_outputs, modules=[dict(NUMPY_FUNCTIONS, target_ratio=np_target_ratio), "numpy"],
                         printer=_printer(),
                         cse=lambda exprs: (program, exprs), docstring_limit=0)
    # The generated module is exactly this function; reading it back whole is much faster than
    # inspect.getsource, which tokenizes it to find the function's end.
    source = "".join(linecache.getlines(fn.__code__.co_filename))
    return GradientFunction(net, names, grads.layout, fn, source, args)


class target_ratio(sp.Function):
    """``n / d`` where the numerator ``n`` is a function of the targets alone (``-y/a`` of
    cross-entropy, ``(1 - y)/(1 - a)`` of binary cross-entropy): 0 wherever ``n`` is 0, whatever ``d``.
    That is the derivative's true value there: the loss term it comes from (``y log a``) is identically
    0 in ``a`` when ``y = 0``, so an ``a`` that underflowed to 0 must not make it ``0/0 = nan``."""


def np_target_ratio(n, d):
    """NumPy :class:`target_ratio`.

    >>> np_target_ratio(np.array([0.0, 1.0]), np.array([0.0, 4.0])).tolist()
    [0.0, 0.25]
    """
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    zero = n == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero, 0.0, n / np.where(zero, 1.0, d))


def guard_target_ratios(expr, targets):
    """``expr`` with every product ``n / d`` whose numerator is in ``targets`` alone written as
    :class:`target_ratio` (for the generated code only; the derivation keeps ``-y/a``).

    >>> y, a = sp.symbols("y_0_0 a2_0_0")
    >>> guard_target_ratios(-y / a, {y})
    target_ratio(-y_0_0, a2_0_0)
    """
    if not expr.free_symbols & targets:
        return expr

    def is_ratio(e):
        if not e.is_Mul:
            return False
        n, d = e.as_numer_denom()
        return d != 1 and bool(n.free_symbols) and n.free_symbols <= targets

    return expr.replace(is_ratio, lambda e: target_ratio(*e.as_numer_denom()))


def _printer():
    """The printer ``sympy.lambdify`` would build for ``modules=[NUMPY_FUNCTIONS, "numpy"]``, except
    that sums are printed in SymPy's internal order of their terms (``order="none"``) instead of being
    sorted for display: sorting the terms of every sum costs about half the time at scale (the
    [784, 128, 64, 10] forward pass has 128 sums of 785 terms), and only the order of floating-point
    additions changes."""
    from sympy.printing.numpy import NumPyPrinter

    return NumPyPrinter({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True,
                         "user_functions": {name: name for name in [*NUMPY_FUNCTIONS, "target_ratio"]}, "order": "none"})


# --------------------------------------------------------------------------- NumPy engines


def _rows(net, array):
    """Single examples are columns; the engines work on rows (examples) throughout."""
    return array if net.batch else array.T


def forward_pass(net: MLP, values: dict, perturb: dict | None = None) -> dict:
    """The NumPy forward pass: ``{z1, a1, ..., zL, aL, "L": loss}``; ``perturb`` adds to intermediates
    (in the network's own shapes) as they are computed, for finite differences."""
    perturb = perturb or {}
    a = _rows(net, np.asarray(values["x"], dtype=float))
    out = {}
    for l in range(1, net.L + 1):
        z = a @ np.asarray(values[f"W{l}"]).T
        if net.bias:
            z = z + np.asarray(values[f"b{l}"]).T
        z = z + _rows(net, perturb.get(f"z{l}", 0.0) * np.ones(net.shape(f"z{l}")))
        if l < net.L:
            new = net.hidden[l - 1].numpy(z)
            if l in net.residual_layers:
                new = new + a
        else:
            new = net.output.numpy(z)
        a = new + _rows(net, perturb.get(f"a{l}", 0.0) * np.ones(net.shape(f"a{l}")))
        out[f"z{l}"], out[f"a{l}"] = z, a
    y = _rows(net, np.asarray(values["y"], dtype=float))
    if net.fused and f"a{net.L}" not in perturb:
        per_example = net.fused.numpy(out[f"z{net.L}"], y)
    else:
        per_example = net.loss_row.numpy(out[f"a{net.L}"], y)
    total = per_example.sum()
    out["L"] = total / per_example.size if net.batch and net.reduction == "mean" else total
    for name in net.intermediates:
        out[name] = _rows(net, out[name])
    return out


def reference_gradients(net: MLP, values: dict) -> dict:
    """Plain NumPy backprop, matrix by matrix, in denominator layout: ``{name: ndarray}``."""
    values = check_values(net, values)
    fwd = forward_pass(net, values)
    rows = {k: _rows(net, v) for k, v in fwd.items() if k != "L"}
    rows["a0"] = _rows(net, values["x"])
    y = _rows(net, values["y"])
    scale = 1.0 / y.shape[0] if net.batch and net.reduction == "mean" else 1.0
    L = net.L
    aL, zL = rows[f"a{L}"], rows[f"z{L}"]
    with np.errstate(divide="ignore", invalid="ignore"):  # -y/a is out of range where a underflows
        grads = {f"a{L}": scale * net.loss_row.numpy_grad(aL, y)}
    if net.fused:
        dz = scale * net.fused.numpy_dz(zL, aL, y)
    else:
        dz = net.output.numpy_vjp(aL, grads[f"a{L}"])
    for l in range(L, 0, -1):
        grads[f"z{l}"] = dz
        grads[f"W{l}"] = dz.T @ rows[f"a{l - 1}"]
        if net.bias:
            grads[f"b{l}"] = dz.sum(axis=0, keepdims=True).T
        if l == 1:
            break
        da = dz @ np.asarray(values[f"W{l}"])
        if l in net.residual_layers:
            da = da + grads[f"a{l}"]
        grads[f"a{l - 1}"] = da
        dz = da * net.hidden[l - 2].numpy_derivative(rows[f"z{l - 1}"])
    for name in net.intermediates:
        grads[name] = _rows(net, grads[name])
    return {name: grads[name] for name in net.params + net.intermediates}


@dataclass
class FiniteDifferences:
    """Central-difference gradients, and the entries whose perturbation crossed a kink."""

    gradients: dict
    kink_crossings: list = field(default_factory=list)  # (name, (i, j))

    def max_abs_error(self, got: dict) -> tuple[float, int]:
        """The largest difference to ``got`` over the entries whose perturbation crossed no kink
        (across a kink a difference quotient is not a derivative), and how many were left out."""
        crossed = set(self.kink_crossings)
        worst = 0.0
        for name, fd in self.gradients.items():
            keep = np.ones(fd.shape, dtype=bool)
            for n, index in crossed:
                if n == name:
                    keep[index] = False
            if keep.any():
                worst = max(worst, float(np.max(np.abs(np.asarray(got[name]) - fd)[keep])))
        return worst, len(crossed)


def _kink_pattern(net, fwd):
    return [fwd[f"z{l}"] > k for l in range(1, net.L) for k in net.hidden[l - 1].kinks]


def finite_differences(net: MLP, values: dict, names=None) -> FiniteDifferences:
    """dL/dV by central differences of :func:`forward_pass`, one entry at a time.

    The step is ``h = 1e-3 * max(0.01, |v|)`` (relative to the entry), refined once by Richardson extrapolation
    (``(4 D(h/2) - D(h)) / 3``, error O(h^4)). An entry whose perturbation moves a pre-activation across
    a kink is listed in ``kink_crossings`` (its number is then not a derivative). For a network of
    layers, the forward is :func:`network_forward` and the kinks are those of each op's input.
    """
    return _finite_differences(net, values, names)


def _finite_differences(net, values, names=None) -> FiniteDifferences:
    """:func:`finite_differences` under another name, for callers whose parameter shadows it."""
    values = check_values(net, values)
    if isinstance(net, Network):
        return _central_differences(net, values, names, lambda v, perturb=None: network_forward(net, v, perturb=perturb),
                                    lambda v, fwd: _network_kink_pattern(net, v, fwd))
    return _central_differences(net, values, names, lambda v, perturb=None: forward_pass(net, v, perturb=perturb),
                                lambda v, fwd: _kink_pattern(net, fwd))


def _central_differences(net, values, names, forward, kinks) -> FiniteDifferences:
    """The loop of :func:`finite_differences`, for either network: ``forward(values, perturb=None)`` is
    the independent forward (a dict with ``"L"``), ``kinks(values, fwd)`` which side of each kink its
    inputs are on."""
    names = list(names or net.params + net.intermediates)
    base = forward(values)
    pattern = kinks(values, base)
    result = FiniteDifferences({})
    for name in names:
        is_param = name in net.params
        point = values[name] if is_param else base[name]
        grad = np.zeros(net.shape(name))
        for index in np.ndindex(*grad.shape):
            h = 1e-3 * max(1e-2, abs(point[index]))

            def loss_at(step):
                delta = np.zeros(grad.shape)
                delta[index] = step
                if is_param:
                    moved = dict(values, **{name: values[name] + delta})
                    fwd = forward(moved)
                else:
                    moved, fwd = values, forward(values, perturb={name: delta})
                return fwd["L"], any(np.any(p != q) for p, q in zip(pattern, kinks(moved, fwd)))

            samples = {s: loss_at(s) for s in (h, -h, h / 2, -h / 2)}
            if any(crossed for _, crossed in samples.values()):
                result.kink_crossings.append((name, index))
            d1 = (samples[h][0] - samples[-h][0]) / (2 * h)
            d2 = (samples[h / 2][0] - samples[-h / 2][0]) / h
            grad[index] = (4 * d2 - d1) / 3
        result.gradients[name] = grad
    return result


def _decidable(a, b) -> bool:
    """Whether two arrays can be compared: no nan, and an infinity only where the other side has the
    same one (both engines overflowed alike, as ``-y/a`` at an ``a`` that underflowed to 0)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.isnan(a).any() or np.isnan(b).any():
        return False
    infinite = np.isinf(a) | np.isinf(b)
    return bool(np.all(a[infinite] == b[infinite])) if infinite.any() else True


def _difference(a, b) -> np.ndarray:
    """``|a - b|``, 0 where both are the same infinity."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, np.abs(a - b))


def max_abs_error(a: dict, b: dict, names=None) -> float:
    """The largest entry-wise difference over the gradients both dicts have; ``nan`` (undecidable,
    never a pass) when either side has a nan, or an infinity the other side does not share.

    >>> max_abs_error({"W1": [[1.0, 2.0]]}, {"W1": [[1.0, 2.5]]}), max_abs_error({"W1": [[np.nan]]}, {"W1": [[0.0]]})
    (0.5, nan)
    >>> max_abs_error({"W1": [[-np.inf, 1.0]]}, {"W1": [[-np.inf, 1.0]]}), max_abs_error({"W1": [[np.inf]]}, {"W1": [[1.0]]})
    (0.0, nan)
    """
    names = names or [n for n in a if n in b]
    if not all(_decidable(a[n], b[n]) for n in names):
        return math.nan
    return max((float(np.max(_difference(a[n], b[n]))) for n in names), default=0.0)


def max_rel_error(got: dict, truth: dict, names=None) -> float:
    """The largest difference relative to the size of the true gradient (per variable, max norm);
    ``nan`` (undecidable, never a pass) as for :func:`max_abs_error`; the scale of a variable is
    its largest finite entry."""
    names = names or [n for n in got if n in truth]
    if not all(_decidable(got[n], truth[n]) for n in names):
        return math.nan
    worst = 0.0
    for n in names:
        finite = np.abs(np.asarray(truth[n], dtype=float))
        finite = finite[np.isfinite(finite)]
        scale = max(float(np.max(finite)) if finite.size else 0.0, 1e-300)
        worst = max(worst, float(np.max(_difference(got[n], truth[n]))) / scale)
    return worst


#: Numeric errors are printed in documents as a bound ``< 10^k``, never below this ``k``: the digits
#: of a float64 rounding error differ from machine to machine, and documents must not.
ERROR_FLOOR = -12


def error_exponent(error: float) -> int | None:
    """The smallest ``k >= ERROR_FLOOR`` with ``error < 10^k``: how numeric errors are printed;
    ``None`` for a non-finite error (an undecidable check has no bound).

    >>> error_exponent(3.1e-16), error_exponent(0.002), error_exponent(float("nan"))
    (-12, -2, None)
    """
    if not math.isfinite(error):
        return None  # nan: undecidable (a non-finite gradient); no bound to print
    if error <= 0:
        return ERROR_FLOOR
    return max(ERROR_FLOOR, math.floor(math.log10(error)) + 1)


# --------------------------------------------------------------------------- networks of layers
#
# The engines for a :class:`symbp.layers.Network` read the op table only: each layer's ``numpy``
# column (rows orientation, see :mod:`symbp.ops`) is the forward that finite differences perturb, its
# ``torch`` column the forward that autograd differentiates, its ``kinks`` where a difference quotient
# is not a derivative. Nothing here knows an op by its name.


def _noop_stage(key, value):
    return value


def _layer_values(net, layer, rows, values):
    """The arrays a layer's ``numpy`` column takes: its input (rows), parameters, extra inputs (rows)."""
    P = {role: np.asarray(values[name], dtype=float) for role, name in layer.params.items()}
    E = {key: rows[name] for key, name in layer.extra.items()}
    return rows[layer.inp], P, E


def network_forward(net: Network, values: dict, perturb: dict | None = None) -> dict:
    """The NumPy forward pass of a network from each row's ``numpy`` column: every stage (in the
    network's own orientation) and ``"L"``, the loss. ``perturb`` adds to stages as they are computed
    (internal stages through the ``stage`` callback, so that what follows sees the moved value)."""
    perturb = perturb or {}
    rows = {name: _rows(net, np.asarray(values[name], dtype=float)) for name in ("x", "y", *net.masks)}

    def moved(name, value):
        value = np.asarray(value, dtype=float)
        return value + _rows(net, np.asarray(perturb[name])) if name in perturb else value

    with np.errstate(all="ignore"):
        for layer in net.layers:
            def stage(key, value, layer=layer):
                name = layer.stages[key]
                rows[name] = moved(name, value)
                return rows[name]

            X, P, E = _layer_values(net, layer, rows, values)
            rows[layer.name] = moved(layer.name, layer.op.numpy(X, P, E, layer.cfg, stage))
        y = rows["y"]
        if net.fused and net.output_name not in perturb:
            per_example = net.fused.numpy(rows[net.loss_stage], y)
        else:
            per_example = net.loss_row.numpy(rows[net.output_name], y)
    total = per_example.sum()
    out = {name: _rows(net, rows[name]) for name in net.intermediates}
    out["L"] = total / per_example.size if net.batch and net.reduction == "mean" else total
    return out


def _network_kink_pattern(net, values, fwd):
    """Which side of each kink every input of a kinked op is on (a list of boolean arrays)."""
    pattern = []
    for layer in net.layers:
        for kink in layer.op.kinks:
            inp = values["x"] if layer.inp == "x" else fwd[layer.inp]
            pattern.append(np.asarray(inp) > kink)
    return pattern


def _network_min_kink_distance(net, values):
    fwd = network_forward(net, values)
    best = np.inf
    for layer in net.layers:
        for kink in layer.op.kinks:
            inp = values["x"] if layer.inp == "x" else fwd[layer.inp]
            best = min(best, float(np.min(np.abs(np.asarray(inp) - kink))))
    return best


def _random_network_values(net: Network, seed, margin) -> RandomPoint:
    """:func:`random_values` for a network: ``x ~ N(0, 1)``; a parameter of shape ``(r, c)`` is
    ``N(0, 1/c)`` (``N(0, 1)`` for a column such as a bias or gamma); each dropout mask 0/1 with about
    a third dropped (at least one entry kept and, if it has two, one dropped); targets as for an MLP.
    Then the inputs of every kinked op are moved ``margin`` off its kinks where the layer before has a
    bias-like parameter: one whose entry ``i`` moves output feature ``i`` by exactly its own change,
    found by trying it on the layer's ``numpy`` column (affine's ``b``, a norm's ``beta``); the input
    ``x`` itself is moved entry by entry. What cannot be moved is listed in ``near_kinks``."""
    rng = np.random.default_rng(seed)
    values = {"x": rng.normal(size=net.shape("x"))}
    for name in net.params:
        rows, cols = net.shape(name)
        values[name] = rng.normal(size=(rows, cols)) / (np.sqrt(cols) if cols > 1 else 1.0)
    for name in net.masks:
        mask = (rng.random(size=net.shape(name)) > 1 / 3).astype(float)
        flat = mask.reshape(-1)
        flat[0] = 1.0
        if flat.size > 1:
            flat[-1] = 0.0
        values[name] = mask
    values["y"] = _random_target(net, rng)
    near = []
    for layer in net.layers:
        kinks = np.asarray(layer.op.kinks, dtype=float)
        if kinks.size:
            near += _clear_network_input(net, values, layer, kinks, margin)
    return RandomPoint(values, near)


def _bias_like(net, producer, values, rows):
    """The parameter of layer ``producer`` that adds its entry ``i`` to output feature ``i`` (or None)."""
    X, P, E = _layer_values(net, producer, rows, values)
    with np.errstate(all="ignore"):
        base = producer.op.numpy(X, P, E, producer.cfg, _noop_stage)
        for role, name in producer.params.items():
            if P[role].shape != (producer.n_out, 1):
                continue
            step = np.linspace(0.5, 1.5, producer.n_out).reshape(-1, 1)
            moved = producer.op.numpy(X, dict(P, **{role: P[role] + step}), E, producer.cfg, _noop_stage)
            if np.allclose(moved - base, np.broadcast_to(step.T, base.shape), rtol=1e-9, atol=1e-9):
                return name
    return None


def _clear_network_input(net, values, layer, kinks, margin):
    fwd = network_forward(net, values)
    if layer.inp == "x":  # an input: move the entries themselves
        x = values["x"]
        for index in zip(*np.nonzero(_near(x, kinks, margin))):
            column = x[index].reshape(1)
            shift = _clearing_shift(column, kinks, margin)
            x[index] += shift if shift is not None else 4 * margin
        return [("x", tuple(int(i) for i in index)) for index in zip(*np.nonzero(_near(x, kinks, margin)))]
    producer = net.layer_of(layer.inp)
    rows = {name: _rows(net, np.asarray(v)) for name, v in fwd.items() if name != "L"}
    rows.update({name: _rows(net, np.asarray(values[name])) for name in ("x", *net.masks)})
    z = rows[layer.inp]
    bias = _bias_like(net, producer, values, rows)
    if bias is not None:
        for i in np.nonzero(_near(z, kinks, margin).any(axis=0))[0]:
            shift = _clearing_shift(z[:, i], kinks, margin)
            if shift is not None:
                values[bias][i, 0] += shift
        z = _rows(net, network_forward(net, values)[layer.inp])
    return [(layer.inp, (int(n), int(i)) if net.batch else (int(i), 0))
            for n, i in zip(*np.nonzero(_near(z, kinks, margin)))]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_gradients(net: Network, values: dict) -> dict:
    """dL/dV for every parameter and stage by torch autograd (float64) through each row's ``torch``
    column; internal stages and outputs keep their gradients (``retain_grad``); an internal stage the
    torch form does not compute through ``stage`` (a fused ``layer_norm``) has none here. The loss's derivative
    d(loss)/d(output) is the loss row's own NumPy form (``numpy_grad``), fed to ``backward``: the engine
    checks the ops. A :class:`SymbpError` when torch is missing or an op has no torch form (a custom
    activation)."""
    try:
        import torch
    except ImportError:
        raise SymbpError("torch is not installed: pip install 'symbp[torch]'") from None
    values = check_values(net, values)

    def tensor(array):
        return torch.tensor(np.ascontiguousarray(array), dtype=torch.float64)

    leaves = {name: tensor(values[name]).requires_grad_() for name in net.params}
    rows = {"x": tensor(_rows(net, values["x"])).requires_grad_()}
    rows.update({name: tensor(_rows(net, values[name])) for name in net.masks})
    for layer in net.layers:
        if layer.op.torch is None:
            raise SymbpError(f"{layer.label}: the op has no torch form")

        def stage(key, t, layer=layer):
            if t.requires_grad:
                t.retain_grad()
            rows[layer.stages[key]] = t
            return t

        P = {role: leaves[name] for role, name in layer.params.items()}
        E = {key: rows[name] for key, name in layer.extra.items()}
        out = layer.op.torch(rows[layer.inp], P, E, layer.cfg, stage)
        if out is None:
            raise SymbpError(f"{layer.label}: the op has no independent torch form")
        out.retain_grad()
        rows[layer.name] = out
    a = rows[net.output_name]
    y = _rows(net, values["y"])
    scale = 1.0 / y.shape[0] if net.batch and net.reduction == "mean" else 1.0
    with np.errstate(all="ignore"):
        upstream = scale * net.loss_row.numpy_grad(a.detach().numpy(), y)
    a.backward(gradient=tensor(upstream))
    grads = {name: leaves[name].grad.numpy().copy() for name in net.params}
    for name in net.intermediates:
        if name not in rows:
            continue  # an internal stage the torch form does not compute (F.layer_norm's mean)
        g = rows[name].grad
        g = np.zeros(rows[name].shape) if g is None else g.numpy().copy()
        grads[name] = _rows(net, g)
    return grads


def jax_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("jax") is not None


def jax_gradients(net: Network, values: dict) -> dict:
    """dL/dV for every parameter by JAX autodiff (``jax.grad``, float64) of the network's loss written
    from the op table's ``code`` columns (:func:`symbp.codegen.loss_function`): a forward source of its
    own (not the rows' ``numpy`` or ``torch`` forms) and a derivative engine of its own. Parameters
    only: JAX differentiates a function's arguments, not its intermediate values. A
    :class:`SymbpError` when JAX is missing or an op has no code."""
    if not jax_available():
        raise SymbpError("jax is not installed: pip install 'symbp[jax]'")
    from .codegen import loss_function

    loss = loss_function(net, "jax")  # the generated module enables jax's 64-bit mode
    import jax
    import jax.numpy as jnp

    values = check_values(net, values)
    fixed = {name: jnp.asarray(np.asarray(values[name], dtype=float)) for name in net.inputs}
    params = {name: jnp.asarray(np.asarray(values[name], dtype=float)) for name in net.params}
    grads = jax.grad(lambda p: loss(**fixed, **p))(params)
    return {name: np.asarray(g, dtype=float) for name, g in grads.items()}


@dataclass
class NetworkCheck:
    """The lambdified gradients of a network at a random point against the reference engines.

    ``finite_differences`` is the max abs error against central differences of the NumPy forward
    (entries whose perturbation crosses a kink left out: ``kink_crossings`` of them); ``torch`` against
    torch autograd, or None with ``torch_skipped`` saying why (torch missing, an op without a torch
    form)."""

    values: dict
    got: dict
    finite_differences: float | None
    kink_crossings: int
    torch: float | None
    torch_skipped: str = ""
    jax: float | None = None  # against JAX autodiff (parameters only), or None with jax_skipped saying why
    jax_skipped: str = ""

    @property
    def worst(self) -> float:
        errors = [e for e in (self.finite_differences, self.torch) if e is not None]
        return math.nan if any(not math.isfinite(e) for e in errors) else max(errors)


def check_network(net: Network, grads: Gradients, seed=0, *, values=None, fn=None,
                  finite_differences: bool = True) -> NetworkCheck:
    """``lambdify(net, grads)`` at ``random_values(net, seed)`` (or ``values``) against both reference
    engines: finite differences of :func:`network_forward` and :func:`torch_gradients`.
    ``finite_differences=False`` leaves the first out (``None``): four forward passes per
    entry are minutes for tens of thousands of parameters.

    >>> import symbp
    >>> net = symbp.layers.network([{"op": "affine", "out": 3}, {"op": "layernorm"}, {"op": "relu"},
    ...                             {"op": "affine", "out": 2}], input=2, batch=2, loss="mse")
    >>> check = check_network(net, symbp.derive(net), 0)
    >>> check.finite_differences < 1e-7, check.kink_crossings
    (True, 0)
    """
    if not isinstance(net, Network):
        raise SymbpError(f"check_network: expected a network of layers, got {type(net).__name__}")
    values = values if values is not None else random_values(net, seed)
    fn = fn or lambdify(net, grads)
    got = fn(**values)
    if grads.layout == "numerator":
        got = {n: v.T for n, v in got.items()}
    fd_error, crossings = (_finite_differences(net, values).max_abs_error(got) if finite_differences
                           else (None, 0))
    torch_error, skipped = None, ""
    try:
        torch_error = max_abs_error(got, torch_gradients(net, values))
    except SymbpError as error:
        skipped = str(error)
    jax_error, jax_skipped = None, ""
    try:
        jax_error = max_abs_error(got, jax_gradients(net, values), names=[n for n in net.params if n in got])
    except SymbpError as error:
        jax_skipped = str(error)
    return NetworkCheck(values, got, fd_error, crossings, torch_error, skipped, jax_error, jax_skipped)
