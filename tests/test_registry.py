"""Every row of the registry: its SymPy form, NumPy form, derivative and conventions agree."""

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp import functions as F
from symbp import registry
from symbp.errors import SymbpError

z = sp.Symbol("z", real=True)
POINTS = [-2.5, -1.0, -0.3, 0.4, 1.0, 3.0]


def sym_value(expr, value):
    return float(sp.N(expr.xreplace({z: sp.Rational(str(value))})))


@pytest.mark.parametrize("name", list(registry.ACTIVATIONS))
def test_activation_numpy_matches_sympy(name):
    row = registry.ACTIVATIONS[name]
    f, df = row.sympy(z), sp.diff(row.sympy(z), z)
    for v in POINTS:
        assert row.numpy(np.array(v)) == pytest.approx(sym_value(f, v), rel=1e-12)
        assert row.numpy_derivative(np.array(v)) == pytest.approx(sym_value(df, v), rel=1e-12)


@pytest.mark.parametrize("name", list(registry.ACTIVATIONS))
def test_activation_derivative_rule_matches_explicit_form(name):
    # symbp's own fdiff rules are checked against sympy.diff of the elementary rewrite
    f = registry.ACTIVATIONS[name].sympy(z)
    rule = sp.diff(f, z)
    by_sympy = sp.diff(F.explicit(f), z)
    for v in POINTS:
        assert sym_value(rule, v) == pytest.approx(sym_value(by_sympy, v), rel=1e-12)


@pytest.mark.parametrize("name, at_zero", [("relu", 0), ("leaky_relu", sp.Rational(1, 100))])
def test_kink_convention_at_minus_one_zero_one(name, at_zero):
    d = sp.diff(registry.ACTIVATIONS[name].sympy(z), z)
    values = [d.xreplace({z: sp.Integer(v)}) for v in (-1, 0, 1)]
    assert values[1] == at_zero  # relu'(0) = 0, as PyTorch; not SymPy's Heaviside(0) = 1/2
    assert values[2] == 1
    assert registry.ACTIVATIONS[name].numpy_derivative(np.array(0.0)) == float(at_zero)


