"""Worked examples by hand: every cell exactly (seed 000's network), cross-checked with NumPy backprop;
verdicts on claimed cells with deliberate mistakes; the spec file, JSON, CLI and the document."""

import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symbp
import symbp.latex
from symbp import numeric
from symbp.cli import main
from symbp.errors import SymbpError
from symbp.example import document, from_spec, mistaken_backward, say, worked_example

from conftest import config_id, configurations, make

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="TeX is installed by .ci/run")

SPEC = Path(__file__).resolve().parent.parent / "symbp" / "data" / "seed000.toml"
E10 = sp.exp(10)


def col(*values):
    return sp.Matrix([[v] for v in values])


# --------------------------------------------------------------------------- seed 000, every cell


@pytest.fixture(scope="module")
def seed():
    return from_spec(SPEC)


def test_seed000_forward_cells_by_hand(seed):
    # z1 = W1 x + b1 with x = [1, 0, 2, -1]; a1 = relu(z1); and so on, worked out by hand.
    assert seed.value("z1") == col(3, -2, 1, -2)
    assert seed.value("a1") == col(3, 0, 1, 0)
    assert seed.value("z2") == col(2, -3)
    assert seed.value("a2") == col(2, 0)
    assert seed.value("z3") == col(2, 2, -8)
    # softmax of [2, 2, -8]: e^2 / (2 e^2 + e^-8) = e^10 / (1 + 2 e^10), exactly
    p = E10 / (1 + 2 * E10)
    assert seed.value("a3") == col(p, p, 1 / (1 + 2 * E10))
    # cross-entropy with y = [0, 1, 0]: -log(a3[2]) = log(1 + 2 e^10) - 10, about log 2
    assert sp.simplify(seed.loss - (sp.log(1 + 2 * E10) - 10)) == 0
    assert abs(float(seed.loss) - math_log2()) < 1e-4


def math_log2():
    return float(sp.log(2))


def test_seed000_backward_cells_by_hand(seed):
    p, q = E10 / (1 + 2 * E10), 1 / (1 + 2 * E10)
    dz3 = col(p, p - 1, q)  # a3 - y
    assert (seed.value("dz3") - dz3).applyfunc(sp.simplify) == sp.zeros(3, 1)
    assert (seed.value("dW3") - dz3 * col(2, 0).T).applyfunc(sp.simplify) == sp.zeros(3, 2)
    assert (seed.value("db3") - dz3).applyfunc(sp.simplify) == sp.zeros(3, 1)
    # da2 = W3^T dz3 = [p - (p - 1), p + q] = [1, (1 + e^10)/(1 + 2 e^10)]: the first entry is exactly 1
    assert seed.value("da2")[0] == 1
    assert sp.simplify(seed.value("da2")[1] - (1 + E10) / (1 + 2 * E10)) == 0
    assert seed.value("dz2") == col(1, 0)  # z2[2] = -3 < 0: the mask blocks it
    assert seed.value("dW2") == sp.Matrix([[3, 0, 1, 0], [0, 0, 0, 0]])
    assert seed.value("db2") == col(1, 0)
    assert seed.value("da1") == col(1, -2, 2, -1)  # W2^T dz2: the reader's [1, -2, 2, -1]
    assert seed.value("dz1") == col(1, 0, 2, 0)  # the other reader's answer: the mask at z1 = [3, -2, 1, -2]
    assert seed.value("dW1") == col(1, 0, 2, 0) * sp.Matrix([[1, 0, 2, -1]])
    assert seed.value("db1") == col(1, 0, 2, 0)
    assert len(seed.cells) == 4 + 4 + 2 + 2 + 3 + 3 + 1 + 3 + 3 + 6 + 3 + 2 + 2 + 8 + 2 + 4 + 4 + 16 + 4


