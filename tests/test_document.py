"""Derivation documents: the context's mathematics, determinism, the CLI, and real pdflatex compiles.

The compile tests share their PDFs through module-scoped fixtures: each document is compiled once.
"""

import json
import random
import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp import document, numeric
from symbp import latex as L
from symbp.cli import main
from symbp.errors import SymbpError
from symbp.registry import ACTIVATIONS

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="TeX is installed by .ci/run")

# --------------------------------------------------------------------------- the context's mathematics


@pytest.fixture(scope="module")
def seed_net():
    net = symbp.MLP([4, 5, 3, 3])
    return net, symbp.derive(net)


@pytest.fixture(scope="module")
def seed_context(seed_net):
    net, grads = seed_net
    return document.context(net, grads=grads)


def test_backward_goes_from_the_output_back(seed_context):
    layers = seed_context["backward"]
    assert [layer["l"] for layer in layers] == [3, 2, 1]
    assert layers[0]["targets"]["a"]["name"] == "a2" and layers[-1]["targets"]["a"] is None


def test_entries_are_the_derived_ones(seed_context):
    W3 = seed_context["backward"][0]["targets"]["W"]
    # dL/dW3[1,1] = delta3_1 a2_1 and dL/dW3[3,3] = delta3_3 a2_3 (seed 001: dW3 = delta3 a2^T)
    assert [(e["lhs"], e["rhs"]) for e in W3["entries"]] == [
        ("W^{(3)}_{1,1}", r"\delta^{(3)}_{1} a^{(2)}_{1}"),
        ("W^{(3)}_{3,3}", r"\delta^{(3)}_{3} a^{(2)}_{3}")]
    a2 = seed_context["backward"][0]["targets"]["a"]
    assert a2["entries"][0]["rhs"] == (r"\delta^{(3)}_{1} W^{(3)}_{1,1} + \delta^{(3)}_{2} W^{(3)}_{2,1} + "
                                       r"\delta^{(3)}_{3} W^{(3)}_{3,1}")
    z2 = seed_context["backward"][1]["targets"]["z"]
    assert z2["entries"][0]["rhs"] == r"\bar{a}^{(2)}_{1} \operatorname{step}\left(z^{(2)}_{1}\right)"


def test_closed_forms_are_the_textbook_claims_typeset_with_shape_checks(seed_context):
    layer3 = seed_context["backward"][0]["targets"]
    assert layer3["W"]["closed"] == {"claim": "dz3 @ a2.T", "tex": r"\delta^{(3)} a^{(2)\top}",
                                     "products": [((3, 1), (1, 3), (3, 3))], "shape": (3, 3),
                                     # n_3 = n_2 = 3 in the seeds' network: this check cannot tell W3 from W3^T
                                     "named": {"products": [(("n_{3}", "1"), ("1", "n_{2}"), ("n_{3}", "n_{2}"))],
                                               "shape": ("n_{3}", "n_{2}"), "coincide": [("n_{2}", "n_{3}", 3)]},
                                     "wide": False}
    assert layer3["a"]["closed"]["tex"] == r"W^{(3)\top} \delta^{(3)}"
    assert layer3["a"]["closed"]["products"] == [((3, 3), (3, 1), (3, 1))]
    W1 = seed_context["backward"][2]["targets"]["W"]["closed"]
    assert W1["products"] == [((5, 1), (1, 4), (5, 4))]  # (n_1 x 1)(1 x n_0) = n_1 x n_0, seed 001
    assert W1["named"]["products"] == [(("n_{1}", "1"), ("1", "n_{0}"), ("n_{1}", "n_{0}"))]
    assert W1["named"]["coincide"] == []  # n_1 = 5, n_0 = 4: a transposed answer fails the shape check
    z2 = seed_context["backward"][1]["targets"]["z"]["closed"]
    assert z2["tex"] == r"\bar{a}^{(2)} \odot \operatorname{step}\left(z^{(2)}\right)"


