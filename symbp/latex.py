"""LaTeX: SymPy's printer for the mathematics, Jinja2 templates for the documents, pdflatex for PDFs.

How it works:

* :class:`SymbpLatexPrinter` subclasses SymPy's ``LatexPrinter``: entry ``W1_0_2`` prints as
  ``W^{(1)}_{1,3}`` (1-based, layer as a superscript), column vectors with one index (``z^{(2)}_{2}``),
  error terms ``dz2_1_0`` as ``\\delta^{(2)}_{2}`` and ``da1_0_0`` as ``\\bar{a}^{(1)}_{1}`` (the notation
  table of each document says so), ``relu`` as ``\\operatorname{ReLU}`` and ``Heaviside(z, 0)`` as
  ``\\operatorname{step}(z)``. No LaTeX is assembled from strings in Python beyond what the printer does.
* :func:`environment` is a Jinja2 environment with LaTeX-safe delimiters (``((* block *))``,
  ``((( variable )))``, ``((= comment =))``, as nbconvert), ``StrictUndefined``, and the filters
  ``escape_latex`` (applied to every piece of user text) and ``latex`` (the printer). Templates come
  from a user folder if given, else from the package (``symbp/templates`` in a wheel, the repository's
  top-level ``templates/`` in a checkout).
* :func:`compile_pdf` runs ``latexmk`` (or ``pdflatex`` twice) in a temporary folder with shell escape
  off; on failure it raises :class:`SymbpError` with the first LaTeX error line, and leaves nothing
  behind. :func:`write_atomic` writes through a temporary file and a rename.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import jinja2
import sympy as sp
from sympy.printing.latex import LatexPrinter

from .errors import SymbpError
from .names import parse
from .registry import ACTIVATIONS


class SymbpLatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with symbp's names: 1-based indices, layers as superscripts.

    In a product, gradients come first, as textbooks write them (delta_i a_j); ``max_terms`` elides
    long sums (t1 + t2 + ... + tn).

    >>> p = SymbpLatexPrinter(columns={"z2", "x"})
    >>> p.doprint(sp.Symbol("W1_0_2") * sp.Symbol("dz2_1_0"))
    '\\\\delta^{(2)}_{2} W^{(1)}_{1,3}'
    >>> p.doprint(sp.Heaviside(sp.Symbol("z2_0_0"), 0))
    '\\\\operatorname{step}\\\\left(z^{(2)}_{1}\\\\right)'
    """

    def __init__(self, columns=(), settings=None, *, max_terms=None, names=None):
        super().__init__(settings or {})
        self.columns = set(columns)
        self.max_terms = max_terms  # longer sums print as t1 + t2 + ... + tn
        # var -> (body, superscript): how a network's own names print (see symbp.document.network_names)
        self.names = dict(names or {})

    def _print_Mul(self, expr):
        # Gradients first, as the textbooks write them: delta_i a_j, delta_k W_kj, abar_j step(z_j).
        factors = list(expr.args)
        if factors[0] is sp.S.NegativeOne and len(factors) > 2:
            return "- " + self._print_Mul(sp.Mul(*factors[1:], evaluate=False))
        first = [f for f in factors if _is_gradient(f)]
        if not first or len(first) == len(factors) or not expr.is_commutative or factors[0].is_Number:
            return super()._print_Mul(expr)
        rest = [f for f in factors if not _is_gradient(f)]
        saved = self._settings["order"]
        self._settings["order"] = "none"
        try:
            return super()._print_Mul(sp.Mul(*first, *rest, evaluate=False))
        finally:
            self._settings["order"] = saved

    def _as_ordered_terms(self, expr, order=None):
        # Terms of symbp's entries in natural index order (x_2 before x_10), SymPy's order otherwise.
        terms = super()._as_ordered_terms(expr, order=order)
        keys = [_natural_key(t) for t in terms]
        if all(keys):
            return [t for _, t in sorted(zip(keys, terms), key=lambda pair: pair[0])]
        return terms

    def add_pieces(self, expr) -> list[str]:
        """The terms of a sum as printed, each with its sign (``"+ t"``, ``"- t"``; the first bare),
        long sums elided to ``max_terms`` with a ``+ \\cdots`` piece."""
        terms = self._as_ordered_terms(expr)
        if self.max_terms is not None and len(terms) > self.max_terms + 1:  # never "+ ... +" for one term
            terms = terms[: max(self.max_terms - 2, 1)] + [None] + terms[-2:]
        pieces = []
        for k, term in enumerate(terms):
            if term is None:
                pieces.append(r"+ \cdots")
                continue
            sign = "+ " if k else ""  # as SymPy: the first term prints its own sign
            if k and term.could_extract_minus_sign():
                sign, term = "- ", -term
            tex = self._print(term)
            if self._needs_add_brackets(term):
                tex = rf"\left({tex}\right)"
            pieces.append(sign + tex)
        return pieces

    def _print_Add(self, expr, order=None):
        return " ".join(self.add_pieces(expr))

    def lines(self, expr, *, width: int) -> list[str]:
        """``expr`` printed and, when it is a sum wider than ``width`` characters (see
        :func:`visible_width`), split between its terms into lines of at most about ``width``."""
        tex = self.doprint(expr)
        if not expr.is_Add or visible_width(tex) <= width:
            return [tex]
        out = [""]
        for piece in self.add_pieces(expr):
            if out[-1] and visible_width(out[-1] + piece) > width:
                out.append("")
            out[-1] = f"{out[-1]} {piece}".strip()
        return out

    def parts(self, var: str) -> tuple[str, str]:
        """``(body, superscript)`` of a variable's name: ``W1`` -> ``("W", "(1)")``, ``gamma2`` ->
        ``(r"\\gamma", "(2)")``, ``Wq1`` -> ``("{W_{q}}", "(1)")``, ``x`` -> ``("x", "")``; names given to
        the printer (``names``) first, any other name upright (``\\mathrm{h1a}``)."""
        if var in self.names:
            return self.names[var]
        if var == "a0":
            return "x", ""
        match = re.match(r"^([A-Za-z]+)(\d*)$", var)
        if not match:
            return rf"\mathrm{{{var}}}", ""
        letters, layer = match.groups()
        return stem_latex(letters), f"({layer})" if layer else ""

    def base(self, var: str, sup: str = "") -> str:
        """``W1`` -> ``W^{(1)}``; ``x`` -> ``x``; ``sup`` joins the superscript (``W^{(1)\\top}``)."""
        body, layer = self.parts(var)
        return f"{body}^{{{layer}{sup}}}" if layer or sup else body

    def grad_base(self, var: str, sup: str = "") -> str:
        """The name of dL/dV as a whole: ``z2`` -> ``\\delta^{(2)}``, ``a1`` -> ``\\bar{a}^{(1)}``,
        ``ln2`` -> ``\\overline{\\mathrm{ln}}^{(2)}``."""
        body, layer = self.parts(var)
        if body == "z" and var not in self.names:
            letter = r"\delta"
        elif len(body) == 1 or re.fullmatch(r"\\[A-Za-z]+", body):  # one letter, Greek too
            letter = rf"\bar{{{body}}}"
        else:
            letter = rf"\overline{{{body}}}"
        if layer or sup:
            return f"{letter}^{{{layer}{sup}}}"
        return letter

    def entry(self, var: str, i: int, j: int) -> str:
        index = f"{i + 1}" if var in self.columns else f"{i + 1},{j + 1}"
        return f"{self.base(var)}_{{{index}}}"

    def _print_Symbol(self, expr, style="plain"):
        parsed = parse(expr)
        if parsed is None:
            name = expr.name
            if not _SYMPY_NAME.match(name):  # "_", "a___b", "x__1", "café": as written, in italics
                return rf"\textit{{{escape_latex(name, what=f'name {name!r}')}}}"
            return super()._print_Symbol(expr)
        grad, var, i, j = parsed
        if not grad:
            return self.entry(var, i, j)
        index = f"{i + 1}" if var in self.columns else f"{i + 1},{j + 1}"
        return f"{self.grad_base(var)}_{{{index}}}"

    def _function(self, name, expr, exp=None):
        arg = self._print(expr.args[0])
        tex = rf"{name}\left({arg}\right)"
        return rf"{tex}^{{{exp}}}" if exp else tex

    def _print_relu(self, expr, exp=None):
        return self._function(FUNCTION_NAMES["relu"], expr, exp)

    def _print_leaky_relu(self, expr, exp=None):
        return self._function(FUNCTION_NAMES["leaky_relu"], expr, exp)

    def _print_sigmoid(self, expr, exp=None):
        return self._function(FUNCTION_NAMES["sigmoid"], expr, exp)

    def _print_softplus(self, expr, exp=None):
        return self._function(FUNCTION_NAMES["softplus"], expr, exp)

    def _print_Heaviside(self, expr, exp=None):
        return self._function(FUNCTION_NAMES["step"], expr, exp)


