"""The claim language: what it accepts (with shapes), what it refuses (with column and culprit), and
what its trees evaluate to."""

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import symbp
from symbp import functions as F
from symbp.errors import SymbpError
from symbp.formula import FormulaError, Node, Semantics, evaluate, evaluate_array, known_shapes, parse
from symbp.registry import ACTIVATIONS as REGISTRY

NET = symbp.MLP([4, 5, 3, 3])
BATCH = symbp.MLP([4, 5, 3, 3], batch=8)


@pytest.mark.parametrize("text, shape, op", [
    ("a3 - y", (3, 1), "sub"),
    ("dz3 @ a2.T", (3, 3), "matmul"),
    ("(W3.T @ dz3) * step(z2)", (3, 1), "mul"),
    ("dz1 @ x.T", (5, 4), "matmul"),
    ("dz1 @ a0.T", (5, 4), "matmul"),
    ("W2.T @ dz2", (5, 1), "matmul"),
    ("da1 * a1 * (1 - a1)", (5, 1), "mul"),
    ("1 - tanh(z1) ** 2", (5, 1), "sub"),
    ("softmax(z3) - y", (3, 1), "sub"),
    ("sum(dz3)", (1, 1), "sum"),
    ("sum(dz1 @ x.T, axis=0)", (1, 4), "sum"),
    ("sum(dz1 @ x.T, 1)", (5, 1), "sum"),
    ("diag(a3) - outer(a3, a3)", (3, 3), "sub"),
    ("(diag(a3) - a3 @ a3.T) @ da3", (3, 1), "matmul"),
    ("ones(3, 1) * 0.5", (3, 1), "mul"),
    ("-dz3", (3, 1), "neg"),
    ("+dz3", (3, 1), "name"),
    ("dz3 / 2", (3, 1), "div"),
    ("relu(z1) + leaky_relu(z1) + sigmoid(z1) + softplus(z1) + exp(z1) + log(a1)", (5, 1), "add"),
])
def test_shapes_single(text, shape, op):
    node = parse(text, NET)
    assert node.shape == shape
    assert node.op == op


@pytest.mark.parametrize("text, shape", [
    ("(a3 - y) / N", (8, 3)),
    ("dz3.T @ a2", (3, 3)),
    ("sum(dz2, axis=0).T", (3, 1)),
    ("dz3 @ W3 * step(z2)", (8, 3)),
    ("a3 * (da3 - sum(a3 * da3, axis=1))", (8, 3)),  # (8, 3) broadcast with (8, 1)
    ("ones(N, 1).T @ dz3", (1, 3)),
    ("dz2 + b2.T", (8, 3)),  # row broadcast
])
def test_shapes_batch(text, shape):
    assert parse(text, BATCH).shape == shape


def test_softmax_axis_follows_the_mode():
    assert parse("softmax(z3)", NET).value == 0
    assert parse("softmax(z3)", BATCH).value == 1


def test_numbers_are_exact():
    node = parse("0.1 * dz3", NET)
    assert node.args[0] == Node("number", value=Fraction(1, 10))
    assert parse("-3", NET).value == -3


@pytest.mark.parametrize("text, exponent", [
    ("dz3 ** (-1/2)", Fraction(-1, 2)),  # what textbook() writes for sqrt(x)
    ("dz3 ** -0.5", Fraction(-1, 2)),
    ("dz3 ** (1/3)", Fraction(1, 3)),
    ("dz3 ** 2**-1", Fraction(1, 2)),
    ("dz3 ** -(3/2)", Fraction(-3, 2)),
    ("dz3 ** (1 + 1)", Fraction(2)),
    ("dz3 ** 16", Fraction(16)),  # the cap, inclusive
    ("dz3 ** -16", Fraction(-16)),
    ("dz3 ** (32/2)", Fraction(16)),
])
def test_constant_exponents_fold_to_a_rational(text, exponent):
    node = parse(text, NET)
    assert node.op == "pow" and node.value == exponent and node.shape == (3, 1)


