"""The LaTeX layer: printer names, escaping, templates, and compiling (with real pdflatex)."""

import shutil
import subprocess

import pytest
import sympy as sp

from symbp import latex as L
from symbp.errors import SymbpError

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="TeX is installed by .ci/run")


def test_printer_uses_one_based_indices_and_layers():
    p = L.SymbpLatexPrinter(columns={"z2", "a1"})
    assert p.doprint(sp.Symbol("W1_0_2")) == "W^{(1)}_{1,3}"
    assert p.doprint(sp.Symbol("z2_1_0")) == "z^{(2)}_{2}"
    assert p.doprint(sp.Symbol("dz2_1_0")) == r"\delta^{(2)}_{2}"
    assert p.doprint(sp.Symbol("da1_0_0")) == r"\bar{a}^{(1)}_{1}"
    assert p.doprint(sp.Symbol("x_3_1")) == "x_{4,2}"


def test_escape_latex_covers_every_special_character():
    assert L.escape_latex(r"a\b&c%d$e#f_g{h}i~j^k") == (
        r"a\textbackslash{}b\&c\%d\$e\#f\_g\{h\}i\textasciitilde{}j\textasciicircum{}k")


def test_templates_use_strict_undefined():
    with pytest.raises(Exception, match="author"):
        L.render("base.tex.j2")


def test_unknown_template_is_a_clear_error():
    with pytest.raises(SymbpError, match="template 'nope.tex.j2' not found"):
        L.render("nope.tex.j2")


def test_user_template_folder_overrides(tmp_path):
    (tmp_path / "base.tex.j2").write_text("mine: ((( author | escape_latex )))")
    assert L.render("base.tex.j2", user_dir=tmp_path, author="A&B") == r"mine: A\&B"


def test_write_atomic_leaves_no_temporary_file(tmp_path):
    L.write_atomic(tmp_path / "out.tex", "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["out.tex"]
    with pytest.raises(SymbpError, match="does not exist"):
        L.write_atomic(tmp_path / "missing" / "out.tex", "x")


@needs_tex
def test_title_with_special_characters_compiles_and_prints_as_written(tmp_path):
    title = "Grads & 100% of L_1 #1 {x}"
    tex = L.render("base.tex.j2", author=title)
    pdf = L.compile_pdf(tex, tmp_path / "t.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert title in text


@needs_tex
def test_compile_failure_reports_the_first_error_and_writes_nothing(tmp_path):
    bad = "\\documentclass{article}\n\\begin{document}\n\\undefinedmacro\n\\end{document}\n"
    with pytest.raises(SymbpError, match=r"LaTeX error: Undefined control sequence. \(line 3\)"):
        L.compile_pdf(bad, tmp_path / "bad.pdf")
    assert list(tmp_path.iterdir()) == []
