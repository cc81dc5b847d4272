"""symbp.compile: matrix-level NumPy code from verified claims, judged against independent engines.

Ground truth here is never the compiled code itself: small networks are checked against the
lambdified per-element derivation (``symbp.lambdify(net, symbp.derive(net))``), the large one against
the plain NumPy backprop of :func:`symbp.numeric.reference_gradients`.
"""

import ast
import importlib.util

import numpy as np
import pytest

import symbp
from symbp import numeric
from symbp.errors import SymbpError

# Claims written out here, independently of symbp.textbook, for networks the textbook set and the
# registry cover differently: one per activation derivative, loss and layout.
CASES = {
    "relu-softmax-ce-single": (
        dict(sizes=[4, 5, 3, 3]),
        {"z3": "a3 - y", "W3": "dz3 @ a2.T", "b3": "dz3", "a2": "W3.T @ dz3", "z2": "da2 * step(z2)",
         "W2": "dz2 @ a1.T", "b2": "dz2", "a1": "W2.T @ dz2", "z1": "da1 * step(z1)", "W1": "dz1 @ x.T",
         "b1": "dz1"}),
    "relu-softmax-ce-batch": (
        dict(sizes=[4, 5, 3, 3], batch=3),
        {"z3": "(a3 - y) / N", "W3": "dz3.T @ a2", "b3": "sum(dz3, axis=0).T", "z2": "(dz3 @ W3) * step(z2)",
         "W2": "dz2.T @ a1", "b2": "sum(dz2, axis=0).T", "z1": "(dz2 @ W2) * step(z1)", "W1": "dz1.T @ a0",
         "b1": "sum(dz1, axis=0).T"}),
    "tanh-identity-mse-nobias-batch-sum": (
        dict(sizes=[3, 4, 2], hidden="tanh", output="identity", loss="mse", bias=False, batch=2,
             reduction="sum"),
        {"z2": "2 * (a2 - y) / n2", "W2": "dz2.T @ a1", "z1": "dz2 @ W2 * (1 - tanh(z1) ** 2)",
         "W1": "dz1.T @ x"}),
    "sigmoid-sigmoid-bce-single": (
        dict(sizes=[3, 3, 2], hidden="sigmoid", output="sigmoid", loss="binary_cross_entropy"),
        {"z2": "(a2 - y) / n2", "W2": "dz2 @ a1.T", "b2": "dz2", "z1": "(W2.T @ dz2) * a1 * (1 - a1)",
         "W1": "dz1 @ x.T", "b1": "dz1"}),
    "leaky-softplus-softmax-mse": (
        dict(sizes=[3, 4, 3, 3], hidden=["leaky_relu", "softplus"], output="softmax", loss="mse", batch=2),
        {"a3": "2 * (a3 - y) / (n3 * N)", "z3": "a3 * (da3 - sum(a3 * da3, axis=1))", "W3": "dz3.T @ a2",
         "b3": "sum(dz3, axis=0).T", "z2": "dz3 @ W3 * sigmoid(z2)", "W2": "dz2.T @ a1",
         "z1": "dz2 @ W2 * (0.01 + 0.99 * step(z1))", "W1": "dz1.T @ x", "b1": "(ones(1, N) @ dz1).T"}),
    "residual-tanh-single": (
        dict(sizes=[3, 3, 3, 2], hidden="tanh", output="softmax", loss="cross_entropy", residual=True),
        {"z3": "a3 - y", "W3": "dz3 @ a2.T", "a2": "W3.T @ dz3", "z2": "da2 * (1 - tanh(z2) ** 2)",
         "a1": "W2.T @ dz2 + da2", "z1": "da1 * (1 - a1 + x) * (1 + a1 - x)", "W1": "dz1 @ x.T",
         "b1": "dz1"}),
    "custom-swish-batch": (
        dict(sizes=[2, 3, 2], hidden="x*sigmoid(x)", output="identity", loss="mse", batch=2),
        {"z2": "2 * (a2 - y) / (n2 * N)", "W2": "dz2.T @ a1", "z1": "dz2 @ W2 * (sigmoid(z1) + a1 * (1 - sigmoid(z1)))",
         "W1": "dz1.T @ x", "b1": "sum(dz1, axis=0).T"}),
}