@pytest.mark.parametrize("text, value", [
    ("1e300", Fraction(10**300)),  # the literal caps, inclusive
    ("1e-300", Fraction(1, 10**300)),
    ("9.99e300", Fraction(999 * 10**298)),
    ("0.001e-297", Fraction(1, 10**300)),
    ("1e-5", Fraction(1, 100000)),
    ("0e999999999", Fraction(0)),
    ("1_000.5", Fraction(2001, 2)),
    ("0x1F", Fraction(31)),
    ("9" * 300, Fraction(10**300 - 1)),
])
def test_number_literals_within_the_caps_are_exact(text, value):
    assert parse(text, NET).value == value


@pytest.mark.parametrize("text, column, character, message", [
    ("ａ3 - y", 1, "ａ", "'ａ' (U+FF41 FULLWIDTH LATIN SMALL LETTER A) at column 1 is not ASCII; write 'a'"),
    ("𝑎3 - y", 1, "𝑎", "'𝑎' (U+1D44E MATHEMATICAL ITALIC SMALL A) at column 1 is not ASCII; write 'a'"),
    ("a３ - y", 2, "３", "'３' (U+FF13 FULLWIDTH DIGIT THREE) at column 2 is not ASCII; write '3'"),
    ("a3 − y", 4, "−", "'−' (U+2212 MINUS SIGN) at column 4 is not ASCII; write '-'"),
    ("а3 - y", 1, "а", "'а' (U+0430 CYRILLIC SMALL LETTER A) at column 1 is not ASCII; write 'a'"),
    ("a3 -\u00a0y", 5, "\u00a0", "'\\xa0' (U+00A0 NO-BREAK SPACE) at column 5 is not ASCII; write a plain space"),
    ("dz3 * ٣", 7, "٣", "'٣' (U+0663 ARABIC-INDIC DIGIT THREE) at column 7 is not ASCII; write '3'"),
    ("a3 - y  # λ", 11, "λ", "'λ' (U+03BB GREEK SMALL LETTER LAMDA) at column 11 is not ASCII; symbp reads ASCII only"),
])
def test_non_ascii_is_refused_not_read_as_its_lookalike(text, column, character, message):
    with pytest.raises(FormulaError) as info:
        parse(text, NET)  # Python's ast would read ａ3 and 𝑎3 as a3 (NFKC)
    assert str(info.value) == f"formula {text!r}: {message}"
    assert info.value.column == column and info.value.token == character


@pytest.mark.parametrize("text, column", [("(dz3\n + W9)", 9), ("(dz3\r\n + W9)", 10), ("(dz3\r + W9)", 9)])
def test_columns_count_through_line_breaks_and_messages_stay_one_line(text, column):
    with pytest.raises(FormulaError) as info:
        parse(text, NET)
    assert info.value.column == column and "\n" not in str(info.value) and "\r" not in str(info.value)


CUSTOM = ["x**0.5", "sqrt(x)", "x**3", "x**-2", "x*sigmoid(x)", "log(1+exp(x))", "exp(x)-1", "tanh(x)**2",
          "max(x, 0.1*x)", "x**16", "x**(-16)", "x/(1+abs(x))"]


@pytest.mark.parametrize("batch", [None, 3], ids=["single", "batch"])
@pytest.mark.parametrize("hidden", list(REGISTRY) + CUSTOM)
def test_every_textbook_claim_parses_and_holds(hidden, batch):
    net = symbp.MLP([2, 3, 2], hidden=hidden, batch=batch)
    claims = symbp.textbook(net)
    for target, text in claims.items():
        assert parse(text, net).shape == net.shape(target), (target, text)
    assert symbp.verify(net, claims).ok
    derivative = claims.get("z1")  # None when f' needs what the language lacks (abs) or its caps (z**-17)
    if hidden in ("x**0.5", "sqrt(x)"):
        assert derivative == "da1 * ((1/2) * (z1 ** (-1/2)))"
    if hidden in ("x/(1+abs(x))", "x**(-16)"):
        assert derivative is None