def test_marks_say_how_each_gradient_was_established(seed_context):
    marks = {t["name"]: t["mark"] for layer in seed_context["backward"] for t in layer["targets"].values() if t}
    assert set(marks) == {"z3", "W3", "b3", "a2", "z2", "W2", "b2", "a1", "z1", "W1", "b1"}
    assert all(m["verdict"] == "holds" and m["method"] == "all-sizes" for m in marks.values())
    # symbp.allsizes' detail is said once per document (issue 13): the note, and each mark's own assumption
    assert all(m["allsizes"] and m["detail"] == "" for m in marks.values())
    assert marks["z3"]["assuming"] == "every target row sums to 1" and marks["W3"]["assuming"] == ""
    assert seed_context["allsizes"] == {"names": "n0, n1, n2, n3", "upstream": True, "first": "z3",
                                        "assuming": [("z^{(3)}", "every target row sums to 1")]}
    assert all(m["bound"] <= -12 for m in marks.values())
    assert seed_context["checks"]["assumptions"] == ["every target row sums to 1"]


def test_batch_closed_forms_sum_over_the_rows():
    net = symbp.MLP([4, 5, 3, 3], batch=3)
    layer3 = document.context(net, example=False)["backward"][0]["targets"]
    assert layer3["W"]["closed"]["tex"] == r"\delta^{(3)\top} a^{(2)}"
    assert layer3["W"]["closed"]["products"] == [((3, 3), (3, 3), (3, 3))]
    assert layer3["b"]["closed"]["tex"] == r"\left(\mathbf{1}_{3}^{\top} \delta^{(3)}\right)^{\top}"
    assert layer3["b"]["closed"]["products"] == [((1, 3), (3, 3), (1, 3))]  # 1_N^T delta: (1 x N)(N x n_3)
    assert layer3["z"]["closed"]["tex"] == r"\frac{a^{(3)} - y}{N}"


@pytest.mark.parametrize("config", __import__("conftest").configurations(), ids=__import__("conftest").config_id)
def test_every_configuration_renders(config):
    from conftest import make

    net = make(config)
    source = document.render(net, example=False)
    # every layer has a section of its own, or shares one with the alike layers above it
    headings = re.findall(r"\\subsection\{Layers? ([\d, ]+): ", source)
    assert sorted(int(l) for h in headings for l in h.split(", ")) == list(range(1, net.L + 1))
    # one mark per gradient shown (a table cell "& \holds{"): every parameter and intermediate but a_L
    # (folded into the output layer)
    assert source.count("& \\holds{") == len(net.params) + len(net.intermediates) - 1
    assert "\\fails{" not in source  # every closed form holds and has its target's shape


def test_residual_entries_carry_the_identity_term():
    """Seed 001: dL/dx = dL/dH (dF/dx + 1); here a2 = a1 + tanh(z2), so abar1_j gains abar2_j."""
    net = symbp.MLP([2, 2, 2, 2], hidden="tanh", residual=True)
    a1 = document.context(net, example=False)["backward"][1]["targets"]["a"]
    assert a1["entries"][0]["rhs"] == (r"\delta^{(2)}_{1} W^{(2)}_{1,1} + \delta^{(2)}_{2} W^{(2)}_{2,1} + "
                                       r"\bar{a}^{(2)}_{1}")


def test_assembly_is_the_matrix_of_entries(seed_context):
    W3 = seed_context["backward"][0]["targets"]["W"]
    assert W3["shape"] == {"rows": 3, "cols": 3} and not W3["elided"]
    assert [[c.tex for c in row] for row in W3["matrix"]][1] == [
        rf"\delta^{{(3)}}_{{2}} a^{{(2)}}_{{{j}}}" for j in (1, 2, 3)]


def test_softmax_cross_entropy_simplifies_to_a_minus_y_under_its_side_condition(seed_context):
    out = seed_context["output"]
    assert out["steps"][1] == [r"a^{(3)}_{1} \left(y_{1} + y_{2} + y_{3}\right) - y_{1}"]
    assert out["condition"] == "y_{1} + y_{2} + y_{3} = 1"
    assert out["simplified"] == "a^{(3)}_{1} - y_{1}"
    assert out["condition_text"] == "every target row sums to 1"


