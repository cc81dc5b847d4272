"""Lambdified gradients against two independent engines: NumPy backprop and central differences."""

import numpy as np
import pytest

import symbp
from symbp import numeric
from symbp.errors import SymbpError

from conftest import config_id, configurations, make


@pytest.mark.parametrize("method", ["chain", "expand"])
@pytest.mark.parametrize("config", configurations(), ids=config_id)
def test_lambdified_matches_both_engines(config, method):
    net = make(config)
    fn = symbp.lambdify(net, symbp.derive(net, method=method))
    for seed in (0, 1):
        values = numeric.random_values(net, seed)
        got = fn(**values)
        assert {n: v.shape for n, v in got.items()} == {n: net.shape(n) for n in net.params + net.intermediates}
        assert numeric.max_rel_error(got, numeric.reference_gradients(net, values)) < 1e-12
        fd = numeric.finite_differences(net, values)
        assert fd.kink_crossings == []
        assert numeric.max_rel_error(got, fd.gradients) < 1e-8


def test_engines_disagree_with_a_wrong_gradient():
    # the checks can fail: perturb one derived entry and both engines see it
    net = symbp.MLP([3, 4, 2])
    grads = symbp.derive(net)
    grads._matrices["W1"] = grads._matrices["W1"].copy()
    grads._matrices["W1"][1, 2] += net.symbols("x")[0]
    values = numeric.random_values(net, 0)
    got = symbp.lambdify(net, grads)(**values)
    assert numeric.max_rel_error(got, numeric.reference_gradients(net, values), ["W1"]) > 1e-3
    assert numeric.max_rel_error(got, numeric.finite_differences(net, values, ["W1"]).gradients) > 1e-3


def test_large_logits_do_not_overflow():
    net = symbp.MLP([2, 3], output="softmax", loss="cross_entropy", batch=2)
    # dL/da1 = -y/a1 itself is out of float range where a softmax output underflows; the rest is not
    fn = symbp.lambdify(net, symbp.derive(net), names=["W1", "b1", "z1"])
    values = {"x": [[1.0, 0.0], [0.0, 1.0]], "y": [[0, 1, 0], [1, 0, 0]],
              "W1": [[800.0, 0.0], [0.0, 799.0], [-800.0, 0.0]], "b1": [[0.0], [1.0], [0.0]]}
    with np.errstate(over="raise", invalid="raise"):
        got = fn(**values)
    # logits row 1 = (800, 1, -800), row 2 = (0, 800, 0): softmax is one-hot to double precision
    expected = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]) / 2
    assert np.allclose(got["z1"], expected, atol=1e-300)
    assert np.allclose(got["z1"], numeric.reference_gradients(net, values)["z1"], atol=1e-300)


def test_finite_differences_report_kink_crossings():
    net = symbp.MLP([1, 1, 1], output="identity", loss="mse")
    values = {"x": [[1.0]], "y": [[0.0]], "W1": [[1.0]], "b1": [[-1.0 + 1e-6]], "W2": [[1.0]], "b2": [[0.0]]}
    fd = numeric.finite_differences(net, values, ["W1"])
    assert fd.kink_crossings == [("W1", (0, 0))]


def test_random_points_keep_away_from_kinks():
    net = symbp.MLP([4, 8, 8, 3], hidden="relu")
    values = numeric.random_values(net, 5, margin=0.05)
    assert numeric.min_kink_distance(net, values) >= 0.05


def test_value_errors_name_the_culprit():
    net = symbp.MLP([2, 2])
    fn = symbp.lambdify(net, symbp.derive(net))
    values = numeric.random_values(net, 0)
    with pytest.raises(SymbpError, match=r"W1: expected shape \(2, 2\), got \(2, 3\)"):
        fn(**dict(values, W1=np.zeros((2, 3))))
    with pytest.raises(SymbpError, match="missing value for 'b1'"):
        fn(**{k: v for k, v in values.items() if k != "b1"})


def test_numerator_layout_numbers():
    net = symbp.MLP([3, 2, 2])
    values = numeric.random_values(net, 0)
    den = symbp.lambdify(net, symbp.derive(net))(**values)
    num = symbp.lambdify(net, symbp.derive(net, layout="numerator"))(**values)
    assert np.array_equal(num["W1"], den["W1"].T)