@pytest.mark.parametrize("text, column, token, message", [
    ("W3.T @ dz1", 6, "@", "W3.T @ dz1: shapes (3, 3) and (5, 1) do not align"),
    ("dz3 @ a2.T + W9", 14, "W9", "unknown name 'W9'"),
    ("a3 - yy", 6, "yy", "unknown name 'yy' (did you mean 'y'?)"),
    ("dz4", 1, "dz4", "unknown name 'dz4' (did you mean 'dz3'?)"),
    ("N * dz3", 1, "N", "N is the batch size"),
    ("dz3 * stp(z3)", 7, "stp", "unknown function 'stp' (did you mean 'step'?)"),
    ("relu(z1, z1)", 1, "relu", "relu() takes 1 argument, got 2"),
    ("outer(a3)", 1, "outer", "outer() takes 2 arguments, got 1"),
    ("sum(dz3, axis=2)", 15, "2", "axis must be 0"),
    ("sum(dz3, keepdims=1)", 1, "sum", "sum() takes no keyword argument 'keepdims'"),
    ("dz3 + dz1", 5, "+", "shapes (3, 1) and (5, 1) do not match for element-wise '+'"),
    ("dz3 ** z3", 8, "z3", "the exponent of ** must be a number"),
    ("dz3 ** 1000", 8, "1000", "exponent 1000 is too large: the exponent of ** must be at most 16 in absolute value"),
    ("sum(axis=1)", 1, "sum", "sum() needs the matrix to sum as its first argument, e.g. sum(dz1, axis=0)"),
    ("sum(dz3, axis=1, axis=0)", 1, "sum", "sum(): keyword argument 'axis' given twice"),
    ("sum(dz3, **{})", 10, "**", "sum(): '**' arguments are not allowed"),
    ("a3 ** 17", 7, "17", "exponent 17 is too large: the exponent of ** must be at most 16 in absolute value"),
    ("a3 ** -17", 7, "-17", "exponent -17 is too large"),
    ("a3 ** (2 ** 5)", 8, "2 ** 5", "exponent 2 ** 5 is too large"),
    ("a3 ** (2 ** 50)", 13, "50", "exponent 50 is too large"),
    ("a3 ** (1e300 ** 4)", 8, "1e300 ** 4", "the constant 1e300 ** 4 has more than 1000 digits"),
    ("a3 ** (1 / 0)", 8, "1 / 0", "division by zero"),
    ("0 ** -1 * dz3", 1, "0 ** -1", "division by zero"),
    ("a3 ** (4 ** 0.5)", 8, "4 ** 0.5", "the exponent of ** must be a number (a constant such as 2, -1/2 or 0.5)"),
    ("dz3 * 1e999999999", 7, "1e999999999", "1e999999999: a number's exponent must be within +-300"),
    ("dz3 * 1e-999999999", 7, "1e-999999999", "1e-999999999: a number's exponent must be within +-300"),
    ("dz3 * 1e301", 7, "1e301", "1e301: a number's exponent must be within +-300"),
    ("dz3 * 1e-301", 7, "1e-301", "1e-301: a number's exponent must be within +-300"),
    ("dz3 * 0.001e-298", 7, "0.001e-298", "0.001e-298: a number's exponent must be within +-300"),
    ("dz3 * " + "1" * 302, 7, "1" * 302, "111111111111...11111111 (302 characters): a number's exponent must be within"),
    ("dz3 * 1e-5" + "1" * 300, 7, "1e-5" + "1" * 300, "1e-511111111...11111111 (304 characters): a number's exponent"),
    ("dz3 * 0." + "1" * 1001, 7, "0." + "1" * 1001, "0.1111111111...11111111 (1003 characters): a number has at most "
     "1000 digits"),
    ("(dz3\n + W9)", 9, "W9", "unknown name 'W9'"),
    ("(dz3 +\n x.shape)", 9, ".shape", "'.shape' is not allowed"),
    ("x.shape", 1, ".shape", "'.shape' is not allowed"),
    ("__import__('os').system('x')", 1, "__import__('os').system('x')", "only plain function names can be called"),
    ("__import__('os')", 1, "__import__", "unknown function '__import__'"),
    ("dz3[0]", 1, "dz3[0]", "is not allowed"),
    ("lambda: 0", 1, "lambda: 0", "is not allowed"),
    ("'text'", 1, "'text'", "unsupported constant 'text'"),
    ("dz3 / 0", 1, "dz3 / 0", "division by zero"),
    ("diag(W1)", 6, "W1", "diag() takes vectors"),
    ("dz3 @", 6, "", "syntax error"),
    ("sum(ones(100000, 100000))", 5, "ones", "ones(): 100000 x 100000 = 10000000000 entries, more than 200"),
    ("sum(ones(21, 10))", 5, "ones", "ones(): 21 x 10 = 210 entries, more than 200"),
])
def test_errors_name_the_culprit_and_column(text, column, token, message):
    with pytest.raises(FormulaError) as info:
        parse(text, NET)
    assert message in str(info.value)
    assert f"column {column}:" in str(info.value)
    assert info.value.column == column
    assert info.value.token == token
    assert isinstance(info.value, SymbpError)


