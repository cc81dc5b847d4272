"""Computation graphs: the classic circuits (micrograd's, cs231n's), accumulation, every gate against
sympy.diff, deep graphs without recursion, JSON, the CLI, and the compiled picture."""

import json
import math
import shutil
import subprocess

import pytest
import sympy as sp

from symbp.cli import main
from symbp.errors import SymbpError
from symbp.graph import GATES, Node, gate_label, graph, layout, topological, written
from symbp.graph import document as graph_document

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="TeX is installed by .ci/run")

SEED003 = {"a": 2, "b": -3, "c": 5, "f": -2}
SEED004 = {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}
NEURON = "1/(1+exp(-(w0*x0+w1*x1+w2)))"


def by_label(g):
    return {gate_label(n) if n.inputs else n.id: n for n in g.nodes}


# --------------------------------------------------------------------------- seed 003 (micrograd)


def test_seed003_every_node_exactly():
    # e = a*b = -6, d = e + c = -1, L = f*d = 2; dL/dd = f = -2, dL/de = dL/dd = -2 (the add distributes),
    # dL/da = dL/de * b = 6, dL/db = dL/de * a = -4, dL/dc = -2, dL/df = d = -1.
    g = graph("(a*b + c)*f", at=SEED003)
    assert [(n.id, n.op, n.gate) for n in g.nodes] == [
        ("a", "input", "input"), ("b", "input", "input"), ("n1", "mul", "switcher"), ("c", "input", "input"),
        ("n2", "add", "distributor"), ("f", "input", "input"), ("n3", "mul", "switcher")]
    values = {n.id: (n.value, n.grad) for n in g.nodes}
    assert values == {"a": (2, 6), "b": (-3, -4), "c": (5, -2), "f": (-2, -1),
                      "n1": (-6, -2), "n2": (-1, -2), "n3": (2, 1)}
    assert all(isinstance(v, sp.Integer) for pair in values.values() for v in pair)  # exact, not floats
    e = g.nodes[2]
    assert e.local == (-3, 2)  # the switcher: each input's local gradient is the other input


def test_seed003_with_nodes_as_in_micrograd():
    a, b, c, f = (Node(v, label=k) for k, v in SEED003.items())
    e = a * b
    d = e + c
    L = f * d
    L.backward()
    assert (L.value, a.grad, b.grad, c.grad, f.grad, e.grad, d.grad) == (2, 6, -4, -2, -1, -2, -2)
    L.backward()  # backward starts from zero each time: the same gradients, not doubled
    assert a.grad == 6


def test_a_variable_used_twice_accumulates():
    a = Node(2, label="a")
    b = a + a
    b.backward()
    assert a.grad == 2  # 1 if the backward overwrote with = instead of +=
    g = graph("a + a", at={"a": 2})
    add = g.nodes[-1]
    assert [n.id for n in add.inputs] == ["a", "a"] and g.grad("a") == 2
    assert graph("a + a", at={"a": 2}, structure="sympy").grad("a") == 2  # SymPy writes it 2*a
    g = graph("a*b + a", at={"a": 3, "b": 4})
    assert g.grad("a") == 5 and g.grad("b") == 3  # b + 1 through two paths
    assert g.check()["a"] == (5, 5, True)


# --------------------------------------------------------------------------- seed 004 (cs231n)


@pytest.mark.parametrize("structure", ["source", "sympy"])
@pytest.mark.parametrize("granularity", ["gates", "primitives"])
@pytest.mark.parametrize("text", [NEURON, "sigmoid(w0*x0 + w1*x1 + w2)"])
def test_seed004_sigmoid_neuron_five_gradients(text, structure, granularity):
    g = graph(text, at=SEED004, structure=structure, granularity=granularity)
    rounded = {n: round(float(g.grad(n)), 2) for n in SEED004}
    assert rounded == {"w0": -0.2, "w1": -0.39, "w2": 0.2, "x0": 0.39, "x1": -0.59}  # cs231n's numbers
    # exactly: dL/dz = sigma(1)(1 - sigma(1)) = e^-1/(1 + e^-1)^2 at z = w.x + w2 = 1
    local = sp.exp(-1) / (1 + sp.exp(-1)) ** 2
    expected = {"w0": -1 * local, "x0": 2 * local, "w1": -2 * local, "x1": -3 * local, "w2": local}
    for name, value in expected.items():
        assert abs(sp.N(g.grad(name) - value, 50)) < sp.Float("1e-45"), name
    assert abs(sp.N(g.value - 1 / (1 + sp.exp(-1)), 50)) < sp.Float("1e-45")


