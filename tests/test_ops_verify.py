"""verify, textbook and the diagnosis for every op of the table (tests/op_networks.py configs)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

import symbp
from op_networks import configs, make
from symbp.ops import table
from symbp.verify import _network_textbook, textbook, verify

CONFIGS = sorted(configs())


def _mistakes():
    """(config, layer position, mistake name, {target: assembled wrong claim}) for every row's mistakes."""
    out = []
    for cid in CONFIGS:
        net = make(cid)
        for layer in net.layers:
            for name, claims in layer.op.mistakes(layer.context(net)):
                wrong = _network_textbook(net, replace=(layer.position, claims))
                out.append(pytest.param(cid, name, {t: wrong[t] for t in claims if t in wrong},
                                        id=f"{cid}-{name}"))
    return out


@pytest.mark.parametrize("cid", CONFIGS)
def test_textbook_claims_hold(cid):
    net = make(cid)
    claims = textbook(net)
    assert claims, cid
    report = verify(net, claims)
    for r in report.results:
        assert r.verdict == "holds", (cid, r.target, r.claim, r.detail)
        assert r.method in ("all-sizes", "symbolic", "exact-random", "numeric")
        assert r.sizes == ("all" if r.method == "all-sizes" else "given")
    # every parameter gets a claim (the op table's backward covers it)
    assert set(net.params) <= set(claims)


@pytest.mark.parametrize("cid,name,wrong", _mistakes())
def test_row_mistakes_are_named(cid, name, wrong):
    net = make(cid)
    report = verify(net, wrong)
    for r in report.results:
        assert r.verdict == "fails", (r.target, r.claim)
        assert r.diagnosis == name, (r.target, r.claim, r.diagnosis, r.detail)


def test_every_row_with_mistakes_is_exercised():
    named = {p.values[1] for p in _mistakes()}
    assert {"layernorm-statistics-as-constants", "layernorm-without-the-variance-term",
            "batchnorm-statistics-as-constants", "batchnorm-without-the-variance-term",
            "rmsnorm-scale-as-constant", "dropout-without-the-scale", "residual-without-the-skip-term",
            "attention-without-the-scale", "attention-without-the-softmax-jacobian",
            "attention-softmax-as-entry-wise", "softmax-as-entry-wise"} <= named


def test_attention_without_the_scale_keeps_the_factor():
    net = make("attention")  # dk = 2: the truth is 1/sqrt(2) times the claim
    r = verify(net, {"att1Q": "datt1S @ att1K"}).results[0]
    assert (r.verdict, r.diagnosis) == ("fails", "attention-without-the-scale")
    assert r.factor == pytest.approx(1 / math.sqrt(2), rel=1e-12)


def test_dropout_without_the_scale_keeps_the_factor():
    r = verify(make("dropout"), {"z1": "dh2 * m1"}).results[0]
    assert (r.diagnosis, r.factor) == ("dropout-without-the-scale", pytest.approx(4 / 3))


def test_residual_without_the_skip_term():
    net = make("add")  # h is read by tanh (a1) and by the add (r3)
    assert textbook(net)["h"] == "da1 * (1 - a1 ** 2) + dr3"
    r = verify(net, {"h": "da1 * (1 - a1 ** 2)"}).results[0]
    assert (r.verdict, r.diagnosis) == ("fails", "residual-without-the-skip-term")
    assert verify(net, {"h": "da1 * (1 - a1 ** 2) + dr3"}).ok


def _first_param_claim(net):
    claims = textbook(net)
    return next((p, claims[p]) for p in net.params if p in claims)


@pytest.mark.parametrize("cid", CONFIGS)
def test_generic_diagnoses(cid):
    net = make(cid)
    target, claim = _first_param_claim(net)
    sign = verify(net, {target: f"-({claim})"}).results[0]
    assert (sign.verdict, sign.diagnosis) == ("fails", "sign"), sign.detail
    scaled = verify(net, {target: f"2 * ({claim})"}).results[0]
    assert (scaled.verdict, scaled.diagnosis, scaled.factor) == ("fails", "scaled", 0.5), scaled.detail
    transposed = verify(net, {target: f"({claim}).T"}).results[0]
    assert (transposed.verdict, transposed.diagnosis) == ("fails", "transposed"), transposed.detail


