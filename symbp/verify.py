"""Verdicts on closed-form gradient claims and backward-pass code, with a checked diagnosis.

How a claim for ``dL/dV`` is judged (each claim on its own; a name ``dU`` in it stands for the true
gradient ``dL/dU``, taken from :func:`symbp.derive`, the ground truth):

``symbolic``
    Claim and truth become SymPy matrices in the network's symbols. Each ``a_l`` is replaced by its
    definition (``relu(z_l)``, the softmax of ``z_L``...), the ``dU`` stay free, and every entry of the
    difference is tested with :func:`symbp.exact.frozen_zero` (function applications frozen to fresh
    symbols, then ``cancel(together(...))``). Zero with free ``dU``, ``z_l`` and frozen functions is
    zero for their true values too: a proof. If that fails, the ``dU`` are replaced by their own
    derivations and the test repeated. For softmax + cross-entropy the identity ``dL/dz = a - y``
    needs ``sum_k y_k = 1``: then ``y_last = 1 - sum(others)`` is substituted in each example and the
    condition is listed in ``assumptions``. Tried on small targets only.
``exact-random``
    Both sides are evaluated, every element, at random points with exact rational arithmetic
    (``fractions.Fraction``): random rationals for ``x, y, W, b``; the forward pass from the network's
    own definitions; every transcendental value frozen to a random rational keyed by its argument
    (``exp(u)`` for ``u > 0`` is ``s/(1-s)`` with ``s`` random in (1/2, 1), so above 1 as the real one,
    ``exp(-u) = 1/exp(u)``, ``sigmoid`` and ``tanh`` are written through ``exp`` so their identities
    hold exactly; ``log`` of a new number is a new random rational with the real one's sign). Equal everywhere at several points means the difference is zero as a
    rational function of the frozen values (Schwartz-Zippel), hence zero. Points where a kinked
    pre-activation is exactly 0 are redrawn, and only points where the target's true gradient is
    not all zero count (a dead ReLU layer zeroes it). A claim whose ``relu``/``step`` has its kink
    anywhere but at 0 of a stage (``step(z2 - 0.04)``: the kink is where the argument is zero, found
    by :func:`symbp.registry.real_zeros`, so ``step(1 - exp(z1))`` is at 0) fails before any point is
    drawn; one whose zeros SymPy cannot find gets ``error`` (undecided). Matrix-level
    (object arrays), so [784, 128, 64, 10] is judged in seconds.
``numeric``
    An exact mismatch *refutes* the claim unless the claim itself applies a frozen function: an
    ``exp, log, sigmoid, tanh, softplus, erf, cosh, softmax``, a fractional power (``sqrt``), the
    constant ``pi``, or a kink whose argument is not a multiple of one symbol (its sign could be a
    frozen value's). Why: without one, each entry of the claim is a rational (piecewise, through exact
    ``relu``/``step``) function of the network's own values (``x, y, W, b, z, a``, the true ``dU``; the
    sizes ``n0, n1, ...``, ``mean`` and ``var`` are rational too), and so is the truth; the freezing keeps every
    algebraic relation among those values (``exp(-u) = 1/exp(u)``, ``sigmoid = e/(1+e)``, softmax
    rows summing to 1, each activation and its derivative through one ``exp`` of one argument), so a
    difference at the frozen point is a difference of the real functions; ``dz1 + 1e-10`` or
    ``dz3 @ a2.T * 1.0000000001`` fails, with the element. (The premise holds for every registry row; a
    custom activation written with ``exp`` of two unrelated multiples of ``x``, such as ``exp(x/2)``,
    is the exception.) A fractional power is frozen consistently: ``v ** (p/q)`` is ``r ** p`` for one random
    ``r`` per ``(v, q)``, so a norm's ``sqrt(var + eps)`` in a claim and SymPy's ``(var + eps) ** (-3/2)``
    in the truth agree exactly; what is lost is ``r ** q = v``. A network whose forward pass takes one
    (layer norm, RMSNorm, batch norm, attention's ``sqrt(dk)`` for a ``dk`` that is not a square, GELU's
    ``sqrt(2)``) has that relation among its own values, which a claim could use without a frozen function
    of its own (``xhat / (var + eps)`` for ``xhat / std ** 2``): there an exact mismatch refutes nothing,
    and the float tier decides (an exact *agreement* is still a proof). Attention's ``exp`` of its scores
    is frozen like softmax's, with the rows of its weights summing to 1 exactly. Only a claim with a frozen function of its own, whose mismatch may come from an
    identity the freezing does not see (``exp(a + b) = exp(a) exp(b)``, the shift invariance of
    softmax), goes to the float tier: both sides in multi-precision floats (:class:`MpField`) at
    random points away from kinks, with ``NUMERIC_DIGITS`` (30) digits plus the digits of the claim's
    own numbers (:func:`numeric_digits`), so that an offset written in the claim (``+ 1e-300``) stays
    visible. Agreement to within ``10 ** -(digits - 10)``, relative to the truth's largest entry, is
    ``holds`` with method ``numeric`` and a detail saying it is a float judgement, with its tolerance;
    anything else fails.

Networks of layers (:mod:`symbp.layers`) are judged the same way, reading the op table only: the kinks
are those of each layer's op (``op.kinks``) at its input, dropout masks are drawn 0/1 (exact and float),
targets are drawn by the loss (in (0, 1) for a loss that takes logs), the outputs of layers without
parameters or stages are replaced by their definitions in the symbolic tier, and code claims get the
masks among their values.

A failing claim gets a diagnosis, each one *verified* (the corrected claim must hold, exactly):
``transposed`` (``C.T`` holds), ``sign`` (``-C`` holds), ``scaled`` (``factor * C`` holds; ``factor`` =
truth / claim, e.g. ``1/N`` for a missing mean, ``N`` for a mean applied twice),
``missing-activation-derivative`` (multiplying a part of the claim by ``f'(z_l)``, the output layer's
included (its Jacobian for softmax), or moving such a factor to the right variable, makes it hold),
``extra-activation-derivative`` (removing such a factor makes it hold), ``shape`` (the claim's shape
is not the target's), else ``other``; plus one element where claim and truth differ, with both
expressions there. A corrected claim that holds only under the side condition lists it in the
result's ``assumptions``. A claim whose operands' shapes do not fit (``W2 @ dz2``; the parser's
:class:`~symbp.formula.FormulaError` with ``kind == "shape"``) fails too, with ``transposed`` and the
fix (``write W2.T @ dz2``) when transposing operands, or the whole, makes it hold, else ``shape``.
In a network of layers a failing claim that equals (at the same tiers) one of the wrong claims of its
layer's row (``op.mistakes``, assembled as :func:`textbook` assembles, so a residual without its skip
term is the sum of the other contributions) is named after that mistake first, with ``factor`` kept when
it is a scaling (``attention-without-the-scale``: 1/sqrt(dk), from the float points when frozen).
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from dataclasses import field as _field
from fractions import Fraction

import numpy as np
import sympy as sp

from . import allsizes
from . import functions as F
from .derive import Gradients, derive
from .errors import SymbpError, closest
from .exact import frozen_zero
from .formula import FormulaError, Node, Semantics, evaluate, evaluate_array, parse
from .names import TextPrinter
from .layers import Network
from .network import MLP
from .registry import real_zeros

VERDICTS = ("holds", "fails", "error")
METHODS = ("all-sizes", "symbolic", "exact-random", "numeric")
DIAGNOSES = ("transposed", "scaled", "sign", "missing-activation-derivative", "extra-activation-derivative", "shape",
             "other")
#: A network of layers also names a failing claim after its row's mistake (``op.mistakes``), e.g.
#: ``layernorm-statistics-as-constants``: the names come from the op table, not from this list.

#: Targets with at most this many entries are tried symbolically first.
SYMBOLIC_LIMIT = 64
#: The resolved symbolic stage is skipped when an entry of the difference has more operations.
RESOLVED_ENTRY_LIMIT = 400
EXACT_POINTS = 3
EXACT_DRAWS = 12  # draws to find EXACT_POINTS points where the target's gradient is not all zero
NUMERIC_DIGITS = 30  # the float tier's working precision (decimal digits) before the claim's own numbers
NUMERIC_SLACK = 10  # its tolerance: 10 ** -(digits - NUMERIC_SLACK), relative to the truth's largest entry
#: The exact tier's budget: when a value of a target's truth (or of the forward, or of an error term it
#: needs) has a numerator or denominator of more than this many digits, or the exact evaluation of a
#: point takes more than ``EXACT_SECONDS``, that target is judged by the float tier instead (attention's
#: softmax rows give each row its own denominator, and the gradients of its weights sum over the rows).
EXACT_DIGITS = 300
EXACT_SECONDS = 60.0
_MAX_DIGITS = 3000
_DENOMINATOR = 1009


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """The verdict on one claim (or one gradient returned by a code claim).

    ``element`` is 0-based ``(i, j)`` where claim and truth differ (``None`` when the claim holds);
    ``expected``/``got`` are the truth and the claim there, as text; ``factor`` is truth / claim
    for a ``scaled`` diagnosis.
    """

    target: str
    claim: str
    verdict: str
    method: str | None = None
    diagnosis: str | None = None
    factor: float | None = None
    element: tuple | None = None
    expected: str | None = None
    got: str | None = None
    detail: str = ""
    assumptions: tuple = ()
    sizes: str = "given"  # "all": proved (or refuted) for every size (symbp.allsizes); "given": at net's sizes

    @property
    def ok(self) -> bool:
        return self.verdict == "holds"

    def to_json(self) -> dict:
        return {"target": self.target, "claim": self.claim, "verdict": self.verdict, "method": self.method,
                "diagnosis": self.diagnosis, "factor": self.factor,
                "element": list(self.element) if self.element is not None else None,
                "expected": self.expected, "got": self.got, "detail": self.detail, "sizes": self.sizes}

    def line(self, width: int = 4) -> str:
        """One line for people: target, verdict, method, diagnosis (1-based element)."""
        head = "L" if self.target == "L" else f"dL/d{self.target}"  # L: the loss a framework forward returned
        text = f"{head:<{width + 4}}  {self.verdict:<5}  {self.method or '-':<12}"
        if self.diagnosis:
            text += f"  {self.diagnosis}"
        return (text + (f"  {self.detail}" if self.detail else "")).rstrip()


@dataclass
class Report:
    """All verdicts: ``ok`` when every claim holds; ``assumptions`` the side conditions used."""

    results: list
    assumptions: list = _field(default_factory=list)
    network: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def __getitem__(self, target):
        for r in self.results:
            if r.target == target:
                return r
        raise KeyError(target)

    def to_json(self) -> dict:
        """A JSON-ready dict with the keys of INTERFACE.md (``json.dumps(report.to_json())``)."""
        return {"ok": self.ok, "assumptions": list(self.assumptions), "results": [r.to_json() for r in self.results]}

    def text(self) -> str:
        width = max([len(r.target) for r in self.results] + [2])
        lines = [self.network] if self.network else []
        lines += [r.line(width) for r in self.results]
        holds = sum(r.ok for r in self.results)
        lines.append(f"{holds} of {len(self.results)} claims hold"
                     + (f" (assuming {'; '.join(self.assumptions)})" if self.assumptions else ""))
        return "\n".join(lines)

    def __str__(self):
        return self.text()


# --------------------------------------------------------------------------- exact values


class ExactField(Semantics):
    """Exact rationals (``Fraction``), with each transcendental value frozen to a random rational.

    ``exp(u)`` for ``u > 0`` is ``s / (1 - s)`` for a random ``s`` in (0, 1), drawn once per value of
    ``u``; ``exp(-u) = 1 / exp(u)``; ``sigmoid(v) = exp(v) / (1 + exp(v))`` (so ``sigmoid(u) = s``);
    ``tanh(v) = (exp(2v) - 1) / (exp(2v) + 1)``; ``softplus(v) = log(1 + exp(v))``; ``log(q)`` is a
    random rational per value of ``q`` (``log(1) = 0``); ``cosh(v) = (exp(v) + exp(-v)) / 2``;
    ``erf(v)`` is a random rational in (0, 1) per value of ``|v|``, odd as the real one (``erf(0) = 0``);
    ``pi`` is one random rational in (3, 4), as ``sp.pi`` in the truth. ReLU, leaky ReLU and the step
    are exact.

    >>> field = ExactField(random.Random(0))
    >>> v = Fraction(3, 7)
    >>> s = field.call("sigmoid", v)
    >>> s == field.call("exp", v) / (1 + field.call("exp", v)), field.call("sigmoid", -v) == 1 - s
    (True, True)
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.atoms = {}

    def constant(self, fraction):
        return Fraction(fraction)

    def _atom(self, key, draw):
        if key not in self.atoms:
            self.atoms[key] = draw()
        return self.atoms[key]

    def _unit(self):
        return Fraction(self.rng.randint(1, _DENOMINATOR - 1), _DENOMINATOR)

    def exp(self, v):
        if v == 0:
            return Fraction(1)
        # s in (1/2, 1), so exp(u) = s / (1 - s) > 1 for u > 0 and exp(-u) < 1: the signs of
        # 1 - exp(z), sigmoid(z) - 1/2, tanh(z) (a kink's argument) are the real ones
        s = self._atom(("exp", abs(v)), lambda: Fraction(self.rng.randint(_DENOMINATOR // 2 + 1, _DENOMINATOR - 1),
                                                          _DENOMINATOR))
        e = s / (1 - s)
        return e if v > 0 else 1 / e

    def log(self, q):
        if q <= 0:
            raise ZeroDivisionError("log of a number <= 0")
        if q == 1:
            return Fraction(0)
        sign = 1 if q > 1 else -1  # log(q) has the sign of q - 1, as the real one
        return self._atom(("log", q), lambda: sign * Fraction(self.rng.randint(1, 2 * _DENOMINATOR), _DENOMINATOR))

    def call(self, name, v):
        if name == "relu":
            return v if v > 0 else Fraction(0)
        if name == "leaky_relu":
            return v if v > 0 else v / 100
        if name == "step":
            return Fraction(1) if v > 0 else Fraction(0)
        if name == "exp":
            return self.exp(v)
        if name == "log":
            return self.log(v)
        if name == "sigmoid":
            e = self.exp(v)
            return e / (1 + e)
        if name == "tanh":
            e = self.exp(2 * v)
            return (e - 1) / (e + 1)
        if name == "softplus":
            return self.log(1 + self.exp(v))
        if name == "cosh":
            e = self.exp(v)
            return (e + 1 / e) / 2
        if name == "erf":
            if v == 0:
                return Fraction(0)
            value = self._atom(("erf", abs(v)), self._unit)  # in (0, 1), as erf of a positive number
            return value if v > 0 else -value
        raise SymbpError(f"no exact value for {name}")  # pragma: no cover

    def named(self, name):
        """``pi``: one random rational in (3, 4) per field (frozen, so a claim using it is judged by floats)."""
        D = _DENOMINATOR
        return self._atom(("const", name), lambda: Fraction(self.rng.randint(3 * D + 1, 4 * D - 1), D))

    def heaviside(self, v, at_zero):
        return Fraction(1) if v > 0 else (Fraction(0) if v < 0 else at_zero)

    def power(self, v, exponent):
        """``v ** (p/q)`` as ``r ** p`` with ``r`` one random positive rational per ``(v, q)`` standing for
        ``v ** (1/q)``: ``sqrt(u) ** -3`` and ``u ** (-3/2)`` (SymPy's derivative of a norm) agree, as the
        real ones do (only ``r ** q = v`` is lost: see the module docstring)."""
        exponent = Fraction(exponent)
        if exponent.denominator == 1:
            return v ** int(exponent)
        if v == 0 and exponent > 0:
            return Fraction(0)
        root = self._atom(("root", v, exponent.denominator), self._unit)
        return root ** exponent.numerator

    def other(self, name, args):
        """Any other function application: a random rational per (name, arguments)."""
        return self._atom((name,) + tuple(args), self._unit)


class FloatField(Semantics):
    """Python floats with the real functions (the numeric tier)."""

    def constant(self, fraction):
        return float(fraction)

    def call(self, name, v):
        if name == "relu":
            return v if v > 0 else 0.0
        if name == "leaky_relu":
            return v if v > 0 else 0.01 * v
        if name == "step":
            return 1.0 if v > 0 else 0.0
        if name == "exp":
            return math.exp(min(v, 700.0))
        if name == "log":
            return math.log(v) if v > 0 else float("nan")
        if name == "sigmoid":
            return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))
        if name == "tanh":
            return math.tanh(v)
        if name == "softplus":
            return max(v, 0.0) + math.log1p(math.exp(-abs(v)))
        if name == "erf":
            return math.erf(v)
        if name == "cosh":
            return math.cosh(v)
        raise SymbpError(f"no float value for {name}")  # pragma: no cover

    def named(self, name):
        return {"pi": math.pi}[name]

    def heaviside(self, v, at_zero):
        return 1.0 if v > 0 else (0.0 if v < 0 else float(at_zero))

    def power(self, v, exponent):
        try:
            result = float(v) ** float(exponent)
        except (ZeroDivisionError, OverflowError):
            return float("nan")
        return float("nan") if isinstance(result, complex) else result  # (-4) ** 0.5 is not real

    def other(self, name, args):
        return float(getattr(sp, name)(*args).evalf())


