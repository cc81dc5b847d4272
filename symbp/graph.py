"""Computation graphs of scalar expressions: micrograd's ``Value``, cs231n's gates.

How it works:

* :class:`Node` is micrograd's ``Value``: a forward value, a gradient, the nodes it was computed from,
  and for each of them the *local gradient* d(this)/d(input). Each gate is a short method (``add``,
  ``mul``, ``exp``, ``sigmoid``, ...) that computes the value and the local gradients. ``backward()``
  sorts the graph topologically (iteratively, with an explicit stack, so a chain of thousands of
  operations does not hit Python's recursion limit), sets the output's gradient to 1, and walks the
  nodes in reverse; each node adds ``local * upstream`` to each input's gradient with ``+=``, so a
  node used twice accumulates (``b = a + a`` gives ``a.grad == 2``).
* Gates are named for what they do to the gradient (cs231n): an add gate is a *distributor* (every
  input gets the upstream gradient unchanged), a mul gate a *switcher* (each input gets the upstream
  gradient times the other inputs), max, min and relu are *routers* (the whole gradient goes to the
  winning input), neg a *sign flipper*, and every other unary gate (exp, log, sigmoid, tanh, pow, 1/x,
  sqrt, ...) a *scaler*: it multiplies the upstream gradient by its local derivative.
* :func:`graph` builds the graph of an expression. From text (parsed by the whitelist parser of
  :mod:`symbp.expression`, never evaluated) the default ``structure="source"`` keeps the gates *as
  written*, binary and in source order, the graph micrograd builds when it runs that line:
  ``a*b + c`` is a mul then an add, ``a - b`` a sub gate, ``x/y`` a div gate, ``-u`` a neg gate, and a
  number folds into its gate (``1 + u`` is a ``+1`` gate, ``1/u`` a ``1/x`` gate). With
  ``structure="sympy"`` (the only choice for a SymPy expression) the graph follows SymPy's canonical
  tree instead: ``a + b + c`` is one distributor with three inputs (SymPy's ``Add`` is n-ary),
  ``a - b`` is ``a + (-1)*b`` (an add and a neg), ``x/y`` is ``x * y**-1`` (a mul and a ``1/x``),
  ``-(a + b)`` is ``-a - b``. Identical subexpressions are one node either way, so their gradients
  accumulate: in source structure, the same operation of the same inputs as written (``a*b + a*b`` has
  one mul node, whose gradient is 2; ``a*b + b*a`` has two), where micrograd would build it twice.
* Granularity: ``granularity="gates"`` keeps sigmoid, tanh, softplus and relu as one gate each;
  ``"primitives"`` writes them in exp, add, 1/x and max (sigmoid(u) = 1/(1 + exp(-u)), tanh(u) =
  (e - 1)/(e + 1) with e = exp(2u), softplus(u) = log(1 + exp(u)), relu(u) = max(0, u)).
* Values are exact SymPy numbers where the inputs are exact (integers, fractions, decimals written as
  text), floats where they are floats. :meth:`Graph.check` compares every input's gradient with
  ``sympy.diff`` of the whole expression: exactly where the values are rational, to 30 digits otherwise.
* Exact work is bounded: an exact value (or local gradient) may have at most :data:`EXACT_DIGITS` digits
  and a size within ``10^-EXACT_DIGITS .. 10^EXACT_DIGITS``, estimated (in floating point with an
  unbounded exponent) *before* a power or an exponential is computed. Past that the whole graph is
  rebuilt in floating point and :attr:`Graph.fallback` says where and why; a float past ``10^308``
  (where IEEE doubles overflow) is refused, naming the gate. A value or local gradient that is not
  real (``log(-1)``, ``(-2)**x`` at ``x = 1/2``, ``x**y`` with ``x < 0``) is refused, naming the gate.
* Ties, one rule for every granularity and structure, used by the gate and by the check: where a max
  (min) is tied, a tied *constant* wins (the variable inputs get 0, so ``relu(u) = max(0, u)`` gives
  relu'(0) = 0, as PyTorch and micrograd), else the tied inputs share the gradient equally (1/k each for
  k distinct tied inputs; SymPy's ``Heaviside(0) = 1/2`` for two). Both are subgradients; SymPy's own
  rule gives 1/2 to *every* tied input (3/2 in all for three), which is not, so :meth:`Graph.check`
  differentiates with ``sympy.diff`` after giving Max and Min this derivative (:func:`tie_shares`).
  Nested max (min) calls are one router, as SymPy's ``Max`` flattens them, so the rule sees every tie.

>>> g = graph("(a*b + c)*f", at={"a": 2, "b": -3, "c": 5, "f": -2})
>>> g.value, g.grad("a"), g.grad("b"), g.grad("c"), g.grad("f")
(2, 6, -4, -2, -1)
>>> a = Node(2, label="a"); b = a + a; b.backward(); a.grad
2
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

import mpmath
import sympy as sp

from . import functions as F
from .characters import require_ascii
from .errors import SymbpError, closest
from .expression import FUNCTIONS, parse_scalar

GATES = {
    # op: (gate, what it does to the upstream gradient)
    "input": ("input", "collects the gradients of all its uses (+=)"),
    "add": ("distributor", "passes the upstream gradient unchanged to every input"),
    "sub": ("distributor", "passes the upstream gradient to the first input and its negative to the second"),
    "mul": ("switcher", "gives each input the upstream gradient times the other inputs"),
    "div": ("scaler", "scales the upstream gradient: by 1/y for x, and by -x/y^2 for y"),
    "scale": ("scaler", "multiplies the upstream gradient by the constant"),
    "neg": ("sign flipper", "flips the sign of the upstream gradient"),
    "max": ("router", "routes the upstream gradient to the largest input (ties: split equally, or all to a "
            "tied constant); the others get 0"),
    "min": ("router", "routes the upstream gradient to the smallest input (ties: split equally, or all to a "
            "tied constant); the others get 0"),
    "relu": ("router", "passes the upstream gradient where x > 0 and blocks it where x <= 0 (relu'(0) = 0)"),
    "abs": ("sign switch", "multiplies the upstream gradient by sign(x)"),
    "exp": ("scaler", "multiplies the upstream gradient by exp(x), its own output"),
    "log": ("scaler", "multiplies the upstream gradient by 1/x"),
    "reciprocal": ("scaler", "multiplies the upstream gradient by -1/x^2"),
    "pow": ("scaler", "multiplies the upstream gradient by n x^(n-1)"),
    "cpow": ("scaler", "multiplies the upstream gradient by c^x log(c)"),
    "power": ("switcher", "gives x the upstream gradient times y x^(y-1), and y times x^y log(x)"),
    "sqrt": ("scaler", "multiplies the upstream gradient by 1/(2 sqrt(x))"),
    "sigmoid": ("scaler", "multiplies the upstream gradient by sigmoid(x)(1 - sigmoid(x))"),
    "tanh": ("scaler", "multiplies the upstream gradient by 1 - tanh(x)^2"),
    "softplus": ("scaler", "multiplies the upstream gradient by sigmoid(x)"),
    "sin": ("scaler", "multiplies the upstream gradient by cos(x)"),
    "cos": ("scaler", "multiplies the upstream gradient by -sin(x)"),
}

STRUCTURES = ("source", "sympy")
_INFINITE = (sp.zoo, sp.oo, sp.S.NegativeInfinity, sp.nan)
GRANULARITIES = ("gates", "primitives")

EXACT_DIGITS = 3000  # an exact value has at most this many digits and a size within 10^-3000 .. 10^3000
FLOAT_DIGITS = 308  # floats overflow past 10^308 (IEEE doubles), as the JSON's numbers would
_LN10 = math.log(10)
_mp = type(mpmath.mp)()  # a private context, 53 bits: the size estimates (their exponent is unbounded)


class _TooBig(SymbpError):
    """A value past the exact bounds (``exact=True``: the graph is rebuilt in floats) or past floats'."""

    def __init__(self, message, *, exact):
        super().__init__(message)
        self.exact = exact


