"""Framework code claims: torch.autograd.Function subclasses and jax.custom_vjp functions, right and
wrong in the usual ways, each judged in a child process with the verdict and diagnosis asserted.

The network is the seeds' kind at a small size: [4, 5, 3], relu then softmax + cross-entropy, a batch
of 3 (mean). Each backward below is the textbook one with one mistake put in by ``MISTAKES``.
"""

import json
import subprocess
import sys
import textwrap

import pytest

import symbp
from symbp import usercode
from symbp.errors import SymbpError
from symbp.usercode import CodeFile

torch = pytest.importorskip("torch")  # the [torch] extra: installed by the README's test command
jax = pytest.importorskip("jax")  # the [jax] extra: likewise

NET = symbp.MLP([4, 5, 3], batch=3)

# The textbook backward in each framework; {dz2}, {dz1}, {dW2}, {db2}, {crash} are where mistakes go.
TORCH = '''
import torch


class MLPLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, W1, b1, W2, b2):
        z1 = x @ W1.T + b1.T
        a1 = torch.relu(z1)
        z2 = a1 @ W2.T + b2.T
        ctx.save_for_backward(x, y, W1, W2, z1, a1, z2)
        return -(y * torch.log_softmax(z2, dim=1)).sum() / {loss_scale}

    @staticmethod
    def backward(ctx, grad):
        x, y, W1, W2, z1, a1, z2 = ctx.saved_tensors
        N = x.shape[0]
        dz2 = {dz2}
        dz1 = {dz1}
        {crash}
        return None, None, dz1.T @ x, dz1.sum(0, keepdim=True).T, {dW2}, {db2}
'''

JAX = '''
import jax
import jax.numpy as jnp


def _forward(x, y, W1, b1, W2, b2):
    z1 = x @ W1.T + b1.T
    a1 = jnp.maximum(z1, 0)
    z2 = a1 @ W2.T + b2.T
    loss = -(y * jax.nn.log_softmax(z2, axis=1)).sum() / {loss_scale}
    return loss, (x, y, W1, W2, z1, a1, z2)


@jax.custom_vjp
def mlp_loss(x, y, W1, b1, W2, b2):
    return _forward(x, y, W1, b1, W2, b2)[0]


def bwd(saved, grad):
    x, y, W1, W2, z1, a1, z2 = saved
    N = x.shape[0]
    softmax = jax.nn.softmax
    dz2 = {dz2}
    dz1 = {dz1}
    {crash}
    return None, None, dz1.T @ x, dz1.sum(0, keepdims=True).T, {dW2}, {db2}


mlp_loss.defvjp(_forward, bwd)
'''

RIGHT = {
    "torch": {"dz2": "(torch.softmax(z2, dim=1) - y) / N * grad", "dz1": "(dz2 @ W2) * (z1 > 0)",
              "dW2": "dz2.T @ a1", "db2": "dz2.sum(0, keepdim=True).T", "crash": "pass", "loss_scale": "x.shape[0]"},
    "jax": {"dz2": "(softmax(z2, axis=1) - y) / N * grad", "dz1": "(dz2 @ W2) * (z1 > 0)",
            "dW2": "dz2.T @ a1", "db2": "dz2.sum(0, keepdims=True).T", "crash": "pass", "loss_scale": "x.shape[0]"},
}
FUNCTION = {"torch": "MLPLoss", "jax": "mlp_loss"}


def source(kind, **mistake):
    return textwrap.dedent((TORCH if kind == "torch" else JAX).format(**dict(RIGHT[kind], **mistake)))


def judge(tmp_path, kind, dtype="float64", **mistake):
    path = tmp_path / "backward.py"
    path.write_text(source(kind, **mistake))
    report = symbp.verify(NET, CodeFile(path, FUNCTION[kind], seconds=120, kind=kind, dtype=dtype))
    return {r.target: r for r in report.results}, report