class MpField(Semantics):
    """Multi-precision floats (:mod:`mpmath`, ``dps`` decimal digits, a context of its own) with the real
    functions: the numeric tier, precise enough to see a perturbation written with the claim's numbers.

    >>> field = MpField(40)
    >>> x = field.constant(Fraction(1, 3))
    >>> abs(field.call("sigmoid", x) - 1 / (1 + field.call("exp", -x))) < field.mp.mpf(10) ** -39
    True
    """

    def __init__(self, dps: int):
        import mpmath

        self.mp = mpmath.MPContext()
        self.mp.dps = dps
        self.dps = dps

    def constant(self, fraction):
        fraction = Fraction(fraction)
        return self.mp.mpf(fraction.numerator) / fraction.denominator

    def call(self, name, v):
        mp = self.mp
        if name == "relu":
            return v if v > 0 else mp.zero
        if name == "leaky_relu":
            return v if v > 0 else v / 100
        if name == "step":
            return mp.one if v > 0 else mp.zero
        if name == "exp":
            return mp.exp(v)
        if name == "log":
            return mp.log(v) if v > 0 else mp.nan
        if name == "sigmoid":
            return 1 / (1 + mp.exp(-v))
        if name == "tanh":
            return mp.tanh(v)
        if name == "softplus":
            return mp.log(1 + mp.exp(v))
        if name == "erf":
            return mp.erf(v)
        if name == "cosh":
            return mp.cosh(v)
        raise SymbpError(f"no float value for {name}")  # pragma: no cover

    def named(self, name):
        return {"pi": +self.mp.pi}[name]  # unary + evaluates the constant at this context's precision

    def heaviside(self, v, at_zero):
        return self.mp.one if v > 0 else (self.mp.zero if v < 0 else at_zero)

    def power(self, v, exponent):
        exponent = Fraction(exponent)
        if v < 0 and exponent.denominator != 1:
            return self.mp.nan  # (-4) ** 0.5 is not real
        if v == 0 and exponent < 0:
            raise ZeroDivisionError("0 to a negative power")
        return self.mp.power(v, self.constant(exponent))

    def other(self, name, args):
        value = getattr(sp, name)(*[sp.Float(str(a), self.dps) for a in args]).evalf(self.dps)
        return self.mp.mpf(str(value)) if value.is_real else self.mp.nan


_FUNCTION_NAMES = {F.relu: "relu", F.leaky_relu: "leaky_relu", F.sigmoid: "sigmoid", F.softplus: "softplus",
                   sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.erf: "erf", sp.cosh: "cosh"}


def _value(expr, env, field):
    """The value of a SymPy expression in the network's symbols under ``field`` (no simplification)."""
    if expr.is_Symbol:
        return env[expr]
    if expr is sp.pi:  # the same value as the claim's pi (frozen in the exact field)
        return field.named("pi")
    if expr.is_Number:
        if expr.is_Rational:
            return field.constant(Fraction(int(expr.p), int(expr.q)))
        return field.constant(Fraction(float(expr)))
    if expr.is_Add:
        if isinstance(field, ExactField):
            return _exact_sum(expr.args, env, field)
        args = expr.args
        total = _value(args[0], env, field)
        for a in args[1:]:
            total = total + _value(a, env, field)
        return total
    if expr.is_Mul:
        args = expr.args
        total = _value(args[0], env, field)
        for a in args[1:]:
            total = total * _value(a, env, field)
        return total
    if expr.is_Pow:
        base = _value(expr.base, env, field)
        exponent = expr.exp
        if exponent.is_Integer:
            return base ** int(exponent)
        if exponent.is_Rational:
            return field.power(base, Fraction(int(exponent.p), int(exponent.q)))
        if expr.base is sp.E:
            return field.call("exp", _value(exponent, env, field))
        return field.other("Pow", (base, _value(exponent, env, field)))
    func = expr.func
    if func is sp.exp:  # exp(k u) = exp(u)**k for a whole k, as SymPy writes exp(u)**2 (cf. exact.py)
        coeff, rest = expr.args[0].as_coeff_Mul()
        if coeff.is_Integer and rest != 1:
            return field.call("exp", _value(rest, env, field)) ** int(coeff)
    if func in _FUNCTION_NAMES:
        return field.call(_FUNCTION_NAMES[func], _value(expr.args[0], env, field))
    if func is sp.Heaviside:
        at_zero = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        return field.heaviside(_value(expr.args[0], env, field), field.constant(Fraction(str(at_zero))))
    args = [_value(a, env, field) for a in expr.args]
    if func is sp.Abs:
        return abs(args[0])
    if func is sp.Max:
        return max(args)
    if func is sp.Min:
        return min(args)
    return field.other(func.__name__, args)


def _exact_sum(terms, env, field):
    """A sum of exact terms, with integer numerators gathered per denominator (no gcd per term):
    the forward sums ``W_i0 x_0 + ... + b_i`` share one denominator, so this is one big-integer sum."""
    buckets = {}
    for term in terms:
        if term.is_Mul and len(term.args) == 2 and term.args[0].is_Symbol and term.args[1].is_Symbol:
            u, v = env[term.args[0]], env[term.args[1]]
            n, d = u.numerator * v.numerator, u.denominator * v.denominator
        else:
            value = _value(term, env, field)
            n, d = value.numerator, value.denominator
        buckets[d] = buckets.get(d, 0) + n
    total = Fraction(0)
    for d, n in buckets.items():
        total += Fraction(n, d)
    return total


def numeric_digits(node) -> int:
    """The float tier's working precision for a claim: ``NUMERIC_DIGITS`` plus the digits of its
    numbers (numerators and denominators, times the largest whole exponent), so that an offset the
    claim writes (``+ 1e-300``, ``* 1.0000000001``) is far above the tolerance.

    >>> import symbp
    >>> from symbp.formula import parse
    >>> net = symbp.MLP([2, 3])
    >>> numeric_digits(parse("a1 - y", net)), numeric_digits(parse("a1 - y + 1e-10", net))
    (30, 42)
    """
    digits, power = 0, 1
    for n in node.walk():
        if n.op == "number":
            digits += len(str(abs(n.value.numerator))) + len(str(n.value.denominator))
        elif n.op == "pow":
            power = max(power, abs(n.value.numerator))
    return NUMERIC_DIGITS + min(digits * power, _MAX_DIGITS)


