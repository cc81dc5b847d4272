"""Spec files with [[layers]]: what loads, every bad layer as one line (exit 2), exact decimals, and the
commands (verify, derive, example) on a network of layers."""

import json
import re
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp.cli import main
from symbp.errors import SymbpError
from symbp.example import worked_example
from symbp.spec import loads

# INTERFACE.md's [model] and first two [[layers]] tables, word for word, then the rest of its Python
# example (relu a1, affine z2, softmax a2): cross_entropy needs an output in (0, 1).
INTERFACE_TOML = '''
[model]
input = 6              # features per example (n0); x is (n0, 1) for one example, (N, n0) for a batch
batch = 4              # rows are examples (for attention: rows are the tokens of one sequence)
loss = "cross_entropy" # a registry loss, or an expression in a and y summed over the output units
                       # (e.g. "relu(1 - y*a)" for a hinge, "log(cosh(a - y))")
reduction = "mean"

[[layers]]
op = "affine"          # z = W a + b (one example); a W^T + 1_N b^T (batch). W is (out, in), b (out, 1)
out = 5
name = "z1"            # the layer's output; claims use it and d<name>
W = "W1"               # parameter names (optional: defaults are documented by the tool)
b = "b1"
bias = true

[[layers]]
op = "layernorm"       # per example, over its features
name = "h1"
'''
REST = '''
gamma = "g1"
beta = "c1"

[[layers]]
op = "relu"
name = "a1"

[[layers]]
op = "affine"
out = 3
name = "z2"
W = "W2"
b = "b2"

[[layers]]
op = "softmax"
name = "a2"
'''


def test_the_interface_example_loads_to_its_network():
    net = loads(INTERFACE_TOML + REST).net
    assert [(layer.position, layer.op.name, layer.name, layer.n_out) for layer in net.layers] == [
        (1, "affine", "z1", 5), (2, "layernorm", "h1", 5), (3, "relu", "a1", 5), (4, "affine", "z2", 3),
        (5, "softmax", "a2", 3)]
    assert net.params == ("W1", "b1", "g1", "c1", "W2", "b2")
    assert [net.shape(p) for p in net.params] == [(5, 6), (5, 1), (5, 1), (5, 1), (3, 5), (3, 1)]
    assert net.intermediates == ("z1", "h1mean", "h1var", "h1", "a1", "z2", "a2")
    assert net.shape("x") == (4, 6) and net.shape("y") == (4, 3) and net.shape("h1mean") == (4, 1)
    assert net.batch == 4 and net.reduction == "mean" and net.loss_row.name == "cross_entropy"
    assert net.layers[1].cfg["eps"] == Fraction(1, 100000)  # the default
    # the same network as INTERFACE.md's Python call
    python = symbp.network(
        [{"op": "affine", "out": 5, "name": "z1", "W": "W1", "b": "b1"},
         {"op": "layernorm", "name": "h1", "gamma": "g1", "beta": "c1"},
         {"op": "relu", "name": "a1"},
         {"op": "affine", "out": 3, "name": "z2", "W": "W2", "b": "b2"},
         {"op": "softmax", "name": "a2"}],
        input=6, batch=4, loss="cross_entropy", reduction="mean")
    assert python.loss == net.loss


def test_the_interface_excerpt_alone_is_refused_for_its_loss():
    with pytest.raises(SymbpError) as error:
        loads(INTERFACE_TOML)
    assert str(error.value) == ("loss 'cross_entropy' takes the log of the outputs, which layer 2 (h1, layernorm) does "
                                "not keep in (0, 1); end with softmax or sigmoid, or use loss 'mse'")


def test_the_default_names_and_one_example():
    net = loads('[model]\ninput = 3\nloss = "mse"\n[[layers]]\nop = "affine"\nout = 2\n[[layers]]\nop = "tanh"\n'
                '[[layers]]\nop = "affine"\nout = 1\n').net
    assert net.outputs == ("z1", "a1", "z2") and net.params == ("W1", "b1", "W2", "b2")
    assert net.batch is None and net.shape("x") == (3, 1) and net.shape("W2") == (1, 2)