def test_known_shapes_cover_gradients_and_batch_size():
    shapes = known_shapes(BATCH)
    assert shapes["dW1"] == (5, 4) and shapes["dz3"] == (8, 3) and shapes["N"] == (1, 1)
    assert "N" not in known_shapes(NET)
    assert "b1" not in known_shapes(symbp.MLP([2, 2], bias=False))


def test_evaluate_gives_sympy_matrices():
    net = symbp.MLP([2, 2, 2])
    env = {"W2": net.symbols("W2"), "dz2": net.grad_symbols("z2"), "z1": net.symbols("z1")}
    got = evaluate(parse("(W2.T @ dz2) * step(z1)", net), env)
    W, d, z = net.symbols("W2"), net.grad_symbols("z2"), net.symbols("z1")
    assert got == sp.Matrix([(W[0, i] * d[0] + W[1, i] * d[1]) * sp.Heaviside(z[i], 0) for i in range(2)])


def test_evaluate_softmax_sum_diag_outer_ones():
    net = symbp.MLP([2, 2], batch=2)
    z = net.symbols("z1")
    got = evaluate(parse("softmax(z1)", net), {"z1": z})
    assert got[0, 1] == sp.exp(z[0, 1]) / (sp.exp(z[0, 0]) + sp.exp(z[0, 1]))  # rows in a batch
    assert evaluate(parse("sum(z1, axis=0)", net), {"z1": z}) == sp.Matrix([[z[0, 0] + z[1, 0], z[0, 1] + z[1, 1]]])
    assert evaluate(parse("sum(z1)", net), {"z1": z}) == sp.Matrix([[sum(z)]])
    assert evaluate(parse("ones(N, 1) * N", net), {}, N=2) == sp.Matrix([[2], [2]])
    assert parse("ones(20, 10)", NET).shape == (20, 10)  # 10 x the largest variable (W1: 5 x 4) is allowed
    single = symbp.MLP([2, 2])
    a = single.symbols("a1")
    assert evaluate(parse("diag(a1) - outer(a1, a1)", single), {"a1": a}) == sp.diag(*a) - a * a.T
    assert evaluate(parse("softmax(z1)", single), {"z1": single.symbols("z1")})[1, 0] == \
        F.sp.exp(single.symbols("z1")[1]) / sum(sp.exp(v) for v in single.symbols("z1"))
    assert evaluate(parse("a1 ** -1 / 2", single), {"a1": a}) == sp.Matrix([1 / (2 * a[0]), 1 / (2 * a[1])])


def test_node_walk_names_and_text():
    node = parse("(W3.T @ dz3) * step(z2)", NET)
    assert node.names() == {"W3", "dz3", "z2"}
    assert [n.op for n in node.walk()] == ["mul", "matmul", "transpose", "name", "name", "func", "name"]
    assert node.args[1].value == "step" and node.args[1].text == "step(z2)" and node.args[1].column == 16
    assert str(node) == "(W3.T @ dz3) * step(z2)"


def bare(node):
    """The same tree without the source text, as a tree built in code (not parsed) would be."""
    return Node(node.op, tuple(bare(a) for a in node.args), node.shape, node.value)


@pytest.mark.parametrize("text", [
    "a3 - y", "dz3 @ a2.T", "(W3.T @ dz3) * step(z2)", "da1 * a1 * (1 - a1)", "1 - tanh(z1) ** 2",
    "softmax(z3) - y", "sum(dz1 @ x.T, axis=0)", "sum(dz1 @ x.T, 1)", "sum(dz3)", "diag(a3) - outer(a3, a3)",
    "ones(3, 1) * 0.5", "-dz3", "dz3 / 0.25", "0.2 * a3 - 0.05 * y + 0.0625", "a1 ** -1 / 2", "exp(-3 * z1) ** 0.5", "a1 ** 1.5 - 2.75 * a1",
    "relu(z1) + leaky_relu(z1) + sigmoid(z1) + softplus(z1) + exp(z1) + log(a1)",
])
def test_text_of_a_tree_without_source_parses_back_to_the_same_tree(text):
    node = parse(text, NET)
    again = parse(str(bare(node)), NET)
    assert again == node  # ops, shapes and values (text and column are not compared)
    assert str(node) == text