_FROZEN_FUNCTIONS = ("exp", "log", "sigmoid", "tanh", "softplus", "erf", "cosh")
_KINKED = ("relu", "leaky_relu", "step")


class _Redraw(Exception):
    """The random point sits on a kink or a pole: draw another."""


class _Overgrown(Exception):
    """The exact values grew past the budget (``EXACT_DIGITS`` digits or ``EXACT_SECONDS``): the exact
    tier stops for the target, and the float tier judges it. ``str()`` says where."""


_LOG2_10 = math.log2(10)


def _too_big(value) -> bool:
    """Whether an exact value has a numerator or denominator of more than ``EXACT_DIGITS`` digits."""
    bits = int(EXACT_DIGITS * _LOG2_10) + 1
    den = getattr(value, "denominator", None)
    if den is None or not isinstance(den, int):
        return False
    return den.bit_length() > bits or value.numerator.bit_length() > bits


def _digits(value) -> int:
    return max(len(str(abs(value.numerator))), len(str(value.denominator)))


class _Point:
    """One random point: values of every symbol (forward pass from the network's own definitions,
    error terms from the derivation) and, lazily, the value matrices of every name a claim can use."""

    def __init__(self, net, grads, field, base):
        self.net, self.grads, self.field = net, grads, field
        env = {}
        for name, array in base.items():
            for s, v in zip(net.symbols(name), array.reshape(-1)):
                env[s] = v
        # exact points only: the first value past the budget stops the evaluation; the error terms
        # from there on are missing from env, and a truth that needs one raises _Overgrown
        exact = isinstance(field, ExactField)
        start, self.overgrown = time.perf_counter(), None
        try:
            for stage in net.stages:
                for s, e in zip(stage.symbols, stage.local):
                    env[s] = _value(e, env, field)
                    if exact and self._over(env[s], s, start):
                        raise _Overgrown(self._over(env[s], s, start))
            for name, kinks in _kinked(net).items():
                for s in net.symbols(name):
                    if any(env[s] == k for k in kinks):
                        raise _Redraw
            # the forward froze a fractional power (a norm's sqrt(var + eps)): r ** q = v is lost for it
            self.roots = any(key[0] == "root" for key in getattr(field, "atoms", ()))
            for s, e in grads.definitions:
                env[s] = _value(e, env, field)
                if exact:
                    self.overgrown = self._over(env[s], s, start)
                    if self.overgrown:
                        del env[s]
                        break
        except (ZeroDivisionError, OverflowError, ValueError):
            raise _Redraw from None
        self.env = env
        self.arrays = {}

    def _over(self, value, symbol, start):
        """Why ``value`` (of ``symbol``, computed since ``start``) is past the exact budget, or None."""
        if _too_big(value):
            return f"the exact values grew past {EXACT_DIGITS} digits " \
                f"({_digits(value)} at {TextPrinter(self.net.columns).doprint(symbol)})"
        if time.perf_counter() - start > EXACT_SECONDS:
            return f"the exact evaluation took more than {EXACT_SECONDS:g} s"
        return None

    def __contains__(self, name):
        return name in ("N", "a0") or name in self.net.names or \
            (name.startswith("d") and name[1:] in self.grads)

    def __getitem__(self, name):
        if name not in self.arrays:
            try:
                self.arrays[name] = self._array(name)
            except _Overgrown as exc:
                self.arrays[name] = exc
        if isinstance(self.arrays[name], _Overgrown):
            raise self.arrays[name]
        return self.arrays[name]

    def _array(self, name):
        net = self.net
        if name == "N":
            return _scalar_array(self.field.constant(Fraction(net.batch or 1)))
        if name == "a0":
            name = "x"
        if name.startswith("d") and name[1:] in self.grads:
            M = self.grads[name[1:]]
            exact, start = isinstance(self.field, ExactField), time.perf_counter()
            values = []
            try:
                for e, s in zip(M, self.net.grad_symbols(name[1:])):
                    # a stage's error terms are already in env (grads.definitions)
                    values.append(self.env[s] if s in self.env else _value(e, self.env, self.field))
                    if exact and self._over(values[-1], s, start):
                        raise _Overgrown(self._over(values[-1], s, start))
            except KeyError:  # an error term past the budget (see __init__)
                raise _Overgrown(self.overgrown) from None
            except (ZeroDivisionError, OverflowError, ValueError):
                raise _Redraw from None
        else:
            values = [self.env[s] for s in net.symbols(name)]
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(net.shape(name[1:] if name.startswith("d") and name[1:] in self.grads else name))

    def truth(self, target):
        return self["d" + target]


def _kinked(net) -> dict:
    """The variables whose entries sit at a kink of the op that reads them: ``{name: kinks}`` (an MLP's
    hidden ``z_l``; in a network of layers, the input of every layer whose op has kinks)."""
    if isinstance(net, Network):
        out = {}
        for layer in net.layers:
            if layer.op.kinks:
                out[layer.inp] = tuple(out.get(layer.inp, ())) + tuple(layer.op.kinks)
        return out
    return {f"z{l}": net.hidden[l - 1].kinks for l in range(1, net.L) if net.hidden[l - 1].kinks}


def _substituted(net) -> set:
    """The stages whose symbols the symbolic tier and the kink check replace by their definitions: an
    MLP's ``a_l``; in a network of layers, the outputs of the layers whose op has no parameters and no
    internal stages (an activation, softmax, dropout, add), whose claims use them (``a1 * (1 - a1)``)
    where the derivation has ``sigmoid(z1)``."""
    if isinstance(net, Network):
        return {layer.name for layer in net.layers if not layer.params and not layer.stages}
    return {stage.name for stage in net.stages if stage.name[0] == "a"}


def _scalar_array(value):
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = value
    return out


def _exact_base(net, rng, *, unit_rows: bool):
    """Random exact inputs and parameters in ``[-2, 2]``; targets with rows summing to 1
    when ``unit_rows``."""
    D = _DENOMINATOR

    def rational(low=-2 * D, high=2 * D):
        return Fraction(rng.randint(low, high) or 1, D)

    base = {}
    for name in ("x",) + net.params:
        r, c = net.shape(name)
        base[name] = np.array([[rational() for _ in range(c)] for _ in range(r)], dtype=object)
    r, c = net.shape("y")
    y = np.empty((r, c), dtype=object)
    unit = net.loss_row.needs_unit_interval  # targets in (0, 1) for a loss that takes logs
    for i in range(r):
        for j in range(c):
            y[i, j] = Fraction(rng.randint(1, D - 1), D) if unit else rational()
    if unit_rows:
        rows = y if net.batch else y.T
        for row in rows:
            row[-1] = 1 - sum(row[:-1])
    base["y"] = y
    for name in getattr(net, "masks", ()):  # dropout masks: 0/1, as the real ones
        r, c = net.shape(name)
        base[name] = np.array([[Fraction(rng.randint(0, 1)) for _ in range(c)] for _ in range(r)], dtype=object)
    return base


def _random_values(net, seed):
    from .numeric import random_values  # an MLP or a network of layers; masks 0/1, kinks moved off

    return random_values(net, seed)


def _float_base(net, seed):
    values = _random_values(net, seed)
    out = {}
    for name, array in values.items():
        obj = np.empty(array.shape, dtype=object)
        obj[...] = array.tolist()
        out[name] = obj
    return out


# --------------------------------------------------------------------------- the judge