def make(config):
    config = dict(config)
    return symbp.MLP(config.pop("sizes"), **config)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_gradients_equal_the_lambdified_per_element_truth(case):
    config, claims = CASES[case]
    net = make(config)
    fast = symbp.compile(net, claims)
    truth_fn = symbp.lambdify(net, symbp.derive(net))
    for seed in (0, 1):
        values = numeric.random_values(net, seed)
        got, truth = fast(**values), truth_fn(**values)
        assert sorted(got) == sorted(claims)
        for name in claims:
            assert got[name].shape == net.shape(name)
            np.testing.assert_allclose(got[name], truth[name], rtol=1e-11, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_loss_and_forward_equal_the_numpy_forward_pass(case):
    config, claims = CASES[case]
    net = make(config)
    fast = symbp.compile(net, claims)
    values = numeric.random_values(net, 2)
    expected = numeric.forward_pass(net, values)
    arrays = numeric.check_values(net, values)
    assert fast.loss(**arrays) == pytest.approx(expected["L"], rel=1e-13)
    forward = fast.forward(arrays["x"], *(arrays[p] for p in net.params))
    for name in net.intermediates:
        np.testing.assert_allclose(forward[name], expected[name], rtol=1e-13, err_msg=name)


PAIRS = [("softmax", "cross_entropy"), ("softmax", "binary_cross_entropy"), ("softmax", "mse"),
         ("sigmoid", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("sigmoid", "mse"),
         ("identity", "mse")]  # every output/loss pair MLP accepts (identity cannot feed a log)


def naive_loss(output, loss, z, y, *, axis, reduce):
    """The loss from its definition, in plain NumPy (no stable forms, no symbp): the output, then the
    per-example loss (cross-entropy summed over units, binary cross-entropy and mse averaged), then
    the reduction over the rows."""
    if output == "softmax":
        a = np.exp(z) / np.exp(z).sum(axis=axis, keepdims=True)
    elif output == "sigmoid":
        a = 1 / (1 + np.exp(-z))
    else:
        a = z
    if loss == "cross_entropy":
        per = -(y * np.log(a)).sum(axis=axis)
    elif loss == "binary_cross_entropy":
        per = -(y * np.log(a) + (1 - y) * np.log(1 - a)).mean(axis=axis)
    else:
        per = ((a - y) ** 2).mean(axis=axis)
    return reduce(per)


@pytest.mark.parametrize("batch, reduction", [(None, "mean"), (3, "mean"), (3, "sum")])
@pytest.mark.parametrize("output, loss", PAIRS)
def test_compiled_loss_equals_the_loss_written_from_its_definition(output, loss, batch, reduction):
    # The stable forms (log-sum-exp; softplus(z) - y z for sigmoid + binary cross-entropy; y softplus(-z)
    # for sigmoid + cross-entropy) are the definition's value: a flipped sign or term fails here.
    net = symbp.MLP([3, 4, 2], hidden="tanh", output=output, loss=loss, batch=batch, reduction=reduction)
    fast = symbp.compile(net, symbp.textbook(net))
    for seed in (0, 1):
        v = numeric.check_values(net, numeric.random_values(net, seed))
        if batch:
            z2 = np.tanh(v["x"] @ v["W1"].T + v["b1"].T) @ v["W2"].T + v["b2"].T
            reduce = np.mean if reduction == "mean" else np.sum
        else:
            z2 = v["W2"] @ np.tanh(v["W1"] @ v["x"] + v["b1"]) + v["b2"]
            reduce = np.sum
        expected = naive_loss(output, loss, z2, v["y"], axis=1 if batch else 0, reduce=reduce)
        assert expected > 0
        assert fast.loss(**v) == pytest.approx(expected, rel=1e-12)
    # and one value by hand: z2 = [0, 0] (all weights zero), y = [1, 0]
    zero = {k: np.zeros_like(a) for k, a in v.items()}
    zero["y"] = np.array([[1.0, 0.0]] * batch) if batch else np.array([[1.0], [0.0]])
    by_hand = {("softmax", "cross_entropy"): np.log(2), ("sigmoid", "cross_entropy"): np.log(2),
               ("softmax", "binary_cross_entropy"): np.log(2), ("sigmoid", "binary_cross_entropy"): np.log(2),
               ("softmax", "mse"): 0.25, ("sigmoid", "mse"): 0.25, ("identity", "mse"): 0.5}[output, loss]
    rows = batch if batch and reduction == "sum" else 1
    assert fast.loss(**zero) == pytest.approx(rows * by_hand, rel=1e-14)


def test_textbook_claims_compile_to_the_matrix_backprop():
    net = symbp.MLP([4, 5, 3, 3], batch=2)
    fast = symbp.compile(net, symbp.textbook(net))
    backward = fast.source.split("def backward")[1]
    for line in ["dz3 = (a3 - y) / N", "dW3 = dz3.T @ a2", "db3 = np.sum(dz3, axis=0, keepdims=True).T",
                 "da2 = dz3 @ W3", "dz2 = da2 * step(z2)", "dW1 = dz1.T @ x"]:
        assert f"\n    {line}\n" in backward
    assert "    z1 = x @ W1.T + b1.T\n" in fast.source and "    a3 = softmax(z3, axis=1)\n" in fast.source
    assert fast.names[:3] == ["a3", "z3", "W3"]  # each claim after the upstream gradients it uses


def test_generated_functions_line_by_line():
    # softmax + mse over one layer, dz1 written with diag and outer: the whole forward and backward
    # functions, and the claim as the header shows it (in the formula language, not as NumPy)
    net = symbp.MLP([3, 3], output="softmax", loss="mse")
    claims = {"a1": "2 * (a1 - y) / 3", "z1": "(diag(a1) - outer(a1, a1)) @ da1", "W1": "dz1 @ x.T", "b1": "dz1"}
    source = symbp.compile(net, claims).source
    assert "\n    dz1 = (diag(a1) - outer(a1, a1)) @ da1\n" in ast.get_docstring(ast.parse(source), clean=False)
    assert source.split("\n\n\n")[-3:] == [
        'def forward(x, W1, b1):\n'
        '    """Every intermediate z1, a1, ..., z1, a1 (column vectors)."""\n'
        '    z1 = W1 @ x + b1\n'
        '    a1 = softmax(z1, axis=0)\n'
        '    return {\n'
        '        "z1": z1, "a1": a1,\n'
        '    }',
        'def loss(x, y, W1, b1):\n'
        '    """The scalar loss: mse of output softmax."""\n'
        '    v = forward(x, W1, b1)\n'
        '    z1, a1 = v["z1"], v["a1"]\n'
        '    return float(np.sum(np.mean((a1 - y) ** 2, axis=0)))',
        'def backward(x, y, W1, b1):\n'
        '    """dL/dV for every claimed V (denominator layout: shaped like V)."""\n'
        '    v = forward(x, W1, b1)\n'
        '    a1 = v["a1"]\n'
        '    da1 = 2 * (a1 - y) / 3\n'
        '    dz1 = (np.diag(a1.ravel()) - np.outer(a1, a1)) @ da1\n'
        '    dW1 = dz1 @ x.T\n'
        '    db1 = dz1\n'
        '    return {\n'
        '        "a1": da1, "z1": dz1, "W1": dW1, "b1": db1,\n'
        '    }\n',
    ]


def test_batch_size_read_when_only_ones_uses_it():
    # reduction "sum": no 1/N anywhere, so N appears only in ones(1, N); the code must still define it
    net = symbp.MLP([3, 2], output="identity", loss="mse", batch=2, reduction="sum")
    fast = symbp.compile(net, {"z1": "a1 - y", "b1": "(ones(1, N) @ dz1).T"})
    assert "\n    N = x.shape[0]\n" in fast.source and "np.ones((1, N))" in fast.source
    values = numeric.random_values(symbp.MLP([3, 2], output="identity", loss="mse", batch=4, reduction="sum"), 0)
    got = fast(**values)
    z = values["x"] @ values["W1"].T + values["b1"].T
    np.testing.assert_allclose(got["b1"], (z - values["y"]).sum(axis=0, keepdims=True).T, rtol=1e-13)


def test_batch_code_takes_any_number_of_rows():
    # compiled from a symbolic batch of 2; called with 5 rows and with 1, against the NumPy backprop
    net = symbp.MLP([3, 4, 3], batch=2)
    fast = symbp.compile(net, symbp.textbook(net))
    assert "N = x.shape[0]" in fast.source
    for rows in (5, 1):
        big = symbp.MLP([3, 4, 3], batch=rows)
        values = numeric.random_values(big, rows, margin=1e-3)
        got, truth = fast(**values), numeric.reference_gradients(big, values)
        for name in fast.names:
            np.testing.assert_allclose(got[name], truth[name], rtol=1e-12, atol=1e-14, err_msg=f"{rows} rows: {name}")


def test_softmax_and_loss_stay_finite_for_huge_logits():
    net = symbp.MLP([2, 3, 3], batch=2)
    claims = symbp.textbook(net)
    del claims["a2"]  # dL/da2 = -y / a2 / N itself is infinite where softmax underflows to 0
    fast = symbp.compile(net, claims)
    values = numeric.random_values(net, 0)
    values["b2"] = np.array([[1000.0], [-1000.0], [999.0]])
    got, truth = fast(**values), numeric.reference_gradients(net, values)
    np.testing.assert_allclose(got["W2"], truth["W2"], rtol=1e-12, atol=1e-15)
    arrays = numeric.check_values(net, values)
    assert fast.loss(**arrays) == pytest.approx(numeric.forward_pass(net, values)["L"], rel=1e-12)


def test_code_comes_from_the_tree_not_the_text():
    # redundant brackets and spacing are gone, and a comment in the claim never reaches the module
    net = symbp.MLP([3, 2], output="identity", loss="mse")
    claims = {"z1": "((a1 -   y))", "W1": 'dz1 @ (x.T)  # """; import os'}
    fast = symbp.compile(net, claims)
    assert "\n    dW1 = dz1 @ x.T\n" in fast.source and "\n    dz1 = a1 - y\n" in fast.source
    assert "import os" not in fast.source and "#" not in fast.source
    imports = [n for n in ast.walk(ast.parse(fast.source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert len(imports) == 1  # numpy, nothing else


def test_source_is_a_standalone_module_with_the_same_numbers(tmp_path):
    net = symbp.MLP([4, 5, 3], hidden="x*sigmoid(x)", batch=3)
    claims = symbp.textbook(net)
    fast = symbp.compile(net, claims)
    tree = ast.parse(fast.source)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(a.name, a.asname) for n in imports for a in n.names] == [("numpy", "np")]
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"forward", "backward", "loss"} <= functions
    header = ast.get_docstring(tree)
    assert net.describe() in header.replace("\n", " ")
    assert "    dW2 = dz2.T @ a1" in header and "every target row sums to 1" in header

    path = tmp_path / "mlp_gradients.py"
    path.write_text(fast.source)
    spec = importlib.util.spec_from_file_location("mlp_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = numeric.check_values(net, numeric.random_values(net, 3))
    mine, theirs = fast(**values), module.backward(**values)
    assert sorted(mine) == sorted(theirs) == sorted(claims)
    for name in mine:
        assert np.array_equal(mine[name], theirs[name])


# --------------------------------------------------------------------------- refusals


def test_a_claim_that_does_not_hold_is_refused_by_name():
    net = symbp.MLP([4, 5, 3, 3])
    claims = dict(symbp.textbook(net), W3="a2 @ dz3.T")  # the transpose; the shapes fit as W3 is 3 x 3
    with pytest.raises(SymbpError, match=r"claim for W3, 'a2 @ dz3.T', does not hold \(transposed\)"):
        symbp.compile(net, claims)


@pytest.mark.parametrize("claims, message", [
    ({"W2": "dz2 @ a1.T"}, "the claim for W2 uses dz2, the gradient of z2, but no claim defines it"),
    ({"z2": "dz2", "W2": "dz2 @ a1.T"}, "the claims for z2, W2 cannot be ordered: .* in a circle"),
    ({"z2": "dz2 + da2", "a2": "dz2"}, "depend on each other in a circle"),
    ({"W22": "dz2 @ a1.T"}, "no variable 'W22' \\(did you mean 'W2'\\?\\)"),
    ({"W2": lambda values: {}}, "the claim for W2 is not a formula string"),
    ({"W2": "dz2 @ a1"}, "claim for W2 'dz2 @ a1', column"),
    ({}, "claims must be a non-empty mapping"),
])
def test_claims_that_cannot_be_compiled_are_refused(claims, message):
    net = symbp.MLP([3, 4, 2])
    with pytest.raises(SymbpError, match=message):
        symbp.compile(net, claims)


def test_a_report_for_other_claims_is_refused():
    net = symbp.MLP([3, 2], output="identity", loss="mse")
    report = symbp.verify(net, {"z1": "a1 - y"}, sizes="given")  # a1 - y holds at n1 = 2 only
    with pytest.raises(SymbpError, match="the report given does not judge the claim for W1"):
        symbp.compile(net, {"z1": "a1 - y", "W1": "dz1 @ x.T"}, report=report)
    fast = symbp.compile(net, {"z1": "a1 - y"}, report=report)
    assert fast.report is report and fast.names == ["z1"]


def test_bad_values_are_refused_by_name():
    net = symbp.MLP([3, 2], output="identity", loss="mse", batch=2)
    fast = symbp.compile(net, {"z1": "2 * (a1 - y) / (2 * N)"})
    values = numeric.random_values(net, 0)
    with pytest.raises(SymbpError, match=r"W1: expected shape \(2, 3\), got \(3, 2\)"):
        fast(**dict(values, W1=values["W1"].T))
    with pytest.raises(SymbpError, match="x has 2 rows but y has 3"):
        fast(**dict(values, y=np.zeros((3, 2))))
    with pytest.raises(SymbpError, match="missing value for 'b1'"):
        fast(**{k: v for k, v in values.items() if k != "b1"})


# --------------------------------------------------------------------------- at scale


@pytest.mark.slow
def test_mnist_size_equals_the_reference_backprop():
    # Compiled from a symbolic batch of one row (the symbols of a batch of 8 would cost ~8x more to
    # build), called on 8 rows. The reference is the NumPy backprop of each example on its own (the
    # single-example network: column vectors), combined by the mean over the batch: dW = mean of the
    # per-example dW, and row n of dz is the per-example dz / 8.
    net = symbp.MLP([784, 128, 64, 10], batch=1)
    claims = symbp.textbook(net)
    fast = symbp.compile(net, claims)
    single = symbp.MLP([784, 128, 64, 10])
    rng = np.random.default_rng(5)
    values = {"x": rng.normal(size=(8, 784)), "y": rng.dirichlet(np.ones(10), size=8)}
    values.update({p: v for p, v in numeric.random_values(single, 0, margin=1e-3).items() if p in net.params})
    got = fast(**values)
    examples = [numeric.reference_gradients(single, dict(values, x=values["x"][[n]].T, y=values["y"][[n]].T))
                for n in range(8)]
    assert sorted(got) == sorted(claims)
    for name in got:
        if name in net.params:
            expected = np.mean([e[name] for e in examples], axis=0)
        else:
            expected = np.vstack([e[name].T for e in examples]) / 8
        assert got[name].shape == expected.shape
        np.testing.assert_allclose(got[name], expected, rtol=1e-10, atol=1e-15, err_msg=name)


def test_wrap_fills_lines_up_to_the_width():
    from symbp.codegen import _wrap

    assert _wrap("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]  # a line of exactly 7 characters fits
    assert _wrap("aaa bbb ccc", 6) == ["aaa", "bbb", "ccc"]
    assert _wrap("abcdefgh ij", 5, indent="  ") == ["  abcdefgh", "  ij"]  # a long word alone, no empty line
    assert _wrap("one", 80) == ["one"]


def test_flat_vectors_are_taken_as_columns():
    net = symbp.MLP([3, 2], output="identity", loss="mse")
    fast = symbp.compile(net, {"z1": "a1 - y", "W1": "dz1 @ x.T", "b1": "dz1"})
    values = numeric.random_values(net, 0)
    flat = {k: (v.ravel() if v.shape[1] == 1 else v) for k, v in values.items()}
    assert flat["x"].shape == (3,) and flat["b1"].shape == (2,)
    got, expected = fast(**flat), fast(**values)
    for name in ("z1", "W1", "b1"):
        assert got[name].shape == net.shape(name) and np.array_equal(got[name], expected[name])


def test_normalisation_functions_compile_to_numpy_and_follow_the_batch_size():
    net = symbp.MLP([3, 4, 3], hidden="tanh", output="identity", loss="mse", batch=4)
    claims = {"z2": "2 * (a2 - y) / (n2 * N) + mean(a2 - a2, axis=0) + 0 * var(a2, axis=1) * erf(a2) * pi",
              "W2": "dz2.T @ a1", "b2": "(N * mean(dz2, axis=0)).T",
              "z1": "(dz2 @ W2) / cosh(z1)**2 * sqrt(ones(N, n1))", "W1": "dz1.T @ x", "b1": "sum(dz1, axis=0).T"}
    fast = symbp.compile(net, claims)
    backward = fast.source.split("def backward")[1]
    assert "    n1 = 4\n    n2 = 3\n" in backward
    assert "db2 = (N * np.mean(dz2, axis=0, keepdims=True)).T" in backward  # NumPy's count: any number of rows
    assert "np.var(a2, axis=1, keepdims=True)" in backward and "np.pi" in backward and "np.cosh(z1)" in backward
    assert "np.sqrt(np.ones((N, n1)))" in backward and "erf(a2)" in backward
    assert "import math\n\nimport numpy as np\n" in fast.source  # erf is math.erf vectorised (no SciPy)
    assert "    db2 = (N * mean(dz2, axis=0)).T" in fast.source  # the docstring shows the claims as written
    textbook = symbp.compile(net, symbp.textbook(net))
    rng = np.random.default_rng(3)
    for rows in (4, 7):  # 7 rows: the means count the rows they are given
        values = {"x": rng.normal(size=(rows, 3)), "y": rng.normal(size=(rows, 3))}
        values.update({n: rng.normal(size=net.shape(n)) for n in net.params})
        got, expected = fast(**values), textbook(**values)
        for name in claims:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-15)


def test_compiled_erf_is_the_error_function():
    import math

    net = symbp.MLP([2, 2], output="identity", loss="mse")
    fast = symbp.compile(net, {"z1": "(a1 - y) * (1 + erf(z1) - erf(z1))"})
    erf = fast._namespace["erf"]
    z = np.array([[-1.5, 0.0], [0.25, 3.0]])
    np.testing.assert_array_equal(erf(z), [[math.erf(-1.5), 0.0], [math.erf(0.25), math.erf(3.0)]])


# --------------------------------------------------------------------------- framework backends


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("case", ["relu-softmax-ce-single", "relu-softmax-ce-batch", "sigmoid-sigmoid-bce-single"])
def test_backend_of_verified_claims_matches_the_per_element_truth(case, backend):
    pytest.importorskip(backend)  # the extras: installed by the README's test command
    kwargs, claims = CASES[case]
    net = symbp.MLP(**kwargs)
    fast = symbp.compile(net, claims, backend=backend)
    assert fast.backend == backend
    truth = symbp.lambdify(net, symbp.derive(net))
    values = numeric.random_values(net, 3)
    got = fast(**values)
    for name in claims:
        assert str(got[name].dtype).endswith("float64")
        np.testing.assert_allclose(np.asarray(got[name]), truth(**values)[name], rtol=1e-11, atol=1e-13, err_msg=name)


LARGE = dict(sizes=[32, 24, 16, 10], batch=16)


@pytest.fixture(scope="module")
def large():
    """The large network, its textbook claims and their verification (once for both backends)."""
    net = symbp.MLP(**LARGE)
    claims = symbp.textbook(net)
    return net, claims, symbp.verify(net, claims)


def _autograd(backend, net, values):
    """dL/dW, dL/db by the framework's own autograd of the network's forward (float64), written here."""
    names = net.params
    L = net.L
    if backend == "torch":
        import torch

        t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in names) for k, v in values.items()}
        a = t["x"]
        for l in range(1, L + 1):
            z = a @ t[f"W{l}"].T + t[f"b{l}"].T
            a = torch.relu(z) if l < L else z
        loss = -(t["y"] * torch.log_softmax(a, dim=1)).sum(1).mean()
        loss.backward()
        return {k: t[k].grad.numpy() for k in names}
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def loss(params, x, y):
        a = x
        for l in range(1, L + 1):
            z = a @ params[f"W{l}"].T + params[f"b{l}"].T
            a = jnp.maximum(z, 0) if l < L else z
        return -(y * jax.nn.log_softmax(a, axis=1)).sum(1).mean()

    grads = jax.grad(loss)({k: jnp.asarray(values[k]) for k in names}, jnp.asarray(values["x"]), jnp.asarray(values["y"]))
    return {k: np.asarray(v) for k, v in grads.items()}


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backend_on_a_large_network_matches_the_frameworks_autograd(backend, large):
    pytest.importorskip(backend)
    net, claims, report = large
    fast = symbp.compile(net, claims, backend=backend, report=report)
    values = numeric.random_values(net, 0)
    got, want = fast(**values), _autograd(backend, net, values)
    for name in net.params:
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_torch_backend_takes_tensors_and_keeps_float32():
    torch = pytest.importorskip("torch")
    net = symbp.MLP([4, 5, 3], batch=2)
    fast = symbp.compile(net, {"z2": "(a2 - y) / N", "W2": "dz2.T @ a1", "b2": "sum(dz2, axis=0).T"}, backend="torch")
    values = numeric.random_values(net, 1)
    got64 = fast(**values)
    got32 = fast(**{k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()})
    assert isinstance(got32["W2"], torch.Tensor) and got32["W2"].dtype == torch.float32
    assert got32["b2"].shape == (3, 1)
    np.testing.assert_allclose(got32["W2"].numpy(), got64["W2"].numpy(), rtol=1e-5, atol=1e-6)
    assert "def backward(x, y, W1, b1, W2, b2):" in fast.source
    assert "    db2 = reduce_sum(dz2, axis=0, keepdims=True).T" in fast.source.splitlines()
    with pytest.raises(SymbpError, match=r"^W2: expected shape \(3, 5\), got \(5, 3\)$"):
        fast(**dict(values, W2=values["W2"].T))


def test_jax_backend_runs_under_jit():
    jax = pytest.importorskip("jax")
    net = symbp.MLP([4, 5, 3], batch=2)
    fast = symbp.compile(net, symbp.textbook(net), backend="jax")
    values = numeric.random_values(net, 2)
    jitted = jax.jit(fast.backward)(**{k: jax.numpy.asarray(v) for k, v in values.items()})
    truth = symbp.lambdify(net, symbp.derive(net))(**values)
    np.testing.assert_allclose(np.asarray(jitted["W1"]), truth["W1"], rtol=1e-11)
    assert "    db2 = jnp.sum(dz2, axis=0, keepdims=True).T" in fast.source.splitlines()


def test_a_missing_or_unknown_backend_is_one_line(monkeypatch):
    from symbp import codegen

    net = symbp.MLP([3, 2], output="identity", loss="mse")
    with pytest.raises(SymbpError, match=r"^compile: unknown backend 'tensorflow'"):
        symbp.compile(net, {"z1": "2 * (a1 - y) / 2"}, backend="tensorflow")
    real = codegen.importlib.util.find_spec
    monkeypatch.setattr(codegen.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    with pytest.raises(SymbpError) as info:
        symbp.compile(net, {"z1": "2 * (a1 - y) / 2"}, backend="torch")
    assert str(info.value) == "compile: backend 'torch' needs PyTorch, which is not installed: pip install 'symbp[torch]'"


def test_a_numpy_name_without_lowering_is_refused():
    from symbp import codegen

    with pytest.raises(SymbpError, match=r"^compile: backend 'torch' has no lowering of np.fft$"):
        codegen._lower("x = np.fft(z)", codegen.BACKENDS["torch"], set())


# --------------------------------------------------------------------------- the loop over layers

def _one_hot_values(net, seed=0):
    """Values with one-hot targets (the side condition of dL/dz = a - y)."""
    rng = np.random.default_rng(seed)
    values = {n: rng.normal(size=net.shape(n)) for n in ("x", *net.params)}
    rows, cols = net.shape("y")
    if net.batch:  # a row per example
        values["y"] = np.eye(cols)[rng.integers(0, cols, rows)]
    else:  # one column
        values["y"] = np.eye(rows)[:, [1]]
    return values


@pytest.mark.parametrize("config", [dict(sizes=[3, 3, 3, 3, 3, 2], hidden="tanh"), dict(sizes=[6, 5, 3, 2], batch=4),
                                    dict(sizes=[3, 4, 2], hidden="sigmoid", output="sigmoid",
                                         loss="binary_cross_entropy"),
                                    dict(sizes=[3, 4, 4, 2], bias=False), dict(sizes=[3, 4, 4, 2], hidden="x*sigmoid(x)")])
def test_the_loop_over_layers_computes_the_plain_numpy_backprop(config):
    from symbp.codegen import layer_loop

    net = symbp.MLP(**config)
    compiled = symbp.compile(net, symbp.textbook(net))
    source = layer_loop(compiled)
    assert "for l in range(L, 0, -1):  # the backward pass, from the output\n" in source
    namespace = dict(compiled._namespace)  # its helpers (softmax, step, f1), not its backward
    exec(source, namespace)
    values = _one_hot_values(net)
    lists = [[None] + [values[f"{k}{l}"] for l in range(1, net.L + 1)] for k in ("W", "b")[:1 + net.bias]]
    got = namespace["backward"](values["x"], values["y"], *lists)
    got = got if isinstance(got, tuple) else (got,)
    truth = numeric.reference_gradients(net, values)  # written from the conventions, matrix by matrix
    for kind, grads in zip(("W", "b"), got):
        assert len(grads) == net.L + 1 and grads[0] is None
        for l in range(1, net.L + 1):
            np.testing.assert_allclose(grads[l], truth[f"{kind}{l}"], rtol=1e-10, atol=1e-12)


def test_layers_that_differ_keep_the_unrolled_code_and_a_wrong_loop_is_never_given(monkeypatch):
    from symbp import codegen

    for config in (dict(sizes=[3, 4, 4, 2], hidden=["tanh", "relu"]), dict(sizes=[3, 3, 3, 2], residual=True),
                   dict(sizes=[3, 2])):
        net = symbp.MLP(**config)
        assert codegen.layer_loop(symbp.compile(net, symbp.textbook(net))) is None, config
    net = symbp.MLP([3, 4, 4, 2], hidden="tanh")
    claims = symbp.textbook(net)
    compiled = symbp.compile(net, claims)
    assert codegen.layer_loop(compiled).splitlines()[0] == "def backward(x, y, W, b):"
    partial = symbp.compile(net, {k: v for k, v in claims.items() if k != "a1"} | {"z1": "(W2.T @ dz2) * (1 - a1 ** 2)"})
    assert codegen.layer_loop(partial) is None  # a claim missing: the layers do not share their statements
    # a writer that got the offsets wrong (W[l - 1] for W[l + 1]) is caught by the check, not printed
    real = codegen._relative
    monkeypatch.setattr(codegen, "_relative", lambda code, l, at="l": real(code, l, at).replace("+ 1]", "- 1]"))
    assert codegen.layer_loop(compiled) is None
