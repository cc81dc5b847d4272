"""SymPy functions for the activations SymPy does not have in the form we need.

How it works: each is a ``sympy.Function`` subclass with ``fdiff`` (its derivative, which ``sympy.diff``
uses through the chain rule), ``eval`` for exact numbers, and a rewrite to elementary functions. The
tests check every ``fdiff`` against ``sympy.diff`` of that rewrite, so the rules written here are
checked by SymPy itself rather than trusted.

Why not ``Max(0, z)`` for ReLU: ``sympy.diff(Max(0, z), z)`` is ``Heaviside(z)``, which is 1/2 at 0.
symbp follows PyTorch and micrograd, ``relu'(0) = 0``, written ``Heaviside(z, 0)``: the second argument
is the value at 0. Keeping ReLU as one opaque function also keeps expressions small and lambdify fast
(``Piecewise`` makes ``diff`` 3-10x slower and ``lambdify`` fragile).
"""

from __future__ import annotations

import sympy as sp

# The leaky ReLU slope, as PyTorch's default negative_slope.
LEAKY_SLOPE = sp.Rational(1, 100)


def step(z):
    """The ReLU derivative: ``Heaviside(z, 0)``, so ``step(0) = 0``.

    >>> step(sp.Integer(0)), step(sp.Integer(-1)), step(sp.Integer(1))
    (0, 0, 1)
    """
    return sp.Heaviside(z, 0)


class relu(sp.Function):
    """``relu(z) = max(0, z)``, with ``relu'(z) = Heaviside(z, 0)``.

    >>> z = sp.Symbol("z", real=True)
    >>> relu(sp.Integer(-2)), relu(sp.Rational(3, 2)), sp.diff(relu(z), z)
    (0, 3/2, Heaviside(z, 0))
    """

    is_real = True

    @classmethod
    def eval(cls, z):
        if z.is_number and z.is_extended_real:
            return sp.Max(0, z)
        return None

    def fdiff(self, argindex=1):
        return step(self.args[0])

    def _eval_rewrite_as_Max(self, z, **kwargs):
        return sp.Max(0, z)


class leaky_relu(sp.Function):
    """``leaky_relu(z) = z`` for ``z > 0``, else ``z / 100`` (PyTorch's slope); derivative 1/100 at 0.

    >>> z = sp.Symbol("z", real=True)
    >>> leaky_relu(sp.Integer(-3)), sp.diff(leaky_relu(z), z)
    (-3/100, 99*Heaviside(z, 0)/100 + 1/100)
    """

    is_real = True

    @classmethod
    def eval(cls, z):
        if z.is_number and z.is_extended_real:
            return z if z > 0 else LEAKY_SLOPE * z
        return None

    def fdiff(self, argindex=1):
        return LEAKY_SLOPE + (1 - LEAKY_SLOPE) * step(self.args[0])

    def _eval_rewrite_as_Max(self, z, **kwargs):
        return sp.Max(z, LEAKY_SLOPE * z)


class sigmoid(sp.Function):
    """The logistic function ``1 / (1 + exp(-z))``, with ``sigmoid' = sigmoid (1 - sigmoid)``.

    >>> z = sp.Symbol("z", real=True)
    >>> sigmoid(sp.Integer(0)), sp.diff(sigmoid(z), z)
    (1/2, (1 - sigmoid(z))*sigmoid(z))
    """

    is_real = True

    @classmethod
    def eval(cls, z):
        if z.is_zero:
            return sp.S.Half
        return None

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, z, **kwargs):
        return 1 / (1 + sp.exp(-z))

    def _eval_evalf(self, prec):
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)


class softplus(sp.Function):
    """``softplus(z) = log(1 + exp(z))``, with ``softplus' = sigmoid``.

    >>> z = sp.Symbol("z", real=True)
    >>> sp.diff(softplus(z), z)
    sigmoid(z)
    """

    is_real = True

    @classmethod
    def eval(cls, z):
        if z.is_zero:
            return sp.log(2)
        return None

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, z, **kwargs):
        return sp.log(1 + sp.exp(z))

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)


def gelu(z):
    """The exact GELU, ``z/2 (1 + erf(z / sqrt(2)))`` (PyTorch's default ``approximate='none'``).

    >>> z = sp.Symbol("z", real=True)
    >>> gelu(z)
    z*(erf(sqrt(2)*z/2) + 1)/2
    """
    return z * (1 + sp.erf(z / sp.sqrt(2))) / 2


def silu(z):
    """SiLU (swish), ``z sigmoid(z)``.

    >>> silu(sp.Symbol("z"))
    z*sigmoid(z)
    """
    return z * sigmoid(z)


def elu(z):
    """ELU with alpha 1 (PyTorch's default): ``z`` for ``z > 0``, else ``exp(z) - 1``, written
    ``relu(z) + exp(z - relu(z)) - 1``. Why this form: ``sympy.diff`` of it is
    ``step(z) + (1 - step(z)) exp(z - relu(z))``, which is 1 at 0, the true derivative (ELU with alpha 1
    is smooth there); a ``Piecewise`` would do the same, at the cost described in the module docstring.

    >>> z = sp.Symbol("z", real=True)
    >>> [sp.diff(elu(z), z).subs(z, v) for v in (-1, 0, 1)]
    [exp(-1), 1, 1]
    """
    return relu(z) + sp.exp(z - relu(z)) - 1


def explicit(expr):
    """Rewrite symbp's functions into SymPy's elementary ones (``Max``, ``exp``, ``log``).

    >>> z = sp.Symbol("z", real=True)
    >>> explicit(sigmoid(z) + relu(z))
    Max(0, z) + 1/(1 + exp(-z))
    """
    return expr.replace(
        lambda e: isinstance(e, (relu, leaky_relu)), lambda e: e.rewrite(sp.Max)
    ).replace(lambda e: isinstance(e, (sigmoid, softplus)), lambda e: e.rewrite(sp.exp))