@pytest.mark.parametrize("kind", ["torch", "jax"])
def test_the_right_backward_holds_and_its_forward_is_the_networks(tmp_path, kind):
    results, report = judge(tmp_path, kind)
    assert list(results) == ["W1", "b1", "W2", "b2", "L"]
    assert all(r.verdict == "holds" for r in results.values()), report
    assert results["W1"].detail.startswith("equal in float64 at random points (rtol 1e-07)")
    assert report.assumptions == ["every target row sums to 1"]  # softmax - y: judged at general targets too
    assert results["L"].detail == "the forward's loss is the network's: equal in float64 at random points (rtol 1e-07)"


# (mistake, target, verdict, diagnosis, factor): each the usual mistake named
TORCH_MISTAKES = [
    ({"dW2": "a1.T @ dz2"}, "W2", "fails", "transposed", None),
    ({"dz1": "dz2 @ W2"}, "W1", "fails", "missing-activation-derivative", None),
    ({"dW2": "-(dz2.T @ a1)"}, "W2", "fails", "sign", None),
    ({"dz2": "(torch.softmax(z2, dim=1) - y) * grad"}, "W2", "fails", "scaled", 1 / 3),
    ({"db2": "dz2"}, "b2", "error", "shape", None),
]


@pytest.mark.parametrize("mistake, target, verdict, diagnosis, factor", TORCH_MISTAKES)
def test_torch_mistakes_are_named(tmp_path, mistake, target, verdict, diagnosis, factor):
    results, report = judge(tmp_path, "torch", **mistake)
    r = results[target]
    assert (r.verdict, r.diagnosis) == (verdict, diagnosis), r.detail
    if factor is not None:
        assert r.factor == pytest.approx(factor)
    assert not report.ok
    assert results["L"].verdict == "holds"  # the forward is right: only the backward is wrong


def test_torch_missing_derivative_names_the_layer(tmp_path):
    results, _ = judge(tmp_path, "torch", dz1="dz2 @ W2")
    assert results["W1"].detail.startswith("it equals the backward pass without f'(z1)")
    assert results["W2"].verdict == "holds"  # the layer above is untouched


def test_torch_wrong_shape_is_judged_not_refused_by_torch(tmp_path):
    results, _ = judge(tmp_path, "torch", db2="dz2")
    assert results["b2"].detail == "returned shape (3, 3), dL/db2 has shape (3, 1)"


def test_torch_crash_names_the_users_file_and_line(tmp_path):
    results, report = judge(tmp_path, "torch", crash="1 / 0")
    line = source("torch", crash="1 / 0").splitlines().index("        1 / 0") + 1
    for name in ("W1", "b1", "W2", "b2"):
        assert results[name].verdict == "error"
        assert results[name].detail == f"MLPLoss raised ZeroDivisionError: division by zero (backward.py, line {line})"


def test_torch_wrong_forward_fails_the_loss_only(tmp_path):
    results, _ = judge(tmp_path, "torch", loss_scale="1")  # the sum where the mean belongs
    assert results["L"].verdict == "fails"
    assert results["L"].detail.startswith("forward returned the loss ")
    expected, got = float(results["L"].expected), float(results["L"].got)
    assert got == pytest.approx(3 * expected, rel=1e-5)  # a batch of 3: the sum is 3 times the mean
    assert results["W1"].verdict == "holds"


def test_torch_float32_is_judged_at_float32_precision(tmp_path):
    results, _ = judge(tmp_path, "torch", dtype="float32")
    assert results["W1"].verdict == "holds"
    assert results["W1"].detail.startswith("equal at float32 precision at random points (rtol ")
    rtol = float(results["W1"].detail.split("rtol ")[1].split(")")[0])
    assert 1e-6 < rtol < 1e-4  # float32's epsilon scaled by the network, far above float64's 1e-7
    assert results["L"].detail.startswith("the forward's loss is the network's: equal at float32 precision")
    results, _ = judge(tmp_path, "torch", dtype="float32", dW2="-(dz2.T @ a1)")
    assert results["W2"].diagnosis == "sign"