def test_seed000_settles_the_dispute(seed):
    assert not seed.ok
    wrong = [(c.label, c.reason) for c in seed.wrong]
    assert wrong == [
        ("dz2[2]", "z2[2] = -3 < 0, so ReLU blocks the gradient: dz2[2] = 0, not 0.5 "
                   "(0.5 is da2[2]: the ReLU mask was forgotten)"),
        ("dz1[2]", "z1[2] = -2 < 0, so ReLU blocks the gradient: dz1[2] = 0, not -2 "
                   "(-2 is da1[2]: the ReLU mask was forgotten)"),
        ("dz1[4]", "z1[4] = -2 < 0, so ReLU blocks the gradient: dz1[4] = 0, not -1 "
                   "(-1 is da1[4]: the ReLU mask was forgotten)"),
    ]
    # the hand-rounded dz3 = [0.5, -0.5, 0] is right to within the tolerance, not exactly
    assert seed.cell("dz3", 2, 0).correct and seed.cell("dz3", 2, 0).reason.startswith("agrees to within 0.005")
    assert seed.cell("dz1", 0, 0).reason == "exact"
    # a true value in plain decimals, never e-notation
    assert seed.cell("dz3", 2, 0).reason == "agrees to within 0.005 (true value 0.000022699)"


# --------------------------------------------------------------------------- cross-check with NumPy


@pytest.mark.parametrize("config", configurations()[::2], ids=config_id)
def test_every_cell_matches_numpy_backprop(config):
    net = make(config)
    values = numeric.random_values(net, seed=3)
    ex = worked_example(net, {k: v.tolist() for k, v in values.items()})
    exact_values = {k: np.array(ex.inputs[k].tolist(), dtype=float) for k in ex.inputs}
    reference = numeric.reference_gradients(net, exact_values)
    forward = numeric.forward_pass(net, exact_values)
    for name in net.intermediates:
        assert np.allclose(np.array(ex.num(name).tolist(), dtype=float), forward[name], rtol=1e-9, atol=1e-12)
    assert abs(float(ex.num("L")[0]) - float(forward["L"])) < 1e-9
    for name in net.params + net.intermediates:
        got = np.array(ex.num("d" + name).tolist(), dtype=float)
        assert np.allclose(got, reference[name], rtol=1e-8, atol=1e-11), name
    # the 40-digit shadow is the exact value, evaluated (checked where the exact forms are small)
    small = [c for c in ex.cells if sp.count_ops(c.value) <= 60]
    assert {c.label for c in small} >= {c.label for c in ex.cells if c.name == "z1"}  # rational: always small
    for c in small:
        assert abs(sp.N(c.value - c.approx, 40)) < sp.Float("1e-30"), c.label


def test_matrix_level_backward_agrees_with_the_derivation(seed):
    again = mistaken_backward(seed, dropped=())
    for name, M in again.items():
        assert (M - seed.value(name)).applyfunc(sp.simplify) == sp.zeros(*M.shape), name


# --------------------------------------------------------------------------- verdicts on mistakes

# [2, 2, 2], ReLU, identity + mse: x = [1, 2]; z1 = [-1, 5], a1 = [0, 5]; z2 = [10, -5]; y = [1, 0];
# L = ((10 - 1)^2 + 5^2)/2 = 53; dz2 = z2 - y = [9, -5]; dW2 = dz2 a1^T = [[0, 45], [0, -25]];
# da1 = W2^T dz2 = [-6, 23]; dz1 = [0, 23]; dW1 = dz1 x^T = [[0, 0], [23, 46]].
SQUARE = dict(x=[[1], [2]], y=[[1], [0]], W1=[[1, -1], [2, 1]], b1=[[0], [1]], W2=[[1, 2], [3, -1]], b2=[[0], [0]])


@pytest.fixture(scope="module")
def square_net():
    return symbp.MLP([2, 2, 2], hidden="relu", output="identity", loss="mse")


def test_square_network_cells(square_net):
    ex = worked_example(square_net, SQUARE)
    assert ex.loss == 53 and ex.value("dz2") == col(9, -5) and ex.value("da1") == col(-6, 23)
    assert ex.value("dW2") == sp.Matrix([[0, 45], [0, -25]]) and ex.value("dW1") == sp.Matrix([[0, 0], [23, 46]])
    assert ex.ok  # no claims: nothing is wrong


