"""The derivation documents teach (issue 13): the generic layer once, why the transposes, shape checks
by named sizes that say when they cannot tell W from W^T, the output layer's steps, one notation, and a
teacher's controls. Each test asserts exact lines of the generated LaTeX."""

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp import document
from symbp import latex as L
from symbp.cli import main
from symbp.errors import SymbpError


@pytest.fixture(scope="module")
def seed():
    return document.render(symbp.MLP([4, 5, 3, 3]), example=False)


@pytest.fixture(scope="module")
def bce():
    return document.render(symbp.MLP([3, 4, 2], hidden="tanh", output="sigmoid", loss="binary_cross_entropy"),
                           example=False)


def lines(source):
    return source.splitlines()


def test_the_generic_layer_explains_the_transposes_once(seed):
    assert seed.count(r"\section{The backward pass for a generic layer}") == 1
    assert (r"\textbf{Why the transposes.} Entry $(i, j)$ of $\partial L / \partial W^{(l)}$ is "
            r"$\delta^{(l)}_{i} a^{(l-1)}_{j}$: row $i$ from the column $\delta^{(l)}$, column $j$ from the row "
            r"$a^{(l-1)\top}$. That is the outer product $\delta^{(l)} a^{(l-1)\top}$, "
            r"$(n_l \times 1)(1 \times n_{l-1}) = n_l \times n_{l-1}$, the shape of $W^{(l)}$;") in seed
    assert r"runs down column $j$ of $W^{(l)}$, which is row $j$ of $W^{(l)\top}$" in seed
    # the boxed summary: the four equations with their batch forms
    assert (r"weights & \partial L / \partial W^{(l)} = \delta^{(l)} a^{(l-1)\top} & "
            r"\partial L / \partial W^{(l)} = \delta^{(l)\top} a^{(l-1)} \\") in lines(seed)
    assert r"biases & \partial L / \partial b^{(l)} = \delta^{(l)} & \partial L / \partial b^{(l)} = \delta^{(l)\top} \mathbf{1}_N \\" in lines(seed)
    assert r"upstream & \bar{a}^{(l-1)} = W^{(l)\top} \delta^{(l)} & \bar{a}^{(l-1)} = \delta^{(l)} W^{(l)} \\" in lines(seed)
    # seed 001's realistic walk-through and the update
    assert (r"$\delta^{(2)}$ is $10 \times 1$ and $a^{(1)}$ is $128 \times 1$, so $\delta^{(2)} a^{(1)\top}$ is "
            r"$(10 \times 1)(1 \times 128) = 10 \times 128$, the shape of $W^{(2)}$") in seed
    assert r"$W^{(l)} \leftarrow W^{(l)} - \eta\, \partial L / \partial W^{(l)}$" in seed


def test_one_table_row_per_gradient_with_named_shape_checks(seed):
    assert (r"\partial L / \partial W^{(3)} & \delta^{(3)}_{i}\, a^{(2)}_{j} & \delta^{(3)} a^{(2)\top} & "
            r"$( n_{3} \times 1 )( 1 \times n_{2} ) = n_{3} \times n_{2} = 3 \times 3$\,$^{\dagger}$ & "
            r"\holds{all-sizes}$^{*}$ \\") in lines(seed)
    # n_1 = 5 and n_0 = 4 differ: no dagger, the check can fail
    assert (r"\partial L / \partial W^{(1)} & \delta^{(1)}_{i}\, x_{j} & \delta^{(1)} x^{\top} & "
            r"$( n_{1} \times 1 )( 1 \times n_{0} ) = n_{1} \times n_{0} = 5 \times 4$ & \holds{all-sizes}$^{*}$ \\") in lines(seed)
    assert (r"$^{\dagger}$ Here $n_{2} = n_{3} = 3$: where these two sizes meet, a shape check cannot tell a "
            r"matrix from its transpose; the entry-wise check can.") in lines(seed)
    assert seed.count(r"$^{\dagger}$ Here") == 1  # only layer 3 has n_l = n_(l-1)


