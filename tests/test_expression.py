"""The whitelist parser for scalar expressions: what it accepts and what it refuses."""

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from symbp import functions as F
from symbp.errors import SymbpError
from symbp.expression import parse_scalar

a, b = sp.symbols("a b", real=True)
NAMES = {"a": a, "b": b}


@pytest.mark.parametrize("text, expected", [
    ("a*b + 2", a * b + 2),
    ("-a**2 / b", -a**2 / b),
    ("0.1*a", a / 10),  # literals are exact
    ("max(a, b, 0)", sp.Max(a, b, 0)),
    ("sigmoid(a) + relu(b)", F.sigmoid(a) + F.relu(b)),
    ("exp(log(a))", a),
])
def test_accepts(text, expected):
    assert parse_scalar(text, NAMES) == expected


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('x')", "column 1: only plain function names can be called"),
    ("__import__('os')", "column 1: unknown function '__import__'"),
    ("a ** 10**6", "exponent 1000000 is too large"),
    ("a.real", "column 1: 'a.real' is not allowed"),
    ("c + a", "column 1: unknown name 'c'"),
    ("a + bb", "column 5: unknown name 'bb' (did you mean 'b'?)"),
    ("a +", "syntax error"),
    ("lambda: 1", "is not allowed"),
    ("exp(a, b)", "exp() takes one argument, got 2"),
    ("'text'", "unsupported constant 'text'"),
    ("[a][0]", "is not allowed"),
    ("", "expected a non-empty string"),
])
def test_refuses_with_culprit(text, message):
    with pytest.raises(SymbpError) as info:
        parse_scalar(text, NAMES)
    assert message in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab()+-*/.,_ 0123456789eximnoprtsgl'[]=:", max_size=40))
def test_parser_returns_a_parse_or_its_own_error(text):
    try:
        result = parse_scalar(text, NAMES)
    except SymbpError:
        return
    assert isinstance(result, sp.Basic)
