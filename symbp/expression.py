"""A whitelist parser for scalar expressions in SymPy syntax.

How it works: the text is parsed by Python's ``ast`` into a syntax tree, which is then walked node by
node; only numbers, the names the caller allows, ``+ - * / **``, unary minus and calls of the functions
in :data:`FUNCTIONS` are accepted, and each is turned into the SymPy object directly. Nothing is ever
``eval``-ed or ``sympify``-ed, so ``__import__('os')`` is just an unknown name. Number literals become
exact rationals (``0.1`` is ``1/10``), so an example computed from them stays exact.

Used for user-defined activations (an expression in ``x``) and for ``symbp graph``; its helpers
(:func:`read_tree`, :func:`literal`, the limits) are shared with the claim parser, :mod:`symbp.formula`.

Limits, so that no input keeps SymPy busy for hours: the text is ASCII only (:mod:`symbp.characters`);
a number literal has at most :data:`MAX_DIGITS` digits and a decimal exponent within
+-:data:`MAX_DECIMAL_EXPONENT`; a constant exponent of ``**`` is at most :data:`MAX_POWER` in absolute
value and rational; a constant computed from numbers has at most :data:`MAX_DIGITS` digits and is
finite (``log(0)`` is refused).
"""

from __future__ import annotations

import ast
import re
import warnings
from fractions import Fraction
from typing import Mapping

import sympy as sp

from . import functions as F
from .characters import describe, first_non_ascii, one_line
from .errors import SymbpError, closest

FUNCTIONS = {
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "abs": sp.Abs,
    "Abs": sp.Abs,
    "sin": sp.sin,
    "cos": sp.cos,
    "tanh": sp.tanh,
    "cosh": sp.cosh,
    "erf": sp.erf,
    "sigmoid": F.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "relu": F.relu,
    "softplus": F.softplus,
    "max": sp.Max,
    "Max": sp.Max,
    "min": sp.Min,
    "Min": sp.Min,
}

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}

_MAX_LENGTH = 10_000
#: A number literal's decimal exponent is within +-MAX_DECIMAL_EXPONENT (1e-300 and 1e300 are fine).
MAX_DECIMAL_EXPONENT = 300
#: A constant exponent of ``**`` is at most this in absolute value (``a3**50`` would stall SymPy).
MAX_POWER = 16
#: A constant computed from numbers (``10**16 * 1e300``) has at most this many digits (num. and denom.).
MAX_DIGITS = 1000
_MAX_BITS = int(MAX_DIGITS * 3.3219280948873626) + 1
_DECIMAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")  # whole, fraction, exponent