def test_named_shape_checks_of_a_batch():
    net = symbp.MLP([6, 5, 3, 2], batch=4)
    named = document.named_products(net, "dz2.T @ a1")
    assert named["products"] == [(("n_{2}", "N"), ("N", "n_{1}"), ("n_{2}", "n_{1}"))]
    assert named["coincide"] == []  # N = 4, n_2 = 3, n_1 = 5: every size differs
    assert document.named_products(symbp.MLP([4, 5, 3, 3], batch=3), "dz3.T @ a2")["coincide"] == [
        ("N", "n_{2}", 3), ("N", "n_{3}", 3), ("n_{2}", "n_{3}", 3)]


def test_the_verification_paragraph_appears_once(seed):
    assert seed.count(r"\section*{How this was checked}") == 1
    assert "Numeric check" not in seed and seed.count("max abs error") == 1
    assert "symbp's derivation, the first and the last entry" not in seed  # the full matrices follow


def test_a_single_elided_term_is_written_out():
    p = L.SymbpLatexPrinter(max_terms=5)
    six = sp.Add(*sp.symbols("t1:7"))
    assert r"\cdots" not in p.doprint(six)
    assert p.add_pieces(sp.Add(*sp.symbols("t1:8")))[3] == r"+ \cdots"  # seven terms: two hidden
    assert L._keep(6, 5) == [0, 1, 2, 3, 4, 5] and L._keep(7, 5) == [0, 1, 2, None, 6]


def test_softmax_cross_entropy_shows_the_jacobian_for_a_general_k(seed):
    assert (r"\frac{\partial \ell}{\partial z_{k}} = \sum_{j} \Bigl(-\frac{y_{j}}{a_{j}}\Bigr) a_{j} "
            r"\bigl(\idx{j = k} - a_{k}\bigr) = -y_{k} + a_{k} \sum_{j} y_{j} = a_{k} - y_{k},") in lines(seed)
    assert "the last step because the target's entries sum to $1$" in seed


def test_sigmoid_bce_shows_the_softplus_step_and_the_mean(bce):
    assert r"$\log \sigma(z) = -\operatorname{softplus}(-z)$" in bce
    assert r"the $\frac{1}{n}$ with $n = 2$ comes from the mean over the output units" in bce
    assert r"\delta^{(2)} = \frac{1}{2}\left( a^{(2)} - y \right)." in lines(bce)
    assert r"$f_{1}'(z) = \tanh'(z) = 1 - \tanh^{2}{\left(z \right)}$." in lines(bce)
    assert r"$\sigma(z) = \frac{1}{1 + e^{- z}}$" in bce  # sigma is defined


def test_sigmoid_derivative_is_printed_without_plus_minus_one():
    source = document.render(symbp.MLP([2, 2, 2], hidden="sigmoid"), example=False)
    assert r"$f_{1}'(z) = \sigma'(z) = \left(1 - \sigma\left(z\right)\right) \sigma\left(z\right)$." in lines(source)
    assert "+ -1" not in source and r"+ - 1" not in source


def test_the_relu_kink_is_stated_only_with_a_relu(seed, bce):
    assert r"\item \textbf{Kinks}: $\operatorname{ReLU}'( 0 ) = 0$ (as PyTorch and micrograd)." in lines(seed)
    assert "Kinks" not in bce and r"\operatorname{step}" not in bce


def test_the_gradient_flow_product_is_built_for_the_network(seed, bce):
    product = r", \qquad D_{l} = \operatorname{diag}\bigl(f_l'(z^{(l)})\bigr),"
    assert r"\delta^{(1)} = D_{1} W^{(2)\top} D_{2} W^{(3)\top} \delta^{(3)}" + product in lines(seed)
    assert r"\delta^{(1)} = D_{1} W^{(2)\top} \delta^{(2)}" + product in lines(bce)
    assert "a product of $1$ pair of factors. Its norm is bounded by the product of the norms of the factors" in bce
    assert "behaves like" not in bce and "1 pairs" not in bce


def test_the_flow_verdict_reads_the_error_terms():
    ctx = document.context(symbp.MLP([2, 3, 2]))
    norms = ctx["flowsec"]["norms"]
    assert [n["l"] for n in norms] == [1, 2] and all("delta" in n for n in norms)
    delta = {n["l"]: float(n["delta"]) for n in norms}
    assert abs(float(ctx["flowsec"]["ratio"]["value"]) - delta[1] / delta[2]) < 2e-3


