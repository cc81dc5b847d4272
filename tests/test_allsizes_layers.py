"""Proofs for all sizes of the ops with internal stages (layer norm, RMSNorm, batch norm, attention):
their index forms are the ops' own forwards, their textbook claims are proved with symbolic widths and
batch, and wrong claims (a sign, a missing 1/D, a transposed gamma, the number 4 written for the width,
a transpose a square score matrix hides, sqrt(2) for sqrt(dk)) are not."""

from dataclasses import replace
import random

import pytest
import sympy as sp

import symbp
from symbp import allsizes
from symbp.formula import parse
from symbp.ops import table

from op_networks import make

NORMS = {
    "layernorm": make,
    "layernorm-single": make,
    "rmsnorm": make,
    "batchnorm": make,
    "rmsnorm-batch": lambda _: symbp.network(
        [{"op": "affine", "out": 3}, {"op": "rmsnorm"}, {"op": "affine", "out": 2}], input=2, batch=2, loss="mse"),
    "layernorm-plain-batch": lambda _: symbp.network(
        [{"op": "affine", "out": 4}, {"op": "layernorm", "affine": False}, {"op": "sigmoid"},
         {"op": "affine", "out": 3}, {"op": "softmax"}], input=2, batch=3, loss="cross_entropy"),
    "batchnorm-plain": lambda _: symbp.network(
        [{"op": "affine", "out": 3}, {"op": "batchnorm", "affine": False}, {"op": "affine", "out": 2}],
        input=2, batch=4, loss="mse", reduction="sum"),
}


ATTENTION = {
    "attention": make,
    "attention-causal": make,
    "attention-wide": lambda _: symbp.network(
        [{"op": "attention", "dk": 3}, {"op": "affine", "out": 2}, {"op": "softmax"}], input=2, batch=4),
}


def _norm_layer(net):
    (layer,) = [l for l in net.layers if l.op.name in ("layernorm", "rmsnorm", "batchnorm", "attention")]
    return layer


@pytest.mark.parametrize("config", sorted(NORMS))
def test_textbook_claims_of_the_norms_are_proved_for_all_sizes(config):
    net = NORMS[config](config)
    layer = _norm_layer(net)
    book = symbp.textbook(net)
    assert layer.inp in book and set(layer.params.values()) <= set(book)
    report = symbp.verify(net, book)
    got = {r.target: (r.verdict, r.method, r.sizes) for r in report.results}
    assert got == {target: ("holds", "all-sizes", "all") for target in book}
    assert f"the true upstream d{layer.name}" in report[layer.inp].detail


def _entries_at_a_point(net, name, world, layer, seed=1):
    """(index form, concrete forward) of ``name`` (the layer's output or a stage) at a random point,
    each entry as a number: the index form with the sizes put in and its sums done, the forward from
    the network's own local expressions with the layer's stages substituted."""
    rows, cols = net.shape(name)
    sizes = {world.width[layer.inp]: layer.n_in, world.width[layer.name]: layer.n_out}
    if world.N is not None:
        sizes[world.N] = net.batch
    forms = world._inputs(layer, world.raw)[3]
    key = {v: k for k, v in layer.stages.items()}.get(name)
    index = sp.zeros(rows, cols)
    for r in range(rows):
        for c in range(cols):
            e, i = (r + 1, c + 1) if net.batch else (c + 1, r + 1)
            if name == layer.name:
                entry = world._local(layer, sp.Integer(e), sp.Integer(i))
            else:  # a stage read as a variable (attention's) in its inputs, a norm's folded in
                entry = forms[key][1](sp.Integer(e), sp.Integer(i))
            index[r, c] = entry.xreplace(sizes).doit()
    index = index.replace(lambda u: isinstance(u, sp.Indexed),
                          lambda u: net.symbols(str(u.base))[int(u.indices[0]) - 1, int(u.indices[1]) - 1])
    forward = net.local(name)
    for stage in reversed(list(layer.stages.values())):  # a later stage reads the earlier ones
        if stage not in world.nodes:
            forward = forward.xreplace(dict(zip(net.symbols(stage), net.local(stage))))
    rng = random.Random(seed)
    point = {s: sp.Rational(rng.randint(-30, 30), 7) for s in (index.free_symbols | forward.free_symbols)}
    folded = tuple(stage for stage in layer.stages.values() if stage not in world.nodes)
    assert not folded or not any(str(s).startswith(folded) for s in point)
    return index.xreplace(point), forward.xreplace(point)


@pytest.mark.parametrize("config", sorted(NORMS) + sorted(ATTENTION))
def test_the_index_form_is_the_forward_at_a_point(config):
    net = {**NORMS, **ATTENTION}[config](config)
    layer, world = _norm_layer(net), allsizes.World(net)
    for name in [*layer.stages.values(), layer.name]:
        index, forward = _entries_at_a_point(net, name, world, layer)
        assert index.shape == forward.shape == net.shape(name)
        for u, v in zip(index, forward):
            assert abs(sp.N(u - v, 60)) < sp.Float("1e-45"), (name, u, v)


