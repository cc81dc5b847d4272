"""Activations, outputs and losses: one small frozen row each, in one table per kind.

How it works: a row carries everything the rest of symbp needs to know about one rule: its SymPy form
(used to build the network symbolically), its NumPy form and derivative (used by the independent
reference backprop, which never looks at SymPy), its LaTeX name, and its conventions. The tests
parametrize over these tables, so a new row is tested by adding it. A user-defined activation, built
from an expression in ``x`` by :func:`custom_activation`, is a row like any other.

Conventions written here and nowhere else:

* ``relu'(0) = 0`` and ``leaky_relu'(0) = 0.01`` (PyTorch), through ``Heaviside(z, 0)``.
* ``softplus(z) = log(1 + exp(z))``; ``leaky_relu`` has PyTorch's slope 0.01.
* Per-example losses follow PyTorch: ``cross_entropy = -sum_k y_k log a_k`` (summed over classes);
  ``binary_cross_entropy`` and ``mse`` are averaged over the output units.
* Where an output feeds a log (softmax or sigmoid into a cross-entropy), the loss is written in the
  logits (log-sum-exp, softplus): the same function, numerically stable, with simpler derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import math

import numpy as np
import sympy as sp

from . import functions as F
from .errors import SymbpError, closest
from .expression import parse_scalar


# --------------------------------------------------------------------------- NumPy forms

def np_sigmoid(z):
    """A sigmoid that never overflows: ``exp`` only ever sees ``-|z|``."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def np_softplus(z):
    return np.logaddexp(0.0, z)


def np_step(z):
    return np.heaviside(z, 0.0)


def np_relu(z):
    return np.maximum(z, 0.0)


def np_leaky_relu(z):
    return np.where(z > 0, z, 0.01 * z)


_np_erf = np.vectorize(math.erf, otypes=[float])


def np_erf(z):
    """The error function entry by entry (NumPy has none; ``math.erf`` is exact to the last bit)."""
    return _np_erf(z) + np.zeros_like(z, dtype=float)


def np_gelu(z):
    return 0.5 * z * (1.0 + np_erf(z / math.sqrt(2.0)))


def np_gelu_derivative(z):
    return 0.5 * (1.0 + np_erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def np_elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))