def test_nodes_are_frozen_and_equal_trees_hash_alike():
    node = parse("dz3 @ a2.T", NET)
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.op = "add"
    assert hash(node) == hash(parse("dz3@(a2.T)", NET)) and {node, bare(node)} == {node}


def test_evaluate_every_arithmetic_op_against_sympy():
    net = symbp.MLP([2, 2])
    z, a = net.symbols("z1"), net.symbols("a1")
    env = {"z1": z, "a1": a}
    cases = {
        "z1 + a1": z + a, "z1 - a1": z - a, "-z1": -z, "z1 * a1": z.multiply_elementwise(a),
        "z1 / a1": sp.Matrix([z[0] / a[0], z[1] / a[1]]), "a1 ** 3": a.applyfunc(lambda v: v ** 3),
        "a1 ** 0.5 + 1": a.applyfunc(lambda v: sp.sqrt(v) + 1), "z1.T @ a1": z.T * a,
        "outer(z1, a1)": z * a.T, "exp(2 * z1)": z.applyfunc(lambda v: sp.exp(2 * v)),
        "exp(-3 * z1) - exp(z1 * 2)": z.applyfunc(lambda v: sp.exp(-3 * v) - sp.exp(2 * v)),
        "sum(z1 - a1, axis=0)": sp.Matrix([[z[0] + z[1] - a[0] - a[1]]]),
        "tanh(2 * z1) + log(3 * a1)": z.applyfunc(lambda v: sp.tanh(2 * v)) + a.applyfunc(lambda v: sp.log(3 * v)),
        "z1 @ a0.T": z * net.symbols("x").T,  # a0 is x
    }
    env["x"] = net.symbols("x")
    for text, expected in cases.items():
        got = evaluate(parse(text, net), env)
        assert got.shape == expected.shape and (got - expected).applyfunc(sp.expand) == sp.zeros(*got.shape), text


class Rationals(Semantics):
    """Exact fractions (no SymPy): how verify's exact field evaluates a claim."""

    def constant(self, fraction):
        return fraction


def test_evaluate_array_on_fractions():
    net = symbp.MLP([3, 3], output="identity", loss="mse")
    f = Fraction
    W = [[f(1), f(2), f(0)], [f(-1), f(1, 2), f(3)], [f(0), f(0), f(1)]]
    x, b = [[f(1)], [f(-2)], [f(1, 3)]], [[f(1, 2)], [f(0)], [f(-1)]]
    env = {k: _objects(v) for k, v in {"W1": W, "x": x, "b1": b}.items()}
    # W1 x + b1 = [1 - 4 + 1/2, -1 - 1 + 1, 1/3 - 1] = [-5/2, -1, -2/3]; its sum is -25/6
    assert evaluate_array(parse("W1 @ x + b1", net), env, Rationals()).tolist() == [[f(-5, 2)], [f(-1)], [f(-2, 3)]]
    assert evaluate_array(parse("sum(W1 @ x + b1)", net), env, Rationals()).tolist() == [[f(-25, 6)]]
    assert evaluate_array(parse("sum(W1, axis=1) - x", net), env, Rationals()).tolist() == [
        [f(2)], [f(9, 2)], [f(2, 3)]]


def _objects(rows):
    out = np.empty((len(rows), len(rows[0])), dtype=object)
    out[...] = rows
    return out


ALPHABET = st.sampled_from(list("()+-*/@.T,_ 01xyzWbad23N") + ["step", "relu", "sum", "axis=", "**", "ones",
                                                                  "softmax", "__import__", "'os'", "[0]", "lambda"])


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=25).map("".join))
def test_random_formulas_parse_or_raise_formula_error(text):
    try:
        node = parse(text, NET)
    except FormulaError:
        return
    assert isinstance(node, Node)
    assert len(node.shape) == 2 and min(node.shape) >= 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_formula_error(text):
    try:
        parse(text, BATCH)
    except FormulaError:
        pass