def test_seed004_circuit_as_cs231n_draws_it():
    g = graph(NEURON, at=SEED004)
    gates = [n for n in g.nodes if n.inputs]
    assert [gate_label(n) for n in gates] == ["*", "*", "+", "+", "*-1", "exp", "+1", "1/x"]
    assert [n.gate for n in gates] == ["switcher", "switcher", "distributor", "distributor", "sign flipper",
                                       "scaler", "distributor", "scaler"]
    assert [round(float(n.value), 2) for n in gates] == [-2, 6, 4, 1, -1, 0.37, 1.37, 0.73]
    assert [round(float(n.grad), 2) for n in gates] == [0.2, 0.2, 0.2, 0.2, -0.2, -0.53, -0.53, 1]
    one_gate = graph("sigmoid(w0*x0 + w1*x1 + w2)", at=SEED004)
    sigmoid = one_gate.nodes[-1]
    assert sigmoid.op == "sigmoid" and round(float(sigmoid.local[0]), 2) == 0.2  # 0.73 * (1 - 0.73)


def test_sympy_structure_shows_the_canonical_tree():
    g = graph("a - b + c", at={"a": 1, "b": 2, "c": 3}, structure="sympy")
    assert [gate_label(n) for n in g.nodes if n.inputs] == ["*-1", "+"]  # n-ary add of a, -b, c
    assert len(g.nodes[-1].inputs) == 3
    g = graph("x/y", at={"x": 1, "y": 2}, structure="sympy")
    assert [n.op for n in g.nodes if n.inputs] == ["div"] and g.grad("y") == sp.Rational(-1, 4)
    g = graph("x/y", at={"x": 1, "y": 2})
    assert [n.op for n in g.nodes if n.inputs] == ["div"] and g.grad("x") == sp.Rational(1, 2)


# --------------------------------------------------------------------------- every gate vs sympy.diff

EXPRESSIONS = [
    "x*y - x/y + x**3",
    "max(x, y, 1)*min(x, 2) + Max(y, 0)",
    "relu(x - y) + abs(y) + relu(y)",
    "exp(x)*log(y) + sqrt(y)",
    "tanh(x*y) + sigmoid(x) + softplus(y)",
    "2**x + x**y + 1/(x + y)",
    "sin(x)*cos(y) - (x - 3)*(y + 1)/5",
    "-(x + y)**2 + 3*x*y*x",
]


@pytest.mark.parametrize("text", EXPRESSIONS)
@pytest.mark.parametrize("structure", ["source", "sympy"])
@pytest.mark.parametrize("granularity", ["gates", "primitives"])
def test_gradients_agree_with_sympy_diff(text, structure, granularity):
    at = {"x": sp.Rational(3, 2), "y": sp.Rational(5, 7)}
    g = graph(text, at={k: str(v) for k, v in at.items()}, structure=structure, granularity=granularity)
    x, y = sp.symbols("x y", real=True)
    expr = g.expr
    for name, symbol in (("x", x), ("y", y)):
        truth = sp.diff(expr, g.symbols[name]).subs({g.symbols["x"]: at["x"], g.symbols["y"]: at["y"]})
        ours = g.grad(name)
        if truth.is_Rational:
            assert ours == truth, (name, ours, truth)  # exactly
        else:
            assert abs(sp.N(ours - truth, 40)) < sp.Float("1e-30"), (name, ours, truth)
    assert all(ok for _, _, ok in g.check().values())


def test_every_op_has_a_named_gate():
    x = Node(sp.Rational(1, 2), label="x")
    y = Node(2, label="y")
    made = [x + y, x - y, x * y, x / y, 3 * x, -x, x.max(y), x.min(y), x.relu(), x.abs(), x.exp(), x.log(),
            1 / x, x**3, 2**x, x**y, x.sqrt(), x.sigmoid(), x.tanh(), x.softplus(), x.sin(), x.cos()]
    assert {n.op for n in made} | {"input"} == set(GATES)
    assert {"add": "distributor", "mul": "switcher", "max": "router"}.items() <= {n.op: n.gate for n in made}.items()