# --------------------------------------------------------------------------- random points at real sizes


@pytest.mark.parametrize("seed", range(5))
def test_random_points_of_a_wide_layer_keep_every_unit_off_its_kink(seed):
    # 192 relu units: about 4% of them land within 0.05 of 0 in any one draw, so whole-point redraws
    # almost never succeed; units are moved off their kinks one at a time instead
    net = symbp.MLP([64, 192, 10])
    values = numeric.random_values(net, seed)
    assert numeric.min_kink_distance(net, values) >= 0.05
    assert values.near_kinks == []


@pytest.mark.parametrize("bias", [True, False])
def test_random_points_of_a_small_batch_keep_away_from_kinks(bias):
    net = symbp.MLP([32, 32, 32, 10], batch=4, bias=bias)
    for seed in range(3):
        values = numeric.random_values(net, seed)
        assert numeric.min_kink_distance(net, values) >= 0.05
        assert values.near_kinks == []


def test_random_points_of_a_large_batch_report_the_entries_left_near_a_kink():
    # 500 rows: no one bias moves every row of a unit off the kink; the point is returned and the
    # entries still within the margin are listed, exactly those
    net = symbp.MLP([8, 16, 3], batch=500)
    values = numeric.random_values(net, 0)
    z = numeric.forward_pass(net, values)["z1"]
    near = {(int(n), int(i)) for n, i in zip(*np.nonzero(np.abs(z) < 0.05))}
    assert near and set(index for name, index in values.near_kinks) == near
    assert {name for name, _ in values.near_kinks} == {"z1"}


def test_random_points_are_unchanged_when_the_first_draw_is_clear():
    net = symbp.MLP([4, 8, 8, 3], hidden="relu")
    rng = np.random.default_rng(5)
    first = {name: rng.normal(size=net.shape(name)) for name in ("x",) + net.params}
    for l, n in enumerate(net.sizes[:-1], 1):
        first[f"W{l}"] *= 1.0 / np.sqrt(n)
    values = numeric.random_values(net, 5)
    assert all(np.array_equal(values[name], first[name]) for name in first)


def test_a_correct_relu_backprop_verifies_at_a_batch_of_four():
    # the [code] route draws its points with random_values: it used to give up at this size
    net = symbp.MLP([32, 32, 32, 10], batch=4)

    def backward(v):
        return numeric.reference_gradients(net, v)

    report = symbp.verify(net, backward)
    assert report.ok and {r.verdict for r in report.results} == {"holds"}


def test_finite_difference_error_leaves_out_the_entries_that_cross_a_kink():
    net = symbp.MLP([1, 1, 1], output="identity", loss="mse")
    values = {"x": [[1.0]], "y": [[1.0]], "W1": [[1.0]], "b1": [[-1.0 + 1e-6]], "W2": [[1.0]], "b2": [[0.0]]}
    fd = numeric.finite_differences(net, values)
    truth = numeric.reference_gradients(net, values)
    assert ("W1", (0, 0)) in fd.kink_crossings and ("b1", (0, 0)) in fd.kink_crossings
    assert abs(fd.gradients["W1"][0, 0] - truth["W1"][0, 0]) > 1e-3  # across the kink: not a derivative
    error, excluded = fd.max_abs_error(truth)
    assert error < 1e-8 and excluded == len(fd.kink_crossings)


def test_lambdify_of_the_input_gradient():
    """grads.with_input() lambdifies dL/dx too: sympy.diff of the loss in x, evaluated at the point."""
    import sympy as sp

    net = symbp.network([{"op": "layernorm", "name": "h", "gamma": "g", "beta": "c"}], input=3, batch=2,
                        loss="a*y", reduction="sum")
    values = numeric.random_values(net, 0)
    got = symbp.lambdify(net, symbp.derive(net).with_input(), names=["x"])(**values)
    assert list(got) == ["x"] and got["x"].shape == (2, 3)
    point = {s: float(v) for name in net.inputs + net.params
             for s, v in zip(net.symbols(name), np.asarray(values[name], dtype=float).reshape(-1))}
    truth = np.array([float(sp.diff(net.loss, s).xreplace(point)) for s in net.symbols("x")]).reshape(2, 3)
    assert np.allclose(got["x"], truth, rtol=1e-10, atol=1e-12)