class _Judge:
    """Judges claims about one network against one derivation, caching points and truths."""

    def __init__(self, net, grads, seed):
        self.net, self.grads, self.seed = net, grads, seed
        self.side = net.fused.side_condition if net.fused and net.fused.side_condition else None
        self._points = {}
        self._symbolic_cache = None
        self._all_symbols = None
        self._forward_cache = None
        self.printer = _Printer(net.columns)
        self.masks = _masks(net)

    # ---- points

    def _float_point(self, kind, k, dps):
        """The ``k``-th float point of ``kind`` in ``dps``-digit arithmetic, or None (a pole); drawn once
        and shared by every target (its forward and error terms are the whole network's)."""
        key = ("float-point", kind, k, dps)
        if key not in self._points:
            self._points[key] = self._new_float_point(kind, k, dps)
        return self._points[key]

    def _new_float_point(self, kind, k, dps):
        base = _float_base(self.net, self.seed + 7 * k)
        if kind == "float-general":  # targets whose rows no longer sum to 1
            base["y"] = base["y"] * (1.25 + 0.5 * np.arange(base["y"].size).reshape(base["y"].shape))
        field = MpField(dps)
        for name, array in base.items():
            converted = np.empty(array.shape, dtype=object)
            converted[...] = [[field.mp.mpf(float(v)) for v in row] for row in array]
            base[name] = converted
        if kind == "float" and self.side:  # rows summing to 1 exactly, not to within float64's rounding
            rows = base["y"] if self.net.batch else base["y"].T
            for row in rows:
                row[-1] = 1 - sum(row[:-1])
        try:
            return _Point(self.net, self.grads, field, base)
        except _Redraw:  # a pole (-y / a with a underflowing): skip the point
            return None

    def _draw(self, kind, count, rng=None):
        points = []
        rng = rng or random.Random(f"{self.seed}-{kind}")
        for _ in range(200):
            try:
                points.append(_Point(self.net, self.grads, ExactField(rng),
                                     _exact_base(self.net, rng, unit_rows=kind == "unit")))
            except _Redraw:
                continue
            if len(points) == count:
                return points
        raise SymbpError("verify: could not draw random points away from the kinks")  # pragma: no cover

    def exact_kinds(self):
        return ["unit", "general"] if self.side else ["general"]

    def misplaced_kink(self, node):
        """``(kink, reason)`` for the first ``relu``/``leaky_relu``/``step`` of the claim whose kink is
        not at 0 of a stage of the network (``reason`` "misplaced"), or cannot be placed ("undecided");
        else None. A kink elsewhere (``step(z2 - 0.04)``) agrees with the truth at almost every random
        point, so it is decided symbolically, by where the argument is zero: each entry of the argument,
        with the ``a_l`` replaced by their definitions, must be a function of one symbol ``v`` of the
        network (a stage, an input or a parameter, whose sign the random points vary) that is zero at
        ``v = 0`` at most (:func:`symbp.registry.real_zeros`): ``step(2 * z2)``, ``relu(-x)`` and
        ``step(1 - exp(z1))`` are fine, ``step(exp(z2) - 2)`` is not."""
        for n in node.walk():
            if n.op != "func" or n.value not in _KINKED or self._simple_kink(n):
                continue
            forward = self._forward()
            for entry in evaluate(n.args[0], self._symbol_env(n.args[0]), N=self.net.batch):
                entry = sp.sympify(entry).xreplace(forward)
                free = entry.free_symbols & self._all_symbols
                if len(free) != 1 or entry.free_symbols != free:
                    return n, "misplaced"
                v = free.pop()
                t = sp.Symbol("t", real=True)
                zeros = real_zeros(entry.xreplace({v: t}), t)
                if zeros is None:
                    return n, "undecided"
                if not zeros <= {0}:
                    return n, "misplaced"
        return None

    def _forward(self):
        """Each ``a_l`` symbol -> its definition in the ``z`` symbols (``relu(z1_0_0)``...); in a network
        of layers, the output of every layer without parameters or stages of its own (activations,
        softmax, dropout, add: :func:`_substituted`)."""
        if self._forward_cache is None:
            forward, names = {}, _substituted(self.net)
            for stage in self.net.stages:
                if stage.name in names:
                    forward.update(zip(stage.symbols, stage.local.xreplace(forward)))
            self._forward_cache = forward
        return self._forward_cache

    def frozen_part(self, node):
        """The first part of the claim whose exact value is frozen (an ``exp``, ``log``, ``sigmoid``,
        ``tanh``, ``softplus``, ``erf``, ``cosh``, ``softmax``, ``pi``, a fractional power (``sqrt``), or
        a kink whose argument is not a multiple of one symbol, whose sign a frozen value could flip),
        as text; None if there is none.
        Without one, the claim's exact values are rational in the network's own values, and an
        exact mismatch is a refutation (see the module docstring)."""
        for n in node.walk():
            if n.op in ("softmax", "const") or (n.op == "func" and n.value in _FROZEN_FUNCTIONS) or \
                    (n.op == "pow" and n.value.denominator != 1):
                return f"'{n}'"
            if n.op == "func" and n.value in _KINKED and not self._simple_kink(n):
                return f"the sign of the argument of '{n}'"
        return None

    def _simple_kink(self, n):
        """Whether every entry of the argument of kink ``n`` is ``c * v`` (rational ``c != 0``, ``v`` one
        symbol of the network)."""
        if n.args[0].op == "name":
            return True
        if self._all_symbols is None:
            self._all_symbols = {s for name in self.net.names for s in self.net.symbols(name)}
        for entry in evaluate(n.args[0], self._symbol_env(n.args[0]), N=self.net.batch):
            c, rest = sp.sympify(entry).as_coeff_Mul()
            if not (c.is_Rational and c != 0 and rest in self._all_symbols):
                return False
        return True

    def _symbol_env(self, node):
        net = self.net
        return {name: (net.symbols(name) if name[0] != "d" or name[1:] not in self.grads
                       else net.grad_symbols(name[1:])) for name in node.names() if name != "N"}

    # ---- evaluation

    def values(self, node, point):
        try:
            return evaluate_array(node, point, point.field)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError):
            return None

    def _pool_point(self, kind, k):
        """The ``k``-th exact point of ``kind`` (drawn lazily, in a fixed order per seed)."""
        if ("pool", kind) not in self._points:
            self._points[("pool", kind)] = (random.Random(f"{self.seed}-{kind}"), [])
        rng, pool = self._points[("pool", kind)]
        while len(pool) <= k:
            pool.append(self._draw(kind, 1, rng)[0])
        return pool[k]

    def exact_points(self, target, kind, limit=None):
        """Exact points of ``kind`` where dL/d<target> is not all zero (a dead ReLU layer can zero a
        whole gradient, and a wrong claim would agree there): up to ``EXACT_POINTS`` (or ``limit``),
        from up to ``EXACT_DRAWS`` draws. Fewer than asked for means the draws ran out."""
        want = EXACT_POINTS if limit is None else limit
        key = ("exact", kind, target)
        chosen, tried = self._points.get(key, ([], 0))
        while len(chosen) < want and tried < EXACT_DRAWS:
            point = self._pool_point(kind, tried)
            tried += 1
            try:
                truth = point.truth(target)
            except _Redraw:
                continue
            if any(t != 0 for t in truth.reshape(-1)):
                chosen.append(point)
        self._points[key] = (chosen, tried)
        return chosen[:want]

    def exact_mismatch(self, node, target, kind, limit=None):
        """None when the claim equals the truth at every exact point of ``kind`` (the first ``limit``)
        where the truth is not all zero, else ``(point, (i, j))`` of the first difference
        (``(point, None)`` if undefined there)."""
        for point in self.exact_points(target, kind, limit):
            got = self.values(node, point)
            if got is None:
                return point, None
            truth = point.truth(target)
            if got.shape != truth.shape:
                return point, None
            diff = np.argwhere(got != truth)
            if len(diff):
                return point, tuple(int(k) for k in diff[0])
        return None

    def holds_exactly(self, node, target):
        """Whether ``node`` holds at the exact points (under the side condition if there is one); False
        when the exact values grow past the budget (a diagnosis is only named when verified exactly)."""
        if node.shape != self.net.shape(target):
            return False
        try:
            return len(self.exact_points(target, self.exact_kinds()[0])) == EXACT_POINTS and \
                self.misplaced_kink(node) is None and \
                self.exact_mismatch(node, target, self.exact_kinds()[0]) is None
        except _Overgrown:
            return False

    def confirms(self, node, target):
        """Whether a corrected claim (a diagnosis's) holds: at the exact points, or, where an exact
        difference cannot refute it (a frozen function of its own, a fractional power of the forward:
        the rule of :meth:`judge`), at the float points: ``"exact"``, ``"float"`` or ``""``."""
        if self.holds_exactly(node, target):
            return "exact"
        if node.shape != self.net.shape(target):
            return ""
        try:
            mismatch = self.exact_mismatch(node, target, self.exact_kinds()[0])
        except _Overgrown:  # past the exact budget: the float points decide
            mismatch = None
        if mismatch is not None and mismatch[1] is not None and self.frozen_part(node) is None \
                and not mismatch[0].roots:
            return ""  # refuted exactly
        return "float" if self.numeric_close(node, target) else ""

    def float_points(self, target, kind, dps=NUMERIC_DIGITS):
        """Float points (``dps`` digits) where dL/d<target> is not identically zero (dead ReLUs can
        zero a whole gradient, and a wrong claim would then agree): up to 3, from up to 12 draws."""
        key = (kind, target, dps)
        if key not in self._points:
            chosen = []
            for k in range(12):
                point = self._float_point(kind, k, dps)
                if point is not None and any(t != 0 for t in point.truth(target).reshape(-1)):
                    chosen.append(point)
                if len(chosen) == 3:
                    break
            self._points[key] = chosen
        return self._points[key]

    def numeric_close(self, node, target, kind="float"):
        """Whether claim and truth agree to ``numeric_tolerance(node)`` (relative to the largest entry
        of the truth) at the float points, in ``numeric_digits(node)``-digit arithmetic."""
        dps = numeric_digits(node)
        points = self.float_points(target, kind, dps)
        if not points:
            return False
        for point in points:
            mp = point.field.mp
            got = self.values(node, point)
            if got is None:
                return False
            truth = point.truth(target)
            if not all(mp.isfinite(g) for g in got.reshape(-1)):
                return False
            scale = max(abs(t) for t in truth.reshape(-1))
            error = max(abs(g - t) for g, t in zip(got.reshape(-1), truth.reshape(-1)))
            if error > mp.mpf(10) ** -(dps - NUMERIC_SLACK) * scale:
                return False
        return True

    # ---- symbolic

    def symbolic(self, node, target):
        """(proved, assumption) by the frozen-function test; ``proved`` False means undecided."""
        net = self.net
        if self._symbolic_cache is None:
            forward = self._forward()
            y_sub = {}
            if self.side:
                y = net.symbols("y")
                rows = [list(y.row(n)) for n in range(y.rows)] if net.batch else [list(y.col(0))]
                for row in rows:
                    y_sub[row[-1]] = 1 - sp.Add(*row[:-1])
            self._symbolic_cache = forward, y_sub
        forward, y_sub = self._symbolic_cache
        claim = evaluate(node, self._symbol_env(node), N=net.batch)
        truth = self.grads[target]
        diffs = [(c - t) for c, t in zip(claim, truth)]
        for stage in ("free", "resolved"):
            if stage == "resolved":
                if not any(d.free_symbols & set(self.grads.resolved()) for d in diffs):
                    return False, None
                if _powers_a_gradient(node, self.grads):  # cancel() of a power of a resolved gradient runs for minutes
                    return False, None
                diffs = [d.xreplace(self.grads.resolved()) for d in diffs]
                if _nodes_over(diffs, 20 * 4000):  # count_ops itself took minutes on attention's (tree) sizes;
                    return False, None  # an operation takes at most 3 nodes, so these are far past 4000
                sizes = [sp.count_ops(d) for d in diffs]
                if sum(sizes) > 4000 or max(sizes) > RESOLVED_ENTRY_LIMIT:  # cancel() grows fast with the
                    return False, None  # atoms: 650 operations with attention's exps took 25 s an entry
            ds = [d.xreplace(forward) for d in diffs]
            if all(frozen_zero(d) for d in ds):
                return True, None
            if y_sub and all(frozen_zero(d.xreplace(y_sub)) for d in ds):
                return True, self.side
        return False, None

    # ---- judging

    def judge(self, target, claim_text, node):
        net = self.net
        expected_shape = net.shape(target)
        if node.shape != expected_shape:
            return self.diagnose(target, claim_text, node, None)
        kink = self.misplaced_kink(node)
        if kink is not None and kink[1] == "undecided":
            return Result(target, claim_text, "error", "symbolic",
                          detail=f"undecided: where the argument of {kink[0]} is zero is out of reach (its kink "
                          "must be at 0 of a pre-activation, as the network's)")
        if kink is not None:
            result = Result(target, claim_text, "fails", "symbolic", diagnosis="other",
                            detail=f"the kink of {kink[0]} is not where the network's is (at 0 of a pre-activation)")
            try:
                mismatch = self.exact_mismatch(node, target, self.exact_kinds()[0])
            except _Overgrown:
                mismatch = None
            if mismatch is not None and mismatch[1] is not None:
                self.locate(result, node, target, mismatch)
            return result
        if node.shape[0] * node.shape[1] <= SYMBOLIC_LIMIT:
            proved, assumption = self.symbolic(node, target)
            if proved:
                return Result(target, claim_text, "holds", "symbolic", assumptions=(assumption,) if assumption else (),
                              detail=f"assuming {assumption}" if assumption else "")
        kinds = self.exact_kinds()
        try:
            mismatch = self.exact_mismatch(node, target, kinds[0])
            enough = len(self.exact_points(target, kinds[0])) == EXACT_POINTS
            if mismatch is None and enough:
                assumption = None
                if len(kinds) > 1 and self.exact_mismatch(node, target, kinds[1], limit=1) is not None:
                    assumption = self.side
                return Result(target, claim_text, "holds", "exact-random",
                              assumptions=(assumption,) if assumption else (),
                              detail=f"assuming {assumption}" if assumption else "")
        except _Overgrown as exc:
            return self.judge_float(target, claim_text, node, str(exc))
        if mismatch is not None and mismatch[1] is not None and self.frozen_part(node) is None \
                and not mismatch[0].roots:
            return self.diagnose(target, claim_text, node, mismatch)  # refuted: no float judgement overrules it
        float_kind = "float" if self.side else "float-general"  # targets summing to 1 only under the side condition
        if self.numeric_close(node, target, float_kind):
            assumption = self.side if self.side and not self.numeric_close(node, target, "float-general") else None
            dps = numeric_digits(node)
            if mismatch is None:
                why = f"dL/d{target} is zero at most exact random points"
            elif mismatch[1] is None:
                why = "the claim is undefined at an exact random point"
            elif self.frozen_part(node) is None:
                why = "the forward pass takes a fractional power (a norm's sqrt), whose frozen value r cannot " \
                      "see r ** 2 = v"
            else:
                why = f"the exact tier differs only through {self.frozen_part(node)}, whose frozen values cannot " \
                      "see identities such as exp(a + b) = exp(a) exp(b)"
            detail = f"float judgement, not proved: equal to within 1e-{dps - NUMERIC_SLACK} (relative) in " \
                     f"{dps}-digit arithmetic at {len(self.float_points(target, float_kind, dps))} random points ({why})"
            return Result(target, claim_text, "holds", "numeric", assumptions=(assumption,) if assumption else (),
                          detail=f"{detail}; assuming {assumption}" if assumption else detail)
        if mismatch is None and not self.float_points(target, float_kind):
            return Result(target, claim_text, "error", "exact-random",
                          detail=f"undecided: dL/d{target} is all zero at nearly every random point (dead units)")
        return self.diagnose(target, claim_text, node, mismatch)

    def judge_float(self, target, claim_text, node, why):
        """The float tier alone, for a target whose exact values grew past the budget (``why``): agreement
        is ``holds`` with method ``numeric`` (never a proof), anything else fails, diagnosed by the
        row's mistakes (compared at the float points); a correction is named only when it holds exactly."""
        float_kind = "float" if self.side else "float-general"
        dps = numeric_digits(node)
        said = f"judged with {dps}-digit floats: {why}"
        if self.numeric_close(node, target, float_kind):
            assumption = self.side if self.side and not self.numeric_close(node, target, "float-general") else None
            detail = f"{said}; equal to within 1e-{dps - NUMERIC_SLACK} (relative) at " \
                     f"{len(self.float_points(target, float_kind, dps))} random points, not proved"
            return Result(target, claim_text, "holds", "numeric", assumptions=(assumption,) if assumption else (),
                          detail=f"{detail}; assuming {assumption}" if assumption else detail)
        if not self.float_points(target, float_kind):
            return Result(target, claim_text, "error", "numeric",
                          detail=f"undecided: dL/d{target} is all zero at nearly every random point (dead units); {said}")
        result = self.diagnose(target, claim_text, node, None)
        result.method = "numeric"
        result.detail = f"{result.detail}; {said}" if result.detail else said
        return result

    def judge_shape(self, target, claim_text, error):
        """A claim whose operands' shapes do not fit (``W2 @ dz2`` for ``W2.T @ dz2``): it fails, with
        ``transposed`` and the fix when transposing operands (at most two, un-transposing ``X.T``),
        and possibly the whole, gives a claim that holds, else ``shape``."""
        message = str(error)
        prefix = f"claim for {target} {claim_text!r}, column {error.column}: "
        message = message[len(prefix):] if message.startswith(prefix) else message
        result = Result(target, claim_text, "fails", "symbolic", "shape", detail=message)
        shape = self.net.shape(target)
        seen, frontier = set(), [error]
        for _ in range(2):
            found = []
            for exc in frontier:
                for text in _transposed_texts(exc):
                    if text in seen:
                        continue
                    seen.add(text)
                    try:
                        node = parse(text, self.net)
                    except FormulaError as again:
                        if again.kind == "shape":
                            found.append(again)
                        continue
                    whole = Node("transpose", (node,), node.shape[::-1], text=f"({text}).T")
                    for fixed in (node, whole):
                        if fixed.shape == shape and self.holds_exactly(fixed, target):
                            result.method, result.diagnosis = "exact-random", "transposed"
                            result.detail = f"{message}: write {fixed}"
                            self.condition(result, fixed, target)
                            return result
            frontier = found
        return result

    # ---- diagnosis

    def diagnose(self, target, claim_text, node, mismatch):
        net = self.net
        shape = net.shape(target)
        result = Result(target, claim_text, "fails", "exact-random", diagnosis="other")
        if node.shape != shape:
            result.method = "symbolic"  # the shapes alone prove it wrong
            T = Node("transpose", (node,), node.shape[::-1], text=f"({node}).T")
            if node.shape == shape[::-1] and self.holds_exactly(T, target):
                result.diagnosis = "transposed"
                result.detail = f"the transpose holds: claim has shape {node.shape}, dL/d{target} has {shape}"
                result.method = "exact-random"
                self.condition(result, T, target)
            else:
                result.diagnosis = "shape"
                result.detail = f"claim has shape {node.shape}, dL/d{target} has shape {shape}"
            return result
        for name, text, wrong in self.mistakes(target):
            if self.agrees(node, wrong, target):
                factor = self.ratio(node, target)
                factor = self.float_ratio(node, target) if factor is None else float(factor)
                result.diagnosis, result.factor = name, (factor if factor not in (None, 0, 1, -1) else None)
                result.detail = f"it equals the backward of the row's mistake {name}: {text}"
                if result.factor is not None:
                    result.detail += f" (the truth is {result.factor:.12g} times it)"
                break
        else:
            for diagnosis, variant, detail, factor in self.variants(node, target, mismatch):
                how = self.confirms(variant, target)
                if how:
                    result.diagnosis, result.detail, result.factor = diagnosis, detail, factor
                    if how == "float":
                        result.detail += f" (checked at float points, {NUMERIC_DIGITS} digits)"
                    self.condition(result, variant, target)
                    break
            else:
                result.detail = "no usual mistake explains it"
        if mismatch is not None and mismatch[1] is not None:
            self.locate(result, node, target, mismatch)
        return result

    def mistakes(self, target):
        """``[(name, text, node)]``: the wrong claims for ``target`` that the rows' ``mistakes`` give,
        each assembled as the textbook is with that layer's contributions replaced by the mistake's
        (a residual without its skip term is the sum of the other contributions)."""
        net = self.net
        if not isinstance(net, Network):
            return []
        out = []
        for layer in net.layers:
            for name, claims in layer.op.mistakes(layer.context(net)):
                if target not in claims:
                    continue
                text = _network_textbook(net, replace=(layer.position, claims), inputs=True).get(target)
                try:
                    out.append((name, text, parse(text, net)))
                except FormulaError:  # pragma: no cover - a row's mistake the language cannot read
                    continue
        return out

    def agrees(self, node, other, target):
        """Whether claims ``node`` and ``other`` are equal, judged as a claim is against the truth: equal
        at every exact point is equal; an exact difference refutes unless a frozen value is involved (a
        frozen function of either, a fractional power of the forward), then the float points decide."""
        if node.shape != other.shape:
            return False
        try:
            points = self.exact_points(target, self.exact_kinds()[0])
            if not points:
                return False
            for point in points:
                a, b = self.values(node, point), self.values(other, point)
                if a is None or b is None or bool(np.any(a != b)):
                    break
            else:
                return True
            if a is not None and b is not None and not point.roots and \
                    self.frozen_part(node) is None and self.frozen_part(other) is None:
                return False
        except _Overgrown:  # past the exact budget: the float points decide
            pass
        dps = max(numeric_digits(node), numeric_digits(other))
        points = self.float_points(target, "float" if self.side else "float-general", dps)
        for point in points:
            a, b = self.values(node, point), self.values(other, point)
            mp = point.field.mp
            if a is None or b is None or not all(mp.isfinite(v) for v in [*a.reshape(-1), *b.reshape(-1)]):
                return False
            scale = max(abs(v) for v in b.reshape(-1))
            if max(abs(u - v) for u, v in zip(a.reshape(-1), b.reshape(-1))) > mp.mpf(10) ** -(dps - NUMERIC_SLACK) * scale:
                return False
        return bool(points)

    def float_ratio(self, node, target):
        """truth / claim as a float when it is one number (to 1e-20) at every nonzero entry of the
        float points (a factor such as 1/sqrt(dk), frozen in the exact field), else None."""
        ratios = []
        for point in self.float_points(target, "float" if self.side else "float-general"):
            got, truth = self.values(node, point), point.truth(target)
            if got is None:
                return None
            for g, t in zip(got.reshape(-1), truth.reshape(-1)):
                if g == 0:
                    if t != 0:
                        return None
                    continue
                ratios.append(t / g)
        if not ratios or any(abs(r - ratios[0]) > 1e-20 * abs(ratios[0]) for r in ratios):
            return None
        return float(ratios[0])

    def condition(self, result, fixed, target):
        """If the corrected claim ``fixed`` holds only under the side condition (the exact points
        draw targets with rows summing to 1 when there is one), say so in ``result``."""
        try:
            needed = self.side and self.exact_mismatch(fixed, target, "general", limit=1) is not None
        except _Overgrown:
            needed = self.side and not self.numeric_close(fixed, target, "float-general")
        if needed:
            result.assumptions = (self.side,)
            result.detail += f" (assuming {self.side})"

    def variants(self, node, target, mismatch):
        """Candidate corrections, cheapest first: (diagnosis, corrected node, detail, factor)."""
        shape = node.shape
        if shape[0] == shape[1] and shape != (1, 1):
            yield "transposed", Node("transpose", (node,), shape), "the transpose holds", None
        yield "sign", Node("neg", (node,), shape), "the negative holds (sign flipped)", None
        for path, sub in _subtrees(node):
            if sub.op == "name" and sub.shape[0] == sub.shape[1] and sub.shape != (1, 1):
                fixed = _replace(node, path, Node("transpose", (sub,), sub.shape))
                yield "transposed", fixed, f"with {sub.value}.T in place of {sub.value} it holds", None
        factor = self.ratio(node, target)
        if factor is not None and factor not in (0, 1, -1):
            scaled = Node("mul", (Node("number", value=factor), node), shape)
            detail = f"multiplied by {factor} it holds"
            if self.net.batch and self.net.reduction == "mean" and \
                    factor in (Fraction(1, self.net.batch), Fraction(self.net.batch)):
                detail += " (the 1/N of the mean over the batch is missing)" if factor < 1 else " (1/N applied twice)"
            yield "scaled", scaled, detail, float(factor)
        yield from self.mask_variants(node)

    def ratio(self, node, target):
        """truth / claim if it is the same number at every nonzero element of every exact point."""
        ratio = None
        try:
            points = self.exact_points(target, self.exact_kinds()[0])
        except _Overgrown:
            return None
        for point in points:
            got = self.values(node, point)
            if got is None:
                return None
            try:
                truth = point.truth(target)
            except _Overgrown:
                return None
            for g, t in zip(got.reshape(-1), truth.reshape(-1)):
                if g == 0:
                    if t != 0:
                        return None
                    continue
                r = Fraction(t) / Fraction(g)
                if ratio is None:
                    ratio = r
                elif r != ratio:
                    return None
        return ratio

    def mask_variants(self, node):
        """Claims with an activation derivative added, moved to the right variable, or removed."""
        name = "missing-activation-derivative"
        subtrees = list(_subtrees(node))
        for path, sub in subtrees:
            for where, (mask, text) in self.masks.items():
                if mask.shape == sub.shape and sub.op not in ("number", "size", "const", "ones"):
                    fixed = Node("mul", (sub, mask), sub.shape)
                    yield name, _replace(node, path, fixed), f"multiplied by {text} (f'({where})) at " \
                        f"'{sub}' it holds", None
        output = self.output_derivative()
        if output is not None:
            template, text, out, where, op_name = output
            for path, sub in subtrees:
                if sub.shape == self.net.shape(out) and sub.op not in ("number", "size", "const", "ones"):
                    fixed = _substitute(template, f"d{PLACEHOLDER}", sub)
                    yield name, _replace(node, path, fixed), f"with the output's f'({where}) applied at '{sub}' " \
                        f"({op_name}: {text.replace(PLACEHOLDER, _operand(sub))}) it holds", None
        for path, sub in subtrees:
            if sub.op == "mul":
                for k in (0, 1):
                    part, other = sub.args[k], sub.args[1 - k]
                    if not _looks_like_mask(part):
                        continue
                    for mask, text in self.masks.values():
                        if mask.shape == part.shape and mask != part:
                            fixed = Node("mul", (other, mask) if k else (mask, other), sub.shape)
                            yield name, _replace(node, path, fixed), f"with {text} in place of '{part}' it holds", None
                    if other.shape == sub.shape:
                        yield "extra-activation-derivative", _replace(node, path, other), \
                            f"without the factor '{part}' it holds", None
        for old in sorted(node.names()):
            for new in _neighbours(old, self.net):
                fixed = _rename(node, old, new)
                inside = any(n.op in ("func", "pow") and old in n.names() for n in node.walk())
                kind = name if inside or old[0] != new[0] else "other"
                yield kind, fixed, f"with {new} in place of {old} it holds", None

    def output_derivative(self):
        """The output layer's ``f'`` as ``(template, text, output, input, op name)``: the template a claim
        node in which ``d<PLACEHOLDER>`` stands for the upstream (``a3 * (1 - a3) * X`` for sigmoid, the
        softmax Jacobian ``a3 * (X - sum(a3 * X, axis))``), or None (identity output). In a network of
        layers: the last layer's own backward for its input, read from its row, when that layer has no
        parameters and is not entry-wise (entry-wise ones are among the masks)."""
        if isinstance(self.net, Network):
            last = self.net.layers[-1]
            if last.op.activation is not None or last.params or last.stages:
                return None
            claim = last.op.backward(last.context(self.net)).get(last.inp)
            if claim is None or f"d{last.name}" not in parse(claim, self.net).names():
                return None
            text = re.sub(rf"\bd{last.name}\b", PLACEHOLDER, claim)
            node = parse(claim, self.net)
            return _rename(node, f"d{last.name}", f"d{PLACEHOLDER}"), text, last.name, last.inp, last.op.name
        L, out = self.net.L, self.net.output.name
        a = f"a{L}"
        if out == "sigmoid":
            text = f"{PLACEHOLDER} * {a} * (1 - {a})"
        elif out == "softmax":
            text = f"{a} * ({PLACEHOLDER} - sum({a} * {PLACEHOLDER}, axis={1 if self.net.batch else 0}))"
        else:
            return None
        node = parse(text.replace(PLACEHOLDER, f"d{a}"), self.net)
        return _rename(node, f"d{a}", f"d{PLACEHOLDER}"), text, a, f"z{L}", out

    def locate(self, result, node, target, mismatch):
        point, (i, j) = mismatch
        result.element = (i, j)
        label = self.printer.doprint(self.net.symbols(target)[i, j])
        size = self.net.shape(target)[0] * self.net.shape(target)[1]
        if size <= 5000:
            try:
                names = node.names()
                env = {n: (self.net.symbols(n) if n[0] != "d" or n[1:] not in self.grads
                           else self.net.grad_symbols(n[1:])) for n in names if n != "N"}
                claim = evaluate(node, env, N=self.net.batch)
                result.expected = self.printer.doprint(self.grads[target][i, j])
                result.got = self.printer.doprint(claim[i, j])
            except Exception:  # pragma: no cover - printing is best effort
                pass
        if result.expected is None:
            result.expected = str(point.truth(target)[i, j])
            result.got = str(self.values(node, point)[i, j])
        where = f"at dL/d{label}: expected {result.expected}, got {result.got}"
        result.detail = f"{result.detail}; {where}" if result.detail else where