def test_a_student_version_has_no_marks_and_no_tool_talk():
    source = document.render(symbp.MLP([2, 3, 2]), student=True)
    body = source[source.index(r"\begin{document}"):]
    assert r"\holds{" not in body and "How this was checked" not in body
    assert "symbp" not in body and "SymPy" not in body
    assert r"\author{}" in source


def test_sections_author_date_and_a_tex_title():
    source = document.render(symbp.MLP([2, 3, 2]), sections=["forward", "generic"], author="A. Teacher & co",
                             date="2 December 2026", title="Gradients of $W^{(1)}$", title_tex=True)
    assert r"\title{Gradients of $W^{(1)}$}" in source
    assert r"\author{A. Teacher \& co}" in source and r"\date{2 December 2026}" in source
    assert r"\section{Forward pass}" in source and r"\section{The backward pass for a generic layer}" in source
    for gone in (r"\section{Notation}", r"\section{A worked example}", r"\section{Gradient flow}",
                 r"\section*{How this was checked}"):
        assert gone not in source
    assert r"\section{The backward pass, layer by layer}" in source  # always there
    with pytest.raises(SymbpError, match="unknown section 'exampel'; the sections are notation, forward"):
        document.render(symbp.MLP([2, 2]), sections=["exampel"])


def test_the_cli_takes_the_teacher_controls(tmp_path, capsys):
    out = tmp_path / "d.tex"
    assert main(["derive", "2,3,2", "-o", str(out), "--no-checks", "--author", "T", "--date", "today"]) == 0
    source = out.read_text()
    assert r"\author{T}" in source and r"\date{today}" in source and "How this was checked" not in source
    assert r"\holds{all-sizes}" in source  # --no-checks drops the section, --student the marks too
    capsys.readouterr()
    assert main(["derive", "2,3,2", "-o", str(tmp_path / "e.tex"), "--sections", "forwad"]) == 2
    assert capsys.readouterr().err == ("symbp derive: error: document: unknown section 'forwad'; the sections are "
                                       "notation, forward, generic, output, code, batch, example, flow, checks\n")
    assert not (tmp_path / "e.tex").exists()


def test_the_output_sections_read_the_op_and_loss_columns():
    from symbp import registry
    from symbp.ops import OPS

    assert OPS["softmax"].in_outputs is not None and OPS["sigmoid"].in_outputs is None
    assert [registry.LOSSES[n].target for n in ("cross_entropy", "binary_cross_entropy", "mse")] == [
        "one-hot", "binary", "any"]
    assert registry.LOSSES["binary_cross_entropy"].units_mean and not registry.LOSSES["cross_entropy"].units_mean
    assert registry.FUSED[("softmax", "cross_entropy")].partial == "softmax_cross_entropy"
    out = document.context(symbp.MLP([2, 3], output="sigmoid", loss="binary_cross_entropy"))["output"]
    assert out["steps"][1] == [r"\frac{a^{(1)}_{1} - y_{1}}{3}"] and out["scale"] == r"\frac{1}{3}"
    assert out["partial"] == "activation" and out["fused_partial"] == "sigmoid_binary_cross_entropy"


def _listing(source):
    listing = source[source.index(r"\section{The backward pass as code}"):]
    return listing[listing.index("\\begin{verbatim}\n") + 17:listing.index("\\end{verbatim}")]