def test_textbook_of_fused_and_loss_rows():
    assert textbook(make("affine"))["z1"] == "(a1 - y) / N"  # softmax + cross-entropy, mean over the batch
    assert textbook(make("softmax"))["a1"] == "2 * (a1 - y) / n_a1 / N"  # the loss row's backward, n by name
    assert textbook(make("custom-loss"))["a1"] == "tanh((a1 + ((-1) * y))) / N"
    report = verify(make("affine"), {"z1": "(a1 - y) / N"})
    assert report.ok and report.assumptions == ["every target row sums to 1"]


# ---------------------------------------------------------------- code claims


def _dropout_backward(scale):
    def backward(v):
        z1 = v["x"] @ v["W1"].T + v["b1"].T
        h2 = z1 * v["m1"] / 0.75
        z2 = h2 @ v["W2"].T + v["b2"].T
        dz2 = 2 * (z2 - v["y"]) / 2 / 2
        dh2 = dz2 @ v["W2"]
        dz1 = dh2 * v["m1"] * scale
        return {"W1": dz1.T @ v["x"], "b1": dz1.sum(axis=0, keepdims=True).T, "W2": dz2.T @ h2,
                "b2": dz2.sum(axis=0, keepdims=True).T}
    return backward


def _attention_backward(root):
    def backward(v):
        x = v["x"]
        Q, K, V = x @ v["Wq1"].T, x @ v["Wk1"].T, x @ v["Wv1"].T
        S = Q @ K.T / math.sqrt(2)
        E = np.exp(S - S.max(axis=1, keepdims=True))
        P = E / E.sum(axis=1, keepdims=True)
        att = P @ V
        z1 = att @ v["W1"].T + v["b1"].T
        dz1 = 2 * (z1 - v["y"]) / 2 / len(x)  # mse over 2 outputs, mean over the rows
        datt = dz1 @ v["W1"]
        dP, dV = datt @ V.T, P.T @ datt
        dS = P * (dP - (P * dP).sum(axis=1, keepdims=True))
        dQ, dK = dS @ K / root, dS.T @ Q / root
        return {"Wq1": dQ.T @ x, "Wk1": dK.T @ x, "Wv1": dV.T @ x, "W1": dz1.T @ att,
                "b1": dz1.sum(axis=0, keepdims=True).T}
    return backward


def test_code_claims_dropout():
    net = make("dropout")
    right = verify(net, _dropout_backward(1 / 0.75))
    assert right.ok and {r.target for r in right.results} == set(net.params)
    wrong = {r.target: r for r in verify(net, _dropout_backward(1.0)).results}
    assert wrong["W1"].verdict == wrong["b1"].verdict == "fails"
    assert wrong["W1"].diagnosis == "scaled" and wrong["W1"].factor == pytest.approx(4 / 3)
    assert wrong["W2"].verdict == wrong["b2"].verdict == "holds"


def test_code_claims_attention():
    net = make("attention")
    assert verify(net, _attention_backward(math.sqrt(2))).ok
    wrong = {r.target: r for r in verify(net, _attention_backward(1.0)).results}
    assert wrong["Wq1"].verdict == wrong["Wk1"].verdict == "fails"
    assert wrong["Wq1"].factor == pytest.approx(1 / math.sqrt(2))
    assert all(wrong[p].verdict == "holds" for p in ("Wv1", "W1", "b1"))


def test_code_claims_see_the_masks():
    net = make("dropout")
    seen = []

    def backward(v):
        seen.append(v["m1"])
        return _dropout_backward(1 / 0.75)(v)

    assert verify(net, backward).ok
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in seen) and any(m.any() for m in seen)


# ---------------------------------------------------------------- deliberately wrong rows


def test_a_wrong_layernorm_row_fails(monkeypatch):
    def constants(c):  # treating the mean and the variance as constants
        claims = table.LAYERNORM.backward(c)
        gamma = c.params["gamma"]
        claims[c.inp] = f"(d{c.out} * {c.as_feature(gamma)}) / sqrt({c.stages['var']} + {c.num(c.cfg['eps'])})"
        return claims

    monkeypatch.setitem(table.OPS, "layernorm", dataclasses.replace(table.LAYERNORM, backward=constants, mistakes=lambda c: ()))
    net = make("layernorm")
    report = verify(net, textbook(net))
    assert not report.ok
    assert [r.target for r in report.results if not r.ok] == ["z1"]


