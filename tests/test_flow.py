"""Gradient flow: the residual identity dH/dx = dF/dx + I (block and network), and the measured norms.

The seeds (000, 001) state the lesson: products of W^T diag(f'(z)) shrink or grow with depth, and the
skip connection H(x) = F(x) + x adds an identity that keeps the gradient alive (He et al., "Deep
Residual Learning", 2016; "Identity Mappings in Deep Residual Networks", 2016, eq. 5).
"""

import json
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp import numeric
from symbp.errors import SymbpError
from symbp.flow import (FlowModel, flow_network, identity_check, initial_values, network_identity, regime,
                        residual_block, write_flow)
from symbp.registry import ACTIVATIONS

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None,
                               reason="TeX and poppler are installed by .ci/run")

DEPTH, WIDTH = 20, 16


# --------------------------------------------------------------------------- the symbolic identity


@pytest.mark.parametrize("hidden", list(ACTIVATIONS))
def test_residual_block_jacobian_is_plain_jacobian_plus_identity(hidden):
    block = residual_block(n=3, hidden=hidden)
    assert block.residual.ok and block.plain.ok
    assert (block.dH - block.dF).applyfunc(sp.expand) == sp.eye(3)
    # the plain Jacobian is diag(f'(z)) W: entry (i, j) is f'(z_i) W_ij, computed here from sympy.diff directly
    u = sp.Symbol("u", real=True)
    fprime = sp.diff(ACTIVATIONS[hidden].sympy(u), u)
    for i in range(3):
        for j in range(3):
            expected = block.W[i, j] * fprime.subs(u, block.z[i])
            assert sp.simplify(block.dF[i, j] - expected) == 0


def test_broken_identities_are_detected():
    block = residual_block(n=2, hidden="tanh")
    without_identity = identity_check(block.dH, block.dF)  # the claim dH/dx = dF/dx (no + I)
    assert not without_identity.ok
    assert [(i, j, d) for i, j, d in without_identity.failures] == [(0, 0, 1), (1, 1, 1)]
    transposed = identity_check(block.dF, sp.diag(*[1 - sp.tanh(z) ** 2 for z in block.z]) * block.W.T)
    assert [(i, j) for i, j, _ in transposed.failures] == [(0, 1), (1, 0)]
    with pytest.raises(SymbpError, match=r"shapes \(2, 2\) and \(2, 1\) differ"):
        identity_check(block.dH, block.x)


def test_block_jacobian_is_derived_from_the_written_out_block():
    """Independent of residual_block: the Jacobian of relu(W x + b) + x with plain sympy, compared entry by entry."""
    x = sp.Matrix(sp.symbols("x_0_0 x_1_0", real=True))
    W = sp.Matrix(2, 2, sp.symbols("W1_0_0 W1_0_1 W1_1_0 W1_1_1", real=True))
    b = sp.Matrix(sp.symbols("b1_0_0 b1_1_0", real=True))
    H = (W * x + b).applyfunc(symbp.functions.relu) + x
    block = residual_block(n=2, hidden="relu")
    z = dict(zip(block.z, W * x + b))
    assert block.dH.xreplace(z) == H.jacobian(x)


def test_network_identity_holds_for_residual_layers_and_only_for_them():
    net = symbp.MLP([3, 3, 3, 3, 2], hidden="tanh", residual=True)
    results = network_identity(net)
    assert [(r.layer, r.residual, r.holds) for r in results] == [(2, True, True), (3, True, True)]
    broken = network_identity(net, with_identity=())  # the plain formula on a residual network
    assert [r.holds for r in broken] == [False, False]
    assert all(len(r.check.failures) == 3 for r in broken)
    plain = symbp.MLP([3, 3, 3, 3, 2], hidden="relu")
    assert [r.holds for r in network_identity(plain)] == [True, True]
    assert [r.holds for r in network_identity(plain, with_identity=[2, 3])] == [False, False]


def test_network_identity_against_the_expand_derivation():
    net = symbp.MLP([2, 2, 2, 2], hidden="sigmoid", residual=True)
    grads = symbp.derive(net, method="expand")
    assert [r.holds for r in network_identity(net, grads)] == [True]
    assert [r.holds for r in network_identity(net, grads, with_identity=())] == [False]