def literal(segment: str, value) -> Fraction:
    """The exact value of a number literal (``segment``: its source text, ``value``: what ``ast`` read).

    Decimal text is read exactly (``0.1`` is ``1/10``), with at most :data:`MAX_DIGITS` digits and a
    decimal exponent within +-:data:`MAX_DECIMAL_EXPONENT`, checked before any big number is built.

    >>> literal("0.1", 0.1), literal("1e-5", 1e-5), literal("0x10", 16)
    (Fraction(1, 10), Fraction(1, 100000), Fraction(16, 1))
    >>> literal("1e-999999999", 0.0)
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: 1e-999999999: a number's exponent must be within +-300
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SymbpError(f"unsupported constant {value!r}")
    if isinstance(value, int):
        if value.bit_length() > _MAX_BITS or abs(value) >= 10 ** (MAX_DECIMAL_EXPONENT + 1):
            raise SymbpError(f"{shorten(segment)}: a number's exponent must be within +-{MAX_DECIMAL_EXPONENT}")
        return Fraction(value)
    match = _DECIMAL.fullmatch((segment or repr(value)).replace("_", ""))
    if not match:  # pragma: no cover - ast reads only decimal text as a float
        raise SymbpError(f"{shorten(segment)}: not a decimal number")
    whole, fraction, exponent = match.group(1), match.group(2) or "", match.group(3) or "0"
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return Fraction(0)
    if len(digits) > MAX_DIGITS:
        raise SymbpError(f"{shorten(segment)}: a number has at most {MAX_DIGITS} digits")
    too_far = len(exponent.lstrip("+-").lstrip("0")) > 6  # read the exponent only when it is short
    scale = 0 if too_far else int(exponent) - len(fraction)  # value = int(digits) * 10**scale
    if too_far or abs(scale + len(digits) - 1) > MAX_DECIMAL_EXPONENT:
        raise SymbpError(f"{shorten(segment)}: a number's exponent must be within +-{MAX_DECIMAL_EXPONENT}")
    mantissa = int(digits)
    return Fraction(mantissa * 10**scale) if scale >= 0 else Fraction(mantissa, 10**-scale)


def too_big(value: Fraction) -> bool:
    """True when a computed constant has more than :data:`MAX_DIGITS` digits above or below the line."""
    return value.numerator.bit_length() > _MAX_BITS or value.denominator.bit_length() > _MAX_BITS


def power_too_big(base: Fraction, exponent) -> bool:
    """True when ``base ** exponent`` would have more than :data:`MAX_DIGITS` digits (checked first)."""
    return max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(exponent) > _MAX_BITS


def line_starts(source: str) -> list[int]:
    """The offset in ``source`` at which each line starts, as ``ast`` counts lines (\\n, \\r\\n, \\r)."""
    return [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", source)]


def column_of(starts: list[int], node) -> int:
    """The 1-based column of ``node`` in the whole text (``ast`` counts per line; the text is ASCII)."""
    line = getattr(node, "lineno", 1)
    return starts[line - 1] + getattr(node, "col_offset", 0) + 1 if 0 < line <= len(starts) else 1


def exponent_too_large(segment: str) -> str:
    """The one-line message for a constant exponent beyond :data:`MAX_POWER`."""
    return f"exponent {shorten(segment)} is too large: the exponent of ** must be at most {MAX_POWER} in absolute value"


def shorten(segment: str) -> str:
    """``segment``, or its two ends when it is longer than 30 characters (for one-line messages)."""
    segment = segment or "number"
    return segment if len(segment) <= 30 else f"{segment[:12]}...{segment[-8:]} ({len(segment)} characters)"


def read_tree(text: str, what: str, error=None) -> tuple[str, ast.Expression]:
    """``(source, tree)``: ``text`` without surrounding ASCII blanks, and its ``ast`` (``mode="eval"``).

    Every failure is one line: a non-ASCII character (named, with its column and the ASCII it looks
    like), a syntax error (with its column), input ``ast`` cannot take. ``error(message, column,
    token)`` builds the exception (default: :class:`SymbpError`).

    >>> read_tree("  a*b ", "expression")[0]
    'a*b'
    """
    error = error or (lambda message, column, token: SymbpError(message))
    source = text.strip(ASCII_BLANKS)
    found = first_non_ascii(source)
    if found:
        column, ch = found
        raise error(f"{what} {text!r}: {describe(ch, column)}", column, ch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "invalid decimal literal" for 1if: a syntax error anyway
            return source, ast.parse(source, mode="eval")
    except SyntaxError as exc:
        column = exc.offset if exc.offset and 0 < exc.offset <= len(source) else len(source) + 1
        raise error(f"{what} {text!r}, column {column}: syntax error", column, "") from None
    except (ValueError, MemoryError, RecursionError, OverflowError):
        raise error(f"{what} {text!r}: cannot be parsed", 0, "") from None


#: What ``str.strip`` removes around a text: ASCII blanks only (a non-ASCII space is reported).
ASCII_BLANKS = " \t\n\r\f\v"


def parse_scalar(text: str, names: Mapping[str, sp.Expr], *, what: str = "expression") -> sp.Expr:
    """Parse ``text`` into a SymPy expression whose only free names are those in ``names``.

    >>> x = sp.Symbol("x", real=True)
    >>> parse_scalar("x*sigmoid(x) + 0.5", {"x": x})
    x*sigmoid(x) + 1/2
    >>> parse_scalar("__import__('os')", {"x": x})
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: expression "__import__('os')", column 1: unknown function '__import__' (known: Abs, Max, Min, abs, cos, cosh, elu, erf, exp, gelu, log, max, min, relu, sigmoid, silu, sin, softplus, sqrt, tanh)
    """
    if not isinstance(text, str) or not text.strip(ASCII_BLANKS):
        raise SymbpError(f"{what}: expected a non-empty string, got {text!r}")
    if len(text) > _MAX_LENGTH:
        raise SymbpError(f"{what}: longer than {_MAX_LENGTH} characters")
    source, tree = read_tree(text, what)
    try:
        return _Walker(source, text, names, what, _variable_nodes(tree)).visit(tree.body)
    except RecursionError:
        raise SymbpError(f"{what} {text!r}: nested too deeply") from None


def _variable_nodes(tree) -> set:
    """The ids of the ``ast`` nodes with a variable name below them (the others are constants)."""
    parent = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[id(child)] = node
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    marked = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in calls:
            while node is not None and id(node) not in marked:
                marked.add(id(node))
                node = parent.get(id(node))
    return marked


class _Walker:
    def __init__(self, source, text, names, what, variable_nodes):
        self.source, self.text, self.names, self.what = source, text, names, what
        self.variable_nodes, self.starts = variable_nodes, line_starts(source)

    def fail(self, node, message):
        column = column_of(self.starts, node)
        raise SymbpError(one_line(f"{self.what} {self.text!r}, column {column}: {message}"))

    def segment(self, node):
        return ast.get_source_segment(self.source, node) or ""

    def visit(self, node):
        if isinstance(node, ast.Constant):
            try:
                value = literal(self.segment(node), node.value)
            except SymbpError as exc:
                self.fail(node, str(exc))
            return sp.Rational(value.numerator, value.denominator)
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            self.fail(node, f"unknown name '{node.id}'" + closest(node.id, self.names))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Pow):
                self.check_power(node, left, right)
            if isinstance(node.op, ast.Div) and right.is_zero:
                self.fail(node, "division by zero")
            return self.checked(node, _BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.visit(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Call):
            return self.checked(node, self.call(node))
        self.fail(node, f"'{self.segment(node) or type(node).__name__}' is not allowed "
                  "(only numbers, names, + - * / **, and function calls)")

    def check_power(self, node, base, exponent):
        """A constant exponent is a rational within +-MAX_POWER; 0 ** negative is a division by zero."""
        if id(node.right) in self.variable_nodes:
            return
        if not exponent.is_Rational:
            self.fail(node.right, f"the exponent of ** must be a rational number or contain a variable, got {exponent}")
        if abs(exponent) > MAX_POWER:
            self.fail(node.right, exponent_too_large(self.segment(node.right)))
        if base.is_zero and exponent < 0:
            self.fail(node, "division by zero")
        if base.is_Rational and power_too_big(Fraction(int(base.p), int(base.q)), exponent):
            self.fail(node, f"the constant {self.segment(node)} has more than {MAX_DIGITS} digits")

    def checked(self, node, value):
        """``value``, unless it is a constant that is not finite or has too many digits."""
        if id(node) in self.variable_nodes:
            return value
        if value.is_Rational:
            if too_big(Fraction(int(value.p), int(value.q))):
                self.fail(node, f"the constant {self.segment(node)} has more than {MAX_DIGITS} digits")
        elif value.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
            self.fail(node, f"{self.segment(node)} is not a finite number ({value})")
        return value

    def call(self, node):
        if not isinstance(node.func, ast.Name):
            self.fail(node, "only plain function names can be called")
        name = node.func.id
        if name not in FUNCTIONS:
            self.fail(node, f"unknown function '{name}'" + (closest(name, FUNCTIONS)
                      or f" (known: {', '.join(sorted(FUNCTIONS))})"))
        if node.keywords:
            self.fail(node, f"{name}() takes no keyword arguments")
        args = [self.visit(arg) for arg in node.args]
        one_arg = name not in ("max", "Max", "min", "Min")
        if (one_arg and len(args) != 1) or (not one_arg and len(args) < 2):
            self.fail(node, f"{name}() takes {'one argument' if one_arg else 'two or more arguments'}, got {len(args)}")
        return FUNCTIONS[name](*args)
