"""Proofs for all sizes (symbp.allsizes): true claims proved with symbolic widths and batch, false
claims never proved, claims true only at the given sizes refuted with those sizes named."""

import json

import pytest
import sympy as sp

import symbp
from symbp import allsizes, registry
import importlib

verify_module = importlib.import_module("symbp.verify")
from symbp.formula import parse


def _all_proved(net, claims=None):
    report = symbp.verify(net, claims or symbp.textbook(net))
    for r in report.results:
        assert (r.target, r.verdict, r.method, r.sizes) == (r.target, "holds", "all-sizes", "all"), r
    return report


@pytest.mark.parametrize("kwargs", [
    {},
    {"batch": 2},
    {"batch": 1},
    {"output": "sigmoid", "loss": "binary_cross_entropy", "hidden": "tanh"},
    {"output": "identity", "loss": "mse", "batch": 3, "hidden": "sigmoid", "reduction": "sum"},
    {"output": "softmax", "loss": "mse", "bias": False},
])
def test_textbook_claims_are_proved_for_all_sizes(kwargs):
    report = _all_proved(symbp.MLP([4, 5, 3, 3], **kwargs))
    assert "sizes" in report.results[0].to_json()
    assert "a proof for one layer holds at any depth" in report.results[0].detail


def test_softmax_cross_entropy_states_its_side_condition():
    report = _all_proved(symbp.MLP([4, 5, 3, 3], batch=2))
    assert report["z3"].claim == "(a3 - y) / N"
    assert report["z3"].assumptions == ("every target row sums to 1",)
    assert "assuming every target row sums to 1" in report["z3"].detail
    assert report.assumptions == ["every target row sums to 1"]
    assert report["W3"].assumptions == ()


@pytest.mark.parametrize("name", sorted(registry.ACTIVATIONS))
def test_every_registry_activation_is_proved(name):
    net = symbp.MLP([3, 4, 2], hidden=name, output="identity", loss="mse", batch=2)
    _all_proved(net)


def test_a_custom_activation_is_proved_through_its_own_derivative():
    _all_proved(symbp.MLP([3, 4, 2], hidden="x*sigmoid(x)", output="identity", loss="mse"))


def test_dropout_and_add_layers_are_proved():
    net = symbp.network([{"op": "affine", "out": 4, "name": "z1"}, {"op": "tanh", "name": "a1"},
                         {"op": "dropout", "mask": "m1", "name": "h1", "p": 0.25},
                         {"op": "affine", "out": 4, "name": "z2"}, {"op": "add", "from": "h1", "name": "r2"},
                         {"op": "affine", "out": 3, "name": "z3"}, {"op": "softmax", "name": "a3"}],
                        input=3, batch=2)
    _all_proved(net)


FALSE = {"W3": "a2 @ dz3.T", "z2": "W3.T @ dz3", "z3": "a3 + y", "a2": "W3 @ dz3", "b3": "2 * dz3",
         "W2": "dz2 @ a1.T * 1.0000001", "z1": "da1 * relu(z1)"}


@pytest.mark.parametrize("target,claim", list(FALSE.items()) +
                         [("a3", "-y / a3 / 3"), ("z2", "da2 * step(z2) * 1.5"), ("b1", "dz1 * dz1")])
def test_false_claims_are_never_proved(target, claim):
    net = symbp.MLP([4, 5, 3, 3])
    world = allsizes.World(net)
    with pytest.raises(allsizes.Undecided):
        allsizes.prove(net, target, parse(claim, net), world)
    result = symbp.verify(net, {target: claim}).results[0]
    assert result.verdict == "fails" and result.method != "all-sizes"


def test_a_number_standing_for_a_width_fails_with_the_width_named():
    net = symbp.MLP([4, 5, 3, 3], output="sigmoid", loss="binary_cross_entropy")
    r = symbp.verify(net, {"z3": "(a3 - y) / 3"}).results[0]
    assert (r.verdict, r.sizes, r.diagnosis) == ("fails", "all", "scaled")
    assert r.detail.startswith("holds only at n3 = 3, not for all sizes")
    assert r.expected == "(a3 - y) / n3"
    assert symbp.verify(net, {"z3": "(a3 - y) / n3"}).results[0].method == "all-sizes"