def test_the_backward_pass_as_code_is_one_loop_over_the_layers(seed):
    from symbp.codegen import layer_loop
    from symbp.numeric import reference_gradients

    net = symbp.MLP([4, 5, 3, 3])
    compiled = symbp.compile(net, symbp.textbook(net))
    listing = _listing(seed)
    assert listing.rstrip() == layer_loop(compiled).rstrip()  # compile's statements, layer names as list entries
    assert listing.startswith("def backward(x, y, W, b):\n")
    assert "        z[l] = W[l] @ a[l - 1] + b[l]\n        a[l] = relu(z[l]) if l < L else softmax(z[l], axis=0)\n" in listing
    assert "    dz[L] = a[L] - y\n" in listing
    assert "            dz[l] = da[l] * step(z[l])\n        dW[l] = dz[l] @ a[l - 1].T\n" in listing
    assert "W = [None, W1, W2, W3]\nb = [None, b1, b2, b3]\ndW, db = backward(x, y, W, b)\n" in seed
    assert "    W[l] -= eta * dW[l]\n    b[l] -= eta * db[l]\n" in seed
    assert "so one loop runs over the layers" in seed
    # the printed listing itself runs and gives the plain NumPy backprop's gradients
    namespace = dict(compiled._namespace)
    exec(listing, namespace)
    rng = np.random.default_rng(3)
    values = {n: rng.normal(size=net.shape(n)) for n in ("x", *net.params)} | {"y": np.eye(3)[:, [2]]}
    dW, db = namespace["backward"](values["x"], values["y"], [None, *(values[f"W{l}"] for l in (1, 2, 3))],
                                   [None, *(values[f"b{l}"] for l in (1, 2, 3))])
    truth = reference_gradients(net, values)
    for l in (1, 2, 3):
        np.testing.assert_allclose(dW[l], truth[f"W{l}"], rtol=1e-10)
        np.testing.assert_allclose(db[l], truth[f"b{l}"], rtol=1e-10)


def test_layers_that_differ_print_compile_s_unrolled_code():
    net = symbp.MLP([3, 3, 3, 2], residual=True)  # layer 2 adds a skip connection, layer 1 does not
    source = document.render(net)
    listing = _listing(source)
    assert listing.startswith("def backward(x, y, W1, b1, W2, b2, W3, b3):\n")
    assert listing.rstrip() in symbp.compile(net, symbp.textbook(net)).source  # the very function compile writes
    assert "    da1 = W2.T @ dz2 + da2\n" in listing and "one loop runs" not in source
    assert 'params = {"W1": W1, "b1": b1, "W2": W2, "b2": b2, "W3": W3, "b3": b3}\n' in source
    assert "    params[name] -= eta * grads[name]\n" in source


# --------------------------------------------------------------------------- issue 13 leftovers
import re
import shutil
import subprocess

DEEP = dict(sizes=[3, 3, 3, 3, 3, 2], hidden="tanh")


@pytest.fixture(scope="module")
def deep():
    return document.render(symbp.MLP(**DEEP))


def test_the_all_sizes_proof_is_said_once_per_document(deep):
    assert deep.count("proved for all sizes") == 1 and deep.count("holds at any depth") == 1
    assert (r"$^{*}$ Every gradient marked \holds{all-sizes}$^{*}$ is proved for all sizes (n0, n1, n2, n3, n4, n5 "
            r"symbolic), each from its layer's true upstream gradient (the derived one, not the claimed one); a proof "
            r"for one layer holds at any depth; $\partial L / \partial z^{(5)}$ assumes every target row sums to 1.") \
        in lines(deep)
    # every one of the 19 gradients keeps its star (5 layers x z, W, b, a; no a^(0)), and the note has one
    assert deep.count(r"\holds{all-sizes}$^{*}$") == 5 * 4 - 1 + 1
    # the common text is symbp.allsizes' own, taken apart and said once
    from symbp import allsizes
    detail = "proved for all sizes (n0, n1 symbolic), with the true upstream dz2; a proof for one layer holds at any depth"
    assert allsizes.detail_parts(detail) == {"names": ["n0", "n1"], "upstream": ["dz2"], "assuming": []}
    assert allsizes.detail_parts("judged at the given sizes only") is None


def test_a_network_document_names_the_symbolic_sizes_once():
    net = symbp.network([{"op": "affine", "out": 3}, {"op": "relu"}, {"op": "affine", "out": 2}], input=2, batch=2,
                        loss="mse")
    source = document.render(net)
    assert source.count("is proved equal with every size symbolic (") == 1 and "holds at any depth" not in source
    assert "proved for all sizes" not in source
    # a table row per gradient carries the mark; the verification paragraph is not repeated per gradient
    assert source.count(r"& \holds{all-sizes}$^{*}$ \\") >= 3
    assert "found the closed form equal to the derived entries" not in source


