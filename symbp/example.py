"""Worked examples by hand: every cell of a small network's forward and backward pass, exactly.

How it works:

* The numbers (``x, y, W*, b*``) are taken exactly: integers and fractions as they are, decimals as
  the decimals you wrote (``0.1`` is ``1/10``), text such as ``"1/3"`` through the whitelist parser.
* Forward: each stage's local definition (:attr:`symbp.MLP.stages`) is evaluated with the numbers of
  the stages before it, so ``z1, a1, ..., zL, aL`` and the loss are exact SymPy numbers. Softmax gives
  ``exp`` terms; they stay exact (``e^{10}/(1 + 2 e^{10})``) and decimals are shown next to them.
* Backward: the truth is symbp's own derivation, :func:`symbp.derive` with the chain method; its
  compact entries (``dL/dW1_ij = dz1_i x_j``, ``dz1_i = da1_i step(z1_i)``) are evaluated stage by
  stage, ``aL, zL, ..., a1, z1`` and then the parameters, each with the numbers of the stages before
  it. The tests cross-check every cell with the plain NumPy backprop of :mod:`symbp.numeric`.
* Networks of layers (:func:`symbp.network`, spec ``[[layers]]``) are worked the same way: their
  stages (each layer's output, and internal stages such as a norm's mean and variance) are evaluated
  in order, and the backward cells come layer by layer from the last, each layer's output gradient
  first, then its internal stages', then its parameters'. A dropout mask is one of the ``[values]``
  (0 or 1 in each entry). Layer norm and batch norm give square roots; they stay exact (decimals are
  shown next to them).
* Claimed cells (hand-computed numbers) are right when they equal the truth or agree with it to
  within ``tolerance`` (default 0.005: right to two decimals). A wrong one gets its reason by checking
  the usual mistakes, each recomputed exactly, in this order: a forgotten activation derivative (the
  ReLU mask), a transposed product, a wrong sign, a missing 1/N, a mask forgotten at an earlier layer
  and carried on, a forgotten bias, an activation not applied. If none of them gives the claimed
  number, the reason says so and gives the true value; nothing is guessed. For a network of layers
  the mistakes checked are the op table's own: a forgotten activation derivative, the skip term of an
  ``add`` left out, dropout's ``1/(1 - p)`` forgotten, a transposed weight gradient, a wrong sign, a
  missing (or doubled) 1/N, an activation not applied, twice the loss.

>>> import symbp
>>> net = symbp.MLP([2, 2, 1], hidden="relu", output="identity", loss="mse")
>>> values = {"x": [[1], [2]], "y": [[0]], "W1": [[1, -1], [1, 1]], "b1": [[0], [0]],
...           "W2": [[2, 3]], "b2": [[0]]}
>>> ex = worked_example(net, values, claimed={"dz1": [[36], [54]]})
>>> ex.value("z1").T, ex.loss, ex.value("da1").T, ex.value("dz1").T, ex.ok
(Matrix([[-1, 3]]), 81, Matrix([[36, 54]]), Matrix([[0, 54]]), False)
>>> print(ex.cell("dz1", 0, 0).reason)
z1[1] = -1 < 0, so ReLU blocks the gradient: dz1[1] = 0, not 36 (36 is da1[1]: the ReLU mask was forgotten)
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.core.evalf import PrecisionExhausted

from . import registry
from .derive import derive
from .errors import SymbpError, closest
from .expression import parse_scalar
from .layers import Network
from .network import MLP

DEFAULT_TOLERANCE = sp.Rational(5, 1000)


# --------------------------------------------------------------------------- the spec file

def from_spec(path, *, tolerance=None) -> "Example":
    """The worked example of a spec file: ``[model]``, ``[values]``, optional ``[claimed_values]``
    and ``[example]`` (``tolerance``, ``title``)."""
    from .spec import load

    spec = load(path, steps=("build", "example"))
    if not spec.values:
        raise SymbpError(f"spec file {str(path)!r}: the [values] table is missing")
    options = spec.example
    unknown = [k for k in options if k not in ("tolerance", "title", "note")]
    if unknown:
        raise SymbpError(f"[example] {unknown[0]}: unknown key (known: tolerance, title, note)")
    tol = tolerance if tolerance is not None else options.get("tolerance", DEFAULT_TOLERANCE)
    ex = worked_example(spec.net, spec.values, claimed=spec.claimed_values or None, tolerance=tol)
    ex.title = options.get("title")
    ex.note = options.get("note")
    return ex


# --------------------------------------------------------------------------- numbers

def exact(value, where: str) -> sp.Expr:
    """One number, exactly: ``2`` -> 2, ``0.1`` -> 1/10 (the decimal as written), ``"1/3"`` -> 1/3.

    >>> exact(0.1, "x"), exact("-1/3", "x"), exact(2, "x")
    (1/10, -1/3, 2)
    """
    if isinstance(value, bool):
        raise SymbpError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int):
        return sp.Integer(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise SymbpError(f"{where}: expected a finite number, got {value!r}")
        return sp.Rational(repr(value))
    if isinstance(value, str):
        number = parse_scalar(value, {}, what=where)
        if not number.is_extended_real:
            raise SymbpError(f"{where}: {value!r} is not a real number")
        return number
    if isinstance(value, sp.Basic) and value.is_number:
        return value
    raise SymbpError(f"{where}: expected a number, got {value!r}")


def matrix(value, name: str, shape) -> sp.Matrix:
    """Nested lists (rows) as an exact ``sympy.Matrix`` of ``shape``; a flat list is a column vector."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise SymbpError(f"{name}: expected nested lists (rows), got {value!r}")
    rows = [list(r) if isinstance(r, (list, tuple)) else [r] for r in value]
    if any(len(r) != len(rows[0]) for r in rows):
        raise SymbpError(f"{name}: rows of different lengths")
    got = (len(rows), len(rows[0]) if rows else 0)
    if got != tuple(shape):
        raise SymbpError(f"{name}: expected shape {tuple(shape)}, got {got}")
    return sp.Matrix([[exact(v, f"{name}[{i + 1},{j + 1}]") for j, v in enumerate(r)] for i, r in enumerate(rows)])


