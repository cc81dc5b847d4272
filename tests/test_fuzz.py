"""Property-based fuzzing of every text parser: each input yields a parse or one SymbpError line, fast.

The parsers (claims: :func:`symbp.formula.parse`; scalar expressions: :func:`symbp.expression.
parse_scalar`, behind ``symbp graph`` and custom activations; ``--at`` points; sizes) are fed random
character soup and grammar-shaped strings built from the languages' own names, functions,
operators, keywords and numbers (including the extreme ones). Any other exception, or a parse that
takes more than a few seconds, is a bug. Seeds are fixed (``derandomize=True``) so CI runs the same
examples every time; the whole file runs in well under 20 s.
"""

import contextlib
import signal

import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symbp
from symbp.cli import parse_sizes
from symbp.errors import SymbpError
from symbp.expression import FUNCTIONS as SCALAR_FUNCTIONS
from symbp.expression import parse_scalar
from symbp.formula import FUNCTIONS, FormulaError, Node, known_shapes, parse
from symbp.graph import number, parse_point

NET = symbp.MLP([4, 5, 3, 3])
BATCH = symbp.MLP([4, 5, 3, 3], batch=8)
SECONDS = 5  # far more than any parse needs; a parse that hangs is stopped and reported

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds=SECONDS):
    def stop(signum, frame):
        raise Hang(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


NUMBERS = ["0", "1", "2", "3", "0.5", ".5", "3.", "1e-5", "1e300", "1e-300", "1e301", "1e-301", "1e999999999",
           "1e-999999999", "0e999999999", "0.0e-99999", "1_000", "0x1F", "0b101", "0o7", "1j", "2.5e-3",
           "123456789012345678901234567890", "9" * 400, "1" * 5000]
OPERATORS = ["+", "-", "*", "/", "**", "@", "%", "//", "==", "<", " and ", " or ", " if ", " else ", "&", "|"]
UNARY = ["-", "+", "~", "not ", "--", "-+"]
KEYWORDS = ["axis=0", "axis=1", "axis=2", "axis=-1", "axis=1.0", "axis=N", "axis=a3", "keepdims=1", "**{}",
            "*a3", "axis=", "=1"]
SOUP = ["(", ")", "[", "]", ",", ".", ".T", ".shape", "=", ":", "'", '"', " ", "lambda", "__import__", "'os'",
        "#", "\\", "\n", "\t", "\x00", "ａ", "𝑎", "３", "٣", "\u2212", "\u00a0", "é", "λ", "∑"]


def expressions(names, functions):
    """Grammar-shaped strings: names, numbers, operators, calls (with keywords), attributes, nesting."""
    atoms = st.one_of(st.sampled_from(names), st.sampled_from(NUMBERS),
                      st.integers(-10**6, 10**6).map(str),
                      st.floats(allow_nan=False, allow_infinity=False).map(repr))

    def extend(inner):
        args = st.lists(st.one_of(inner, st.sampled_from(KEYWORDS)), max_size=3).map(", ".join)
        return st.one_of(
            st.tuples(inner, st.sampled_from(OPERATORS), inner).map("".join),
            st.tuples(st.sampled_from(UNARY), inner).map("".join),
            st.tuples(st.sampled_from(functions), args).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(inner, st.sampled_from([".T", ".shape", "[0]", ".T.T", "()"])).map("".join),
            inner.map(lambda s: f"({s})"),
        )

    return st.recursive(atoms, extend, max_leaves=12)


def mutated(strategy):
    """A string from ``strategy`` with a token of soup inserted at some position."""
    return st.tuples(strategy, st.sampled_from(SOUP), st.integers(0, 200)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])


def token_soup(tokens):
    return st.lists(st.sampled_from(tokens), max_size=20).map("".join)


CLAIM_NAMES = sorted(known_shapes(BATCH)) + sorted(BATCH.size_names()) + ["pi", "q", "W9", "dz9", "n9", "stp", "os"]
CLAIM_FUNCTIONS = list(FUNCTIONS) + ["stp", "max", "__import__", "print", "std"]
SCALAR_NAMES = ["a", "b", "c", "x", "z1", "os"]
SCALAR_FUNCTIONS_ = list(SCALAR_FUNCTIONS) + ["step", "__import__", "print", "softmax", "sum"]
CLAIM_TOKENS = CLAIM_NAMES + CLAIM_FUNCTIONS + NUMBERS + OPERATORS + UNARY + KEYWORDS + SOUP
SCALAR_TOKENS = SCALAR_NAMES + SCALAR_FUNCTIONS_ + NUMBERS + OPERATORS + UNARY + KEYWORDS + SOUP

CLAIMS = st.one_of(st.text(max_size=40), token_soup(CLAIM_TOKENS), expressions(CLAIM_NAMES, CLAIM_FUNCTIONS),
                   mutated(expressions(CLAIM_NAMES, CLAIM_FUNCTIONS)))
SCALARS = st.one_of(st.text(max_size=40), token_soup(SCALAR_TOKENS), expressions(SCALAR_NAMES, SCALAR_FUNCTIONS_),
                    mutated(expressions(SCALAR_NAMES, SCALAR_FUNCTIONS_)))


def one_line_error(exc):
    message = str(exc)
    assert message and "\n" not in message, message


@pytest.mark.parametrize("net", [NET, BATCH], ids=["single", "batch"])
@FUZZ
@given(text=CLAIMS)
def test_claims_parse_or_raise_one_formula_error(net, text):
    try:
        with time_limit():
            node = parse(text, net)
    except FormulaError as exc:
        one_line_error(exc)
        assert exc.column >= 0
        return
    assert isinstance(node, Node)
    assert len(node.shape) == 2 and min(node.shape) >= 1
    assert node.names() <= set(known_shapes(net))
    assert {n.value[0] for n in node.walk() if n.op == "size"} <= set(net.size_names())


@FUZZ
@given(text=SCALARS)
def test_scalar_expressions_parse_or_raise_one_error(text):
    symbols = {n: sp.Symbol(n, real=True) for n in ("a", "b", "c", "x")}
    try:
        with time_limit():
            expr = parse_scalar(text, symbols)
    except SymbpError as exc:
        one_line_error(exc)
        return
    assert isinstance(expr, sp.Basic)
    assert {s.name for s in expr.free_symbols} <= set(symbols)


POINT_TOKENS = ["a", "b", "x1", "=", ",", "2", "-3", "1/2", "0.5", "1e-999999999", "1e999", " ", "ａ", "３", "٣",
                "\u2212", "==", "a=", "=2", "exp(1)", "__import__('os')", "(", ")"]


@FUZZ
@given(text=st.one_of(st.text(max_size=30), token_soup(POINT_TOKENS)))
def test_points_parse_or_raise_one_error(text):
    try:
        with time_limit():
            point = parse_point(text)
            values = {name: number(value) for name, value in point.items()}
    except SymbpError as exc:
        one_line_error(exc)
        return
    assert all(name.isascii() and name.isidentifier() for name in point)
    assert all(v.is_number for v in values.values())


SIZE_TOKENS = ["1", "2", "3", "10", ",", " ", "[", "]", "-1", "0", "٣", "３", "1_0", "+2", "x", "1.5", "\u00a0"]


@FUZZ
@given(text=st.one_of(st.text(max_size=20), token_soup(SIZE_TOKENS)))
def test_sizes_parse_or_raise_one_error(text):
    try:
        sizes = parse_sizes(text)
    except SymbpError as exc:
        one_line_error(exc)
        return
    assert all(isinstance(n, int) for n in sizes)
    assert text.isascii()
