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
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import jinja2
import sympy as sp
from sympy.printing.latex import LatexPrinter

from .errors import SymbpError
from .names import parse


class SymbpLatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with symbp's names: 1-based indices, layers as superscripts.

    >>> p = SymbpLatexPrinter(columns={"z2", "x"})
    >>> p.doprint(sp.Symbol("W1_0_2") * sp.Symbol("dz2_1_0"))
    'W^{(1)}_{1,3} \\\\delta^{(2)}_{2}'
    >>> p.doprint(sp.Heaviside(sp.Symbol("z2_0_0"), 0))
    '\\\\operatorname{step}\\\\left(z^{(2)}_{1}\\\\right)'
    """

    def __init__(self, columns=(), settings=None):
        super().__init__(settings or {})
        self.columns = set(columns)

    def base(self, var: str) -> str:
        """``W1`` -> ``W^{(1)}``; ``x`` -> ``x``."""
        match = re.match(r"^([A-Za-z]+)(\d+)$", var)
        if not match:
            return var
        letter, layer = match.groups()
        if letter == "a" and layer == "0":
            return "x"
        return f"{letter}^{{({layer})}}"

    def entry(self, var: str, i: int, j: int) -> str:
        index = f"{i + 1}" if var in self.columns else f"{i + 1},{j + 1}"
        return f"{self.base(var)}_{{{index}}}"

    def _print_Symbol(self, expr, style="plain"):
        parsed = parse(expr)
        if parsed is None:
            return super()._print_Symbol(expr)
        grad, var, i, j = parsed
        if not grad:
            return self.entry(var, i, j)
        index = f"{i + 1}" if var in self.columns else f"{i + 1},{j + 1}"
        letter, layer = re.match(r"^([A-Za-z]+)(\d*)$", var).groups()
        layer = f"^{{({layer})}}" if layer else ""
        if letter == "z":
            return rf"\delta{layer}_{{{index}}}"
        return rf"\bar{{{letter}}}{layer}_{{{index}}}"

    def _function(self, name, expr, exp=None):
        arg = self._print(expr.args[0])
        tex = rf"{name}\left({arg}\right)"
        return rf"{tex}^{{{exp}}}" if exp else tex

    def _print_relu(self, expr, exp=None):
        return self._function(r"\operatorname{ReLU}", expr, exp)

    def _print_leaky_relu(self, expr, exp=None):
        return self._function(r"\operatorname{LeakyReLU}", expr, exp)

    def _print_sigmoid(self, expr, exp=None):
        return self._function(r"\sigma", expr, exp)

    def _print_softplus(self, expr, exp=None):
        return self._function(r"\operatorname{softplus}", expr, exp)

    def _print_Heaviside(self, expr, exp=None):
        return self._function(r"\operatorname{step}", expr, exp)


def latex(expr, *, columns=(), **settings) -> str:
    """``expr`` (an expression or a matrix) in LaTeX with symbp's names.

    >>> latex(sp.Matrix([[sp.Symbol("x_0_0")], [sp.Symbol("x_1_0")]]), columns={"x"})
    '\\\\left[\\\\begin{matrix}x_{1}\\\\\\\\x_{2}\\\\end{matrix}\\\\right]'
    """
    return SymbpLatexPrinter(columns=columns, settings=settings).doprint(expr)


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


def escape_latex(text) -> str:
    """User text made safe for LaTeX's text mode: it prints as written.

    >>> escape_latex("Grads & 100% of L_1 #1 {x}")
    'Grads \\\\& 100\\\\% of L\\\\_1 \\\\#1 \\\\{x\\\\}'
    """
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], str(text))


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
    env.filters["latex"] = latex
    return env


def render(template: str, *, user_dir=None, **context) -> str:
    """Render ``template`` (a file name in the template folders) with ``context``."""
    try:
        return environment(user_dir).get_template(template).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise SymbpError(f"template {exc.name!r} not found in {', '.join(map(str, template_dirs(user_dir)))}") from None


def write_atomic(path, data) -> Path:
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise SymbpError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": "\n"})) as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a document is as readable as any new file
        os.replace(tmp, path)
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


def compile_pdf(tex: str, pdf_path, *, runs: int = 2, timeout: float = 180) -> Path:
    """Compile LaTeX source ``tex`` into ``pdf_path``; nothing is written unless it succeeds."""
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
                done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise SymbpError(f"LaTeX did not finish within {timeout:.0f} s") from None
            log_path = Path(work) / "doc.log"
            log = log_path.read_text(errors="replace") if log_path.exists() else done.stdout
            if done.returncode != 0 or not (Path(work) / "doc.pdf").exists():
                raise SymbpError(f"LaTeX error: {first_error(log)}")
        return write_atomic(pdf_path, (Path(work) / "doc.pdf").read_bytes())