def test_torch_wrong_number_of_gradients_is_an_error(tmp_path):
    path = tmp_path / "backward.py"
    path.write_text(source("torch").replace("return None, None, ", "return None, "))
    results = {r.target: r for r in symbp.verify(NET, CodeFile(path, "MLPLoss", kind="torch")).results}
    assert results["W1"].verdict == "error"
    assert results["W1"].detail == ("MLPLoss backward returned 5 gradients; expected 6, one per input "
                                    "(x, y, W1, b1, W2, b2; None for x and y)")


def test_a_none_gradient_is_a_missing_one(tmp_path):
    results, _ = judge(tmp_path, "torch", db2="None")
    assert results["b2"].verdict == "error"
    assert results["b2"].detail == "MLPLoss returned no gradient for b2"
    assert results["W2"].verdict == "holds"


def test_torch_function_in_process_is_judged_the_same(tmp_path):
    path = tmp_path / "inproc_torch.py"
    path.write_text(source("torch", dW2="a1.T @ dz2"))
    sys.path.insert(0, str(tmp_path))
    try:
        import inproc_torch
    finally:
        sys.path.remove(str(tmp_path))
    results = {r.target: r for r in symbp.verify(NET, inproc_torch.MLPLoss).results}
    assert results["W2"].diagnosis == "transposed"
    assert results["W1"].verdict == results["L"].verdict == "holds"


def test_a_plain_function_using_torch_ops_is_numpy_code(tmp_path):
    path = tmp_path / "backward.py"
    path.write_text(textwrap.dedent('''
        import torch

        def backward(values):
            v = {k: torch.from_numpy(a).requires_grad_() for k, a in values.items()}
            z1 = v["x"] @ v["W1"].T + v["b1"].T
            z2 = torch.relu(z1) @ v["W2"].T + v["b2"].T
            loss = -(v["y"] * torch.log_softmax(z2, dim=1)).sum() / 3
            loss.backward()
            return {k: v[k].grad for k in ("W1", "b1", "W2", "b2")}
    '''))
    results = {r.target: r for r in symbp.verify(NET, CodeFile(path)).results}
    assert list(results) == ["W1", "b1", "W2", "b2"]  # NumPy code has no forward to check
    assert all(r.verdict == "holds" for r in results.values())


JAX_MISTAKES = [
    ({"dW2": "a1.T @ dz2"}, "W2", "fails", "transposed", None),
    ({"dz1": "dz2 @ W2"}, "b1", "fails", "missing-activation-derivative", None),
    ({"db2": "-dz2.sum(0, keepdims=True).T"}, "b2", "fails", "sign", None),
    ({"dz2": "(softmax(z2, axis=1) - y) * grad"}, "W1", "fails", "scaled", 1 / 3),
    ({"db2": "dz2.sum()"}, "b2", "error", "shape", None),
]


@pytest.mark.parametrize("mistake, target, verdict, diagnosis, factor", JAX_MISTAKES)
def test_jax_mistakes_are_named(tmp_path, mistake, target, verdict, diagnosis, factor):
    results, _ = judge(tmp_path, "jax", **mistake)
    r = results[target]
    assert (r.verdict, r.diagnosis) == (verdict, diagnosis), r.detail
    if factor is not None:
        assert r.factor == pytest.approx(factor)


def test_jax_crash_and_float32(tmp_path):
    results, _ = judge(tmp_path, "jax", crash="raise ValueError('no')")
    line = source("jax", crash="raise ValueError('no')").splitlines().index("    raise ValueError('no')") + 1
    assert results["W1"].detail == f"mlp_loss raised ValueError: no (backward.py, line {line})"
    results, _ = judge(tmp_path, "jax", dtype="float32")
    assert results["W2"].verdict == "holds"
    assert results["W2"].detail.startswith("equal at float32 precision at random points")