#: Greek letters a name may spell (``gamma2`` prints as ``\gamma^{(2)}``); ``delta`` cannot begin a
#: network name (``d`` is a gradient) and ``pi`` is a constant, so neither is here.
GREEK = {name: "\\" + name for name in (
    "alpha", "beta", "gamma", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi",
    "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
    "Gamma", "Theta", "Lambda", "Xi", "Sigma", "Upsilon", "Phi", "Psi", "Omega")}


def stem_latex(letters: str) -> str:
    """The LaTeX of a name's letters: one letter as it is, a Greek letter's name as the letter, a
    capital with one small letter as a subscripted capital (``Wq`` -> ``{W_{q}}``, braced so that the
    entry's own indices can follow), anything else upright (``ln`` -> ``\\mathrm{ln}``).

    >>> [stem_latex(s) for s in ("W", "gamma", "Wq", "ln")]
    ['W', '\\\\gamma', '{W_{q}}', '\\\\mathrm{ln}']
    """
    if len(letters) == 1:
        return letters
    if letters in GREEK:
        return GREEK[letters]
    if len(letters) == 2 and letters[0].isupper() and letters[1].islower():
        return f"{{{letters[0]}_{{{letters[1]}}}}}"
    return rf"\mathrm{{{letters}}}"


#: Names SymPy's printer splits as the writer meant (``x``, ``w0``, ``x_1``, ``alpha_2``): ASCII
#: letters and digits, single underscores between non-empty parts. Others print as written.
_SYMPY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*$")