def number(value) -> sp.Expr:
    """A SymPy number: ints and fractions exact, floats as floats, text parsed exactly.

    >>> number(2), number(0.5), number("1/3"), number(Fraction(3, 4))
    (2, 0.500000000000000, 1/3, 3/4)
    """
    if isinstance(value, bool):
        raise SymbpError(f"value {value!r}: expected a number, not a boolean")
    if isinstance(value, int):
        return sp.Integer(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SymbpError(f"value {value!r}: expected a finite number")
        return sp.Float(value)
    if isinstance(value, Fraction):
        return sp.Rational(value.numerator, value.denominator)
    if isinstance(value, str):
        value = parse_scalar(value, {}, what="value")
    if isinstance(value, sp.Basic) and value.is_number and value.is_extended_real is not False:
        if value.is_finite is False:
            raise SymbpError(f"value {value}: expected a finite number")
        return value
    raise SymbpError(f"value {value!r}: expected a real number")


class Node:
    """One value of a computation graph and the gradient of the output with respect to it.

    Gates are methods (and operators, as in micrograd); a number is folded into the gate as a constant.

    >>> a, b, c, f = Node(2, label="a"), Node(-3, label="b"), Node(5, label="c"), Node(-2, label="f")
    >>> e = a * b; d = e + c; L = f * d
    >>> L.backward()
    >>> L.value, [n.grad for n in (a, b, c, f, e, d)]
    (2, [6, -4, -2, -1, -2, -2])
    """

    __slots__ = ("value", "grad", "inputs", "local", "op", "const", "label", "id", "expr", "exact", "approx")

    def __init__(self, value, inputs=(), op="input", *, local=(), const=None, label=None, expr=None,
                 approx=None):
        self.inputs = tuple(inputs)
        self.op = op
        self.const = const  # a number folded into the gate (the 1 of "+1", the -1 of "*-1")
        self.label = label
        self.id = label
        self.expr = expr  # the SymPy expression this node computes, when known
        if self.inputs and isinstance(value, sp.Basic) and value.is_extended_real is False:
            raise SymbpError(f"{_culprit(self)} is {sp.sstr(value)}, not a real number")
        self.value = number(value)
        self.grad = sp.S.Zero
        self.local = tuple(local)  # d(self)/d(input k), one per input
        for k, (node, d) in enumerate(zip(self.inputs, self.local)):
            if d in _INFINITE or (not d.is_Number and d.has(*_INFINITE)):
                raise SymbpError(f"{op} has no derivative at {sp.sstr(node.value)} (its local gradient is "
                                 f"{sp.sstr(d)}): the expression is not differentiable at this point")
            if d.is_extended_real is False:
                wrt = ("x", "y")[k] if len(self.inputs) == 2 else "x"
                raise SymbpError(f"{_culprit(self)} has no real derivative: d/d{wrt} is {sp.sstr(d)}")
        # exact: every value it comes from is exact (a float anywhere makes the rest floats)
        self.exact = not self.value.has(sp.Float) if not self.inputs else (
            not self.value.is_Float and all(n.exact for n in self.inputs))
        self.approx = approx if approx is not None else _approximate(self)
        _check_size(self, self.approx)

    def __repr__(self):
        return f"Node({self.label or self.op}, value={self.value}, grad={self.grad})"

    @property
    def gate(self) -> str:
        return GATES[self.op][0]

    # ------------------------------------------------------------------ backward

    def _backward(self):
        for node, local in zip(self.inputs, self.local):
            node.grad += local * self.grad  # += : a node used twice collects both contributions

    def backward(self):
        """Set every gradient: dL/dL = 1, then each node in reverse topological order pushes its own."""
        order = topological(self)
        for node in order:
            node.grad = sp.S.Zero
        self.grad = sp.S.One
        for node in reversed(order):
            node._backward()

    # ------------------------------------------------------------------ gates

    def add(self, *others, const=0):
        """Distributor: ``self + others + const``; every local gradient is 1."""
        inputs = (self,) + others
        const = number(const)
        return Node(sp.Add(const, *(n.value for n in inputs)), inputs, "add", local=[sp.S.One] * len(inputs),
                    const=const if const != 0 else None)

    def sub(self, other):
        """Distributor with a sign: ``self - other``; local gradients 1 and -1."""
        return Node(self.value - other.value, (self, other), "sub", local=(sp.S.One, sp.S.NegativeOne))

    def mul(self, *others, const=1):
        """Switcher: ``const * self * others``; each input's local gradient is the product of the others."""
        inputs = (self,) + others
        const = number(const)
        values = [n.value for n in inputs]
        before, after = [sp.S.One], [sp.S.One]
        for v in values[:-1]:
            before.append(before[-1] * v)
        for v in reversed(values[1:]):
            after.append(after[-1] * v)
        local = [const * before[k] * after[len(values) - 1 - k] for k in range(len(values))]
        return Node(const * before[-1] * values[-1], inputs, "mul", local=local,
                    const=const if const != 1 else None)

    def scale(self, const):
        """Scaler: ``const * self``; local gradient ``const`` (``const = -1`` is :meth:`neg`)."""
        const = number(const)
        if const == -1:
            return self.neg()
        return Node(const * self.value, (self,), "scale", local=(const,), const=const)

    def neg(self):
        """Sign flipper: ``-self``; local gradient -1."""
        return Node(-self.value, (self,), "neg", local=(sp.S.NegativeOne,))

    def div(self, other):
        """Switcher: ``self / other``; local gradients ``1/other`` and ``-self/other**2``."""
        if other.value == 0:
            raise SymbpError("division by zero in the graph")
        return Node(self.value / other.value, (self, other), "div",
                    local=(1 / other.value, -self.value / other.value**2))

    def reciprocal(self, const=1):
        """``const / self`` (the cs231n ``1/x`` gate); local gradient ``-const/self**2``."""
        if self.value == 0:
            raise SymbpError("division by zero in the graph (1/x at x = 0)")
        const = number(const)
        return Node(const / self.value, (self,), "reciprocal", local=(-const / self.value**2,),
                    const=const if const != 1 else None)

    def pow(self, n):
        """``self ** n`` for a number ``n``; local gradient ``n self**(n-1)``."""
        n = number(n)
        if n == -1:
            return self.reciprocal()
        approx = _precheck("pow", (self,), n)
        return Node(self.value**n, (self,), "pow", local=(n * self.value ** (n - 1),), const=n, approx=approx)

    def cpow(self, base):
        """``base ** self`` for a number ``base``; local gradient ``base**self log(base)``."""
        base = number(base)
        approx = _precheck("cpow", (self,), base)
        value = base**self.value
        return Node(value, (self,), "cpow", local=(value * sp.log(base),), const=base, approx=approx)

    def power(self, other):
        """``self ** other``, both nodes; local gradients ``y x**(y-1)`` and ``x**y log(x)``."""
        approx = _precheck("power", (self, other), None)
        x, y = self.value, other.value
        return Node(x**y, (self, other), "power", local=(y * x ** (y - 1), x**y * sp.log(x)), approx=approx)

    def exp(self):
        approx = _precheck("exp", (self,), None)
        value = sp.exp(self.value)
        return Node(value, (self,), "exp", local=(value,), approx=approx)

    def log(self):
        if self.value.is_positive is False:
            raise SymbpError(f"log of {self.value} in the graph: log needs a positive number")
        return Node(sp.log(self.value), (self,), "log", local=(1 / self.value,))

    def sqrt(self):
        value = sp.sqrt(self.value)
        return Node(value, (self,), "sqrt", local=(1 / (2 * value),))

    def sigmoid(self):
        approx = _precheck("sigmoid", (self,), None)
        value = F.sigmoid(self.value)
        return Node(value, (self,), "sigmoid", local=(value * (1 - value),), approx=approx)

    def tanh(self):
        approx = _precheck("tanh", (self,), None)
        value = sp.tanh(self.value)
        return Node(value, (self,), "tanh", local=(1 - value**2,), approx=approx)

    def softplus(self):
        approx = _precheck("softplus", (self,), None)
        return Node(F.softplus(self.value), (self,), "softplus", local=(F.sigmoid(self.value),), approx=approx)

    def relu(self):
        """Router: passes the gradient where ``self > 0``; relu'(0) = 0 (``Heaviside(x, 0)``)."""
        return Node(F.relu(self.value), (self,), "relu", local=(F.step(self.value),))

    def abs(self):
        return Node(sp.Abs(self.value), (self,), "abs", local=(sp.sign(self.value),))

    def sin(self):
        return Node(sp.sin(self.value), (self,), "sin", local=(sp.cos(self.value),))

    def cos(self):
        return Node(sp.cos(self.value), (self,), "cos", local=(-sp.sin(self.value),))

    def max(self, *others, const=None, op="max"):
        """Router: ``max(self, others, const)``; the winner's local gradient is 1; ties: :func:`tie_shares`."""
        inputs = (self,) + others
        values = [n.value for n in inputs] + ([number(const)] if const is not None else [])
        best = sp.Max(*values) if op == "max" else sp.Min(*values)
        keys = [id(n) for n in inputs] + [None] * (const is not None)
        local = tie_shares(values, keys, fixed=[False] * len(inputs) + [True] * (const is not None), op=op)
        return Node(best, inputs, op, local=local[:len(inputs)], const=number(const) if const is not None else None)

    def min(self, *others, const=None):
        """Router: ``min(self, others, const)``."""
        return self.max(*others, const=const, op="min")

    # ------------------------------------------------------------------ operators (micrograd)

    def __add__(self, other):
        return self.add(other) if isinstance(other, Node) else self.add(const=other)

    __radd__ = __add__

    def __sub__(self, other):
        return self.sub(other) if isinstance(other, Node) else self.add(const=-number(other))

    def __rsub__(self, other):
        return self.neg().add(const=other)

    def __mul__(self, other):
        return self.mul(other) if isinstance(other, Node) else self.scale(other)

    __rmul__ = __mul__

    def __neg__(self):
        return self.neg()

    def __truediv__(self, other):
        if isinstance(other, Node):
            return self.div(other)
        if number(other) == 0:
            raise SymbpError("division by zero in the graph")
        return self.scale(1 / number(other))

    def __rtruediv__(self, other):
        return self.reciprocal(other)

    def __pow__(self, other):
        return self.power(other) if isinstance(other, Node) else self.pow(other)

    def __rpow__(self, other):
        return self.cpow(other)


def topological(root: Node) -> list[Node]:
    """Every node ``root`` depends on, inputs before the nodes that use them (iterative DFS).

    >>> x = Node(1, label="x"); y = (x * x).exp()
    >>> [n.op for n in topological(y)]
    ['input', 'mul', 'exp']
    """
    return postorder(root, lambda node: node.inputs)


def postorder(root, children) -> list:
    """Every node reachable from ``root``, each after its ``children(node)`` (in their order), once:
    an iterative depth-first search, so thousands of levels do not reach the recursion limit.

    >>> postorder(3, lambda n: [n - 1, n - 2] if n > 1 else [])
    [1, 0, 2, 3]
    """
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children(node)) if child not in seen)
    return order