def test_jax_is_judged_with_64_bit_enabled(tmp_path):
    results, _ = judge(tmp_path, "jax")
    assert results["W1"].detail.startswith("equal in float64")  # float32 would be judged at float32


def test_code_of_the_wrong_kind_is_bad_input(tmp_path):
    path = tmp_path / "backward.py"
    path.write_text(source("jax"))
    with pytest.raises(SymbpError, match=r"^code.function: 'bwd' in backward.py is not a jax.custom_vjp function"):
        symbp.verify(NET, CodeFile(path, "bwd", kind="jax"))
    path.write_text("def backward(values):\n    return {}\n")
    with pytest.raises(SymbpError, match=r"^code.function: 'backward' in backward.py is not a torch.autograd.Function"):
        symbp.verify(NET, CodeFile(path, kind="torch"))
    with pytest.raises(SymbpError, match=r"^code.kind: expected one of numpy, torch, jax, got 'tensorflow'"):
        CodeFile(path, kind="tensorflow")


def test_a_missing_framework_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    real = usercode.importlib.util.find_spec
    monkeypatch.setattr(usercode.importlib.util, "find_spec", lambda name: None if name == "jax" else real(name))
    with pytest.raises(SymbpError) as info:
        symbp.verify(NET, CodeFile(tmp_path / "backward.py", "f", kind="jax"))
    assert str(info.value) == "code.kind = 'jax' needs JAX, which is not installed: pip install 'symbp[jax]'"


SPEC = """
[model]
sizes = [4, 5, 3]
batch = 3

[code]
path = "backward.py"
function = "MLPLoss"
kind = "torch"
"""


