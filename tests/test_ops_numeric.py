"""Every op of the table x the numeric facets: lambdify, the reference engines and compile.

Ground truth is ``sympy.diff`` of each row's SymPy forward (``symbp.derive``); the engines it is judged
against never look at SymPy: central differences of the NumPy forward built from each row's ``numpy``
column, and torch autograd (float64) through each row's ``torch`` column. A row whose ``numpy`` column
is wrong is shown to fail the check (the last test).
"""

import dataclasses
import re

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp import codegen, numeric
from symbp.formula import FormulaError, parse
from symbp.layers import network

from op_networks import configs, make

CONFIGS = list(configs())


@pytest.fixture(scope="module")
def derived():
    cache = {}

    def get(config_id):
        if config_id not in cache:
            net = make(config_id)
            cache[config_id] = (net, symbp.derive(net))
        return cache[config_id]

    return get


def test_torch_is_installed():
    # the torch engine is part of every check below; CI installs the torch extra
    assert numeric.torch_available()


@pytest.mark.parametrize("config_id", CONFIGS)
def test_lambdified_gradients_agree_with_both_reference_engines(config_id, derived):
    net, grads = derived(config_id)
    for seed in (0, 1):
        check = numeric.check_network(net, grads, seed)
        assert {n: v.shape for n, v in check.got.items()} == {n: net.shape(n) for n in net.params + net.intermediates}
        assert check.values.near_kinks == [] and check.kink_crossings == 0
        assert check.finite_differences < 1e-6
        if any(layer.op.activation is not None and layer.op.activation.expression for layer in net.layers):
            assert check.torch is None and "no independent torch form" in check.torch_skipped
        else:
            assert check.torch is not None and check.torch < 1e-9, check.torch_skipped
        assert check.worst < 1e-6


@pytest.mark.parametrize("config_id", CONFIGS)
def test_each_numpy_column_equals_its_sympy_forward(config_id):
    net = make(config_id)
    values = numeric.random_values(net, 3)
    fwd = numeric.network_forward(net, values)
    env = {s: v for name in net.inputs + net.params for s, v in zip(net.symbols(name), np.ravel(values[name]))}
    for stage in net.stages:  # every stage from its local SymPy form at the NumPy values of its inputs
        local = np.array(stage.local.xreplace({k: sp.Float(v, 30) for k, v in env.items()}).evalf(30),
                         dtype=float).reshape(stage.symbols.shape)
        np.testing.assert_allclose(fwd[stage.name], local, rtol=1e-12, atol=1e-13, err_msg=stage.name)
        env.update(zip(stage.symbols, np.ravel(fwd[stage.name])))


# --------------------------------------------------------------------------- compile

def _loss_claim(net):
    """dL/d(output) written by hand from the loss rows' own backward column (per example), scaled."""
    out, n = net.output_name, net.layers[-1].n_out
    text = net.loss_row.backward or {"log(cosh(a - y))": "tanh(a - y)"}[net.loss_row.name]
    text = re.sub(r"\bn\b", str(n), re.sub(r"\ba\b", out, text))
    return f"({text}) / N" if net.batch and net.reduction == "mean" else text


def _claims(net):
    """Correct claims from the output down, each layer's from its row's backward column; stops at the
    first layer whose claims the formula language cannot parse yet (mean, var, sqrt before they land)."""
    claims = {net.output_name: _loss_claim(net)}
    for layer in reversed(net.layers):
        rows = layer.op.backward(layer.context(net))
        try:
            for target, claim in rows.items():
                parse(claim, net, what=target)
        except FormulaError:
            break
        if not rows:
            break  # an activation whose derivative the language cannot write yet (gelu's erf)
        for target, claim in rows.items():
            if target != "x":
                claims[target] = claims[target] + " + " + claim if target in claims else claim
    return claims


def _compiled(net, claims):
    """The compiled module of ``claims`` without the verification step, which does not take networks
    yet (verify.py, branch verifyops): here the claims are judged by comparison with lambdify."""
    trees = {t: parse(c, net, what=f"claim for {t}") for t, c in claims.items()}
    order = codegen._order(net, trees)
    source = codegen._generate(net, {t: trees[t] for t in order})
    return codegen.CompiledGradients(net, order, claims, source, None, codegen._load(source, net))


@pytest.mark.parametrize("config_id", CONFIGS)
def test_compiled_forward_loss_and_gradients(config_id, derived):
    net, grads = derived(config_id)
    claims = _claims(net)
    last = net.layers[-1]
    assert set(last.params.values()) <= set(claims)  # the test is never vacuous: at least the last layer
    fast = _compiled(net, claims)
    truth = symbp.lambdify(net, grads)
    for seed in (0, 1):
        values = numeric.random_values(net, seed)
        reference = numeric.network_forward(net, values)
        forward = fast.forward(**{k: values[k] for k in ("x", *net.masks, *net.params)})
        assert sorted(forward) == sorted(net.intermediates)
        for name in net.intermediates:
            np.testing.assert_allclose(forward[name], reference[name], rtol=1e-13, atol=1e-14, err_msg=name)
        assert fast.loss(**{k: values[k] for k in net.inputs + net.params}) == pytest.approx(reference["L"], rel=1e-12)
        got, want = fast(**values), truth(**values)
        assert sorted(got) == sorted(claims)
        for name in claims:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_compiled_network_takes_masks_by_name_and_any_batch():
    net = make("dropout")
    claims = _claims(net)
    fast = _compiled(net, claims)
    assert "def forward(x, m1, W1, b1, W2, b2):" in fast.source
    assert "    h2 = z1 * m1 / 0.75" in fast.source
    values = numeric.random_values(net, 0)
    values = {k: np.vstack([v, v]) if k in net.inputs else v for k, v in values.items()}  # 4 rows
    got = fast(**values)
    dz1 = got["z2"] @ values["W2"] * values["m1"] / 0.75
    np.testing.assert_allclose(got["W1"], dz1.T @ values["x"], rtol=1e-13)