def tie_shares(values, keys, fixed, *, op="max") -> list:
    """The share of a max (min) gate's gradient each argument gets: the tie rule, one for the gates
    and for :meth:`Graph.check`.

    The winner gets 1. At a tie a tied constant (``fixed``) wins and every variable argument gets 0
    (``max(0, u)`` at ``u = 0``: relu'(0) = 0); else the ``k`` distinct tied arguments (``keys``: the
    same node twice is one argument) get ``1/k`` each, split between its copies.

    >>> tie_shares([1, 1, 1], "abc", [False] * 3), tie_shares([1, 1, 1], "abc", [False, False, True])
    ([1/3, 1/3, 1/3], [0, 0, 0])
    >>> tie_shares([2, 2, 1], "aab", [False] * 3, op="max"), tie_shares([2, 2, 1], "abc", [False] * 3, op="min")
    ([1/2, 1/2, 0], [0, 0, 1])
    """
    best = (sp.Max if op == "max" else sp.Min)(*values)
    tied = [k for k, v in enumerate(values) if v == best or sp.Eq(v, best) is sp.true]
    if any(fixed[k] for k in tied):
        return [sp.S.Zero] * len(values)
    copies = Counter(keys[k] for k in tied)
    return [sp.Rational(1, len(copies) * copies[keys[k]]) if k in tied else sp.S.Zero for k in range(len(values))]


class _TieMax(sp.Function):
    """``Max`` whose derivative follows :func:`tie_shares` (for :meth:`Graph.check`); unevaluated
    (not flattened) until its arguments are numbers."""

    _op = "max"

    @classmethod
    def eval(cls, *args):
        if all(a.is_number for a in args):
            return (sp.Max if cls._op == "max" else sp.Min)(*args)
        return None

    def fdiff(self, argindex=1):
        mask = sum(1 << k for k, a in enumerate(self.args) if not _symbols_of(a))
        return _TieShare(sp.Integer(self._op == "min"), sp.Integer(argindex - 1), sp.Integer(mask), *self.args)


class _TieMin(_TieMax):
    _op = "min"


class _TieShare(sp.Function):
    """``_TieShare(min?, k, constants-mask, *args)``: the share of argument ``k``, once they are numbers."""

    @classmethod
    def eval(cls, is_min, k, mask, *args):
        if not all(a.is_number for a in args):
            return None
        fixed = [bool(int(mask) >> j & 1) for j in range(len(args))]
        return tie_shares(list(args), list(range(len(args))), fixed, op="min" if is_min else "max")[int(k)]

    def fdiff(self, argindex=1):
        return sp.S.Zero  # piecewise constant


# --------------------------------------------------------------------------- sizes of exact values


def _to_mpf(v):
    """A 53-bit estimate of a real SymPy number (its exponent unbounded), or None if it cannot be had."""
    try:
        if v.is_Rational:
            return _mp.mpf(int(v.p)) / int(v.q)
        if v.is_Float:
            return _mp.make_mpf(v._mpf_)
        return _mp.mpf(sp.N(v, 15)._mpf_)
    except (TypeError, ValueError, AttributeError, OverflowError, ZeroDivisionError):
        return None


def _ops_approx(op, xs, c):
    """What gate ``op`` computes, on the estimates ``xs`` of its inputs (and ``c`` of its constant)."""
    mp = _mp
    one = lambda d: c if c is not None else d  # noqa: E731
    xc = xs + ([c] if c is not None else [])
    table = {
        "add": lambda: mp.fsum(xs) + one(0), "sub": lambda: xs[0] - xs[1], "mul": lambda: mp.fprod(xs) * one(1),
        "div": lambda: xs[0] / xs[1], "scale": lambda: c * xs[0], "neg": lambda: -xs[0],
        "max": lambda: max(xc), "min": lambda: min(xc),
        "relu": lambda: max(mp.zero, xs[0]), "abs": lambda: abs(xs[0]), "exp": lambda: mp.exp(xs[0]),
        "log": lambda: mp.log(xs[0]), "reciprocal": lambda: one(1) / xs[0], "pow": lambda: xs[0] ** c,
        "cpow": lambda: c ** xs[0], "power": lambda: xs[0] ** xs[1], "sqrt": lambda: mp.sqrt(xs[0]),
        "sigmoid": lambda: 1 / (1 + mp.exp(-xs[0])), "tanh": lambda: mp.tanh(xs[0]),
        "softplus": lambda: mp.log1p(mp.exp(xs[0])), "sin": lambda: mp.sin(xs[0]), "cos": lambda: mp.cos(xs[0]),
    }
    return table[op]()


# the size of the local gradient, where it can be far smaller than the value (tanh'(x) = sech(x)^2 ~ 4e^-2|x|)
_LOCAL_APPROX = {
    "tanh": lambda x: _mp.sech(x) ** 2,
    "sigmoid": lambda x: 1 / (4 * _mp.cosh(x / 2) ** 2),
    "softplus": lambda x: 1 / (1 + _mp.exp(-x)),
}


def _estimate(op, inputs, const):
    xs = [n.approx for n in inputs]
    c = None if const is None else _to_mpf(number(const))
    if any(x is None for x in xs) or (const is not None and c is None):
        return None
    try:
        return _ops_approx(op, xs, c)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _approximate(node):
    if not node.inputs:
        return _to_mpf(node.value)
    estimate = _estimate(node.op, node.inputs, node.const)
    return estimate if estimate is not None else _to_mpf(node.value)


def _magnitude(x):
    """log10 |x| (an mpf), None for 0 or unknown."""
    if x is None or x == 0:
        return None
    return _mp.log10(abs(x))


def _power_of_ten(m) -> str:
    """``10^434``, ``10^-869``, ``10^(4.3e+399)``: the size ``10^m`` for people."""
    if abs(m) < 10**6:
        return f"10^{int(_mp.nint(m))}"
    return f"10^({float(m):.2g})" if abs(m) < 1e300 else f"10^({_mp.nstr(m, 2)})"


def _ndigits(n: int) -> int:
    n = abs(n)
    k = max(0, int(n.bit_length() * 0.3010299956639812) - 1)
    while 10 ** (k + 1) <= n:
        k += 1
    return k + 1


def _brief(v, approx=None) -> str:
    """A number in an error message, short whatever its size: ``10^100000``, ``-2``, ``1/2``, ``1.5e+10``."""
    if v.is_Rational:
        if v.q == 1 and v.p > 0 and _ndigits(v.p) > 20 and 10 ** (_ndigits(v.p) - 1) == v.p:
            return f"10^{_ndigits(v.p) - 1}"
        if max(_ndigits(v.p), _ndigits(v.q)) <= 20:
            return sp.sstr(v)
    elif v.is_Float and approx is not None and abs(approx) < 1e15 and approx == int(approx):
        return str(int(approx))
    elif not v.is_Float and sp.count_ops(v) <= 6:
        return sp.sstr(v)
    return _mp.nstr(approx if approx is not None else _to_mpf(v), 6)