@pytest.mark.parametrize("config, simplified", [
    (dict(sizes=[3, 2, 3], batch=3), r"\frac{a^{(2)}_{1,1} - y_{1,1}}{3}"),
    (dict(sizes=[3, 2, 3], batch=2, reduction="sum"), r"a^{(2)}_{1,1} - y_{1,1}"),
    (dict(sizes=[2, 4], output="sigmoid", loss="binary_cross_entropy"), r"\frac{a^{(1)}_{1} - y_{1}}{4}"),
    (dict(sizes=[2, 3], output="softmax", loss="mse"), None),
    (dict(sizes=[2, 2], output="sigmoid", loss="cross_entropy"), None),
])
def test_output_error_term_per_pair(config, simplified):
    config = dict(config)
    net = symbp.MLP(config.pop("sizes"), **config)
    out = document._output(net, symbp.derive(net), L.SymbpLatexPrinter(net.columns))
    assert out["simplified"] == simplified


def test_softmax_mse_is_the_jacobian_vector_product_in_the_outputs():
    net = symbp.MLP([2, 3], output="softmax", loss="mse")
    out = document._output(net, symbp.derive(net), L.SymbpLatexPrinter(net.columns))
    # delta_1 = abar_1 a_1 (1 - a_1) - abar_2 a_1 a_2 - abar_3 a_1 a_3  (softmax Jacobian: a_m([m=k] - a_k))
    assert " ".join(out["steps"][1]) == (r"\bar{a}^{(1)}_{1} \left(a^{(1)}_{1} - \left(a^{(1)}_{1}\right)^{2}\right) "
                                         r"- \bar{a}^{(1)}_{2} a^{(1)}_{1} a^{(1)}_{2} - \bar{a}^{(1)}_{3} a^{(1)}_{1} a^{(1)}_{3}")


def test_large_matrices_are_elided_with_dots():
    net = symbp.MLP([9, 7, 2])
    ctx = document.context(net)
    W1 = ctx["backward"][1]["targets"]["W"]
    assert W1["elided"]
    shown = [[c.tex or c.dots for c in row] for row in W1["matrix"]]
    assert len(shown) == 5 and all(len(row) <= 5 for row in shown)
    assert shown[3][0] == "vdots" and "ddots" in shown[3] and shown[0][-2] == "cdots"
    assert shown[-1][-1] == r"\delta^{(1)}_{7} x_{9}"  # the last entry stays


def test_long_sums_are_elided_in_print():
    net = symbp.MLP([8, 2])
    ctx = document.context(net, example=False)
    z = ctx["forward"][0]["z_entry"]["rhs"]
    assert z == r"W^{(1)}_{1,1} x_{1} + W^{(1)}_{1,2} x_{2} + W^{(1)}_{1,3} x_{3} + \cdots + W^{(1)}_{1,8} x_{8} + b^{(1)}_{1}"


def test_printer_orders_terms_naturally_and_splits_long_sums():
    printer = L.SymbpLatexPrinter(columns={"x"})
    e = sum(sp.Symbol(f"W1_0_{j}", real=True) * sp.Symbol(f"x_{j}_0", real=True) for j in range(11))
    pieces = printer.add_pieces(e)
    assert pieces[:3] == ["W^{(1)}_{1,1} x_{1}", "+ W^{(1)}_{1,2} x_{2}", "+ W^{(1)}_{1,3} x_{3}"]
    assert pieces[-1] == "+ W^{(1)}_{1,11} x_{11}"  # x_11 after x_10, not after x_1
    lines = printer.lines(e, width=30)
    assert len(lines) > 1 and " ".join(lines) == printer.doprint(e)
    assert all(L.visible_width(line) <= 30 + 6 for line in lines)
    # anything else prints exactly as SymPy prints it
    other = -10 + sp.log(1 + 2 * sp.exp(10))
    assert printer.doprint(other) == sp.latex(other)


def _numbers(rows):
    return np.array([[float(c.tex) for c in row] for row in rows])


@pytest.mark.parametrize("config", [dict(sizes=[4, 5, 3, 3]), dict(sizes=[3, 2, 2], hidden="tanh", batch=2),
                                    dict(sizes=[2, 3, 2], hidden="sigmoid", output="sigmoid",
                                         loss="binary_cross_entropy")])
