"""The whitelist parser for scalar expressions: what it accepts and what it refuses."""

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import symbp
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
    ("a ** 10**6", "column 6: exponent 10**6 is too large: the exponent of ** must be at most 16 in absolute value"),
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


@pytest.mark.parametrize("text, message", [
    ("a*1e999999999", "column 3: 1e999999999: a number's exponent must be within +-300"),
    ("a*1e-999999999", "column 3: 1e-999999999: a number's exponent must be within +-300"),
    ("1e301*a", "column 1: 1e301: a number's exponent must be within +-300"),
    ("a**17", "column 4: exponent 17 is too large: the exponent of ** must be at most 16 in absolute value"),
    ("a**-17", "column 4: exponent -17 is too large"),
    ("a**(2**5)", "column 5: exponent 2**5 is too large"),
    ("((10**16)**16)**16*a", "column 1: the constant ((10**16)**16)**16 has more than 1000 digits"),
    ("1e300**4*a", "column 1: the constant 1e300**4 has more than 1000 digits"),
    ("a**sqrt(2)", "column 4: the exponent of ** must be a rational number or contain a variable, got sqrt(2)"),
    ("0**-1 + a", "column 1: division by zero"),
    ("a + log(0)", "column 5: log(0) is not a finite number (zoo)"),
    ("ａ*b", "'ａ' (U+FF41 FULLWIDTH LATIN SMALL LETTER A) at column 1 is not ASCII; write 'a'"),
    ("a*𝑏", "'𝑏' (U+1D44F MATHEMATICAL ITALIC SMALL B) at column 3 is not ASCII; write 'b'"),
    ("a − b", "'−' (U+2212 MINUS SIGN) at column 3 is not ASCII; write '-'"),
    ("(a +\n c)", "column 7: unknown name 'c'"),
])
def test_caps_and_the_ascii_rule(text, message):
    with pytest.raises(SymbpError) as info:
        parse_scalar(text, NAMES)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("a*1e300", a * 10**300),  # the caps, inclusive
    ("a*1e-300", a / 10**300),
    ("a**16 + a**-16", a**16 + a**-16),
    ("a**0.5", sp.sqrt(a)),
    ("a**(-1/2)", 1 / sp.sqrt(a)),
    ("a**b", a**b),  # an exponent with a variable is not a constant: no cap
    ("2**16*a", 65536 * a),
    ("0e999999999 + a", a),
])
def test_within_the_caps(text, expected):
    assert parse_scalar(text, NAMES) == expected


def test_custom_activations_follow_the_ascii_rule():
    with pytest.raises(SymbpError, match=r"'ｘ' \(U\+FF58 FULLWIDTH LATIN SMALL LETTER X\) at column 1 is not ASCII; "
                       r"write 'x'"):
        symbp.MLP([2, 2, 2], hidden="ｘ*sigmoid(x)")
    with pytest.raises(SymbpError, match="the exponent of \\*\\* must be at most 16"):
        symbp.MLP([2, 2, 2], hidden="x**50")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab()+-*/.,_ 0123456789eximnoprtsgl'[]=:", max_size=40))
def test_parser_returns_a_parse_or_its_own_error(text):
    try:
        result = parse_scalar(text, NAMES)
    except SymbpError:
        return
    assert isinstance(result, sp.Basic)