def test_a_wrong_affine_row_fails(monkeypatch):
    def transposed(c):
        claims = table.AFFINE.backward(c)
        W = c.params["W"]
        claims[W] = f"({claims[W]}).T"
        return claims

    monkeypatch.setitem(table.OPS, "affine", dataclasses.replace(table.AFFINE, backward=transposed))
    net = make("layernorm")  # W1 is (3, 2), W2 (2, 3): each transposed claim has the wrong shape
    report = verify(net, textbook(net))
    bad = {r.target: r for r in report.results if not r.ok}
    assert set(bad) == {"W1", "W2"}
    assert all(r.diagnosis == "transposed" for r in bad.values())


def _mid_attention(monkeypatch, digits=40):
    """An attention block whose exact values outgrow a (lowered) digit budget: each softmax row has its own
    denominator, and the gradients of the weights sum over the rows."""
    import symbp

    V = symbp_verify()
    monkeypatch.setattr(V, "EXACT_DIGITS", digits)
    monkeypatch.setattr(V, "SYMBOLIC_LIMIT", 0)  # straight to the exact tier
    return symbp.network([{"op": "attention", "dk": 4}, {"op": "affine", "out": 3}, {"op": "softmax"}],
                         input=6, batch=4)


def test_attention_past_the_exact_budget_is_judged_by_floats(monkeypatch):
    net = _mid_attention(monkeypatch)
    claims = textbook(net)
    report = verify(net, {t: claims[t] for t in ("Wq1", "att1Q", "att1S", "z1")}, sizes="given")
    for r in report.results:
        assert r.verdict == "holds", (r.target, r.detail)
    grown = [r for r in report.results if r.method == "numeric"]
    assert {"Wq1", "att1Q"} <= {r.target for r in grown}
    for r in grown:
        assert re.match(r"judged with 3\d-digit floats: the exact values grew past 40 digits \(\d+ at datt1", r.detail), \
            r.detail
    # below the budget the exact tier still decides (the output's gradient needs no softmax row sums)
    assert report["z1"].method == "exact-random"
    # with the default budget the same claims are exact
    monkeypatch.setattr(symbp_verify(), "EXACT_DIGITS", 300)
    assert verify(net, {"Wq1": claims["Wq1"]}, sizes="given")["Wq1"].method == "exact-random"


def test_wrong_attention_claim_past_the_exact_budget_fails(monkeypatch):
    net = _mid_attention(monkeypatch)
    r = verify(net, {"att1Q": "datt1S @ att1K"})["att1Q"]  # the 1/sqrt(dk) forgotten
    assert (r.verdict, r.method, r.diagnosis) == ("fails", "numeric", "attention-without-the-scale")
    assert r.factor == pytest.approx(0.5, rel=1e-12)
    assert "judged with 30-digit floats: the exact values grew past 40 digits" in r.detail
    r = verify(net, {"Wq1": "(datt1S @ att1K).T @ x"})["Wq1"]
    assert (r.verdict, r.method) == ("fails", "numeric")


def symbp_verify():
    import sys

    return sys.modules["symbp.verify"]  # the module (symbp.verify is also the function)


# ---------------------------------------------------------------- one layer on its own: dL/dx

LN_DX = ("((dh * g.T) - mean(dh * g.T, axis={a}) - ((x - hmean) / sqrt(hvar + 1e-5))"
         " * mean(dh * g.T * (x - hmean) / sqrt(hvar + 1e-5), axis={a})) / sqrt(hvar + 1e-5)")
LN_DX_NO_VAR = "(dh * g.T - mean(dh * g.T, axis={a})) / sqrt(hvar + 1e-5)"