# --------------------------------------------------------------------------- exact decimals

def test_toml_floats_are_the_exact_decimals_written():
    spec = loads('[model]\ninput = 2\nbatch = 2\nloss = "mse"\n'
                 '[[layers]]\nop = "layernorm"\neps = 1e-5\n'
                 '[[layers]]\nop = "dropout"\nmask = "m"\np = 0.1\n'
                 '[[layers]]\nop = "rmsnorm"\neps = 0.1000000000000000000001\n')
    ln, drop, rms = spec.net.layers
    assert ln.cfg["eps"] == Fraction(1, 100000)
    assert drop.cfg["p"] == Fraction(1, 10)
    # more digits than a double holds: float(...) would give 0.1 exactly; the text is kept
    assert rms.cfg["eps"] == Fraction(1, 10) + Fraction(1, 10 ** 22)
    # the forward uses them exactly: dropout scales by 1/(1 - 1/10) = 10/9
    h, m = spec.net.symbols(ln.name), spec.net.symbols("m")
    assert spec.net.local(drop.name)[0, 0] == sp.Rational(10, 9) * h[0, 0] * m[0, 0]


def test_values_and_tolerance_read_exactly():
    spec = loads('[model]\nsizes = [1, 1]\noutput = "identity"\nloss = "mse"\n[values]\nx = [[0.1]]\n'
                 '[example]\ntolerance = 1e-3\n')
    from symbp.example import exact

    assert exact(spec.values["x"][0][0], "x") == sp.Rational(1, 10)
    assert exact(spec.example["tolerance"], "tolerance") == sp.Rational(1, 1000)


# --------------------------------------------------------------------------- bad input: one line, exit 2

HEAD = '[model]\ninput = 3\nloss = "mse"\n'
AFFINE = '[[layers]]\nop = "affine"\nout = 3\n'

