"""The formula language of claims: a whitelist parser into a small typed tree, shapes checked.

A claim is a string for ``dL/d<target>`` in denominator layout, written with the network's names and
NumPy-like operators, e.g. ``"(W3.T @ dz3) * step(z2)"``. How it works: Python's ``ast`` parses the
text (nothing is ever ``eval``-ed or ``sympify``-ed); the syntax tree is then walked, and only the
constructs listed below are accepted, each turned into a :class:`Node` whose shape is inferred on the
spot, so ``W3.T @ dz3`` with shapes that do not align is refused with the column of the operator.

The language
    *Names*: the network's variables ``x, y, W1.., b1.., z1.., a1..`` (``a0`` is ``x``); ``dV`` for the
    true gradient ``dL/dV`` of any parameter or intermediate ``V`` (``dz3``, ``dW1``); ``N``, the batch
    size (batched networks only). *Sizes*: the names of ``net.size_names()`` (for an MLP the widths
    ``n0, n1, ..., nL``), ``1 x 1`` whole numbers usable wherever a number is, ``ones(n2, 1)`` included.
    *Constants*: ``pi``. *Numbers* (exact: ``0.1`` is ``1/10``). *Operators*: ``+ - * /``
    element-wise with NumPy broadcasting of 2-D shapes (``(1, 1)`` broadcasts everywhere, ``(r, 1)``
    and ``(1, c)`` along their axis), ``**`` with a constant exponent (folded to a rational: ``-1/2``,
    ``2**-1``; at most 16 in absolute value), ``@`` (matrix product), ``.T``.
    *Functions* (element-wise): ``relu, leaky_relu, step, sigmoid, tanh, softplus, exp, log, erf,
    cosh, sqrt``; ``softmax(X)`` per example (each column for one example, each row in a batch);
    ``sum(X)`` (a ``1 x 1`` scalar), ``sum(X, axis=0)`` (a ``1 x c`` row), ``sum(X, axis=1)`` (an
    ``r x 1`` column); ``mean(X, axis=...)`` and ``var(X, axis=...)`` likewise (``var`` biased, divided
    by the count as NumPy's default); ``ones(r, c)`` (``r``, ``c`` whole numbers, ``N`` or size names);
    ``diag(v)``; ``outer(u, v)``.
    Everything is 2-D. The text is ASCII only (a lookalike such as ``ａ3`` is refused, named, not
    read as ``a3``), and number literals keep their decimal exponent within +-300 (see
    :mod:`symbp.expression` for the limits).

The tree (stable: the NumPy code generator walks it)
    :class:`Node` is frozen: ``op``, ``args`` (child nodes), ``shape`` (``(rows, cols)`` with ``N``
    resolved to the network's batch size), ``value`` (op-specific, below), ``text`` (the source of
    the node) and ``column`` (1-based column of its first character). The ops:

    ==============  ====================  ===================================================
    op              args                  value / NumPy meaning
    ==============  ====================  ===================================================
    ``name``        ()                    variable name: ``"W1"``, ``"a0"`` (= x), ``"dz3"``;
                                          ``"N"`` is the batch size (``x.shape[0]``), 1 x 1
    ``number``      ()                    a ``fractions.Fraction``, 1 x 1
    ``neg``         (X,)                  ``-X``
    ``add``         (X, Y)                ``X + Y`` (broadcasting)
    ``sub``         (X, Y)                ``X - Y``
    ``mul``         (X, Y)                ``X * Y`` (element-wise)
    ``div``         (X, Y)                ``X / Y``
    ``pow``         (X,)                  ``X ** value``, value a ``Fraction``
    ``matmul``      (X, Y)                ``X @ Y``
    ``transpose``   (X,)                  ``X.T``
    ``func``        (X,)                  value in :data:`ELEMENTWISE`: element-wise function
    ``softmax``     (X,)                  value = axis normalised over: 0 (columns) or 1 (rows)
    ``sum``         (X,)                  value = None (all, 1 x 1), 0 or 1; keepdims=True
    ``ones``        ()                    value = (r, c), each an int, ``"N"`` or a size name
    ``diag``        (v,)                  ``np.diag(v.ravel())``
    ``outer``       (u, v)                ``np.outer(u.ravel(), v.ravel())``
    ``size``        ()                    value = (name, int): a size name (``("n2", 3)``), 1 x 1
    ``const``       ()                    value in :data:`CONSTANTS` (``"pi"``), 1 x 1
    ==============  ====================  ===================================================

    ``mean``, ``var`` and ``sqrt`` are not ops: they are written with the ops above, so every consumer
    of the tree handles them already. ``mean(X, axis)`` is ``div(sum(X, axis), number(count))``,
    ``var(X, axis)`` is ``mean((X - mean(X, axis)) ** 2, axis)`` and ``sqrt(X)`` is ``pow(X)`` with
    value ``1/2``. Such a node keeps the user's ``text`` and records what was written in ``sugar``
    (``("mean", axis)``, ``("var", axis)``, ``("sqrt",)``; ``()`` elsewhere): printing shows
    ``mean(...)``, and a consumer may use it (the count of a ``mean`` is ``args[1]``).

>>> import symbp
>>> net = symbp.MLP([4, 5, 3, 3])
>>> node = parse("(W3.T @ dz3) * step(z2)", net)
>>> node.op, node.shape, [a.op for a in node.args]
('mul', (3, 1), ['matmul', 'func'])
>>> parse("W3.T @ dz1", net)
Traceback (most recent call last):
...
symbp.formula.FormulaError: formula 'W3.T @ dz1', column 6: W3.T @ dz1: shapes (3, 3) and (5, 1) do not align (3 columns against 5 rows)
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import sympy as sp

from . import functions as F
from .characters import one_line
from .errors import SymbpError, closest
from .expression import (ASCII_BLANKS, MAX_DECIMAL_EXPONENT, MAX_DIGITS, MAX_POWER, column_of, exponent_too_large, line_starts, literal,
                         power_too_big, read_tree, too_big)

#: The element-wise functions of the language (op ``func``), with their SymPy forms.
ELEMENTWISE = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "step": F.step,
    "sigmoid": F.sigmoid,
    "tanh": sp.tanh,
    "softplus": F.softplus,
    "exp": sp.exp,
    "log": sp.log,
    "erf": sp.erf,
    "cosh": sp.cosh,
}

#: Named constants of the language (op ``const``), with their SymPy values.
CONSTANTS = {"pi": sp.pi}

#: The functions written with other ops (``sugar`` of the node; see the module docstring).
_SUGAR = ("mean", "var", "sqrt")
_AXIS_FUNCTIONS = ("sum", "mean", "var")

#: Every function name the language knows, with its number of positional arguments.
FUNCTIONS = {**{name: 1 for name in ELEMENTWISE}, "sqrt": 1, "softmax": 1, "sum": (1, 2), "mean": (1, 2),
             "var": (1, 2), "ones": 2, "diag": 1, "outer": 2}

_BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matmul"}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}
_MAX_LENGTH = 10_000
_MAX_EXPONENT = MAX_POWER  # the exponent of ** is a constant within +-16 (a3**50 would stall SymPy)
_MAX_NODES = 20_000  # var(X) holds X twice, so var(var(...)) doubles the tree each time: a cap on its unshared size


class FormulaError(SymbpError):
    """A claim that is not in the formula language; ``column`` (1-based) and ``token`` locate it.

    ``kind`` is ``"shape"`` when the text is well formed but two operands' shapes do not fit (``@``,
    an element-wise operator, ``diag``/``outer`` of a matrix); ``source`` is then the stripped text and
    ``operands`` the ``(start, end)`` offsets in it of each operand of the offending node (for
    ``diag``/``outer``, of the offending argument), so that a caller can try rewritten claims (a
    verdict of ``verify``, not bad input). Every other error has ``kind = "syntax"``.
    """

    def __init__(self, message, *, column=0, token="", kind="syntax", source="", operands=()):
        super().__init__(message)
        self.column, self.token = column, token
        self.kind, self.source, self.operands = kind, source, tuple(operands)


@dataclass(frozen=True)
class Node:
    """One node of a parsed formula (see the module docstring for the ops)."""

    op: str
    args: tuple = ()
    shape: tuple = (1, 1)
    value: object = None
    text: str = field(default="", compare=False)
    column: int = field(default=0, compare=False)
    sugar: tuple = field(default=(), compare=False)

    def walk(self):
        """This node and every node below it, parents first."""
        yield self
        for arg in self.args:
            yield from arg.walk()

    def names(self) -> set:
        """The variable names the formula uses."""
        return {n.value for n in self.walk() if n.op == "name"}

    def __str__(self):
        return self.text or _unparse(self)


def known_shapes(net) -> dict:
    """Every name a claim about ``net`` may use, with its shape (``N`` only when batched)."""
    shapes = {name: net.shape(name) for name in net.names}
    shapes["a0"] = net.shape("x")
    for name in net.params + net.intermediates:
        shapes["d" + name] = net.shape(name)
    if net.batch:
        shapes["N"] = (1, 1)
    return shapes


def parse(text: str, net, *, what: str = "formula") -> Node:
    """Parse the claim ``text`` about network ``net`` into a :class:`Node`, shapes checked.

    Raises :class:`FormulaError` (a :class:`~symbp.errors.SymbpError`) naming the token and its column.

    >>> import symbp
    >>> net = symbp.MLP([4, 5, 3, 3], batch=8)
    >>> parse("sum(dz2, axis=0).T / N", net).shape
    (3, 1)
    >>> parse("dz3 @ W3 * stp(z2)", net)
    Traceback (most recent call last):
    ...
    symbp.formula.FormulaError: formula 'dz3 @ W3 * stp(z2)', column 12: unknown function 'stp' (did you mean 'step'?)
    """
    if not isinstance(text, str) or not text.strip(ASCII_BLANKS):
        raise FormulaError(f"{what}: expected a non-empty string, got {text!r}")
    if len(text) > _MAX_LENGTH:
        raise FormulaError(f"{what}: longer than {_MAX_LENGTH} characters")
    source, tree = read_tree(text, what, lambda message, column, token: FormulaError(message, column=column,
                                                                                    token=token))
    sizes = {name: n for name, n in net.size_names().items() if name != "N"} if hasattr(net, "size_names") else {}
    walker = _Walker(source, text, known_shapes(net), net.batch, what, sizes)
    try:
        node = walker.visit(tree.body)
    except RecursionError:
        raise FormulaError(f"{what} {text!r}: nested too deeply") from None
    if _unshared_size(node) > _MAX_NODES:
        raise FormulaError(one_line(f"{what} {text!r}: more than {_MAX_NODES} nodes once written out (var(X) "
                                    "holds X twice: nest fewer var)"))
    return node


def _unshared_size(node) -> int:
    """The number of nodes of the tree written out (shared subtrees counted each time), in linear time."""
    sizes = {}
    stack = [node]
    while stack:
        n = stack[-1]
        if id(n) in sizes:
            stack.pop()
            continue
        missing = [a for a in n.args if id(a) not in sizes]
        if missing:
            stack.extend(missing)
            continue
        sizes[id(n)] = min(1 + sum(sizes[id(a)] for a in n.args), _MAX_NODES + 1)
        stack.pop()
    return sizes[id(node)]


class _Walker:
    def __init__(self, source, text, shapes, batch, what, sizes):
        self.source, self.text, self.shapes, self.batch, self.what = source, text, shapes, batch, what
        self.sizes = sizes
        self.starts = line_starts(source)

    def fail(self, node, message, token="", column=None, operands=None):
        column = column or column_of(self.starts, node)
        shape = {} if operands is None else {"kind": "shape", "source": self.source,
                                             "operands": [self.span(o) for o in operands]}
        raise FormulaError(one_line(f"{self.what} {self.text!r}, column {column}: {message}"), column=column,
                           token=token or self.segment(node), **shape)

    def span(self, node):
        """``(start, end)`` offsets of ``node`` in the (one-line) source, or None."""
        if getattr(node, "lineno", 0) != 1 or getattr(node, "end_lineno", 0) != 1:
            return None
        return node.col_offset, node.end_col_offset

    def segment(self, node):
        try:
            return ast.get_source_segment(self.source, node) or ""
        except Exception:  # pragma: no cover - defensive: odd positions in odd input
            return ""

    def make(self, node, op, args=(), shape=(1, 1), value=None, sugar=()):
        return Node(op, tuple(args), tuple(shape), value, self.segment(node), column_of(self.starts, node), sugar)

    def visit(self, node):
        if isinstance(node, ast.Constant):
            return self.make(node, "number", value=self.number(node))
        if isinstance(node, ast.Name):
            if node.id in self.shapes:
                return self.make(node, "name", shape=self.shapes[node.id], value=node.id)
            if node.id in self.sizes:
                return self.make(node, "size", value=(node.id, self.sizes[node.id]))
            if node.id in CONSTANTS:
                return self.make(node, "const", value=node.id)
            hint = closest(node.id, {**self.shapes, **self.sizes, **CONSTANTS})
            if node.id == "N":
                hint = " (N is the batch size: this network takes one example)"
            elif not hint and self.sizes and node.id[:1] == "n" and node.id[1:].isdigit():
                hint = f" (the sizes are {', '.join(self.sizes)})"
            self.fail(node, f"unknown name '{node.id}'{hint}", node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base = self.visit(node.left)
            exponent = self.constant(node.right)
            if exponent is None:
                self.fail(node.right, "the exponent of ** must be a number (a constant such as 2, -1/2 or 0.5)")
            if abs(exponent) > _MAX_EXPONENT:
                self.fail(node.right, exponent_too_large(self.segment(node.right)))
            if base.op == "number" and base.value == 0 and exponent < 0:
                self.fail(node, "division by zero")
            return self.make(node, "pow", [base], base.shape, exponent)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op = _BINARY[type(node.op)]
            left, right = self.visit(node.left), self.visit(node.right)
            if op == "matmul":
                if left.shape[1] != right.shape[0]:
                    self.matmul_fail(node, left, right)
                shape = (left.shape[0], right.shape[1])
            else:
                shape = self.broadcast(node, op, left, right)
            if op == "div" and right.op == "number" and right.value == 0:
                self.fail(node, "division by zero")
            return self.make(node, op, [left, right], shape)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.UAdd):
                return operand
            if operand.op == "number":
                return self.make(node, "number", value=-operand.value)
            return self.make(node, "neg", [operand], operand.shape)
        if isinstance(node, ast.Attribute):
            if node.attr != "T":
                self.fail(node, f"'.{node.attr}' is not allowed (only .T, the transpose)", "." + node.attr)
            inner = self.visit(node.value)
            return self.make(node, "transpose", [inner], inner.shape[::-1])
        if isinstance(node, ast.Call):
            return self.call(node)
        self.fail(node, f"'{self.segment(node) or type(node).__name__}' is not allowed (only names, numbers, "
                  "+ - * / ** @, .T and the functions " + ", ".join(FUNCTIONS) + ")")

    def number(self, node):
        try:
            return literal(self.segment(node), node.value)
        except SymbpError as exc:
            self.fail(node, str(exc))

    def constant(self, node):
        """The value of a constant expression (numbers, + - * / and ** a whole number), else None.

        ``-1/2``, ``(1/3)``, ``-0.5`` and ``2**-1`` are constants; an exponent inside one is within
        +-MAX_POWER and every step has at most MAX_DIGITS digits, so folding is quick.
        """
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.constant(node.operand)
            return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
        if not isinstance(node, ast.BinOp) or not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            return None
        left, right = self.constant(node.left), self.constant(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1:
                return None  # 4 ** (1/2): not folded (the exponent must be rational)
            if abs(right) > _MAX_EXPONENT:
                self.fail(node.right, exponent_too_large(self.segment(node.right)))
            if power_too_big(left, right):
                self.fail(node, f"the constant {self.segment(node)} has more than {MAX_DIGITS} digits")
        if (isinstance(node.op, ast.Div) or isinstance(node.op, ast.Pow) and right < 0) and \
                (right if isinstance(node.op, ast.Div) else left) == 0:
            self.fail(node, "division by zero")
        value = {ast.Add: lambda: left + right, ast.Sub: lambda: left - right, ast.Mult: lambda: left * right,
                 ast.Div: lambda: left / right, ast.Pow: lambda: left ** int(right)}[type(node.op)]()
        if too_big(value):
            self.fail(node, f"the constant {self.segment(node)} has more than {MAX_DIGITS} digits")
        return value

    def operator_column(self, node, symbol):
        """The 1-based column of a binary operator (between its operands), for error messages."""
        left_end = self.starts[node.left.end_lineno - 1] + node.left.end_col_offset
        found = self.source.find(symbol, left_end, column_of(self.starts, node.right) - 1)
        return found + 1 if found >= 0 else None

    def matmul_fail(self, node, left, right):
        self.fail(node, f"{self.segment(node)}: shapes {left.shape} and {right.shape} do not align "
                  f"({left.shape[1]} columns against {right.shape[0]} rows)", "@",
                  self.operator_column(node, "@"), (node.left, node.right))

    def broadcast(self, node, op, left, right):
        shape = []
        for a, b in zip(left.shape, right.shape):
            if a != b and a != 1 and b != 1:
                self.fail(node, f"{self.segment(node)}: shapes {left.shape} and {right.shape} do not match "
                          f"for element-wise '{_SYMBOL[op]}'", _SYMBOL[op], self.operator_column(node, _SYMBOL[op]),
                          (node.left, node.right))
            shape.append(max(a, b))
        return tuple(shape)

    def call(self, node):
        if not isinstance(node.func, ast.Name):
            self.fail(node, "only plain function names can be called")
        name = node.func.id
        if name not in FUNCTIONS:
            hint = closest(name, FUNCTIONS) or f" (known: {', '.join(FUNCTIONS)})"
            self.fail(node, f"unknown function '{name}'{hint}", name)
        keywords = {k.arg: k.value for k in node.keywords}
        for k in node.keywords:
            if k.arg is None:
                self.fail(k, f"{name}(): '**' arguments are not allowed", "**")
            if name not in _AXIS_FUNCTIONS or k.arg != "axis":
                self.fail(node, f"{name}() takes no keyword argument '{k.arg}'", name)
        if len(keywords) < len(node.keywords):
            self.fail(node, f"{name}(): keyword argument 'axis' given twice", name)
        arity = FUNCTIONS[name]
        allowed = arity if isinstance(arity, tuple) else (arity, arity)
        given = len(node.args) + len(keywords)
        if not allowed[0] <= given <= allowed[1]:
            expected = f"{allowed[0]}" if allowed[0] == allowed[1] else f"{allowed[0]} or {allowed[1]}"
            self.fail(node, f"{name}() takes {expected} argument{'s' if allowed[1] > 1 else ''}, got {given}", name)
        if name == "ones":
            dims = tuple(self.dimension(arg) for arg in node.args)
            shape = tuple(self.resolve(d) for d in dims)
            cap = 10 * max(r * c for r, c in self.shapes.values())  # 10 x the largest variable
            if shape[0] * shape[1] > cap:
                self.fail(node, f"ones(): {shape[0]} x {shape[1]} = {shape[0] * shape[1]} entries, more than {cap} "
                          "(10 times the largest variable of the network)", name)
            return self.make(node, "ones", (), shape, dims)
        if name in _AXIS_FUNCTIONS:
            if not node.args:
                what = {"sum": "to sum", "mean": "to average", "var": "whose variance to take"}[name]
                self.fail(node, f"{name}() needs the matrix {what} as its first argument, e.g. {name}(dz1, axis=0)", name)
            operand = self.visit(node.args[0])
            axis_node = node.args[1] if len(node.args) > 1 else keywords.get("axis")
            axis = None
            if axis_node is not None:
                axis = self.constant(axis_node)
                if axis not in (0, 1):
                    self.fail(axis_node, f"{name}(): axis must be 0 (over the rows) or 1 (over the columns)")
                axis = int(axis)
            r, c = operand.shape
            shape = (1, 1) if axis is None else ((1, c) if axis == 0 else (r, 1))
            if name == "sum":
                return self.make(node, "sum", [operand], shape, axis)
            mean = _mean(operand, axis, shape)
            if name == "mean":
                return self.make(node, "div", mean.args, shape, sugar=mean.sugar)
            squares = Node("pow", (Node("sub", (operand, mean), operand.shape),), operand.shape, Fraction(2))
            variance = _mean(squares, axis, shape)
            return self.make(node, "div", variance.args, shape, sugar=("var", axis))
        args = [self.visit(arg) for arg in node.args]
        if name == "sqrt":
            return self.make(node, "pow", args, args[0].shape, Fraction(1, 2), sugar=("sqrt",))
        if name in ELEMENTWISE:
            return self.make(node, "func", args, args[0].shape, name)
        if name == "softmax":
            return self.make(node, "softmax", args, args[0].shape, 1 if self.batch else 0)
        for arg, source in zip(args, node.args):
            if 1 not in arg.shape:
                self.fail(source, f"{name}() takes vectors, got {self.segment(source)} of shape {arg.shape}",
                          operands=(source,))
        lengths = [max(arg.shape) for arg in args]
        if name == "diag":
            return self.make(node, "diag", args, (lengths[0], lengths[0]))
        return self.make(node, "outer", args, tuple(lengths))

    def dimension(self, node):
        if isinstance(node, ast.Name) and node.id == "N":
            if not self.batch:
                self.fail(node, "N is the batch size: this network takes one example", "N")
            return "N"
        if isinstance(node, ast.Name) and node.id in self.sizes:
            return node.id
        if isinstance(node, ast.Name):
            if node.id not in self.shapes and node.id not in CONSTANTS:
                self.visit(node)  # an unknown name: refused, named, with the closest known one
            self.fail(node, f"ones(): dimensions must be whole numbers from 1, N or a size name, not '{node.id}'")
        value = self.constant(node)
        if value is None or value.denominator != 1 or not 1 <= value <= 100_000:
            self.fail(node, "ones(): dimensions must be whole numbers from 1 (or N, or a size name)")
        return int(value)

    def resolve(self, dimension):
        """A dimension of ``ones`` as a number: ``N`` the batch, a size name its value."""
        return self.batch if dimension == "N" else self.sizes.get(dimension, dimension)


def _mean(operand, axis, shape):
    """``sum(operand, axis) / count``: the node ``mean(operand, axis=axis)`` stands for."""
    r, c = operand.shape
    count = r * c if axis is None else (r if axis == 0 else c)
    total = Node("sum", (operand,), shape, axis)
    return Node("div", (total, Node("number", value=Fraction(count))), shape, sugar=("mean", axis))


def _unparse(node: Node) -> str:
    if node.sugar:
        return _unparse_sugar(node)
    if node.op == "name":
        return node.value
    if node.op == "size":
        return node.value[0]
    if node.op == "const":
        return node.value
    if node.op == "number":
        return _number_text(node.value)
    if node.op == "neg":
        return f"-({_unparse(node.args[0])})"
    if node.op in _SYMBOL:
        return f"({_unparse(node.args[0])} {_SYMBOL[node.op]} {_unparse(node.args[1])})"
    if node.op == "pow":
        return f"({_unparse(node.args[0])})**({_number_text(node.value)})"
    if node.op == "transpose":
        return f"({_unparse(node.args[0])}).T"
    if node.op == "func":
        return f"{node.value}({_unparse(node.args[0])})"
    if node.op == "sum":
        axis = "" if node.value is None else f", axis={node.value}"
        return f"sum({_unparse(node.args[0])}{axis})"
    if node.op == "ones":
        return f"ones({node.value[0]}, {node.value[1]})"
    return f"{node.op}({', '.join(_unparse(a) for a in node.args)})"


def sugar_operand(node: Node) -> Node:
    """The argument ``X`` the user wrote in ``mean(X, ...)``, ``var(X, ...)`` or ``sqrt(X)`` (a node with
    ``sugar``): ``sum(X) / n``, ``sum((X - mean(X)) ** 2) / n`` and ``X ** (1/2)`` hold it here.

    >>> import symbp
    >>> node = parse("var(z1, axis=0)", symbp.MLP([2, 3], batch=4))
    >>> node.op, node.sugar, sugar_operand(node).value
    ('div', ('var', 0), 'z1')
    """
    name = node.sugar[0]
    if name == "sqrt":
        return node.args[0]
    operand = node.args[0].args[0]
    return operand.args[0].args[0] if name == "var" else operand


def _unparse_sugar(node: Node) -> str:
    """``mean(X, axis=0)``, ``var(X)``, ``sqrt(X)`` for a node written with other ops."""
    name, operand = node.sugar[0], _unparse(sugar_operand(node))
    if name == "sqrt":
        return f"sqrt({operand})"
    axis = "" if node.sugar[1] is None else f", axis={node.sugar[1]}"
    return f"{name}({operand}{axis})"


def _number_text(value: Fraction) -> str:
    """A number as a literal of the language: ``2``, ``0.5`` (not ``1/2``, which would be a division);
    a fraction without a finite decimal (never read from a claim) in brackets, ``(1/3)``."""
    if value.denominator == 1:
        return str(value.numerator)
    q = value.denominator
    twos, fives = (q & -q).bit_length() - 1, 0
    while q % 5 ** (fives + 1) == 0:
        fives += 1
    if q == 2 ** twos * 5 ** fives:
        places = max(twos, fives)
        digits = str(abs(value.numerator) * 10 ** places // q).rjust(places + 1, "0")
        return ("-" if value < 0 else "") + digits[:-places] + "." + digits[-places:]
    return f"({value})"


# --------------------------------------------------------------------------- evaluation


class Semantics:
    """How the element-wise functions act on the scalars held in object arrays.

    Subclasses: SymPy expressions (this class), exact rationals with frozen transcendental values
    (:class:`symbp.verify.ExactField`). ``call(name, v)`` applies an :data:`ELEMENTWISE` function;
    ``exp`` is also used by softmax; ``named(name)`` is the value of a :data:`CONSTANTS` name.
    """

    def call(self, name, v):
        return ELEMENTWISE[name](v)

    def named(self, name):
        return CONSTANTS[name]

    def constant(self, fraction: Fraction):
        return sp.Rational(fraction.numerator, fraction.denominator)

    def power(self, v, exponent: Fraction):
        if exponent.denominator == 1:
            return v ** int(exponent)
        return v ** self.constant(exponent)


def evaluate(node: Node, env, *, N=None) -> sp.Matrix:
    """The value of a formula as a ``sympy.Matrix``, given a matrix for every name it uses.

    ``env`` maps names (``'W1'``, ``'dz3'``, ``'x'``; ``'a0'`` falls back to ``'x'``) to SymPy matrices
    (or anything ``numpy.array`` accepts); ``N`` is the batch size when the formula uses it.

    >>> import symbp
    >>> net = symbp.MLP([2, 2], output="identity", loss="mse")
    >>> node = parse("dz1 @ x.T", net)
    >>> evaluate(node, {"dz1": net.grad_symbols("z1"), "x": net.symbols("x")})
    Matrix([
    [dz1_0_0*x_0_0, dz1_0_0*x_1_0],
    [dz1_1_0*x_0_0, dz1_1_0*x_1_0]])
    """
    arrays = {name: _object_array(value) for name, value in env.items()}
    if N is not None:
        arrays["N"] = _object_array([[sp.Integer(N)]])
    result = evaluate_array(node, arrays, Semantics())
    return sp.Matrix(result.tolist())


def _object_array(value):
    if isinstance(value, sp.MatrixBase):
        value = value.tolist()
    array = np.empty(np.shape(value), dtype=object)
    array[...] = value if not isinstance(value, np.ndarray) else value
    if array.ndim != 2:
        array = array.reshape(-1, 1)
    return array


def evaluate_array(node: Node, env: dict, semantics: Semantics) -> np.ndarray:
    """Evaluate ``node`` on 2-D NumPy object arrays (the workhorse of :func:`evaluate` and verify).

    ``env`` maps names to object arrays of scalars (SymPy expressions or exact numbers, as
    ``semantics`` expects); the result is an object array shaped like ``node.shape``.
    """
    op = node.op
    if op == "name":
        name = node.value
        if name not in env and name == "a0":
            name = "x"
        if name not in env:
            raise SymbpError(f"no value given for '{node.value}'")
        return env[name]
    if op == "number":
        return _scalar(semantics.constant(node.value))
    if op == "size":
        return _scalar(semantics.constant(Fraction(node.value[1])))
    if op == "const":
        return _scalar(semantics.named(node.value))
    if op == "func" and node.value == "exp" and node.args[0].op == "mul" and node.args[0].args[0].op == "number" \
            and node.args[0].args[0].value.denominator == 1:  # exp(k X) = exp(X)**k, as SymPy writes it
        k = int(node.args[0].args[0].value)
        inner = evaluate_array(node.args[0].args[1], env, semantics)
        return _map(lambda v: semantics.power(semantics.call("exp", v), Fraction(k)), inner)
    args = [evaluate_array(a, env, semantics) for a in node.args]
    if op == "neg":
        return -args[0]
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "div":
        return args[0] / args[1]
    if op == "pow":
        return _map(lambda v: semantics.power(v, node.value), args[0])
    if op == "matmul":
        return _matmul(args[0], args[1])
    if op == "transpose":
        return args[0].T
    if op == "func":
        return _map(lambda v: semantics.call(node.value, v), args[0])
    if op == "softmax":
        e = _map(lambda v: semantics.call("exp", v), args[0])
        return e / _sum(e, node.value)
    if op == "sum":
        return _sum(args[0], node.value)
    if op == "ones":
        out = np.empty(node.shape, dtype=object)
        out[...] = semantics.constant(Fraction(1))
        return out
    if op == "diag":
        v = args[0].ravel()
        out = np.empty((len(v), len(v)), dtype=object)
        out[...] = semantics.constant(Fraction(0))
        for k, entry in enumerate(v):
            out[k, k] = entry
        return out
    if op == "outer":
        return _matmul(args[0].reshape(-1, 1), args[1].reshape(1, -1))
    raise SymbpError(f"unknown formula op {op!r}")  # pragma: no cover


def _scalar(value):
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = value
    return out


def _map(fn, array):
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for k, v in enumerate(array.reshape(-1)):
        flat[k] = fn(v)
    return out


def _sum(array, axis):
    if axis is None:
        return _scalar(_add_all(array.reshape(-1)))
    rows, cols = array.shape
    if axis == 0:
        out = np.empty((1, cols), dtype=object)
        for j in range(cols):
            out[0, j] = _add_all(array[:, j])
    else:
        out = np.empty((rows, 1), dtype=object)
        for i in range(rows):
            out[i, 0] = _add_all(array[i, :])
    return out


def _add_all(values):
    values = list(values)
    if values and isinstance(values[0], sp.Basic):
        return sp.Add(*values)
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _matmul(a, b):
    if a.dtype == object and a.size and isinstance(a.flat[0], sp.Basic) or \
            b.dtype == object and b.size and isinstance(b.flat[0], sp.Basic):
        out = np.empty((a.shape[0], b.shape[1]), dtype=object)
        for i in range(a.shape[0]):
            for j in range(b.shape[1]):
                out[i, j] = sp.Add(*[a[i, k] * b[k, j] for k in range(a.shape[1])])
        return out
    return np.matmul(a, b)


def formula_text(expr, z) -> str | None:
    """A SymPy expression as a claim, or None where the language cannot write it: ``z`` is the text
    for the symbol ``t`` (a string), or a dict from symbol names to texts.

    >>> t = sp.Symbol("t", real=True)
    >>> formula_text(1 - sp.tanh(t) ** 2, "z1")
    '(1 + ((-1) * (tanh(z1) ** (2))))'
    """
    if expr.is_Symbol:
        if isinstance(z, str):
            return z if expr.name == "t" else None
        return z.get(expr.name)
    if expr.is_Rational:
        if max(abs(expr.p), expr.q) >= 10 ** (MAX_DECIMAL_EXPONENT + 1):
            return None  # beyond the literals the claim language reads
        return f"({expr})" if not expr.is_Integer else (str(expr) if expr >= 0 else f"({expr})")
    if expr.is_Add or expr.is_Mul:
        parts = [formula_text(a, z) for a in expr.args]
        if None in parts:
            return None
        return "(" + (" + " if expr.is_Add else " * ").join(parts) + ")"
    if expr.is_Pow:
        base = formula_text(expr.base, z)
        if base is None or not expr.exp.is_Rational:
            if expr.base is sp.E and base is None:
                inner = formula_text(expr.exp, z)
                return None if inner is None else f"exp({inner})"
            return None
        if abs(expr.exp) > MAX_POWER:
            return None  # beyond the exponents the claim language reads (x**-16 has z**-17)
        return f"({base} ** ({expr.exp}))"
    if expr.func is sp.Heaviside:
        if len(expr.args) > 1 and expr.args[1] != 0:
            return None
        inner = formula_text(expr.args[0], z)
        return None if inner is None else f"step({inner})"
    if expr is sp.pi:
        return "pi"
    names = {F.relu: "relu", F.leaky_relu: "leaky_relu", F.sigmoid: "sigmoid", F.softplus: "softplus",
             sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.erf: "erf", sp.cosh: "cosh"}
    if expr.func in names:
        inner = formula_text(expr.args[0], z)
        return None if inner is None else f"{names[expr.func]}({inner})"
    return None