def _culprit(node) -> str:
    """The gate in a message: ``exp of 1000``, ``x^y of 10, 100000``, ``a = 10^400``."""
    if not node.inputs:
        return f"{node.label or 'input'} = {_brief(node.value, getattr(node, 'approx', None))}"
    return f"{gate_label(node)} of {', '.join(_brief(n.value, n.approx) for n in node.inputs)}"


class _Pending:
    """A gate about to be computed, for its messages."""

    def __init__(self, op, inputs, const):
        self.op, self.inputs, self.const = op, inputs, const


def _precheck(op, inputs, const):
    """The estimated value of a power or an exponential, refused (before it is computed) if too large."""
    approx = _estimate(op, inputs, const)
    pending = _Pending(op, inputs, None if const is None else number(const))
    exact = all(n.exact for n in inputs)
    m = _magnitude(approx)
    if exact:
        local = _LOCAL_APPROX[op](inputs[0].approx) if op in _LOCAL_APPROX and inputs[0].approx is not None else None
        _refuse_magnitude(pending, m, exact=True)
        _refuse_magnitude(pending, _magnitude(local), exact=True, what="the local gradient of ")
    else:
        _refuse_magnitude(pending, m, exact=False)
    return approx


def _refuse_magnitude(node, m, *, exact, what=""):
    """Refuse the value of ``node``, about ``10^m``: past 10^+-EXACT_DIGITS when exact, past 10^308 as a float."""
    if m is None:
        return
    if exact and abs(m) > EXACT_DIGITS:
        raise _TooBig(f"{what}{_culprit(node)} is about {_power_of_ten(m)}, beyond the exact range "
                      f"10^-{EXACT_DIGITS}..10^{EXACT_DIGITS}", exact=True)
    if not exact and m > FLOAT_DIGITS:
        raise _TooBig(f"{what}{_culprit(node)} is about {_power_of_ten(m)}: beyond floating point (10^{FLOAT_DIGITS})", exact=False)


def _check_size(node, approx):
    """Refuse an exact value with too many digits or past 10^+-EXACT_DIGITS, a float past 10^308."""
    m = _magnitude(approx)
    if node.exact:
        v = node.value
        if v.is_Rational and max(_ndigits(v.p), _ndigits(v.q)) > EXACT_DIGITS:
            raise _TooBig(f"{_culprit(node)} has {max(_ndigits(v.p), _ndigits(v.q))} digits (exact values are "
                          f"kept to {EXACT_DIGITS} digits)", exact=True)
    _refuse_magnitude(node, m, exact=node.exact)


# --------------------------------------------------------------------------- the Graph


@dataclass
class Graph:
    """A built and backpropagated graph: ``nodes`` in topological order, ``output`` last."""

    expr: sp.Expr
    symbols: dict  # name -> Symbol
    at: dict  # name -> value
    inputs: dict  # name -> Node
    output: Node
    nodes: list
    structure: str
    granularity: str
    text: str | None = None
    fallback: str | None = None  # why the values are floats although the inputs were exact
    assigned: list = None  # a program's assigned names, in order (their nodes' ids); [] for an expression


    @property
    def value(self):
        return self.output.value

    def grad(self, name: str):
        """dL/d(name) for an input variable."""
        if name not in self.inputs:
            raise SymbpError(f"'{name}' is not an input of the graph" + closest(name, self.inputs))
        return self.inputs[name].grad

    @property
    def exact(self) -> bool:
        return not any(v.has(sp.Float) for v in self.at.values())

    def check(self, *, digits: int = 30) -> dict:
        """``{name: (graph_grad, diff_grad, agree)}`` against ``sympy.diff`` of the whole expression.

        Rational values are compared exactly; others to ``digits`` significant digits (floats: 1e-9).
        """
        subs = {self.symbols[n]: v for n, v in self.at.items()}
        expr = self.expr
        if expr.atoms(sp.Max, sp.Min):  # the tie rule of the gates (SymPy's own gives 1/2 to every tied one)
            expr = expr.replace(sp.Max, _TieMax).replace(sp.Min, _TieMin)
        result = {}
        for name, node in self.inputs.items():
            truth = sp.diff(expr, self.symbols[name]).xreplace(subs)
            truth = truth.doit() if truth.has(sp.Derivative) else truth
            result[name] = (node.grad, truth, agree(node.grad, truth, digits=digits))
        return result

    def to_json(self) -> dict:
        """The JSON of ``symbp graph --json`` (see INTERFACE): values as floats, exact forms as text."""
        def num(v):
            return float(sp.N(v, 17))

        nodes = []
        for node in self.nodes:
            nodes.append({
                "id": node.id, "op": node.op, "gate": node.gate, "label": gate_label(node),
                "value": num(node.value), "grad": num(node.grad),
                "inputs": [n.id for n in node.inputs],
                "local": [num(d) for d in node.local],
                "upstream": num(node.grad),
                "sent": [num(d * node.grad) for d in node.local],
                "const": None if node.const is None else num(node.const),
                "expr": None if node.expr is None else sp.sstr(node.expr),
                "exact": {"value": sp.sstr(node.value), "grad": sp.sstr(node.grad)} if self.exact else None,
            })
        return {
            "expression": self.text if self.text is not None else sp.sstr(self.expr),
            "value": num(self.value),
            "exact": sp.sstr(self.value) if self.exact else None,
            "structure": self.structure, "granularity": self.granularity, "fallback": self.fallback,
            "inputs": {n: {"value": num(node.value), "grad": num(node.grad),
                           "exact": sp.sstr(node.grad) if self.exact else None}
                       for n, node in self.inputs.items()},
            "nodes": nodes,
        }

    def report(self) -> str:
        """Plain text: one line per node (value, gradient, gate), then the input gradients."""
        lines = [f"{self.text or sp.sstr(self.expr)} = {show(self.value)}"
                 f"   ({len(self.nodes)} nodes; structure {self.structure}, granularity {self.granularity})", ""]
        if self.fallback:
            lines[1:1] = [f"note: {self.fallback}: computed in floating point instead"]
        width = max(len(n.id) for n in self.nodes)
        for node in self.nodes:
            args = ", ".join(n.id for n in node.inputs)
            what = f"{gate_label(node)}({args})" if node.inputs else "input"
            gate = f"  [{node.gate}]" if node.inputs else ""
            lines.append(f"  {node.id:<{width}}  {what:<24} value {show(node.value):<22} grad {show(node.grad)}{gate}")
        lines += ["", "gradients of the inputs:"]
        for name, node in self.inputs.items():
            lines.append(f"  dL/d{name} = {show(node.grad)}")
        return "\n".join(lines)


def show(v) -> str:
    """A number for people: exact when rational, else a decimal to 6 digits with its exact form.

    >>> show(sp.Rational(-3, 2)), show(sp.exp(-1))
    ('-3/2', '0.367879 (exp(-1))')
    """
    if v.is_Rational:
        return sp.sstr(v)
    x = sp.N(v, 17)
    # exp(1000) and exp(-1000) are no doubles: their decimals from SymPy's own floats
    decimal = f"{float(x):.6g}" if x == 0 or 1e-300 < abs(x) < 1e300 else sp.sstr(sp.N(v, 6))
    return decimal if v.is_Float else f"{decimal} ({sp.sstr(v)})"


def agree(a, b, *, digits: int = 30) -> bool:
    """Whether two numbers agree: exactly if both are rational, else to ``digits`` digits (1e-9 for floats)."""
    a, b = sp.sympify(a), sp.sympify(b)
    if a.is_Rational and b.is_Rational:
        return a == b
    if a.has(sp.Float) or b.has(sp.Float):
        x, y = float(sp.N(a, 17)), float(sp.N(b, 17))
        return abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))
    d = sp.N(a - b, digits)
    return bool(abs(d) <= sp.Float(10) ** (-digits + 5) * max(1, abs(sp.N(b, digits))))


def gate_label(node: Node) -> str:
    """The gate as drawn in cs231n's circuits, in plain text: ``*``, ``+``, ``+1``, ``*-1``, ``1/x``, ``exp``.

    >>> x = Node(1, label="x")
    >>> gate_label(x + 1), gate_label(-x), gate_label(1 / x), gate_label(x * x), gate_label(x ** 2)
    ('+1', '*-1', '1/x', '*', 'x^2')
    """
    op, c = node.op, node.const
    if op == "add":
        return "+" if c is None else f"+{sp.sstr(c)}" if c > 0 else f"{sp.sstr(c)}" if len(node.inputs) == 1 \
            else f"+ ({sp.sstr(c)})"
    if op == "mul":
        return "*" if c is None else f"*{sp.sstr(c)}"
    labels = {"sub": "-", "div": "/", "neg": "*-1", "power": "x^y", "max": "max", "min": "min"}
    if op in labels:
        return labels[op] + ("" if c is None else f"({sp.sstr(c)})")
    if op == "scale":
        return f"*{sp.sstr(c)}"
    if op == "reciprocal":
        return "1/x" if c is None else f"{sp.sstr(c)}/x"
    if op == "pow":
        return f"x^{sp.sstr(c)}"
    if op == "cpow":
        return f"{sp.sstr(c)}^x" if c >= 0 else f"({sp.sstr(c)})^x"
    return op


