"""Verdicts and diagnoses: the claim corpus (tests/claims), the textbook equations over every
configuration, the tiers, code claims, and the JSON shape."""

import functools
import importlib.util
import json
import random
import tomllib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp.errors import SymbpError
from symbp.formula import FormulaError, parse
from symbp.spec import model_from_table
from symbp.verify import ExactField, activation_derivative, textbook, verify

from conftest import config_id, configurations, make

CLAIMS = Path(__file__).parent / "claims"
SIDE = "every target row sums to 1"


@functools.lru_cache(maxsize=None)
def corpus(name):
    data = tomllib.loads((CLAIMS / name).read_text())
    net = model_from_table(data["model"])
    return net, symbp.derive(net), data["case"]


CASES = [(path.name, k) for path in sorted(CLAIMS.glob("*.toml"))
         for k in range(len(tomllib.loads(path.read_text())["case"]))]


def test_corpus_is_large_and_covers_every_diagnosis():
    cases = [case for name in {n for n, _ in CASES} for case in corpus(name)[2]]
    assert len(cases) >= 60
    assert {c.get("diagnosis") for c in cases} >= {"transposed", "scaled", "sign", "missing-activation-derivative",
                                                   "shape", "other"}
    assert {c.get("method") for c in cases} >= {"symbolic", "exact-random", "numeric"}


@pytest.mark.parametrize("name, k", CASES, ids=[f"{n[:-5]}-{k}" for n, k in CASES])
def test_corpus_verdict_and_diagnosis(name, k):
    net, grads, cases = corpus(name)
    case = cases[k]
    general = verify(net, {case["target"]: case["claim"]}, grads=grads).results[0]
    assert general.verdict == case["verdict"], general.detail  # the same verdict for all sizes
    assert general.method != "all-sizes" or general.verdict == "holds"
    report = verify(net, {case["target"]: case["claim"]}, grads=grads, sizes="given")  # today's tiers
    result = report.results[0]
    assert (result.target, result.verdict, result.sizes) == (case["target"], case["verdict"], "given"), result.detail
    assert result.method in ("symbolic", "exact-random", "numeric")
    assert result.diagnosis == case.get("diagnosis"), result.detail
    if "method" in case:
        assert result.method == case["method"], result.detail
    if "factor" in case:
        assert result.factor == pytest.approx(case["factor"], rel=1e-12)
    else:
        assert result.factor is None
    if "assumption" in case:
        assert report.assumptions == ([SIDE] if case["assumption"] else [])
    if result.verdict == "fails" and parse(case["claim"], net).shape == net.shape(case["target"]) \
            and "kink" not in result.detail:
        i, j = result.element  # one element where they differ, with both sides there
        assert result.expected != result.got
        assert f"at dL/d{case['target']}[" in result.detail
    else:
        assert result.element is None


# --------------------------------------------------------------------------- the textbook


EXTRA = [
    dict(sizes=[2, 3, 3, 2], hidden="leaky_relu", output="softmax", loss="mse", batch=3),
    dict(sizes=[3, 3, 3, 2], hidden="softplus", output="sigmoid", loss="binary_cross_entropy", batch=2,
         reduction="sum", residual=True),
    dict(sizes=[2, 3, 2], hidden="x**3/3 + x", output="identity", loss="mse"),
    dict(sizes=[2, 3, 2], hidden="sigmoid", output="sigmoid", loss="cross_entropy", batch=2),
    dict(sizes=[2, 3, 2], hidden="tanh", output="softmax", loss="cross_entropy", batch=3, reduction="sum"),
    dict(sizes=[3, 3, 2], hidden="identity", output="softmax", loss="binary_cross_entropy", batch=2, bias=False),
]


@pytest.mark.parametrize("config", configurations() + EXTRA, ids=config_id)
def test_textbook_holds_for_every_configuration(config):
    net = make(config)
    claims = textbook(net)
    assert set(claims) == set(net.params + net.intermediates)
    report = verify(net, claims)
    assert report.ok, report.text()
    side = net.fused is not None and net.fused.side_condition is not None
    assert report.assumptions == ([SIDE] if side else [])


def test_textbook_forms():
    single = textbook(symbp.MLP([4, 5, 3, 3]))
    assert single == {"W1": "dz1 @ x.T", "b1": "dz1", "W2": "dz2 @ a1.T", "b2": "dz2", "W3": "dz3 @ a2.T",
                      "b3": "dz3", "z1": "da1 * step(z1)", "a1": "W2.T @ dz2", "z2": "da2 * step(z2)",
                      "a2": "W3.T @ dz3", "z3": "a3 - y", "a3": "-y / a3"}
    batch = textbook(symbp.MLP([4, 5, 3, 3], hidden="tanh", batch=8))
    assert batch["z3"] == "(a3 - y) / N" and batch["W2"] == "dz2.T @ a1"
    assert batch["b2"] == "sum(dz2, axis=0).T" and batch["a2"] == "dz3 @ W3"
    assert batch["z1"] == "da1 * (1 - a1 ** 2)"
    residual = textbook(symbp.MLP([2, 2, 2, 2], hidden="sigmoid", residual=True))
    assert residual["a1"] == "W2.T @ dz2 + da2"
    assert residual["z2"] == "da2 * sigmoid(z2) * (1 - sigmoid(z2))"


