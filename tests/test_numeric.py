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