def test_relu_derivative_at_the_kink_and_max_ties():
    assert [graph("relu(x)", at={"x": v}).grad("x") for v in (-1, 0, 1)] == [0, 0, 1]  # relu'(0) = 0
    g = graph("max(x, y)", at={"x": 1, "y": 1})
    assert (g.grad("x"), g.grad("y")) == (sp.Rational(1, 2), sp.Rational(1, 2))  # SymPy's Heaviside(0) = 1/2
    assert all(ok for _, _, ok in g.check().values())
    g = graph("max(x, y)", at={"x": 3, "y": 1})
    assert (g.grad("x"), g.grad("y")) == (1, 0)  # the router sends it all to the winner


def test_variables_sympy_cancels_have_gradient_zero():
    g = graph("x - x + y*y", at={"x": 5, "y": 3}, structure="sympy")
    assert g.grad("x") == 0 and g.grad("y") == 6 and "x" not in [n.id for n in g.nodes]
    assert g.check()["x"] == (0, 0, True)
    g = graph("x - x + y*y", at={"x": 5, "y": 3})  # as written: x goes through a sub gate, 1 - 1 = 0
    assert g.grad("x") == 0 and [n.id for n in g.nodes].count("x") == 1
    with pytest.raises(SymbpError, match="its variables cancel"):
        graph("x/x", at={"x": 2}, structure="sympy")


def test_exact_inputs_give_exact_values_and_floats_give_floats():
    g = graph("x/3 + y", at={"x": 1, "y": "0.1"})
    assert g.value == sp.Rational(13, 30) and g.exact
    g = graph("x/3 + y", at={"x": 1.0, "y": 0.1})
    assert isinstance(g.value, sp.Float) and abs(float(g.value) - (1 / 3 + 0.1)) < 1e-14 and not g.exact


# --------------------------------------------------------------------------- deep and wide graphs


def test_deep_chain_of_nodes_does_not_recurse():
    a = Node(0.9, label="a")
    y = a
    for _ in range(3000):
        y = (y * a).tanh()
    y.backward()
    # forward-mode derivative in plain floats: y' = (1 - y^2)(y_prev' a + y_prev)
    v, dv = 0.9, 1.0
    for _ in range(3000):
        v, dv = math.tanh(v * 0.9), (1 - math.tanh(v * 0.9) ** 2) * (dv * 0.9 + v)
    assert abs(float(y.value) - v) < 1e-12
    assert abs(float(a.grad) - dv) < 1e-9 * max(1.0, abs(dv))
    assert len(topological(y)) == 6001


def test_deep_sympy_tree_does_not_recurse():
    x = sp.Symbol("x", real=True)
    e = x
    for k in range(3000):
        e = sp.sin(e, evaluate=False) if k % 2 else sp.tanh(e, evaluate=False)
    g = graph(e, at={"x": 0.5})
    v, d = 0.5, 1.0
    for k in range(3000):
        d *= math.cos(v) if k % 2 else 1 - math.tanh(v) ** 2
        v = math.sin(v) if k % 2 else math.tanh(v)
    assert len(g.nodes) == 3001
    assert abs(float(g.value) - v) < 1e-12 and abs(float(g.grad("x")) - d) < 1e-12


def test_sum_of_5000_terms():
    xs = sp.symbols("x0:5000", real=True)
    g = graph(sp.Add(*[(k + 1) * s for k, s in enumerate(xs)]), at={s.name: 1 for s in xs})
    assert g.value == 5000 * 5001 // 2
    assert [g.grad(f"x{k}") for k in (0, 1, 4999)] == [1, 2, 5000]
    text = " + ".join(f"x{k}" for k in range(500))  # from text: 499 binary adds, 500 levels deep
    g = graph(text, at={f"x{k}": k for k in range(500)})
    assert g.value == 499 * 500 // 2 and g.grad("x0") == 1 and len(g.nodes) == 999


# --------------------------------------------------------------------------- layout, JSON, errors, CLI


def test_layout_places_columns_by_depth_and_keeps_nodes_apart():
    g = graph(NEURON, at=SEED004)
    pic = layout(g)
    where = {n["id"]: (n["x"], n["y"]) for n in pic["nodes"]}
    for edge in pic["edges"]:
        assert where[edge["source"]][0] < where[edge["target"]][0]  # left to right
    columns = {}
    for x, y in where.values():
        columns.setdefault(x, []).append(y)
    assert all(abs(a - b) >= 1.5 - 1e-9 for ys in columns.values() for a in ys for b in ys if a is not b)
    assert pic["out"]["value"] == "0.73" and pic["out"]["grad"] == "1"
    exp_in = next(e for e in pic["edges"] if e["target"] == "n6")
    assert (exp_in["value"], exp_in["grad"]) == ("-1", "-0.20")  # cs231n: -1.00 above, -0.20 below


