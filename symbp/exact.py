"""Deciding that an expression is zero, exactly, without ``simplify``.

How it works: every application of a non-rational function (``exp``, ``log``, ``tanh``, ``relu``,
``Heaviside``, ...) is *frozen*: replaced, outermost first, by a fresh symbol, the same symbol for the
same application. What is left is a rational function of symbols, and ``cancel(together(...))`` decides
whether that is zero. If it is zero with the frozen applications treated as unrelated indeterminates,
it is zero whatever they stand for: a proof, sound by construction. ``exp(k*u)`` becomes ``E_u**k`` for
integer ``k`` so that ``exp(u) * exp(-u)`` cancels. It can fail to see a zero that needs an identity
between functions (``exp(a + b) = exp(a) exp(b)``, ``cosh(u)**2 - sinh(u)**2 = 1``); callers then fall
back to exact points. ``erf`` and ``cosh`` are applications like any other, and ``sqrt(u)`` a power with a
non-integer exponent, so they are frozen; ``pi`` is left as it is, a generator of its own for
``cancel`` (sound: pi is transcendental, so a rational identity in it holds for an indeterminate).

This is what ``simplify`` would be asked to do, at a fraction of the time (seconds instead of minutes
for a 3-layer softmax network, see MEASUREMENTS).
"""

from __future__ import annotations

import random

import sympy as sp
from sympy.core.function import Application


class _Freezer:
    def __init__(self):
        self.table = {}

    def atom(self, key):
        if key not in self.table:
            self.table[key] = sp.Dummy(f"F{len(self.table)}")
        return self.table[key]

    def __call__(self, e):
        if e.is_Atom:
            return e
        if isinstance(e, sp.exp):
            coeff, rest = e.args[0].as_coeff_Mul()
            if coeff.is_Integer and rest != 1:
                return self.atom(sp.exp(rest)) ** int(coeff)
            return self.atom(e)
        if isinstance(e, Application) or (e.is_Pow and not e.exp.is_Integer):
            return self.atom(e)
        return e.func(*[self(a) for a in e.args])


def frozen_zero(expr) -> bool:
    """True when ``expr`` is zero as a rational function of its frozen function applications.

    >>> x, y = sp.symbols("x y", real=True)
    >>> frozen_zero(sp.exp(x) / (sp.exp(x) + sp.exp(y)) - 1 / (1 + sp.exp(y) * sp.exp(-x)))
    True
    >>> frozen_zero(sp.tanh(x) - x)
    False
    >>> frozen_zero(sp.erf(x) * sp.pi / sp.sqrt(x) - sp.pi * sp.erf(x) * x ** sp.Rational(-1, 2)), frozen_zero(sp.pi - 3)
    (True, False)
    """
    frozen = _Freezer()(sp.sympify(expr))
    return sp.cancel(sp.together(frozen)) == 0


def random_rational(rng: random.Random, *, low=-3, high=3, denominator=7) -> sp.Rational:
    """A random nonzero rational in ``[low, high]`` with the given denominator."""
    while True:
        value = sp.Rational(rng.randint(low * denominator, high * denominator), denominator)
        if value != 0:
            return value


def numeric_value(expr, digits: int = 50) -> complex:
    """``expr`` (no free symbols) evaluated with ``digits`` significant digits."""
    return complex(sp.N(expr, digits))