def _natural_key(term):
    """``(var letter, layer, i, j)`` of the term's symbp symbols, sorted: a natural order of terms."""
    found = []
    for symbol in sorted(term.free_symbols, key=str):
        parsed = parse(symbol)
        if parsed is None:
            return None
        grad, var, i, j = parsed
        letter, layer, rest = re.match(r"^([A-Za-z]+)(\d*)(.*)$", var).groups()
        found.append((letter, int(layer or 0), rest, i, j, grad))
    return tuple(sorted(found)) or None


def _is_gradient(factor) -> bool:
    base = factor.base if factor.is_Pow else factor
    parsed = parse(base) if base.is_Symbol else None
    return bool(parsed and parsed[0])


def latex(expr, *, columns=(), **settings) -> str:
    """``expr`` (an expression or a matrix) in LaTeX with symbp's names.

    >>> latex(sp.Matrix([[sp.Symbol("x_0_0")], [sp.Symbol("x_1_0")]]), columns={"x"})
    '\\\\left[\\\\begin{matrix}x_{1}\\\\\\\\x_{2}\\\\end{matrix}\\\\right]'
    """
    return SymbpLatexPrinter(columns=columns, settings=settings).doprint(expr)


# --------------------------------------------------------------------------- formulas (claims) as LaTeX

#: LaTeX names of the element-wise functions (of the printer and of the formula language): the
#: registry's ``latex`` column, plus ``step`` (the ReLU derivative), ``exp`` and ``log``.
FUNCTION_NAMES = {
    **{row.name: row.latex for row in ACTIVATIONS.values() if row.name != "identity"},
    "step": r"\operatorname{step}",
    "exp": r"\exp",
    "log": r"\log",
    "erf": r"\operatorname{erf}",
    "cosh": r"\cosh",
}

# Binding strength of each op: a child binding weaker than its parent gets parentheses.
_PRECEDENCE = {"add": 1, "sub": 1, "neg": 2, "mul": 3, "div": 3, "matmul": 4, "outer": 4, "sum": 4,
               "pow": 5, "transpose": 5}


def formula_latex(node, *, printer: SymbpLatexPrinter | None = None) -> str:
    r"""A parsed claim (a :mod:`symbp.formula` ``Node`` tree) in LaTeX, in the documents' notation.

    ``@`` is juxtaposition, element-wise ``*`` is ``\odot``, ``.T`` a superscript ``\top``, ``dz2`` is
    ``\delta^{(2)}`` and ``da1`` is ``\bar{a}^{(1)}``, ``sum(X, axis=0)`` is ``\mathbf{1}^\top X``.
    Only the node's ``op``, ``args``, ``shape`` and ``value`` are read (and ``sugar``, if it has one:
    ``sqrt(X)`` is typeset as a root; ``mean`` and ``var`` as the sums they are).

    >>> from types import SimpleNamespace as N
    >>> dz, a = N(op="name", value="dz3", args=(), shape=(3, 1)), N(op="name", value="a2", args=(), shape=(3, 1))
    >>> formula_latex(N(op="matmul", args=(dz, N(op="transpose", args=(a,), value=None, shape=(1, 3))),
    ...                 value=None, shape=(3, 3)))
    '\\delta^{(3)} a^{(2)\\top}'
    """
    printer = printer or SymbpLatexPrinter()
    return _formula(node, printer)


def _wrap(child, parent_op, printer, *, right=False):
    tex = _formula(child, printer)
    mine = _PRECEDENCE.get(child.op, 9)
    theirs = _PRECEDENCE[parent_op]
    if mine < theirs or (right and mine == theirs and parent_op in ("sub", "div", "matmul")
                         and child.op != parent_op) or (right and parent_op == "sub" and mine == theirs):
        return rf"\left({tex}\right)"
    return tex


def _name(value, printer, sup=""):
    if value == "N":
        return f"N^{{{sup}}}" if sup else "N"
    if value.startswith("d") and len(value) > 1:
        return printer.grad_base(value[1:], sup)
    return printer.base(value, sup)