def test_sigmoid_and_softplus_do_not_overflow():
    big = np.array([-1000.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert registry.np_sigmoid(big).tolist() == [0.0, 1.0]
        assert registry.np_softplus(big).tolist() == [0.0, 1000.0]
        assert registry.np_softmax(np.array([[1000.0, 0.0]])).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("name", list(registry.OUTPUTS))
def test_output_numpy_and_vjp_match_sympy(name, rng):
    row = registry.OUTPUTS[name]
    zs = sp.symbols("z0:3", real=True)
    a = row.sympy(list(zs))
    point = rng.normal(size=3)
    g = rng.normal(size=3)
    subs = {s: sp.Float(v, 30) for s, v in zip(zs, point)}
    a_num = np.array([float(e.xreplace(subs).evalf(30)) for e in a])
    assert row.numpy(point[None, :])[0] == pytest.approx(a_num, rel=1e-12)
    vjp = [float(sum(g[k] * sp.diff(a[k], zs[i]) for k in range(3)).xreplace(subs).evalf(30)) for i in range(3)]
    assert row.numpy_vjp(a_num[None, :], g[None, :])[0] == pytest.approx(vjp, rel=1e-10)


@pytest.mark.parametrize("name", list(registry.LOSSES))
def test_loss_numpy_and_grad_match_sympy(name, rng):
    row = registry.LOSSES[name]
    a_s, y_s = sp.symbols("a0:3", positive=True), sp.symbols("y0:3", real=True)
    loss = row.sympy(list(a_s), list(y_s))
    a, y = rng.uniform(0.1, 0.9, size=3), rng.uniform(0.1, 0.9, size=3)
    subs = {**dict(zip(a_s, a)), **dict(zip(y_s, y))}
    assert row.numpy(a[None], y[None])[0] == pytest.approx(float(loss.subs(subs)), rel=1e-12)
    grad = [float(sp.diff(loss, s).subs(subs)) for s in a_s]
    assert row.numpy_grad(a[None], y[None])[0] == pytest.approx(grad, rel=1e-12)


def test_per_example_conventions():
    # PyTorch: cross_entropy sums over classes; binary_cross_entropy and mse average over units
    a, y = np.array([[0.5, 0.25, 0.25]]), np.array([[0.0, 1.0, 0.0]])
    assert registry.LOSSES["cross_entropy"].numpy(a, y)[0] == pytest.approx(np.log(4))
    assert registry.LOSSES["mse"].numpy(a, y)[0] == pytest.approx((0.25 + 0.5625 + 0.0625) / 3)


@pytest.mark.parametrize("key", list(registry.FUSED))
def test_fused_form_is_the_same_function(key, rng):
    fused = registry.FUSED[key]
    output, loss = registry.OUTPUTS[key[0]], registry.LOSSES[key[1]]
    zs, ys = sp.symbols("z0:3", real=True), sp.symbols("y0:3", real=True)
    written = loss.sympy(output.sympy(list(zs)), list(ys))
    logits = fused.sympy(list(zs), list(ys))
    for _ in range(3):
        subs = {**{s: sp.Rational(int(rng.integers(-40, 40)), 7) for s in zs},
                **{s: sp.Rational(int(rng.integers(1, 9)), 10) for s in ys}}
        assert sp.N(written.xreplace(subs) - logits.xreplace(subs), 40) == pytest.approx(0, abs=1e-35)
        zn = np.array([[float(subs[s]) for s in zs]])
        yn = np.array([[float(subs[s]) for s in ys]])
        assert fused.numpy(zn, yn)[0] == pytest.approx(float(sp.N(written.xreplace(subs))), rel=1e-12)
        dz = [float(sp.N(sp.diff(logits, s).xreplace(subs))) for s in zs]
        assert fused.numpy_dz(zn, output.numpy(zn), yn)[0] == pytest.approx(dz, rel=1e-10, abs=1e-14)


def test_custom_activation_from_expression():
    swish = registry.custom_activation("x*sigmoid(x)", name="swish")
    assert swish.sympy(z) == z * F.sigmoid(z)
    assert swish.numpy_derivative(np.array(1.0)) == pytest.approx(
        float(sp.diff(z / (1 + sp.exp(-z)), z).subs(z, 1)), rel=1e-12)
    assert registry.activation("x**2/2").sympy(z) == z**2 / 2


@pytest.mark.parametrize("bad, message", [
    ("rleu", "unknown activation 'rleu' (did you mean 'relu'?)"),
    ("__import__('os')", "unknown function '__import__'"),
    ("3", "does not depend on x"),
])
def test_bad_activation_names_the_culprit(bad, message):
    with pytest.raises(SymbpError) as info:
        registry.activation(bad)
    assert message in str(info.value)


def test_unknown_output_and_loss():
    with pytest.raises(SymbpError, match="did you mean 'softmax'"):
        registry.output("sofmax")
    with pytest.raises(SymbpError, match="unknown loss 'hinge'"):
        registry.loss("hinge")


@pytest.mark.parametrize("expression", ["max(x, 0)", "Max(x, 0)", "relu(x)"])
def test_custom_max_has_derivative_zero_at_its_kink(expression):
    row = registry.custom_activation(expression)
    assert [float(row.numpy_derivative(np.array(v))) for v in (-1.0, 0.0, 1.0)] == [0.0, 0.0, 1.0]
    assert row.kinks == (0.0,)


def test_custom_kinks_are_where_the_heaviside_arguments_vanish():
    assert registry.custom_activation("max(x, 1)").kinks == (1.0,)
    assert registry.custom_activation("max(x, 1) + min(x, -2)").kinks == (-2.0, 1.0)
    assert registry.custom_activation("abs(x - 3)").kinks == (3.0,)
    assert registry.custom_activation("x**3/3 + x").kinks == ()
    assert float(registry.custom_activation("max(x, 1)").numpy_derivative(np.array(1.0))) == 0.0


def test_custom_max_follows_the_relu_convention_symbolically():
    # the symbolic gradient (what derive and verify use), not only the NumPy derivative, has f'(0) = 0
    row = registry.custom_activation("max(x, 0)")
    d = sp.diff(row.sympy(z), z)
    assert [d.xreplace({z: sp.Integer(v)}) for v in (-1, 0, 1)] == [0, 0, 1]
    net = symbp.MLP([1, 1, 1], hidden="max(x, 0)", output="identity", loss="mse")
    grads = symbp.derive(net, method="expand")
    point = {net.symbols(n)[0]: sp.Integer(v) for n, v in zip(("x", "y", "W1", "b1", "W2", "b2"), (1, 0, 2, -2, 1, 0))}
    assert grads["W1"][0].xreplace(point) == 0  # z1 = 0 exactly