def test_a_number_standing_for_the_batch_fails_with_N_named():
    net = symbp.MLP([4, 5, 3, 3], batch=3)
    r = symbp.verify(net, {"z3": "(a3 - y) / 3", "b2": "dz2.T @ ones(3, 1)"})
    assert r["z3"].detail.startswith("holds only at N = 3") and r["z3"].expected == "(a3 - y) / N"
    assert r["b2"].verdict == "fails" and r["b2"].detail.startswith("holds only at N = 3")
    assert r["b2"].expected == "sum(dz2, axis=0).T"
    assert symbp.verify(net, {"b2": "dz2.T @ ones(N, 1)"}).results[0].method == "all-sizes"


def test_a_transpose_hidden_by_a_square_layer_fails():
    net = symbp.MLP([4, 5, 3, 3], batch=2)
    r = symbp.verify(net, {"W3": "dz3.T @ a2 * ones(n2, n3)"}).results[0]
    assert (r.verdict, r.sizes) == ("fails", "all")
    assert r.detail.startswith("holds only at n2 = 3, n3 = 3"), r.detail
    assert r.expected == "dz3.T @ a2"
    assert symbp.verify(net, {"W3": "dz3.T @ a2 * ones(n3, n2)"}).results[0].method == "all-sizes"


def test_a_sum_hidden_by_a_batch_of_one_fails():
    net = symbp.MLP([4, 5, 3, 3], batch=1)
    r = symbp.verify(net, {"b1": "dz1.T"}).results[0]
    assert (r.verdict, r.sizes) == ("fails", "all")
    assert r.detail.startswith("holds only at N = 1")
    assert r.expected == "sum(dz1, axis=0).T"


def test_a_layernorm_network_is_proved_and_a_claim_the_normal_form_cannot_show_falls_to_the_given_sizes():
    net = symbp.network([{"op": "affine", "out": 4, "name": "z1"}, {"op": "layernorm", "name": "h1"},
                         {"op": "relu", "name": "a1"}, {"op": "affine", "out": 3, "name": "z2"},
                         {"op": "softmax", "name": "a2"}], input=3, batch=2)
    _all_proved(net)
    net = symbp.network([{"op": "attention", "dk": 2, "name": "h1", "causal": True},
                         {"op": "affine", "out": 3, "name": "z2"}, {"op": "softmax", "name": "a2"}],
                        input=3, batch=3)
    claims = dict(symbp.textbook(net), z2="(sqrt(a2 ** 2) - y) / N")  # true (a2 > 0), not shown by the normal form
    report = symbp.verify(net, claims)
    assert report.ok
    by = {r.target: r for r in report.results}
    assert by["z2"].sizes == "given" and by["z2"].method != "all-sizes"
    assert "judged at the given sizes only" in by["z2"].detail
    assert by["h1K"].sizes == "all" and by["h1K"].method == "all-sizes"  # causal: dS opened to its truth
    assert by["W1"].sizes == "all" and by["W1"].method == "all-sizes"
    data = json.loads(json.dumps(report.to_json()))
    assert all(r["sizes"] in ("all", "given") for r in data["results"])


def test_mnist_sizes_build_no_concrete_entry(monkeypatch):
    net = symbp.MLP([784, 128, 64, 10], batch=4)
    claims = symbp.textbook(net)

    def refuse(*args, **kwargs):
        raise AssertionError("a concrete derivation was built")

    monkeypatch.setattr(verify_module, "derive", refuse)
    report = symbp.verify(net, claims)
    assert report.ok and all(r.method == "all-sizes" for r in report.results)


def test_the_truth_is_derived_in_index_form():
    net = symbp.MLP([4, 5, 3], batch=2)
    world = allsizes.World(net)
    r, c = sp.symbols("r c", integer=True, positive=True)
    truth = world.truth("W1", r, c)
    groups = allsizes.normal_form(truth, {r: world.width["z1"], c: world.width["x"]}, world, set())
    (signature, body), = groups.items()
    (k, hi), = signature
    assert hi == sp.Symbol("N", integer=True, positive=True)
    assert body == sp.IndexedBase("dz1")[k, r] * sp.IndexedBase("x")[k, c]