def _size(name: str) -> str:
    r"""A size name: ``n2`` is ``n_{2}``, ``n_h1`` is ``n_{\mathrm{h1}}``."""
    rest = name[1:].lstrip("_")
    return f"n_{{{rest}}}" if rest.isdigit() else rf"n_{{\mathrm{{{rest}}}}}"


def _formula(node, printer) -> str:
    op, args = node.op, node.args
    if op == "name":
        return _name(node.value, printer)
    if op == "number":
        return printer.doprint(sp.Rational(node.value.numerator, node.value.denominator))
    if op == "abbrev":  # a name given by abbreviated()
        return rf"u_{{{node.value}}}"
    if op == "size":
        return _size(node.value[0])
    if op == "const":
        return r"\pi"
    if getattr(node, "sugar", ()) == ("sqrt",):
        return rf"\sqrt{{{_formula(args[0], printer)}}}"
    if op == "neg":
        return "-" + _wrap(args[0], "neg", printer)
    if op in ("add", "sub"):
        sign = " + " if op == "add" else " - "
        return _wrap(args[0], op, printer) + sign + _wrap(args[1], op, printer, right=True)
    if op == "mul":
        return _wrap(args[0], op, printer) + r" \odot " + _wrap(args[1], op, printer, right=True)
    if op == "div":
        if getattr(node, "sugar", None) and node.sugar[0] in ("mean", "var") and hasattr(printer, "count"):
            return rf"\frac{{{_formula(args[0], printer)}}}{{{printer.count(node)}}}"  # the count by name
        if tuple(args[1].shape) == (1, 1):
            return rf"\frac{{{_formula(args[0], printer)}}}{{{_formula(args[1], printer)}}}"
        return _wrap(args[0], op, printer) + r" \oslash " + _wrap(args[1], op, printer, right=True)
    if op == "pow":
        exponent = printer.doprint(sp.Rational(node.value.numerator, node.value.denominator))
        return rf"\left({_formula(args[0], printer)}\right)^{{{exponent}}}"
    if op == "matmul":
        return _wrap(args[0], op, printer) + " " + _wrap(args[1], op, printer, right=True)
    if op == "transpose":
        inner = args[0]
        if inner.op == "name":
            return _name(inner.value, printer, r"\top")
        return rf"\left({_formula(inner, printer)}\right)^{{\top}}"
    if op == "func":
        return rf"{FUNCTION_NAMES[node.value]}\left({_formula(args[0], printer)}\right)"
    if op == "softmax":
        return rf"\operatorname{{softmax}}\left({_formula(args[0], printer)}\right)"
    if op == "sum":
        rows, cols = args[0].shape
        if hasattr(printer, "dimensions"):  # sizes by name (symbp.indexform: for all sizes)
            rows, cols = printer.dimensions(args[0])
        inner = _wrap(args[0], "sum", printer)
        if node.value == 0:
            return rf"\mathbf{{1}}_{{{rows}}}^{{\top}} {inner}"
        if node.value == 1:
            return rf"{inner} \mathbf{{1}}_{{{cols}}}"
        return rf"\mathbf{{1}}_{{{rows}}}^{{\top}} {inner} \mathbf{{1}}_{{{cols}}}"
    if op == "ones":
        r, c = (_size(d) if isinstance(d, str) and d != "N" else d for d in node.value)
        return rf"\mathbf{{1}}_{{{r} \times {c}}}"
    if op == "diag":
        return rf"\operatorname{{diag}}\left({_formula(args[0], printer)}\right)"
    if op == "outer":
        u, v = args
        right = _name(v.value, printer, r"\top") if v.op == "name" else rf"\left({_formula(v, printer)}\right)^{{\top}}"
        return _wrap(u, "outer", printer) + " " + right
    raise SymbpError(f"formula_latex: unknown op {op!r}")  # pragma: no cover


def _size_of(node) -> int:
    return sum(1 for _ in _walk(node))


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.args))


def _rebuild(node, fn):
    """``node`` with every subtree ``t`` replaced by ``fn(t)`` when that is not None (outermost first)."""
    new = fn(node)
    if new is not None:
        return new
    if not node.args:
        return node
    return replace(node, args=tuple(_rebuild(a, fn) for a in node.args))


#: Repeated subformulas of at least this many nodes get a name of their own (:func:`abbreviated`).
ABBREVIATE_SIZE = 4