class _Printer(TextPrinter):
    """Plain text with 1-based indices, and ``Heaviside(z, 0)`` printed as the language's ``step(z)``."""

    def _print_Heaviside(self, expr):
        if len(expr.args) > 1 and expr.args[1] == 0:
            return f"step({self._print(expr.args[0])})"
        return super()._print_Function(expr)


def _general_diagnosis(net, judge, result, node):
    """A refuted claim (the concrete tiers' counterexample) whose usual mistake has a correction
    proved for all sizes (:func:`symbp.allsizes.diagnose`): the diagnosis, detail and ``expected`` in
    general form (``(a3 - y) / N``, not a factor 0.25), the concrete ``factor`` and location kept.
    Nothing changes when none is found, nor for a row's own mistake (``dropout-without-the-scale``),
    which names more than a generic diagnosis would."""
    target = result.target
    if result.diagnosis not in DIAGNOSES:
        return
    if node.shape != net.shape(target):
        ratio = 0  # no factor gives the right shape
    else:
        try:
            ratio = result.factor if result.factor is not None else judge.ratio(node, target)
        except _Overgrown:
            ratio = None
    found = allsizes.diagnose(net, target, node, ratio=0 if ratio is None else ratio)
    if found is None:
        return
    start = result.detail.find("at dL/d") if result.element is not None else -1
    where = result.detail[start:] if start >= 0 else ""
    result.diagnosis, result.expected, result.got = found.name, found.claim, result.claim
    result.detail = f"{found.detail}; {where}" if where else found.detail
    result.assumptions = found.assumptions
    if found.name == "scaled" and result.factor is None:
        result.factor = found.value