# --------------------------------------------------------------------------- building


def graph(expr, *, at: Mapping, structure: str | None = None, granularity: str = "gates") -> Graph:
    """The computation graph of a scalar expression at the point ``at``, with every gradient set.

    ``expr`` is text in SymPy syntax (``+ - * / **``, exp, log, sqrt, abs, sigmoid, tanh, relu,
    softplus, sin, cos, max/Max, min/Min), parsed safely, or a SymPy expression. ``at`` maps each
    variable to a number (int, fraction, decimal text: exact; float: float). ``structure`` is
    ``"source"`` (text only, the default for text: gates as written) or ``"sympy"`` (SymPy's canonical
    tree, the default for SymPy input); ``granularity`` is ``"gates"`` or ``"primitives"``.

    The cs231n sigmoid neuron, as one sigmoid gate and as its primitives:

    >>> at = {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}
    >>> g = graph("sigmoid(w0*x0 + w1*x1 + w2)", at=at)
    >>> [round(float(g.grad(n)), 2) for n in ("w0", "x0", "w1", "x1", "w2")]
    [-0.2, 0.39, -0.39, -0.59, 0.2]
    >>> p = graph("1/(1+exp(-(w0*x0+w1*x1+w2)))", at=at)
    >>> [gate_label(n) for n in p.nodes if n.inputs]
    ['*', '*', '+', '+', '*-1', 'exp', '+1', '1/x']
    """
    if structure is not None and structure not in STRUCTURES:
        raise SymbpError(f"structure: expected one of {', '.join(STRUCTURES)}, got {structure!r}")
    if granularity not in GRANULARITIES:
        raise SymbpError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if not isinstance(at, Mapping):
        raise SymbpError(f"at: expected a mapping of names to numbers, got {type(at).__name__}")
    values = {}
    for name, value in at.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SymbpError(f"at: {name!r} is not a variable name")
        try:
            values[name] = number(value)
        except SymbpError as exc:
            raise SymbpError(f"at {name}: {exc}") from None
    program = _program(expr) if isinstance(expr, str) else None
    if program is not None:
        return _graph_program(expr, program, values, granularity, structure)
    if isinstance(expr, str):
        text = expr
        names = _names_in(text)
        missing = [n for n in names if n not in values]
        if missing:
            raise SymbpError(f"no value for {', '.join(repr(n) for n in missing)} (give "
                             f"{'it' if len(missing) == 1 else 'them'} a value: --at {missing[0]}=..., or at={{...}})")
        symbols = {n: sp.Symbol(n, real=True) for n in values}
        try:
            sym_expr = parse_scalar(text, symbols)
        except SymbpError:  # the parser's own one-line message (a SymbpError is a ValueError too)
            raise
        except (TypeError, ValueError) as exc:  # SymPy's Max of a complex constant: max(log(-1), a)
            raise SymbpError(_not_real(text) or f"expression {text!r}: {exc}") from None
        structure = structure or "source"
    elif isinstance(expr, sp.Basic):
        text, sym_expr = None, expr
        if structure == "source":
            raise SymbpError("structure 'source' needs the expression as text; a SymPy expression has no source order")
        structure = "sympy"
        symbols = {s.name: s for s in _symbols_of(sym_expr)}
        missing = [n for n in symbols if n not in values]
        if missing:
            raise SymbpError(f"no value for {', '.join(repr(n) for n in sorted(missing))}")
        names = list(symbols)
    else:
        raise SymbpError(f"expression: expected text or a SymPy expression, got {type(expr).__name__}")
    unused = [n for n in values if n not in names]
    if unused:
        raise SymbpError(f"at: {', '.join(repr(n) for n in unused)} not in the expression")
    if not names:
        raise SymbpError("the expression has no variables: nothing to differentiate")
    order = list(names)

    def build(values):
        leaves = {n: Node(values[n], label=n, expr=symbols[n]) for n in order}
        if structure == "source":
            return leaves, _SourceBuilder(text, leaves, granularity).build()
        return leaves, _build_sympy(sym_expr, {symbols[n]: leaf for n, leaf in leaves.items()}, granularity)

    fallback = None
    try:
        leaves, output = build(values)
    except _TooBig as exc:  # an exact value past the bounds: the whole graph in floating point instead
        if not exc.exact:
            raise SymbpError(str(exc)) from None
        fallback = str(exc)
        values = {n: v if v.has(sp.Float) else sp.N(v, 15) for n, v in values.items()}
        try:
            leaves, output = build(values)
        except _TooBig as again:
            raise SymbpError(f"{fallback}; in floating point, {again}") from None
    if not isinstance(output, Node) or not output.inputs:
        raise SymbpError(f"expression {text or sym_expr}: no operation to draw (it is a single variable or number)")
    return _finish(sym_expr, symbols, values, leaves, output, structure, granularity, text, fallback)


def _finish(sym_expr, symbols, values, leaves, output, structure, granularity, text, fallback, assigned=None):
    """Backpropagate from ``output`` and name the gates: ``n1, n2, ...`` in topological order, or the
    name a program assigned to them."""
    output.backward()
    nodes = topological(output)
    k = 0
    named = {id(node): name for name, node in (assigned or {}).items()}
    for node in nodes:
        if node.op != "input":
            k += 1
            node.id = named.get(id(node), f"n{k}")
    inputs = dict(leaves)  # a variable SymPy cancelled (x - x + y) has no node and gradient 0
    return Graph(expr=sym_expr, symbols=symbols, at=values, inputs=inputs, output=output, nodes=nodes,
                 structure=structure, granularity=granularity, text=text, fallback=fallback,
                 assigned=list(assigned or {}))


_ASSIGNMENT = re.compile(r"\s*([A-Za-z_][A-Za-z_0-9]*)\s*=(?!=)(.*)", re.DOTALL)


def _program(text: str):
    """``"e = a*b; d = e + c; L = f*d"`` as ``[("e", "a*b"), ("d", "e + c"), ("L", "f*d")]``; None for
    a single expression (no ``=``). Statements are separated by ``;`` or new lines."""
    statements = [part for part in re.split(r"[;\n]", text) if part.strip()]
    if not any(_ASSIGNMENT.fullmatch(part) for part in statements):
        return None
    program = []
    for part in statements:
        match = _ASSIGNMENT.fullmatch(part)
        if not match or not match.group(2).strip():
            raise SymbpError(f"program: {part.strip()!r} is not an assignment (write name = expression; ...)")
        program.append((match.group(1), match.group(2).strip()))
    return program


def _graph_program(text, program, values, granularity, structure):
    """The graph of a program of assignments, one gate node per assigned name (micrograd's labels);
    the last assignment is the output."""
    if structure not in (None, "source"):
        raise SymbpError("structure 'sympy': a program of assignments is drawn as written (structure 'source')")
    assigned, variables = [], []
    for name, rhs in program:
        if name in assigned:
            raise SymbpError(f"program: '{name}' is assigned twice")
        if name in values:
            raise SymbpError(f"program: '{name}' is assigned, so it takes no value in --at")
        for used in _names_in(rhs):
            if used not in assigned and used not in variables:
                if any(used == later for later, _ in program):
                    raise SymbpError(f"program: '{used}' is used before it is assigned ({name} = {rhs})")
                variables.append(used)
        assigned.append(name)
    missing = [n for n in variables if n not in values]
    if missing:
        raise SymbpError(f"no value for {', '.join(repr(n) for n in missing)} (give "
                         f"{'it' if len(missing) == 1 else 'them'} a value: --at {missing[0]}=..., or at={{...}})")
    unused = [n for n in values if n not in variables]
    if unused:
        raise SymbpError(f"at: {', '.join(repr(n) for n in unused)} not in the program")
    symbols = {n: sp.Symbol(n, real=True) for n in variables}
    exprs = dict(symbols)
    for name, rhs in program:
        exprs[name] = parse_scalar(rhs, exprs, what=f"{name} = {rhs}")
    leaves = {n: Node(values[n], label=n, expr=symbols[n]) for n in variables}
    env, nodes = dict(leaves), {}
    for name, rhs in program:
        node = _SourceBuilder(rhs, env, granularity).build()
        if not isinstance(node, Node) or not node.inputs or any(node is other for other in nodes.values()):
            raise SymbpError(f"program: {name} = {rhs} computes no new node (each assignment is one gate: "
                             "write the expression where it is used)")
        node.label = name
        env[name] = nodes[name] = node
    output = nodes[program[-1][0]]
    return _finish(exprs[program[-1][0]], symbols, {n: values[n] for n in variables}, leaves, output, "source",
                   granularity, text, None, nodes)