@pytest.mark.parametrize("name, claim, cell, reason", [
    ("dz1", [[-6], [23]], (0, 0), "z1[1] = -1 < 0, so ReLU blocks the gradient: dz1[1] = 0, not -6 "
                                  "(-6 is da1[1]: the ReLU mask was forgotten)"),
    ("dW2", [[0, 0], [45, -25]], (0, 1), "dW2[1,2] = 45, not 0: that is dW2[2,1]: the product is transposed "
                                         "(a1 dz2^T instead of dz2 a1^T; dW2 has the shape of W2)"),
    ("da1", [[-1], [32]], (0, 0), "da1[1] = -6, not -1: W2 was not transposed (W2 dz2 instead of W2^T dz2)"),
    ("dz2", [[-9], [5]], (1, 0), "dz2[2] = -5, not 5: the sign is flipped"),
    ("dW1", [[-6, -12], [23, 46]], (0, 1), "dW1[1,2] = 0, not -12: -12 is what the backward pass gives when "
                                           "the ReLU mask is forgotten at dz1 and carried on"),
    ("z1", [[-1], [4]], (1, 0), "z1[2] = 5, not 4: the bias b1[2] was left out"),
    ("a1", [[-1], [5]], (0, 0), "a1[1] = 0, not -1: the activation relu was not applied (-1 is z1[1])"),
    ("db2", [[7], [-5]], (0, 0), "db2[1] = 9, not 7; none of the usual mistakes (a forgotten ReLU mask, a "
                                 "transposed product, a wrong sign, a missing 1/N, a forgotten bias) gives this number"),
])
def test_wrong_claims_get_their_reason(square_net, name, claim, cell, reason):
    ex = worked_example(square_net, SQUARE, claimed={name: claim})
    assert not ex.ok
    assert ex.cell(name, *cell).correct is False
    assert ex.cell(name, *cell).reason == reason


def test_right_claims_are_marked_right(square_net):
    claimed = {"dz2": [9, -5], "dW2": [[0, 45], [0, -25]], "dz1": [[0], [23]], "L": 53.0, "a1": [[0], ["5"]]}
    ex = worked_example(square_net, SQUARE, claimed=claimed)
    claims = [c for c in ex.cells if c.claimed is not None]
    assert len(claims) == 2 + 4 + 2 + 1 + 2 and all(c.correct and c.reason == "exact" for c in claims)
    assert ex.ok
    ex = worked_example(square_net, SQUARE, claimed={"dz2": [9.004, -5]})
    assert ex.ok and ex.cell("dz2").reason == "agrees to within 0.005 (true value 9)"
    ex = worked_example(square_net, SQUARE, claimed={"dz2": [9.004, -5]}, tolerance=0)
    assert not ex.ok


@pytest.mark.parametrize("tolerance, scale", [(None, 1), (sp.Rational(1, 10), 20), (0.0125, "2.5")])
def test_tolerance_is_a_bound_on_the_absolute_difference(square_net, tolerance, scale):
    # The default is 0.005 ("right to two decimals"): a claim off by 0.0049 is right, by exactly 0.005
    # still right (<=), by 0.0051 wrong, for a cell of 9, of 45 and the loss of 53 alike (an absolute
    # bound, not a relative one); an explicit tolerance scales the same three offsets.
    def off(by):
        d = Decimal(by) * Decimal(scale)
        claimed = {"dz2": [float(9 + d), float(-5 - d)], "dW2": [[0, float(45 + d)], [0, -25]], "L": float(53 - d)}
        options = {} if tolerance is None else {"tolerance": tolerance}
        return worked_example(square_net, SQUARE, claimed=claimed, **options), d

    for by in ("0.0049", "0.005"):
        ex, d = off(by)
        assert ex.ok, by
        assert ex.cell("dW2", 0, 1).claimed == 45 + sp.Rational(str(d))
        assert ex.cell("dW2", 0, 1).reason == f"agrees to within {say(ex.tolerance)} (true value 45)"
    ex, d = off("0.0051")
    assert sorted(c.label for c in ex.wrong) == ["L", "dW2[1,2]", "dz2[1]", "dz2[2]"]
    assert ex.cell("dz2").reason == (f"dz2[1] = 9, not {(9 + d).normalize()}; none of the usual mistakes (a forgotten ReLU "
                                     "mask, a transposed product, a wrong sign, a missing 1/N, a forgotten bias) "
                                     "gives this number")
    assert ex.tolerance == (sp.Rational(5, 1000) if tolerance is None else sp.Rational(str(tolerance)))