BAD = [
    ("unknown-field", HEAD + AFFINE + '[[layers]]\nop = "tanh"\n[[layers]]\nop = "layernorm"\nname = "ln2"\n'
     'epsilon = 1e-5\n',
     "layer 3 (ln2, layernorm): unknown field 'epsilon' (did you mean 'eps'?); layernorm takes affine, beta, eps, "
     "gamma, name"),
    ("unknown-op", HEAD + '[[layers]]\nop = "lyernorm"\nname = "h"\n',
     "layer 1 (h): unknown op 'lyernorm' (did you mean 'layernorm'?); known: affine, layernorm, rmsnorm, batchnorm, "
     "dropout, add, softmax, attention, relu, leaky_relu, sigmoid, tanh, softplus, identity, gelu, silu, elu, "
     "activation"),
    ("missing-op", HEAD + '[[layers]]\nname = "h"\n', "layer 1 (h): missing field 'op' (such as op = \"affine\")"),
    ("shape", HEAD + '[[layers]]\nop = "affine"\nout = 2\nname = "h"\n' + AFFINE + '[[layers]]\nop = "add"\n'
     'from = "h"\n',
     "layer 3 (r3, add): from = 'h' has 2 features per example, z2 has 3; add needs the same shape"),
    ("duplicate", HEAD + AFFINE + 'name = "z1"\n' + AFFINE + 'name = "z1"\n',
     "layer 2 (z1, affine): name 'z1' is already used by layer 1 (z1, affine)"),
    ("duplicate-parameter", HEAD + AFFINE + 'W = "W"\n' + AFFINE + 'W = "W"\n',
     "layer 2 (z2, affine): name 'W' is already used by layer 1 (z1, affine)"),
    ("batchnorm-one-example", HEAD + AFFINE + '[[layers]]\nop = "batchnorm"\n',
     "layer 2 (bn2, batchnorm): batchnorm needs a batch of at least 2 examples (training mode normalises each "
     "feature over the batch), got one example; set batch = 2 or more"),
    ("batchnorm-batch-of-1", HEAD + 'batch = 1\n' + AFFINE + '[[layers]]\nop = "batchnorm"\n',
     "layer 2 (bn2, batchnorm): batchnorm needs a batch of at least 2 examples (training mode normalises each "
     "feature over the batch), got a batch of 1; set batch = 2 or more"),
    ("dropout-without-mask", HEAD + AFFINE + '[[layers]]\nop = "dropout"\np = 0.1\n',
     "layer 2 (h2, dropout): missing field 'mask' (the name of its 0/1 mask, an input like x, e.g. mask = \"m1\")"),
    ("dropout-p", HEAD + '[[layers]]\nop = "dropout"\nmask = "m"\np = 1.5\n',
     "layer 1 (h1, dropout): p: expected a drop probability in [0, 1), got 3/2"),
    ("wrong-type-out", HEAD + '[[layers]]\nop = "affine"\nout = "5"\n',
     "layer 1 (z1, affine): out: expected a positive whole number of output units, got '5'"),
    ("wrong-type-out-float", HEAD + '[[layers]]\nop = "affine"\nout = 5.0\n',
     "layer 1 (z1, affine): out: expected a positive whole number of output units, got 5.0"),
    ("wrong-type-eps", HEAD + '[[layers]]\nop = "layernorm"\neps = "small"\n',
     "layer 1 (ln1, layernorm): eps: expected a number, got 'small'"),
    ("negative-eps", HEAD + '[[layers]]\nop = "layernorm"\neps = -1e-5\n',
     "layer 1 (ln1, layernorm): eps: expected a positive number, got -1/100000"),
    ("wrong-type-bias", HEAD + '[[layers]]\nop = "affine"\nout = 2\nbias = 1\n',
     "layer 1 (z1, affine): bias: expected true or false, got 1"),
    ("add-from-later", HEAD + AFFINE + '[[layers]]\nop = "add"\nfrom = "z2"\n' + AFFINE,
     "layer 2 (r2, add): from = 'z2' is not an earlier output; earlier: x, z1"),
    ("add-from-missing", HEAD + AFFINE + '[[layers]]\nop = "add"\n',
     "layer 2 (r2, add): missing field 'from' (the earlier output to add, e.g. from = \"z1\")"),
    ("attention-one-example", HEAD + '[[layers]]\nop = "attention"\ndk = 2\n',
     "layer 1 (att1, attention): attention needs the tokens as the rows of a batch; set batch (the number of "
     "tokens)"),
    ("reserved-name", HEAD + AFFINE + 'name = "y"\n',
     "layer 1 (y, affine): name 'y' is reserved (x, y, N, pi, the sizes n0, n1, ... and the function names)"),
    ("sizes-and-layers", '[model]\nsizes = [3, 3]\ninput = 3\n' + AFFINE,
     "model: sizes = [...] (an MLP) and [[layers]] tables (a network of layers) describe two networks; give one "
     "of them"),
    ("input-without-layers", '[model]\ninput = 3\n',
     "model: input = ... is the width of a network of layers, but the file has no [[layers]] tables (or give "
     "sizes = [...] for an MLP)"),
    ("mlp-field", HEAD + 'hidden = "relu"\n' + AFFINE,
     "model: unknown field 'hidden' (a field of an MLP, sizes = [...]; with [[layers]] every activation is a "
     "layer); fields with [[layers]]: input, batch, loss, reduction"),
    ("layers-as-a-table", HEAD + '[layers]\nop = "tanh"\n',
     "{path}: 'layers' must be an array of tables [[layers]] (one per layer), got a table [layers]"),
    ("missing-input", '[model]\nloss = "mse"\n' + AFFINE,
     "model: missing field 'input' (the features per example, e.g. input = 6)"),
    ("unknown-loss", '[model]\ninput = 3\nloss = "hinge"\n' + AFFINE,
     "unknown loss 'hinge'; known: cross_entropy, binary_cross_entropy, mse, or an expression in a and y such as "
     "'log(cosh(a - y))'"),
    ("mask-not-0-or-1", HEAD + '[[layers]]\nop = "dropout"\nmask = "m"\n[values]\nx = [[1], [2], [3]]\n'
     'y = [[0], [0], [0]]\nm = [[1], [2], [0]]\n',
     "values.m[2,1]: a dropout mask holds 0 (dropped) or 1 (kept), got 2"),
]