def abbreviated(node, *, printer: SymbpLatexPrinter | None = None) -> tuple[str, list[tuple[str, str]]]:
    r"""A parsed claim in LaTeX with its repeated subformulas named ``u_{1}, u_{2}, ...``: the main
    formula and the list of ``(name, definition)``. Layer norm's backward repeats the normalised input
    and the standard deviation three times; so named, it reads as the textbook writes it.

    How it works: count every subtree (names and numbers aside) over the main formula and the
    definitions so far; the largest one seen twice (of at least :data:`ABBREVIATE_SIZE` nodes; the
    first in reading order on a tie) becomes a name everywhere, and its definition joins the formulas
    counted; repeat until nothing repeats. Names are numbered in reading order.

    >>> import symbp
    >>> from symbp.formula import parse
    >>> net = symbp.MLP([2, 2], output="identity", loss="mse")
    >>> abbreviated(parse("(dz1 @ x.T) * (dz1 @ x.T)", net))
    ('u_{1} \\odot u_{1}', [('u_{1}', '\\delta^{(1)} x^{\\top}')])
    """
    printer = printer or SymbpLatexPrinter()
    main, definitions = node, []
    while True:
        counts, first = {}, {}
        for tree in [main] + [d for _, d in definitions]:
            for k, n in enumerate(_walk(tree)):
                if n.op in ("name", "number", "size", "const", "abbrev"):
                    continue
                counts[n] = counts.get(n, 0) + 1
                first.setdefault(n, len(first))
        repeated = [n for n, c in counts.items() if c >= 2 and _size_of(n) >= ABBREVIATE_SIZE]
        if not repeated:
            break
        best = max(repeated, key=lambda n: (_size_of(n), -first[n]))
        name = replace(best, op="abbrev", args=(), value=len(definitions))
        swap = lambda t: name if t == best else None
        main = _rebuild(main, swap)
        definitions = [(p, replace(d, args=tuple(_rebuild(a, swap) for a in d.args))) for p, d in definitions]
        definitions.append((name, best))
    # Number the names in reading order: the main formula first, each definition where it is first used.
    order, by_value = [], {p.value: d for p, d in definitions}

    def visit(tree):
        for n in _walk(tree):
            if n.op == "abbrev" and n.value not in order:
                order.append(n.value)
                visit(by_value[n.value])

    visit(main)
    number = {value: k + 1 for k, value in enumerate(order)}
    named = lambda t: replace(t, value=number[t.value]) if t.op == "abbrev" else None
    out = [(rf"u_{{{number[p.value]}}}", _formula(_rebuild(d, lambda t: None if t is d else named(t)), printer))
           for p, d in definitions]
    out.sort(key=lambda pair: int(pair[0][3:-1]))
    return _formula(_rebuild(main, named), printer), out


def formula_lines(node, *, printer: SymbpLatexPrinter, width: int) -> list[str]:
    """:func:`formula_latex` of ``node`` split between the terms of its outermost sum into lines of
    about ``width`` characters (see :func:`visible_width`); one line when it fits or is not a sum."""
    tex = _formula(node, printer)
    if node.op not in ("add", "sub") or visible_width(tex) <= width:
        return [tex]
    pieces, rest = [], node
    while rest.op in ("add", "sub"):  # a - b + c parses as ((a - b) + c): peel from the right
        sign = "+ " if rest.op == "add" else "- "
        pieces.append(sign + _wrap(rest.args[1], rest.op, printer, right=True))
        rest = rest.args[0]
    pieces.append(_wrap(rest, "add", printer))
    lines = [""]
    for piece in reversed(pieces):
        if lines[-1] and visible_width(lines[-1] + piece) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {piece}".strip()
    return lines


def products(node) -> list[tuple]:
    """The shape check of a formula: ``(left shape, right shape, result shape)`` of every ``@``.

    >>> from types import SimpleNamespace as N
    >>> d, a = N(op="name", args=(), shape=(3, 1)), N(op="name", args=(), shape=(1, 5))
    >>> products(N(op="matmul", args=(d, a), shape=(3, 5)))
    [((3, 1), (1, 5), (3, 5))]
    """
    found = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.op in ("matmul", "outer"):
            left, right = (tuple(a.shape) for a in n.args)
            if n.op == "outer":
                left, right = (left[0] * left[1], 1), (1, right[0] * right[1])
            found.append((left, right, tuple(n.shape)))
        elif n.op == "sum":  # typeset as products with ones: 1^T X, X 1, 1^T X 1
            r, c = n.args[0].shape
            if n.value in (0, None):
                found.append(((1, r), (r, c), (1, c)))
            if n.value in (1, None):
                found.append(((1, c) if n.value is None else (r, c), (c, 1), (1, 1) if n.value is None else (r, 1)))
        stack.extend(reversed(n.args))
    return found


# --------------------------------------------------------------------------- matrices, elided


@dataclass(frozen=True)
class Cell:
    """One cell of a displayed matrix: LaTeX of an entry, or a run of dots (``dots`` is ``cdots``,
    ``vdots`` or ``ddots``: the LaTeX command's name)."""

    tex: str = ""
    dots: str = ""


def _keep(n, limit):
    """Indices to show of ``n``: all when ``n <= limit + 1`` (dots never hide a single one), else the
    first ``limit - 2`` (at least one), a gap (None), the last."""
    if n <= limit + 1:  # dots never stand for a single row or column
        return list(range(n))
    return list(range(max(limit - 2, 1))) + [None, n - 1]