def test_a_wrong_index_form_is_caught_at_the_point_and_proves_nothing():
    def unscaled(X, P, E, cfg, n_in, N):  # the variance without its 1/n
        forms = table._layernorm_index_stages(X, P, E, cfg, n_in, N)
        (shape, var) = forms["var"]
        forms["var"] = (shape, lambda e, i: var(e, i) * n_in)
        return forms

    row = replace(table.LAYERNORM, index_stages=unscaled)
    net = symbp.network([{"op": "affine", "out": 3}, {"op": row, "name": "ln2"}, {"op": "affine", "out": 2}],
                        input=2, batch=2, loss="mse")
    layer, world = _norm_layer(net), allsizes.World(net)
    index, forward = _entries_at_a_point(net, "ln2", world, layer)
    assert any(abs(sp.N(u - v, 30)) > 1e-6 for u, v in zip(index, forward))
    book = symbp.textbook(net)
    assert allsizes.try_prove(net, "z1", parse(book["z1"], net), world)[0] is None


LN = "((dln2 * gamma2.T) - {m1} - ((z1 - ln2mean) / {s}) * {m2}) / {s}"
_S = "sqrt(ln2var + (1/100000))"
_G = "(dln2 * gamma2.T)"


def _ln(m1=f"mean({_G}, axis=1)", m2=f"mean({_G} * ((z1 - ln2mean) / {_S}), axis=1)", s=_S, sign="-"):
    text = LN.format(m1=m1, m2=m2, s=s)
    return text if sign == "-" else text.replace(" - ((z1", " + ((z1")


def _layernorm4():
    return symbp.network([{"op": "affine", "out": 4}, {"op": "layernorm"}, {"op": "affine", "out": 2}],
                         input=3, batch=2, loss="mse")


WRONG = [
    ("layernorm", "z1", _ln(sign="+")),  # the sign of the variance term
    ("layernorm", "z1", _ln(m1=f"sum({_G}, axis=1)")),  # a missing 1/D
    ("layernorm", "z1", _ln(m2=f"sum({_G} * ((z1 - ln2mean) / {_S}), axis=1)")),
    ("layernorm", "z1", _ln(s="sqrt(ln2var + (1/10000))")),  # another eps
    ("layernorm", "z1", f"({_G} - mean({_G}, axis=1)) / {_S}"),  # without the variance term
    ("layernorm", "gamma2", f"-sum(dln2 * ((z1 - ln2mean) / {_S}), axis=0).T"),
    ("layernorm", "gamma2", f"sum(dln2 * (z1 / {_S}), axis=0).T"),
    ("layernorm", "gamma2", f"mean(dln2 * ((z1 - ln2mean) / {_S}), axis=0).T"),
    ("layernorm", "beta2", "mean(dln2, axis=0).T"),
    ("rmsnorm", "z1", "(drms2 * gamma2) / sqrt(rms2ms + (1/100000)) + z1 * mean((drms2 * gamma2) * z1, axis=0) "
                      "/ sqrt(rms2ms + (1/100000)) ** 3"),
    ("rmsnorm", "z1", "(drms2 * gamma2) / sqrt(rms2ms + (1/100000)) - z1 * sum((drms2 * gamma2) * z1, axis=0) "
                      "/ sqrt(rms2ms + (1/100000)) ** 3"),
    ("rmsnorm", "z1", "(drms2 * gamma2) / sqrt(rms2ms + (1/100000)) - z1 * mean((drms2 * gamma2) * z1, axis=0) "
                      "/ sqrt(rms2ms + (1/100000)) ** 2"),
    ("rmsnorm", "gamma2", "drms2 * z1 / (rms2ms + (1/100000))"),
    ("batchnorm", "z1", "((dbn2 * gamma2.T) - mean((dbn2 * gamma2.T), axis=1) - ((z1 - bn2mean) / "
                        "sqrt(bn2var + (1/100000))) * mean((dbn2 * gamma2.T) * ((z1 - bn2mean) / "
                        "sqrt(bn2var + (1/100000))), axis=1)) / sqrt(bn2var + (1/100000))"),  # the wrong axis
    ("batchnorm", "z1", "((dbn2 * gamma2.T) - mean((dbn2 * gamma2.T), axis=0)) / sqrt(bn2var + (1/100000))"),
    ("batchnorm", "gamma2", "mean(dbn2 * ((z1 - bn2mean) / sqrt(bn2var + (1/100000))), axis=0).T"),
]


@pytest.mark.parametrize("config,target,claim", WRONG)
def test_wrong_norm_claims_are_never_proved(config, target, claim):
    net = make(config)
    assert allsizes.try_prove(net, target, parse(claim, net))[0] is None
    result = symbp.verify(net, {target: claim}).results[0]
    assert result.verdict == "fails" and result.method != "all-sizes"


