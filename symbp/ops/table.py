"""The rows of the op table (see :mod:`symbp.ops` for what a row holds and the orientation).

Semantics are PyTorch's, in float64: layer norm over the features of each example with the biased
variance, batch norm in training mode (statistics of the batch, biased variance), dropout scaling the
kept entries by ``1 / (1 - p)``, attention ``softmax(Q K^T / sqrt(dk)) V`` over the rows (tokens), causal
attention giving the entries above the diagonal weight 0.
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import sympy as sp

from .. import registry
from ..errors import SymbpError, closest
from ..names import times
from .base import REQUIRED, Context, Op

EPS = Fraction(1, 100000)  # PyTorch's default eps of the norms


def _exact(value) -> sp.Rational:
    value = Fraction(value)
    return sp.Rational(value.numerator, value.denominator)


# --------------------------------------------------------------------------- affine

def _affine_forward(X, P, E, cfg, stage):
    W, b = P["W"], P.get("b")

    def entry(n, i):
        terms = [times(W[i, j], X[n, j]) for j in range(W.cols)]
        return sp.Add(*terms, *([b[i, 0]] if b is not None else []))

    return sp.Matrix(X.rows, W.rows, entry)


def _affine_numpy(X, P, E, cfg, stage):
    return X @ P["W"].T + (P["b"].T if "b" in P else 0.0)


def _affine_backward(c: Context):
    W, b = c.params["W"], c.params.get("b")
    if c.batch:
        claims = {c.inp: f"d{c.out} @ {W}", W: f"d{c.out}.T @ {c.inp}"}
    else:
        claims = {c.inp: f"{W}.T @ d{c.out}", W: f"d{c.out} @ {c.inp}.T"}
    if b:
        claims[b] = c.over_examples(f"d{c.out}")
    return claims


def _affine_shape(role, cfg, n_in):
    return (cfg["out"], n_in) if role == "W" else (cfg["out"], 1)


def _affine_code(c: Context):
    W, b = c.params["W"], c.params.get("b")
    if c.batch:
        return [f"{c.out} = {c.inp} @ {W}.T" + (f" + {b}.T" if b else "")]
    return [f"{c.out} = {W} @ {c.inp}" + (f" + {b}" if b else "")]


def _affine_index(X, P, E, cfg, e, i, n_in):
    k = sp.Dummy("k", integer=True, positive=True)
    out = sp.Sum(P["W"](i, k) * X(e, k), (k, 1, n_in))
    return out + P["b"](i, 1) if "b" in P else out


def _float(value) -> str:
    """An exact number as a float literal of generated code: ``1/100000`` as ``1e-05``."""
    return repr(float(value))


def _positive_width(cfg, n_in, batch):
    out = cfg["out"]
    if isinstance(out, bool) or not isinstance(out, int) or out < 1:
        return f"out: expected a positive whole number of output units, got {out!r}"
    return None


AFFINE = Op(
    "affine", "W a + b (one example); a W^T + 1_N b^T (a batch)", _affine_forward, _affine_numpy,
    _affine_backward, r"\operatorname{affine}", params=("W", "b"), fields={"out": REQUIRED, "bias": True},
    prefix="z", width=lambda cfg, n_in: cfg["out"], param_shape=_affine_shape, check=_positive_width,
    torch=lambda X, P, E, cfg, stage: X @ P["W"].T + (P["b"].T if "b" in P else 0.0),
    code=lambda c, show: _affine_code(c), index=_affine_index,
)


# --------------------------------------------------------------------------- entry-wise activations

def activation_op(row) -> Op:
    """The op of an entry-wise activation row of :data:`symbp.registry.ACTIVATIONS` (or a custom one).

    Its backward is ``dout * f'(in)``, with ``f'`` the row's own textbook form (``step(z)``,
    ``a * (1 - a)``) or, for a custom activation, ``sympy.diff`` of its expression written in the claim
    language (:func:`symbp.formula.formula_text`), or no claim when the language cannot write it.
    """
    def forward(X, P, E, cfg, stage):
        return X.applyfunc(row.sympy)

    def numpy(X, P, E, cfg, stage):
        return row.numpy(X)

    def backward(c: Context):
        derivative = activation_derivative_text(row, c.inp, c.out)
        if derivative is None:
            return {}
        return {c.inp: f"d{c.out}" if derivative == "1" else f"d{c.out} * {derivative}"}

    def code(c: Context, show):
        return [f"{c.out} = {show(row.sympy(sp.Symbol(c.inp, real=True)))}"]

    return Op(row.name, f"{row.name} entry by entry", forward, numpy, backward, row.latex, prefix="a",
              kinks=tuple(row.kinks), note=row.note, activation=row,
              torch=_torch_activation(row), code=code,
              index=lambda X, P, E, cfg, e, i, n_in: row.sympy(X(e, i)))


def skip_activation_op(row) -> Op:
    """An entry-wise activation with a skip connection added in the same stage, ``a = f(z) + from``:
    the residual hidden layer of :class:`symbp.MLP` (``residual=True``), whose names keep ``a_l`` for the
    sum. A network of layers writes the same with an ``add`` layer."""
    plain = activation_op(row)

    def backward(c: Context):
        derivative = activation_derivative_text(row, c.inp, None)
        claims = {c.extra["from"]: f"d{c.out}"}
        if derivative is not None:
            claims[c.inp] = f"d{c.out}" if derivative == "1" else f"d{c.out} * {derivative}"
        return claims

    return replace(plain, summary=f"{row.name} entry by entry, plus a skip connection",
                   forward=lambda X, P, E, cfg, stage: X.applyfunc(row.sympy) + E["from"],
                   numpy=lambda X, P, E, cfg, stage: row.numpy(X) + E["from"], backward=backward,
                   fields={"from": REQUIRED}, extra=("from",), torch=None,
                   index=lambda X, P, E, cfg, e, i, n_in: row.sympy(X(e, i)) + E["from"](e, i))


def activation_derivative_text(row, z: str, a: str | None) -> str | None:
    """``f'(z)`` of an activation row as a claim, written with ``a`` (``a = f(z)``) where the row's
    textbook form uses it and ``a`` is given, else in ``z`` alone; None if the claim language cannot
    write it.

    >>> activation_derivative_text(registry.ACTIVATIONS["sigmoid"], "z2", "a2")
    'a2 * (1 - a2)'
    >>> activation_derivative_text(registry.ACTIVATIONS["sigmoid"], "z2", None)
    'sigmoid(z2) * (1 - sigmoid(z2))'
    """
    import re

    from ..formula import formula_text

    forms = row.textbook
    if forms:
        in_a, in_z = forms
        template = in_a if a is not None else in_z
        text = re.sub(r"\bz\b", z, template)
        return re.sub(r"\ba\b", a, text) if a is not None else text
    t = sp.Symbol("t", real=True)
    return formula_text(sp.diff(row.sympy(t), t), z)


def _torch_activation(row):
    def run(X, P, E, cfg, stage):
        import torch

        known = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                 "softplus": torch.nn.functional.softplus, "identity": lambda z: z,
                 "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
                 "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
                 "elu": torch.nn.functional.elu}
        if row.expression or row.name not in known:
            return None  # a custom activation: no independent torch form
        return known[row.name](X)

    return run


# --------------------------------------------------------------------------- softmax

def _softmax_forward(X, P, E, cfg, stage):
    rows = [registry.OUTPUTS["softmax"].sympy(list(X.row(n))) for n in range(X.rows)]
    return sp.Matrix(rows)


def _softmax_index(X, P, E, cfg, e, i, n_in):
    k = sp.Dummy("k", integer=True, positive=True)
    return sp.exp(X(e, i)) / sp.Sum(sp.exp(X(e, k)), (k, 1, n_in))


def _softmax_in_outputs(expr, z_rows, a_rows):
    """Softmax in its outputs: each row's sum of exponentials becomes ``T`` and each ``exp(z_k)``
    becomes ``a_k T`` (the definition of softmax), so ``T`` cancels; None if it does not."""
    T = sp.Dummy("T", positive=True)
    table = {zk: ak * T for zs, As in zip(z_rows, a_rows) for zk, ak in zip(zs, As)}

    def power(e):
        coeff, rest = e.args[0].as_coeff_Mul()
        return table[rest] ** coeff if rest in table and coeff.is_Integer else e

    expr = expr.xreplace({sp.Add(*[sp.exp(v) for v in zs]): T for zs in z_rows})
    expr = sp.cancel(expr.replace(lambda e: isinstance(e, sp.exp), power))
    return None if expr.has(T) else expr


def _softmax_backward(c: Context):
    return {c.inp: f"{c.out} * (d{c.out} - sum({c.out} * d{c.out}, axis={c.features}))"}


SOFTMAX = Op(
    "softmax", "exp(h_i) / sum_k exp(h_k) over the features of each example", _softmax_forward,
    lambda X, P, E, cfg, stage: registry.np_softmax(X), _softmax_backward, r"\operatorname{softmax}",
    prefix="a", torch=lambda X, P, E, cfg, stage: __import__("torch").softmax(X, dim=1),
    mistakes=lambda c: (("softmax-as-entry-wise", {c.inp: f"d{c.out} * {c.out} * (1 - {c.out})"}),),
    note=r"its Jacobian is \operatorname{diag}(a) - a a^{T}, per example",
    code=lambda c, show: [f"{c.out} = softmax({c.inp}, axis={c.features})"], index=_softmax_index,
    in_outputs=_softmax_in_outputs,
)


# --------------------------------------------------------------------------- normalisations

def _gamma_beta_shape(role, cfg, n_in):
    return (n_in, 1)


def _norm_params(cfg):
    return ("gamma", "beta") if cfg.get("affine", True) else ()


def _layernorm_forward(X, P, E, cfg, stage):
    n, eps = X.cols, _exact(cfg["eps"])
    mean = stage("mean", sp.Matrix(X.rows, 1, lambda r, _: sp.Add(*X.row(r)) / n))
    var = stage("var", sp.Matrix(X.rows, 1, lambda r, _: sp.Add(*[(X[r, j] - mean[r, 0]) ** 2
                                                                   for j in range(n)]) / n))

    def entry(r, i):
        h = (X[r, i] - mean[r, 0]) / sp.sqrt(var[r, 0] + eps)
        return h * P["gamma"][i, 0] + P["beta"][i, 0] if "gamma" in P else h

    return sp.Matrix(X.rows, n, entry)


def _bound():
    return sp.Dummy("k", integer=True, positive=True)


def _layernorm_index_stages(X, P, E, cfg, n_in, N):
    """The mean and biased variance of each example's features (as ``_layernorm_forward``'s stages)."""
    def mean(e, _):
        k = _bound()
        return sp.Sum(X(e, k), (k, 1, n_in)) / n_in

    def var(e, _):
        k = _bound()
        return sp.Sum((X(e, k) - E["mean"](e, 1)) ** 2, (k, 1, n_in)) / n_in

    return {"mean": ((N, 1), mean), "var": ((N, 1), var)}


def _layernorm_index(X, P, E, cfg, e, i, n_in, N):
    h = (X(e, i) - E["mean"](e, 1)) / sp.sqrt(E["var"](e, 1) + _exact(cfg["eps"]))
    return h * P["gamma"](i, 1) + P["beta"](i, 1) if "gamma" in P else h


def _layernorm_numpy(X, P, E, cfg, stage):
    mean = stage("mean", X.mean(axis=1, keepdims=True))
    var = stage("var", ((X - mean) ** 2).mean(axis=1, keepdims=True))
    h = (X - mean) / np.sqrt(var + float(cfg["eps"]))
    return h * P["gamma"].T + P["beta"].T if "gamma" in P else h


def _layernorm_torch(X, P, E, cfg, stage):
    import torch

    weight = P["gamma"][:, 0] if "gamma" in P else None
    bias = P["beta"][:, 0] if "beta" in P else None
    return torch.nn.functional.layer_norm(X, (X.shape[1],), weight, bias, eps=float(cfg["eps"]))


def _normalised(c: Context, axis: int) -> tuple[str, str]:
    """(x-hat, the standard deviation) of the input, in the claim language, over ``axis``."""
    eps = c.num(c.cfg["eps"])
    mean, var = c.stages["mean"], c.stages["var"]
    std = f"sqrt({var} + {eps})"
    return f"(({c.inp} - {mean}) / {std})", std


def _norm_backward(c: Context, axis: int, batch_stats: bool):
    """The backward of a normalisation over ``axis`` (layer norm: the features; batch norm: the
    examples): the upstream gradient (times gamma) minus its mean and minus its projection on the
    normalised input, divided by the standard deviation."""
    xhat, std = _normalised(c, axis)
    gamma, beta = c.params.get("gamma"), c.params.get("beta")
    g = f"(d{c.out} * {c.as_feature(gamma)})" if gamma else f"d{c.out}"
    claims = {c.inp: f"({g} - mean({g}, axis={axis}) - {xhat} * mean({g} * {xhat}, axis={axis})) / {std}"}
    if gamma:
        claims[gamma] = c.over_examples(f"d{c.out} * {xhat}")
    if beta:
        claims[beta] = c.over_examples(f"d{c.out}")
    return claims


def _norm_mistakes(c: Context, axis: int, what: str):
    xhat, std = _normalised(c, axis)
    gamma = c.params.get("gamma")
    g = f"(d{c.out} * {c.as_feature(gamma)})" if gamma else f"d{c.out}"
    return ((f"{what}-statistics-as-constants", {c.inp: f"{g} / {std}"}),
            (f"{what}-without-the-variance-term", {c.inp: f"({g} - mean({g}, axis={axis})) / {std}"}))


def _norm_code(c: Context, axis: int):
    """A normalisation over ``axis`` as code: its mean, its biased variance, the output."""
    mean, var = c.stages["mean"], c.stages["var"]
    gamma, beta = c.params.get("gamma"), c.params.get("beta")
    out = f"({c.inp} - {mean}) / np.sqrt({var} + {_float(c.cfg['eps'])})"
    if gamma:
        out += f" * {c.as_feature(gamma)}"
    if beta:
        out += f" + {c.as_feature(beta)}"
    return [f"{mean} = np.mean({c.inp}, axis={axis}, keepdims=True)",
            f"{var} = np.mean(({c.inp} - {mean}) ** 2, axis={axis}, keepdims=True)",
            f"{c.out} = {out}"]


def _check_eps(cfg, n_in, batch):
    eps = cfg["eps"]
    if not isinstance(eps, Fraction) or eps <= 0:
        return f"eps: expected a positive number, got {eps}"
    return None


LAYERNORM = Op(
    "layernorm", "(h - mean(h)) / sqrt(var(h) + eps) * gamma + beta over the features (var biased)",
    _layernorm_forward, _layernorm_numpy,
    lambda c: _norm_backward(c, c.features, False), r"\operatorname{LayerNorm}",
    params=("gamma", "beta"), fields={"eps": EPS, "affine": True}, stages=("mean", "var"), prefix="ln",
    param_shape=_gamma_beta_shape, check=_check_eps, torch=_layernorm_torch,
    mistakes=lambda c: _norm_mistakes(c, c.features, "layernorm"),
    note=r"over the features of each example, with the biased variance (as PyTorch)",
    code=lambda c, show: _norm_code(c, c.features), index=_layernorm_index,
    index_stages=_layernorm_index_stages,
)


def _rmsnorm_forward(X, P, E, cfg, stage):
    n, eps = X.cols, _exact(cfg["eps"])
    ms = stage("ms", sp.Matrix(X.rows, 1, lambda r, _: sp.Add(*[X[r, j] ** 2 for j in range(n)]) / n))
    return sp.Matrix(X.rows, n, lambda r, i: X[r, i] / sp.sqrt(ms[r, 0] + eps) * P["gamma"][i, 0])


def _rmsnorm_index_stages(X, P, E, cfg, n_in, N):
    def ms(e, _):
        k = _bound()
        return sp.Sum(X(e, k) ** 2, (k, 1, n_in)) / n_in

    return {"ms": ((N, 1), ms)}


def _rmsnorm_index(X, P, E, cfg, e, i, n_in, N):
    return X(e, i) / sp.sqrt(E["ms"](e, 1) + _exact(cfg["eps"])) * P["gamma"](i, 1)


def _rmsnorm_numpy(X, P, E, cfg, stage):
    ms = stage("ms", (X ** 2).mean(axis=1, keepdims=True))
    return X / np.sqrt(ms + float(cfg["eps"])) * P["gamma"].T


def _rmsnorm_torch(X, P, E, cfg, stage):
    import torch

    return X * torch.rsqrt((X ** 2).mean(dim=1, keepdim=True) + float(cfg["eps"])) * P["gamma"].T


def _rmsnorm_backward(c: Context):
    eps, ms, axis = c.num(c.cfg["eps"]), c.stages["ms"], c.features
    r = f"sqrt({ms} + {eps})"
    g = f"(d{c.out} * {c.as_feature(c.params['gamma'])})"
    return {c.inp: f"{g} / {r} - {c.inp} * mean({g} * {c.inp}, axis={axis}) / {r} ** 3",
            c.params["gamma"]: c.over_examples(f"d{c.out} * {c.inp} / {r}")}


RMSNORM = Op(
    "rmsnorm", "h / sqrt(mean(h**2) + eps) * gamma over the features", _rmsnorm_forward, _rmsnorm_numpy,
    _rmsnorm_backward, r"\operatorname{RMSNorm}", params=("gamma",), fields={"eps": EPS},
    stages=("ms",), prefix="rms", param_shape=_gamma_beta_shape, check=_check_eps, torch=_rmsnorm_torch,
    mistakes=lambda c: (("rmsnorm-scale-as-constant",
                         {c.inp: f"(d{c.out} * {c.as_feature(c.params['gamma'])}) / sqrt({c.stages['ms']} + "
                                 f"{c.num(c.cfg['eps'])})"}),),
    note=r"over the features of each example",
    code=lambda c, show: [
        f"{c.stages['ms']} = np.mean({c.inp} ** 2, axis={c.features}, keepdims=True)",
        f"{c.out} = {c.inp} / np.sqrt({c.stages['ms']} + {_float(c.cfg['eps'])}) * {c.as_feature(c.params['gamma'])}"],
    index=_rmsnorm_index, index_stages=_rmsnorm_index_stages,
)


def _batchnorm_forward(X, P, E, cfg, stage):
    N, eps = X.rows, _exact(cfg["eps"])
    mean = stage("mean", sp.Matrix(1, X.cols, lambda _, j: sp.Add(*X.col(j)) / N))
    var = stage("var", sp.Matrix(1, X.cols, lambda _, j: sp.Add(*[(X[r, j] - mean[0, j]) ** 2
                                                                   for r in range(N)]) / N))

    def entry(r, j):
        h = (X[r, j] - mean[0, j]) / sp.sqrt(var[0, j] + eps)
        return h * P["gamma"][j, 0] + P["beta"][j, 0] if "gamma" in P else h

    return sp.Matrix(N, X.cols, entry)


def _batchnorm_index_stages(X, P, E, cfg, n_in, N):
    """The mean and biased variance of each feature over the batch (as ``_batchnorm_forward``'s stages)."""
    def mean(_, i):
        n = _bound()
        return sp.Sum(X(n, i), (n, 1, N)) / N

    def var(_, i):
        n = _bound()
        return sp.Sum((X(n, i) - E["mean"](1, i)) ** 2, (n, 1, N)) / N

    return {"mean": ((1, n_in), mean), "var": ((1, n_in), var)}


def _batchnorm_index(X, P, E, cfg, e, i, n_in, N):
    h = (X(e, i) - E["mean"](1, i)) / sp.sqrt(E["var"](1, i) + _exact(cfg["eps"]))
    return h * P["gamma"](i, 1) + P["beta"](i, 1) if "gamma" in P else h


def _batchnorm_numpy(X, P, E, cfg, stage):
    mean = stage("mean", X.mean(axis=0, keepdims=True))
    var = stage("var", ((X - mean) ** 2).mean(axis=0, keepdims=True))
    h = (X - mean) / np.sqrt(var + float(cfg["eps"]))
    return h * P["gamma"].T + P["beta"].T if "gamma" in P else h


def _batchnorm_torch(X, P, E, cfg, stage):
    import torch

    weight = P["gamma"][:, 0] if "gamma" in P else None
    bias = P["beta"][:, 0] if "beta" in P else None
    return torch.nn.functional.batch_norm(X, None, None, weight, bias, training=True, eps=float(cfg["eps"]))


def _check_batchnorm(cfg, n_in, batch):
    if not batch or batch < 2:
        got = f"a batch of {batch}" if batch else "one example"
        return ("batchnorm needs a batch of at least 2 examples (training mode normalises each feature "
                f"over the batch), got {got}; set batch = 2 or more")
    return _check_eps(cfg, n_in, batch)


BATCHNORM = Op(
    "batchnorm", "each feature normalised by its mean and biased variance over the batch, * gamma + beta",
    _batchnorm_forward, _batchnorm_numpy, lambda c: _norm_backward(c, 0, True), r"\operatorname{BatchNorm}",
    params=("gamma", "beta"), fields={"eps": EPS, "affine": True}, stages=("mean", "var"), prefix="bn",
    param_shape=_gamma_beta_shape, check=_check_batchnorm, torch=_batchnorm_torch,
    mistakes=lambda c: _norm_mistakes(c, 0, "batchnorm"),
    note=r"training mode: the mean and biased variance of each feature over the batch (as PyTorch)",
    code=lambda c, show: _norm_code(c, 0), index=_batchnorm_index, index_stages=_batchnorm_index_stages,
)


# --------------------------------------------------------------------------- dropout, add

def _check_dropout(cfg, n_in, batch):
    p = cfg["p"]
    if not isinstance(p, Fraction) or not 0 <= p < 1:
        return f"p: expected a drop probability in [0, 1), got {p}"
    return None


DROPOUT = Op(
    "dropout", "h * m / (1 - p) with the given 0/1 mask m", 
    lambda X, P, E, cfg, stage: sp.Matrix(X.rows, X.cols, lambda r, j: X[r, j] * E["mask"][r, j]
                                          / (1 - _exact(cfg["p"]))),
    lambda X, P, E, cfg, stage: X * E["mask"] / (1.0 - float(cfg["p"])),
    lambda c: {c.inp: f"d{c.out} * {c.extra['mask']} / {c.num(1 - c.cfg['p'])}"},
    r"\operatorname{dropout}", fields={"mask": REQUIRED, "p": Fraction(1, 2)}, extra=("mask",), prefix="h",
    check=_check_dropout, torch=lambda X, P, E, cfg, stage: X * E["mask"] / (1.0 - float(cfg["p"])),
    mistakes=lambda c: (("dropout-without-the-scale", {c.inp: f"d{c.out} * {c.extra['mask']}"}),),
    note=r"the mask is an input, as x: kept entries are scaled by 1/(1 - p) (as PyTorch in training mode)",
    code=lambda c, show: [f"{c.out} = {c.inp} * {c.extra['mask']} / {_float(1 - c.cfg['p'])}"],
    index=lambda X, P, E, cfg, e, i, n_in: X(e, i) * E["mask"](e, i) / (1 - _exact(cfg["p"])),
)

ADD = Op(
    "add", "the previous output plus the named earlier output (a residual connection)",
    lambda X, P, E, cfg, stage: X + E["from"], lambda X, P, E, cfg, stage: X + E["from"],
    lambda c: {c.inp: f"d{c.out}", c.extra["from"]: f"d{c.out}"}, r"\operatorname{add}",
    fields={"from": REQUIRED}, extra=("from",), prefix="r",
    torch=lambda X, P, E, cfg, stage: X + E["from"],
    mistakes=lambda c: (("residual-without-the-skip-term", {c.extra["from"]: "0 * " + f"d{c.out}"}),),
    note=r"the skip connection passes the upstream gradient on unchanged: the +1 of ResNet",
    code=lambda c, show: [f"{c.out} = {c.inp} + {c.extra['from']}"],
    index=lambda X, P, E, cfg, e, i, n_in: X(e, i) + E["from"](e, i),
)


# --------------------------------------------------------------------------- attention

def _attention_shape(role, cfg, n_in):
    return (cfg["dk"], n_in)


def _check_attention(cfg, n_in, batch):
    dk = cfg["dk"]
    if isinstance(dk, bool) or not isinstance(dk, int) or dk < 1:
        return f"dk: expected a positive whole number (the head's width), got {dk!r}"
    if not batch:
        return "attention needs the tokens as the rows of a batch; set batch (the number of tokens)"
    if not isinstance(cfg["causal"], bool):
        return f"causal: expected true or false, got {cfg['causal']!r}"
    return None


def _attention_forward(X, P, E, cfg, stage):
    dk, causal, T = cfg["dk"], cfg["causal"], X.rows

    def project(key, W):
        return stage(key, sp.Matrix(T, W.rows, lambda n, k: sp.Add(*[times(W[k, j], X[n, j])
                                                                    for j in range(X.cols)])))

    Q, K, V = project("Q", P["Wq"]), project("K", P["Wk"]), project("V", P["Wv"])
    root = sp.sqrt(dk)

    def score(n, m):
        if causal and m > n:
            return sp.S.Zero  # masked: weight 0 below, so its gradient is 0
        return sp.Add(*[times(Q[n, k], K[m, k]) for k in range(dk)]) / root

    S = stage("S", sp.Matrix(T, T, score))

    def weight(n, m):
        if causal and m > n:
            return sp.S.Zero
        seen = range(n + 1) if causal else range(T)
        return sp.exp(S[n, m]) / sp.Add(*[sp.exp(S[n, k]) for k in seen])

    A = stage("P", sp.Matrix(T, T, weight))
    return sp.Matrix(T, dk, lambda n, d: sp.Add(*[times(A[n, m], V[m, d]) for m in range(T)]))


def _attention_numpy(X, P, E, cfg, stage):
    dk, T = cfg["dk"], X.shape[0]
    Q, K, V = (stage(key, X @ P[w].T) for key, w in (("Q", "Wq"), ("K", "Wk"), ("V", "Wv")))
    S = Q @ K.T / math.sqrt(dk)
    if cfg["causal"]:
        S = np.where(np.tri(T, dtype=bool), S, 0.0)
    S = stage("S", S)
    masked = np.where(np.tri(T, dtype=bool), S, -np.inf) if cfg["causal"] else S
    A = stage("P", registry.np_softmax(masked))
    return A @ V


def _attention_torch(X, P, E, cfg, stage):
    import torch

    T = X.shape[0]
    Q, K, V = (stage(key, X @ P[w].T) for key, w in (("Q", "Wq"), ("K", "Wk"), ("V", "Wv")))
    S = Q @ K.T / math.sqrt(cfg["dk"])
    if cfg["causal"]:
        keep = torch.tril(torch.ones(T, T, dtype=torch.bool))
        S = stage("S", torch.where(keep, S, torch.zeros_like(S)))
        A = stage("P", torch.softmax(torch.where(keep, S, torch.full_like(S, -math.inf)), dim=1))
    else:
        A = stage("P", torch.softmax(stage("S", S), dim=1))
    return A @ V


def _attention_index_stages(X, P, E, cfg, n_in, N):
    """Q, K, V, the scores and the weights in index form (as ``_attention_forward``); causal attention
    keeps token ``m`` for token ``n`` when ``m <= n``: ``step(n - m + 1/2)`` is that 0/1 mask."""
    from ..functions import step

    dk, causal = cfg["dk"], cfg["causal"]

    def keep(n, m):
        return step(n - m + sp.Rational(1, 2)) if causal else sp.Integer(1)

    def project(w):
        def entry(n, d):
            j = _bound()
            return sp.Sum(P[w](d, j) * X(n, j), (j, 1, n_in))
        return (N, dk), entry

    def score(n, m):
        d = _bound()
        return keep(n, m) * sp.Sum(E["Q"](n, d) * E["K"](m, d), (d, 1, dk)) / sp.sqrt(dk)

    def weight(n, m):
        k = _bound()
        return keep(n, m) * sp.exp(E["S"](n, m)) / sp.Sum(keep(n, k) * sp.exp(E["S"](n, k)), (k, 1, N))

    return {"Q": project("Wq"), "K": project("Wk"), "V": project("Wv"), "S": ((N, N), score),
            "P": ((N, N), weight)}


def _attention_index(X, P, E, cfg, e, i, n_in, N):
    m = _bound()
    return sp.Sum(E["P"](e, m) * E["V"](m, i), (m, 1, N))


def _attention_code(c: Context):
    s, p = c.stages, c.params
    lines = [f"{s[key]} = {c.inp} @ {p[w]}.T" for key, w in (("Q", "Wq"), ("K", "Wk"), ("V", "Wv"))]
    scores = f"{s['Q']} @ {s['K']}.T / np.sqrt({c.cfg['dk']})"
    if c.cfg["causal"]:
        keep = f"np.tri({c.inp}.shape[0], dtype=bool)"
        lines += [f"{s['S']} = np.where({keep}, {scores}, 0.0)",
                  f"{s['P']} = softmax(np.where({keep}, {s['S']}, -np.inf), axis=1)"]
    else:
        lines += [f"{s['S']} = {scores}", f"{s['P']} = softmax({s['S']}, axis=1)"]
    return lines + [f"{c.out} = {s['P']} @ {s['V']}"]


def _attention_backward(c: Context):
    s = c.stages
    root = f"sqrt(n_{c.out})"  # the head's width dk, by its size name (a proof for all sizes reads it so)
    return {
        s["P"]: f"d{c.out} @ {s['V']}.T",
        s["V"]: f"{s['P']}.T @ d{c.out}",
        s["S"]: f"{s['P']} * (d{s['P']} - sum({s['P']} * d{s['P']}, axis=1))",
        s["Q"]: f"d{s['S']} @ {s['K']} / {root}",
        s["K"]: f"d{s['S']}.T @ {s['Q']} / {root}",
        c.inp: f"d{s['Q']} @ {c.params['Wq']} + d{s['K']} @ {c.params['Wk']} + d{s['V']} @ {c.params['Wv']}",
        c.params["Wq"]: f"d{s['Q']}.T @ {c.inp}",
        c.params["Wk"]: f"d{s['K']}.T @ {c.inp}",
        c.params["Wv"]: f"d{s['V']}.T @ {c.inp}",
    }


def _attention_mistakes(c: Context):
    s = c.stages
    return (("attention-without-the-scale", {s["Q"]: f"d{s['S']} @ {s['K']}", s["K"]: f"d{s['S']}.T @ {s['Q']}"}),
            ("attention-without-the-softmax-jacobian", {s["S"]: f"d{s['P']}"}),
            ("attention-softmax-as-entry-wise", {s["S"]: f"d{s['P']} * {s['P']} * (1 - {s['P']})"}))


ATTENTION = Op(
    "attention", "softmax(Q K^T / sqrt(dk)) V over the rows (tokens), Q = h Wq^T, K = h Wk^T, V = h Wv^T",
    _attention_forward, _attention_numpy, _attention_backward, r"\operatorname{attention}",
    params=("Wq", "Wk", "Wv"), fields={"dk": REQUIRED, "causal": False}, stages=("Q", "K", "V", "S", "P"),
    prefix="att", width=lambda cfg, n_in: cfg["dk"], param_shape=_attention_shape, check=_check_attention,
    torch=_attention_torch, mistakes=_attention_mistakes,
    note=r"one head; rows are tokens; causal attention gives the entries above the diagonal weight 0",
    code=lambda c, show: _attention_code(c), index=_attention_index, index_stages=_attention_index_stages,
)


# --------------------------------------------------------------------------- the table

OPS = {
    **{row.name: row for row in (AFFINE, LAYERNORM, RMSNORM, BATCHNORM, DROPOUT, ADD, SOFTMAX, ATTENTION)},
    **{name: activation_op(row) for name, row in registry.ACTIVATIONS.items()},
}


def op(name) -> Op:
    """The row of op ``name``; ``"activation"`` is built per layer from its ``expr`` (see
    :mod:`symbp.layers`).

    >>> op("layernorm").params, op("relu").prefix
    (('gamma', 'beta'), 'a')
    """
    if not isinstance(name, str) or name not in OPS:
        known = ", ".join([*OPS, "activation"])
        raise SymbpError(f"unknown op {name!r}{closest(str(name), OPS)}; known: {known}")
    return OPS[name]