def test_json_follows_the_interface():
    payload = graph("(a*b + c)*f", at=SEED003).to_json()
    assert payload["value"] == 2.0
    assert payload["inputs"] == {"a": {"value": 2.0, "grad": 6.0, "exact": "6"},
                                 "b": {"value": -3.0, "grad": -4.0, "exact": "-4"},
                                 "c": {"value": 5.0, "grad": -2.0, "exact": "-2"},
                                 "f": {"value": -2.0, "grad": -1.0, "exact": "-1"}}
    ids = [n["id"] for n in payload["nodes"]]
    for node in payload["nodes"]:
        assert {"id", "op", "gate", "value", "grad", "inputs"} <= set(node)
        assert all(ids.index(i) < ids.index(node["id"]) for i in node["inputs"])
    mul = payload["nodes"][2]
    assert (mul["op"], mul["gate"], mul["inputs"], mul["local"], mul["sent"]) == (
        "mul", "switcher", ["a", "b"], [-3.0, 2.0], [6.0, -4.0])


@pytest.mark.parametrize("text, at, message", [
    ("a*b", {"a": 1}, "no value for 'b'"),
    ("a", {"a": 1}, "no operation"),
    ("a*2", {"a": 1, "z": 2}, "'z' not in the expression"),
    ("log(a)", {"a": -1}, "log of -1"),
    ("foo(a)", {"a": 1}, "unknown function 'foo'"),
    ("a/b", {"a": 1, "b": 0}, "division by zero"),
    ("a*b", {"a": 1, "b": True}, "not a boolean"),
    ("sqrt(a)", {"a": 0}, "sqrt has no derivative at 0"),
    ("a**(1/3)", {"a": 0}, "pow has no derivative at 0"),
])
def test_bad_input_names_the_culprit(text, at, message):
    with pytest.raises(SymbpError, match=message):
        graph(text, at=at)