def tidy(v) -> sp.Expr:
    """A cheaper ``simplify`` for the values of a worked example: a rational function of ``e`` is
    cancelled (``exp(2)/(2*exp(2) + exp(-8))`` -> ``exp(10)/(1 + 2*exp(10))``), a log of one is expanded.

    >>> tidy(sp.exp(2) / (2 * sp.exp(2) + sp.exp(-8)))
    exp(10)/(1 + 2*exp(10))
    >>> tidy(sp.log(2 * sp.exp(2) + sp.exp(-8)) - 2)
    -10 + log(1 + 2*exp(10))
    """
    v = sp.sympify(v)
    if v.is_Rational or not v.has(sp.exp):
        return v
    exps = v.atoms(sp.exp)
    if not all(e.args[0].is_Integer for e in exps):
        return v
    t = sp.Dummy("t", positive=True)
    to_t = {e: t ** int(e.args[0]) for e in exps}

    def cancel(expr):
        return sp.factor_terms(sp.cancel(sp.together(expr.xreplace(to_t)))).xreplace({t: sp.E})

    if v.has(sp.log):
        v = v.replace(lambda e: isinstance(e, sp.log), lambda e: sp.log(cancel(e.args[0])))
        v = sp.expand_log(v, force=True)
        return v if not v.has(t) else v.xreplace({t: sp.E})
    out = cancel(v)
    return out


def decimal(v, digits: int = 4, approx=None) -> str:
    """``v`` rounded for people: ``0.5000``; a small nonzero number in scientific form.

    >>> decimal(sp.Rational(1, 2)), decimal(sp.exp(-10))
    ('0.5000', '0.0000454')
    """
    x = float(approx if approx is not None else sp.N(v, 30))
    if x != 0 and abs(x) < 10 ** -(digits - 1):
        places = 2 - math.floor(math.log10(abs(x)))  # three significant digits, no exponent
        return f"{x:.{places}f}"
    return f"{x:.{digits}f}"


def say(v, approx=None) -> str:
    """A number in a sentence: exact when rational (as a decimal if it is one), else five significant
    digits in plain decimals (never e-notation in typeset text).

    >>> say(sp.Rational(1, 2)), say(sp.Rational(-1, 3)), say(sp.exp(10) / (1 + 2 * sp.exp(10)))
    ('0.5', '-1/3', '0.49999')
    >>> say(sp.exp(-10) / (1 + sp.exp(-10)) / 2)
    '0.000022699'
    """
    v = sp.sympify(v)
    if v.is_Rational:
        q = int(v.q)
        while q % 2 == 0:
            q //= 2
        while q % 5 == 0:
            q //= 5
        if q == 1 and v.q != 1:
            return str(Decimal(int(v.p)) / Decimal(int(v.q)))
        return sp.sstr(v)
    x = float(approx if approx is not None else sp.N(v, 30))
    text = "%#.5g" % x
    return format(Decimal(text), "f") if "e" in text and math.isfinite(x) else text


# --------------------------------------------------------------------------- cells

@dataclass
class Cell:
    """One entry of one variable: its true value, and the claim about it if there is one."""

    name: str  # "z1", "a2", "L", "dz1", "dW2", ...
    index: tuple  # 0-based (i, j)
    value: sp.Expr
    label: str  # 1-based, as people write it: "dz1[3]", "dW2[1,2]"
    approx: sp.Float  # the value to PRECISION digits, computed alongside (decimals, comparisons)
    claimed: sp.Expr | None = None
    correct: bool | None = None
    reason: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "index": list(self.index), "value": float(self.approx),
                "exact": sp.sstr(self.value), "label": self.label,
                "claimed": None if self.claimed is None else float(self.claimed),
                "correct": self.correct, "reason": self.reason}


@dataclass
class Example:
    """Every cell of a worked example; ``cells`` in the order a person fills them in."""

    net: MLP | Network
    inputs: dict  # x, y, W*, b* (and dropout masks) -> exact Matrix
    forward: dict  # z1, a1, ..., zL, aL -> exact Matrix
    loss: sp.Expr
    backward: dict  # dz*, da*, dW*, db* -> exact Matrix
    approx: dict  # every name (and "L") -> the same matrix to PRECISION digits
    cells: list
    claimed: dict  # name -> Matrix of claims
    tolerance: sp.Expr
    title: str | None = None
    note: str | None = None
    transposed_claims: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.correct is not False for c in self.cells)

    def value(self, name: str) -> sp.Matrix:
        """The exact matrix of ``name`` (``x, W1, z1, dz1, dW1, ...``; ``L`` is a 1x1 matrix)."""
        for table in (self.inputs, self.forward, self.backward):
            if name in table:
                return table[name]
        if name == "L":
            return sp.Matrix([[self.loss]])
        raise SymbpError(f"no cell named '{name}'" + closest(name, self.names))

    def num(self, name: str) -> sp.Matrix:
        """The matrix of ``name`` to :data:`PRECISION` digits (exact inputs stay exact)."""
        if name in self.inputs:
            return self.inputs[name]
        self.value(name)  # the error for an unknown name
        return self.approx[name]

    def show(self, name: str, i: int = 0, j: int = 0) -> str:
        """Cell ``(i, j)`` of ``name`` in a sentence: exact if rational, else five digits."""
        return say(self.value(name)[i, j], self.num(name)[i, j])

    @property
    def names(self):
        return list(self.inputs) + list(self.forward) + ["L"] + list(self.backward)

    def cell(self, name: str, i: int = 0, j: int = 0) -> Cell:
        for c in self.cells:
            if c.name == name and c.index == (i, j):
                return c
        raise SymbpError(f"no cell {name}[{i}, {j}] (0-based)")

    @property
    def wrong(self) -> list:
        return [c for c in self.cells if c.correct is False]

    def to_json(self) -> dict:
        """The JSON of ``symbp example --json`` (INTERFACE): ``{"ok", "cells": [...]}``, 0-based indices."""
        return {"ok": self.ok, "network": self.net.describe(), "tolerance": float(self.tolerance),
                "loss": {"value": float(self.approx["L"][0]), "exact": sp.sstr(self.loss)},
                "cells": [c.to_json() for c in self.cells]}

    def report(self) -> str:
        """Plain text: the tables by name (exact values, decimals), then the verdict on each claim."""
        lines = [self.net.describe(), "denominator layout (dL/dV has the shape of V); relu'(0) = 0; indices 1-based", ""]
        for name in list(self.forward) + ["L"] + list(self.backward):
            M = self.value(name)
            shown = [[self.show(name, i, j) for j in range(M.cols)] for i in range(M.rows)]
            lines.append(f"  {name:<4} = {_rows_text(shown)}")
        claims = [c for c in self.cells if c.claimed is not None]
        if claims:
            right = sum(bool(c.correct) for c in claims)
            lines += ["", f"claimed cells: {right} of {len(claims)} right"]
            for c in claims:
                mark = "right" if c.correct else "WRONG"
                lines.append(f"  {c.label:<10} claimed {say(c.claimed):<10} {mark}: {c.reason}")
        return "\n".join(lines)