def test_activation_derivative_of_custom_activation_is_translated():
    net = symbp.MLP([2, 2, 2], hidden="x*sigmoid(x)")
    text = activation_derivative(net, 1)
    assert "sigmoid(z1)" in text and "z1" in text
    assert verify(net, {"z1": f"da1 * {text}"}).ok


def test_textbook_on_a_three_layer_network_is_proved_symbolically():
    net = symbp.MLP([4, 5, 3, 3])
    report = verify(net, textbook(net), sizes="given")  # the concrete symbolic tier
    assert report.ok and {r.method for r in report.results} == {"symbolic"}
    assert {r.method for r in verify(net, textbook(net)).results} == {"all-sizes"}


@pytest.mark.slow
def test_textbook_on_784_128_64_10_checks_every_element():
    # correctness at MNIST size; its time is measured by the benchmarks, not asserted here
    net = symbp.MLP([784, 128, 64, 10])
    report = verify(net, textbook(net), grads=symbp.derive(net), sizes="given")
    assert report.ok and report["W1"].method == "exact-random"


# --------------------------------------------------------------------------- tiers and soundness


def test_exact_field_keeps_the_identities_of_its_frozen_values():
    field = ExactField(random.Random(3))
    v = Fraction(5, 3)
    e = field.call("exp", v)
    assert field.call("exp", -v) == 1 / e
    assert field.call("tanh", v / 2) == (e - 1) / (e + 1)
    assert field.call("sigmoid", v) == e / (1 + e)
    assert 2 * field.call("sigmoid", 2 * v) - 1 == field.call("tanh", v)
    assert field.call("relu", Fraction(-1)) == 0 and field.call("step", Fraction(0)) == 0
    assert field.call("leaky_relu", Fraction(-1)) == Fraction(-1, 100)


def test_a_wrong_claim_that_agrees_in_most_places_still_fails():
    net = symbp.MLP([3, 4, 2], hidden="relu", output="identity", loss="mse")
    # wrong only through the mask: (W2.T dz2) * relu(z1) equals the truth where z1 = 1 exactly
    report = verify(net, {"z1": "(W2.T @ dz2) * relu(z1)"})
    assert report.results[0].verdict == "fails"


def test_side_condition_is_listed_only_when_needed():
    net = symbp.MLP([2, 3])
    assert verify(net, {"z1": "a1 - y"}).assumptions == [SIDE]
    assert verify(net, {"z1": "a1 * sum(y) - y"}).assumptions == []
    assert verify(net, {"W1": "dz1 @ x.T"}).assumptions == []


def test_bad_claims_are_bad_input():
    net = symbp.MLP([4, 5, 3, 3])
    with pytest.raises(FormulaError, match="claim for W1 'dz1 @ xT', column 7: unknown name 'xT'"):
        verify(net, {"W1": "dz1 @ xT"})
    with pytest.raises(FormulaError, match="claim for W1 'dz1 @@ x', column"):
        verify(net, {"W1": "dz1 @@ x"})
    with pytest.raises(SymbpError, match="no gradient named 'W4'"):
        verify(net, {"W4": "dz3"})
    with pytest.raises(SymbpError, match="expected a symbp.MLP"):
        verify("net", {})


def test_element_expected_and_got_are_the_expressions_there():
    net = symbp.MLP([2, 2], output="identity", loss="mse")
    result = verify(net, {"W1": "dz1 @ x.T + W1"}).results[0]
    assert result.element == (0, 0)
    assert result.expected == "dz1[1]*x[1]"
    assert result.got == "W1[1,1] + dz1[1]*x[1]"
    assert "at dL/dW1[1,1]" in result.detail


def test_report_json_has_the_interface_keys():
    net = symbp.MLP([4, 5, 3, 3])
    report = verify(net, {"z3": "a3 - y", "W3": "3 * dz3 @ a2.T"})
    data = json.loads(json.dumps(report.to_json()))
    assert set(data) == {"ok", "assumptions", "results"}
    assert data["ok"] is False and data["assumptions"] == [SIDE]
    keys = {"target", "claim", "verdict", "method", "diagnosis", "factor", "element", "expected", "got", "detail",
            "sizes"}
    assert all(set(r) == keys for r in data["results"])
    scaled = data["results"][1]
    assert scaled["diagnosis"] == "scaled" and scaled["factor"] == pytest.approx(1 / 3)
    assert isinstance(scaled["element"], list) and len(scaled["element"]) == 2


# --------------------------------------------------------------------------- code claims