# --------------------------------------------------------------------------- normalisation and GELU's language

NORM = symbp.MLP([3, 4, 3], output="identity", loss="mse", batch=5)


@pytest.mark.parametrize("text, shape, op, sugar", [
    ("mean(z1)", (1, 1), "div", ("mean", None)),
    ("mean(z1, axis=0)", (1, 4), "div", ("mean", 0)),
    ("mean(z1, axis=1)", (5, 1), "div", ("mean", 1)),
    ("mean(z1, 1)", (5, 1), "div", ("mean", 1)),
    ("var(z1)", (1, 1), "div", ("var", None)),
    ("var(z1, axis=0)", (1, 4), "div", ("var", 0)),
    ("var(z1, axis=1)", (5, 1), "div", ("var", 1)),
    ("sqrt(z1)", (5, 4), "pow", ("sqrt",)),
    ("(z1 - mean(z1, axis=1)) / sqrt(var(z1, axis=1) + 1e-5)", (5, 4), "div", ()),
    ("erf(z1)", (5, 4), "func", ()),
    ("cosh(z1)", (5, 4), "func", ()),
    ("pi", (1, 1), "const", ()),
    ("n2", (1, 1), "size", ()),
    ("ones(n2, 1)", (3, 1), "ones", ()),
    ("ones(N, n1)", (5, 4), "ones", ()),
    ("2 * (a2 - y) / (n2 * N)", (5, 3), "div", ()),
])
def test_shapes_of_the_normalisation_constructs(text, shape, op, sugar):
    node = parse(text, NORM)
    assert (node.shape, node.op, node.sugar) == (shape, op, sugar)
    assert str(node) == text


def test_mean_var_and_sqrt_are_written_with_existing_ops():
    mean = parse("mean(z1, axis=0)", NORM)
    assert [n.op for n in mean.walk()] == ["div", "sum", "name", "number"]
    assert mean.args[0].value == 0 and mean.args[1].value == 5  # sum over the 5 rows, divided by 5
    var = parse("var(z1)", NORM)
    assert [n.op for n in var.walk()] == ["div", "sum", "pow", "sub", "name", "div", "sum", "name", "number", "number"]
    assert var.args[1].value == 20 and var.args[0].args[0].value == 2  # (X - mean(X))**2 summed / 20 entries
    assert parse("sqrt(z1)", NORM).value == Fraction(1, 2)
    assert parse("n2", NORM).value == ("n2", 3) and parse("ones(n2, N)", NORM).value == ("n2", "N")
    assert parse("pi", NORM).value == "pi"


def test_size_names_come_from_the_network():
    assert NORM.size_names() == {"n0": 3, "n1": 4, "n2": 3, "N": 5}
    assert symbp.MLP([2, 7]).size_names() == {"n0": 2, "n1": 7}
    assert parse("n1", symbp.MLP([2, 7])).value == ("n1", 7)


@pytest.mark.parametrize("text, column, token, message", [
    ("a2 / n9", 6, "n9", "unknown name 'n9' (the sizes are n0, n1, n2)"),
    ("ones(n9, 1)", 6, "n9", "unknown name 'n9' (the sizes are n0, n1, n2)"),
    ("ones(z1, 1)", 6, "z1", "ones(): dimensions must be whole numbers from 1, N or a size name, not 'z1'"),
    ("pii * a2", 1, "pii", "unknown name 'pii' (did you mean 'pi'?)"),
    ("mean(z1, axis=2)", 15, "2", "mean(): axis must be 0 (over the rows) or 1 (over the columns)"),
    ("var(z1, keepdims=1)", 1, "var", "var() takes no keyword argument 'keepdims'"),
    ("mean()", 1, "mean", "mean() takes 1 or 2 arguments, got 0"),
    ("var(axis=0)", 1, "var", "var() needs the matrix whose variance to take as its first argument"),
    ("sqrt(z1, 2)", 1, "sqrt", "sqrt() takes 1 argument, got 2"),
    ("erf(z1) @ z1", 9, "@", "shapes (5, 4) and (5, 4) do not align"),
    ("z1 ** n2", 7, "n2", "the exponent of ** must be a number"),
])
def test_errors_of_the_normalisation_constructs_name_the_culprit(text, column, token, message):
    with pytest.raises(FormulaError) as info:
        parse(text, NORM)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert (info.value.column, info.value.token) == (column, token)


