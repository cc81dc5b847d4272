"""The symbolic network: shapes, local definitions, the written-out loss, and bad input."""

import pytest
import sympy as sp

import symbp
from symbp import numeric
from symbp.errors import SymbpError

from conftest import config_id, configurations, make


def test_shapes_follow_the_conventions():
    net = symbp.MLP([4, 5, 3, 3])
    assert [net.shape(n) for n in ("x", "W1", "b1", "z1", "W3", "y")] == [(4, 1), (5, 4), (5, 1), (5, 1), (3, 3), (3, 1)]
    batch = symbp.MLP([4, 5, 3, 3], batch=7)
    assert [batch.shape(n) for n in ("x", "W1", "b1", "z1", "a3", "y")] == [(7, 4), (5, 4), (5, 1), (7, 5), (7, 3), (7, 3)]
    assert net.symbols("W1")[1, 2] == sp.Symbol("W1_1_2", real=True)
    assert net.shape("a0") == (4, 1)


def test_local_definitions():
    net = symbp.MLP([2, 2, 2], batch=2)
    x, W, b = net.symbols("x"), net.symbols("W1"), net.symbols("b1")
    # z1[n, i] = sum_j x[n, j] W1[i, j] + b1[i]: rows are examples
    assert net.local("z1")[1, 0] == x[1, 0] * W[0, 0] + x[1, 1] * W[0, 1] + b[0]
    assert net.local("a1")[1, 0] == symbp.functions.relu(net.symbols("z1")[1, 0])
    z2 = net.symbols("z2")
    assert net.local("a2")[0, 1] == sp.exp(z2[0, 1]) / (sp.exp(z2[0, 0]) + sp.exp(z2[0, 1]))


def test_residual_local_definition_and_refusal():
    net = symbp.MLP([3, 3, 2, 2, 2], hidden="tanh", residual=True)
    assert net.residual_layers == (1, 3)
    assert net.local("a3")[0] == sp.tanh(net.symbols("z3")[0]) + net.symbols("a2")[0]
    with pytest.raises(SymbpError, match="layer 2 cannot have a skip connection"):
        symbp.MLP([3, 3, 2, 2, 2], residual=[2])
    with pytest.raises(SymbpError, match="no hidden layer"):
        symbp.MLP([3, 4, 2], residual=True)


@pytest.mark.parametrize("config", configurations(), ids=config_id)
def test_written_out_loss_equals_numpy_forward(config):
    net = make(config)
    values = numeric.random_values(net, 3)
    subs = {}
    for name in ("x", "y") + net.params:
        subs.update(zip(net.symbols(name), values[name].ravel()))
    symbolic = float(sp.N(net.loss.xreplace({k: sp.Float(v, 30) for k, v in subs.items()}), 20))
    assert numeric.forward_pass(net, values)["L"] == pytest.approx(symbolic, rel=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sizes=[4, 0, 3]), "width n1 = 0 must be a positive integer"),
    (dict(sizes=[4]), "need at least two widths"),
    (dict(sizes="4,5"), "expected a list of layer widths"),
    (dict(sizes=[4, 3], batch=-1), "batch: expected a positive number"),
    (dict(sizes=[4, 3], reduction="avg"), "reduction: expected 'mean' or 'sum'"),
    (dict(sizes=[4, 3, 3], hidden=["relu", "tanh"]), "2 activations given for 1 hidden layer"),
    (dict(sizes=[4, 3], output="identity"), "loss 'cross_entropy' takes the log of the outputs"),
    (dict(sizes=[4, 3], output="soft"), "unknown output 'soft'"),
    (dict(sizes=[4, 3], bias="yes"), "bias: expected true or false"),
])
def test_bad_input_names_the_culprit(kwargs, message):
    sizes = kwargs.pop("sizes")
    with pytest.raises(SymbpError) as info:
        symbp.MLP(sizes, **kwargs)
    assert message in str(info.value)


def test_unknown_variable():
    with pytest.raises(SymbpError, match="unknown variable 'W4'"):
        symbp.MLP([2, 2]).shape("W4")
    with pytest.raises(SymbpError, match="unknown variable 'b1'"):
        symbp.MLP([2, 2], bias=False).shape("b1")