def visible_width(tex: str) -> int:
    """A rough count of the characters a piece of math occupies when typeset (for fitting a page).

    >>> visible_width(r"W^{(3)}_{1,2} \\delta^{(3)}_{1}")
    5
    """
    tex = re.sub(r"\^\{\([0-9]+\)[^{}]*\}", "", tex)  # layer superscripts sit above the subscripts
    tex = re.sub(r"_\{([^{}]*)\}", lambda m: " " + "x" * max(1, (len(m.group(1)) + 1) // 2), tex)
    tex = re.sub(r"\\(left|right|operatorname|mathrm|,|;|quad)", "", tex)
    tex = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", lambda m: "x" * max(len(m.group(1)), len(m.group(2))), tex)
    tex = re.sub(r"\\[A-Za-z]+", "x", tex)
    return len(re.sub(r"[{}\s]", "", tex))


def matrix_width(rows) -> int:
    """The estimated width of a displayed matrix of :class:`Cell` rows (characters, as :func:`visible_width`)."""
    columns = zip(*rows)
    return sum(max(visible_width(c.tex) if not c.dots else 2 for c in col) + 2 for col in columns)


def elided(M, *, printer: SymbpLatexPrinter, max_rows: int = 5, max_cols: int = 5, width: int = 50):
    """``M`` (a SymPy matrix) as rows of :class:`Cell`: at most ``max_rows`` by ``max_cols`` shown,
    fewer columns when the entries would not fit ``width`` characters, the rest elided with dots.

    >>> rows = elided(sp.Matrix(7, 1, lambda i, j: sp.Symbol(f"z1_{i}_0")), printer=SymbpLatexPrinter({"z1"}))
    >>> [r[0].tex or r[0].dots for r in rows]
    ['z^{(1)}_{1}', 'z^{(1)}_{2}', 'z^{(1)}_{3}', 'vdots', 'z^{(1)}_{7}']
    """
    rows = _keep(M.rows, max_rows)
    texts = {(i, j): printer.doprint(M[i, j]) for i in rows if i is not None for j in _keep(M.cols, max_cols) if j is not None}
    limit = max_cols
    while limit > 2:
        cols = [j for j in _keep(M.cols, limit) if j is not None]
        widest = [max(visible_width(texts[i, j]) for i in rows if i is not None) for j in cols]
        if sum(widest) + 2 * len(cols) + (3 if len(cols) < M.cols else 0) <= width:
            break
        limit -= 1
    out = []
    for i in rows:
        row = []
        for j in _keep(M.cols, limit):
            if i is None:
                row.append(Cell(dots="ddots" if j is None else "vdots"))
            elif j is None:
                row.append(Cell(dots="cdots"))
            else:
                row.append(Cell(tex=texts[i, j]))
        out.append(row)
    return out


_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_ESCAPE_RE = re.compile("|".join(re.escape(c) for c in _ESCAPES))

#: The characters pdflatex typesets with symbp's preamble (T1 fonts, Latin Modern, UTF-8 input), as
#: measured with TeX Live: printable ASCII, Latin-1 and Latin Extended-A (but for nine letters T1 has
#: no glyph for), and the usual typographic punctuation. Chinese, Hebrew, Greek, Cyrillic or emoji would
#: need XeLaTeX or LuaLaTeX with system fonts, which the Debian packages of .ci/run do not provide:
#: symbp refuses them up front, naming the character (tests/test_latex_files.py compiles every one).
TYPESET = frozenset(
    [chr(c) for c in range(0x20, 0x7F)]
    + [chr(c) for c in range(0xA0, 0x17F) if c not in (0x126, 0x127, 0x138, 0x13F, 0x140, 0x149, 0x166, 0x167)]
    + list("\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021\u2022\u2026\u2030\u2039\u203a\u20ac\u2122")
)


def check_text(text, what: str = "text") -> str:
    """``text`` if pdflatex can typeset every character of it (see :data:`TYPESET`; tabs and line
    breaks count as spaces), else :class:`SymbpError` naming the first one that it cannot.

    >>> check_text("Café – grads")
    'Café – grads'
    >>> check_text("梯度 of L", "title")
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: title: the character '梯' (U+68AF) cannot be typeset by pdflatex in symbp's documents (Latin letters and punctuation only)
    """
    text = str(text)
    for char in text:
        if char not in TYPESET and char not in "\t\n\r":
            shown = repr(char)[1:-1] if not char.isprintable() else char
            raise SymbpError(f"{what}: the character '{shown}' (U+{ord(char):04X}) cannot be typeset by pdflatex "
                             "in symbp's documents (Latin letters and punctuation only)")
    return text


def escape_latex(text, what: str = "text") -> str:
    """User text made safe for LaTeX's text mode: it prints as written (line breaks and tabs as
    spaces); a character pdflatex cannot typeset is a :class:`SymbpError` (:func:`check_text`).

    >>> escape_latex("Grads & 100% of L_1 #1 {x}")
    'Grads \\\\& 100\\\\% of L\\\\_1 \\\\#1 \\\\{x\\\\}'
    """
    text = re.sub(r"[\t\n\r]", " ", check_text(text, what))
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


#: A cell as symbp's sentences name it: ``z2[2]``, ``dW3[3,1]`` (``d`` for dL/d), an MLP's names only.
_CELL_RE = re.compile(r"(?<![\w\\])(d?)([zaWbxy])(\d*)\[(\d+)(?:,(\d+))?\]")
_MINUS_RE = re.compile(r"(?<![\w.)\]])-(?=\d)")


def cells_tex(text: str) -> str:
    r"""One of symbp's sentences about cells (a verdict's reason, a flag) for text mode: escaped as
    :func:`escape_latex`, each cell in math (``z2[2]`` as :math:`z^{(2)}_{2}`, ``dW3[3,1]`` as
    :math:`\partial L / \partial W^{(3)}_{3,1}`), a minus sign before a number a minus, ``*`` a dot.

    >>> cells_tex("z1[2] = -2 < 0: dz1[2] = 0, not -1 (-1 is da1[2]); dW2[1,3] = dz2[1] * a1[3]")
    '$z^{(1)}_{2}$ = $-$2 \\textless{} 0: $\\partial L / \\partial z^{(1)}_{2}$ = 0, not $-$1 ($-$1 is $\\partial L / \\partial a^{(1)}_{2}$); $\\partial L / \\partial W^{(2)}_{1,3}$ = $\\partial L / \\partial z^{(2)}_{1}$ $\\cdot$ $a^{(1)}_{3}$'
    """
    def cell(match):
        d, base, layer, i, j = match.groups()
        entry = base + (f"^{{({layer})}}" if layer else "") + "_{" + i + (f",{j}" if j else "") + "}"
        return f"$\\partial L / \\partial {entry}$" if d else f"${entry}$"

    text = _CELL_RE.sub(cell, escape_latex(text))
    return _MINUS_RE.sub("$-$", text).replace(" * ", r" $\cdot$ ")


def cell_tex(label: str) -> str:
    """A cell's label for a table: in math when it is an MLP's cell (:func:`cells_tex`), else as
    written in typewriter (a network of layers' own names)."""
    if _CELL_RE.fullmatch(label):
        return cells_tex(label)
    if label == "L":
        return "$L$"
    return r"\texttt{" + escape_latex(label) + "}"


def template_dirs(user_dir=None) -> list[Path]:
    """Where templates are looked up, first match wins: the user's folder, then the package's."""
    dirs = []
    if user_dir is not None:
        user_dir = Path(user_dir)
        if not user_dir.is_dir():
            raise SymbpError(f"template folder {str(user_dir)!r} does not exist")
        dirs.append(user_dir)
    packaged = resources.files("symbp") / "templates"
    if packaged.is_dir():  # installed from a wheel
        dirs.append(Path(str(packaged)))
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if checkout.is_dir():  # a source checkout or an editable install
        dirs.append(checkout)
    return dirs


def environment(user_dir=None) -> jinja2.Environment:
    """The Jinja2 environment for symbp's LaTeX templates."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(user_dir)]),
        block_start_string="((*",
        block_end_string="*))",
        variable_start_string="(((",
        variable_end_string=")))",
        comment_start_string="((=",
        comment_end_string="=))",
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["escape_latex"] = escape_latex
    env.filters["cells_tex"] = cells_tex
    env.filters["cell_tex"] = cell_tex
    env.filters["latex"] = latex
    return env


def render(template: str, *, user_dir=None, **context) -> str:
    """Render ``template`` (a file name in the template folders) with ``context``. A broken template
    (a user's, from ``user_dir``) is a :class:`SymbpError` naming its file and line."""
    if isinstance(context.get("title"), str):
        check_text(context["title"], "title")
    try:
        return environment(user_dir).get_template(template).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise SymbpError(f"template {exc.name!r} not found in {', '.join(map(str, template_dirs(user_dir)))}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise SymbpError(f"template {exc.filename or exc.name}, line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:  # raised while rendering: the line is in the traceback
        where = _template_line(exc.__traceback__)
        raise SymbpError(f"template {where or template}: {exc.message or type(exc).__name__}") from None


def _template_line(tb) -> str | None:
    """``"FILE, line N"`` of the innermost template frame of a traceback (Jinja2 rewrites its
    frames to point at the template's own lines)."""
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = f"{filename}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _writable_folder(path: Path) -> None:
    """Refuse, before any work, a file that cannot be written: a missing or unwritable folder, a
    folder in its place, a read-only file. (symbp never creates missing folders: the one rule for
    every command; ``gallery --out DIR`` creates ``DIR`` itself, as ``mkdir`` would, not its parents.)"""
    where = str(path)
    if not path.parent.is_dir():
        raise SymbpError(f"cannot write {where!r}: folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise SymbpError(f"cannot write {where!r}: it is a folder")
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise SymbpError(f"cannot write {where!r}: the file is read-only")
    try:  # the only sure test (root passes os.access; read-only file systems do not say)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SymbpError(f"cannot write {where!r}: folder {str(path.parent)!r}: {exc.strerror}") from None


def write_atomic(path, data) -> Path:
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename, so a reader
    never sees half a file. An existing file keeps its permission bits (a new one gets the umask's).
    A symbolic link is followed (the file it points to is written). A file with hard links is written
    in place instead (a rename would give ``path`` a new inode and cut the links): that write is not
    atomic, but it happens only once the data is complete."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    _writable_folder(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    existing = path.stat() if path.exists() else None
    try:
        if existing is not None and existing.st_nlink > 1:
            with open(path, "r+b") as f:
                f.write(data)
                f.truncate()
            return path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SymbpError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if existing is not None:
            mode = stat.S_IMODE(existing.st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600; a document is as readable as any new file
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SymbpError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def first_error(log: str) -> str:
    """The first LaTeX error of a log, with its line number when LaTeX gives one."""
    lines = log.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("! "):
            where = next((m.group(1) for m in (re.match(r"^l\.(\d+)", l) for l in lines[k:k + 12]) if m), None)
            return line[2:].strip() + (f" (line {where})" if where else "")
    return "LaTeX failed (no error line in the log)"


def _reproducible_env() -> dict:
    """The environment for pdflatex: a fixed date (``SOURCE_DATE_EPOCH``, 0 unless the caller set one)
    so that the same source gives a byte-identical PDF."""
    env = dict(os.environ)
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    env.setdefault("FORCE_SOURCE_DATE", "1")
    return env


def compile_pdf(tex: str, pdf_path, *, runs: int = 2, timeout: float = 180, log_path=None) -> Path:
    """Compile LaTeX source ``tex`` into ``pdf_path``; nothing is written unless it succeeds.

    ``log_path``: also keep LaTeX's log there (written whether or not the compile succeeds), e.g. to
    look for "Overfull \\hbox" warnings.
    """
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        raise SymbpError("pdflatex not found: install TeX (Debian: texlive-latex-base texlive-latex-recommended "
                         "texlive-pictures lmodern latexmk)")
    with tempfile.TemporaryDirectory(prefix="symbp-tex-") as work:
        source = Path(work) / "doc.tex"
        source.write_text(tex, encoding="utf-8")
        latexmk = shutil.which("latexmk")
        if latexmk:
            command = [latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                       "-quiet", "doc.tex"]
            commands = [command]
        else:
            commands = [[pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "doc.tex"]] * runs
        for command in commands:
            try:
                done = subprocess.run(command, cwd=work, capture_output=True, text=True, encoding="utf-8",
                                      errors="replace", timeout=timeout, stdin=subprocess.DEVNULL,
                                      env=_reproducible_env())
            except subprocess.TimeoutExpired:
                raise SymbpError(f"LaTeX did not finish within {timeout:.0f} s") from None
            log_file = Path(work) / "doc.log"
            log = log_file.read_text(errors="replace") if log_file.exists() else done.stdout
            if log_path is not None:
                write_atomic(log_path, log)
            if done.returncode != 0 or not (Path(work) / "doc.pdf").exists():
                raise SymbpError(f"LaTeX error: {first_error(log)}")
        return write_atomic(pdf_path, (Path(work) / "doc.pdf").read_bytes())


def check_output(path, *, also=()) -> Path:
    """``path`` as a ``Path`` if it can take a document: a ``.tex`` name that can be written (see
    :func:`write_atomic`), and so can its siblings with the suffixes ``also`` (``(".pdf",)`` with a
    PDF). Called before any slow rendering, so a bad ``-o`` fails at once."""
    path = Path(path)
    if path.suffix != ".tex":
        raise SymbpError(f"output {str(path)!r}: expected a file name ending in .tex")
    for target in [path] + [path.with_suffix(suffix) for suffix in also]:
        _writable_folder(Path(os.path.realpath(target)) if target.is_symlink() else target)
    return path


def write_document(source: str, path, *, pdf: bool = False) -> dict:
    """Write LaTeX ``source`` to ``path`` (a ``.tex`` file) and, with ``pdf``, the compiled
    ``path.pdf``. It compiles first, so a LaTeX error leaves neither file behind.
    Returns ``{"tex": Path, "pdf": Path | None}``."""
    path = check_output(path, also=(".pdf",) if pdf else ())
    pdf_path = compile_pdf(source, path.with_suffix(".pdf")) if pdf else None
    write_atomic(path, source)
    return {"tex": path, "pdf": pdf_path}
