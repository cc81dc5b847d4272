"""derive --sizes symbolic: the backward pass in index notation for all sizes, every step checked."""

import json
import re
import shutil

import pytest
import sympy as sp

import symbp
from symbp import allsizes, indexform
from symbp import latex as L
from symbp.cli import main

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="TeX is installed by .ci/run")


def lines(d):
    return [s.tex for s in d.steps]


def test_the_weight_gradient_reads_as_seed_002_and_is_one_derivation_for_every_layer():
    deriv = symbp.derive(symbp.MLP([4, 5, 3, 3]), sizes="symbolic")
    assert deriv.checked and deriv.unchecked() == []
    assert deriv.sizes == ["n0", "n1", "n2", "n3"]
    W = deriv["W2"]
    assert W.targets == ["W1", "W2", "W3"] and W.layers == "l = 1, 2, 3"
    assert W.lhs == r"\frac{\partial L}{\partial W^{(l)}_{i,j}}"
    assert [s.lhs for s in W.steps if s.lhs] == [r"\frac{\partial z^{(l)}_{k}}{\partial W^{(l)}_{i,j}}"]
    assert lines(W) == [
        r"\sum_{k=1}^{n_{l}} \delta^{(l)}_{k} \frac{\partial z^{(l)}_{k}}{\partial W^{(l)}_{i,j}}",
        r"[k = i] a^{(l-1)}_{j}",
        r"\sum_{k=1}^{n_{l}} \delta^{(l)}_{k} [k = i] a^{(l-1)}_{j}",
        r"\delta^{(l)}_{i} a^{(l-1)}_{j}",
        r"\left(\delta^{(l)} a^{(l-1)\top}\right)_{i,j}"]
    assert [s.checked for s in W.steps] == [None, True, True, True, True]
    upstream = deriv["a1"]
    assert upstream.targets == ["a1", "a2"]
    assert lines(upstream)[-1] == r"\left(W^{(l+1)\top} \delta^{(l+1)}\right)_{i}"
    hidden = deriv["z1"]
    assert lines(hidden)[1:] == [r"[k = i] \operatorname{step}\left(z^{(l)}_{k}\right)",
                                 r"\sum_{k=1}^{n_{l}} \bar{a}^{(l)}_{k} [k = i] \operatorname{step}\left(z^{(l)}_{k}\right)",
                                 r"\bar{a}^{(l)}_{i} \operatorname{step}\left(z^{(l)}_{i}\right)",
                                 r"\left(\bar{a}^{(l)} \odot \operatorname{step}\left(z^{(l)}\right)\right)_{i}"]


def test_softmax_cross_entropy_shows_its_jacobian_and_names_its_side_condition():
    deriv = symbp.derive(symbp.MLP([4, 5, 3, 3]), sizes="symbolic")
    out = deriv["z3"]
    assert out.targets == ["z3"] and out.assumptions == ["every target row sums to 1"]
    assert out.steps[1].lhs == r"\frac{\partial a^{(3)}_{k}}{\partial z^{(3)}_{i}}"
    assert out.steps[1].tex == r"a^{(3)}_{k} \left(- a^{(3)}_{i} + [k = i]\right)"
    assert out.steps[-2].tex == r"a^{(3)}_{i} - y_{i}"
    assert out.steps[-2].why == "brackets summed, assumption below"
    assert deriv.side_condition == "every target row sums to 1"


def test_the_batch_sums_over_examples_with_1_over_N_and_writes_no_number_for_a_size():
    deriv = symbp.derive(symbp.MLP([4, 5, 3, 3], batch=4), sizes="symbolic")
    assert deriv.checked and deriv.sizes == ["n0", "n1", "n2", "n3", "N"]
    assert lines(deriv["W3"])[-2:] == [r"\sum_{n=1}^{N} \delta^{(l)}_{n,i} a^{(l-1)}_{n,j}",
                                       r"\left(\delta^{(l)\top} a^{(l-1)}\right)_{i,j}"]
    assert lines(deriv["z3"])[-1] == r"\left(\frac{a^{(3)} - y}{N}\right)_{n,i}"
    assert lines(deriv["b3"])[-1] == r"\left(\left(\mathbf{1}_{N}^{\top} \delta^{(l)}\right)^{\top}\right)_{i}"
    assert deriv.description.startswith("MLP [n0, n1, n2, n3]: hidden relu, relu;")
    assert "a batch of N" in deriv.description