def test_residual_refuses_what_does_not_fit():
    with pytest.raises(SymbpError, match="expected true, false or a list"):
        symbp.MLP([3, 3, 2], residual=1)
    with pytest.raises(SymbpError, match="layer True cannot have a skip connection"):
        symbp.MLP([3, 3, 3, 2], residual=[True])
    assert symbp.MLP([3, 3, 3, 2], residual=[2]).residual_layers == (2,)


# --------------------------------------------------------------------------- the measurement


def test_initial_values_follow_the_stated_distribution():
    net = flow_network(depth=2, width=60, classes=3)
    values = initial_values(net, init_scale=2.0, seed=3)
    for l in (1, 2):  # 3,600 draws each: the sample deviation is within 3 % of 2 / sqrt(60)
        assert np.std(values[f"W{l}"]) == pytest.approx(2.0 / np.sqrt(60), rel=0.03)
        assert not values[f"b{l}"].any()
    assert np.std(values["W3"]) == pytest.approx(2.0 / np.sqrt(60), rel=0.15)
    assert sorted(values["y"].ravel().tolist()) == [0.0, 0.0, 1.0]
    residual = flow_network(depth=2, width=60, classes=3, residual=True)
    same = initial_values(residual, init_scale=2.0, seed=3)
    assert all(np.array_equal(values[k], same[k]) for k in values)


def test_lambdified_norms_agree_with_reference_backprop_and_finite_differences():
    model = FlowModel(depth=3, width=3, hidden="tanh", classes=2, residual=True)
    values = initial_values(model.net, init_scale=1.5, seed=2)
    run = model.measure(values)
    reference = numeric.reference_gradients(model.net, values)
    fd = numeric.finite_differences(model.net, values, names=["W1", "a1", "a3"]).gradients
    assert run.layers[0].weight_grad_norm == pytest.approx(np.linalg.norm(reference["W1"]), rel=1e-12)
    assert run.layers[0].weight_grad_norm == pytest.approx(np.linalg.norm(fd["W1"]), rel=1e-7)
    assert run.layers[0].activation_grad_norm == pytest.approx(np.linalg.norm(fd["a1"]), rel=1e-7)
    assert run.layers[2].activation_grad_norm == pytest.approx(np.linalg.norm(fd["a3"]), rel=1e-7)
    assert run.layers[3].activation_grad_norm is None
    assert run.reference_max_rel_error < 1e-12
    # one example: dL/dW_l = delta_l a_(l-1)^T is rank one, so its norm is the product of the two norms
    for layer in run.layers:
        assert layer.weight_grad_norm == pytest.approx(layer.preactivation_grad_norm * layer.input_norm, rel=1e-12)


@pytest.fixture(scope="module")
def deep_tanh():
    """Depth 20, width 16, tanh, weights N(0, 0.5^2 / fan_in): plain and residual, same weights."""
    return symbp.flow(depth=DEPTH, width=WIDTH, hidden="tanh", init_scale=0.5, residual=True, seed=0)


def test_small_init_vanishes_without_skip_connections_and_not_with_them(deep_tanh):
    plain, resid = deep_tanh.plain, deep_tanh.residual
    assert plain.activation_ratio < 1e-4  # orders of magnitude below the last hidden layer's
    assert 0.1 < resid.activation_ratio < 10  # within a small factor
    assert regime(plain.activation_ratio) == "vanishes" and regime(resid.activation_ratio) == "is kept"
    # the plain gradient shrinks at every layer going back; each step is about S * E|tanh'| < 1
    norms = plain.column("activation_grad_norm")[:-1]
    assert all(a < b for a, b in zip(norms, norms[1:]))
    assert 0.3 < plain.per_layer_factor < 0.7
    assert max(plain.reference_max_rel_error, resid.reference_max_rel_error) < 1e-10


def test_json_follows_the_interface(deep_tanh):
    payload = json.loads(json.dumps(deep_tanh.to_json()))
    assert payload["residual"] is True
    assert [row["layer"] for row in payload["layers"]] == list(range(1, DEPTH + 2))
    assert payload["layers"][-1]["activation_grad_norm"] is None
    assert payload["layers"][0]["weight_grad_norm"] == deep_tanh.residual.layers[0].weight_grad_norm
    assert payload["plain_layers"][0]["activation_grad_norm"] == deep_tanh.plain.layers[0].activation_grad_norm
    assert payload["sizes"] == [WIDTH] * (DEPTH + 1) + [10]