def _transposed_texts(error):
    """The claim texts with one or both operands of a shape error transposed (``X`` -> ``X.T``,
    ``X.T`` -> ``X``), from the offsets the parser gives."""
    source, spans = error.source, [s for s in error.operands if s is not None]
    if not source or not spans:
        return []

    def closes_at_end(segment):  # "f(u, v)" or "(u + v)": the first "(" closes at the last character
        depth = 0
        for k, ch in enumerate(segment):
            depth += (ch == "(") - (ch == ")")
            if ch == ")" and depth == 0:
                return k == len(segment) - 1
        return False

    def flip(segment):
        if segment.endswith(".T"):
            return segment[:-2]
        head = segment.split("(", 1)[0]
        simple = segment.isidentifier() or ((head == "" or head.isidentifier()) and closes_at_end(segment))
        return f"{segment}.T" if simple else f"({segment}).T"

    def rewrite(chosen):
        text = source
        for start, end in sorted(chosen, reverse=True):  # from the right, so offsets stay valid
            text = text[:start] + flip(source[start:end]) + text[end:]
        return text

    choices = [[span] for span in spans] + ([spans] if len(spans) > 1 else [])
    return [rewrite(chosen) for chosen in choices]


def _nodes_over(exprs, limit) -> bool:
    """Whether the expression trees (shared subtrees counted each time, as ``count_ops`` does) have
    more than ``limit`` nodes in all; stops counting there."""
    count = 0
    for e in exprs:
        for _ in sp.preorder_traversal(e):
            count += 1
            if count > limit:
                return True
    return False


def _powers_a_gradient(node, grads) -> bool:
    """Whether the claim raises something holding a true gradient ``dU`` to a power (``dz3**2``,
    ``(W2.T @ dz2)**3``): written out in the network's symbols that is a polynomial of high degree in
    large sums, which the symbolic tier leaves to the exact points (a weaker tier, never a wrong one)."""
    return any(n.op == "pow" and abs(n.value) >= 2 and any(name[0] == "d" and name[1:] in grads for name in n.args[0].names())
               for n in node.walk())


def _subtrees(node, path=()):
    yield path, node
    for k, arg in enumerate(node.args):
        yield from _subtrees(arg, path + (k,))


def _replace(node, path, new):
    if not path:
        return new
    args = list(node.args)
    args[path[0]] = _replace(args[path[0]], path[1:], new)
    return Node(node.op, tuple(args), node.shape, node.value)


PLACEHOLDER = "X"


def _operand(node):
    """The text of ``node``, parenthesized unless it is a name, a number or a call."""
    text = str(node)
    calls = ("name", "number", "size", "const", "func", "softmax", "sum", "ones", "diag", "outer")
    return text if node.op in calls or node.sugar else f"({text})"  # mean(X), var(X), sqrt(X) are calls too


def _substitute(node, name, sub):
    """``node`` with every name ``name`` replaced by the tree ``sub``."""
    if node.op == "name" and node.value == name:
        return sub
    if not node.args:
        return node
    return Node(node.op, tuple(_substitute(a, name, sub) for a in node.args), node.shape, node.value)


def _rename(node, old, new):
    if node.op == "name" and node.value == old:
        return Node("name", (), node.shape, new, new)
    if not node.args:
        return node
    return Node(node.op, tuple(_rename(a, old, new) for a in node.args), node.shape, node.value)


def _looks_like_mask(node):
    return any(n.op in ("func", "pow") for n in node.walk()) or \
        (node.op == "sub" and node.args[0].op == "number")


def _neighbours(name, net):
    """Names a slip of the pen could have put in place of ``name`` (same shape): z<->a of one layer,
    the same kind one layer up or down; in a network of layers, the input and the output of one
    entry-wise layer."""
    out = []
    if isinstance(net, Network):
        for layer in net.layers:
            if layer.op.activation is not None:
                for old, new in ((layer.inp, layer.name), (layer.name, layer.inp)):
                    if old == name and new not in out and net.shape(new) == net.shape(name):
                        out.append(new)
        return out
    kind = name[:1]  # z12 is kind z, layer 12
    if name in net.intermediates and kind in ("z", "a"):
        l = int(name[1:])
        candidates = [("a" if kind == "z" else "z") + str(l), f"{kind}{l - 1}", f"{kind}{l + 1}"]
        if l == 1 and kind == "a":
            candidates.append("x")
    elif name == "x":
        candidates = ["a1"]
    else:
        return out
    for c in candidates:
        if (c in net.names) and c != name and net.shape(c) == net.shape(name):
            out.append(c)
    return out


def _masks(net) -> dict:
    """Where f' is taken (``z1``) -> (Node of f'(z_l) as a claim, its text) for every hidden layer whose
    derivative is expressible; in a network of layers, for every entry-wise layer (its input)."""
    out = {}
    if isinstance(net, Network):
        from .ops.table import activation_derivative_text

        for layer in net.layers:
            if layer.op.activation is not None:
                text = activation_derivative_text(layer.op.activation, layer.inp, layer.name)
                if text is not None and text != "1":
                    out[layer.inp] = (parse(text, net), text)
        return out
    for l in range(1, net.L):
        text = activation_derivative(net, l)
        if text is not None:
            out[f"z{l}"] = (parse(text, net), text)
    return out


# --------------------------------------------------------------------------- the textbook


def activation_derivative(net, layer: int) -> str | None:
    """``f'(z_l)`` of hidden layer ``layer`` as a claim string (``step(z1)``, ``a1 * (1 - a1)``...).

    Written with ``a_l`` where ``a_l = f(z_l)`` is the textbook form (no skip connection into the
    layer); ``None`` if a custom activation's derivative uses functions the language lacks.

    >>> import symbp
    >>> net = symbp.MLP([2, 3, 3, 2], hidden=["relu", "sigmoid"])
    >>> activation_derivative(net, 1), activation_derivative(net, 2)
    ('step(z1)', 'a2 * (1 - a2)')
    """
    from .ops.table import activation_derivative_text

    plain = layer not in net.residual_layers
    return activation_derivative_text(net.hidden[layer - 1], f"z{layer}", f"a{layer}" if plain else None)