def test_sigmoid_hidden_layers_and_bce_without_biases():
    net = symbp.MLP([4, 5, 3, 2], hidden="sigmoid", output="sigmoid", loss="binary_cross_entropy", bias=False)
    deriv = symbp.derive(net, sizes="symbolic")
    assert deriv.checked
    assert not any(t.startswith("b") for d in deriv.derivations for t in d.targets)
    assert deriv["z3"].claim == "(a3 - y) / n3"
    assert lines(deriv["z1"])[-1] == r"\left(\bar{a}^{(l)} \odot a^{(l)} \odot \left(1 - a^{(l)}\right)\right)_{i}"


def test_a_step_is_checked_by_the_normal_form_and_a_wrong_line_is_not():
    net = symbp.MLP([4, 5, 3, 3])
    world = allsizes.World(net)
    r, c = sp.Symbol("r", integer=True, positive=True), sp.Symbol("c", integer=True, positive=True)
    ranges = {r: world.width["z2"], c: world.width["a1"]}
    truth = world.truth("W2", r, c)
    right = world.raw("dz2")(r, 1) * world.raw("a1")(c, 1)
    assert indexform._equal(world, truth, right, ranges) == (True, [])
    for wrong in (world.raw("dz2")(c, 1) * world.raw("a1")(r, 1), 2 * right, -right):
        assert indexform._equal(world, truth, wrong, ranges)[0] is False


def test_a_textbook_claim_that_is_wrong_leaves_its_derivation_unchecked(monkeypatch, tmp_path, capsys):
    import importlib

    V = importlib.import_module("symbp.verify")

    original = V.textbook

    def wrong(net):
        claims = dict(original(net))
        claims["W2"] = "2 * dz2 @ a1.T"
        return claims
    monkeypatch.setattr(V, "textbook", wrong)
    deriv = symbp.derive(symbp.MLP([4, 5, 3, 3]), sizes="symbolic")
    assert not deriv.checked and deriv.unchecked() == ["W2"]
    W2 = deriv["W2"]
    assert W2.targets == ["W2"] and W2.steps[-1].checked is False
    assert W2.steps[-1].why == "closed form: NOT proved"
    assert deriv["W1"].checked and deriv["W1"].targets == ["W1", "W3"]
    assert main(["derive", "4,5,3,3", "--sizes", "symbolic", "-o", str(tmp_path / "d.tex")]) == 1
    out = capsys.readouterr().out
    assert "  dL/dW2          5 steps, NOT CHECKED: 2 * dz2 @ a1.T" in out
    assert "NOT every step was checked: W2" in out
    text = (tmp_path / "d.tex").read_text()
    assert r"\fails{Not every step was checked}" in text and r"\fails{not checked: closed form: NOT proved}" in text