def test_worked_example_cells_agree_with_the_numpy_reference(config):
    """Every printed cell against the independent NumPy backprop at the same (exact) point, to the four
    significant digits it is printed with."""
    config = dict(config)
    net = symbp.MLP(config.pop("sizes"), **config)
    ctx = document.context(net, example=True)
    values = {k: np.array(v.tolist(), dtype=float) for k, v in document.example_values(net).items()}
    reference = numeric.reference_gradients(net, values)
    forward = numeric.forward_pass(net, values)
    for f in ctx["example"]["forward"]:
        assert np.allclose(_numbers(f["z"]), forward[f"z{f['l']}"], rtol=5.1e-4, atol=1e-12)
        assert np.allclose(_numbers(f["a"]), forward[f"a{f['l']}"], rtol=5.1e-4, atol=1e-12)
    for b in ctx["example"]["backward"]:
        for name, key in ((f"W{b['l']}", "W"), (f"b{b['l']}", "b"), (f"z{b['l']}", "delta")):
            assert np.allclose(_numbers(b[key]), reference[name], rtol=5.1e-4, atol=1e-12), name
    assert abs(float(ctx["example"]["loss"]) - forward["L"]) <= 5.1e-4 * abs(forward["L"])


def test_worked_example_shows_the_relu_mask():
    """Seed 000's dispute: dL/dz = dL/da * step(z), so units with z <= 0 get a zero error term."""
    net = symbp.MLP([4, 5, 3, 3])
    ctx = document.context(net, example=True)
    for b in ctx["example"]["backward"][1:]:
        slope, abar, delta = (_numbers(b[k]) for k in ("slope", "abar", "delta"))
        assert set(slope.ravel()) <= {0.0, 1.0}
        assert np.array_equal(delta, abar * slope)


def test_number_format_is_explicit():
    assert document.number_tex(sp.Rational(-1, 8)) == "-0.125"  # a short decimal as it is
    assert document.number_tex(sp.Rational(1, 20000)) == "0.00005"  # never "0" for a small nonzero number
    assert document.number_tex(sp.Float("2.99996", 30)) == "3.000"  # four significant digits
    assert document.number_tex(-sp.exp(-20)) == "-0.000000002061"  # no exponent in typeset text
    assert document.number_tex(sp.Integer(0)) == "0" and document.number_tex(sp.Float(0)) == "0"
    assert document.number_tex(sp.Rational(1, 20000), strip=False) == "0.0000"  # a fixed column: decimals


def test_error_bound_is_a_power_of_ten():
    assert numeric.error_exponent(0.0) == numeric.ERROR_FLOOR
    assert numeric.error_exponent(9.9e-7) == -6 and numeric.error_exponent(1e-6) == -5


def test_rendering_is_deterministic_and_undated():
    one = document.render(symbp.MLP([3, 2, 2], hidden="tanh"))
    two = document.render(symbp.MLP([3, 2, 2], hidden="tanh"))
    assert one == two
    assert "\\today" not in one and re.search(r"20\d\d-\d\d-\d\d", one) is None
    assert f"symbp {symbp.__version__} with SymPy {sp.__version__}" in one


def test_title_is_escaped():
    source = document.render(symbp.MLP([2, 2]), title="Grads & 100% of L_1 #1 {x}")
    assert r"\title{Grads \& 100\% of L\_1 \#1 \{x\}}" in source


def test_user_templates_override_the_packaged_ones(tmp_path):
    (tmp_path / "derivation.tex.j2").write_text(
        "((* extends 'base.tex.j2' *))((* block body *))mine: ((( net.sizes | join('-') )))((* endblock *))")
    source = document.render(symbp.MLP([2, 3, 2]), template_dir=tmp_path)
    assert "mine: 2-3-2" in source and "\\documentclass" in source


def test_formula_latex_prints_the_closed_forms():
    name = lambda v, shape: SimpleNamespace(op="name", value=v, args=(), shape=shape)
    node = lambda op, *args, shape, value=None: SimpleNamespace(op=op, args=args, shape=shape, value=value)
    W3, dz3, z2 = name("W3", (3, 3)), name("dz3", (3, 1)), name("z2", (3, 1))
    claim = node("mul", node("matmul", node("transpose", W3, shape=(3, 3)), dz3, shape=(3, 1)),
                 node("func", z2, shape=(3, 1), value="step"), shape=(3, 1))
    assert L.formula_latex(claim) == (r"W^{(3)\top} \delta^{(3)} \odot "
                                      r"\operatorname{step}\left(z^{(2)}\right)")
    assert L.products(claim) == [((3, 3), (3, 1), (3, 1))]
    batch = node("sum", name("dz2", (4, 3)), shape=(1, 3), value=0)
    assert L.formula_latex(node("transpose", batch, shape=(3, 1))) == \
        r"\left(\mathbf{1}_{4}^{\top} \delta^{(2)}\right)^{\top}"
    diff = node("sub", name("a3", (3, 1)), node("sub", name("y", (3, 1)), name("a3", (3, 1)), shape=(3, 1)),
                shape=(3, 1))
    assert L.formula_latex(diff) == r"a^{(3)} - \left(y - a^{(3)}\right)"