def test_cli_graph_text_and_json(capsys):
    assert main(["graph", "(a*b + c)*f", "--at", "a=2,b=-3,c=5,f=-2"]) == 0
    out = capsys.readouterr().out
    assert "  n1  *(a, b)                  value -6                     grad -2  [switcher]" in out
    assert "  dL/da = 6" in out and "all 4 agree" in out
    assert main(["graph", NEURON, "--at", "w0=2,x0=-1,w1=-3,x1=-2,w2=-3", "--primitives", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert round(payload["inputs"]["x1"]["grad"], 2) == -0.59
    assert all(c["agree"] for c in payload["checks"].values())


@pytest.mark.parametrize("argv, message", [
    (["graph", "a*b", "--at", "a=2"], "no value for 'b'"),
    (["graph", "a*b", "--at", "a=2,b"], "'b' is not name=value"),
    (["graph", "a*b", "--at", "a=2,b=1", "--pdf"], "--pdf is an option of the document: add -o FILE.tex"),
])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@needs_tex
def test_graph_document_compiles_with_the_circuit(tmp_path):
    assert main(["graph", NEURON, "--at", "w0=2,x0=-1,w1=-3,x1=-2,w2=-3", "-o", str(tmp_path / "g.tex"),
                 "--pdf", "--title", "The sigmoid neuron & cs231n"]) == 0
    tex = (tmp_path / "g.tex").read_text()
    assert tex.count(r"\node[gate") == 8 and tex.count(r"\draw[wire]") == 13  # 12 wires and the output
    text = subprocess.run(["pdftotext", str(tmp_path / "g.pdf"), "-"], capture_output=True, text=True).stdout
    assert "The sigmoid neuron & cs231n" in text
    assert "distributor" in text and "switcher" in text and "sign flipper" in text
    assert text.count("agrees") == 5
    assert "0.73" in text and "0.20" in text


def test_graph_document_of_a_large_graph_lists_instead_of_drawing():
    xs = sp.symbols("x0:70", real=True)
    g = graph(sp.Mul(*[1 + s for s in xs]), at={s.name: 1 for s in xs})
    tex = graph_document(g)
    assert r"\begin{tikzpicture}" not in tex and "too many to draw" in tex


def random_expression(rng, depth):
    """A random expression in x, y, z over every gate the parser knows (text, SymPy syntax)."""
    if depth == 0 or rng.random() < 0.2:
        return rng.choice(["x", "y", "z", "x", "y", "z", "2", "1/3"])
    a, b = random_expression(rng, depth - 1), random_expression(rng, depth - 1)
    return rng.choice([
        f"({a} + {b})", f"({a} - {b})", f"({a} * {b})", f"({a} / {b})", f"({a})**2", f"({a})**3", f"-({a})",
        f"exp({a})", f"log({a})", f"sqrt({a})", f"abs({a})", f"tanh({a})", f"sigmoid({a})", f"relu({a})",
        f"softplus({a})", f"max({a}, {b})", f"min({a}, {b}, 1)", f"sin({a})", f"cos({a})", f"2**({a})",
    ])


def test_random_expressions_agree_with_sympy_diff():
    import random

    rng = random.Random(5)
    at = {"x": "3/2", "y": "-2/7", "z": "5/3"}
    checked = 0
    while checked < 80:
        text = random_expression(rng, 4)
        names = [n for n in at if n in text]
        if not names:
            continue
        point = {n: at[n] for n in names}
        try:
            source = graph(text, at=point)
        except SymbpError:  # log of a negative number, division by zero, sqrt at 0: no real gradient
            continue
        try:
            canonical = graph(text, at=point, structure="sympy", granularity="primitives")
        except SymbpError as exc:  # x/x is 1 for SymPy: nothing left to differentiate
            assert "its variables cancel" in str(exc)
            continue
        for g in (source, canonical):
            for name, (ours, truth, ok) in g.check().items():
                assert ok, (text, g.structure, name, ours, truth)
        checked += 1


@needs_tex
def test_long_chain_document_turns_the_page_and_compiles(tmp_path):
    text = "(tanh(w1*tanh(w0*x + b0) + b1) - y)**2"
    g = graph(text, at={"w0": "1/2", "x": 2, "b0": -1, "w1": 3, "b1": "1/2", "y": 1}, granularity="primitives")
    assert g.grad("w1") == 0  # tanh(w0*x + b0) = tanh(0) = 0 multiplies it
    tex = graph_document(g)
    assert r"\rotatebox{90}" in tex and tex.count(r"\node[gate") == sum(1 for n in g.nodes if n.inputs)
    from symbp.latex import compile_pdf

    pdf = compile_pdf(tex, tmp_path / "chain.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert text.count("agrees") == 6


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="TeX is installed by .ci/run")
def test_names_with_underscores_and_greek_letters_are_typeset(tmp_path):
    # the point's names go through SymPy's printer: a_b is a_{b}, alpha is \alpha (raw, a_b_c broke LaTeX)
    assert main(["graph", "a_b_c*alpha", "--at", "a_b_c=1,alpha=2", "-o", str(tmp_path / "g.tex"), "--pdf"]) == 0
    assert r"\alpha = 2" in (tmp_path / "g.tex").read_text()


# --------------------------------------------------------------------------- ties, relu'(0), exact work


ALL_WAYS = [(s, g) for s in ("source", "sympy") for g in ("gates", "primitives")]


@pytest.mark.parametrize("structure, granularity", ALL_WAYS)
def test_relu_derivative_at_zero_is_zero_in_every_granularity(structure, granularity):
    # relu(x*w) + x at x = 0, w = 3: d/dx = w * relu'(0) + 1 = 1, d/dw = x * relu'(0) = 0. Drawn as
    # max(0, u), a tie with the constant 0 passes nothing: 5/2 if the tie were split.
    g = graph("relu(x*w) + x", at={"x": 0, "w": 3}, structure=structure, granularity=granularity)
    assert (g.grad("x"), g.grad("w")) == (1, 0)
    assert g.check() == {"x": (1, 1, True), "w": (0, 0, True)}
    g = graph("relu(x)", at={"x": 0}, structure=structure, granularity=granularity)
    assert g.grad("x") == 0 and g.check()["x"] == (0, 0, True)


TIES = [
    # (expression, point, gradients): the tied variable inputs share the gradient equally; a tied
    # constant wins it all (relu(u) = max(0, u): relu'(0) = 0)
    ("max(a, b)", {"a": 1, "b": 1}, {"a": sp.Rational(1, 2), "b": sp.Rational(1, 2)}),
    ("max(a, b, c)", {"a": 1, "b": 1, "c": 1}, dict.fromkeys("abc", sp.Rational(1, 3))),
    ("min(a, b, c)", {"a": 2, "b": 2, "c": 5}, {"a": sp.Rational(1, 2), "b": sp.Rational(1, 2), "c": 0}),
    ("max(a, b, 1)", {"a": 1, "b": 1}, {"a": 0, "b": 0}),
    ("max(a, b, 1)", {"a": 2, "b": 2}, {"a": sp.Rational(1, 2), "b": sp.Rational(1, 2)}),
    ("min(a, 2)", {"a": 2}, {"a": 0}),
    ("max(max(a, b), c)", {"a": 1, "b": 1, "c": 1}, dict.fromkeys("abc", sp.Rational(1, 3))),
    ("max(a, a, b)", {"a": 1, "b": 1}, {"a": sp.Rational(1, 2), "b": sp.Rational(1, 2)}),
    ("3*max(a*b, c) + max(relu(a), c)", {"a": 0, "b": 2, "c": 0},
     {"a": sp.Rational(3, 1), "b": 0, "c": sp.Rational(3, 2) + sp.Rational(1, 2)}),
]


@pytest.mark.parametrize("structure, granularity", ALL_WAYS)
@pytest.mark.parametrize("text, at, grads", TIES)
def test_ties_follow_one_rule_in_the_gate_and_in_the_check(text, at, grads, structure, granularity):
    g = graph(text, at=at, structure=structure, granularity=granularity)
    assert {n: g.grad(n) for n in at} == grads
    assert {n: ok for n, (_, _, ok) in g.check().items()} == {n: True for n in at}


def test_cli_ties_agree_with_the_check(capsys):
    assert main(["graph", "max(a,b,c)", "--at", "a=1,b=1,c=1"]) == 0
    out = capsys.readouterr().out
    assert "  dL/da = 1/3" in out and "all 3 agree" in out
    assert main(["graph", "max(a, b, 1)", "--at", "a=1,b=1", "--primitives"]) == 0
    assert "  dL/da = 0" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["graph", "a**b", "--at", "a=10,b=100000"], "x^y of 10, 100000 is about 10^100000"),
    (["graph", "exp(exp(a))", "--at", "a=1e300"], "exp of 10^300 is about 10^(4.3e+299)"),
    (["graph", "exp(exp(a))", "--at", "a=1e400"], "1e400: a number's exponent must be within +-300"),
    (["graph", "sin(a)", "--at", "a=1e100000"], "1e100000: a number's exponent must be within +-300"),
    (["graph", "a**a**a**a", "--at", "a=3"], "x^y of 3, 7625597484987 is about 10^(3.6e+12)"),
    (["graph", "(-2)**a", "--at", "a=1/2"], "(-2)^x of 1/2 is sqrt(2)*I, not a real number"),
    (["graph", "a**b", "--at", "a=-2,b=3"], "x^y of -2, 3 has no real derivative: d/dy is -8*log(2) - 8*I*pi"),
    (["graph", "max(log(-1), a)", "--at", "a=1"], "log(-1) is I*pi, not a real number"),
    (["graph", "a*sqrt(-1)", "--at", "a=1"], "sqrt(-1) is I, not a real number"),
])
def test_cli_values_that_explode_or_are_not_real_are_one_line(capsys, argv, message):
    import time

    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_exact_values_that_would_explode_fall_back_to_floats_and_say_so(capsys):
    import time

    start = time.monotonic()
    assert main(["graph", "tanh(-a)", "--at", "a=1e10", "--primitives"]) == 0
    assert time.monotonic() - start < 5
    out = capsys.readouterr().out
    assert ("note: exp of -20000000000 is about 10^(-8.7e+09), beyond the exact range 10^-3000..10^3000: "
            "computed in floating point instead") in out
    assert "  dL/da = -3.44369e-8685889638" in out and "all 1 agree" in out  # -4 exp(-2a), not 0
    g = graph("tanh(-a)", at={"a": "1e10"}, granularity="primitives")
    assert not g.exact and g.fallback.startswith("exp of -20000000000 is about") and float(g.value) == -1.0
    assert g.to_json()["fallback"] == g.fallback
    g = graph("tanh(-a)", at={"a": "1e10"})  # one gate: its local gradient 1 - tanh^2 is the tiny one
    assert g.fallback.startswith("the local gradient of tanh of -10000000000 is about 10^(-8.7e+09)")
    g = graph("tanh(-a)", at={"a": "1e3"}, granularity="primitives")  # exp(-2000) ~ 10^-869: exact
    assert g.fallback is None and g.exact and g.check()["a"][2]
    assert graph("exp(a)", at={"a": 1000}).fallback is None  # 10^434: exact, though no float holds it