def test_cli_prints_every_gradient_and_json(capsys):
    assert main(["derive", "784,128,64,10", "--batch", "64", "--sizes", "symbolic"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("MLP [n0, n1, n2, n3]: hidden relu, relu; output softmax; loss cross_entropy; a batch of N "
                      "(rows are examples, mean over the batch); with biases")
    assert "  dL/dW1, W2, W3  5 steps, checked: dz3.T @ a2 (written for W3; l = 1, 2, 3)" in out
    assert "  dL/dz3          5 steps, checked: (a3 - y) / N" in out
    assert "assuming: every target row sums to 1" in out
    assert not any(re.search(r"\b(784|128|64)\b", line) for line in out)
    assert main(["derive", "3,4,2", "--sizes", "symbolic", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["sizes"] == "symbolic" and payload["symbols"] == ["n0", "n1", "n2"] and payload["checked"]
    assert payload["gradients"]["W2"] == {"claim": "dz2 @ a1.T", "proved": True, "steps": 5, "layers": "l = 1, 2"}
    assert payload["gradients"]["W1"]["claim"] is None and payload["gradients"]["W1"]["layers"] == "l = 1, 2"


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "symbolc"], "--sizes 'symbolc': expected given or symbolic"),
    (["--sizes", "symbolic", "--method", "expand"], "--method expand: not with --sizes symbolic"),
    (["--sizes", "symbolic", "--layout", "numerator"], "--layout numerator: not with --sizes symbolic"),
    (["--sizes", "symbolic", "--student"], "--student: not with --sizes symbolic"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    assert main(["derive", "4,5,3"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_network_without_an_index_form_is_refused_in_one_line(monkeypatch, capsys):
    def no_index(net):
        raise allsizes.Undecided("layer 2 (layernorm ln2) has no index form yet")
    monkeypatch.setattr(indexform, "World", no_index)
    with pytest.raises(symbp.SymbpError, match=r"^--sizes symbolic: layer 2 \(layernorm ln2\) has no index form yet; "
                                               r"derive it at the given sizes instead$"):
        symbp.derive(symbp.MLP([3, 2]), sizes="symbolic")
    assert main(["derive", "3,2", "--sizes", "symbolic"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_document_is_the_same_for_every_size_and_deterministic(tmp_path):
    texts = []
    for sizes in ("784,128,64,10", "4,5,3,3", "4,5,3,3"):
        out = tmp_path / f"d{len(texts)}.tex"
        assert main(["derive", sizes, "--batch", "64" if sizes[0] == "7" else "2", "--sizes", "symbolic",
                     "-o", str(out)]) == 0
        texts.append(out.read_bytes())
    assert texts[0] == texts[1] == texts[2]
    text = texts[0].decode()
    body = text.split(r"\begin{document}")[1].split(r"\section{How it was checked}")[0]
    assert not re.search(r"(?<![\\{a-zA-Z_^(])\d{2,}", body), "a concrete size"
    assert text.count(r"\holds{") == sum(1 for line in text.splitlines() if r"\holds{" in line)
    assert r"\fails" not in text.split(r"\begin{document}")[1]
    assert "Why one layer is enough." in text


@needs_tex
def test_the_pdf_compiles_without_overfull_lines(tmp_path):
    out = tmp_path / "allsizes.tex"
    net = symbp.MLP([4, 5, 3, 3], batch=2)
    deriv = symbp.derive(net, sizes="symbolic")
    source = L.render("index.tex.j2", **symbp.document.index_context(deriv))
    log = tmp_path / "allsizes.log"
    L.compile_pdf(source, tmp_path / "allsizes.pdf", log_path=log)
    text = log.read_text()
    assert "Overfull \\hbox" not in text, re.findall(r"Overfull \\hbox.*", text)
    written = deriv.write(out, pdf=True, title="All sizes")
    assert written["pdf"].stat().st_size > 10000 and out.read_text().count(r"\title{All sizes}") == 1


@pytest.mark.parametrize("name", ["layernorm", "batchnorm", "attention"])
def test_the_norms_and_attention_are_derived_for_all_sizes_through_their_stages(name):
    from symbp import document

    entry = next(e for e in document.GALLERY if e.name == name)
    net = entry.network()
    deriv = symbp.derive(net, sizes="symbolic")
    assert deriv.checked, deriv.unchecked()
    staged = [layer for layer in net.layers if layer.stages]
    assert staged
    for layer in staged:
        for stage in layer.stages.values():
            lhs = [f[0] for f in deriv.forward]
            assert any(L.SymbpLatexPrinter(names=document.network_names(net)).base(stage) in t for t in lhs), stage
        for param in layer.params.values():  # through the stages: the chain rule, then the closed form proved
            d = deriv[param]
            assert [s.why for s in d.steps] == ["chain rule", "closed form, all sizes"]
            assert d.steps[-1].checked is True and d.proved
    tex = L.render("index.tex.j2", **document.index_context(deriv))
    body = tex.split(r"\begin{document}")[1].split(r"\section{How it was checked}")[0]
    assert not re.search(r"(?<![\\{a-zA-Z_^(])\d{2,}(?!\d*\})", body.replace("100000", "")), "a concrete size"


def test_layer_norm_writes_its_mean_and_variance_as_lines_of_their_own():
    from symbp import document

    net = next(e for e in document.GALLERY if e.name == "layernorm").network()
    forward = [(lhs, rhs) for lhs, rhs, _ in symbp.derive(net, sizes="symbolic").forward]
    assert (r"\mu^{(2)}_{n}", r"\frac{\sum_{k=1}^{n_{z1}} z^{(1)}_{n,k}}{n_{z1}}") in forward
    assert (r"v^{(2)}_{n}", r"\frac{\sum_{k=1}^{n_{z1}} \left(- \mu^{(2)}_{n} + z^{(1)}_{n,k}\right)^{2}}{n_{z1}}") in forward
    ln = next(rhs for lhs, rhs in forward if lhs.startswith(r"\mathrm{ln}^{(2)}"))
    assert r"\mu^{(2)}_{n}" in ln and r"v^{(2)}_{n}" in ln


def test_a_spec_files_network_of_layers_is_derived_for_all_sizes(tmp_path, capsys):
    spec = tmp_path / "ln.toml"
    spec.write_text('[model]\ninput = 3\nbatch = 2\nloss = "mse"\n\n[[layers]]\nop = "affine"\nout = 4\n\n'
                    '[[layers]]\nop = "rmsnorm"\n')
    assert main(["derive", str(spec), "--sizes", "symbolic"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("network of 2 layers: affine z1 (n_z1), rmsnorm") and "input n0" in out[0]
    assert out[-1] == "every step checked for all sizes by the normal form; a proof for one layer holds at any depth"
    assert any(line.startswith("  dL/dz1") and "2 steps, checked" in line for line in out)
