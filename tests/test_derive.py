"""Per-element partials: the chain method equals sympy.diff of the written-out loss, exactly."""

import random

import pytest
import sympy as sp

import symbp
from symbp.errors import SymbpError
from symbp.exact import frozen_zero, numeric_value, random_rational

from conftest import config_id, configurations, make


def exactly_equal(a, b, net, rng):
    """Zero as a rational function of frozen applications, or else equal at exact rational points
    (kinks make symbolic comparison of relu networks unhelpful: Heaviside(z, 0) of a symbolic z)."""
    if frozen_zero(a - b):
        return True
    symbols = set()
    for name in net.inputs + net.params:
        symbols.update(net.symbols(name))
    for _ in range(3):
        point = {s: random_rational(rng) for s in symbols}
        if abs(numeric_value((a - b).xreplace(point))) > 1e-40:
            return False
    return True


@pytest.mark.parametrize("config", configurations(), ids=config_id)
def test_chain_equals_expand(config):
    net = make(config)
    chain, expand = symbp.derive(net, method="chain"), symbp.derive(net, method="expand")
    assert list(chain) == list(expand) == list(net.params + net.intermediates)
    rng = random.Random(7)
    for name in chain:
        written = chain.written_out(name)
        assert written.shape == expand[name].shape == net.shape(name)
        for a, b in zip(written, expand[name]):
            assert exactly_equal(a, b, net, rng), (name, a, b)


ONE_LAYER = {  # one layer on its own: the loss sum(y * out) makes y the upstream gradient dL/dh
    "layernorm": ([{"op": "layernorm", "name": "h", "gamma": "g", "beta": "c"}], 3, 2),
    "batchnorm": ([{"op": "batchnorm", "name": "h", "gamma": "g", "beta": "c"}], 3, 2),
    "attention": ([{"op": "attention", "dk": 1, "name": "h"}], 2, 2),
    "affine": ([{"op": "affine", "out": 2, "name": "h", "W": "W", "b": "b"}], 3, 2),
    "softmax+ce": ([{"op": "affine", "out": 3}, {"op": "softmax"}], 2, None),  # the fused loss: logits
    "softmax+ce-x": ([{"op": "softmax", "name": "h"}], 3, None),  # the logits are x: L is written in x
}


@pytest.mark.parametrize("kind", sorted(ONE_LAYER))
def test_the_input_gradient_is_diff_of_the_forward(kind):
    """dL/dx (with_input) by chain and by expand equals sympy.diff of the written-out loss in x."""
    layers, width, batch = ONE_LAYER[kind]
    loss = dict(loss="cross_entropy") if kind.startswith("softmax+ce") else dict(loss="a*y", reduction="sum")
    net = symbp.network(layers, input=width, batch=batch, **loss)
    grads = symbp.derive(net)
    assert "x" not in grads and list(grads) == list(net.params + net.intermediates)  # derive: unchanged
    full = grads.with_input()
    assert list(full) == ["x", *grads] and "x" in full and len(full) == len(grads) + 1
    X, L = net.symbols("x"), net.loss
    written, expand = full.written_out("x"), symbp.derive(net, method="expand").with_input()["x"]
    assert written.shape == expand.shape == net.shape("x")
    rng = random.Random(3)
    for k, v in enumerate(X):
        truth = sp.diff(L, v)
        assert exactly_equal(written[k], truth, net, rng), (kind, v)
        assert exactly_equal(expand[k], truth, net, rng), (kind, v)
    assert full.with_layout("numerator")["x"] == full["x"].T


def test_chain_entries_are_the_per_element_chain_rule():
    # seed 001: dW3 = delta3 a2^T, db3 = delta3, delta2 = (W3^T delta3) * relu'(z2), entry by entry
    net = symbp.MLP([4, 5, 3, 3])
    g = symbp.derive(net)
    dz3, a2, W3 = net.grad_symbols("z3"), net.symbols("a2"), net.symbols("W3")
    assert g["W3"] == dz3 * a2.T
    assert g["b3"] == dz3
    assert g["a2"] == W3.T * dz3
    da2, z2 = net.grad_symbols("a2"), net.symbols("z2")
    assert list(g["z2"]) == [da2[i] * sp.Heaviside(z2[i], 0) for i in range(3)]


def test_softmax_cross_entropy_output_error_is_derived_not_written():
    # dL/dz3 comes from sympy.diff of the log-sum-exp loss: -y_i + (sum_k y_k) softmax_i, which is
    # a - y only when the targets sum to 1 (the side condition)
    net = symbp.MLP([2, 3])
    g = symbp.derive(net)
    z, y = net.symbols("z1"), net.symbols("y")
    softmax = [sp.exp(z[i]) / sum(sp.exp(v) for v in z) for i in range(3)]
    general = [-y[i] + sum(y) * softmax[i] for i in range(3)]
    assert all(frozen_zero(a - b) for a, b in zip(g["z1"], general))
    difference = g["z1"][0] - (softmax[0] - y[0])
    assert not frozen_zero(difference)
    assert frozen_zero(difference.xreplace({y[2]: 1 - y[0] - y[1]}))


