"""The op table and networks of layers: every op is in a test network, derived by both methods alike,
and an MLP is the network of layers it builds.

The other facets of every op (verify and diagnosis, the numeric engines and compile, documents) are
tested over the same networks (``tests/op_networks.py``) in ``test_ops_*.py``.
"""

from fractions import Fraction
import random

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp.layers import network
from symbp.ops import OPS
from op_networks import configs, make

CONFIGS = configs()


def test_every_op_of_the_table_has_a_test_network():
    tested = {op for op, _ in CONFIGS.values()}
    assert set(OPS) | {"activation"} <= tested


def _point(net, seed):
    """Exact random values of every input and parameter (masks 0/1)."""
    rng = random.Random(seed)
    values = {}
    for name in net.inputs + net.params:
        for s in net.symbols(name):
            values[s] = sp.Integer(rng.randint(0, 1)) if name in net.masks else sp.Rational(rng.randint(-9, 9), 7)
    return values


@pytest.mark.parametrize("config", list(CONFIGS))
def test_chain_equals_expand_for_every_op(config):
    """The chain method's entries equal sympy.diff of the written-out loss (expand), at an exact random
    point carried in 30-digit floats: the forward stage by stage, then chain's error terms in order."""
    net = make(config)
    chain, expand = symbp.derive(net), symbp.derive(net, method="expand")
    point = {s: sp.Float(v, 30) for s, v in _point(net, seed=len(config)).items()}
    for stage in net.stages:
        point.update(zip(stage.symbols, stage.local.xreplace(point)))
    for symbol, expression in chain.definitions:
        point[symbol] = expression.xreplace(point)
    for name in net.params + (net.intermediates if net.n_params < 20 else ()):
        got, want = chain[name].xreplace(point), expand[name].xreplace(point)
        assert got.shape == want.shape == net.shape(name)
        assert np.abs(np.array((got - want).tolist(), dtype=float)).max() < 1e-25, name


def test_layer_norm_gradient_matches_the_textbook_identity_at_a_point():
    """dL/dh of a layer norm (no affine) with upstream g: (g - mean(g) - xhat mean(g xhat)) / sigma, the
    identity of Ba et al. (2016), checked against the derived truth at a rational point."""
    net = network([{"op": "identity", "name": "h"}, {"op": "layernorm", "affine": False, "name": "ln"}],
                  input=3, loss="0*y + a*a/2")
    grads = symbp.derive(net)
    h = sp.Matrix([sp.Rational(1, 2), sp.Rational(-3, 2), 2])
    point = dict(zip(net.symbols("x"), h)) | dict(zip(net.symbols("y"), [0, 0, 0]))
    truth = grads.written_out("h").xreplace(point)
    eps = sp.Rational(1, 100000)
    mu = sum(h) / 3
    sigma = sp.sqrt(sum((v - mu) ** 2 for v in h) / 3 + eps)
    xhat = (h - sp.ones(3, 1) * mu) / sigma
    g = xhat  # the loss a^2/2 gives upstream a = xhat
    expected = (g - sp.ones(3, 1) * (sum(g) / 3) - xhat * (sum(gi * xi for gi, xi in zip(g, xhat)) / 3)) / sigma
    assert max(abs(float(sp.N(v, 30))) for v in (truth - expected)) < 1e-25


def test_an_mlp_is_the_network_of_layers_it_builds():
    mlp = symbp.MLP([3, 4, 2], hidden="tanh", output="softmax", loss="cross_entropy", batch=2)
    net = mlp.network
    assert [layer.op.name for layer in net.layers] == ["affine", "tanh", "affine", "softmax"]
    assert net.params == mlp.params and net.intermediates == mlp.intermediates
    assert all(a.local == b.local for a, b in zip(net.stages, mlp.stages))
    assert net.loss == mlp.loss
    same = network([{"op": "affine", "out": 4}, {"op": "tanh"}, {"op": "affine", "out": 2}, {"op": "softmax"}],
                   input=3, batch=2)
    assert same.loss == mlp.loss


def test_defaults_fields_and_exact_numbers():
    net = network([{"op": "affine", "out": 2, "bias": False}, {"op": "layernorm", "eps": 0.001},
                   {"op": "dropout", "mask": "m", "p": 0.1}], input=2, batch=2, loss="mse")
    assert net.params == ("W1", "gamma2", "beta2")
    assert net.layers[1].cfg["eps"] == Fraction(1, 1000)
    assert net.layers[2].cfg["p"] == Fraction(1, 10)
    assert net.inputs == ("x", "y", "m") and net.shape("m") == (2, 2)
    assert net.size_names() == {"n0": 2, "n_x": 2, "n_z1": 2, "n_ln2mean": 1, "n_ln2var": 1, "n_ln2": 2,
                                "n_h3": 2, "N": 2}


