"""The derivation document of a network of layers, for every op of the table (tests/op_networks.py).

Each configuration renders, shows its op's section (a sentence of the op's partial, verbatim), is the
same twice, and compiles with pdflatex without errors or overfull lines (all compiled once, in one
module-scoped fixture). A missing partial is an error naming the op; the printer names the new
symbols (stages, Greek roles, attention's projections); the document takes a verify Report and a
numeric error from the caller.
"""

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sympy as sp

from op_networks import configs, make
from symbp import document
from symbp import latex as L
from symbp.errors import SymbpError
from symbp.layers import network
from symbp.ops import OPS
from symbp.verify import Report, Result

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
IDS = sorted(configs())

#: One sentence of each partial's backward, as the partial writes it (no template variables in it).
SECTION = {
    "affine": "An affine layer's backward: ",
    "activation": "An entry-wise function couples nothing: each input entry reaches the loss through its own "
                  "output entry only",
    "softmax": "Softmax couples the features of an example: its Jacobian per example is",
    "layernorm": "the upstream gradient minus its mean and minus its projection on the normalised output, divided "
                 "by the standard deviation.",
    "batchnorm": "the same over the batch: the upstream gradient minus its mean over the examples and minus its "
                 "projection on the normalised output, divided by the standard deviation.",
    "rmsnorm": "RMSNorm's backward, per example: with",
    "dropout": "Dropout's backward applies the same mask and the same scale to the upstream gradient: a dropped "
               "entry gets no gradient",
    "add": "The sum's partial derivative with respect to either term is $1$: the skip passes the gradient on "
           "unchanged",
    "attention": r"the $1/\sqrt{d_k}$ of the scores comes back in $\bar{Q} = \bar{S} K / \sqrt{d_k}$ and "
                 r"$\bar{K} = \bar{S}^{\top} Q / \sqrt{d_k}$;",
}


def _op_layer(net, op_name):
    """The layer of the op under test (``activation``: the custom one; ``loss``: none)."""
    for layer in net.layers:
        if layer.op.name == op_name or (op_name == "activation" and layer.op.activation is not None
                                         and layer.op.activation.expression):
            return layer
    return None


@pytest.fixture(scope="module")
def rendered():
    """{config id: (network, source)}, each rendered once."""
    out = {}
    for config_id in IDS:
        net = make(config_id)
        out[config_id] = (net, document.render(net, title=f"Config {config_id}"))
    return out


@pytest.fixture(scope="module")
def compiled(rendered, tmp_path_factory):
    """{config id: (pdf text, log)}, every configuration compiled once."""
    if shutil.which("pdflatex") is None:
        pytest.skip("TeX is installed by .ci/run")
    folder = tmp_path_factory.mktemp("ops-documents")
    out = {}
    for config_id, (net, source) in rendered.items():
        pdf, log = folder / f"{config_id}.pdf", folder / f"{config_id}.log"
        L.compile_pdf(source, pdf, log_path=log)
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              check=True).stdout
        out[config_id] = (text, log.read_text(errors="replace"))
    return out


def test_every_op_has_its_partial_with_a_forward_and_a_backward():
    partials = {document.partial_of(row) for row in OPS.values()}
    assert partials == set(SECTION)
    for name in partials:
        text = (TEMPLATES / "ops" / f"{name}.tex.j2").read_text()
        assert "((* macro forward(l, net) -*))" in text and "((* macro backward(l, net) -*))" in text
        assert SECTION[name] in text, f"the sentence tested for {name} is not in its partial"


def test_activations_share_one_partial_chosen_by_the_row():
    assert {document.partial_of(OPS[name]) for name in ("relu", "tanh", "gelu", "elu")} == {"activation"}
    own = dataclasses.replace(OPS["relu"], partial="affine")  # the row's column wins
    assert document.partial_of(own) == "affine"


@pytest.mark.parametrize("config_id", IDS)
def test_each_op_renders_with_its_section(rendered, config_id):
    net, source = rendered[config_id]
    op_name = configs()[config_id][0]
    assert source.startswith("\\documentclass")
    for part in ("\\section{Notation}", "\\section{Forward pass}", "\\section{The loss}",
                 "\\section{Backward pass, from the output}", "\\section*{How this was checked}"):
        assert part in source, part
    if op_name == "loss":  # a custom loss: its expression is typeset in the loss section
        assert r"\ell(a_{k}, y_{k}) = \log{\left(\cosh{\left(a - y \right)} \right)}" in source
        return
    layer = _op_layer(net, op_name)
    assert SECTION[document.partial_of(layer.op)] in source
    # the layer's forward and backward subsections, and every gradient it derives
    assert f"Layer {layer.position}: ${layer.op.latex}$" in source
    assert "of " + L.escape_latex(layer.label) in source  # the notation table, the backward's gradients