def _code():
    spec = importlib.util.spec_from_file_location("backward_seed002", CLAIMS / "backward_seed002.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CODE = _code()
SEED002 = dict(sizes=[4, 6, 5, 3], bias=False, batch=4)


@pytest.mark.parametrize("function, expected", [
    ("backward", {"W1": ("holds", None), "W2": ("holds", None), "W3": ("holds", None)}),
    ("backward_no_mean", {"W1": ("fails", "scaled"), "W2": ("fails", "scaled"), "W3": ("fails", "scaled")}),
    ("backward_transposed", {"W1": ("fails", "transposed"), "W2": ("fails", "transposed"),
                             "W3": ("fails", "transposed")}),
    ("backward_sign", {"W1": ("fails", "sign"), "W2": ("fails", "sign"), "W3": ("fails", "sign")}),
    ("backward_no_mask", {"W1": ("fails", "missing-activation-derivative"),
                          "W2": ("fails", "missing-activation-derivative"), "W3": ("holds", None)}),
    ("backward_missing", {"W1": ("error", None), "W2": ("holds", None), "W3": ("holds", None)}),
    ("backward_unknown_name", {"W1": ("holds", None), "W2": ("holds", None), "W3": ("holds", None),
                               "W9": ("error", None)}),
    ("backward_bad_shape", {"W1": ("holds", None), "W2": ("error", "shape"), "W3": ("holds", None)}),
])
def test_code_claims(function, expected):
    net = symbp.MLP(**SEED002)
    report = verify(net, getattr(CODE, function))
    got = {r.target: (r.verdict, r.diagnosis) for r in report.results}
    assert got == expected, report.text()
    assert all(r.claim == function and r.method == "numeric" for r in report.results)
    assert report.ok == all(v == "holds" for v, _ in expected.values())


def test_code_claim_scaled_factor_is_one_over_n():
    report = verify(symbp.MLP(**SEED002), CODE.backward_no_mean)
    assert {r.factor for r in report.results} == {0.25}
    assert all(r.method == "numeric" and r.element is not None for r in report.results)


@pytest.mark.parametrize("function, message", [
    ("backward_crash", "backward_crash raised KeyError: 'b1' (backward_seed002.py, line 67)"),
    ("backward_not_a_dict", "backward_not_a_dict returned list, expected a dict {name: array}"),
])
def test_code_claims_that_break_are_error_results(function, message):
    """Code that delivers nothing gets an error for every gradient it was to deliver (issue 10.6)."""
    report = verify(symbp.MLP(**SEED002), getattr(CODE, function))
    assert [(r.target, r.verdict, r.detail) for r in report.results] == [(t, "error", message)
                                                                         for t in ("W1", "W2", "W3")]


# --------------------------------------------------------------------------- command line


SPEC = """\
[model]
sizes = [4, 6, 5, 3]
bias = false
batch = 4

[claims]
z3 = "(a3 - y) / N"
W3 = "dz3.T @ a2"
W2 = "a1.T @ dz2"
"""


def test_cli_verify_text_and_exit_codes(tmp_path, capsys):
    from symbp.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    assert main(["verify", str(spec)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("MLP [4, 6, 5, 3]: hidden relu, relu; output softmax")
    assert lines[1].startswith("dL/dz3  holds  all-sizes     proved for all sizes (N, n0, n1, n2, n3 symbolic), "
                               "assuming every target row sums to 1")
    assert lines[2].startswith("dL/dW3  holds  all-sizes     proved for all sizes")
    assert lines[3] == "dL/dW2  fails  exact-random  transposed  the transpose holds for all sizes: claim has shape (6, 5), " \
        "dL/dW2 has (5, 6)"
    assert lines[4] == "2 of 3 claims hold (assuming every target row sums to 1)"
    spec.write_text(SPEC.replace('W2 = "a1.T @ dz2"', 'W2 = "dz2.T @ a1"'))
    assert main(["verify", str(spec)]) == 0


def test_cli_verify_json_with_code(tmp_path, capsys):
    from symbp.cli import main

    (tmp_path / "bp.py").write_text((CLAIMS / "backward_seed002.py").read_text())
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC + '\n[code]\npath = "bp.py"\nfunction = "backward_no_mean"\n')
    assert main(["verify", str(spec), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["assumptions"] == [SIDE]
    code = [r for r in payload["results"] if r["claim"] == "backward_no_mean"]
    assert [(r["target"], r["verdict"], r["diagnosis"], r["factor"]) for r in code] == \
        [(n, "fails", "scaled", 0.25) for n in ("W3", "W2", "W1")]


@pytest.mark.parametrize("content, message", [
    (None, "no such spec file"),
    ("[model\n", "not valid TOML"),
    ("[model]\nsizes = [2, 2]\nsize = 3\n", "model: unknown field 'size' (did you mean 'sizes'?)"),
    ("[model]\nsizes = [2, 2]\n[claims]\nW1 = 'dz1 @ xx'\n", "claims.W1 'dz1 @ xx', column 7: unknown name 'xx'"),
    ("[model]\nsizes = [2, 2]\n[claims]\nW1 = 'dz1 @'\n", "claims.W1 'dz1 @', column"),
    ("[model]\nsizes = [2, 2]\n", "nothing to verify"),
])
def test_cli_verify_bad_input_is_one_line_exit_2(tmp_path, capsys, content, message):
    from symbp.cli import main

    spec = tmp_path / "spec.toml"
    if content is not None:
        spec.write_text(content)
    assert main(["verify", str(spec)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err
    assert captured.err.startswith("symbp verify: error: ")


def test_verify_against_expand_and_numerator_layout_grads():
    net = symbp.MLP([2, 3, 2], hidden="tanh", batch=2)
    expand = symbp.derive(net, method="expand")  # written-out truths: judged exactly, no error terms
    report = verify(net, textbook(net), grads=expand, sizes="given")
    assert report.ok and {r.method for r in report.results} == {"exact-random"}
    numerator = symbp.derive(net, layout="numerator")  # claims stay in denominator layout
    report = verify(net, {"W1": "dz1.T @ x", "z2": "a2 - y"}, grads=numerator)
    assert [(r.verdict, r.diagnosis, r.factor) for r in report.results] == \
        [("holds", None, None), ("fails", "scaled", 0.5)]
    with pytest.raises(SymbpError, match="grads must come from symbp.derive of this network"):
        verify(symbp.MLP([2, 3, 2]), {}, grads=expand)


# --------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize("seed", [19, 21, 0, 5])
def test_a_wrong_claim_does_not_hold_where_a_dead_relu_zeroes_the_gradient(seed):
    # MLP([2, 1, 2]) has one hidden ReLU: at many random points it is dead and dL/dW1 is all zero,
    # where the doubled gradient agrees with the truth; dL/dW1 = dz1 @ x.T, so 2x of it is wrong.
    net = symbp.MLP([2, 1, 2], output="identity", loss="mse")
    result = verify(net, {"W1": "2 * dz1 @ x.T"}, seed=seed).results[0]
    assert result.verdict == "fails"
    assert verify(net, {"W1": "dz1 @ x.T"}, seed=seed).results[0].verdict == "holds"


@pytest.mark.parametrize("claim", ["da2 * step(z2 - 0.04)", "da2 * step(z2 + 0.01)", "da2 * step(z2 + 100)",
                                   "da2 * step(z2 + W3.T @ z3)"])
def test_a_kink_moved_away_from_the_networks_fails(claim):
    result = verify(symbp.MLP([4, 5, 3, 3]), {"z2": claim}).results[0]
    assert (result.verdict, result.diagnosis) == ("fails", "other")
    assert "kink" in result.detail and "not where the network's is" in result.detail


@pytest.mark.parametrize("claim", ["da2 * step(2 * z2)", "da2 * step(z2 / 3)", "da2 * step(z2)",
                                   "da2 * (1 - step(-z2))"])
def test_a_kink_at_zero_of_a_scaled_pre_activation_holds(claim):
    assert verify(symbp.MLP([4, 5, 3, 3]), {"z2": claim}).results[0].verdict == "holds"


def test_the_numeric_tier_uses_general_targets_when_no_side_condition_applies():
    # sigmoid + cross-entropy has no side condition: a term vanishing only when the targets sum to 1
    # must not hold (the float points used to draw such targets).
    net = symbp.MLP([3, 4, 2], hidden="tanh", output="sigmoid", loss="cross_entropy")
    report = verify(net, {"z2": "-y*(1-a2) + 3*(sum(y)-1)"})
    assert report.results[0].verdict == "fails"
    assert report.assumptions == []
    assert verify(net, {"z2": "-y*(1-a2)"}).results[0].verdict == "holds"


@pytest.mark.parametrize("claim", ["(a3 - y) ** 0.5", "(y - a3) ** 1.5 + a3 - y"])
def test_a_fractional_power_of_a_negative_number_is_a_verdict_not_a_traceback(tmp_path, capsys, claim):
    from symbp.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text(f'[model]\nsizes = [4, 5, 3, 3]\n[claims]\nz3 = "{claim}"\n')
    assert main(["verify", str(spec), "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out)["results"][0]["verdict"] == "fails"


def test_float_field_power_of_a_negative_base_is_nan():
    from symbp.verify import FloatField

    assert np.isnan(FloatField().power(-4.0, Fraction(1, 2)))
    assert FloatField().power(4.0, Fraction(1, 2)) == 2.0


def test_slip_of_the_pen_neighbours_past_layer_nine():
    # the z<->a and layer +-1 candidates of a diagnosis; "z11" is kind z of layer 11, not kind "z1"
    from symbp.verify import _neighbours

    net = symbp.MLP([2] + [2] * 11 + [2])
    assert _neighbours("z11", net) == ["a11", "z10", "z12"]


# --------------------------------------------------------------------------- no false holds (16.1)


@pytest.mark.parametrize("hidden", ["relu", "tanh"])
@pytest.mark.parametrize("target, claim", [("b1", "dz1 + 1e-10"), ("W3", "dz3 @ a2.T * 1.0000000001"),
                                           ("b1", "dz1 + 1e-300"), ("W3", "dz3 @ a2.T * (1 + 1e-300)"),
                                           ("z3", "softmax(z3 + 1) - y + 1e-10"),
                                           ("z3", "exp(z3 + 1) / sum(exp(z3 + 1)) - y + 1e-300")])
def test_a_claim_off_by_a_tiny_amount_fails(hidden, target, claim):
    # the exact tier sees the difference; the float tier must not overrule it
    result = verify(symbp.MLP([4, 5, 3, 3], hidden=hidden), {target: claim}).results[0]
    assert (result.verdict, result.method) == ("fails", "exact-random"), result.detail
    assert result.element is not None and result.expected != result.got


@pytest.mark.parametrize("claim", ["softmax(z3 + 1) - y", "exp(z3 + 1) / sum(exp(z3) * exp(1)) - y",
                                   "exp(z3 - 2) / sum(exp(z3 - 2)) - y"])
def test_identities_the_freezing_cannot_see_hold_as_float_judgements(claim):
    report = verify(symbp.MLP([4, 5, 3, 3]), {"z3": claim})
    result = report.results[0]
    assert (result.verdict, result.method) == ("holds", "numeric"), result.detail
    assert "float judgement" in result.detail and "relative" in result.detail
    assert report.assumptions == [SIDE]


def test_cli_verify_exits_1_on_a_tiny_offset(tmp_path, capsys):
    from symbp.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nsizes = [4, 5, 3, 3]\n[claims]\nb1 = "dz1 + 1e-10"\nW3 = "dz3 @ a2.T"\n')
    assert main(["verify", str(spec), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in payload["results"]] == ["fails", "holds"]


# --------------------------------------------------------------------------- shape verdicts (10.3)


def test_claims_whose_shapes_do_not_align_get_verdicts():
    net = symbp.MLP([4, 5, 3, 3])
    report = verify(net, {"a1": "W2 @ dz2", "W2": "dz2 @ a1", "W1": "dz1 @ y", "W3": "dz3 @ a2.T",
                          "z1": "(W2 @ dz2) * step(z1)", "b2": "dz2 + 0 * a1", "a2": "(dz3.T @ W3).T"},
                    sizes="given")
    got = {r.target: (r.verdict, r.method, r.diagnosis) for r in report.results}
    assert got == {"a1": ("fails", "exact-random", "transposed"), "W2": ("fails", "exact-random", "transposed"),
                   "W1": ("fails", "symbolic", "shape"), "W3": ("holds", "symbolic", None),
                   "z1": ("fails", "exact-random", "transposed"), "b2": ("fails", "symbolic", "shape"),
                   "a2": ("holds", "symbolic", None)}
    assert report["a1"].detail == "W2 @ dz2: shapes (3, 5) and (3, 1) do not align (5 columns against 3 rows): " \
        "write W2.T @ dz2"
    assert report["W2"].detail.endswith(": write dz2 @ a1.T")
    assert report["z1"].detail.endswith(": write (W2.T @ dz2) * step(z1)")
    assert report["W1"].detail == "dz1 @ y: shapes (5, 1) and (3, 1) do not align (1 columns against 3 rows)"
    assert "do not match for element-wise '+'" in report["b2"].detail
    assert all(r.element is None for r in report.results)
    assert not report.ok


def test_a_claim_transposed_as_a_whole_after_an_operand_fix():
    # a1 @ dz2 does not align; a1 @ dz2.T aligns but is dW2 transposed: (a1 @ dz2.T).T holds
    result = verify(symbp.MLP([4, 5, 3, 3]), {"W2": "a1 @ dz2"}).results[0]
    assert (result.verdict, result.diagnosis) == ("fails", "transposed"), result.detail
    assert "write (a1 @ dz2.T).T" in result.detail


def test_cli_verify_judges_every_claim_when_one_has_a_shape_error(tmp_path, capsys):
    from symbp.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nsizes = [4, 5, 3, 3]\n[claims]\na1 = "W2 @ dz2"\nW3 = "dz3 @ a2.T"\n')
    assert main(["verify", str(spec), "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    payload = json.loads(out)
    assert [(r["target"], r["verdict"], r["diagnosis"]) for r in payload["results"]] == \
        [("a1", "fails", "transposed"), ("W3", "holds", None)]


# --------------------------------------------------------------------------- side conditions of diagnoses (10.4)


def test_a_diagnosis_true_only_under_the_side_condition_says_so():
    net = symbp.MLP([2, 3])
    report = verify(net, {"z1": "2 * (a1 - y)"})
    result = report.results[0]
    assert (result.diagnosis, result.factor) == ("scaled", 0.5)
    assert result.assumptions == (SIDE,) and report.assumptions == [SIDE]
    assert f"multiplied by 1/2 it holds for all sizes (assuming {SIDE})" in result.detail  # general form
    given = verify(net, {"z1": "2 * (a1 - y)"}, sizes="given").results[0]
    assert f"multiplied by 1/2 it holds (assuming {SIDE})" in given.detail and given.assumptions == (SIDE,)
    plain = verify(net, {"W1": "2 * dz1 @ x.T"})
    assert plain.results[0].diagnosis == "scaled" and plain.assumptions == [] and plain.results[0].assumptions == ()


# --------------------------------------------------------------------------- kinks by the zeros of the argument (10.7)


ELU = "max(x, 0) + min(0, exp(x) - 1)"


def test_a_custom_elu_holds_its_own_textbook():
    net = symbp.MLP([3, 4, 2], hidden=ELU)
    claims = textbook(net)
    assert "exp(z1)" in claims["z1"] and "step(" in claims["z1"]
    report = verify(net, claims)
    assert report.ok, report.text()


@pytest.mark.parametrize("claim, holds", [("da2 * step(1 - exp(-z2))", True), ("da2 * step(exp(z2) - 1)", True),
                                          ("da2 * step(z2 ** 3)", True), ("da2 * step(exp(z2) - 2)", False),
                                          ("da2 * step(z2 ** 2 - z2 / 100)", False)])
def test_a_kink_is_placed_by_the_zeros_of_its_argument(claim, holds):
    result = verify(symbp.MLP([4, 5, 3, 3]), {"z2": claim}).results[0]
    assert result.ok == holds, result.detail
    if not holds:
        assert "not where the network's is" in result.detail


# --------------------------------------------------------------------------- diagnoses (10.8)


def test_a_forgotten_output_derivative_is_named():
    net = symbp.MLP([2, 3, 2], output="sigmoid", loss="mse")
    result = verify(net, {"z2": "da2"}).results[0]
    assert result.diagnosis == "missing-activation-derivative", result.detail
    assert "a2 * (1 - a2)" in result.detail
    soft = symbp.MLP([2, 3, 3], loss="mse")
    result = verify(soft, {"z2": "da2"}).results[0]
    assert result.diagnosis == "missing-activation-derivative", result.detail
    assert "softmax" in result.detail


def test_an_extra_activation_derivative_is_named():
    from symbp.verify import DIAGNOSES

    assert "extra-activation-derivative" in DIAGNOSES
    net = symbp.MLP([4, 5, 3, 3])
    result = verify(net, {"a1": "(W2.T @ dz2) * step(z1)"}).results[0]
    assert result.diagnosis == "extra-activation-derivative", result.detail
    assert "without the factor 'step(z1)' it holds" in result.detail
    missing = verify(net, {"z1": "W2.T @ dz2"}).results[0]
    assert missing.diagnosis == "missing-activation-derivative"


def test_the_mean_applied_twice_is_said_in_words():
    net = symbp.MLP([2, 3, 2], batch=4)
    twice = verify(net, {"W2": "dz2.T @ a1 / 4"}, sizes="given").results[0]  # at the given sizes, N = 4
    assert (twice.diagnosis, twice.factor) == ("scaled", 4.0)
    assert "multiplied by 4 it holds (1/N applied twice)" in twice.detail
    missing = verify(net, {"W2": "4 * dz2.T @ a1"}, sizes="given").results[0]
    assert "multiplied by 1/4 it holds (the 1/N of the mean over the batch is missing)" in missing.detail
    twice = verify(net, {"W2": "dz2.T @ a1 / N"}).results[0]  # for all sizes: only a written N is the batch
    assert (twice.diagnosis, twice.factor, twice.expected) == ("scaled", 4.0, "dz2.T @ a1")
    assert twice.detail.startswith("multiplied by N it holds for all sizes (1/N applied twice)")


# --------------------------------------------------------------------------- the element key (10.11)


def test_the_element_of_a_failing_claim_is_its_zero_based_row_and_column():
    # dL/dW1 is (1, 3) and the claim differs from dz1 @ x.T only where x < 0: the first such column
    # (at the exact points of seed 0) is j = 1 or 2, so a swapped key would point outside dL/dW1.
    net = symbp.MLP([3, 1], output="identity", loss="mse")
    result = verify(net, {"W1": "dz1 @ x.T + dz1 @ relu(-x).T"}).results[0]
    data = result.to_json()
    i, j = data["element"]
    assert (i, j) != (0, 0) and 0 <= i < 1 and 0 <= j < 3
    assert data["expected"] == f"dz1[1]*x[{j + 1}]"
    assert data["got"] == f"dz1[1]*x[{j + 1}] + dz1[1]*relu(-x[{j + 1}])"
    assert f"at dL/dW1[{i + 1},{j + 1}]:" in data["detail"]


def test_a_shape_error_carries_the_operands_it_could_not_fit():
    net = symbp.MLP([4, 5, 3, 3])
    with pytest.raises(FormulaError) as info:
        parse("  W2 @ (dz2 + 1)", net)
    error = info.value
    assert (error.kind, error.source, error.operands) == ("shape", "W2 @ (dz2 + 1)", ((0, 2), (6, 13)))
    with pytest.raises(FormulaError) as info:
        parse("W2 @ dz", net)
    assert (info.value.kind, info.value.operands) == ("syntax", ())


def test_a_kink_whose_zeros_are_out_of_reach_is_undecided_not_judged():
    # z - tanh(z) is zero only at 0, but SymPy cannot solve it: no verdict either way
    result = verify(symbp.MLP([4, 5, 3, 3], hidden="tanh"), {"z2": "da2 * (1 - a2**2) * step(z2 - a2)"}).results[0]
    assert (result.verdict, result.method) == ("error", "symbolic")
    assert result.detail.startswith("undecided: where the argument of step(z2 - a2) is zero is out of reach")

# ------------------------------------------------------------------ the fields of the exact and float tiers

POINTS = [-30, -1, Fraction(-1, 2), 0, Fraction(1, 2), 1, 30]


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "step", "sigmoid", "tanh", "softplus", "exp", "log"])
def test_float_field_functions_are_the_real_functions(name):
    # the numeric tier evaluates claim and truth alike in this field, so a wrong function would make
    # both sides wrong together: check it against SymPy's own function at -30, -1, -1/2, 0, 1/2, 1, 30
    from symbp.formula import ELEMENTWISE
    from symbp.verify import FloatField

    for v in POINTS:
        if name == "log" and v <= 0:
            continue
        expected = float(sp.N(ELEMENTWISE[name](sp.Rational(v)), 30))
        assert FloatField().call(name, float(v)) == pytest.approx(expected, rel=1e-13, abs=1e-300), (name, v)
    if name == "log":
        assert np.isnan(FloatField().call("log", -1.0)) and np.isnan(FloatField().call("log", 0.0))


def test_exact_field_piecewise_functions_are_exact_and_step_is_zero_at_zero():
    from symbp.formula import ELEMENTWISE
    from symbp.verify import FloatField

    field = ExactField(random.Random(0))
    for name in ("relu", "leaky_relu", "step"):
        for v in POINTS:
            assert field.call(name, Fraction(v)) == sp.Rational(ELEMENTWISE[name](sp.Rational(v))), (name, v)
    for f in (field, FloatField()):
        assert [f.heaviside(v, Fraction(1, 2)) for v in (-1, 0, 1)] == [0, Fraction(1, 2), 1]
        assert [f.heaviside(v, 0) for v in (Fraction(-1, 3), 0, Fraction(1, 3))] == [0, 0, 1]
    v = Fraction(3, 7)
    assert field.call("exp", 0) == 1 and field.call("exp", v) * field.call("exp", -v) == 1
    assert field.call("log", 1) == 0 and field.call("softplus", v) == field.call("log", 1 + field.call("exp", v))


def test_a_report_prints_as_its_text():
    net = symbp.MLP([2, 2], output="identity", loss="mse")
    report = verify(net, {"z1": "a1 - y", "W1": "x @ dz1.T"})
    assert str(report) == report.text() and "dL/dW1" in str(report) and "dL/dz1" in str(report)


@pytest.mark.parametrize("target, claim, verdict, method", [
    ("z1", "(W2.T @ dz2)**3 * step(z1)", "fails", "exact-random"),
    ("a2", "W3.T @ (dz3**16)", "fails", "exact-random"),
    ("b2", "dz2**2 / dz2", "holds", "symbolic"),  # proved with dz2 free, before any resolution
])
def test_powers_of_true_gradients_are_judged_at_exact_points_not_stuck_in_cancel(target, claim, verdict, method):
    # written out in the network's symbols a power of a resolved gradient made cancel() run for 61 s
    # ((...)**3) and past 400 s ((...)**4, dz3**16): the exact points decide such claims instead
    import time

    start = time.monotonic()
    result = verify(symbp.MLP([4, 5, 3, 3]), {target: claim}, sizes="given").results[0]
    assert (result.verdict, result.method) == (verdict, method)
    assert time.monotonic() - start < 30  # a guard against minutes, not a speed goal


# --------------------------------------------------------------------------- sizes, mean/var, erf, cosh, pi


def _verdict(net, target, claim, sizes="given"):
    result = verify(net, {target: claim}, sizes=sizes).results[0]
    return result.verdict, result.method, result.diagnosis, result.factor


def test_a_size_name_stands_for_its_width():
    net = symbp.MLP([3, 4, 2], output="identity", loss="mse")  # mse averages over n2 = 2 units
    assert _verdict(net, "z2", "2 * (a2 - y) / n2")[0] == "holds"
    assert _verdict(net, "z2", "2 * (a2 - y) / 2")[0] == "holds"  # at the given sizes
    assert _verdict(net, "z2", "2 * (a2 - y) / 2", sizes="all")[0] == "fails"  # a 2 standing for n2
    three = symbp.MLP([3, 4, 3], output="identity", loss="mse")
    assert _verdict(three, "z2", "2 * (a2 - y) / n2")[0] == "holds"
    verdict, _, diagnosis, factor = _verdict(three, "z2", "(a2 - y)")
    assert (verdict, diagnosis, factor) == ("fails", "scaled", 2 / 3)
    assert _verdict(three, "z2", "2 * (a2 - y) * ones(n2, 1) / n2")[0] == "holds"


def test_mean_and_var_claims_are_judged_exactly():
    net = symbp.MLP([3, 4, 3], output="identity", loss="mse", batch=5)
    assert _verdict(net, "b2", "N * mean(dz2, axis=0).T")[:2] == ("holds", "symbolic")
    verdict, _, diagnosis, factor = _verdict(net, "b2", "mean(dz2, axis=0).T")
    assert (verdict, diagnosis, factor) == ("fails", "scaled", 5.0)  # the 1/N applied twice
    true = "2 * (a2 - y) / (n2 * N) + var(a2, axis=1) - mean(a2 ** 2, axis=1) + mean(a2, axis=1) ** 2"
    assert _verdict(net, "z2", true)[0] == "holds"  # var is biased: mean(X^2) - mean(X)^2
    wrong = "2 * (a2 - y) / (n2 * N) + var(a2, axis=1) - mean(a2 ** 2, axis=1)"
    assert _verdict(net, "z2", wrong)[:2] == ("fails", "exact-random")  # rational: refuted exactly
    ones = "2 * (a2 - y) / (n2 * N) * sqrt(var(a2) + 1) / sqrt(var(a2) + 1) + var(ones(N, n2), axis=0)"
    assert _verdict(net, "z2", ones)[0] == "holds"


TANH = symbp.MLP([3, 4, 2], hidden="tanh", output="identity", loss="mse")


@pytest.mark.parametrize("claim, verdict, method", [
    ("(W2.T @ dz2) / cosh(z1)**2", "holds", "numeric"),  # 1 - tanh^2 = 1/cosh^2: an identity the freezing misses
    ("(W2.T @ dz2) / cosh(z1)**2 + 1e-6 * cosh(z1)", "fails", "exact-random"),
    ("(W2.T @ dz2) * (1 - a1**2) * (1 + erf(z1) + erf(-z1))", "holds", "symbolic"),  # erf is odd
    ("(W2.T @ dz2) * (1 - a1**2) * (1 + 1e-9 * erf(z1))", "fails", "exact-random"),
    ("(W2.T @ dz2) * (1 - a1**2) * sqrt(4 * pi) / (2 * sqrt(pi))", "holds", "symbolic"),
    ("(W2.T @ dz2) * (1 - a1**2) * 3.14159 / pi", "fails", "exact-random"),
    ("(W2.T @ dz2) * (1 - a1**2) * (1 + pi - 355 / 113)", "fails", "exact-random"),  # pi is not 355/113
])
def test_erf_cosh_and_pi_claims(claim, verdict, method):
    assert _verdict(TANH, "z1", claim)[:2] == (verdict, method)


def test_claims_with_erf_cosh_pi_or_sqrt_are_not_refuted_by_their_frozen_values():
    from symbp.verify import _Judge

    judge = _Judge(TANH, symbp.derive(TANH), 0)
    for claim, part in [("dz2 * pi", "'pi'"), ("erf(z2)", "'erf(z2)'"), ("cosh(z2)", "'cosh(z2)'"),
                        ("sqrt(a2 * a2)", "'sqrt(a2 * a2)'")]:
        assert judge.frozen_part(parse(claim, TANH)) == part
    for claim in ["dz2 / n2", "mean(dz2) + var(dz2)", "ones(n2, 1) * n1"]:
        assert judge.frozen_part(parse(claim, TANH)) is None


def test_exact_field_freezes_erf_cosh_and_pi_with_their_identities_and_signs():
    from symbp.verify import _value

    field = ExactField(random.Random(5))
    v = Fraction(2, 7)
    e = field.call("exp", v)
    assert field.call("cosh", v) == (e + 1 / e) / 2 == field.call("cosh", -v) and field.call("cosh", 0 * v) == 1
    assert field.call("erf", -v) == -field.call("erf", v) and 0 < field.call("erf", v) < 1
    assert field.call("erf", Fraction(0)) == 0
    pi = field.named("pi")
    assert 3 < pi < 4 and field.named("pi") == pi
    x = sp.Symbol("x", real=True)
    assert _value(sp.pi * sp.erf(x) + sp.cosh(x), {x: v}, field) == pi * field.call("erf", v) + field.call("cosh", v)


def test_float_fields_use_the_real_erf_cosh_and_pi():
    import math

    from symbp.verify import FloatField, MpField

    floats, mp = FloatField(), MpField(50)
    assert floats.call("erf", 0.5) == math.erf(0.5) and floats.call("cosh", 0.5) == math.cosh(0.5)
    assert floats.named("pi") == math.pi
    assert abs(mp.call("erf", mp.constant(Fraction(1, 2))) - mp.mp.mpf("0.52049987781304653768274665389196452873645157575")) \
        < mp.mp.mpf(10) ** -45
    assert abs(mp.named("pi") - mp.mp.mpf("3.1415926535897932384626433832795028841971693993751")) < mp.mp.mpf(10) ** -48
    assert abs(mp.call("cosh", mp.constant(Fraction(1))) - (mp.mp.e + 1 / mp.mp.e) / 2) < mp.mp.mpf(10) ** -48


def test_the_input_gradient_of_an_mlp_is_judged():
    """x is a target of an MLP's claims too: dL/dx = W1^T dz1 (sympy.diff of the forward in x)."""
    net = symbp.MLP([4, 5, 3, 3])
    (r,) = verify(net, {"x": "W1.T @ dz1"}).results
    assert (r.target, r.verdict) == ("x", "holds")
    (r,) = verify(net, {"x": "(dz1.T @ W1)"}).results
    assert (r.verdict, r.diagnosis) == ("fails", "transposed")
    (r,) = verify(net, {"x": "W1.T @ (dz1 * 2)"}).results
    assert (r.verdict, r.diagnosis, r.factor) == ("fails", "scaled", 0.5)