def _rows_text(rows) -> str:
    if len(rows) > 1 and all(len(r) == 1 for r in rows):
        return "[" + ", ".join(r[0] for r in rows) + "]^T"
    return "[" + "; ".join(", ".join(r) for r in rows) + "]"


def _label(net: MLP, name: str, i: int, j: int) -> str:
    """How people write a cell, 1-based: ``dz1[3]`` for a column vector, ``dW2[1,2]`` otherwise."""
    if name == "L":
        return "L"
    base = name[1:] if name.startswith("d") else name
    return f"{name}[{i + 1}]" if base in net.columns else f"{name}[{i + 1},{j + 1}]"


# --------------------------------------------------------------------------- computing

def worked_example(net: MLP, values: dict, *, claimed: dict | None = None, tolerance=DEFAULT_TOLERANCE) -> Example:
    """Every cell of ``net``'s forward and backward pass at ``values``, exactly; claims judged.

    ``values`` maps ``x, y, W1, b1, ...`` to nested lists (rows; a flat list is a column vector).
    ``claimed`` maps cell names (``z1``, ``a1``, ``L``, ``dz1``, ``da1``, ``dW1``, ``db1``, ...) to
    hand-computed numbers of the same shape. See the module docstring for how claims are judged.
    """
    if not isinstance(net, (MLP, Network)):
        raise SymbpError(f"worked_example: expected a symbp.MLP or a network of layers, got {type(net).__name__}")
    if not isinstance(values, dict):
        raise SymbpError("values: expected a table of x, y and the parameters")
    tolerance = exact(tolerance, "tolerance")
    if tolerance.is_extended_real is not True or tolerance.is_finite is not True or tolerance < 0:
        raise SymbpError(f"tolerance: expected a finite number >= 0, got {tolerance}")
    needed = list(net.inputs + net.params)
    unknown = [k for k in values if k not in needed]
    if unknown:
        raise SymbpError(f"values: unknown name '{unknown[0]}'" + (closest(unknown[0], needed)
                         or f" (this network takes {', '.join(needed)})"))
    missing = [k for k in needed if k not in values]
    if missing:
        raise SymbpError(f"values: missing {', '.join(missing)} (shapes: "
                         + ", ".join(f"{k} {net.shape(k)}" for k in missing) + ")")
    inputs = {k: matrix(values[k], k, net.shape(k)) for k in needed}
    for k in getattr(net, "masks", ()):
        for (i, j), v in zip(itertools.product(range(inputs[k].rows), range(inputs[k].cols)), inputs[k]):
            if v not in (0, 1):
                raise SymbpError(f"values.{k}[{i + 1},{j + 1}]: a dropout mask holds 0 (dropped) or 1 (kept), got {v}")

    env, num = {}, {}  # symbol -> exact value; symbol -> value to PRECISION digits
    for k, M in inputs.items():
        env.update(zip(net.symbols(k), M))
        num.update(zip(net.symbols(k), M))
    forward, approx = {}, {}
    for stage in net.stages:
        M = stage.local.xreplace(env).applyfunc(tidy)
        forward[stage.name] = M
        approx[stage.name] = _evaluate(stage.local, num, stage.name)
        env.update(zip(stage.symbols, M))
        num.update(zip(stage.symbols, approx[stage.name]))
    loss = tidy(net.local_loss.xreplace(env))
    approx["L"] = _evaluate(sp.Matrix([[net.local_loss]]), num, "L")

    grads = derive(net, method="chain")
    backward_values = {}
    for name in list(reversed(net.intermediates)) + list(reversed(net.params)):
        M = grads[name].xreplace(env).applyfunc(tidy)
        if any(v.free_symbols for v in M):
            raise AssertionError(f"{name}: symbols left after substitution: {M}")  # an internal invariant
        backward_values[name] = M
        approx["d" + name] = _evaluate(grads[name], num, "d" + name)
        env.update(zip(net.grad_symbols(name), M))
        num.update(zip(net.grad_symbols(name), approx["d" + name]))
    backward = {}
    for name in _backward_order(net):
        if name in backward_values:
            backward["d" + name] = backward_values[name]

    ex = Example(net=net, inputs=inputs, forward=forward, loss=loss, backward=backward, approx=approx, cells=[],
                 claimed={}, tolerance=tolerance)
    ex.claimed = _claims(ex, claimed or {})
    for name in list(forward) + ["L"] + list(backward):
        M, A = ex.value(name), ex.num(name)
        for i in range(M.rows):
            for j in range(M.cols):
                ex.cells.append(Cell(name, (i, j), M[i, j], _label(net, name, i, j), A[i, j]))
    _judge(ex)
    return ex