def textbook(net: MLP | Network) -> dict:
    """The standard backprop equations of ``net`` as claims ``{target: formula}`` (denominator layout).

    Single example: ``dW_l = dz_l @ a_{l-1}.T``, ``db_l = dz_l``, ``da_{l-1} = W_l.T @ dz_l``;
    batch: ``dW_l = dz_l.T @ a_{l-1}``, ``db_l = sum(dz_l, axis=0).T``, ``da_{l-1} = dz_l @ W_l``;
    ``dz_l = da_l * f'(z_l)``; a skip connection adds ``da_l`` to ``da_{l-1}``. The output layer uses
    the fused simplification when there is one (``a3 - y`` for softmax + cross-entropy, under its side
    condition; ``/ N`` for the mean over a batch), else ``dL/da_L`` and the output's Jacobian.
    A network of layers (:class:`symbp.layers.Network`) reads each layer's row of the op table
    (:func:`_network_textbook`).

    >>> import symbp
    >>> claims = textbook(symbp.MLP([4, 5, 3, 3]))
    >>> claims["z3"], claims["W3"], claims["z2"]
    ('a3 - y', 'dz3 @ a2.T', 'da2 * step(z2)')
    """
    if isinstance(net, Network):
        return _network_textbook(net)
    if not isinstance(net, MLP):
        raise SymbpError(f"textbook: expected a symbp.MLP or a network of layers, got {type(net).__name__}")
    L, batch = net.L, net.batch
    mean = " / N" if batch and net.reduction == "mean" else ""
    aL, n = f"a{L}", f"n{L}"  # the output width by name: the claims hold for every width
    import re

    claims = {}
    # the loss row's and the output op's own backward columns, with the output width by name
    loss = re.sub(r"\bn\b", n, re.sub(r"\ba\b", aL, net.loss_row.backward))
    claims[aL] = f"{loss}{mean}"
    if net.fused and net.fused.simplified:
        simplified = re.sub(r"\bn\b", n, re.sub(r"\ba\b", aL, net.fused.simplified))
        claims[f"z{L}"] = f"({simplified}){mean}" if mean else simplified
    else:
        last = net.network.layers[-1]
        claims.update(last.op.backward(last.context(net.network)))
    for l in range(L, 0, -1):
        prev = f"a{l - 1}" if l > 1 else "x"
        claims[f"W{l}"] = f"dz{l}.T @ {prev}" if batch else f"dz{l} @ {prev}.T"
        if net.bias:
            claims[f"b{l}"] = f"sum(dz{l}, axis=0).T" if batch else f"dz{l}"
        if l == 1:
            break
        da = f"dz{l} @ W{l}" if batch else f"W{l}.T @ dz{l}"
        if l in net.residual_layers:
            da += f" + da{l}"
        claims[f"a{l - 1}"] = da
        derivative = activation_derivative(net, l - 1)
        if derivative is not None:
            claims[f"z{l - 1}"] = f"da{l - 1}" if derivative == "1" else f"da{l - 1} * {derivative}"
    order = [n for n in net.params + net.intermediates if n in claims]
    return {name: claims[name] for name in order}


def _network_textbook(net, replace=None, inputs=False) -> dict:
    """The textbook backward of a network of layers, read from the op table (see :func:`textbook`).

    How it works: each layer's row gives, through ``backward(layer.context(net))``, its contribution to
    the gradient of its input, of its parameters, of its extra inputs (``add``'s ``from``) and of its
    internal stages; a variable read by several layers (an output read by the next layer and by an
    ``add``) gets the sum of their contributions. The last output gets the loss row's ``backward``
    (``a`` the output, ``n`` its width by name, times ``/ N`` for a mean over a batch); when the last op
    and the loss are a fused pair with a simplification (softmax + cross-entropy: ``a - y``), the last
    layer's input gets that form instead of its own backward, under the pair's side condition.
    ``replace``: ``(position, {target: claim})`` puts those claims in place of that layer's own (how a
    row's ``mistakes`` become whole claims, e.g. a residual without its skip term). ``inputs``: the
    claim for ``x`` too (a target of verify, not of the textbook: see :attr:`symbp.stages.Staged.targets`).
    """
    import re

    contributions = {}
    last = net.layers[-1]
    for layer in net.layers:
        claims = dict(layer.op.backward(layer.context(net)))
        if replace is not None and replace[0] == layer.position:
            claims.update(replace[1])
        if layer is last and net.fused and net.fused.simplified and \
                not (replace is not None and replace[0] == layer.position and layer.inp in replace[1]):
            claims.pop(layer.inp, None)
        for target, claim in claims.items():
            contributions.setdefault(target, []).append(claim)
    mean = last.context(net).mean_over_batch

    def per_example(template):
        text = re.sub(r"\bn\b", f"n_{last.name}", re.sub(r"\ba\b", last.name, template))
        if mean and parse(text, net).op in ("add", "sub"):
            text = f"({text})"
        return text + mean

    template = net.loss_row.backward
    if not template and getattr(net.loss_row, "expression", None) is not None:  # sinh/cosh: write it as tanh
        from .formula import formula_text

        row = net.loss_row
        template = formula_text(sp.simplify(sp.diff(row.expression, row.a)), {"a": "a", "y": "y"})
    if template:
        contributions.setdefault(last.name, []).insert(0, per_example(template))
    if net.fused and net.fused.simplified and not (replace is not None and replace[0] == last.position
                                                   and last.inp in replace[1]):
        contributions.setdefault(last.inp, []).insert(0, per_example(net.fused.simplified))
    order = [n for n in (net.targets if inputs else net.params + net.intermediates) if n in contributions]
    return {name: " + ".join(contributions[name]) for name in order}


# --------------------------------------------------------------------------- code claims


CODE_RTOL = 1e-7  # float64 answers (and whole numbers): relative to the largest entry of the truth
CODE_POINTS = 2  # points with targets fitting the loss; plus one general-target point under a side condition


@dataclass(frozen=True)
class _Tolerance:
    """When a returned array equals the truth: ``max |got - truth| <= atol + rtol * max |truth|``.

    ``rtol`` and ``atol`` given by the user replace the defaults; by default ``atol`` is 0 and ``rtol``
    follows the answer's dtype: 1e-7 for float64 (as for whole numbers), and for a less precise float
    ``8 * L * sqrt(K) * eps`` (``eps`` its machine epsilon, ``L`` the layers, ``K`` the longest sum of the
    backward pass: the largest width or the batch), at most 1e-2. Measured float32 backward passes
    of relu MLPs at [784, 128, 64, 10] (batch 4 and 64) and [256, 256, 256, 256, 10] stay within 3 eps
    of the largest entry; the bound leaves a wide margin and is still far below any usual mistake.
    """

    rtol: float | None = None
    atol: float | None = None

    def of(self, net, dtype):
        """``(rtol, atol, words)`` for an answer of ``dtype``."""
        precise = dtype.kind != "f" or np.finfo(dtype).eps <= np.finfo(np.float64).eps
        if precise:
            rtol, words = CODE_RTOL, "equal in float64 at random points"
        else:
            if isinstance(net, Network):
                depth, widths = len(net.layers), [net.input_width] + [layer.n_out for layer in net.layers]
            else:
                depth, widths = net.L, list(net.sizes)
            longest = max(widths + [net.batch or 1])
            rtol = min(max(CODE_RTOL, 8 * depth * math.sqrt(longest) * float(np.finfo(dtype).eps)), 1e-2)
            words = f"equal at {dtype} precision at random points"
        rtol = rtol if self.rtol is None else self.rtol
        atol = 0.0 if self.atol is None else self.atol
        return rtol, atol, f"{words} (rtol {rtol:.2g}" + (f", atol {atol:.2g})" if self.atol is not None else ")")

    def close(self, net, got, truth):
        if got.shape != truth.shape or not bool(np.all(np.isfinite(got))):
            return False
        rtol, atol, _ = self.of(net, got.dtype)
        scale = max(float(np.max(np.abs(truth))) if truth.size else 0.0, 1e-12)
        return float(np.max(np.abs(got.astype(float) - truth), initial=0.0)) <= atol + rtol * scale