def test_same_form_layers_are_shown_once(deep):
    assert "Layers 3, 4 are built like layer 2, with every layer index one up." in lines(deep)
    assert r"z^{(3)}_{1} &=" not in deep and r"z^{(2)}_{1} &=" in deep
    # layers 3, 2 and 1 are each the layer above's, one index lower: one section, one table
    layers = deep[deep.index(r"\section{The backward pass, layer by layer}"):deep.index(r"\section{The backward pass as code}")]
    assert re.findall(r"\\subsection\{(.*)\}", layers) == [r"Layer 5: output, $\operatorname{softmax}$",
                                                        r"Layer 4: hidden, $\tanh$", r"Layers 3, 2, 1: hidden, $\tanh$"]
    assert layers.count(r"\begin{tabular}") == 3 and layers.count(r"\addlinespace") == 2
    assert r"$f_{l}'(z) = \tanh'(z) = 1 - \tanh^{2}{\left(z \right)}$ for $l = 3, 2, 1$." in deep
    assert ("Each layer's matrices are the layer above's with every layer index one lower, so all are layer 4's; "
            r"layer 1 reads $x$ for $a^{(0)}$ and has no $\partial L / \partial a^{(0)}$; $^{\dagger}$ here "
            "$n_{0} = n_{1} = n_{2} = n_{3} = 3$.") in lines(deep)
    for l in (3, 2, 1):  # shown for layer 4 only, and each row in the one table
        assert rf"\frac{{\partial L}}{{\partial W^{{({l})}}}} = \begin{{bmatrix}}" not in layers
        assert rf"\partial L / \partial W^{{({l})}} & \delta^{{({l})}}_{{i}}" in layers
    assert r"\frac{\partial L}{\partial W^{(4)}} = \begin{bmatrix}" in layers
    # and the claims are true: layer l + 1's derived entries with every layer index one lower are layer l's
    grads = symbp.derive(symbp.MLP(**DEEP))
    lower = lambda e: e.xreplace({s: sp.Symbol(re.sub(r"^a0_", "x_", re.sub(r"^([a-zA-Z]+)(\d+)",
                                                                             lambda m: m[1] + str(int(m[2]) - 1), s.name)),
                                               **s.assumptions0) for s in e.free_symbols})
    for upper in (4, 3, 2):
        for kind in ("z", "W", "b"):
            assert (grads[f"{kind}{upper}"].applyfunc(lower) - grads[f"{kind}{upper - 1}"]).applyfunc(sp.simplify).is_zero_matrix
    assert (grads["a3"].applyfunc(lower) - grads["a2"]).is_zero_matrix
    assert (grads["a2"].applyfunc(lower) - grads["a1"]).is_zero_matrix


def test_the_notation_table_gives_alike_layers_one_row(deep):
    table = deep[deep.index(r"\section{Notation}"):deep.index(r"\section{Forward pass}")]
    assert r"1--4 & 3 & $\tanh$ & 3 \times 3 & 3 \times 1 & 3 \times 1 \\" in lines(table)
    assert r"5 & 2 & $\operatorname{softmax}$ & 2 \times 3 & 2 \times 1 & 2 \times 1 \\" in lines(table)
    # distinct widths keep a row per layer; a run breaks where the activation changes
    assert document._notation_rows(symbp.MLP([4, 5, 3, 3])) == [(1, 1), (2, 2), (3, 3)]
    assert document._notation_rows(symbp.MLP([3, 3, 3, 3, 2], hidden=["tanh", "tanh", "relu"])) == [(1, 2), (3, 3), (4, 4)]


def _exact_forward(net, values):
    """Every hidden pre-activation at ``values``, exactly, from the activations' SymPy forms."""
    x = sp.Symbol("x", real=True)
    a, zs = values["x"], {}
    for l in range(1, net.L):
        z = values[f"W{l}"] * a + values[f"b{l}"]
        zs[l] = z
        f = net.hidden[l - 1].sympy(x)
        a = z.applyfunc(lambda v: f.subs(x, v))
    return zs, x