def test_a_transposed_gamma_that_a_square_batch_hides_fails():
    net = symbp.network([{"op": "affine", "out": 3}, {"op": "layernorm"}, {"op": "affine", "out": 2}],
                        input=2, batch=3, loss="mse")  # N = D = 3: gamma2 read per example still has a shape
    claim = _ln().replace("gamma2.T", "gamma2")
    assert allsizes.try_prove(net, "z1", parse(claim, net))[0] is None
    result = symbp.verify(net, {"z1": claim}).results[0]
    assert result.verdict == "fails" and result.method != "all-sizes"


@pytest.mark.parametrize("target,claim", [
    ("z1", _ln(m1=f"sum({_G}, axis=1) / 4", m2=f"sum({_G} * ((z1 - ln2mean) / {_S}), axis=1) / 4")),
    ("z1", _ln(m1=f"sum({_G}, axis=1) / n_z1", m2=f"sum({_G} * ((z1 - ln2mean) / {_S}), axis=1) / 4")),
])
def test_the_number_4_for_the_width_holds_at_d_4_only(target, claim):
    net = _layernorm4()
    assert allsizes.try_prove(net, target, parse(claim, net))[0] is None
    result = symbp.verify(net, {target: claim}).results[0]
    assert (result.verdict, result.sizes) == ("fails", "all"), result
    assert "n_z1 = 4" in result.detail
    assert result.expected == symbp.textbook(net)[target]
    fixed = claim.replace("/ 4", "/ n_z1")
    proved = symbp.verify(net, {target: fixed}).results[0]
    assert (proved.verdict, proved.method, proved.sizes) == ("holds", "all-sizes", "all")


@pytest.mark.parametrize("config", ["attention", "attention-wide"])
def test_textbook_claims_of_attention_are_proved_for_all_sizes(config):
    net = ATTENTION[config](config)
    book = symbp.textbook(net)
    assert book["att1Q"] == "datt1S @ att1K / sqrt(n_att1)"
    report = symbp.verify(net, book)
    got = {r.target: (r.verdict, r.method, r.sizes) for r in report.results}
    assert got == {target: ("holds", "all-sizes", "all") for target in book}
    assert "the true upstream datt1S" in report["att1Q"].detail


def test_causal_attention_proves_every_claim_its_score_upstream_opened_to_its_own_truth():
    # the claim dS @ K / sqrt(dk) reads the upstream dS above the diagonal, where the true one is 0: with
    # dS a free symbol the normal form cannot see that; with dS replaced by its own truth (in dP) it can
    net = make("attention-causal")
    report = symbp.verify(net, symbp.textbook(net))
    assert report.ok
    assert {(r.method, r.sizes) for r in report.results} == {("all-sizes", "all")}
    world = allsizes.World(net)
    for target, wrong in (("att1Q", "datt1S @ att1K"), ("att1Q", "datt1S.T @ att1K / sqrt(n_att1)"),
                          ("att1K", "datt1S @ att1Q / sqrt(n_att1)"), ("att1Q", "-datt1S @ att1K / sqrt(n_att1)"),
                          ("att1K", "datt1S.T @ att1Q / 2")):
        assert allsizes.try_prove(net, target, parse(wrong, net), world)[0] is None, wrong
        result = symbp.verify(net, {target: wrong}).results[0]
        assert result.verdict == "fails", (wrong, result)


WRONG_ATTENTION = [
    ("att1Q", "datt1S @ att1K"),  # without the scale
    ("att1Q", "datt1S.T @ att1K / sqrt(n_att1)"),  # a transpose the square scores hide
    ("att1K", "datt1S @ att1Q / sqrt(n_att1)"),
    ("att1S", "datt1P"),  # without the softmax Jacobian
    ("att1S", "datt1P * att1P * (1 - att1P)"),  # softmax as entry-wise
    ("att1S", "att1P * (datt1P - sum(att1P * datt1P, axis=0))"),  # the wrong axis
    ("att1V", "att1P @ datt1"),
    ("att1P", "datt1 @ att1V.T / N"),
    ("Wq1", "datt1K.T @ x"),
    ("Wv1", "x.T @ datt1V"),
]


@pytest.mark.parametrize("target,claim", WRONG_ATTENTION)
def test_wrong_attention_claims_are_never_proved(target, claim):
    net = make("attention")  # n0 = dk = N = 2: every transpose and size coincides
    assert allsizes.try_prove(net, target, parse(claim, net))[0] is None
    result = symbp.verify(net, {target: claim}).results[0]
    assert result.verdict == "fails" and result.method != "all-sizes"


def test_sqrt_2_for_sqrt_dk_holds_at_dk_2_only():
    net = make("attention")
    claim = "datt1S @ att1K / sqrt(2)"
    assert allsizes.try_prove(net, "att1Q", parse(claim, net))[0] is None
    result = symbp.verify(net, {"att1Q": claim}).results[0]
    assert (result.verdict, result.sizes) == ("fails", "all"), result
    assert "n_att1 = 2" in result.detail
    assert result.expected == "datt1S @ att1K / sqrt(n_att1)"