def _backward_order(net) -> list:
    """The order a person fills in the backward cells: layer by layer from the last; for an MLP
    ``a_l, z_l, W_l, b_l``, for a network of layers each layer's output, its internal stages (last
    first), then its parameters."""
    if isinstance(net, MLP):
        return [n for l in range(net.L, 0, -1) for n in (f"a{l}", f"z{l}", f"W{l}", f"b{l}")]
    order = []
    for layer in reversed(net.layers):
        order += [layer.name, *reversed(list(layer.stages.values())), *layer.params.values()]
    return order


PRECISION = 40


def _evaluate(M: sp.Matrix, num: dict, name: str) -> sp.Matrix:
    """``M`` at the numbers ``num`` to :data:`PRECISION` digits: a shadow of the exact values that
    stays cheap when they grow (a tanh of a tanh of ...), used for decimals and comparisons. A value
    SymPy cannot get to that precision (``log(exp(z1) + exp(z2)) - z1`` with ``z ~ 1e300`` cancels every
    digit) is refused, naming the cell, rather than printed wrong (``evalf(strict=True)``); one known
    only to be below ``1e-30`` in size is 0."""
    def approximate(v):
        if v.is_Rational:
            return v
        try:
            value = sp.N(v, PRECISION, strict=True)
        except PrecisionExhausted:  # no digit known: fine if it is known to be 0 to 30 places
            value = sp.N(v, PRECISION)
            value = sp.Float(0, PRECISION) if value.is_Float and abs(float(value)) < 1e-30 else None
        if value is None or not value.is_finite:
            raise SymbpError(f"{name}: its value cannot be computed to {PRECISION} digits at these [values] "
                             "(they are too large: a worked example is for numbers a person can follow)")
        return value

    return M.xreplace(num).applyfunc(approximate)


def _claims(ex: Example, claimed: dict) -> dict:
    if not isinstance(claimed, dict):
        raise SymbpError("claimed_values: expected a table of cell names and numbers")
    names = list(ex.forward) + ["L"] + list(ex.backward)
    out = {}
    for name, value in claimed.items():
        if name not in names:
            hint = closest(name, names) or f" (known: {', '.join(names)})"
            if name.startswith("dL/d") or name.startswith("dL_d"):
                hint = f" (write d{name[4:]} for dL/d{name[4:]})"
            raise SymbpError(f"claimed_values: unknown cell name '{name}'{hint}")
        truth = ex.value(name)
        if name == "L" and not isinstance(value, (list, tuple)):
            value = [[value]]
        try:
            out[name] = matrix(value, name, truth.shape)
        except SymbpError:
            if truth.rows != truth.cols:
                try:
                    M = matrix(value, name, (truth.cols, truth.rows))
                except SymbpError:
                    M = None
                if M is not None:
                    out[name] = M.T
                    ex.transposed_claims.append(name)
                    continue
            raise SymbpError(f"claimed_values {name}: expected shape {truth.shape} (the shape of "
                             f"{name[1:] if name.startswith('d') else name}, denominator layout), got "
                             f"{_shape_of(value)}") from None
    return out


def _shape_of(value):
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return (len(value), len(value[0]))
    if isinstance(value, (list, tuple)):
        return (len(value), 1)
    return "a single number"


# --------------------------------------------------------------------------- judging

def _close(a, b, tolerance) -> bool:
    """Equal, or within ``tolerance`` (``a`` and ``b`` are rationals or floats to PRECISION digits)."""
    if a == b:
        return True
    return abs(float(a - b)) <= float(tolerance) * (1 + 1e-12)


def _judge(ex: Example):
    for cell in ex.cells:
        if cell.name not in ex.claimed:
            continue
        claim = ex.claimed[cell.name][cell.index]
        cell.claimed = claim
        if cell.name in ex.transposed_claims:
            r, c = ex.value(cell.name).shape
            cell.correct = False
            cell.reason = (f"written as a {c}x{r} matrix, but {cell.name} has the shape of "
                           f"{cell.name[1:] if cell.name.startswith('d') else cell.name}, {r}x{c} "
                           "(denominator layout): the product is transposed")
            continue
        if claim == cell.value:
            cell.correct, cell.reason = True, "exact"
        elif _close(claim, cell.approx, ex.tolerance):
            cell.correct = True
            cell.reason = f"agrees to within {say(ex.tolerance)} (true value {say(cell.value, cell.approx)})"
        else:
            cell.correct = False
            cell.reason = _diagnose(ex, cell, claim)