def test_unknown_size_name_is_one_line_bad_input_on_the_cli(tmp_path, capsys):
    from symbp.cli import main

    spec = tmp_path / "net.toml"
    spec.write_text('[model]\nsizes = [3, 4, 2]\noutput = "identity"\nloss = "mse"\n\n[claims]\nz2 = "(a2 - y) / n9"\n')
    assert main(["verify", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown name 'n9'" in err and "Traceback" not in err


def test_nested_var_is_capped_before_it_doubles_out_of_reach():
    text = "z1"
    for _ in range(16):
        text = f"var({text}, axis=0)"
    with pytest.raises(FormulaError, match="nodes once written out"):
        parse(text, NORM)
    assert parse("var(var(var(z1, axis=0)))", NORM).shape == (1, 1)


class Floats(Semantics):
    """Python floats with NumPy's functions: the language's meaning checked against NumPy itself."""

    def constant(self, fraction):
        return float(fraction)

    def call(self, name, v):
        import math
        return {"erf": math.erf, "cosh": math.cosh}[name](v)

    def named(self, name):
        return {"pi": np.pi}[name]


X = np.random.default_rng(0).normal(size=(5, 4))


@pytest.mark.parametrize("text, expected", [
    ("mean(z1)", X.mean(keepdims=True)),
    ("mean(z1, axis=0)", X.mean(axis=0, keepdims=True)),
    ("mean(z1, axis=1)", X.mean(axis=1, keepdims=True)),
    ("var(z1)", X.var(keepdims=True)),
    ("var(z1, axis=0)", X.var(axis=0, keepdims=True)),
    ("var(z1, axis=1)", X.var(axis=1, keepdims=True)),
    ("sqrt(z1 * z1 + 1)", np.sqrt(X * X + 1)),
    ("(z1 - mean(z1, axis=1)) / sqrt(var(z1, axis=1) + 1e-5)",
     (X - X.mean(axis=1, keepdims=True)) / np.sqrt(X.var(axis=1, keepdims=True) + 1e-5)),
    ("cosh(z1) / pi", np.cosh(X) / np.pi),
    ("erf(z1)", np.array([[0.0] * 4] * 5) + np.vectorize(__import__("math").erf)(X)),
    ("z1 / n1 + ones(N, n1) * n2", X / 4 + 3),
])
def test_evaluation_equals_numpy(text, expected):
    got = evaluate_array(parse(text, NORM), {"z1": X.astype(object)}, Floats()).astype(float)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)


def test_evaluate_gives_sympy_erf_cosh_sqrt_pi_and_exact_means():
    net = symbp.MLP([2, 3], output="identity", loss="mse")
    z = net.symbols("z1")
    got = evaluate(parse("erf(z1) + cosh(z1) + sqrt(z1) * pi + var(z1) - mean(z1 * z1) + mean(z1) ** 2", net),
                   {"z1": z})
    expected = z.applyfunc(lambda v: sp.erf(v) + sp.cosh(v) + sp.sqrt(v) * sp.pi)  # var = mean(z^2) - mean(z)^2
    assert (got - expected).applyfunc(sp.expand) == sp.zeros(3, 1)
    assert evaluate(parse("mean(z1) * n1", net), {"z1": z})[0] == z[0] + z[1] + z[2]


@pytest.mark.parametrize("text", [
    "mean(z1)", "mean(z1, axis=0)", "var(z1, axis=1)", "sqrt(var(z1, axis=0) + 1e-5)", "erf(z1) * cosh(z1) / pi",
    "(z1 - mean(z1, axis=1)) / sqrt(var(z1, axis=1) + 0.5)", "ones(n2, 1).T * n1", "ones(N, n2) / N",
])
def test_text_of_a_normalisation_tree_without_source_parses_back(text):
    node = parse(text, NORM)
    again = parse(str(bare_sugar(node)), NORM)
    assert again == node


def bare_sugar(node):
    """The tree without its source text, keeping ``sugar`` (what was written), as the printer sees it."""
    return Node(node.op, tuple(bare_sugar(a) for a in node.args), node.shape, node.value, sugar=node.sugar)