# --------------------------------------------------------------------------- command line


def test_derive_writes_the_document_atomically(tmp_path, capsys):
    out = tmp_path / "net.tex"
    assert main(["derive", "2,3,2", "--title", "T & T", "-o", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["output"] == str(out) and payload["pdf"] is None
    assert out.read_text() == document.render(symbp.MLP([2, 3, 2]), title="T & T")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.tex"]


def test_derive_document_shows_the_chain_entries_and_states_the_layout(tmp_path):
    out = tmp_path / "x.tex"
    assert main(["derive", "2,3,2", "--method", "expand", "-o", str(out)]) == 0
    source = out.read_text()
    assert r"\item \textbf{Layout}: denominator: $\partial L / \partial V$ has the shape of $V$" in source
    # the chain method's compact entries, assembled (the full matrix, so no first-and-last display)
    assert r"\frac{\partial L}{\partial W^{(2)}} = \begin{bmatrix}\delta^{(2)}_{1} a^{(1)}_{1} & " in source
    net = symbp.MLP([2, 2])
    assert document.render(net, grads=symbp.derive(net, method="expand")) == document.render(net)
    with pytest.raises(SymbpError, match="grads must be symbp.derive"):
        document.render(net, grads=symbp.derive(symbp.MLP([2, 2])))


@pytest.mark.parametrize("argv, message", [
    (["derive", "2,2", "--pdf"], "--pdf is an option of the document: add -o FILE.tex"),
    (["derive", "2,2", "--title", "x"], "--title is an option of the document: add -o FILE.tex"),
    (["derive", "2,2", "-o", "{tmp}/missing/x.tex"], "folder '{tmp}/missing' does not exist"),
    (["derive", "2,2", "-o", "{tmp}/x.txt"], "expected a file name ending in .tex"),
    (["derive", "2,2", "-o", "{tmp}/x.tex", "--template-dir", "{tmp}/nope"], "template folder '{tmp}/nope' does not exist"),
])
def test_derive_document_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.replace("{tmp}", str(tmp_path)) in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- compiled with pdflatex


def random_configs(count=8, seed=4):
    """Random networks, 1 to 4 layers, every activation, single and batch (deterministic)."""
    rng = random.Random(seed)
    pairs = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse"),
             ("softmax", "mse"), ("sigmoid", "cross_entropy")]
    names = list(ACTIVATIONS)
    configs, used = [], 0
    for k in range(count):
        layers = 1 + k % 4
        output, loss = pairs[k % len(pairs)]
        hidden = [names[(used + m) % len(names)] for m in range(layers - 1)]
        used += layers - 1
        configs.append(dict(sizes=[rng.randint(2, 4) for _ in range(layers + 1)], hidden=hidden,
                            output=output, loss=loss, batch=[None, 2][k % 2]))
    return configs


def _pdf_text(pdf):
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Each random configuration compiled once: {index: (net, pdf text, log)}."""
    if shutil.which("pdflatex") is None:
        pytest.skip("TeX is installed by .ci/run")
    folder = tmp_path_factory.mktemp("compiled")
    out = {}
    for k, config in enumerate(random_configs()):
        config = dict(config)
        net = symbp.MLP(config.pop("sizes"), **config)
        pdf, log = folder / f"doc{k}.pdf", folder / f"doc{k}.log"
        L.compile_pdf(document.render(net, title=f"Random network {k}"), pdf, log_path=log)
        out[k] = (net, _pdf_text(pdf), log.read_text(errors="replace"))
    return out


def test_random_configurations_cover_the_registry():
    configs = random_configs()
    assert {c["sizes"].__len__() - 1 for c in configs} == {1, 2, 3, 4}
    assert {h for c in configs for h in c["hidden"]} == set(ACTIVATIONS)
    assert {c["batch"] for c in configs} == {None, 2}


def check_parts(net, text):
    """The parts every derivation must show, found in the PDF's text."""
    flat = " ".join(text.split())
    for part in ("Conventions.", "Layout: denominator", "SymPy " + sp.__version__,
                 "Notation", "Forward pass", "The backward pass for a generic layer", "Why the transposes.",
                 "At realistic sizes (seed 001: 10 classes, 128 hidden units)", "W (l) ← W (l) − η ∂L/∂W (l)",
                 "The output layer’s error term", "The backward pass, layer by layer", "Gradient flow",
                 "How this was checked", "judged each against the derived per-element entries: all hold",
                 "gradient entry (i, j) closed form shape check check",
                 "agree with a plain NumPy backprop at a random point"):
        assert part in flat, part
    # the numeric check keeps away from the kinks, and says so, only when an activation has one
    assert ("at a random point away from the kinks" in flat) == any(a.kinks for a in net.hidden)
    # the ReLU kink is stated where there is a ReLU, and only there
    # (pdftotext -layout may set the prime on a line of its own, by where the line falls on the page)
    assert bool(re.search(r"Kinks: ReLU′? \(0\) = 0", flat)) == any(a.name == "relu" for a in net.hidden)
    assert flat.count("Numeric check") == 0  # the numeric check is stated once, not per gradient
    # every layer has its section, or shares one with the alike layers above it ("Layers 3, 2, 1: hidden")
    shown = [int(l) for h in re.findall(r"Layers? ((?:\d+, )*\d+): (?:output|hidden)", flat) for l in h.split(", ")]
    assert sorted(shown) == list(range(1, net.L + 1))
    assert f"Layer {net.L}: output" in flat
    assert ("Batch of N = " in flat) == bool(net.batch)
    assert ("The batch extension" in flat) == bool(net.batch)
    assert re.search(r"\(\d\.1\)", text), "equations are numbered"
    if net.fused and net.fused.side_condition:
        assert "(when every target row sums to 1)" in flat
    if net.residual_layers:
        assert "the +1 (the identity) carries" in flat


def check_log(log):
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)
    assert "\n! " not in log