def _not_real(text: str) -> str | None:
    """The first constant part of ``text`` (a call or operation without variables) that is not a real
    number, as a message: ``log(-1) is I*pi, not a real number``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Call, ast.BinOp, ast.UnaryOp)) and not any(
                isinstance(n, ast.Name) and not (isinstance(p, ast.Call) and p.func is n)
                for p in ast.walk(node) for n in ast.iter_child_nodes(p)):
            segment = ast.get_source_segment(text.strip(), node)
            try:
                value = parse_scalar(segment, {})
            except (SymbpError, TypeError, ValueError):
                continue
            if value.is_extended_real is False:
                return f"{segment} is {sp.sstr(value)}, not a real number"
    return None


def _names_in(text: str) -> list[str]:
    """The variable names of ``text``, in order of first appearance (function names excluded)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # parse_scalar reports it
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    names = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and id(n) not in calls and n.id not in names:
            names.append(n.id)
    positions = {n.id: (n.lineno, n.col_offset) for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return sorted(names, key=lambda n: positions[n])


def _symbols_of(expr) -> list:
    """The free symbols of ``expr``, found iteratively (``free_symbols`` recurses), sorted by name."""
    found, seen, stack = set(), set(), [expr]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        if e.is_Symbol:
            found.add(e)
        stack.extend(e.args)
    return sorted(found, key=lambda s: s.name)


_PRIMITIVE = {
    "sigmoid": lambda u: 1 / (1 + (-u).exp()),
    "tanh": lambda u: _tanh_primitive(u),
    "softplus": lambda u: (1 + u.exp()).log(),
    "relu": lambda u: u.max(const=0),
}


def _tanh_primitive(u):
    e = (2 * u).exp()  # used twice: its gradient accumulates
    return (e - 1) / (e + 1)


class _SourceBuilder:
    """Runs the (already validated) expression with :class:`Node` objects, as micrograd would."""

    _BINARY = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.Div: "__truediv__",
               ast.Pow: "__pow__"}
    _REFLECTED = {ast.Add: "__radd__", ast.Sub: "__rsub__", ast.Mult: "__rmul__", ast.Div: "__rtruediv__",
                  ast.Pow: "__rpow__"}

    def __init__(self, text, leaves, granularity):
        self.text, self.leaves, self.granularity = text.strip(), leaves, granularity
        self.memo = {}

    def build(self):
        tree = ast.parse(self.text, mode="eval").body
        done = {}
        stack = [(tree, False)]
        while stack:  # post-order without recursion
            node, ready = stack.pop()
            if not ready:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(self._children(node)))
                continue
            done[node] = self._apply(node, [done[c] for c in self._children(node)])
        return done[tree]

    @staticmethod
    def _children(node):
        if isinstance(node, ast.BinOp):
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            return [node.operand]
        if isinstance(node, ast.Call):
            return list(node.args)
        return []

    def _apply(self, node, args):
        if isinstance(node, ast.Constant):
            segment = ast.get_source_segment(self.text, node) or repr(node.value)
            return sp.Rational(segment.replace("_", "")) if isinstance(node.value, float) else sp.Integer(node.value)
        if isinstance(node, ast.Name):
            return self.leaves[node.id]
        # identical subexpressions (the same operation of the same nodes and numbers) are one node
        what = type(node.op) if not isinstance(node, ast.Call) else _ROUTERS.get(node.func.id, node.func.id)
        key = (type(node), what, tuple(("node", id(a)) if isinstance(a, Node) else ("number", a) for a in args))
        if key not in self.memo:
            self.memo[key] = result = self._compute(node, args)
            if not isinstance(result, Node) and result.is_extended_real is False:
                raise SymbpError(f"{ast.get_source_segment(self.text, node)} is {sp.sstr(result)}, not a real number")
        return self.memo[key]

    def _compute(self, node, args):
        if isinstance(node, ast.UnaryOp):
            (x,) = args
            return -x if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BinOp):
            left, right = args
            op = type(node.op)
            if isinstance(left, Node):
                return getattr(left, self._BINARY[op])(right)
            if isinstance(right, Node):
                return getattr(right, self._REFLECTED[op])(left)
            return {ast.Add: lambda: left + right, ast.Sub: lambda: left - right, ast.Mult: lambda: left * right,
                    ast.Div: lambda: left / right, ast.Pow: lambda: left**right}[op]()
        name = node.func.id
        if name in _ROUTERS:  # max(max(a, b), c) is max(a, b, c), as SymPy's Max: the tie rule sees all three
            flat = []
            for tree, arg in zip(node.args, args):
                inner = isinstance(tree, ast.Call) and _ROUTERS.get(tree.func.id) == _ROUTERS[name]
                if inner and isinstance(arg, Node) and arg.op == _ROUTERS[name]:
                    flat += list(arg.inputs) + ([arg.const] if arg.const is not None else [])
                else:
                    flat.append(arg)
            args = flat
        return self._call(name, args)

    def _call(self, name, args):
        name = {"Abs": "abs", "Max": "max", "Min": "min"}.get(name, name)
        nodes = [a for a in args if isinstance(a, Node)]
        consts = [a for a in args if not isinstance(a, Node)]
        if not nodes:  # a function of numbers only: a constant
            return _CONST_FUNCTIONS[name](*args)
        if name in ("max", "min"):
            const = (sp.Max if name == "max" else sp.Min)(*consts) if consts else None
            return getattr(nodes[0], name)(*nodes[1:], const=const)
        (u,) = nodes
        if self.granularity == "primitives" and name in _PRIMITIVE:
            return _PRIMITIVE[name](u)
        return getattr(u, name)()


_CONST_FUNCTIONS = dict(FUNCTIONS, abs=sp.Abs, max=sp.Max, min=sp.Min)
_ROUTERS = {"max": "max", "Max": "max", "min": "min", "Min": "min"}