def _tolerance(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SymbpError(f"verify: {what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _code_points(net, grads, seed):
    """``[(values, truth point, general)]``: random float64 points (kinks avoided) with the truth
    evaluated from the derivation there; under a side condition one more point whose target rows
    do not sum to 1 (``general``)."""
    side = net.fused.side_condition if net.fused and net.fused.side_condition else None
    kinds = [False] * CODE_POINTS + ([True] if side else [])
    points, s = [], seed
    for general in kinds:
        for _ in range(20):
            values = _random_values(net, s)  # an MLP's never gives up: units are moved off their kinks
            s += 11
            if general:
                values["y"] = values["y"] * (1.25 + 0.5 * np.arange(values["y"].size).reshape(values["y"].shape))
            try:
                point = _Point(net, grads, FloatField(), values)
                if isinstance(net, Network) and _near_kink(net, point):
                    continue  # float64 rounding in the code could put such an entry on the other side
                points.append((values, point, general))
                break
            except _Redraw:  # a pole of the derivation in float64: draw again
                continue
        else:  # pragma: no cover
            raise SymbpError("verify: could not draw random points where the derivation is finite")
    return points, side


def _near_kink(net, point, margin=1e-6) -> bool:
    """Whether an entry read by a kinked op is within ``margin`` of a kink at this float point."""
    return any(abs(float(point.env[s]) - k) < margin for name, kinks in _kinked(net).items()
               for s in net.symbols(name) for k in kinks)


def _judge_code(net, grads, code, seed, tol=_Tolerance()):
    """One result per gradient the code returns (and an ``error`` for each parameter it does not).

    The truth is the derivation (``grads``) evaluated in float64 at each point by the numeric tier's
    evaluator (a Python float per entry), independent of the code judged. ``lambdify`` gives the same
    numbers but its code generation dominates: measured on a loaded machine, 3.8 s against 0.1 s per
    point at [32, 32, 32, 10] batch 4, and 55 s against 4.7 s per point at [784, 128, 64, 10]."""
    from . import usercode

    points, side = _code_points(net, grads, seed)
    framework = code.kind != "numpy" if isinstance(code, usercode.CodeFile) else \
        usercode.child.kind_of(code) != "numpy"
    run = usercode.run(code, [values for values, _, _ in points], params=net.params, upstream=_upstream(net))
    label = run.label
    if run.failure is not None:
        general = run.failed_at is not None and points[run.failed_at][2]
        detail = run.failure + (" (at a point whose target rows do not sum to 1)" if general else "")
        names = list(net.params) + [n for o in run.outputs for n in o if n in grads and n not in net.params]
        return [Result(name, label, "error", "numeric", detail=detail) for name in dict.fromkeys(names)]
    losses = [{n: o.pop(n) for n in list(o) if n in ("L", "L.fwd")} for o in run.outputs] if framework else []
    names = list(run.outputs[0])
    unit = [k for k, (_, _, general) in enumerate(points) if not general]
    general = [k for k, (_, _, general) in enumerate(points) if general]
    results = []
    for name in names:
        if name not in grads:
            results.append(Result(str(name), label, "error", "numeric",
                                  detail=f"'{name}' is not a gradient of this network ({', '.join(grads)})"))
            continue
        gots = [o.get(name, f"{label} returned no {name} at every point") for o in run.outputs]

        def truths(ks):
            return [np.array(points[k][1].truth(name), dtype=float) for k in ks]

        result = _judge_array(net, name, label, [gots[k] for k in unit], truths(unit),
                              [points[k][0] for k in unit], tol)
        if result.ok and general:
            extra = _judge_array(net, name, label, [gots[k] for k in general], truths(general),
                                 [points[k][0] for k in general], tol)
            if extra.verdict == "error":
                result = extra
            elif not extra.ok:
                result.assumptions = (side,)
                result.detail += f"; assuming {side}"
        results.append(result)
    for name in net.params:
        if name not in names:
            results.append(Result(name, label, "error", "numeric", detail=f"{label} returned no gradient for {name}"))
    if framework:
        results.append(_judge_forward(net, label, losses, [values for values, _, _ in points], tol))
    return results


def _upstream(net) -> bool:
    """Whether ``net`` judges a layer on its own: a network of layers whose loss is ``sum(y * out)``
    (the loss ``a*y`` summed over units and examples), so that ``y`` is the upstream gradient."""
    from .layers import Loss

    row = net.loss_row
    return isinstance(net, Network) and isinstance(row, Loss) and (net.batch is None or net.reduction == "sum") \
        and sp.expand(row.expression - row.a * row.y) == 0


def _judge_forward(net, label, losses, points, tol):
    """The loss framework code's forward returned (``"L"``; JAX's ``fwd`` rule: ``"L.fwd"``) against the
    network's own loss from the independent NumPy forward, at every point: one result, target ``L``."""
    from .numeric import forward_pass, network_forward

    run_forward = network_forward if isinstance(net, Network) else forward_pass
    for k, (loss, values) in enumerate(zip(losses, points)):
        truth = np.array([[float(run_forward(net, values)["L"])]])
        for key, who in (("L", "forward"), ("L.fwd", "fwd")):
            if key not in loss:
                continue
            got = loss[key]
            if isinstance(got, str) or got.size != 1 or got.dtype.kind not in "biuf":
                what = got if isinstance(got, str) else f"shape {got.shape}, dtype {got.dtype}"
                return Result("L", label, "error", "numeric", "shape",
                              detail=f"{who} returned {what}; expected the scalar loss")
            got = got.reshape(1, 1) if got.dtype.kind == "f" else got.reshape(1, 1).astype(float)
            if not tol.close(net, got, truth):
                expected, shown = _shown(truth[0, 0], got[0, 0])
                return Result("L", label, "fails", "numeric", "other", element=(0, 0), expected=expected, got=shown,
                              detail=f"{who} returned the loss {shown}; the network's loss is {expected} "
                                     f"(at random point {k + 1})")
    dtype = min((v.dtype for loss in losses for v in loss.values() if not isinstance(v, str)),
                key=lambda d: np.finfo(d).bits if d.kind == "f" else 64, default=np.dtype(float))
    return Result("L", label, "holds", "numeric", detail="the forward's loss is the network's: "
                  + tol.of(net, dtype if dtype.kind == "f" else np.dtype(float))[2])


def _shown(truth, got):
    """The two numbers as text: 6 significant digits, or every digit where those would look equal."""
    t, g = f"{truth:.6g}", f"{got:.6g}"
    if t == g and float(truth) != float(got):
        t, g = repr(float(truth)), repr(float(got))
    return t, g


def _judge_array(net, name, label, gots, truths, points, tol=_Tolerance()):
    shape = net.shape(name)
    for g in gots:
        if isinstance(g, str):
            return Result(name, label, "error", "numeric", detail=f"{name}: {g}")
    if any(g.dtype.kind == "c" for g in gots):
        dtype = next(g.dtype for g in gots if g.dtype.kind == "c")
        return Result(name, label, "error", "numeric",
                      detail=f"{name}: returned complex numbers ({dtype}); a gradient of a real loss is real")
    gots = [g if g.dtype.kind == "f" else g.astype(float) for g in gots]
    dtype = min((g.dtype for g in gots), key=lambda d: np.finfo(d).bits)
    if gots[0].ndim == 1 and shape[1] == 1 and gots[0].shape == (shape[0],):
        gots = [g.reshape(-1, 1) for g in gots]

    def close(fixed):
        return all(tol.close(net, f, t) for f, t in zip(fixed, truths))

    if gots[0].shape != shape or any(g.shape != gots[0].shape for g in gots):
        if gots[0].shape == shape[::-1] and close([g.T for g in gots]):
            return Result(name, label, "fails", "numeric", "transposed",
                          detail=f"returned shape {gots[0].shape}; its transpose holds")
        return Result(name, label, "error", "numeric", "shape",
                      detail=f"returned shape {gots[0].shape}, dL/d{name} has shape {shape}")
    for g, t in zip(gots, truths):
        bad = ~np.isfinite(g) & np.isfinite(t)
        if np.any(bad):
            index = tuple(int(k) for k in np.argwhere(bad)[0])
            result = Result(name, label, "fails", "numeric", "other", element=index,
                            expected=_shown(t[index], t[index])[0], got=str(float(g[index])))
            result.detail = (f"{name} has {int(bad.sum())} entries that are not finite ({result.got} at "
                             f"{name}[{index[0] + 1},{index[1] + 1}]); expected {result.expected} there")
            return result
    if close(gots):
        return Result(name, label, "holds", "numeric", detail=tol.of(net, dtype)[2])
    result = Result(name, label, "fails", "numeric", "other")
    g, t = gots[0], truths[0]
    index = np.unravel_index(int(np.argmax(np.abs(g.astype(float) - t))), shape)
    result.element = tuple(int(k) for k in index)
    result.expected, result.got = _shown(t[index], g[index])
    candidates = []
    if shape[0] == shape[1]:
        candidates.append(("transposed", [x.T for x in gots], "the transpose holds", None))
    candidates.append(("sign", [-x for x in gots], "the negative holds (sign flipped)", None))
    nonzero = np.abs(g) > 1e-12
    if np.any(nonzero):
        ratio = float(np.median(t[nonzero] / g[nonzero]))
        nice = Fraction(ratio).limit_denominator(1000)
        near = max(1e-9, tol.of(net, dtype)[0])  # a float32 answer's ratio is a float32 number
        factor = float(nice) if abs(float(nice) - ratio) <= near * abs(ratio) else ratio
        if abs(factor - 1) > 1e-9 and abs(factor + 1) > 1e-9:
            words = f"multiplied by {nice} it holds" if factor == float(nice) else f"multiplied by {factor:.12g} it holds"
            candidates.append(("scaled", [factor * x for x in gots], words, factor))
    for diagnosis, fixed, detail, factor in candidates:
        if close(fixed):
            result.diagnosis, result.detail, result.factor = diagnosis, detail, factor
            break
    else:
        layer = _mask_layer(net, name, gots, points, tol) if isinstance(net, MLP) else None  # MLP layers only
        result.detail = "no usual mistake explains it"
        if layer is not None:
            result.diagnosis = "missing-activation-derivative"
            result.detail = f"it equals the backward pass without {layer}"
    result.detail += f"; at {name}[{index[0] + 1},{index[1] + 1}]: expected {result.expected}, got {result.got}"
    return result


def _mask_layer(net, name, gots, points, tol=_Tolerance()):
    """The hidden layers whose activation derivatives, left out of the backward pass, give ``gots``
    (as text: "f'(z2)", "f'(z1), f'(z2)"), or None."""
    import itertools

    layers = range(1, net.L)
    for count in range(1, min(len(layers), 4) + 1):
        for skip in itertools.combinations(layers, count):
            if all(tol.close(net, got, _backprop_without(net, values, skip).get(name, np.full(got.shape, np.nan)))
                   for got, values in zip(gots, points)):
                return ", ".join(f"f'(z{l})" for l in skip)
    return None


def _backprop_without(net, values, skip):
    """NumPy backprop with the derivatives of hidden layers ``skip`` taken as 1 (forgotten masks)."""
    import copy
    import dataclasses

    from .numeric import reference_gradients

    hidden = list(net.hidden)
    for layer in skip:
        hidden[layer - 1] = dataclasses.replace(hidden[layer - 1], numpy_derivative=np.ones_like)
    twin = copy.copy(net)  # a shallow copy with one row replaced; the network itself is untouched
    twin.hidden = tuple(hidden)
    return reference_gradients(twin, values)


# --------------------------------------------------------------------------- public


def verify(net: MLP | Network, claims, *, grads: Gradients | None = None, seed: int = 0, rtol: float | None = None,
           atol: float | None = None, sizes: str = "all", _general: bool = True) -> Report:
    """Judge each claim ``{target: formula}`` (or a ``backward(values) -> {name: array}`` callable)
    against the derived gradients of ``net``.

    Code claims: a Python callable runs in this process (closures and lambdas cannot always be sent
    to another one); every exception and ``SystemExit`` it raises is an ``error`` verdict, but
    ``KeyboardInterrupt`` is let through (Ctrl-C), and it has no time or memory limit. A
    :class:`symbp.usercode.CodeFile` (what a spec's ``[code]`` becomes) runs in a child process under
    its limits. Returned arrays are compared with the truth at random points (and, under a side
    condition, at a point whose target rows do not sum to 1) by ``max |got - truth| <= atol + rtol *
    max |truth|``: ``rtol`` defaults by dtype (1e-7 for float64; float32 from its epsilon and the
    network's size), ``atol`` to 0; both apply to code claims only.

    ``sizes="all"`` (the default) first tries to prove each formula claim for every size
    (:mod:`symbp.allsizes`: method ``"all-sizes"``, ``result.sizes == "all"``); a claim it cannot
    prove is judged at the given sizes (``sizes == "given"``), and one that holds there is judged at
    other sizes too, failing when it holds only at the given ones. ``sizes="given"`` judges at the
    given sizes only, as before.

    >>> import symbp
    >>> net = symbp.MLP([4, 5, 3, 3])
    >>> report = verify(net, {"z3": "a3 - y", "W3": "a2 @ dz3.T", "z2": "W3.T @ dz3"})
    >>> [(r.target, r.verdict, r.method, r.diagnosis) for r in report.results]
    [('z3', 'holds', 'all-sizes', None), ('W3', 'fails', 'exact-random', 'transposed'), ('z2', 'fails', 'exact-random', 'missing-activation-derivative')]
    >>> report.assumptions
    ['every target row sums to 1']
    """
    if not isinstance(net, (MLP, Network)):
        raise SymbpError(f"verify: expected a symbp.MLP or a network of layers, got {type(net).__name__}")
    from .usercode import CodeFile

    if sizes not in ("all", "given"):
        raise SymbpError(f"verify: sizes must be 'all' (prove for every size first) or 'given', got {sizes!r}")
    tol = _Tolerance(_tolerance(rtol, "rtol"), _tolerance(atol, "atol"))
    start = time.perf_counter()
    if grads is not None and (not isinstance(grads, Gradients) or grads.net is not net):
        raise SymbpError("verify: grads must come from symbp.derive of this network")
    derived = []

    def truth():  # the concrete derivation, built only when a claim is not proved for all sizes
        if not derived:
            g = grads if grads is not None else derive(net, method="chain")
            derived.append((g if g.layout == "denominator" else g.with_layout("denominator")).with_input())
        return derived[0]

    results = []
    if callable(claims) or isinstance(claims, CodeFile):
        results = _judge_code(net, truth(), claims, seed, tol)
    else:
        if not hasattr(claims, "items"):
            raise SymbpError(f"verify: claims must be a dict {{target: formula}} or a function, got {type(claims).__name__}")
        parsed = []
        targets = set(net.targets)
        for target, text in claims.items():
            if callable(text) or isinstance(text, CodeFile):
                parsed.append((target, text, None))
                continue
            target = str(target)
            if target not in targets:
                raise SymbpError(f"claims: no gradient named '{target}'{closest(target, sorted(targets))}; "
                                 f"targets: {', '.join(net.targets)}")
            try:
                node = parse(text, net, what=f"claim for {target}")
            except FormulaError as exc:
                if exc.kind != "shape":  # unparsable text, unknown names: bad input
                    raise
                node = exc  # shapes that do not fit: a verdict, with the fix if a transpose gives one
            parsed.append((target, text, node))
        proofs = allsizes.prove_all(net, parsed) if sizes == "all" else {}
        judge = None
        for target, text, node in parsed:
            if (target, text) in proofs and proofs[target, text][0] is not None:
                used, detail = proofs[target, text]
                results.append(Result(target, text, "holds", "all-sizes", detail=detail, assumptions=tuple(used),
                                      sizes="all"))
                continue
            if node is None:
                results.extend(_judge_code(net, truth(), text, seed, tol))
                continue
            judge = judge or _Judge(net, truth(), seed)
            if isinstance(node, FormulaError):
                result = judge.judge_shape(target, text, node)
            else:
                result = judge.judge(target, text, node)
            if result.verdict == "holds" and _general and sizes == "all":
                result = allsizes.general(net, target, text, result, seed) or result
            elif result.verdict == "fails" and sizes == "all" and isinstance(node, Node):
                _general_diagnosis(net, judge, result, node)
            if result.sizes == "given" and result.verdict == "holds" and sizes == "all":
                why = proofs.get((target, text), (None, ""))[1]
                note = "judged at the given sizes only" + (f" (not proved for all sizes: {why})" if why else "")
                result.detail = f"{result.detail}; {note}" if result.detail else note
            results.append(result)
    assumptions = []
    for r in results:
        for a in r.assumptions:
            if a not in assumptions:
                assumptions.append(a)
    return Report(results, assumptions, net.describe(), time.perf_counter() - start)