@pytest.mark.parametrize("text, message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_every_bad_layers_spec_is_one_line_and_exit_2(text, message, tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(text)
    command = "example" if "[values]" in text else "verify"
    assert main([command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"symbp {command}: error: {message.replace('{path}', str(path))}\n"


@pytest.mark.parametrize("command", ["derive", "verify", "example"])
def test_every_command_refuses_a_bad_layer_the_same_way(command, tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(BAD[0][1])
    assert main([command, str(path)]) == 2
    assert capsys.readouterr().err == f"symbp {command}: error: {BAD[0][2]}\n"


def test_derive_refuses_mlp_options_with_a_spec_file(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(HEAD + AFFINE)
    assert main(["derive", str(path), "--hidden", "tanh"]) == 2
    assert capsys.readouterr().err == (f"symbp derive: error: --hidden describes an MLP given by its sizes; {path} is "
                                       "a spec file, whose [model] says the network: leave out --hidden\n")


# --------------------------------------------------------------------------- verify

RESIDUAL = '''
[model]
input = 3
loss = "mse"

[[layers]]
op = "affine"
out = 2
name = "h"

[[layers]]
op = "tanh"
name = "t"

[[layers]]
op = "add"
from = "h"
name = "r"

[[layers]]
op = "affine"
out = 2
name = "z2"
'''


def test_verify_of_a_layers_spec_gives_the_verdicts(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(RESIDUAL + '[claims]\nW2 = "dz2 @ r.T"\nt = "dr"\nh = "dt * (1 - t**2)"\n')
    assert main(["verify", str(path), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    verdicts = {r["target"]: (r["claim"], r["verdict"]) for r in payload["results"]}
    assert verdicts == {"W2": ("dz2 @ r.T", "holds"), "t": ("dr", "holds"),
                        "h": ("dt * (1 - t**2)", "fails")}  # the skip term dr is missing
    assert payload["ok"] is False


LAYERNORM_ALONE = """
[model]
input = 4
batch = 3
loss = "a * y"         # sum(y * out): y is the upstream gradient dL/dh
reduction = "sum"

[[layers]]
op = "layernorm"
name = "h"
gamma = "g"
beta = "c"

[claims]
"""
LN_DX = ("((dh * g.T) - mean(dh * g.T, axis=1) - ((x - hmean) / sqrt(hvar + 1e-5))"
         " * mean(dh * g.T * (x - hmean) / sqrt(hvar + 1e-5), axis=1)) / sqrt(hvar + 1e-5)")


def test_verify_judges_a_layers_input_gradient(tmp_path, capsys):
    """One layer on its own: a claim for x in a spec is judged (it was 'no gradient named x')."""
    path = tmp_path / "ln.toml"
    path.write_text(LAYERNORM_ALONE + f'x = "{LN_DX}"\n')
    assert main(["verify", str(path), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert (result["target"], result["verdict"]) == ("x", "holds")
    path.write_text(LAYERNORM_ALONE + 'x = "(dh * g.T - mean(dh * g.T, axis=1)) / sqrt(hvar + 1e-5)"\n')
    assert main(["verify", str(path), "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert (result["verdict"], result["diagnosis"]) == ("fails", "layernorm-without-the-variance-term")
    path.write_text(LAYERNORM_ALONE + 'xx = "dh"\n')
    assert main(["verify", str(path)]) == 2
    assert capsys.readouterr().err.strip().endswith("targets: x, g, c, hmean, hvar, h")


def test_claims_of_a_layers_spec_are_parsed_at_load(tmp_path):
    with pytest.raises(SymbpError) as error:
        loads(RESIDUAL + '[claims]\nq = "dr"\n')
    assert str(error.value) == "claims: no gradient named 'q'; targets: x, W1, b1, W2, b2, h, t, r, z2"
    assert loads(RESIDUAL + '[claims]\nh = "dt * (1 - t**2) + dr"\n').claims == {"h": "dt * (1 - t**2) + dr"}


# --------------------------------------------------------------------------- derive

def test_derive_of_a_layers_spec(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(RESIDUAL)
    code = main(["derive", str(path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["sizes"] == [{"op": "affine", "name": "h", "out": 2}, {"op": "tanh", "name": "t", "out": 2},
                                {"op": "add", "name": "r", "out": 2}, {"op": "affine", "name": "z2", "out": 2}]
    assert {n: p["shape"] for n, p in payload["params"].items()} == {"W1": [2, 3], "b1": [2, 1], "W2": [2, 2],
                                                                     "b2": [2, 1]}
    # the skip connection adds its term: sympy.diff of the forward
    assert payload["intermediates"]["h"]["entry"] == "dL/dh[1] = dr[1] + dt[1]*(1 - tanh(h[1])**2)"
    assert payload["output"] is None
    assert code == 0 and payload["checks"]["ok"] is True
    assert payload["checks"]["engine"] == "torch autograd (float64)"
    assert payload["checks"]["numeric_max_abs_error"] < 1e-10
    assert payload["checks"]["finite_difference_max_abs_error"] < 1e-7


def test_derive_names_the_jax_engine_and_its_agreement(tmp_path, capsys, monkeypatch):
    """JAX autodiff is a numeric engine of derive beside torch autograd (parameters only), when installed."""
    from symbp import numeric

    path = tmp_path / "net.toml"
    path.write_text(RESIDUAL)
    assert main(["derive", str(path), "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert main(["derive", str(path)]) == 0
    text = capsys.readouterr().out
    if numeric.jax_available():  # installed with the [jax] extra (as in CI)
        assert checks["jax_engine"] == "jax autodiff (float64, parameters only)"
        assert checks["jax_max_abs_error"] < 1e-10
        assert re.search(r"vs torch autograd \(float64\), \d\.\de-\d\d vs jax autodiff \(float64, parameters "
                         r"only\), \d\.\de-\d\d vs central differences", text), text
    else:
        assert checks["jax_engine"] is None and checks["jax_max_abs_error"] is None and "jax" not in text
    # the engine's number is its own: a JAX gradient off by 0.5 in one entry shows as 0.5
    if numeric.jax_available():
        real = numeric.jax_gradients

        def off(net, values):
            grads = real(net, values)
            grads["W2"] = grads["W2"] + np.array([[0.5, 0.0], [0.0, 0.0]])
            return grads

        monkeypatch.setattr(numeric, "jax_gradients", off)
        assert main(["derive", str(path), "--json"]) == 1  # an engine that disagrees is a failed check
        checks = json.loads(capsys.readouterr().out)["checks"]
        assert checks["jax_max_abs_error"] == pytest.approx(0.5) and checks["ok"] is False
        assert main(["derive", str(path)]) == 1
        assert "DISAGREES: max abs error 5.0e-01 vs jax autodiff (float64, parameters only) (at least 1e-08)" \
            in capsys.readouterr().out


def test_derive_text_of_a_layers_spec(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(RESIDUAL)
    assert main(["derive", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("network of 4 layers: affine h (2), tanh t (2), add r (2), affine z2 (2); input 3; "
                          "loss mse; one example (column vectors)\n")
    assert "  W2      2x2  dL/dW2[1,1] = dz2[1]*r[1]\n" in out
    assert "numeric check" in out


def test_derive_of_an_mlp_spec_is_the_mlp(tmp_path, capsys):
    path = tmp_path / "mlp.toml"
    path.write_text('[model]\nsizes = [3, 2, 2]\nhidden = "tanh"\n')
    assert main(["derive", str(path), "--json"]) == 0
    from_spec = json.loads(capsys.readouterr().out)
    assert main(["derive", "3,2,2", "--hidden", "tanh", "--json"]) == 0
    from_sizes = json.loads(capsys.readouterr().out)
    for key in ("sizes", "network", "params", "intermediates"):
        assert from_spec[key] == from_sizes[key]
    assert from_spec["checks"]["numeric_max_abs_error"] < 1e-12


# --------------------------------------------------------------------------- example

# By hand (one example, mse over one unit): h = W1 x = [1 - 2, 1 + 2] = [-1, 3]; t = relu(h) = [0, 3];
# r = t + h = [-1, 6]; q = r * m / (1 - 1/2) = [-2, 12]; z2 = 2*(-2) + 3*12 = 32; L = 32^2 = 1024.
# dz2 = 2 (z2 - y) = 64; dW2 = dz2 q^T = [-128, 768]; dq = W2^T dz2 = [128, 192]; dr = 2 m dq = [256, 384];
# dt = dr; dh = dr + dt * step(h) = [256 + 0, 384 + 384] = [256, 768]; dW1 = dh x^T; db1 = dh.
EXAMPLE = '''
[model]
input = 2
loss = "mse"

[[layers]]
op = "affine"
out = 2
name = "h"

[[layers]]
op = "relu"
name = "t"

[[layers]]
op = "add"
from = "h"
name = "r"

[[layers]]
op = "dropout"
mask = "m"
p = 0.5
name = "q"

[[layers]]
op = "affine"
out = 1
name = "z2"

[values]
x = [[1], [2]]
y = [[0]]
W1 = [[1, -1], [1, 1]]
b1 = [[0], [0]]
m = [[1], [1]]
W2 = [[2, 3]]
b2 = [[0]]
'''


def col(*v):
    return sp.Matrix(v)


def test_example_of_a_layers_spec_computes_every_cell_exactly(tmp_path):
    from symbp.example import from_spec

    path = tmp_path / "ex.toml"
    path.write_text(EXAMPLE)
    ex = from_spec(path)
    assert ex.value("h") == col(-1, 3) and ex.value("t") == col(0, 3) and ex.value("r") == col(-1, 6)
    assert ex.value("q") == col(-2, 12) and ex.value("z2") == col(32) and ex.loss == 1024
    assert ex.value("dz2") == col(64) and ex.value("dW2") == sp.Matrix([[-128, 768]]) and ex.value("db2") == col(64)
    assert ex.value("dq") == col(128, 192) and ex.value("dr") == col(256, 384) and ex.value("dt") == col(256, 384)
    assert ex.value("dh") == col(256, 768)
    assert ex.value("dW1") == sp.Matrix([[256, 512], [768, 1536]]) and ex.value("db1") == col(256, 768)
    # the order a person fills them in: forward, the loss, then layer by layer from the last
    assert list(dict.fromkeys(c.name for c in ex.cells)) == [
        "h", "t", "r", "q", "z2", "L", "dz2", "dW2", "db2", "dq", "dr", "dt", "dh", "dW1", "db1"]


CLAIMS = '''
[claimed_values]
t = [[-1], [3]]
L = 1024
dr = [[128], [384]]
dh = [[512], [384]]
dW1 = [[256, 768], [512, 1536]]
'''


def test_example_of_a_layers_spec_judges_the_claims(tmp_path, capsys):
    path = tmp_path / "ex.toml"
    path.write_text(EXAMPLE + CLAIMS)
    assert main(["example", str(path), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    reasons = {c["label"]: (c["correct"], c["reason"]) for c in payload["cells"] if c["claimed"] is not None}
    assert reasons == {
        "t[1]": (False, "t[1] = 0, not -1: the activation relu was not applied (-1 is h[1], layer 2 (t, relu))"),
        "t[2]": (True, "exact"),
        "L": (True, "exact"),
        "dr[1]": (False, "dr[1] = 256, not 128: the scale 1/(1 - p) = 2 of layer 4 (q, dropout) was forgotten "
                         "(kept entries are scaled up in training mode)"),
        "dr[2]": (True, "exact"),
        "dh[1]": (False, "h[1] = -1 < 0, so ReLU blocks the gradient: dh[1] = 256, not 512 (the ReLU mask of "
                         "layer 2 (t, relu) was forgotten: dt[1] = 256 passed on unchanged)"),
        "dh[2]": (False, "dh[2] = 768, not 384: the skip term dr[2] of the residual connection layer 3 (r, add) "
                         "was left out (h is read twice, so its gradient is the sum of both paths)"),
        "dW1[1,1]": (True, "exact"),
        "dW1[1,2]": (False, "dW1[1,2] = 512, not 768: that is dW1[2,1]: the product is transposed (dW1 has the "
                            "shape of W1)"),
        "dW1[2,1]": (False, "dW1[2,1] = 768, not 512: that is dW1[1,2]: the product is transposed (dW1 has the "
                            "shape of W1)"),
        "dW1[2,2]": (True, "exact"),
    }


def test_example_document_of_a_layers_spec_is_written(tmp_path, capsys):
    """(It was refused before: the worked-example document now covers networks of layers.)"""
    path = tmp_path / "ex.toml"
    path.write_text(EXAMPLE)
    assert main(["example", str(path), "-o", str(tmp_path / "ex.tex")]) == 0
    tex = (tmp_path / "ex.tex").read_text()
    # dW2 = dz2 a^T at the spec's values: [[-128, 768]], next to its formula
    assert r"\frac{\partial L}{\partial W^{(2)}} &= \delta^{(2)} q^{\top} \\" in tex
    assert r"&= \begin{bmatrix}-128 & 768\end{bmatrix}" in tex


def _numpy_loss(net, values):
    """The loss from the op table's own NumPy forwards (independent of the SymPy forward and of derive)."""
    rows = (lambda a: a) if net.batch else (lambda a: a.T)
    out = {"x": rows(values["x"])}
    X = out["x"]
    for layer in net.layers:
        P = {role: values[name] for role, name in layer.params.items()}
        E = {key: out[name] if name in out else rows(values[name]) for key, name in layer.extra.items()}
        X = layer.op.numpy(X, P, E, layer.cfg, lambda key, v: v)
        out[layer.name] = X
    per_example = net.loss_row.numpy(X, rows(values["y"]))
    return per_example.mean() if net.batch and net.reduction == "mean" else per_example.sum()


@pytest.mark.parametrize("layers, batch", [
    ([{"op": "affine", "out": 3}, {"op": "layernorm", "eps": "0.01"}, {"op": "tanh"}, {"op": "affine", "out": 1}], 2),
    ([{"op": "affine", "out": 3}, {"op": "rmsnorm"}, {"op": "sigmoid"}, {"op": "affine", "out": 2}], None),
    ([{"op": "affine", "out": 2}, {"op": "batchnorm"}, {"op": "relu"}, {"op": "affine", "out": 1}], 3),
], ids=["layernorm", "rmsnorm", "batchnorm"])
def test_example_cells_of_norms_match_central_differences(layers, batch):
    net = symbp.network(layers, input=2, batch=batch, loss="mse")
    rng = np.random.default_rng(5)
    values = {}
    for name in net.inputs + net.params:
        shape = net.shape(name)
        values[name] = (rng.integers(-3, 4, size=shape) / 2).tolist()  # halves: exact and easy
    ex = worked_example(net, values)
    arrays = {k: np.array(v, dtype=float) for k, v in values.items()}
    assert abs(float(ex.num("L")[0]) - _numpy_loss(net, arrays)) < 1e-12
    h = 1e-6
    for name in net.params:
        fd = np.zeros(net.shape(name))
        for idx in np.ndindex(*fd.shape):
            up, down = {k: v.copy() for k, v in arrays.items()}, {k: v.copy() for k, v in arrays.items()}
            up[name][idx] += h
            down[name][idx] -= h
            fd[idx] = (_numpy_loss(net, up) - _numpy_loss(net, down)) / (2 * h)
        got = np.array(ex.num("d" + name).tolist(), dtype=float)
        assert np.allclose(got, fd, atol=1e-6), name
