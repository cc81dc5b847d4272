"""Documents and files: -o checked before the work, modes and links kept, signals and pipes, broken
templates, and text pdflatex cannot typeset (issues 16.6, 16.8, 16.9, 10.9)."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import symbp
from symbp import latex
from symbp.cli import main
from symbp.errors import SymbpError

ROOT = Path(symbp.__file__).resolve().parent.parent  # the code under test, also in child processes
SMALL = ["derive", "2,2", "--output", "identity", "--loss", "mse"]


def one_line_error(capsys, code, expected_start):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(expected_start), err
    return err


def child(*argv, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "symbp", *argv], cwd=ROOT, env=env, text=True, **kw)


# --------------------------------------------------------------------------- -o, before the work


def test_a_folder_in_place_of_the_tex_is_refused_before_the_pdf_is_built(tmp_path, capsys):
    (tmp_path / "d.tex").mkdir()
    code = main(SMALL + ["-o", str(tmp_path / "d.tex"), "--pdf"])
    one_line_error(capsys, code, f"symbp derive: error: cannot write '{tmp_path / 'd.tex'}': it is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tex"]  # no d.pdf left behind


def test_a_folder_in_place_of_the_pdf_is_refused_before_the_work(tmp_path, capsys):
    (tmp_path / "d.pdf").mkdir()
    code = main(["graph", "a*b", "--at", "a=1,b=2", "-o", str(tmp_path / "d.tex"), "--pdf"])
    one_line_error(capsys, code, f"symbp graph: error: cannot write '{tmp_path / 'd.pdf'}': it is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pdf"]


def test_an_unwritable_folder_is_refused_before_the_work(capsys):
    code = main(SMALL + ["-o", "/sys/symbp-test.tex"])  # not writable even for root
    one_line_error(capsys, code, "symbp derive: error: cannot write '/sys/symbp-test.tex': folder '/sys': ")


def test_a_read_only_file_is_refused_and_left_alone(tmp_path, capsys):
    target = tmp_path / "d.tex"
    target.write_text("mine\n")
    target.chmod(0o444)
    code = main(SMALL + ["-o", str(target)])
    one_line_error(capsys, code, f"symbp derive: error: cannot write '{target}': the file is read-only")
    assert target.read_text() == "mine\n"


def test_overwriting_keeps_the_mode_the_hard_links_and_the_symlink(tmp_path, capsys):
    target, twin, link = tmp_path / "d.tex", tmp_path / "twin.tex", tmp_path / "link.tex"
    target.write_text("old\n")
    target.chmod(0o640)
    os.link(target, twin)
    link.symlink_to(target)
    assert main(SMALL + ["-o", str(link)]) == 0
    capsys.readouterr()
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text().startswith("\\documentclass")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.path.samefile(target, twin) and twin.read_text() == target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tex", "link.tex", "twin.tex"]  # no temporary left


def test_a_new_file_gets_the_umask_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        latex.write_atomic(tmp_path / "new.tex", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.tex").stat().st_mode) == 0o640


def test_no_command_creates_missing_parent_folders(tmp_path, capsys):
    code = main(["gallery", "--out", str(tmp_path / "missing" / "gallery"), "--no-pdf"])
    one_line_error(capsys, code, f"symbp gallery: error: cannot write into '{tmp_path / 'missing' / 'gallery'}': "
                                 f"folder '{tmp_path / 'missing'}' does not exist")
    code = main(SMALL + ["-o", str(tmp_path / "missing" / "d.tex")])
    one_line_error(capsys, code, f"symbp derive: error: cannot write '{tmp_path / 'missing' / 'd.tex'}': "
                                 f"folder '{tmp_path / 'missing'}' does not exist")
    assert list(tmp_path.iterdir()) == []
    # the gallery's own folder is made, as mkdir would
    symbp.document.gallery(tmp_path / "new", pdf=False, entries=(), flows=(), graphs=(), examples=())
    assert (tmp_path / "new").is_dir()


# --------------------------------------------------------------------------- signals and pipes


@pytest.mark.slow
def test_sigterm_during_the_pdf_compile_leaves_no_temporary_folder(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = child(*SMALL, "-o", str(tmp_path / "d.tex"), "--pdf", env={"TMPDIR": str(scratch)},
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(scratch.glob("symbp-tex-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the compile never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err == ""
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_a_closed_pipe_is_not_a_traceback():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before symbp writes: `symbp graph ... --json | head -0`
    proc = child("graph", "(a*b + c)*f", "--at", "a=2,b=-3,c=5,f=-2", "--json", stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, "")


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize("body, message", [
    ("((* extends 'base.tex.j2' *))\n((* block body *))\n((* if *))\n((* endblock *))\n",
     "derivation.tex.j2, line 3: Expected an expression, got 'end of statement block'"),
    ("((* extends 'base.tex.j2' *))\n((* block body *))\nok\n((( nope.deeper )))\n((* endblock *))\n",
     "derivation.tex.j2, line 4: 'nope' is undefined"),
])
def test_a_broken_user_template_is_one_line_with_its_file_and_line(tmp_path, capsys, body, message):
    (tmp_path / "derivation.tex.j2").write_text(body)
    code = main(SMALL + ["-o", str(tmp_path / "d.tex"), "--template-dir", str(tmp_path)])
    err = one_line_error(capsys, code, f"symbp derive: error: template {tmp_path}")
    assert err.rstrip().endswith(message)
    assert not (tmp_path / "d.tex").exists()


# --------------------------------------------------------------------------- text pdflatex cannot typeset


@pytest.mark.parametrize("title, char", [("梯度", "梯 (U+68AF)"), ("שיפוע", "ש (U+05E9)"), ("grads 😀", "😀 (U+1F600)"),
                                         ("Ħ-bar", "Ħ (U+0126)")])
def test_a_title_pdflatex_cannot_typeset_is_refused_up_front(tmp_path, capsys, title, char):
    code = main(SMALL + ["--title", title, "-o", str(tmp_path / "d.tex")])
    one_line_error(capsys, code, f"symbp derive: error: --title: the character '{char.split()[0]}' {char.split()[1]} "
                                 "cannot be typeset by pdflatex")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SymbpError, match=f"title: the character '{char.split()[0]}'"):
        symbp.document.render(symbp.MLP([2, 2], output="identity", loss="mse"), title=title)


@pytest.mark.slow
def test_every_character_said_to_typeset_does(tmp_path, capsys):
    title = "".join(sorted(latex.TYPESET))
    assert main(SMALL + ["--title", title, "-o", str(tmp_path / "d.tex"), "--pdf"]) == 0
    capsys.readouterr()
    text = subprocess.run(["pdftotext", str(tmp_path / "d.pdf"), "-"], capture_output=True, text=True).stdout
    assert "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏ" in text  # typeset, not dropped


@pytest.mark.slow
def test_graph_names_sympy_would_mangle_print_as_written(tmp_path, capsys):
    assert main(["graph", "_*a___b + x__1", "--at", "_=1,a___b=2,x__1=3", "-o", str(tmp_path / "g.tex"), "--pdf"]) == 0
    capsys.readouterr()
    source = (tmp_path / "g.tex").read_text()
    assert r"\textit{a\_\_\_b}" in source and r"\textit{\_}" in source and r"\textit{x\_\_1}" in source
    assert (tmp_path / "g.pdf").exists()


def test_a_graph_name_pdflatex_cannot_typeset_is_one_line(tmp_path, capsys):
    code = main(["graph", "α*2", "--at", "α=1", "-o", str(tmp_path / "g.tex")])
    # refused by the ASCII rule of the parsers, before any LaTeX (the typesetting check is the next guard)
    one_line_error(capsys, code, "symbp graph: error: point 'α=1': 'α' (U+03B1 GREEK SMALL LETTER ALPHA) at column 1 "
                   "is not ASCII")
    assert list(tmp_path.iterdir()) == []


def test_line_breaks_in_a_title_are_spaces():
    assert latex.escape_latex("two\nlines\tand_tab") == r"two lines and\_tab"