@pytest.mark.parametrize("config_id", IDS)
def test_each_op_document_is_deterministic(rendered, config_id):
    net, source = rendered[config_id]
    assert document.render(make(config_id), title=f"Config {config_id}") == source


@pytest.mark.parametrize("config_id", IDS)
def test_each_op_document_compiles_without_errors_or_overfull_lines(compiled, config_id):
    text, log = compiled[config_id]
    assert "\n! " not in log
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)
    flat = " ".join(text.split())
    assert f"Config {config_id}" in flat and "symbp’s derivation" in flat


def test_a_missing_partial_is_an_error_naming_the_op():
    net = make("layernorm")
    layers = list(net.layers)
    layers[1] = dataclasses.replace(layers[1], op=dataclasses.replace(layers[1].op, partial="nosuch"))
    net.layers = tuple(layers)
    with pytest.raises(SymbpError, match=r"op 'layernorm' \(layer 2 \(ln2, layernorm\)\) has no document "
                                         r"partial 'ops/nosuch.tex.j2'"):
        document.render(net)


def test_a_users_partial_is_used_before_the_packaged_one(tmp_path):
    (tmp_path / "ops").mkdir()
    own = (TEMPLATES / "ops" / "dropout.tex.j2").read_text().replace("Dropout's backward", "My dropout's backward")
    (tmp_path / "ops" / "dropout.tex.j2").write_text(own)
    source = document.render(make("dropout"), template_dir=tmp_path)
    assert "My dropout's backward applies the same mask" in source


def test_the_printer_names_the_new_symbols():
    net = make("layernorm")
    p = L.SymbpLatexPrinter(columns=net.columns, names=document.network_names(net))
    show = lambda name: p.doprint(sp.Symbol(name))
    assert show("ln2mean_0_0") == r"\mu^{(2)}_{1,1}"
    assert show("ln2var_1_0") == r"v^{(2)}_{2,1}"
    assert show("gamma2_0_0") == r"\gamma^{(2)}_{1}"  # a column: one index
    assert show("beta2_2_0") == r"\beta^{(2)}_{3}"
    assert show("dln2_0_1") == r"\overline{\mathrm{ln}}^{(2)}_{1,2}"
    assert show("dgamma2_0_0") == r"\bar{\gamma}^{(2)}_{1}"
    att = make("attention")
    p = L.SymbpLatexPrinter(columns=att.columns, names=document.network_names(att))
    assert p.doprint(sp.Symbol("att1Q_0_1")) == r"Q^{(1)}_{1,2}"
    assert p.doprint(sp.Symbol("Wq1_1_0")) == r"{W_{q}}^{(1)}_{2,1}"
    assert p.doprint(sp.Symbol("datt1P_2_0")) == r"\bar{P}^{(1)}_{3,1}"


def test_names_that_would_print_alike_print_as_written():
    net = network([{"op": "affine", "out": 3, "b": "mu2"}, {"op": "layernorm", "name": "ln2"}], input=2,
                  batch=2, loss="mse")
    names = document.network_names(net)
    assert names["mu2"] == (r"\mathrm{mu2}", "") and names["ln2mean"] == (r"\mathrm{ln2mean}", "")
    assert names["ln2var"] == ("v", "(2)")


def test_mlp_names_print_as_before():
    p = L.SymbpLatexPrinter(columns={"b1", "z2"})
    assert [p.base("W1"), p.base("W1", r"\top"), p.base("a0"), p.base("x", r"\top")] == [
        "W^{(1)}", r"W^{(1)\top}", "x", r"x^{\top}"]
    assert [p.grad_base("z2"), p.grad_base("a1"), p.doprint(sp.Symbol("dz2_1_0"))] == [
        r"\delta^{(2)}", r"\bar{a}^{(1)}", r"\delta^{(2)}_{2}"]


def test_the_document_takes_a_report_and_a_numeric_error():
    net = make("dropout")
    report = Report([Result("h2", "dh2 * m1 / (3/4)", "holds", "symbolic"),
                     Result("z1", "dz1 @ W1", "fails", "exact-random", diagnosis="transposed")])
    source = document.render(net, report=report, numeric_error=3e-13)
    # one table row per gradient: the closed form typeset, its shape check, its mark
    assert (r"\bar{h}^{(2)} & \frac{\bar{h}^{(2)} \odot m^{(1)}}{\frac{3}{4}} & $2 \times 3$ (entry-wise) & "
            r"\holds{symbolic} \\") in source
    assert (r"\delta^{(1)} & \delta^{(1)} W^{(1)} & $( 2 \times 3 )( 3 \times 2 ) = 2 \times 2$, \fails{not} the "
            r"shape of $z^{(1)}$ ($2 \times 3$) & \fails{random}$^{\ddagger}$ \\") in source
    assert r"$^{\ddagger}$ $\delta^{(1)}$: \fails{exact random points}:" in source  # the failure said under the table
    assert "different from the derived entries (transposed)" in source
    assert "agree with an independent engine at a random point: max abs error $< 10^{-12}$ over every gradient." in source
    assert "Numeric check:" not in source  # stated once, not after every gradient
    assert "not all hold" in source  # one claim fails