def test_batch_mean_divides_by_n_and_sums_over_rows():
    net = symbp.MLP([2, 2], output="identity", loss="mse", batch=3)
    g = symbp.derive(net)
    a, y = net.symbols("a1"), net.symbols("y")
    assert g["a1"][2, 1] == (2 * a[2, 1] - 2 * y[2, 1]) / 6  # mse: mean over 2 units, then 1/N, N = 3
    dz, x = net.grad_symbols("z1"), net.symbols("x")
    assert g["W1"][1, 0] == sum(dz[n, 1] * x[n, 0] for n in range(3))
    assert g["b1"][1, 0] == sum(dz[n, 1] for n in range(3))
    total = symbp.derive(symbp.MLP([2, 2], output="identity", loss="mse", batch=3, reduction="sum"))
    assert total["a1"][2, 1] == (2 * a[2, 1] - 2 * y[2, 1]) / 2


def test_relu_derivative_is_zero_at_the_kink():
    net = symbp.MLP([1, 1, 1], output="identity", loss="mse")
    g = symbp.derive(net, method="expand")
    point = {s: sp.Integer(v) for s, v in zip(
        [net.symbols(n)[0] for n in ("x", "y", "W1", "b1", "W2", "b2")], [1, 0, 2, -2, 1, 0])}
    assert g["W1"][0].xreplace(point) == 0  # z1 = 2*1 - 2 = 0 exactly: relu'(0) = 0
    point[net.symbols("b1")[0]] = sp.Integer(-1)
    assert g["W1"][0].xreplace(point) == 2  # z1 = 1 > 0: dL/dW1 = 2 (a2 - y) W2 x = 2


def test_numerator_layout_is_the_transpose():
    net = symbp.MLP([3, 2, 2])
    g = symbp.derive(net)
    n = symbp.derive(net, layout="numerator")
    assert n["W1"] == g["W1"].T and n["W1"].shape == (3, 2)
    assert n["z1"].shape == (1, 2)
    assert g.with_layout("numerator")["W2"] == n["W2"]


def test_latex_display_for_notebooks():
    g = symbp.derive(symbp.MLP([2, 2], output="identity", loss="mse"))
    latex = g._repr_latex_()
    assert latex.startswith("$") and r"\frac{\partial L}{\partial W1}" in latex


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="magic"), "method: expected one of chain, expand"),
    (dict(layout="sideways"), "layout: expected one of denominator, numerator"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(SymbpError, match=message):
        symbp.derive(symbp.MLP([2, 2]), **kwargs)


def test_progress_is_shown_when_asked_and_silent_otherwise(capsys):
    net = symbp.MLP([3, 2, 2])
    symbp.derive(net, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "symbp derive: chain a2", "symbp derive: chain z2", "symbp derive: chain a1", "symbp derive: chain z1",
        "symbp derive: chain: the parameters' gradients"]
    assert lines[-1].split(" (")[1].startswith("stage 5/5, ")
    symbp.derive(net)  # stderr is not a terminal under pytest: nothing, as with progress=False
    symbp.derive(net, method="expand", progress=False)
    assert capsys.readouterr().err == ""


def test_gradients_mapping_text_and_repr():
    net = symbp.MLP([2, 3, 2], output="identity", loss="mse")
    g = symbp.derive(net)
    names = ["W1", "b1", "W2", "b2", "z1", "a1", "z2", "a2"]
    assert list(g) == names and len(g) == 8 and len(g.with_layout("numerator")) == 8
    assert g.text("W1", 0, 1) == "dL/dW1[1,2] = dz1[1]*x[2]" and g.text("b2") == "dL/db2[1] = dz2[1]"
    # numerator layout: entry (1, 0) of the transposed matrix is the same partial, dL/dW1[1,2]
    assert g.with_layout("numerator").text("W1", 1, 0) == "dL/dW1[1,2] = dz1[1]*x[2]"
    assert g.text("W2", 1, 2) == "dL/dW2[2,3] = a1[3]*dz2[2]"  # SymPy orders the factors
    assert repr(g) == (f"Gradients({net!r}, method='chain', layout='denominator', names={names})")
    assert repr(g.with_layout("numerator")).endswith(f"layout='numerator', names={names})")


def test_progress_in_a_log_is_one_line_a_stage_even_for_wide_layers(capsys):
    # a stage of 17 entries would report "entry 16 of 17" on a terminal; a log (stderr not a terminal)
    # gets only the stage lines
    symbp.derive(symbp.MLP([2, 17, 2]), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "symbp derive: chain a2", "symbp derive: chain z2", "symbp derive: chain a1", "symbp derive: chain z1",
        "symbp derive: chain: the parameters' gradients"]