def test_spec_and_cli_tolerance_reach_the_verdict(capsys, tmp_path):
    # Seed 000's hand-rounded cells are off the truth by u = 1/(2 (1 + 2 e^10)) = 1.13e-5 (dz3[1],
    # dz3[2], da2[2]), 2u (dz3[3] = q, dW3[1,1] = 2 a3[1], dW3[2,1]) and 4u (dW3[3,1] = 2 q): all right
    # at the default 0.005 and at 5e-5; at 3e-5 only the 4u cell is wrong, at 1.5e-5 the 2u and 4u
    # ones, whether the tolerance comes from --tolerance, from_spec or the spec's [example] table.
    u = 1 / (2 * (1 + 2 * E10))
    assert 1.13e-5 < float(u) < 1.14e-5
    spec = tmp_path / "tol.toml"
    text = SPEC.read_text().replace("dz2 = [[1], [0.5]]", "dz2 = [[1], [0]]").replace(
        "dz1 = [[1], [-2], [2], [-1]]", "dz1 = [[1], [0], [2], [0]]")
    spec.write_text(text)
    assert from_spec(spec).ok and from_spec(spec, tolerance="5e-5").ok
    assert [c.label for c in from_spec(spec, tolerance="3e-5").wrong] == ["dW3[3,1]"]
    wrong = ["dz3[3]", "dW3[1,1]", "dW3[2,1]", "dW3[3,1]"]
    assert [c.label for c in from_spec(spec, tolerance="1.5e-5").wrong] == wrong
    assert main(["example", str(spec), "--tolerance", "1.5e-5"]) == 1
    assert "claimed cells: 13 of 17 right" in capsys.readouterr().out
    assert main(["example", str(spec), "--tolerance", "5e-5"]) == 0
    assert "claimed cells: 17 of 17 right" in capsys.readouterr().out
    spec.write_text(text.replace("[example]\n", "[example]\ntolerance = 1.5e-5\n", 1))
    assert [c.label for c in from_spec(spec).wrong] == wrong and from_spec(spec, tolerance="5e-5").ok


def test_sign_of_the_softmax_error_term(seed):
    ex = worked_example(seed.net, {k: v.tolist() for k, v in seed.inputs.items()},
                        claimed={"dz3": [[-0.5], [0.5], [0]]})
    assert ex.cell("dz3", 0, 0).reason == "dz3[1] = 0.49999, not -0.5: the sign is flipped (dL/dz3 = a3 - y, not y - a3)"
    assert ex.cell("dz3", 2, 0).correct  # 0 is within the tolerance of 2.3e-5


def test_a_transposed_matrix_is_named(seed):
    ex = worked_example(seed.net, {k: v.tolist() for k, v in seed.inputs.items()},
                        claimed={"dW2": [[3, 0], [0, 0], [1, 0], [0, 0]]})
    cells = [c for c in ex.cells if c.name == "dW2"]
    assert all(c.correct is False for c in cells)
    assert cells[0].reason == ("written as a 4x2 matrix, but dW2 has the shape of W2, 2x4 (denominator layout): "
                               "the product is transposed")


def test_missing_one_over_n():
    net = symbp.MLP([1, 1], hidden=[], output="identity", loss="mse", batch=2)
    values = dict(x=[[1], [2]], y=[[0], [0]], W1=[[3]], b1=[[0]])
    ex = worked_example(net, values, claimed={"dW1": [[30]], "db1": [[4.5]]})
    # z = [3, 6], L = (9 + 36)/2; dz = z (the 2 of the square cancels the 1/2... of mse over 1 unit) / N
    assert ex.loss == sp.Rational(45, 2) and ex.value("dz1") == col(3, 6) and ex.value("dW1")[0] == 15
    assert ex.cell("dW1").reason == ("dW1[1,1] = 15, not 30: the 1/N is missing: the loss is the mean over the "
                                     "N = 2 examples, so every gradient carries a factor 1/2")
    # db1 = 3 + 6 sums dz1, which already carries the 1/N of the mean: 4.5 divides by N once more
    assert ex.value("db1")[0] == 9
    assert ex.cell("db1").reason == ("db1[1] = 9, not 4.5: the 1/N is applied twice: the loss is the mean over "
                                     "the N = 2 examples, and dz1 already carries its factor 1/2")