def _diagnose(ex: Example, cell: Cell, claim) -> str:
    """The reason a claimed cell is wrong: the first of the usual mistakes that gives the claimed number."""
    net, name, (i, j), truth = ex.net, cell.name, cell.index, cell.approx
    tol = ex.tolerance
    wrong = f"{cell.label} = {say(cell.value, truth)}, not {say(claim)}"

    def gives(alt):
        return alt is not None and _close(claim, alt, tol) and not _close(alt, truth, tol)

    if isinstance(net, Network):
        return _diagnose_layers(ex, cell, claim, wrong, gives)

    backward = name.startswith("d")
    var = name[1:] if backward else name
    kind, layer = var[:1], int(var[1:]) if var[1:].isdigit() else None

    if backward and kind == "z" and layer is not None and layer < net.L:
        da = ex.num(f"da{layer}")[i, j]
        if gives(da):
            z = ex.num(f"z{layer}")[i, j]
            zlabel, dalabel = _label(net, f"z{layer}", i, j), _label(net, f"da{layer}", i, j)
            act = net.hidden[layer - 1]
            slope = _derivative(act, ex.value(f"z{layer}")[i, j])
            if slope == 0:  # a flat side (ReLU's z <= 0): the derivative blocks the gradient
                return (f"{zlabel} = {ex.show(f'z{layer}', i, j)}{_side(act, z)}, so {plain_name(act)} blocks the "
                        f"gradient: {wrong} "
                        f"({say(claim)} is {dalabel}: the {plain_name(act)} mask was forgotten)")
            return (f"{wrong}: {cell.label} = {dalabel} * {plain_name(act)}'({zlabel}) = {ex.show(f'da{layer}', i, j)} * "
                    f"{say(slope, sp.N(slope, PRECISION))}; "
                    f"the factor {plain_name(act)}'({zlabel}) was forgotten")
    if backward and kind in "Wa" and layer is not None:
        alt = _transposed_alternative(ex, name, i, j)
        if gives(alt):
            return f"{wrong}: {_transposed_story(ex, name, i, j)}"
    if gives(-truth):
        extra = ""
        if name == f"dz{net.L}" and net.fused is not None:
            extra = f" (dL/dz{net.L} = a{net.L} - y, not y - a{net.L})"
        return f"{wrong}: the sign is flipped{extra}"
    if net.batch and net.reduction == "mean" and backward and gives(net.batch * truth):
        return (f"{wrong}: the 1/N is missing: the loss is the mean over the N = {net.batch} examples, "
                f"so every gradient carries a factor 1/{net.batch}")
    if net.batch and net.reduction == "mean" and backward and gives(truth / net.batch):
        upstream = f"dz{layer}" if kind in "Wb" and layer is not None else "its upstream gradient"
        return (f"{wrong}: the 1/N is applied twice: the loss is the mean over the N = {net.batch} examples, "
                f"and {upstream} already carries its factor 1/{net.batch}")
    if name == "L" and net.batch and net.reduction == "mean" and gives(net.batch * truth):
        return (f"{wrong}: the 1/N is missing: the loss is the mean over the N = {net.batch} examples "
                f"({say(claim)} is their sum)")
    if name == "L" and gives(2 * truth):
        return f"{wrong}: that is twice L; multiplied by 1/2 it is right (a factor 1/2 forgotten)"
    if backward:
        story = _forgotten_upstream(ex, name, i, j, gives)
        if story:
            return f"{wrong}: {story}"
    if kind == "z" and not backward and net.bias and gives(truth - ex.num(f"b{layer}")[
            j if net.batch else i, 0]):
        return f"{wrong}: the bias {_label(net, f'b{layer}', j if net.batch else i, 0)} was left out"
    if kind == "a" and not backward and layer is not None and gives(ex.num(f"z{layer}")[i, j]):
        act = net.activation(layer)
        return f"{wrong}: the activation {act.name} was not applied ({say(claim)} is {_label(net, f'z{layer}', i, j)})"
    return (f"{wrong}; none of the usual mistakes (a forgotten ReLU mask, a transposed product, a wrong sign, "
            "a missing 1/N, a forgotten bias) gives this number")


def _diagnose_layers(ex: Example, cell: Cell, claim, wrong: str, gives) -> str:
    """:func:`_diagnose` for a network of layers: the mistakes of the op table's rows, then the
    general ones (sign, 1/N, a transposed weight gradient, twice the loss), each recomputed from the
    exact cells."""
    net, name, (i, j), truth = ex.net, cell.name, cell.index, cell.approx
    backward = name.startswith("d")
    var = name[1:] if backward else name
    here = lambda other: _label(net, other, i, j)  # noqa: E731 - the same cell of another variable
    if backward:
        for layer in net.layers:
            if var not in (layer.inp, *layer.extra.values()):
                continue
            upstream = ex.num("d" + layer.name)[i, j]  # the same shape as var: entry-wise ops, dropout, add
            if layer.inp == var and layer.op.activation is not None:
                inp = ex.num(var)[i, j]
                slope = _derivative(layer.op.activation, ex.value(var)[i, j])
                if gives(truth + upstream * (1 - slope)):  # this layer's term without its f'
                    title = plain_name(layer.op)
                    if slope == 0:  # a flat side (ReLU's z <= 0): the derivative blocks the gradient
                        return (f"{here(var)} = {say(ex.value(var)[i, j], inp)}{_side(layer.op, inp)}, so "
                                f"{title} blocks the gradient: {wrong} (the {title} mask of {layer.label} was forgotten: "
                                f"{here('d' + layer.name)} = {say(upstream)} passed on unchanged)")
                    return (f"{wrong}: the factor {title}'({here(var)}) = {say(slope, sp.N(slope, PRECISION))} "
                            f"of {layer.label} was forgotten ({here('d' + layer.name)} passed on unchanged)")
            if layer.inp == var and "mask" in layer.extra and "p" in layer.cfg:  # dropout's kept entries
                kept = ex.num(layer.extra["mask"])[i, j]
                p = _exact_p(layer)
                if gives(truth - upstream * kept * p / (1 - p)):  # this layer's term without 1/(1 - p)
                    return (f"{wrong}: the scale 1/(1 - p) = {say(1 / (1 - p))} of {layer.label} was forgotten "
                            "(kept entries are scaled up in training mode)")
            if layer.extra.get("from") == var and gives(truth - upstream):
                return (f"{wrong}: the skip term {here('d' + layer.name)} of the residual connection {layer.label} "
                        f"was left out ({var} is read twice, so its gradient is the sum of both paths)")
        if var in net.params and ex.value(name).is_square:
            if gives(ex.num(name)[j, i]):
                return f"{wrong}: that is {_label(net, name, j, i)}: the product is transposed ({name} has the shape of {var})"
    if gives(-truth):
        return f"{wrong}: the sign is flipped"
    if net.batch and net.reduction == "mean" and backward and gives(net.batch * truth):
        return (f"{wrong}: the 1/N is missing: the loss is the mean over the N = {net.batch} examples, "
                f"so every gradient carries a factor 1/{net.batch}")
    if net.batch and net.reduction == "mean" and backward and gives(truth / net.batch):
        return (f"{wrong}: the 1/N is applied twice: the loss is the mean over the N = {net.batch} examples, "
                f"and the upstream gradient already carries its factor 1/{net.batch}")
    if name == "L" and net.batch and net.reduction == "mean" and gives(net.batch * truth):
        return (f"{wrong}: the 1/N is missing: the loss is the mean over the N = {net.batch} examples "
                f"({say(claim)} is their sum)")
    if name == "L" and gives(2 * truth):
        return f"{wrong}: that is twice L; multiplied by 1/2 it is right (a factor 1/2 forgotten)"
    layer = net.layer_of(var)
    if (not backward and layer is not None and layer.name == var and layer.op.activation is not None
            and gives(ex.num(layer.inp)[i, j])):
        return (f"{wrong}: the activation {layer.op.name} was not applied ({say(claim)} is {here(layer.inp)}, "
                f"{layer.label})")
    return (f"{wrong}; none of the usual mistakes (a forgotten activation derivative, a skip term left out, "
            "dropout's scale forgotten, a transposed product, a wrong sign, a missing 1/N) gives this number")