def _build_sympy(expr, leaves: dict, granularity: str) -> Node:
    """Nodes for SymPy's tree of ``expr``, post-order with an explicit stack; shared subtrees shared.

    Nothing here recurses (``is_number`` and ``free_symbols`` do), so a tree thousands of levels deep
    (built with ``evaluate=False``) is fine.
    """
    if granularity == "primitives":
        expr = _primitives(expr)
    variable = _variable_subtrees(expr)
    if expr not in variable:
        raise SymbpError(f"in SymPy's canonical form the expression is the constant {sp.sstr(expr)} "
                         "(its variables cancel): nothing to differentiate; structure 'source' keeps them")
    memo = dict(leaves)
    stack = [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if e in memo:
            continue
        parts = [a for a in _operands(e, variable) if a in variable]
        if not ready:
            stack.append((e, True))
            stack.extend((a, False) for a in reversed(parts) if a not in memo)
            continue
        node = _gate(e, memo, variable, granularity)
        node.expr = e
        memo[e] = node
    return memo[expr]


_SYMPY_PRIMITIVE = {
    # not F.explicit: rewrite(exp) would also rewrite sin(x) inside into complex exponentials
    F.sigmoid: lambda u: 1 / (1 + sp.exp(-u)),
    sp.tanh: lambda u: (sp.exp(2 * u) - 1) / (sp.exp(2 * u) + 1),
    F.softplus: lambda u: sp.log(1 + sp.exp(u)),
    # relu is not rewritten to Max(0, u): SymPy would flatten max(relu(a), b) into Max(0, a, b), and the
    # tie rule would then see the 0 of the relu; _gate draws it as a max(0, u) gate instead
}


def _primitives(expr):
    """sigmoid, tanh and softplus written in exp, + and 1/x (relu: see _gate); nothing else touched."""
    for cls, primitive in _SYMPY_PRIMITIVE.items():
        expr = expr.replace(lambda e, cls=cls: isinstance(e, cls), lambda e, p=primitive: p(e.args[0]))
    return expr


def _variable_subtrees(expr) -> set:
    """The subexpressions of ``expr`` that contain a symbol (the rest are constants, folded into gates)."""
    variable = set()
    for e in postorder(expr, lambda e: e.args):
        if e.is_Symbol or any(a in variable for a in e.args):
            variable.add(e)
    return variable


def _operands(e, variable):
    if isinstance(e, sp.Mul):
        sub = _as_division(e, variable)
        if sub is not None:
            return sub
    if isinstance(e, sp.Add):
        sub = _as_subtraction(e, variable)
        if sub is not None:
            return sub
    return e.args


def _as_division(e, variable):
    """``x * y**-1`` with exactly these two factors -> ``(x, y)``, drawn as one div gate."""
    if len(e.args) != 2:
        return None
    x, y = e.args
    inverse = lambda t: isinstance(t, sp.Pow) and t.exp == -1 and t.base in variable
    if inverse(x):
        x, y = y, x
    if inverse(y) and x in variable and not inverse(x):
        return (x, y.base)
    return None


def _as_subtraction(e, variable):
    """``a + (-1)*b`` with exactly these two terms -> ``(a, b)``, drawn as one sub gate."""
    if len(e.args) != 2:
        return None
    a, b = e.args
    neg = lambda t: isinstance(t, sp.Mul) and len(t.args) == 2 and t.args[0] == -1 and t.args[1] in variable
    if neg(a) and not neg(b):
        a, b = b, a
    if neg(b) and not neg(a) and a in variable:
        return (a, b.args[1])
    return None


def _gate(e, memo, variable, granularity="gates") -> Node:
    if isinstance(e, F.relu) and granularity == "primitives":
        return memo[e.args[0]].max(const=0)
    if isinstance(e, (sp.Add, sp.Mul)):
        special = _as_subtraction(e, variable) if isinstance(e, sp.Add) else _as_division(e, variable)
        if special is not None:
            x, y = (memo[s] for s in special)
            return x.sub(y) if isinstance(e, sp.Add) else x.div(y)
        const = [a for a in e.args if a not in variable]
        nodes = [memo[a] for a in e.args if a in variable]
        if isinstance(e, sp.Add):
            return nodes[0].add(*nodes[1:], const=sp.Add(*const))
        c = sp.Mul(*const)
        if len(nodes) == 1:
            return nodes[0].scale(c)
        return nodes[0].mul(*nodes[1:], const=c)
    if isinstance(e, sp.Pow):
        base, exponent = e.args
        if exponent not in variable:
            if exponent == sp.S.Half:
                return memo[base].sqrt()
            return memo[base].pow(exponent)
        if base not in variable:
            return memo[exponent].cpow(base)
        return memo[base].power(memo[exponent])
    if isinstance(e, (sp.Max, sp.Min)):
        const = [a for a in e.args if a not in variable]
        nodes = [memo[a] for a in e.args if a in variable]
        c = (sp.Max if isinstance(e, sp.Max) else sp.Min)(*const) if const else None
        return nodes[0].max(*nodes[1:], const=c) if isinstance(e, sp.Max) else nodes[0].min(*nodes[1:], const=c)
    unary = {sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", F.sigmoid: "sigmoid", F.relu: "relu",
             F.softplus: "softplus", sp.Abs: "abs", sp.sin: "sin", sp.cos: "cos"}
    for cls, method in unary.items():
        if isinstance(e, cls) and len(e.args) == 1:
            return getattr(memo[e.args[0]], method)()
    raise SymbpError(f"no gate for {type(e).__name__} in {e}")


# --------------------------------------------------------------------------- layout for pictures


def short(v) -> str:
    """A number as cs231n writes it on a wire: exact if a short rational, else two decimals.

    >>> short(sp.Integer(-4)), short(sp.Rational(1, 2)), short(sp.exp(-1)), short(sp.Rational(1, 30))
    ('-4', '1/2', '0.37', '0.03')
    """
    if v.is_Integer or (v.is_Rational and v.q <= 16 and abs(v.p) < 100):
        return sp.sstr(v)
    x = sp.N(v, 17)
    if x != 0 and not 1e-300 < abs(x) < 1e300:  # exp(1000), exp(-1000): no doubles
        return mpmath.nstr(_to_mpf(x), 2)
    x = float(x)
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.005 else f"{x:.1e}"


def layout(g: Graph, *, dx: float = 3.2, dy: float = 1.9) -> dict:
    """Coordinates for the circuit picture: columns by depth (inputs at 0), rows to keep wires short.

    Each node's column is one more than its deepest input. Columns are placed right to left: a node
    wants the height of the consumers it feeds (first input on top), nodes in a column keep ``dy``
    apart. Returns ``{"nodes": [...], "edges": [...], "out": {...}}`` with everything the template
    draws: each input wire runs from its source into a horizontal stub before its own port of the
    gate; the stub carries the value (above) and the gradient (below) on white labels, drawn after
    every wire so that none crosses them. Gates are named (``n1``, or a program's assigned name).
    """
    depth = {}
    for node in g.nodes:
        depth[node] = 1 + max((depth[i] for i in node.inputs), default=-1)
    consumers = {node: [] for node in g.nodes}
    for node in g.nodes:
        for k, i in enumerate(node.inputs):
            consumers[i].append((node, k))
    for node in g.nodes:  # an input sits just left of its first use, so its wire stays short
        if not node.inputs and consumers[node]:
            depth[node] = min(depth[c] for c, _ in consumers[node]) - 1
    columns = {}
    for node in g.nodes:
        columns.setdefault(depth[node], []).append(node)
    y = {}
    for d in sorted(columns, reverse=True):
        wanted = {}
        for node in columns[d]:
            spots = [y[c] + ((len(c.inputs) - 1) / 2 - k) * dy for c, k in consumers[node] if c in y]
            wanted[node] = sum(spots) / len(spots) if spots else 0.0
        ordered = sorted(columns[d], key=lambda n: -wanted[n])
        placed = []
        for node in ordered:
            placed.append(min(wanted[node], placed[-1] - dy) if placed else wanted[node])
        shift = sum(wanted[n] - p for n, p in zip(ordered, placed)) / len(ordered)
        for node, p in zip(ordered, placed):
            y[node] = p + shift
    key = {node: f"N{k}" for k, node in enumerate(g.nodes)}
    nodes = []
    for node in g.nodes:
        uses = len(consumers[node])
        nodes.append({"id": node.id, "key": key[node], "x": round(depth[node] * dx, 3), "y": round(y[node], 3),
                      "at": f"({depth[node] * dx:.3f},{y[node]:.3f})", "below": f"({key[node]}.south)",
                      "input": not node.inputs, "name": node.label if not node.inputs else None,
                      "gate_name": None if not node.inputs else node.id,
                      "named": bool(node.inputs) and node.id in (g.assigned or ()),
                      "op": node.op, "const": node.const, "symbol": node.expr if not node.inputs else None,
                      "total": short(node.grad) if uses > 1 else None})
    edges = []
    for node in g.nodes:
        n = len(node.inputs)
        for k, i in enumerate(node.inputs):
            # each input enters on its own port, after a horizontal stub that carries its two labels
            offset = ((n - 1) / 2 - k) * PORT_GAP
            lane_y = y[node] + ((n - 1) / 2 - k) * LANE  # stubs far enough apart for two labels each
            port_y = y[node] + offset
            gate_x = depth[node] * dx - math.sqrt(max(GATE_RADIUS ** 2 - offset ** 2, 0.0))
            stub_x, stub_end = depth[node] * dx - STUB, depth[node] * dx - GATE_RADIUS - 0.3
            via = _detour(i, node, lane_y, depth, y, dx, consumers)
            edges.append({"source": i.id, "target": node.id, "src": f"({key[i]}.east)", "dst": f"({key[node]})",
                          "via": [f"({vx:.3f},{vy:.3f})" for vx, vy in via],
                          "stub": f"({stub_x:.3f},{lane_y:.3f})", "stub_end": f"({stub_end:.3f},{lane_y:.3f})",
                          "port": f"({gate_x:.3f},{port_y:.3f})",
                          "label_at": f"({(stub_x + stub_end) / 2:.3f},{lane_y:.3f})",
                          "straight": abs(lane_y - y[i]) < 1e-9,
                          "value": short(i.value),
                          "grad": short(node.local[k] * node.grad)})
    out = g.output
    width = (max(depth.values()) + 1) * dx + 1.0
    out_x = depth[out] * dx + dx * 0.8
    return {"nodes": nodes, "edges": edges, "width": width,
            "out": {"source": out.id, "src": f"({key[out]})", "at": f"({out_x:.3f},{y[out]:.3f})",
                    "label_at": f"({(depth[out] * dx + GATE_RADIUS + out_x) / 2:.3f},{y[out]:.3f})",
                    "value": short(out.value), "grad": short(out.grad)}}


def _detour(source, node, lane_y, depth, y, dx, consumers):
    """``[]``, or the two corners of a horizontal run above (or below) everything in the columns a long
    wire passes (a fan-out's wire to a later column): it then crosses no gate, name or label there."""
    first, last = depth[source] + 1, depth[node] - 1
    if last < first:
        return []
    spans = []  # (low, high) of each obstacle in the columns passed
    for other in y:
        if first <= depth[other] <= last:
            spans.append((y[other] - GATE_RADIUS - 0.45, y[other] + GATE_RADIUS + 0.45))  # gate, its name, a total
            n = len(other.inputs)
            for k in range(n):
                lane = y[other] + ((n - 1) / 2 - k) * LANE
                spans.append((lane - 0.45, lane + 0.45))  # the stub's two labels
    if not spans:
        return []
    low, high = min(a for a, _ in spans), max(b for _, b in spans)
    ends = (y[source], lane_y)
    if all(v >= high for v in ends) or all(v <= low for v in ends):
        return []
    bus = min((high + 0.25, low - 0.25), key=lambda b: sum(abs(b - v) for v in ends))
    start, end = depth[source] * dx + 0.6 * dx, depth[node] * dx - STUB - 0.6 * dx
    if end <= start:
        return []
    return [(start, bus), (end, bus)]


GATE_RADIUS = 0.45  # cm: the gate circles are 9 mm across
PORT_GAP = 0.34  # cm between the ports of a gate with several inputs
LANE = 0.95  # cm between the stubs of a gate with several inputs (room for a label above and below each)
STUB = 1.75  # cm: where the horizontal stub before a gate input begins (its value and gradient are on it)


_LEVEL = {"add": 1, "sub": 1, "neg": 1, "mul": 2, "scale": 2, "div": 2, "reciprocal": 2, "pow": 3, "cpow": 3,
          "power": 3}
_CALLS = {"exp": r"\exp", "log": r"\log", "sigmoid": r"\sigma", "tanh": r"\tanh", "relu": r"\operatorname{ReLU}",
          "softplus": r"\operatorname{softplus}", "sin": r"\sin", "cos": r"\cos", "max": r"\max", "min": r"\min"}


def written(g: Graph) -> list:
    r"""The expression as written, gate by gate, in LaTeX: ``[(name, tex)]``, one line per assigned name
    of a program (its named nodes print as their names), else ``[("L", tex)]``. A node used twice is
    written twice (``a + a``, not SymPy's ``2 a``); in SymPy structure, SymPy's own form.

    >>> written(graph("a + a", at={"a": 2})), written(graph("e = a*b; L = e + a", at={"a": 1, "b": 2}))
    ([('L', 'a + a')], [('e', 'a b'), ('L', 'e + a')])
    """
    from .latex import latex

    if g.structure != "source":
        return [("L", latex(g.expr))]
    named = set(g.assigned or ())
    tex, level = {}, {}
    for node in g.nodes:  # topological: inputs first, so no recursion
        if not node.inputs:
            tex[node], level[node] = latex(node.expr), 9
            continue
        def arg(k, need, node=node):
            child = node.inputs[k]
            if child.id in named:
                return latex(sp.Symbol(child.id))
            return tex[child] if level[child] >= need else rf"\left({tex[child]}\right)"
        c = None if node.const is None else latex(node.const)
        op, n = node.op, len(node.inputs)
        if op == "add":
            body = " + ".join(arg(k, 1) for k in range(n))
            body = body if c is None else (f"{body} + {c}" if node.const > 0 else f"{body} - {latex(-node.const)}")
        elif op == "sub":
            body = f"{arg(0, 1)} - {arg(1, 2)}"
        elif op == "mul":
            factors = [arg(k, 2) for k in range(n)]
            body = (" " if c is None else r" \cdot ").join(([c] if c is not None else []) + factors)
        elif op == "scale":
            body = rf"{c} \cdot {arg(0, 2)}"
        elif op == "neg":
            body = f"-{arg(0, 2)}"
        elif op == "div":
            body = rf"\frac{{{arg(0, 0)}}}{{{arg(1, 0)}}}"
        elif op == "reciprocal":
            body = rf"\frac{{{c or 1}}}{{{arg(0, 0)}}}"
        elif op == "pow":
            body = f"{arg(0, 4)}^{{{c}}}"
        elif op == "cpow":
            body = f"{c}^{{{arg(0, 0)}}}"
        elif op == "power":
            body = f"{arg(0, 4)}^{{{arg(1, 0)}}}"
        elif op == "sqrt":
            body = rf"\sqrt{{{arg(0, 0)}}}"
        elif op == "abs":
            body = rf"\left|{arg(0, 0)}\right|"
        else:
            args = [arg(k, 0) for k in range(n)] + ([c] if c is not None else [])
            body = rf"{_CALLS.get(op, op)}\left({', '.join(args)}\right)"
        tex[node], level[node] = body, _LEVEL.get(op, 9)
    if named:
        nodes = {node.id: node for node in g.nodes}
        return [(name, tex[nodes[name]]) for name in g.assigned if name in nodes]
    return [("L", tex[g.output])]


DRAW_LIMIT = 60
EXACT_LIMIT = 24  # operations; longer exact forms are left to --json


def document(g: Graph, *, title: str | None = None, user_dir=None, checks: dict | None = None,
             blank: bool = False) -> str:
    """The LaTeX document of a graph: the circuit (up to :data:`DRAW_LIMIT` nodes), every node, the checks
    (``checks``: the result of ``g.check()`` when the caller has it already). ``blank``: a problem
    sheet: the circuit with the inputs' values and the output's gradient 1 only, every other value
    and gradient a box to fill in, and neither the node table nor the checks (the solution is the
    document without ``blank``)."""
    from .latex import latex, render

    def tex(v):  # exact form (if short enough to typeset), and a decimal when it is not a plain number
        plain = v.is_Rational or v.is_Float
        exact = latex(v) if plain or sp.count_ops(v) <= EXACT_LIMIT else None
        return {"tex": exact, "dec": None if plain else _decimal(v)}

    nodes = []
    for node in g.nodes:
        nodes.append({"id": node.id, "input": not node.inputs, "symbol": node.expr if not node.inputs else None, "op": node.op, "const": node.const,
                      "gate": node.gate if node.inputs else "input", "inputs": [i.id for i in node.inputs],
                      "value": tex(node.value), "grad": tex(node.grad), "local": [tex(d) for d in node.local]})
        row = nodes[-1]
        row["exact_row"] = row["value"]["dec"] is not None or row["grad"]["dec"] is not None
        row["long"] = row["value"]["tex"] is None or row["grad"]["tex"] is None
    checks = [{"symbol": g.symbols[name], "grad": tex(grad), "truth": tex(truth), "agree": ok}
              for name, (grad, truth, ok) in (checks if checks is not None else g.check()).items()]
    picture = None
    if len(g.nodes) <= DRAW_LIMIT:
        picture = layout(g)
        if picture["width"] > 24:  # a long chain: tighter columns, and the page turned (see the template)
            picture = layout(g, dx=2.4)
        if blank:
            given = {n.id for n in g.nodes if not n.inputs}
            for e in picture["edges"]:
                e["value"] = e["value"] if e["source"] in given else None
                e["grad"] = None
            picture["out"]["value"] = None
            for n in picture["nodes"]:
                n["total"] = None
    return render("graph.tex.j2", user_dir=user_dir, author="symbp graph", title=title or "Computation graph",
                  expression=g.expr, text=g.text, lines=written(g), sympy_form=latex(g.expr), point=[(g.symbols[n], v) for n, v in g.at.items()],
                  value=g.value, exact_value=g.value.is_Rational or g.value.is_Float,
                  decimal=_decimal(g.value), exact=g.exact, fallback=g.fallback, structure=g.structure,
                  granularity=g.granularity, picture=picture, fit=bool(picture and picture["width"] > 16),
                  rotate=bool(picture and picture["width"] > 24),
                  nodes=nodes, checks=checks, draw_limit=DRAW_LIMIT, blank=blank and picture is not None)


def _decimal(v) -> str:
    """Four decimal places, or four significant digits past the doubles (``1.970e+434``)."""
    x = sp.N(v, 17)
    return f"{float(x):.4f}" if x == 0 or 1e-300 < abs(x) < 1e300 else mpmath.nstr(_to_mpf(x), 4)


def parse_point(text: str) -> dict:
    """``"a=2,b=-3,c=1/2"`` -> ``{"a": "2", "b": "-3", "c": "1/2"}`` (values parsed exactly later).

    ASCII only, like every text symbp reads: a lookalike such as a fullwidth ``ａ`` is refused, named.

    >>> parse_point("a=2, b=-3")
    {'a': '2', 'b': '-3'}
    """
    require_ascii(text, "point")
    point = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise SymbpError(f"point {text!r}: {part!r} is not name=value (write e.g. a=2,b=-3)")
        if not name.isidentifier():
            raise SymbpError(f"point {text!r}: {name!r} is not a variable name")
        if name in point:
            raise SymbpError(f"point {text!r}: '{name}' is given twice")
        point[name] = value
    return point