def test_large_init_explodes(deep_tanh):
    """Weights N(0, 4^2 / fan_in) through the same derived network: the backward product grows. One
    example is a noisy sample of a chaotic network, so five points are measured."""
    model = deep_tanh.models["plain"]
    runs = [model.measure(initial_values(model.net, init_scale=4.0, seed=seed)) for seed in range(5)]
    activation = np.array([run.activation_ratio for run in runs])
    weight = np.array([run.weight_ratio for run in runs])
    assert np.all(activation > 10) and np.exp(np.mean(np.log(activation))) > 100
    assert np.all(weight > 10) and np.exp(np.mean(np.log(weight))) > 100
    assert all(run.reference_max_rel_error < 1e-10 for run in runs)


@pytest.mark.slow
def test_sigmoid_vanishes_even_faster_and_the_skip_keeps_it():
    result = symbp.flow(depth=DEPTH, width=WIDTH, hidden="sigmoid", init_scale=1.0, residual=True, seed=1)
    assert result.plain.activation_ratio < 1e-8  # sigmoid' <= 1/4 at every layer
    assert result.plain.weight_ratio < 1e-8  # sigma(0) = 1/2: the forward signal does not shrink
    assert 0.1 < result.residual.activation_ratio < 10


def test_bad_arguments_name_the_culprit():
    with pytest.raises(SymbpError, match="depth = 0"):
        flow_network(depth=0, width=3)
    with pytest.raises(SymbpError, match="classes = 1"):
        flow_network(depth=1, width=3, classes=1)
    with pytest.raises(SymbpError, match="did you mean 'tanh'"):
        flow_network(depth=1, width=3, hidden="tahn")
    with pytest.raises(SymbpError, match="init scale = -1"):
        symbp.flow(depth=1, width=3, init_scale=-1)
    with pytest.raises(SymbpError, match="parameters; the per-element derivation is limited"):
        flow_network(depth=300, width=16)


# --------------------------------------------------------------------------- command line and document


def run_cli(*args):
    return subprocess.run(["python", "-m", "symbp", "flow", *args], capture_output=True, text=True)