@pytest.mark.parametrize("config", [DEEP, dict(sizes=[4, 5, 3, 3]), dict(sizes=[3, 4, 2], hidden="sigmoid"),
                                    dict(sizes=[3, 3, 3, 2], hidden="relu", residual=False)])
def test_the_worked_example_sits_on_no_kink_and_saturates_no_unit(config):
    net = symbp.MLP(**config)
    zs, x = _exact_forward(net, document.example_values(net))
    for l, z in zs.items():
        row = net.hidden[l - 1]
        slope = sp.diff(row.sympy(x), x)
        for v in z:
            if row.name == "relu":
                assert v != 0, (l, v)
            else:
                assert abs(float(slope.subs(x, v))) >= 0.1 * abs(float(slope.subs(x, 0))), (l, v)


def test_a_unit_left_on_a_kink_is_flagged(monkeypatch):
    monkeypatch.setattr(document, "EXAMPLE_DRAWS", 1)  # the first draw only: seed 7
    net = symbp.MLP([4, 5, 3, 3])
    zs, _ = _exact_forward(net, document.example_values(net))
    assert zs[2][1] == 0 and all(v != 0 for v in zs[1]) and [v for v in zs[2] if v == 0] == [0]
    source = document.render(net)
    assert r"Flagged cells: $z^{(2)}_{2} = 0$: $\operatorname{ReLU}'( 0 ) = 0$ by convention." in lines(source)
    monkeypatch.undo()
    assert "Flagged cells" not in document.render(symbp.MLP([4, 5, 3, 3]))  # a later draw has no such unit


def test_a_left_out_example_is_said_in_one_sentence():
    wide = document.render(symbp.MLP([3, 8, 2], hidden="tanh"))
    assert ("There is no worked example for this network: its widest layer has 8 units, more than the 6 a worked "
            "example prints cell by cell.") in lines(wide)
    batch = document.render(symbp.MLP([2, 3, 2], batch=5))
    assert ("There is no worked example for this network: its batch has 5 examples, more than the 4 a worked "
            "example prints cell by cell.") in lines(batch)
    assert "There is no worked example" not in document.render(symbp.MLP([3, 8, 2]), example=False)  # asked for
    assert "There is no worked example" not in document.render(symbp.MLP([3, 6, 2]))  # 6 units: shown


def test_the_layout_names_the_numerator_transpose(seed):
    aside = (r"In numerator layout $\partial L / \partial W$ is the transposed matrix of the original, shaped like "
             r"$W^{\top}$ with $\partial L / \partial W_{i,j}$ at $(j, i)$: the same numbers, so its update is "
             r"$W \leftarrow W - \eta\, (\partial L / \partial W)^{\top}$.")
    assert seed.count(aside) == 1
    assert "seed 002: a scalar-to-matrix gradient is ``a matrix the same shape as the original matrix''" in seed
    net = symbp.network([{"op": "affine", "out": 2}], input=2, loss="mse")
    assert document.render(net).count(aside) == 1


@pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdfinfo") is None,
                    reason="TeX is installed by .ci/run")
def test_the_deep_tanh_document_fits_in_seven_pages(tmp_path):
    entry = next(e for e in document.GALLERY if e.name == "deep-tanh")
    pdf, log = tmp_path / "deep.pdf", tmp_path / "deep.log"
    L.compile_pdf(document.render(entry.network(), title=entry.title), pdf, log_path=log)
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    assert pages <= 7, pages
    assert "Overfull \\hbox" not in log.read_text(errors="replace")


def test_a_student_version_of_a_network_document_has_no_marks_and_no_tool_talk():
    net = symbp.network([{"op": "affine", "out": 3}, {"op": "layernorm"}, {"op": "relu"}, {"op": "affine", "out": 2}],
                        input=2, batch=2, loss="mse")
    source = document.render(net, student=True)
    body = source[source.index(r"\begin{document}"):]
    assert r"\holds{" not in body and "How this was checked" not in body and "judged" not in body
    assert "symbp" not in body and "SymPy" not in body
    assert r"\text{gradient} & \text{closed form} & shape check \\" in body  # the table without its mark column
    assert "The entries of " in body and "too long to teach from; the closed forms in the table below stand for them." in body