def test_cli_verify_a_torch_spec(tmp_path):
    (tmp_path / "backward.py").write_text(source("torch", dW2="a1.T @ dz2"))
    (tmp_path / "spec.toml").write_text(SPEC)
    done = subprocess.run([sys.executable, "-m", "symbp", "verify", str(tmp_path / "spec.toml"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    results = {r["target"]: r for r in json.loads(done.stdout)["results"]}
    assert (results["W2"]["verdict"], results["W2"]["diagnosis"]) == ("fails", "transposed")
    assert results["L"]["verdict"] == "holds"
    (tmp_path / "spec.toml").write_text(SPEC.replace('kind = "torch"', 'kind = "torch"\ndtype = "float16"'))
    done = subprocess.run([sys.executable, "-m", "symbp", "verify", str(tmp_path / "spec.toml")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("code.dtype: expected one of float64, float32, got 'float16'")


# --------------------------------------------------------------------------- a layer judged on its own

LAYER = symbp.network([{"op": "layernorm", "name": "h", "gamma": "g", "beta": "c"}], input=4, batch=3,
                      loss="a*y", reduction="sum")  # L = sum(y * h): y is the upstream gradient dL/dh

TORCH_LAYER = '''
import torch


class LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, c):
        mu = x.mean(1, keepdim=True)
        s = torch.sqrt(x.var(1, keepdim=True, correction=0) + 1e-5)
        xhat = (x - mu) / s
        ctx.save_for_backward(xhat, s, g)
        return xhat * g.T + c.T

    @staticmethod
    def backward(ctx, grad):
        xhat, s, g = ctx.saved_tensors
        dxhat = grad * g.T
        dx = (dxhat - dxhat.mean(1, keepdim=True) - xhat * (dxhat * xhat).mean(1, keepdim=True)) / s
        return dx, {dg}, grad.sum(0, keepdim=True).T
'''

JAX_LAYER = '''
import jax
import jax.numpy as jnp


@jax.custom_vjp
def layernorm(x, g, c):
    return fwd(x, g, c)[0]


def fwd(x, g, c):
    mu = x.mean(1, keepdims=True)
    s = jnp.sqrt(x.var(1, keepdims=True) + 1e-5)
    xhat = (x - mu) / s
    return xhat * g.T + c.T, (xhat, s, g)


def bwd(saved, grad):
    xhat, s, g = saved
    return None, {dg}, grad.sum(0, keepdims=True).T


layernorm.defvjp(fwd, bwd)
'''


@pytest.mark.parametrize("kind", ["torch", "jax"])
def test_a_layer_on_its_own_with_the_upstream_gradient_as_input(tmp_path, kind):
    """forward(ctx, x, *params) -> the layer's output, backward(ctx, upstream): judged at y = dL/dh."""
    template, function = (TORCH_LAYER, "LayerNorm") if kind == "torch" else (JAX_LAYER, "layernorm")
    path = tmp_path / "layer.py"
    path.write_text(template.format(dg="(grad * xhat).sum(0, keepdim=True).T" if kind == "torch"
                                    else "(grad * xhat).sum(0, keepdims=True).T"))
    results = {r.target: r for r in symbp.verify(LAYER, CodeFile(path, function, kind=kind)).results}
    judged = [("x", "holds")] if kind == "torch" else []  # the torch layer returns its dx: judged; JAX's None
    assert [(t, r.verdict) for t, r in results.items()] == judged + [("g", "holds"), ("c", "holds"), ("L", "holds")]
    path.write_text(template.format(dg="(grad * xhat).sum(0)" if kind == "torch" else "(grad * xhat).sum(0)[None, :]"))
    results = {r.target: r for r in symbp.verify(LAYER, CodeFile(path, function, kind=kind)).results}
    expected = ("holds", None) if kind == "torch" else ("fails", "transposed")  # a 1-D column is read as a column
    assert (results["g"].verdict, results["g"].diagnosis) == expected
    path.write_text(template.format(dg="(xhat).sum(0, keepdim=True).T" if kind == "torch"
                                    else "(xhat).sum(0, keepdims=True).T"))
    results = {r.target: r for r in symbp.verify(LAYER, CodeFile(path, function, kind=kind)).results}
    assert results["g"].verdict == "fails" and results["c"].verdict == "holds"


def test_a_torch_layers_own_input_gradient_is_judged(tmp_path):
    """backward's dx of a layer judged on its own is judged against dL/dx: a dx without the variance
    term fails, named as the layer norm row's own mistake (or by the element that differs)."""
    path = tmp_path / "layer.py"
    wrong = TORCH_LAYER.format(dg="(grad * xhat).sum(0, keepdim=True).T").replace(
        " - xhat * (dxhat * xhat).mean(1, keepdim=True)", "")
    assert wrong != TORCH_LAYER.format(dg="(grad * xhat).sum(0, keepdim=True).T")
    path.write_text(wrong)
    results = {r.target: r for r in symbp.verify(LAYER, CodeFile(path, "LayerNorm", kind="torch")).results}
    assert results["x"].verdict == "fails" and results["g"].verdict == "holds"
    path.write_text(TORCH_LAYER.format(dg="(grad * xhat).sum(0, keepdim=True).T").replace("return dx,", "return -dx,"))
    results = {r.target: r for r in symbp.verify(LAYER, CodeFile(path, "LayerNorm", kind="torch")).results}
    assert (results["x"].verdict, results["x"].diagnosis) == ("fails", "sign")


def test_layer_code_needs_a_layer_network(tmp_path):
    """A layer-style Function against a whole network (a loss other than sum(y * out)) is called with
    the network's inputs, fails, and is never judged to hold."""
    path = tmp_path / "layer.py"
    path.write_text(TORCH_LAYER.format(dg="(grad * xhat).sum(0, keepdim=True).T"))
    net = symbp.network([{"op": "layernorm", "name": "h", "gamma": "g", "beta": "c"}], input=4, batch=3, loss="mse")
    results = {r.target: r for r in symbp.verify(net, CodeFile(path, "LayerNorm", kind="torch")).results}
    assert results["g"].verdict == "error"
    assert "TypeError" in results["g"].detail
