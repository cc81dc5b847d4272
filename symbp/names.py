"""Names of the symbols: one scalar symbol per matrix entry, and how to print them for people.

How it works: the entry ``(i, j)`` of variable ``V`` is the SymPy symbol ``V_i_j`` (0-based, as in
NumPy), e.g. ``W1_0_2``; the upstream gradient ``dL/dV_ij`` is ``dV_i_j`` (``dz2_1_0``). Names are valid
Python identifiers, so ``lambdify`` uses them as they are. :func:`parse` reads a name back, and
:class:`TextPrinter` prints expressions with 1-based indices as documents do: ``W1[1,3]``, and for a
column vector just ``z2[2]``; ``dz2_1_0`` prints as ``dz2[2]``.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.str import StrPrinter

_NAME = re.compile(r"^(d?)([A-Za-z][A-Za-z0-9]*)_(\d+)_(\d+)$")  # no network name begins with d


def entry_symbol(name: str, i: int, j: int) -> sp.Symbol:
    """The symbol of entry ``(i, j)`` (0-based) of variable ``name``.

    >>> entry_symbol("W1", 0, 2)
    W1_0_2
    """
    return sp.Symbol(f"{name}_{int(i)}_{int(j)}", real=True)  # int(): Matrix passes SymPy Integers


def matrix_symbols(name: str, shape: tuple[int, int]) -> sp.Matrix:
    rows, cols = shape
    return sp.Matrix(rows, cols, [entry_symbol(name, i, j) for i in range(rows) for j in range(cols)])


def times(u, v):
    """``u * v`` as SymPy writes it. For two different symbols (the bulk of an MLP: ``W1_0_3*x_3_0``,
    ``dz2_0_0*a1_3_0``) the product is built directly with its factors in SymPy's canonical order
    (``Basic.compare``), which is what ``Mul`` does after its general flattening, at a fraction of
    the cost.

    >>> a, b = sp.symbols("a b")
    >>> times(b, a) == a * b and times(b, a).args == (a * b).args
    True
    """
    if u.is_Symbol and v.is_Symbol:
        order = u.compare(v)
        if order:
            return sp.Mul._from_args((u, v) if order < 0 else (v, u))
    return sp.Mul(u, v)


def parse(symbol) -> tuple[bool, str, int, int] | None:
    """``(is_gradient, variable, i, j)`` for a symbp symbol, else ``None``.

    >>> parse(sp.Symbol("dz2_1_0"))
    (True, 'z2', 1, 0)
    """
    match = _NAME.match(getattr(symbol, "name", ""))
    if not match:
        return None
    grad, var, i, j = match.groups()
    return bool(grad), var, int(i), int(j)


class TextPrinter(StrPrinter):
    """Plain-text printing with 1-based indices (``W1[1,3]``, ``dz2[2]``) for the command line.

    ``columns`` names the variables that are column vectors (their second index is dropped).

    >>> TextPrinter({"z2"}).doprint(sp.Symbol("dz2_1_0") * sp.Symbol("W1_0_2", real=True))
    'W1[1,3]*dz2[2]'
    """

    def __init__(self, columns=(), settings=None):
        super().__init__(settings or {})
        self.columns = set(columns)

    def _print_Symbol(self, expr):
        parsed = parse(expr)
        if parsed is None:
            return super()._print_Symbol(expr)
        grad, var, i, j = parsed
        index = f"{i + 1}" if var in self.columns else f"{i + 1},{j + 1}"
        return f"{'d' if grad else ''}{var}[{index}]"
