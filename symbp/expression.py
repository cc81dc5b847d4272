"""A whitelist parser for scalar expressions in SymPy syntax.

How it works: the text is parsed by Python's ``ast`` into a syntax tree, which is then walked node by
node; only numbers, the names the caller allows, ``+ - * / **``, unary minus and calls of the functions
in :data:`FUNCTIONS` are accepted, and each is turned into the SymPy object directly. Nothing is ever
``eval``-ed or ``sympify``-ed, so ``__import__('os')`` is just an unknown name. Number literals become
exact rationals (``0.1`` is ``1/10``), so an example computed from them stays exact.

Used for user-defined activations (an expression in ``x``) and for ``symbp graph``.
"""

from __future__ import annotations

import ast
from typing import Mapping

import sympy as sp

from . import functions as F
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
    "sigmoid": F.sigmoid,
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
_MAX_EXPONENT = 100


def parse_scalar(text: str, names: Mapping[str, sp.Expr], *, what: str = "expression") -> sp.Expr:
    """Parse ``text`` into a SymPy expression whose only free names are those in ``names``.

    >>> x = sp.Symbol("x", real=True)
    >>> parse_scalar("x*sigmoid(x) + 0.5", {"x": x})
    x*sigmoid(x) + 1/2
    >>> parse_scalar("__import__('os')", {"x": x})
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: expression "__import__('os')", column 1: unknown function '__import__' (known: Abs, Max, Min, abs, cos, exp, log, max, min, relu, sigmoid, sin, softplus, sqrt, tanh)
    """
    if not isinstance(text, str) or not text.strip():
        raise SymbpError(f"{what}: expected a non-empty string, got {text!r}")
    if len(text) > _MAX_LENGTH:
        raise SymbpError(f"{what}: longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        column = exc.offset or 0
        raise SymbpError(f"{what} {text!r}, column {column}: syntax error") from None
    except (ValueError, MemoryError, RecursionError):
        raise SymbpError(f"{what} {text!r}: cannot be parsed") from None
    try:
        return _Walker(text, names, what).visit(tree.body)
    except RecursionError:
        raise SymbpError(f"{what} {text!r}: nested too deeply") from None


class _Walker:
    def __init__(self, text, names, what):
        self.text, self.names, self.what = text, names, what

    def fail(self, node, message):
        column = getattr(node, "col_offset", 0) + 1
        raise SymbpError(f"{self.what} {self.text!r}, column {column}: {message}")

    def visit(self, node):
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(node, f"unsupported constant {value!r}")
            segment = ast.get_source_segment(self.text.strip(), node) or repr(value)
            return sp.Rational(segment.replace("_", "")) if isinstance(value, float) else sp.Integer(value)
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            self.fail(node, f"unknown name '{node.id}'" + closest(node.id, self.names))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Pow) and right.is_number and abs(right) > _MAX_EXPONENT:
                self.fail(node, f"exponent {right} is too large (at most {_MAX_EXPONENT})")
            if isinstance(node.op, ast.Div) and right.is_zero:
                self.fail(node, "division by zero")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.visit(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Call):
            return self.call(node)
        self.fail(node, f"'{ast.get_source_segment(self.text.strip(), node) or type(node).__name__}' is not allowed "
                  "(only numbers, names, + - * / **, and function calls)")

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