def plain_name(row) -> str:
    """How a sentence names an activation (a registry row or an op of the table): its ``latex`` column
    when that is an ``\\operatorname`` (``ReLU``, ``GELU``) or a bare function (``tanh``), else its name.

    >>> from symbp.ops import op
    >>> plain_name(op("relu")), plain_name(op("tanh")), plain_name(op("sigmoid"))
    ('ReLU', 'tanh', 'sigmoid')
    """
    import re

    match = re.fullmatch(r"\\operatorname\{(\w+)\}|\\([a-z]+)", row.latex or "")
    if match and (match.group(1) or match.group(2) in ("tanh", "exp", "log")):
        return match.group(1) or match.group(2)
    return row.name


def _side(row, z) -> str:
    """Where ``z`` sits against the row's kinks (its ``kinks`` column): `` < 0``, `` = 0``, `` > 0``, or
    nothing for a row without kinks."""
    kinks = sorted(getattr(row, "kinks", ()) or ())
    if not kinks:
        return ""
    z = float(z)
    nearest = min(kinks, key=lambda k: abs(k - z))
    sign = "=" if z == nearest else ("<" if z < nearest else ">")
    return f" {sign} {say(sp.Rational(repr(nearest)))}"


def _exact_p(layer) -> sp.Rational:
    p = layer.cfg["p"]
    return sp.Rational(p.numerator, p.denominator)


def _derivative(act, z):
    return tidy(registry.derivative(act)(z))


def _transposed_alternative(ex: Example, name: str, i: int, j: int):
    """The value a transposed product would put in cell (i, j), or None if it has no such cell."""
    net = ex.net
    var = name[1:]
    l = int(var[1:])
    if var[0] == "W":
        M = ex.num(name)
        return M[j, i] if M.rows == M.cols else None
    if var[0] == "a" and l < net.L:
        W, dz = ex.inputs[f"W{l + 1}"], ex.num(f"dz{l + 1}")
        if W.rows != W.cols:
            return None
        alt = dz * W.T if net.batch else W * dz
        return alt[i, j]
    return None


def _transposed_story(ex, name, i, j):
    var = name[1:]
    l = int(var[1:])
    prev = "x" if l == 1 else f"a{l - 1}"
    if var[0] == "W":
        product = f"dz{l}^T {prev}" if ex.net.batch else f"dz{l} {prev}^T"
        wrong = f"{prev}^T dz{l}" if ex.net.batch else f"{prev} dz{l}^T"
        return (f"that is {_label(ex.net, name, j, i)}: the product is transposed ({wrong} instead of {product}; "
                f"dW{l} has the shape of W{l})")
    l2 = l + 1
    if ex.net.batch:
        return f"W{l2} was not transposed (dz{l2} W{l2}^T instead of dz{l2} W{l2})"
    return f"W{l2} was not transposed (W{l2} dz{l2} instead of W{l2}^T dz{l2})"


def _forgotten_upstream(ex: Example, name: str, i: int, j: int, gives):
    """A claim that matches the backward pass with the activation derivative dropped at some hidden
    layers (the mask forgotten there and carried on), or None."""
    net = ex.net
    hidden = [l for l in range(1, net.L) if net.hidden[l - 1].name != "identity"]
    if not hidden or net.residual_layers:
        return None
    for size in range(1, len(hidden) + 1):
        for dropped in itertools.combinations(sorted(hidden, reverse=True), size):
            alt = mistaken_backward(ex, dropped, exact=False)
            if name in alt and gives(alt[name][i, j]):
                where = " and ".join(f"dz{l}" for l in dropped)
                acts = {plain_name(net.hidden[l - 1]) for l in dropped}
                masks = all(_derivative(net.hidden[l - 1], v) in (0, 1) for l in dropped for v in ex.value(f"z{l}"))
                what = f"the {acts.pop()} mask" if masks and len(acts) == 1 else "the activation derivative"
                return (f"{say(alt[name][i, j], alt[name][i, j])} is what the backward pass gives when {what} is forgotten at "
                        f"{where} and carried on")
    return None


def mistaken_backward(ex: Example, dropped=(), *, exact: bool = True) -> dict:
    """The backward pass, matrix by matrix, with the activation derivative left out at the hidden
    layers ``dropped``; exact, or to PRECISION digits. With ``dropped=()`` it is a second,
    matrix-level computation of the truth.
    """
    net = ex.net
    value = ex.value if exact else ex.num
    finish = tidy if exact else (lambda v: v if v.is_Rational else sp.N(v, PRECISION))
    dz = value(f"dz{net.L}")
    out = {}
    for l in range(net.L, 0, -1):
        prev = value("x" if l == 1 else f"a{l - 1}")
        W = ex.inputs[f"W{l}"]
        out[f"dz{l}"] = dz
        out[f"dW{l}"] = (dz.T * prev if net.batch else dz * prev.T).applyfunc(finish)
        if net.bias:
            out[f"db{l}"] = (dz.T * sp.ones(dz.rows, 1) if net.batch else dz).applyfunc(finish)
        if l == 1:
            break
        da = (dz * W if net.batch else W.T * dz).applyfunc(finish)
        out[f"da{l - 1}"] = da
        if l - 1 in dropped:
            dz = da
        else:
            act = net.hidden[l - 2]
            z = value(f"z{l - 1}")
            dz = sp.Matrix(da.rows, da.cols, lambda r, c: finish(da[r, c] * _derivative(act, z[r, c])))
    return out