def np_softmax(z):
    """Softmax of each row (rows are examples), shifted by the row maximum so it cannot overflow."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_logsumexp(z):
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


#: What ``lambdify`` maps symbp's SymPy functions to (added before "numpy" in ``modules``).
NUMPY_FUNCTIONS = {
    "relu": np_relu,
    "leaky_relu": np_leaky_relu,
    "sigmoid": np_sigmoid,
    "softplus": np_softplus,
    "Heaviside": lambda z, h0=0.0: np.heaviside(z, h0),
    "erf": np_erf,
}


# --------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class Activation:
    """An element-wise hidden activation ``a = f(z)``."""

    name: str
    latex: str  # LaTeX for the function's name, e.g. r"\operatorname{ReLU}"
    sympy: Callable[[sp.Expr], sp.Expr]
    numpy: Callable[[np.ndarray], np.ndarray]
    numpy_derivative: Callable[[np.ndarray], np.ndarray]
    kinks: tuple = ()  # points where f' jumps; numeric checks keep away from them
    note: str = ""  # the derivative convention, stated in documents
    expression: str = ""  # the user's text, for a custom activation
    # f'(z) as the textbook writes it in the claim language: (with a = f(z), in z alone); empty for a
    # custom activation, whose f' is sympy.diff of its expression (symbp.ops.activation_derivative_text)
    textbook: tuple = ()


@dataclass(frozen=True)
class Output:
    """The output layer's activation, applied to one example's logits at once."""

    name: str
    latex: str
    sympy: Callable[[list], list]  # one example: logits z_1..z_n -> outputs a_1..a_n
    numpy: Callable[[np.ndarray], np.ndarray]  # rows are examples
    numpy_vjp: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (a, dL/da) -> dL/dz
    in_unit_interval: bool  # every output lies in (0, 1): a log of it is defined
    # NumPy source of symbp.compile's MLP writer: the output of logits {z}, {axis} that of the units
    code: str = "{z}"


@dataclass(frozen=True)
class Loss:
    """A per-example loss of the outputs ``a`` and the target ``y`` of one example."""

    name: str
    latex: str  # the per-example formula in a, y, n (number of output units)
    sympy: Callable[[list, list], sp.Expr]
    numpy: Callable[[np.ndarray, np.ndarray], np.ndarray]  # rows -> one loss per row
    numpy_grad: Callable[[np.ndarray, np.ndarray], np.ndarray]  # d loss / d a, per row
    needs_unit_interval: bool  # takes logs of the outputs
    backward: str = ""  # d loss / d a per example, in the claim language (a, y; n the output width)
    # NumPy source of the per-example loss for symbp.compile's MLP writer, in the outputs {a} and y
    # ({axis} that of the units); "" when it has none
    code: str = ""
    units_mean: bool = False  # averaged over the output units: the 1/n of its gradient
    # what a target looks like: "one-hot" (a worked example's target; random targets of the numeric
    # checks are rows summing to 1), "binary" (0/1 entries; random targets in (0.05, 0.95)) or "any"
    # (random targets N(0, 1))
    target: str = "any"


@dataclass(frozen=True)
class Fused:
    """An output/loss pair written directly in the logits ``z`` (same function, stable form)."""

    output: str
    loss: str
    latex: str
    sympy: Callable[[list, list], sp.Expr]
    numpy: Callable[[np.ndarray, np.ndarray], np.ndarray]
    numpy_dz: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (z, a, y) -> d loss / d z
    side_condition: str | None = None  # under which the textbook simplification holds
    simplified: str | None = None  # that simplification, in the formula language, per example
    # NumPy source of the per-example loss in the logits {z} and y (stable form) for symbp.compile's
    # MLP writer; {axis} is that of the units
    code: str = ""
    partial: str = ""  # the document partial templates/ops/<partial>.tex.j2 explaining the simplification


def _activation(name, latex, sym, fn, dfn, kinks=(), note="", textbook=None):
    in_a, in_z = textbook if isinstance(textbook, tuple) else (textbook, textbook)
    return Activation(name, latex, sym, fn, dfn, tuple(kinks), note, textbook=(in_a, in_z) if in_a else ())


ACTIVATIONS: Mapping[str, Activation] = {
    row.name: row
    for row in [
        _activation("relu", r"\operatorname{ReLU}", F.relu, np_relu, np_step, [0.0],
                    r"\operatorname{ReLU}'(0) = 0 (as PyTorch and micrograd)", textbook="step(z)"),
        _activation("leaky_relu", r"\operatorname{LeakyReLU}", F.leaky_relu, np_leaky_relu,
                    lambda z: np.where(z > 0, 1.0, 0.01), [0.0],
                    r"slope 0.01 for z \le 0; derivative 0.01 at 0 (as PyTorch)",
                    textbook="(0.01 + 0.99 * step(z))"),
        _activation("sigmoid", r"\sigma", F.sigmoid, np_sigmoid,
                    lambda z: np_sigmoid(z) * (1 - np_sigmoid(z)),
                    textbook=("a * (1 - a)", "sigmoid(z) * (1 - sigmoid(z))")),
        _activation("tanh", r"\tanh", sp.tanh, np.tanh, lambda z: 1 - np.tanh(z) ** 2,
                    textbook=("(1 - a ** 2)", "(1 - tanh(z) ** 2)")),
        _activation("softplus", r"\operatorname{softplus}", F.softplus, np_softplus, np_sigmoid,
                    note=r"\operatorname{softplus}(z) = \log(1 + e^{z})", textbook="sigmoid(z)"),
        _activation("identity", r"\operatorname{id}", lambda z: z, lambda z: z + 0.0,
                    lambda z: np.ones_like(z), textbook="1"),
        _activation("gelu", r"\operatorname{GELU}", F.gelu, np_gelu, np_gelu_derivative,
                    note=r"\operatorname{GELU}(z) = \tfrac{z}{2} \bigl(1 + \operatorname{erf}(z / \sqrt{2})\bigr) "
                         r"(the exact form, as PyTorch's default)",
                    textbook="((1 + erf(z / sqrt(2))) / 2 + z * exp(-(z ** 2) / 2) / sqrt(2 * pi))"),
        _activation("silu", r"\operatorname{SiLU}", F.silu, lambda z: z * np_sigmoid(z),
                    lambda z: np_sigmoid(z) * (1 + z * (1 - np_sigmoid(z))),
                    note=r"\operatorname{SiLU}(z) = z \, \sigma(z)",
                    textbook="(sigmoid(z) * (1 + z * (1 - sigmoid(z))))"),
        _activation("elu", r"\operatorname{ELU}", F.elu, np_elu,
                    lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0))),
                    note=r"\operatorname{ELU}(z) = z for z > 0, else e^{z} - 1 (alpha 1, as PyTorch); "
                         r"written \operatorname{ReLU}(z) + e^{z - \operatorname{ReLU}(z)} - 1, so its derivative at 0 is 1",
                    textbook=("(step(z) + (1 - step(z)) * (a + 1))", "(step(z) + (1 - step(z)) * exp(z - relu(z)))")),
    ]
}


def _softmax_sym(z):
    exps = [sp.exp(v) for v in z]
    total = sp.Add(*exps)
    return [e / total for e in exps]


OUTPUTS: Mapping[str, Output] = {
    row.name: row
    for row in [
        Output("softmax", r"\operatorname{softmax}", _softmax_sym, np_softmax,
               lambda a, g: a * (g - (a * g).sum(axis=1, keepdims=True)), True, "softmax({z}, axis={axis})"),
        Output("sigmoid", r"\sigma", lambda z: [F.sigmoid(v) for v in z], np_sigmoid,
               lambda a, g: g * a * (1 - a), True, "sigmoid({z})"),
        Output("identity", r"\operatorname{id}", lambda z: list(z), lambda z: z + 0.0,
               lambda a, g: g, False),
    ]
}


def _target_ratio(n, d):
    """``n / d``, but 0 where ``n`` (a function of the target) is 0: ``d/da (0 * log a) = 0`` even
    where ``a`` underflowed to 0 (see :class:`symbp.numeric.target_ratio`)."""
    zero = n == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero, 0.0, n / np.where(zero, 1.0, d))


def _mean(terms):
    return sp.Add(*terms) / len(terms)


LOSSES: Mapping[str, Loss] = {
    row.name: row
    for row in [
        Loss("cross_entropy", r"-\sum_{k} y_{k} \log a_{k}",
             lambda a, y: -sp.Add(*[yk * sp.log(ak) for ak, yk in zip(a, y)]),
             lambda a, y: -(y * np.log(a)).sum(axis=1),
             lambda a, y: -_target_ratio(y, a), True, "-y / a",
             "-np.sum(y * np.log({a}), axis={axis})", target="one-hot"),
        Loss("binary_cross_entropy",
             r"-\frac{1}{n} \sum_{k} \left( y_{k} \log a_{k} + (1 - y_{k}) \log (1 - a_{k}) \right)",
             lambda a, y: -_mean([yk * sp.log(ak) + (1 - yk) * sp.log(1 - ak) for ak, yk in zip(a, y)]),
             lambda a, y: -(y * np.log(a) + (1 - y) * np.log(1 - a)).mean(axis=1),
             lambda a, y: (-_target_ratio(y, a) + _target_ratio(1 - y, 1 - a)) / a.shape[1], True,
             "(-(y / a) + (1 - y) / (1 - a)) / n",
             "-np.mean(y * np.log({a}) + (1 - y) * np.log(1 - {a}), axis={axis})", units_mean=True, target="binary"),
        Loss("mse", r"\frac{1}{n} \sum_{k} (a_{k} - y_{k})^{2}",
             lambda a, y: _mean([(ak - yk) ** 2 for ak, yk in zip(a, y)]),
             lambda a, y: ((a - y) ** 2).mean(axis=1),
             lambda a, y: 2 * (a - y) / a.shape[1], False, "2 * (a - y) / n",
             "np.mean(({a} - y) ** 2, axis={axis})", units_mean=True),
    ]
}


def _ce_softmax_logits(z, y):
    lse = sp.log(sp.Add(*[sp.exp(v) for v in z]))
    return -sp.Add(*[yk * (zk - lse) for zk, yk in zip(z, y)])


FUSED: Mapping[tuple, Fused] = {
    (row.output, row.loss): row
    for row in [
        Fused("softmax", "cross_entropy",
              r"-\sum_{k} y_{k} \Bigl( z_{k} - \log \sum_{j} e^{z_{j}} \Bigr)",
              _ce_softmax_logits,
              lambda z, y: y.sum(axis=1) * np_logsumexp(z) - (y * z).sum(axis=1),
              lambda z, a, y: a * y.sum(axis=1, keepdims=True) - y,
              side_condition="every target row sums to 1",
              simplified="a - y", partial="softmax_cross_entropy",  # -sum y log softmax(z) = sum y (logsumexp(z) - z):
              code="np.sum(y * (logsumexp({z}, axis={axis}) - {z}), axis={axis})"),
        Fused("sigmoid", "binary_cross_entropy",
              r"\frac{1}{n} \sum_{k} \bigl( \operatorname{softplus}(z_{k}) - y_{k} z_{k} \bigr)",
              lambda z, y: _mean([F.softplus(zk) - yk * zk for zk, yk in zip(z, y)]),
              lambda z, y: (np_softplus(z) - y * z).mean(axis=1),
              lambda z, a, y: (a - y) / z.shape[1],
              simplified="(a - y) / n", partial="sigmoid_binary_cross_entropy",
              code="np.mean(softplus({z}) - y * {z}, axis={axis})"),
        Fused("sigmoid", "cross_entropy",
              r"\sum_{k} y_{k} \operatorname{softplus}(-z_{k})",
              lambda z, y: sp.Add(*[yk * F.softplus(-zk) for zk, yk in zip(z, y)]),
              lambda z, y: (y * np_softplus(-z)).sum(axis=1),
              lambda z, a, y: -y * (1 - a),
              code="np.sum(y * softplus(-{z}), axis={axis})"),  # -y log sigmoid(z) = y softplus(-z)
    ]
}


# --------------------------------------------------------------------------- look-ups

_X = sp.Symbol("x", real=True)


def custom_activation(expression: str, *, name: str | None = None, latex: str | None = None) -> Activation:
    """An activation from a SymPy-syntax expression in ``x``, parsed by the whitelist parser.

    >>> swish = custom_activation("x*sigmoid(x)", name="swish")
    >>> z = sp.Symbol("z", real=True)
    >>> swish.sympy(z)
    z*sigmoid(z)
    >>> float(swish.numpy_derivative(np.array(0.0)))
    0.5

    A kinked expression follows the convention relu'(0) = 0: ``max`` and ``min`` are written with
    ``relu`` (:func:`_through_relu`; SymPy would differentiate ``max(x, 0)`` to ``Heaviside(x, 1/2)``),
    and any other ``Heaviside(u, h)`` of the derivative becomes ``Heaviside(u, 0)`` (derivative 0 exactly
    at a kink). The kinks are the real solutions of ``u = 0`` for those ``u``
    (and for the arguments of ``sign``, the derivative of ``abs``):

    >>> shifted = custom_activation("max(x, 1)")
    >>> shifted.kinks
    (1.0,)
    >>> [float(shifted.numpy_derivative(np.array(v))) for v in (0.0, 1.0, 2.0)]
    [0.0, 0.0, 1.0]
    """
    body = _through_relu(parse_scalar(expression, {"x": _X}, what="activation"))
    if _X not in body.free_symbols:
        raise SymbpError(f"activation {expression!r}: does not depend on x")
    derivative = sp.diff(body, _X).replace(lambda e: isinstance(e, sp.Heaviside),
                                           lambda e: sp.Heaviside(e.args[0], 0))
    modules = [NUMPY_FUNCTIONS, "numpy"]
    fn = sp.lambdify([_X], body, modules=modules)
    dfn = sp.lambdify([_X], derivative, modules=modules)
    smooth = not body.has(F.relu, F.leaky_relu, sp.Max, sp.Min, sp.Abs, sp.Heaviside)
    return Activation(
        name=name or expression,
        latex=latex or r"f",
        sympy=lambda z: body.xreplace({_X: z}),
        numpy=lambda z: _quietly(fn, z),
        numpy_derivative=lambda z: _quietly(dfn, z),
        kinks=() if smooth else _kinks(derivative),
        note=f"f(x) = {expression}",
        expression=expression,
    )


def _quietly(generated, z):
    """A lambdified function at ``z`` without NumPy's float warnings: they would quote generated
    code at the user; the checks that read the numbers report nan and infinity instead."""
    with np.errstate(all="ignore"):
        return np.asarray(generated(z), dtype=float) + np.zeros_like(z)


def derivative(row: Activation) -> sp.Lambda:
    """``f'`` of an activation row, as ``sympy.diff`` gives it (``relu' = Heaviside(z, 0)``), as a
    ``Lambda`` to apply to a symbol or a number: the one place documents, examples and flow get it.

    >>> derivative(ACTIVATIONS["relu"])(sp.Integer(0)), derivative(ACTIVATIONS["tanh"])(sp.Integer(0))
    (0, 1)
    """
    u = sp.Dummy("u", real=True)
    return sp.Lambda(u, sp.diff(row.sympy(u), u))


def _through_relu(expr):
    """``Max`` and ``Min`` written with ``relu`` (numbers first: ``max(x, 1) = 1 + relu(x - 1)``,
    ``min(x, 0) = -relu(-x)``), so that the symbolic derivative follows relu'(0) = 0 too, not SymPy's
    ``Heaviside(0) = 1/2``.

    >>> _through_relu(sp.Max(_X, 0)), _through_relu(sp.Min(_X, 0))
    (relu(x), -relu(-x))
    """
    def fold(args, step):
        args = sorted(args, key=lambda a: not a.is_number)
        result = args[0]
        for arg in args[1:]:
            result = step(result, arg)
        return result

    expr = expr.replace(lambda e: isinstance(e, sp.Max), lambda e: fold(e.args, lambda a, b: a + F.relu(b - a)))
    return expr.replace(lambda e: isinstance(e, sp.Min), lambda e: fold(e.args, lambda a, b: a - F.relu(a - b)))


def real_zeros(expr, x, *, max_ops: int = 60):
    """The real zeros of ``expr`` as a function of the symbol ``x``: a finite set of SymPy numbers,
    or None when undecided (a big expression, zero everywhere, or out of SymPy's reach). The effort
    is bounded: polynomials by their real roots, anything else by one ``solveset`` over the reals.

    >>> t = sp.Symbol("t", real=True)
    >>> real_zeros(1 - sp.exp(t), t), real_zeros(t**2 - t / 100, t), real_zeros(sp.exp(t), t)
    ({0}, {0, 1/100}, set())
    >>> real_zeros(t - sp.tanh(t), t) is None
    True
    """
    expr = F.explicit(sp.sympify(expr))
    if x not in expr.free_symbols or sp.count_ops(expr) > max_ops:
        return None
    try:
        if expr.is_polynomial(x):
            return set(sp.Poly(expr, x).real_roots())
        solutions = sp.solveset(expr, x, domain=sp.S.Reals)
    except Exception:  # SymPy's solvers raise many kinds of errors on what they cannot do
        return None
    if isinstance(solutions, sp.FiniteSet) or solutions is sp.S.EmptySet:
        return set(solutions)
    return None


def _kinks(derivative) -> tuple:
    """The real x where an argument of a Heaviside or sign in ``derivative`` is 0, sorted; 0.0 (the
    usual place of a kink) stands for those SymPy cannot find."""
    kinks = set()
    for atom in derivative.atoms(sp.Heaviside, sp.sign):
        zeros = real_zeros(atom.args[0], _X)
        kinks.update({0.0} if zeros is None else {float(v) for v in zeros})
    return tuple(sorted(kinks)) or (0.0,)


def activation(spec) -> Activation:
    """The registry row for ``spec``: a name, an :class:`Activation`, or an expression in ``x``.

    >>> activation("relu").name, activation("x**2/2").name
    ('relu', 'x**2/2')
    """
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str):
        raise SymbpError(f"activation: expected a name or an expression in x, got {spec!r}")
    if spec in ACTIVATIONS:
        return ACTIVATIONS[spec]
    if spec.isidentifier() and spec != "x":
        raise SymbpError(f"unknown activation '{spec}'{closest(spec, ACTIVATIONS)}; known: "
                         f"{', '.join(ACTIVATIONS)}, or an expression in x such as 'x*sigmoid(x)'")
    return custom_activation(spec)


def output(name) -> Output:
    if name not in OUTPUTS:
        raise SymbpError(f"unknown output '{name}'{closest(str(name), OUTPUTS)}; known: {', '.join(OUTPUTS)}")
    return OUTPUTS[name]


def loss(name) -> Loss:
    if name not in LOSSES:
        raise SymbpError(f"unknown loss '{name}'{closest(str(name), LOSSES)}; known: {', '.join(LOSSES)}")
    return LOSSES[name]