def test_closed_forms_name_their_repeated_subformulas():
    source = document.render(make("layernorm"))
    # layer norm's backward of its input: u_1 = dL/dln2 * gamma2 (a row), u_2 the normalised input
    assert r"\left(u_{1} - \frac{u_{1} \mathbf{1}_{3}}{3} - u_{2} \odot \frac{\left(u_{1} \odot u_{2}\right) " \
           r"\mathbf{1}_{3}}{3}\right) \oslash u_{3}" in source
    assert r"u_{3} &= \sqrt{v^{(2)} + \frac{1}{100000}}." in source


def test_a_network_document_tabulates_its_gradients_and_says_what_it_leaves_out():
    source = document.render(make("layernorm"))
    lines = source.splitlines()
    # the layer norm's stage gradients are too long to teach from: one sentence, no display of their entries
    said = [line for line in lines if line.startswith("symbp's entries of ")]
    assert len(said) == 1 and said[0].startswith(
        r"symbp's entries of $\frac{\partial L}{\partial v^{(2)}}$, $\frac{\partial L}{\partial \mu^{(2)}}$")
    assert said[0].endswith(r"are judged against every one of them.\par")
    assert not any(line.startswith(r"\frac{\partial L}{\partial v^{(2)}_{1") for line in lines)
    # the stages without a textbook claim are named once, together
    assert (r"No textbook closed form is claimed for $\bar{v}^{(2)}$ and $\bar{\mu}^{(2)}$; the derived entries are "
            r"the result.") in lines
    # a row per gradient: the weight of the first affine layer, its shape check by sizes, its mark
    assert any(line.startswith(r"\bar{W}^{(1)} & \delta^{(1)\top} x & $( 3 \times 2 )( 2 \times 2 ) = 3 \times 2$ & ")
               for line in lines), [line for line in lines if line.startswith(r"\bar{W}^{(1)}")]


def test_a_network_document_derives_each_gradient_once_for_all_sizes(monkeypatch):
    from symbp.layers import network

    net = network([{"op": "affine", "out": 4}, {"op": "layernorm"}, {"op": "relu"}, {"op": "affine", "out": 3},
                         {"op": "softmax"}], input=3, batch=2, loss="cross_entropy")
    source = document.render(net)
    assert ("in index notation with the sizes as symbols ($n_{0} = 3$, $n_{z1} = 4$, $n_{z2} = 3$, $N = 2$ here; "
            "$[k = i]$ is 1 when $k = i$, else 0), every step checked by SymPy") in source
    lines = source.splitlines()
    assert (r"$W^{(2)}$ is read by $z^{(2)}$. For all sizes, the chain rule with $\frac{\partial z^{(2)}_{n,k}}"
            r"{\partial W^{(2)}_{i,j}} = [k = i] a^{(1)}_{n,j}$ (SymPy) gives, with the brackets summed:") in lines
    assert (r"\frac{\partial L}{\partial W^{(2)}_{i,j}} = \sum_{n=1}^{N} \sum_{k=1}^{n_{z2}} \delta^{(2)}_{n,k} "
            r"\frac{\partial z^{(2)}_{n,k}}{\partial W^{(2)}_{i,j}} = \sum_{n=1}^{N} \delta^{(2)}_{n,i} a^{(1)}_{n,j}.") in lines
    assert (r"$a^{(2)}$ is what the loss reads. For all sizes, the derivative of $L$ gives:") in lines
    assert r"\frac{\partial L}{\partial a^{(2)}_{n,i}} = - \frac{y_{n,i}}{a^{(2)}_{n,i} N}." in lines
    # the readers of a stage the index form does not derive alone keep the chain rule at the given sizes
    assert source.count("the chain rule sums over every entry of each reader:") == 2  # the mean and the variance
    # each indexed as it is printed: the N x 1 variance with two indices, a matrix reader summed over both
    assert (r"\frac{\partial L}{\partial v^{(2)}_{i,j}} = \sum_{m,k} \frac{\partial L}{\partial \mathrm{ln}^{(2)}_{m,k}} "
            r"\frac{\partial \mathrm{ln}^{(2)}_{m,k}}{\partial v^{(2)}_{i,j}}.") in lines
    assert r"\mu^{(2)}_{1,1} &= \frac{z^{(1)}_{1,1}}{4}" in source  # as the forward prints its entries
    # without an index form (a layer that has none), every gradient keeps the chain rule at the given sizes
    monkeypatch.setattr(document, "_index_form", lambda net: None)
    plain = document.render(net)
    assert "For all sizes" not in plain and "sizes as symbols" not in plain
    assert plain.count("the chain rule sums over every entry of each reader:") == 12