@needs_tex
@pytest.mark.parametrize("k", range(len(random_configs())))
def test_random_configurations_compile_cleanly_with_every_part(compiled, k):
    net, text, log = compiled[k]
    check_log(log)
    check_parts(net, text)
    assert f"Random network {k}" in text


@needs_tex
def test_a_special_title_compiles_and_prints_as_written(tmp_path):
    title = "Grads & 100% of L_1 #1 {x}"
    out = tmp_path / "t.tex"
    assert main(["derive", "2,2", "--title", title, "-o", str(out), "--pdf"]) == 0
    assert title in _pdf_text(out.with_suffix(".pdf"))


@needs_tex
def test_pdf_failure_reports_the_first_latex_error_and_leaves_nothing(tmp_path, capsys):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "derivation.tex.j2").write_text(
        "((* extends 'base.tex.j2' *))((* block body *))\n\\undefinedmacro\n((* endblock *))")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["derive", "2,2", "-o", str(out / "x.tex"), "--pdf", "--template-dir", str(templates)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("symbp derive: error: LaTeX error: Undefined control sequence.") and err.count("\n") == 1
    assert list(out.iterdir()) == []


def test_formula_latex_prints_sizes_constants_and_the_new_functions():
    from symbp.formula import parse

    net = symbp.MLP([3, 4, 3], output="identity", loss="mse", batch=5)
    tex = lambda text: L.formula_latex(parse(text, net))
    assert tex("erf(z1) / pi") == r"\frac{\operatorname{erf}\left(z^{(1)}\right)}{\pi}"
    assert tex("cosh(z1) * n1") == r"\cosh\left(z^{(1)}\right) \odot n_{1}"
    assert tex("sqrt(z1 + 1)") == r"\sqrt{z^{(1)} + 1}"
    assert tex("ones(N, n2)") == r"\mathbf{1}_{N \times n_{2}}"
    assert tex("mean(z1, axis=0)") == r"\frac{\mathbf{1}_{5}^{\top} z^{(1)}}{5}"