def test_floats_past_the_float_range_are_refused():
    with pytest.raises(SymbpError, match=r"^exp of 1000 is about 10\^434: beyond floating point \(10\^308\)$"):
        graph("exp(a)", at={"a": 1000.0})
    assert graph("exp(-a)", at={"a": 1000.0}).value < 1e-300  # underflow is fine


def test_cli_expression_starting_with_a_minus(capsys, tmp_path):
    assert main(["graph", "-a*b", "--at", "a=1,b=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-a*b = -2") and "  dL/da = -2" in out and "  dL/db = -1" in out
    assert main(["graph", "--at", "a=1,b=2", "-(a+b)", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"]["a"]["grad"] == -1.0
    out_file = tmp_path / "g.tex"  # -o stays the option, and -o*a (o times a) is the expression
    assert main(["graph", "-o", str(out_file), "-o*a", "--at", "o=3,a=2"]) == 0
    assert "  dL/do = -2" in capsys.readouterr().out and out_file.exists()
    assert main(["graph", "-a", "--at", "a=1"]) == 0  # one neg gate
    assert "  dL/da = -1" in capsys.readouterr().out


def test_identical_subexpressions_are_one_node_in_source_structure():
    g = graph("(a*b) + (a*b)", at={"a": 2, "b": 3})
    assert [n.op for n in g.nodes] == ["input", "input", "mul", "add"]
    mul = g.nodes[2]
    assert mul.grad == 2 and g.grad("a") == 6 and g.grad("b") == 4  # the mul node collects 1 + 1
    assert g.nodes[-1].inputs == (mul, mul)
    g = graph("exp(a*b) * exp(a*b) + b*a", at={"a": 0, "b": 1})
    assert [n.op for n in g.nodes if n.inputs] == ["mul", "exp", "mul", "mul", "add"]  # b*a is not a*b


def test_values_past_the_doubles_are_written_as_decimals_not_inf():
    g = graph("exp(a)", at={"a": 1000})  # exact, about 1.97e+434
    assert "value 1.97007e+434 (exp(1000))" in g.report()
    tex = graph_document(g)
    assert r"\approx 1.97e+434" in tex and "inf" not in tex
    g = graph("tanh(-a)", at={"a": "1e10"}, granularity="primitives")
    assert r"the inputs are exact, but exp of -20000000000 is about 10\textasciicircum{}(-8.7e+09)" in graph_document(g)


# --------------------------------------------------------------------------- programs, the written form, the circuit


def test_seed003_as_a_program_has_one_node_per_assigned_name():
    g = graph("e = a*b; d = e + c; L = f*d", at={"a": 2, "b": -3, "c": 5, "f": -2})
    gates = [(n.id, n.op, [i.id for i in n.inputs], n.value, n.grad) for n in g.nodes if n.inputs]
    assert gates == [("e", "mul", ["a", "b"], -6, -2), ("d", "add", ["e", "c"], -1, -2), ("L", "mul", ["f", "d"], 2, 1)]
    assert [g.grad(n) for n in "abcf"] == [6, -4, -2, -1]
    assert all(ok for _, _, ok in g.check().values())
    assert written(g) == [("e", "a b"), ("d", "e + c"), ("L", "f d")]


@pytest.mark.parametrize("text, at, message", [
    ("e = a*b; e = e + c", "abc", "'e' is assigned twice"),
    ("d = e + c; e = a*b", "abc", "'e' is used before it is assigned"),
    ("e = a; L = e*b", "ab", "e = a computes no new node"),
    ("e = a*b; L + e", "ab", "'L + e' is not an assignment"),
    ("e = a*b; L = e + c", "abce", "'e' is assigned, so it takes no value"),
])
def test_bad_programs_are_one_line(text, at, message):
    import re

    with pytest.raises(SymbpError, match=re.escape(message)):
        graph(text, at={name: 1 for name in at})


def test_a_plus_a_is_shown_as_written():
    g = graph("a + a", at={"a": 2})
    assert written(g) == [("L", "a + a")] and g.grad("a") == 2
    tex = graph_document(g)
    assert "\\[ L = a + a \\]\n(SymPy writes it $L = 2 a$.)" in tex


def test_division_is_a_scaler():
    g = graph("x/y", at={"x": 3, "y": 2})
    assert [n.gate for n in g.nodes if n.inputs] == ["scaler"]


def test_labels_sit_on_white_stubs_drawn_after_every_wire():
    g = graph("e = a*b; d = e + c; L = f*d", at={"a": 2, "b": -3, "c": 5, "f": -2})
    tex = graph_document(g)
    body = tex[tex.index(r"\begin{tikzpicture}"):tex.index(r"\end{tikzpicture}")]
    last_wire = body.rindex(r"\draw[wire]")
    labels = [k for k in range(len(body)) if body.startswith(r"\node[val]", k) or body.startswith(r"\node[grd]", k)]
    assert len(labels) == 2 * (6 + 1) and min(labels) > last_wire  # 6 gate inputs and the output
    assert "lab/.style={fill=white" in body
    picture = layout(g)
    for e in picture["edges"]:  # the stub is horizontal: the labels' y is the stub's y
        stub_y = e["stub"].split(",")[1]
        assert e["stub_end"].split(",")[1] == stub_y and e["label_at"].split(",")[1] == stub_y
    for name in ("e", "d", "L"):
        assert f"label={{[gname]above:${name}$}}" in body
    assert r"\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\usebox0}" in tex


def test_blank_circuit_gives_the_inputs_and_boxes_the_rest(tmp_path):
    out = tmp_path / "g.tex"
    assert main(["graph", "e = a*b; d = e + c; L = f*d", "--at", "a=2,b=-3,c=5,f=-2", "-o", str(out), "--blank"]) == 0
    sheet, solution = out.read_text(), (tmp_path / "g-solution.tex").read_text()
    body = sheet[sheet.index(r"\begin{tikzpicture}"):sheet.index(r"\end{tikzpicture}")]
    # 6 gate inputs: 4 carry an input's value (given), 2 a gate's (boxed); 6 gradients boxed; the output's value boxed
    assert body.count(r"\blankcell") == 2 + 6 + 1
    assert [v for v in ("$2$", "$-3$", "$5$", "$-2$") if v in body] == ["$2$", "$-3$", "$5$", "$-2$"]
    assert "$-6$" not in body and "$6$" not in body and "Every node" not in sheet
    assert "Every node" in solution and r"\blankcell" not in solution.split(r"\begin{document}")[1]


def test_a_fan_out_wire_to_a_later_column_runs_around_the_gates_and_labels_it_passes():
    g = graph("(a*b + c)*a + tanh(b)", at={"a": 2, "b": -3, "c": 1})
    pic = layout(g)
    nodes = {n["id"]: n for n in pic["nodes"]}
    long = [e for e in pic["edges"] if nodes[e["target"]]["x"] - nodes[e["source"]]["x"] > 3.2 + 1e-9]
    assert [(e["source"], e["target"]) for e in long] == [("a", "n3"), ("n4", "n5")]
    assert long[1]["via"] == [] and nodes["n4"]["y"] < min(n["y"] for n in pic["nodes"] if n["id"] in ("n2", "n3"))
    long = long[:1]  # tanh's wire runs below everything it passes already; a's would cross n1, n2 and c
    (x1, y1), (x2, y2) = [tuple(float(v) for v in p.strip("()").split(",")) for p in long[0]["via"]]
    assert y1 == y2 and nodes["a"]["x"] < x1 < x2 < nodes["n3"]["x"]
    passed = [n for n in pic["nodes"] if nodes["a"]["x"] < n["x"] < nodes["n3"]["x"]]
    assert {n["id"] for n in passed} == {"n1", "n2", "n4", "c"}
    # the run is clear of every gate (with its name) and every stub label in the columns it passes
    clear = [abs(y1 - n["y"]) > 0.45 + 0.45 for n in passed]
    stubs = [abs(y1 - float(e["label_at"].strip("()").split(",")[1])) > 0.45 for e in pic["edges"]
             if e["target"] in {n["id"] for n in passed}]
    assert all(clear) and all(stubs)
    assert [e["target"] for e in pic["edges"] if e["via"]] == ["n3"]
    tex = graph_document(g)
    assert f"to[out=0, in=180] {long[0]['via'][0]} -- {long[0]['via'][1]} to[out=0, in=180]" in tex
    assert r"$\Sigma\,{-11}$" in tex  # a unary minus, not "Sigma - 11"