# --------------------------------------------------------------------------- the document

def document(ex: Example, *, title: str | None = None, user_dir=None, blank: bool = False) -> str:
    """The LaTeX document: the forward and backward tables as a person fills them in, then the claims.
    ``blank``: a problem sheet: the given numbers (``x``, ``y``, the parameters, masks) and a box for
    every computed cell, no claims and no exact values (the solution is the document without it)."""
    from .latex import latex, render

    net = ex.net
    if isinstance(net, Network):
        return _layers_document(ex, title=title, user_dir=user_dir, blank=blank)

    def rows(M, name=None, A=None, given=None):
        marks = name in ex.claimed and not blank
        hidden = blank and not (given if given is not None else name in ex.inputs)
        A = M if A is None else A
        return [[{"v": M[i, j], "rational": _fraction(M[i, j]), "dec": _decimal_text(M[i, j], A[i, j]),
                  "blank": hidden, "mark": ex.cell(name, i, j).correct if marks else None} for j in range(M.cols)]
                for i in range(M.rows)]

    def entry(name):
        return {"name": name, "symbol": _tex_name(name), "rows": rows(ex.value(name), name, ex.num(name))}

    layers = []
    for l in range(1, net.L + 1):
        prev = "x" if l == 1 else f"a{l - 1}"
        layer = {"l": l, "W": entry(f"W{l}"), "b": entry(f"b{l}") if net.bias else None, "z": entry(f"z{l}"),
                 "a": entry(f"a{l}"), "prev_symbol": _tex_name(prev), "prev_rows": rows(ex.value(prev), None, ex.num(prev), prev in ex.inputs)}
        layer["a"]["how"] = net.activation(l).name
        layers.append(layer)
    back = []
    for l in range(net.L, 0, -1):
        step = {"l": l, "entries": []}
        names = [f"dz{l}", f"dW{l}", f"db{l}"] if l == net.L and net.fused else \
            [f"da{l}", f"dz{l}", f"dW{l}", f"db{l}"]
        for name in names:
            if name not in ex.backward:
                continue
            item = entry(name)
            prev = "x" if l == 1 else f"a{l - 1}"
            item.update(prev_symbol=_tex_name(prev), prevT_rows=rows(ex.value(prev).T, None, ex.num(prev).T, prev in ex.inputs),
                        dz_rows=rows(ex.value(f"dz{l}"), None, ex.num(f"dz{l}")), next=l + 1 if l < net.L else None)
            if name == f"dz{l}" and l < net.L:
                act = net.hidden[l - 1]
                mask = ex.value(f"z{l}").applyfunc(lambda v: _derivative(act, v))
                mask_num = ex.num(f"z{l}").applyfunc(lambda v: sp.N(_derivative(act, v), PRECISION))
                item.update(da_rows=rows(ex.value(f"da{l}"), None, ex.num(f"da{l}")),
                            mask_rows=rows(mask, None, mask_num))
            step["entries"].append(item)
        back.append(step)
    irrational = [{"label": c.label, "value": c.value, "dec": decimal(c.value, approx=c.approx)}
                  for c in ex.cells if not c.value.is_Rational and sp.count_ops(c.value) <= 40 and not blank]
    claims = [{"label": c.label, "correct": c.correct, "reason": c.reason,
               "claimed_tex": latex(c.claimed) if _fraction(c.claimed) else _decimal_text(c.claimed, c.claimed),
               "value_tex": latex(c.value) if _fraction(c.value) else _decimal_text(c.value, c.approx)}
              for c in ex.cells if c.claimed is not None and not blank]
    disputes = []
    for name, M in ({} if blank else ex.claimed).items():
        cells = [c for c in ex.cells if c.name == name]
        disputes.append({"name": name, "symbol": _tex_name(name), "claimed_rows": rows(M), "truth_rows": rows(ex.value(name), None, ex.num(name)),
                         "right": all(c.correct for c in cells), "wrong": [c for c in cells if not c.correct]})
    return render("example.tex.j2", user_dir=user_dir, author="symbp example",
                  title=title or ex.title or "A worked example by hand", note=ex.note,
                  description=net.describe(), x=entry("x"), y=entry("y"), layers=layers,
                  loss={"v": ex.loss, "dec": decimal(ex.loss, approx=ex.num("L")[0]),
                        "rational": bool(ex.loss.is_Rational), "short": sp.count_ops(ex.loss) <= 40},
                  loss_name=net.loss_row.name, fused=net.fused is not None, back=back,
                  irrational=irrational[:80], n_irrational=sum(not c.value.is_Rational for c in ex.cells),
                  claims=claims, ok=ex.ok,
                  tolerance=say(ex.tolerance), batch=net.batch, reduction=net.reduction, L=net.L,
                  disputes=disputes, side_ok=_targets_sum_to_one(ex), blank=blank, flags=kink_flags(ex))


def _targets_sum_to_one(ex: Example) -> bool:
    y = ex.inputs["y"]
    rows = [y.row(n) for n in range(y.rows)] if ex.net.batch else [y.T]
    return all(sum(r) == 1 for r in rows)


def _fraction(v) -> bool:
    """Rationals that are not terminating decimals are printed as fractions; the rest as decimals."""
    return bool(v.is_Rational) and "/" in say(v)


def _decimal_text(v, approx) -> str:
    return say(v) if v.is_Rational else decimal(v, approx=approx)


def _tex_name(name):
    """``dW2`` -> ``{"grad": True, "letter": "W", "layer": "2"}``, for the template's ``var`` macro."""
    grad = name.startswith("d")
    var = name[1:] if grad else name
    return {"grad": grad, "letter": var[0], "layer": var[1:]}