def test_compiled_layernorm_forward_is_readable():
    fast = _compiled(make("layernorm"), {"z2": "(2 * (z2 - y) / 2) / N", "W2": "dz2.T @ ln2"})
    assert ("    ln2mean = np.mean(z1, axis=1, keepdims=True)\n"
            "    ln2var = np.mean((z1 - ln2mean) ** 2, axis=1, keepdims=True)\n"
            "    ln2 = (z1 - ln2mean) / np.sqrt(ln2var + 1e-05) * gamma2.T + beta2.T\n") in fast.source


def test_compile_of_a_network_refuses_an_op_without_code():
    net = make("add")
    layer = net.layers[2]
    broken = dataclasses.replace(layer.op, code=None)
    object.__setattr__(net.layers[2], "op", broken)
    with pytest.raises(symbp.SymbpError, match=r"layer 3 \(r3, add\): the op has no NumPy code"):
        _compiled(net, {"z2": "2 * (z2 - y) / 2", "W2": "dz2 @ r3.T"})


# --------------------------------------------------------------------------- a wrong row fails

def test_a_wrong_numpy_column_fails_the_reference_check():
    # a layer norm whose NumPy forward uses the unbiased variance (1/(n-1)), as numpy.var(ddof=1)
    from symbp.ops import table

    def unbiased(X, P, E, cfg, stage):
        mean = stage("mean", X.mean(axis=1, keepdims=True))
        var = stage("var", ((X - mean) ** 2).sum(axis=1, keepdims=True) / (X.shape[1] - 1))
        return (X - mean) / np.sqrt(var + float(cfg["eps"])) * P["gamma"].T + P["beta"].T

    def unbiased_torch(X, P, E, cfg, stage):
        import torch

        mean = X.mean(dim=1, keepdim=True)
        var = X.var(dim=1, keepdim=True, unbiased=True)
        return (X - mean) / torch.sqrt(var + float(cfg["eps"])) * P["gamma"].T + P["beta"].T

    wrong = dataclasses.replace(table.LAYERNORM, numpy=unbiased, torch=unbiased_torch)
    layers = configs()["layernorm"][1]["layers"]
    kwargs = dict(configs()["layernorm"][1], layers=[dict(layers[0]), {"op": "layernorm"}, dict(layers[2])])
    net = network(**kwargs)
    right = numeric.check_network(net, symbp.derive(net), 0)
    assert right.worst < 1e-6
    object.__setattr__(net.layers[1], "op", wrong)  # the SymPy forward (the derivation) is unchanged
    check = numeric.check_network(net, symbp.derive(net), 0)
    assert check.finite_differences > 1e-2 and check.torch > 1e-2


def _framework(backend):
    return pytest.importorskip(backend)  # the [torch] and [jax] extras: installed by the README's test command


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("config_id", CONFIGS)
def test_each_backend_module_matches_the_per_element_truth(config_id, backend, derived):
    """Every op, in each framework: the generated module's forward, loss and gradients against the
    lambdified derivation (sympy.diff of each row's forward), returned as the framework's tensors."""
    _framework(backend)
    net, grads = derived(config_id)
    claims = _claims(net)
    trees = {t: parse(c, net, what=f"claim for {t}") for t, c in claims.items()}
    order = codegen._order(net, trees)
    source = codegen._generate(net, {t: trees[t] for t in order}, backend=backend)
    assert not re.search(r"(?<![\w.])np\.", source) and ("import torch" in source) == (backend == "torch")
    fast = codegen.CompiledGradients(net, order, claims, source, None, codegen._load(source, net), backend=backend)
    truth = symbp.lambdify(net, grads)
    values = numeric.random_values(net, 0)
    reference = numeric.network_forward(net, values)
    tensors = codegen._tensors(net, values, backend)
    assert float(fast.loss(**{k: tensors[k] for k in net.inputs + net.params})) == pytest.approx(reference["L"], rel=1e-12)
    got, want = fast(**values), truth(**values)
    assert sorted(got) == sorted(claims)
    for name in claims:
        assert type(got[name]).__module__.split(".")[0] in (backend, "jaxlib"), type(got[name])
        assert str(got[name].dtype).endswith("float64")
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("config_id", CONFIGS)
def test_jax_autodiff_is_a_fourth_engine(config_id, derived):
    """JAX's grad of the loss written from the op table's code columns agrees with the derivation (every
    op), and check_network reports it next to torch and finite differences."""
    _framework("jax")
    net, grads = derived(config_id)
    check = numeric.check_network(net, grads, 0, finite_differences=False)
    assert check.jax_skipped == ""
    assert check.jax is not None and check.jax < 1e-10
    values = numeric.random_values(net, 1)
    want = symbp.lambdify(net, grads)(**values)
    got = numeric.jax_gradients(net, values)
    assert sorted(got) == sorted(net.params)
    for name in net.params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)