def test_loss_claimed_twice_or_summed_is_named():
    net = symbp.MLP([2, 2, 1], hidden="relu", output="identity", loss="mse")
    values = {"x": [[1], [2]], "y": [[0]], "W1": [[1, -1], [1, 1]], "b1": [[0], [0]], "W2": [[2, 3]], "b2": [[0]]}
    ex = worked_example(net, values, claimed={"L": 162})
    assert ex.loss == 81
    assert ex.cell("L").reason == ("L = 81, not 162: that is twice L; multiplied by 1/2 it is right (a factor "
                                   "1/2 forgotten)")
    batch = symbp.MLP([1, 1], hidden=[], output="identity", loss="mse", batch=2)
    ex = worked_example(batch, dict(x=[[1], [2]], y=[[0], [0]], W1=[[3]], b1=[[0]]), claimed={"L": 45})
    assert ex.cell("L").reason == ("L = 22.5, not 45: the 1/N is missing: the loss is the mean over the N = 2 "
                                   "examples (45 is their sum)")


# --------------------------------------------------------------------------- input errors, JSON, CLI


@pytest.mark.parametrize("values, claimed, message", [
    ({k: v for k, v in SQUARE.items() if k != "b2"}, None, "values: missing b2"),
    (dict(SQUARE, W1=[[1, 2, 3], [4, 5, 6]]), None, r"W1: expected shape \(2, 2\), got \(2, 3\)"),
    (dict(SQUARE, W3=[[1]]), None, "unknown name 'W3'"),
    (dict(SQUARE, x=[[1], ["two"]]), None, "unknown name 'two'"),
    (SQUARE, {"dz7": [[1]]}, "unknown cell name 'dz7'"),
    (SQUARE, {"dL/dz1": [[1]]}, "write dz1 for dL/dz1"),
    (SQUARE, {"dz1": [[1], [2], [3]]}, r"expected shape \(2, 1\)"),
])
def test_bad_input_names_the_culprit(square_net, values, claimed, message):
    with pytest.raises(SymbpError, match=message):
        worked_example(square_net, values, claimed=claimed)


def test_json_follows_the_interface(square_net):
    payload = worked_example(square_net, SQUARE, claimed={"dz1": [[-6], [23]]}).to_json()
    assert payload["ok"] is False
    cells = {(c["name"], tuple(c["index"])): c for c in payload["cells"]}
    assert cells[("dz1", (0, 0))] == {
        "name": "dz1", "index": [0, 0], "value": 0.0, "exact": "0", "label": "dz1[1]", "claimed": -6.0,
        "correct": False, "reason": "z1[1] = -1 < 0, so ReLU blocks the gradient: dz1[1] = 0, not -6 "
                                    "(-6 is da1[1]: the ReLU mask was forgotten)"}
    assert cells[("dW1", (1, 1))]["value"] == 46.0 and cells[("dW1", (1, 1))]["claimed"] is None
    assert cells[("L", (0, 0))]["value"] == 53.0