@pytest.mark.parametrize("layers, kwargs, message", [
    ([{"op": "affine"}], {}, "layer 1 (z1, affine): missing field 'out'"),
    ([{"op": "afine", "out": 2}], {}, "layer 1: unknown op 'afine' (did you mean 'affine'?)"),
    ([{"op": "affine", "out": 2, "outs": 3}], {}, "layer 1 (z1, affine): unknown field 'outs'"),
    ([{"op": "affine", "out": 2}, {"op": "batchnorm"}], {}, "layer 2 (bn2, batchnorm): batchnorm needs a batch"),
    ([{"op": "affine", "out": 2}, {"op": "dropout"}], {}, "layer 2 (h2, dropout): missing field 'mask'"),
    ([{"op": "affine", "out": 2, "name": "h"}, {"op": "relu", "name": "h"}], {},
     "layer 2 (h, relu): name 'h' is already used by layer 1 (h, affine)"),
    ([{"op": "affine", "out": 2}, {"op": "add", "from": "q"}], {}, "layer 2 (r2, add): from = 'q' is not an earlier"),
    ([{"op": "affine", "out": 3}, {"op": "add", "from": "x"}], {}, "layer 2 (r2, add): from = 'x' has 2 features"),
    ([{"op": "affine", "out": 2, "name": "dense"}], {}, "name 'dense' begins with d"),
    ([{"op": "affine", "out": 2, "name": "n1"}], {}, "name 'n1' is reserved"),
    ([{"op": "affine", "out": 2}, {"op": "layernorm", "eps": -1}], {}, "layer 2 (ln2, layernorm): eps: expected a positive"),
    ([{"op": "attention", "dk": 2}], {}, "layer 1 (att1, attention): attention needs the tokens as the rows"),
    ([{"op": "affine", "out": 2}, {"op": "relu"}], {"loss": "cross_entropy"},
     "loss 'cross_entropy' takes the log of the outputs, which layer 2 (a1, relu) does not keep in (0, 1)"),
    ([{"op": "affine", "out": 2}], {"loss": "hinge"}, "unknown loss 'hinge'"),
    ([{"op": "affine", "out": 2}, {"op": "activation", "expr": "__import__('os')"}], {},
     "layer 2 (activation): activation \"__import__('os')\", column 1: unknown function '__import__'"),
])
def test_bad_layers_are_one_line_naming_the_layer(layers, kwargs, message):
    with pytest.raises(symbp.SymbpError) as error:
        network(layers, input=2, **({"loss": "mse"} | kwargs))
    assert str(error.value).startswith(message) or message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_an_activation_added_as_one_row_gets_the_whole_pipeline(monkeypatch):
    """Adding is cheap: one row of the registry (here the inverse square root unit, z / sqrt(1 + z^2),
    with its NumPy form, the reference engine's derivative and its textbook f') and nothing else gives
    derive, verify with diagnosis, compile and the document."""
    from symbp import document, numeric, registry
    from symbp.ops import table

    row = registry._activation("isru", r"\operatorname{ISRU}", lambda z: z / sp.sqrt(1 + z ** 2),
                               lambda z: z / np.sqrt(1 + z * z), lambda z: (1 + z * z) ** -1.5,
                               textbook="(1 + z ** 2) ** (-3/2)")
    monkeypatch.setitem(registry.ACTIVATIONS, "isru", row)
    monkeypatch.setitem(table.OPS, "isru", table.activation_op(row))
    net = network([{"op": "affine", "out": 3}, {"op": "isru"}, {"op": "affine", "out": 2}], input=2, batch=2,
                  loss="mse")
    grads = symbp.derive(net)
    check = numeric.check_network(net, grads, 0)
    assert check.finite_differences < 1e-7 and check.torch is None and check.torch_skipped
    claims = symbp.textbook(net)
    assert claims["z1"] == "da1 * (1 + z1 ** 2) ** (-3/2)"
    report = symbp.verify(net, claims, grads=grads)
    assert report.ok, report.text()
    missing = symbp.verify(net, {"z1": "da1"}, grads=grads)["z1"]
    assert (missing.verdict, missing.diagnosis) == ("fails", "missing-activation-derivative")
    fast = symbp.compile(net, claims)
    values = numeric.random_values(net, 1)
    got, want = fast(**values), numeric.lambdify(net, grads)(**values)
    assert all(np.allclose(got[n], want[n], rtol=1e-10, atol=1e-12) for n in net.params)
    tex = document.render(net, grads=grads, report=report)
    assert r"\operatorname{ISRU}" in tex