def _layers_document(ex: Example, *, title=None, user_dir=None, blank=False) -> str:
    """The document of a network of layers: layer by layer, each parameter and output with its numbers;
    then from the last layer back, each gradient next to its formula (the op table's ``backward``
    column, as :func:`symbp.verify.textbook` assembles it) and its numbers."""
    from .document import network_names
    from .formula import parse
    from .latex import SymbpLatexPrinter, abbreviated, formula_lines, render, visible_width
    from .verify import textbook

    net = ex.net
    printer = SymbpLatexPrinter(columns=net.columns, names=network_names(net))
    claims = textbook(net)

    def entry(name, grad=False):
        key = "d" + name if grad else name
        M = ex.value(key)
        A = ex.num(key) if key in ex.approx or key in ex.inputs else M
        marks = key in ex.claimed and not blank
        hidden = blank and key not in ex.inputs
        cells = [[{"text": None if hidden else _cell_text(M[i, j], A[i, j]),
                   "mark": ex.cell(key, i, j).correct if marks else None} for j in range(M.cols)]
                 for i in range(M.rows)]
        symbol = (rf"\frac{{\partial L}}{{\partial {printer.base(name)}}}" if grad else printer.base(name))
        out = {"name": key, "symbol": symbol, "rows": cells, "formula": None, "where": []}
        if grad and name in claims:
            node = parse(claims[name], net)
            out["formula"] = formula_lines(node, printer=printer, width=55)
            if max(visible_width(line) for line in out["formula"]) > 60:  # a long product: name its repeats
                main, out["where"] = abbreviated(node, printer=printer)
                out["formula"] = [main]
        return out

    forward = []
    for layer in net.layers:
        forward.append({"position": layer.position, "op": layer.op.name, "op_tex": layer.op.latex,
                        "summary": layer.op.summary, "input": printer.base(layer.inp),
                        "given": [entry(n) for n in (*layer.params.values(), *(v for k, v in layer.extra.items()
                                                                               if v in net.inputs))],
                        "stages": [entry(n) for n in layer.stages.values()], "out": entry(layer.name),
                        "note": layer.op.note})
    backward = []
    for layer in reversed(net.layers):
        names = [layer.name, *reversed(list(layer.stages.values())), *layer.params.values()]
        backward.append({"position": layer.position, "op": layer.op.name,
                         "entries": [entry(n, grad=True) for n in names if "d" + n in ex.backward]})
    claimed = [{"label": c.label, "correct": c.correct, "reason": c.reason, "claimed": _cell_text(c.claimed, c.claimed),
                "value": _cell_text(c.value, c.approx)} for c in ex.cells if c.claimed is not None and not blank]
    return render("example.tex.j2", user_dir=user_dir, author="symbp example", layered=True, blank=blank,
                  title=title or ex.title or "A worked example by hand", note=ex.note,
                  description=net.describe(), x=entry("x"), y=entry("y"), forward=forward, back=backward,
                  loss_text=r"\blankcell" if blank else _cell_text(ex.loss, ex.num("L")[0]), loss_name=net.loss_row.name,
                  loss_tex=net.loss_row.latex, batch=net.batch, reduction=net.reduction, claims=claimed,
                  ok=ex.ok, tolerance=say(ex.tolerance), flags=kink_flags(ex))


def significant(x, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, in plain decimals (never an exponent, never ``0`` for a
    small nonzero number).

    >>> significant(0.49999), significant(2.7e-5), significant(-12.3456), significant(0), significant(123456.7)
    ('0.5000', '0.00002700', '-12.35', '0', '123457')
    """
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    exponent = math.floor(math.log10(abs(x)))
    places = max(0, digits - 1 - exponent)
    text = f"{x:.{places}f}"
    if float(text) != 0 and len(text.lstrip("-").replace(".", "").lstrip("0")) > digits and places:
        text = f"{x:.{places - 1}f}"  # 9.99996 rounds up to 10.000: one place less
    return text


def _cell_text(v, approx) -> str:
    """A cell as typeset: an integer or a decimal of at most four significant digits as it is (``0.5``,
    ``-12``), else four significant digits (``0.3333`` for 1/3).

    >>> _cell_text(sp.Rational(1, 2), None), _cell_text(sp.Rational(11, 64), None), _cell_text(sp.Rational(-1, 3), None)
    ('0.5', '0.1719', '-0.3333')
    """
    v = sp.sympify(v)
    if v.is_Rational and "/" not in say(v) and len(say(v).lstrip("-").replace(".", "").strip("0")) <= 4:
        return say(v)
    return significant(approx if approx is not None else sp.N(v, 30))


def kink_flags(ex: Example) -> list:
    """The cells that sit on a kink of the op reading them, with the convention that decides their
    derivative: ``["z1[2] = 0: ReLU'(0) = 0 by convention"]`` (the ops' and activations' ``kinks``
    column; their derivative from :func:`symbp.registry.derivative`)."""
    net = ex.net
    readers = ([(f"z{l}", net.hidden[l - 1]) for l in range(1, net.L)] if isinstance(net, MLP) else
               [(layer.inp, layer.op.activation) for layer in net.layers if layer.op.activation is not None])
    flags = []
    for name, row in readers:
        kinks = [sp.Rational(repr(k)) for k in (row.kinks or ())]
        M, A = ex.value(name), ex.num(name)
        for (i, j), v, approx in zip(itertools.product(range(M.rows), range(M.cols)), M, A):
            if v in kinks:
                slope = _derivative(row, v)
                flags.append(f"{_label(net, name, i, j)} = {say(v)}: {plain_name(row)}'({say(v)}) = "
                             f"{say(slope)} by convention")
            elif not kinks:  # a smooth activation: flag a unit whose slope has all but vanished
                slope = abs(float(row.numpy_derivative(np.array([float(approx)]))[0]))
                if slope < SATURATED:
                    flags.append(f"{_label(net, name, i, j)} = {_cell_text(v, approx)}: {plain_name(row)} saturates "
                                 f"there ({plain_name(row)}' = {significant(slope)})")
    return flags


#: Below this slope a smooth activation's unit is flagged as saturated (its gradient all but vanishes).
SATURATED = 0.01