def test_cli_example_exit_codes(capsys, tmp_path):
    assert main(["example", str(SPEC), "--json"]) == 1  # the seed's claimed cells are wrong
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False and sum(c["correct"] is False for c in payload["cells"]) == 3
    spec = tmp_path / "right.toml"
    spec.write_text(SPEC.read_text().replace("dz2 = [[1], [0.5]]", "dz2 = [[1], [0]]")
                    .replace("dz1 = [[1], [-2], [2], [-1]]", "dz1 = [[1], [0], [2], [0]]"))
    assert main(["example", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "claimed cells: 17 of 17 right" in out and "  dz1  = [1, 0, 2, 0]^T" in out


@pytest.mark.parametrize("text, message", [
    ("[values]\nx = [[1]]\n", "missing table [model]"),
    ("[model]\nsizes = [1, 1]\n", "the [values] table is missing"),
    ("[model]\nsizes = [1, 1]\nhiden = 'relu'\n[values]\n", "unknown field 'hiden' (did you mean 'hidden'?)"),
    ("[model]\nsizes = [1, 1]\n[values]\n[claimed]\n", "unknown table [claimed] (did you mean 'claims'?)"),
    ("[model\n", "not valid TOML"),
])
def test_cli_bad_spec_is_one_line_and_exit_2(capsys, tmp_path, text, message):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    assert main(["example", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@needs_tex
def test_example_document_compiles_and_settles_the_dispute(tmp_path):
    assert main(["example", str(SPEC), "-o", str(tmp_path / "e.tex"), "--pdf"]) == 1
    text = subprocess.run(["pdftotext", str(tmp_path / "e.pdf"), "-"], capture_output=True, text=True).stdout
    assert "Seed 000 settled" in text
    assert "3 of 17 claimed cells are wrong" in text
    flat = " ".join(text.split())
    assert "< 0, so ReLU blocks the gradient:" in flat and "= −2 < 0" in flat  # a minus sign, not a hyphen
    assert "Exact values" in text
    # symbp's sentences name the cells in the documents' notation, and print no e-notation
    source = (tmp_path / "e.tex").read_text()
    assert (r"\par\quad $z^{(1)}_{2}$ = $-$2 \textless{} 0, so ReLU blocks the gradient: $\partial L / \partial "
            r"z^{(1)}_{2}$ = 0, not $-$2 ($-$2 is $\partial L / \partial a^{(1)}_{2}$: the ReLU mask was forgotten).") in source
    assert (r"$\partial L / \partial W^{(3)}_{3,1}$ & $0$ & $0.0000454$ & \holds{right} & agrees to within 0.005 "
            "(true value 0.000045399)") in source
    assert r"\paragraph{$\partial L / \partial z^{( 1 )}$} claimed $\begin{bmatrix}1 \\ -2 \\ 2 \\ -1\end{bmatrix}$" in source
    assert "z1[2]" not in source and not re.search(r"\de-0\d", source) and "^{T}" not in source


def test_document_without_claims_has_no_claims_section(square_net):
    tex = document(worked_example(square_net, SQUARE))
    assert "The claimed cells" not in tex and r"\begin{bmatrix}" in tex


@needs_tex
@pytest.mark.parametrize("config", [
    dict(sizes=[2, 2, 2], hidden="relu", output="softmax", loss="cross_entropy", batch=2),
    dict(sizes=[2, 2], output="sigmoid", loss="binary_cross_entropy", batch=3),
    dict(sizes=[2, 2, 2], hidden="tanh", output="identity", loss="mse", bias=False),
], ids=config_id)
def test_documents_compile_for_batches_and_other_losses(tmp_path, config):
    net = make(config)
    values = {k: v.round(1).tolist() for k, v in numeric.random_values(net, seed=1).items()}
    ex = worked_example(net, values, claimed={"dW1": (-np.array(values["W1"])).tolist()})
    pdf = symbp.latex.compile_pdf(document(ex), tmp_path / "e.pdf")
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split())
    assert net.describe() in text
    wrong = len(ex.wrong)
    assert wrong > 0 and f"{wrong} of {net.shape('W1')[0] * net.shape('W1')[1]} claimed cells are wrong" in text


def test_title_without_a_document_is_bad_input(capsys):
    assert main(["example", str(SPEC), "--title", "mine"]) == 2
    assert capsys.readouterr().err == "symbp example: error: --title is an option of the document: add -o FILE.tex\n"


def _huge_values(scale):
    return {"x": [[scale], [2]], "y": [[1], [0]], "W1": [[scale, 1], [1, 1]], "b1": [[0], [0]],
            "W2": [[1, -1], [-1, 1]], "b2": [[0], [0]]}


def test_values_whose_cells_lose_every_digit_are_refused_naming_the_cell():
    # z2 = +-1e600: the loss log(e^z1 + e^z2) - z1 cancels every digit of a 40-digit shadow; it printed
    # L = inf and dW2 = inf before, a wrong worked example with exit 0
    net = symbp.MLP([2, 2, 2])
    with pytest.raises(SymbpError, match=r"^L: its value cannot be computed to 40 digits"):
        worked_example(net, _huge_values(10 ** 300))


def test_cells_known_only_to_be_tiny_are_zero():
    # z2 = +-1e16: L = log(1 + exp(-2e16)) is below any printed digit; 0 to 30 places, not a refusal
    ex = worked_example(symbp.MLP([2, 2, 2]), _huge_values(10 ** 8))
    assert abs(float(ex.approx["L"][0])) < 1e-30
    assert ex.forward["z2"] == sp.Matrix([10 ** 16 - 10 ** 8, 10 ** 8 - 10 ** 16])  # exact, as ever


# --------------------------------------------------------------------------- networks of layers, every op

from op_networks import configs as op_configs, make as make_op  # noqa: E402


def halves(net, seed=0):
    """A point of ``net`` a person can follow: the random point rounded to halves (masks stay 0/1)."""
    point = numeric.random_values(net, seed)
    return {k: (np.round(np.asarray(point[k], dtype=float) * 2) / 2).tolist() for k in net.inputs + net.params}


@pytest.mark.parametrize("config", sorted(op_configs()))
def test_layers_example_document_for_every_op(config):
    """Every op of the table: the cells agree with NumPy backprop, and the document shows each gradient's
    formula (the op table's backward, through textbook) next to its numbers."""
    from symbp.example import _cell_text
    from symbp.formula import parse
    from symbp.latex import SymbpLatexPrinter, abbreviated, formula_lines, visible_width
    from symbp.document import network_names
    from symbp.verify import textbook

    net = make_op(config)
    values = halves(net)
    ex = worked_example(net, values)
    fd = numeric.finite_differences(net, {k: np.array(v, dtype=float) for k, v in values.items()})
    tex = document(ex)
    printer = SymbpLatexPrinter(columns=net.columns, names=network_names(net))
    claims = textbook(net)
    assert set(ex.backward) == {"d" + n for n in net.params + net.intermediates}
    for name in net.params + net.intermediates:
        M = ex.value("d" + name)
        got, want = np.array(M.evalf(20).tolist(), dtype=float), fd.gradients[name]
        for index in np.ndindex(*got.shape):
            if (name, index) not in fd.kink_crossings:  # central differences across a kink are no derivative
                assert abs(got[index] - want[index]) <= 1e-6 * (1 + abs(want[index])), (name, index)
        cells = " \\\\ ".join(" & ".join(_cell_text(M[i, j], ex.num("d" + name)[i, j]) for j in range(M.cols))
                              for i in range(M.rows))
        symbol = rf"\frac{{\partial L}}{{\partial {printer.base(name)}}}"
        shown = rf"\begin{{bmatrix}}{cells}\end{{bmatrix}}"
        if name in claims:
            node = parse(claims[name], net)
            first = formula_lines(node, printer=printer, width=55)[0]
            if visible_width(first) > 60:  # a long product is shown with its repeated parts named u_k
                main, where = abbreviated(node, printer=printer)
                first = main
                assert where and all(f"{u} &= {d}" in tex for u, d in where), name
            assert f"{symbol} &= {first}" in tex, name
        assert shown in tex, name
    for layer in net.layers:
        assert f"\\subsection*{{Layer {layer.position}: {layer.op.name.replace('_', chr(92) + '_')}}}" in tex


def test_cli_writes_the_example_of_a_network_of_layers(tmp_path, capsys):
    spec = tmp_path / "net.toml"
    values = halves(make_op("layernorm"))
    spec.write_text('[model]\ninput = 2\nbatch = 2\nloss = "mse"\n'
                    '[[layers]]\nop = "affine"\nout = 3\n[[layers]]\nop = "layernorm"\n[[layers]]\nop = "affine"\nout = 2\n'
                    "[values]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    assert main(["example", str(spec), "-o", str(tmp_path / "out.tex")]) == 0
    tex = (tmp_path / "out.tex").read_text()
    assert "\\subsection*{Layer 2: layernorm}" in tex and "\\section*{Backward pass}" in tex


@needs_tex
@pytest.mark.parametrize("config", ["layernorm", "attention-causal", "batchnorm", "dropout", "add", "activation",
                                    "custom-loss"])
def test_layers_example_documents_compile_without_overfull_boxes(tmp_path, config):
    import re

    net = make_op(config)
    ex = worked_example(net, halves(net))
    log = tmp_path / "e.log"
    pdf = symbp.latex.compile_pdf(document(ex), tmp_path / "e.pdf", log_path=log)
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split())
    assert "Backward pass" in text and f"Layer {net.layers[-1].position}:" in text
    assert "Overfull \\hbox" not in log.read_text(), re.findall(r"Overfull \\hbox.*", log.read_text())


def test_blank_sheet_keeps_the_given_numbers_and_boxes_every_computed_cell(tmp_path, capsys):
    out = tmp_path / "sheet.tex"
    assert main(["example", str(SPEC), "-o", str(out), "--blank"]) == 1  # the spec's claims are still judged
    sheet, solution = out.read_text(), (tmp_path / "sheet-solution.tex").read_text()
    ex = from_spec(SPEC)
    assert solution == document(ex)  # the solution is the ordinary document
    computed = sum(len(ex.value(n)) for n in list(ex.forward) + list(ex.backward)) + 1  # + the loss
    assert sheet.count(r"\blankcell") >= computed  # the backward formulas box the matrices they reuse too
    assert sheet.count(r"\begin{bmatrix}1 & 0 & 1 & 0 \\ 0 & 1 & -1 & 0") == solution.count(
        r"\begin{bmatrix}1 & 0 & 1 & 0 \\ 0 & 1 & -1 & 0") > 0  # the given W1 is kept wherever it is shown
    assert "The claimed cells" not in sheet and "Exact values" not in sheet and "a problem sheet" in sheet
    assert "0.5000" not in sheet and r"\frac{e^{10}" not in sheet  # no computed value leaks
    net = make_op("layernorm")
    layered = document(worked_example(net, halves(net)), blank=True)
    assert r"\blankcell" in layered and "0.9444" not in layered


def test_blank_needs_a_document(capsys):
    assert main(["example", str(SPEC), "--blank"]) == 2
    assert capsys.readouterr().err == "symbp example: error: --blank is an option of the document: add -o FILE.tex\n"


def test_cells_on_a_kink_or_saturated_are_flagged():
    from symbp.example import kink_flags

    net = symbp.MLP([2, 2, 1], hidden="relu", output="identity", loss="mse")
    values = {"x": [[1], [1]], "y": [[0]], "W1": [[1, -1], [1, 1]], "b1": [[0], [0]], "W2": [[2, 3]], "b2": [[0]]}
    ex = worked_example(net, values)
    assert ex.value("z1")[0] == 0 and kink_flags(ex) == ["z1[1] = 0: ReLU'(0) = 0 by convention"]
    assert "Cells to watch.} $z^{(1)}_{1}$ = 0: ReLU'(0) = 0 by convention." in document(ex)  # the cell as typeset
    smooth = symbp.MLP([1, 1, 1], hidden="sigmoid", output="identity", loss="mse")
    ex = worked_example(smooth, {"x": [[10]], "y": [[0]], "W1": [[1]], "b1": [[0]], "W2": [[2]], "b2": [[0]]})
    assert kink_flags(ex) == ["z1[1] = 10: sigmoid saturates there (sigmoid' = 0.00004540)"]  # e^-10 / (1 + e^-10)^2
    assert kink_flags(from_spec(SPEC)) == []  # seed 000: every unit off its kink


def test_significant_digits_never_round_a_small_number_to_zero():
    from symbp.example import significant

    assert [significant(v) for v in (2.7e-5, -0.000123456, 0.5, 99999.6, 1 / 3)] == [
        "0.00002700", "-0.0001235", "0.5000", "100000", "0.3333"]
