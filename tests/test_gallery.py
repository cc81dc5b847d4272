"""The gallery derivations/: up to date with the code, byte for byte, and every document compiles cleanly.

If a test here fails after a change to the documents, regenerate the gallery with ``symbp gallery``
(from the repository root) and commit the result.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from symbp import document
from symbp import latex as L
from symbp.cli import main

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "derivations"


def test_gallery_has_the_curated_documents():
    names = [e.name for e in document.GALLERY]
    assert names == ["mlp-4-5-3-3", "mlp-4-5-3-3-batch", "sigmoid-bce", "deep-tanh", "residual"]
    nets = {e.name: e.network() for e in document.GALLERY}
    assert nets["mlp-4-5-3-3"].sizes == (4, 5, 3, 3) and nets["mlp-4-5-3-3-batch"].batch == 3
    assert nets["sigmoid-bce"].fused.simplified == "(a - y) / n"
    assert {a.name for a in nets["deep-tanh"].hidden} == {"tanh"} and nets["deep-tanh"].L == 5
    assert nets["residual"].residual_layers == (1, 2)


def test_committed_tex_files_are_up_to_date(tmp_path):
    """Regenerate into a temporary folder and compare bytes: run `symbp gallery` if this fails."""
    written = document.gallery(tmp_path, pdf=False, flows=())
    assert sorted(p.name for p in written) == sorted(f"{e.name}.tex" for e in document.GALLERY)
    for entry in document.GALLERY:
        fresh = (tmp_path / f"{entry.name}.tex").read_bytes()
        committed = GALLERY / f"{entry.name}.tex"
        assert committed.exists(), f"{committed} is missing: run `symbp gallery`"
        assert committed.read_bytes() == fresh, f"{committed.name} is out of date: run `symbp gallery`"
        assert (GALLERY / f"{entry.name}.pdf").exists(), f"{entry.name}.pdf is missing: run `symbp gallery`"


@pytest.mark.slow
def test_committed_flow_documents_are_up_to_date(tmp_path):
    """The gallery's gradient-flow document (about 15 s: a 20-layer network derived and measured)."""
    assert main(["gallery", "--out", str(tmp_path), "--no-pdf"]) == 0
    for name, _ in document.FLOW_GALLERY:
        committed = GALLERY / f"{name}.tex"
        assert committed.read_bytes() == (tmp_path / f"{name}.tex").read_bytes(), \
            f"{committed.name} is out of date: run `symbp gallery`"
        assert (GALLERY / f"{name}.pdf").exists() and (GALLERY / f"{name}.png").exists()


def test_gallery_refuses_a_file_as_its_folder(tmp_path, capsys):
    (tmp_path / "x.tex").write_text("mine")
    assert main(["gallery", "--out", str(tmp_path / "x.tex"), "--no-pdf"]) == 2
    assert capsys.readouterr().err == f"symbp gallery: error: '{tmp_path / 'x.tex'}' is not a folder\n"
    assert (tmp_path / "x.tex").read_text() == "mine"


def test_the_readme_command_reproduces_the_first_gallery_document(tmp_path):
    """`symbp derive 4,5,3,3 -o derivations/mlp-4-5-3-3.tex` (the README's first command) writes the
    gallery's document, byte for byte."""
    out = tmp_path / "mlp-4-5-3-3.tex"
    assert main(["derive", "4,5,3,3", "-o", str(out)]) == 0
    assert out.read_bytes() == (GALLERY / "mlp-4-5-3-3.tex").read_bytes()


def test_the_readme_first_command_writes_the_derivation_pdf():
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up"):readme.index("\n## ", readme.index("## Set up") + 1)]
    blocks = re.findall(r"```sh\n(.*?)\n```", setup, re.DOTALL)
    assert len(blocks) == 2, "the README keeps exactly two newcomer commands"
    assert blocks[0].endswith("pip install . && symbp derive 4,5,3,3 --pdf -o derivations/mlp-4-5-3-3.tex")


@pytest.fixture(scope="module")
def gallery_pdfs(tmp_path_factory):
    """Every gallery document compiled once from the committed .tex: {name: (pdf text, log)}."""
    if shutil.which("pdflatex") is None:
        pytest.skip("TeX is installed by .ci/run")
    folder = tmp_path_factory.mktemp("gallery")
    out = {}
    for entry in document.GALLERY:
        pdf, log = folder / f"{entry.name}.pdf", folder / f"{entry.name}.log"
        L.compile_pdf((GALLERY / f"{entry.name}.tex").read_text(), pdf, log_path=log)
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              check=True).stdout
        out[entry.name] = (text, log.read_text(errors="replace"))
    return out


@pytest.mark.parametrize("entry", document.GALLERY, ids=lambda e: e.name)
def test_gallery_documents_compile_without_errors_or_overfull_lines(gallery_pdfs, entry):
    from test_document import check_log, check_parts

    text, log = gallery_pdfs[entry.name]
    check_log(log)
    check_parts(entry.network(), text)
    assert (entry.title or document.default_title(entry.network())) in " ".join(text.split())


def test_gallery_worked_examples_are_complete(gallery_pdfs):
    flat = " ".join(gallery_pdfs["mlp-4-5-3-3"][0].split())
    assert "A worked example" in flat and "The loss: L = " in flat
    # the gradient-flow table lists every layer's weight-gradient norm
    assert re.search(r"layer l .*\n(?:.*\n)*?\s*3\s+[0-9.]+\s+–", gallery_pdfs["mlp-4-5-3-3"][0])


def test_residual_document_explains_the_identity_path(gallery_pdfs):
    flat = " ".join(gallery_pdfs["residual"][0].split())
    assert re.search(r"skip connections a\(l\) = a\(l−1\) \+ f \(z ?\(l\) ?\) in layers 1, 2\.", flat)
    # layer 2 is residual: a1 reaches L through z2 and directly through a2 (layer 1's input is x)
    assert flat.count("directly through the skip connection (the +1 of a residual layer)") == 1