def test_cli_json_and_table():
    done = run_cli("--depth", "3", "--width", "4", "--hidden", "tanh", "--init-scale", "0.5", "--classes", "3",
                   "--residual", "--seed", "2", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["residual"] is True and payload["output"] is None
    assert [row["activation_grad_norm"] is None for row in payload["layers"]] == [False, False, False, True]
    values = initial_values(flow_network(depth=3, width=4, classes=3, residual=True), init_scale=0.5, seed=2)
    net = flow_network(depth=3, width=4, classes=3, residual=True)
    reference = numeric.reference_gradients(net, values)
    assert payload["layers"][1]["weight_grad_norm"] == pytest.approx(np.linalg.norm(reference["W2"]), rel=1e-12)
    text = run_cli("--depth", "3", "--width", "4", "--init-scale", "0.5", "--classes", "3", "--seed", "2")
    lines = text.stdout.splitlines()
    assert lines[3].split() == ["layer", "||dL/dW_l||", "||dL/da_l||"]
    assert lines[4].split()[0] == "1" and lines[7].split()[2] == "-"
    assert float(lines[4].split()[1]) == pytest.approx(np.linalg.norm(
        numeric.reference_gradients(flow_network(depth=3, width=4, classes=3), values)["W1"]), rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--depth", "0", "--width", "4", "--init-scale", "1"], "depth = 0"),
    (["--depth", "2", "--width", "4", "--init-scale", "0"], "init scale = 0.0"),
    (["--depth", "2", "--width", "4", "--init-scale", "1", "--hidden", "tahn"], "did you mean 'tanh'"),
    (["--depth", "2", "--width", "4", "--init-scale", "1", "--pdf"], "--pdf is an option of the document: add -o FILE.tex"),
    (["--depth", "2", "--width", "4", "--init-scale", "1", "-o", "/nonexistent/f.tex"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@needs_tex
def test_flow_document_compiles_and_reads_the_measured_numbers(deep_tanh, tmp_path):
    written = write_flow(deep_tanh, tmp_path / "flow.tex", pdf=True)
    tex = (tmp_path / "flow.tex").read_text()
    assert tex.count(r"\begin{semilogyaxis}") == 2 and tex.count(r"\addplot") == 4
    assert tex.count(r"\addlegendentry{plain}") == 2 and tex.count(r"\addlegendentry{residual}") == 2
    first = deep_tanh.plain.layers[0].activation_grad_norm
    assert f"(1, {first:.6e})" in tex  # the plotted coordinates are the measured numbers
    text = subprocess.run(["pdftotext", written["pdf"], "-"], capture_output=True, text=True).stdout
    text = " ".join(text.split())
    mantissa, exponent = f"{deep_tanh.plain.activation_ratio:.1e}".split("e")
    assert f"the gradient at the first hidden layer is {mantissa} · 10−{int(exponent[1:])} of the last hidden" in text
    assert f"With skip connections, the gradient at the first hidden layer is {deep_tanh.residual.activation_ratio:.2g} of" in text
    assert "The gradient vanishes" in text and "keeps its order of magnitude" in text
    assert text.count("✓ holds") == 4 and text.count("× fails") == 1  # the broken identity, shown as such
    assert "Gradient norms per layer (log scale)" in text
    png = (tmp_path / "flow.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert abs(width - 827) <= 1 and abs(height - 1169) <= 1  # one A4 page (210 x 297 mm) at 100 dpi


# --------------------------------------------------------------------------- the derivation's section


def test_the_derivations_product_is_built_for_the_actual_L():
    from symbp import document

    tex = document.render(symbp.MLP([3, 4, 2]))
    section = tex[tex.index(r"\section{Gradient flow}"):tex.index(r"\section*{How this was checked}")]
    assert r"\delta^{(1)} = D_{1} W^{(2)\top} \delta^{(2)}, \qquad" in section
    assert "D_{2}" not in section and "W^{(3)" not in section
    assert "a product of $1$ pair of factors" in section
    assert "Its norm is bounded by the product of the norms of the factors" in section and "behaves like" not in section
    deep = document.render(symbp.MLP([2, 2, 2, 2, 2, 2, 2, 2], hidden="tanh"))
    assert (r"\delta^{(1)} = D_{1} W^{(2)\top} D_{2} W^{(3)\top} \cdots D_{5} W^{(6)\top} D_{6} W^{(7)\top} "
            r"\delta^{(7)}" not in deep)  # at most four pairs: the middle is elided
    assert r"\delta^{(1)} = D_{1} W^{(2)\top} D_{2} W^{(3)\top} \cdots D_{6} W^{(7)\top} \delta^{(7)}" in deep
    assert "a product of $6$ pairs of factors" in deep


def test_the_flow_verdict_reads_the_error_terms_norms():
    from symbp import document
    from symbp.flow import derivation_section

    net = symbp.MLP([3, 3, 3, 3, 2], hidden="sigmoid")
    values = {k: np.array(v.tolist(), dtype=float) for k, v in document.example_values(net).items()}
    got = symbp.lambdify(net, symbp.derive(net))(**values)  # the derived gradients, not the section's engine
    ratio = np.linalg.norm(got["z1"]) / np.linalg.norm(got["z4"])
    section = derivation_section(net)
    assert float(section["ratio"]["value"]) == pytest.approx(ratio, rel=1e-3) and not section["ratio"]["grows"]
    assert [float(n["delta"]) for n in section["norms"]] == pytest.approx(
        [np.linalg.norm(got[f"z{l}"]) for l in range(1, 5)], rel=1e-3)
    sigmoid = section["activations"][0]
    assert (sigmoid["title"], sigmoid["max"], sigmoid["factor"], sigmoid["zero"]) == ("sigmoid", "0.25", "4", False)
    relu = derivation_section(symbp.MLP([2, 2, 2]))["activations"][0]
    assert (relu["title"], relu["max"], relu["zero"], relu["below"]) == ("ReLU", "1", True, "0")


def test_a_smooth_activation_blocks_nothing():
    from symbp.flow import derivation_section

    tanh = derivation_section(symbp.MLP([2, 2, 2], hidden="tanh"))["activations"][0]
    assert (tanh["max"], tanh["zero"], tanh["shrinks"]) == ("1", False, False)