# op: (layer, width, batch, the right dx written by hand, a wrong one missing a term, its diagnosis)
LAYER_DX = {
    "layernorm": ({"op": "layernorm", "name": "h", "gamma": "g", "beta": "c"}, 4, 3,
                  LN_DX.format(a=1), LN_DX_NO_VAR.format(a=1), "layernorm-without-the-variance-term"),
    "batchnorm": ({"op": "batchnorm", "name": "h", "gamma": "g", "beta": "c"}, 3, 3,
                  LN_DX.format(a=0), LN_DX_NO_VAR.format(a=0), "batchnorm-without-the-variance-term"),
    "attention": ({"op": "attention", "dk": 2, "name": "h", "Wq": "Wq", "Wk": "Wk", "Wv": "Wv"}, 3, 3,
                  "dhQ @ Wq + dhK @ Wk + dhV @ Wv", "dhQ @ Wq + dhK @ Wk", "other"),
    "affine": ({"op": "affine", "out": 2, "name": "h", "W": "W", "b": "b"}, 3, 2, "dh @ W", "dh @ W + 1", "other"),
}


def _layer(op):
    spec, width, batch = LAYER_DX[op][:3]
    return symbp.network([spec], input=width, batch=batch, loss="a*y", reduction="sum")  # dL/dh = y


@pytest.mark.parametrize("op", sorted(LAYER_DX))
def test_a_layers_input_gradient_is_judged(op):
    """x is a target: one op's backward with the upstream gradient y as input, judged against the truth."""
    net = _layer(op)
    right, missing, diagnosis = LAYER_DX[op][3:]
    (r,) = verify(net, {"x": right}).results
    assert (r.target, r.verdict) == ("x", "holds"), r.detail
    (r,) = verify(net, {"x": f"-({right})"}).results
    assert (r.verdict, r.diagnosis) == ("fails", "sign"), r.detail
    (r,) = verify(net, {"x": missing}).results
    assert (r.verdict, r.diagnosis) == ("fails", diagnosis), r.detail
    assert r.element is not None and r.expected and r.got


def test_the_fused_softmax_cross_entropy_in_x():
    net = symbp.network([{"op": "softmax", "name": "h"}], input=3, loss="cross_entropy")
    (r,) = verify(net, {"x": "h - y"}).results
    assert r.verdict == "holds" and r.assumptions == ("every target row sums to 1",)
    (r,) = verify(net, {"x": "h - y + 1"}).results
    assert r.verdict == "fails"


def test_the_input_is_listed_among_the_targets():
    net = _layer("layernorm")
    with pytest.raises(symbp.SymbpError, match=r"no gradient named 'xx'.*targets: x, g, c, hmean, hvar, h$"):
        verify(net, {"xx": "dh"})
    assert "x" not in textbook(net) and "x" not in symbp.derive(net)  # the textbook and derive: as before


def _norm_code(axis, variance_term=True):
    def backward(v):
        x, y, g = v["x"], v["y"], v["g"]
        s = np.sqrt(x.var(axis, keepdims=True) + 1e-5)
        xhat = (x - x.mean(axis, keepdims=True)) / s
        d = y * g.T  # y is the upstream gradient dL/dh
        dx = d - d.mean(axis, keepdims=True) - (xhat * (d * xhat).mean(axis, keepdims=True) if variance_term else 0)
        return {"x": dx / s, "g": (y * xhat).sum(0, keepdims=True).T, "c": y.sum(0, keepdims=True).T}
    return backward


@pytest.mark.parametrize("op,axis", [("layernorm", 1), ("batchnorm", 0)])
def test_numpy_code_returning_the_input_gradient_is_judged(op, axis):
    net = _layer(op)
    right = {r.target: r for r in verify(net, _norm_code(axis)).results}
    assert {t: r.verdict for t, r in right.items()} == {"x": "holds", "g": "holds", "c": "holds"}
    wrong = {r.target: r for r in verify(net, _norm_code(axis, variance_term=False)).results}
    assert wrong["x"].verdict == "fails" and wrong["x"].element is not None
    assert wrong["g"].verdict == wrong["c"].verdict == "holds"
    flipped = _norm_code(axis)
    negated = {r.target: r for r in verify(net, lambda v: dict(flipped(v), x=-flipped(v)["x"])).results}
    assert (negated["x"].verdict, negated["x"].diagnosis) == ("fails", "sign")
