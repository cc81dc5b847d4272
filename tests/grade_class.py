"""A generated class for ``symbp grade`` (tests/test_grade.py and tests/benchmarks/grade.py).

The network is [3, 4, 2] (relu, softmax, cross-entropy, one example); the rubric gives W1 = 2,
b1 = 1, W2 = 2, b2 = 1, z1 = 2. ``CLASS`` lists every student with what the grader must give them
per target: ``(verdict, diagnosis, points)``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

ASSIGNMENT = """\
[model]
sizes = [3, 4, 2]
hidden = "relu"
output = "softmax"
loss = "cross_entropy"

[rubric]
W1 = 2
b1 = 1
W2 = 2
b2 = 1
z1 = 2

[limits]
seconds = 2
memory_mb = 400
"""

RIGHT = {"W1": "dz1 @ x.T", "b1": "dz1", "W2": "dz2 @ a1.T", "b2": "dz2", "z1": "(W2.T @ dz2) * step(z1)"}
REWRITTEN = {"W1": "outer(dz1, x)", "b1": "(dz1)", "W2": "(a1 @ dz2.T).T", "b2": "dz2*1", "z1": "step(z1)*(W2.T@dz2)"}

CODE_RIGHT = """\
import numpy as np

def backward(v):
    z1 = v["W1"] @ v["x"] + v["b1"]
    a1 = np.maximum(z1, 0)
    z2 = v["W2"] @ a1 + v["b2"]
    e = np.exp(z2 - z2.max())
    dz2 = e / e.sum() - v["y"]
    dz1 = (v["W2"].T @ dz2) * (z1 > 0)
    return {"W1": dz1 @ v["x"].T, "b1": dz1, "W2": dz2 @ a1.T, "b2": dz2}
"""

#: Code that does something else first (inserted at the top of backward's body).
def _code(prelude="", transpose=False):
    body = CODE_RIGHT.replace('"W1": dz1 @ v["x"].T', '"W1": (dz1 @ v["x"].T).T') if transpose else CODE_RIGHT
    if prelude:
        body = body.replace("def backward(v):\n", "def backward(v):\n" + textwrap.indent(prelude, "    ") + "\n")
    return body


H, T, S, M, SH, O = "holds", "transposed", "sign", "missing-activation-derivative", "shape", "other"
OK = ("holds", None)
TARGETS = ("W1", "b1", "W2", "b2", "z1")
POINTS = {"W1": 2, "b1": 1, "W2": 2, "b2": 1, "z1": 2}


def _formulas(**changes):
    claims = dict(RIGHT, **changes)
    return {k: v for k, v in claims.items() if v is not None}


def _toml(claims) -> str:
    return "[claims]\n" + "".join(f'{k} = "{v}"\n' for k, v in claims.items())


def _expect(code_only=False, **outcomes):
    """Per target ``(verdict, diagnosis, points)``; right everywhere unless given."""
    out = {}
    for t in TARGETS:
        verdict, diagnosis, credit = outcomes.get(t, ("holds", None, 1))
        out[t] = (verdict, diagnosis, POINTS[t] * credit)
    if code_only:
        out["z1"] = outcomes.get("z1", ("error", None, 0))
        out["z1"] = (out["z1"][0], out["z1"][1], POINTS["z1"] * out["z1"][2])
    return out


ERR = ("error", None, 0)
ALL_ERR = {t: ERR for t in TARGETS}

#: student -> (files {name: text}, expected {target: (verdict, diagnosis, points)}, a word the notes must hold)
CLASS = {
    "s01-right": ({"answers.toml": _toml(RIGHT)}, _expect(), None),
    "s02-rewritten": ({"answers.toml": _toml(REWRITTEN)}, _expect(), None),
    "s03-spacing": ({"answers.toml": _toml({k: "  " + v.replace(" ", "").replace("@", "   @").replace("*", "*  ")
                                            for k, v in RIGHT.items()})}, _expect(), None),
    "s04-W2-transposed": ({"answers.toml": _toml(_formulas(W2="a1 @ dz2.T"))},
                          _expect(W2=("fails", T, 0.5)), None),
    "s05-b1-sign": ({"answers.toml": _toml(_formulas(b1="-dz1"))}, _expect(b1=("fails", S, 0.5)), None),
    "s06-z1-missing-step": ({"answers.toml": _toml(_formulas(z1="W2.T @ dz2"))}, _expect(z1=("fails", M, 0.25)), None),
    "s07-W1-scaled": ({"answers.toml": _toml(_formulas(W1="2 * dz1 @ x.T"))}, _expect(W1=("fails", "scaled", 0.5)),
                      None),
    "s08-W1-shape": ({"answers.toml": _toml(_formulas(W1="dz1 @ dz1.T"))}, _expect(W1=("fails", SH, 0)), None),
    "s09-b2-other": ({"answers.toml": _toml(_formulas(b2="dz2 + 1"))}, _expect(b2=("fails", O, 0)), None),
    "s10-W1-transposed-shape": ({"answers.toml": _toml(_formulas(W1="dz1 @ x"))}, _expect(W1=("fails", T, 0.5)), None),
    "s11-unparsable": ({"answers.toml": _toml(_formulas(W2="dz2 @@ a1.T"))}, _expect(W2=("error", None, 0)),
                       "column 6: syntax error"),
    "s12-only-W2": ({"answers.toml": _toml({"W2": "dz2 @ a1.T"})},
                    {**{t: ERR for t in TARGETS}, "W2": ("holds", None, 2)}, "no answer"),
    "s13-bad-toml": ({"answers.toml": "[claims\nW1 = 'dz1 @ x.T'\n"}, ALL_ERR, "not valid TOML"),
    "s14-empty": ({}, ALL_ERR, "empty folder"),
    "s15-code-right": ({"backward.py": _code()}, _expect(code_only=True), None),
    "s16-code-transposed": ({"backward.py": _code(transpose=True)},
                            _expect(code_only=True, W1=("fails", T, 0.5)), None),
    "s17-code-crash": ({"backward.py": _code("1 / 0")}, ALL_ERR, "ZeroDivisionError"),
    "s18-code-hang": ({"backward.py": _code("while True:\n    pass")}, ALL_ERR, "ran past 2 s"),
    "s19-code-sys-exit": ({"backward.py": _code("import sys\nsys.exit(3)")}, ALL_ERR, "sys.exit(3)"),
    "s20-code-memory-bomb": ({"backward.py": _code("x = bytearray(4 * 1024 ** 3)")}, ALL_ERR, "used more than 400 MB"),
    "s21-code-huge-output": ({"backward.py": _code("while True:\n    print('x' * 100000)")}, ALL_ERR, "ran past 2 s"),
    "s22-code-prints-then-right": ({"backward.py": _code("for _ in range(50):\n    print('y' * 1000000)")},
                                   _expect(code_only=True), None),
    "s23-not-python": ({"backward.py": "this is not python at all {\n"}, ALL_ERR, "SyntaxError"),
    "s24-both-formula-wrong-code-right": ({"answers.toml": _toml(_formulas(W1="-dz1 @ x.T")), "backward.py": _code()},
                                          _expect(), None),
    "s25-both-formula-right-code-wrong": ({"answers.toml": _toml(RIGHT), "backward.py": _code(transpose=True)},
                                          _expect(), None),
    "s26-no-function": ({"backward.py": CODE_RIGHT.replace("def backward", "def backwards")}, ALL_ERR,
                        "defines no function 'backward'"),
    "s27-os-exit": ({"backward.py": _code("import os\nos._exit(7)")}, ALL_ERR, "exited with status 7"),
    "s28-unknown-target": ({"answers.toml": _toml(RIGHT) + 'W9 = "dz1"\n'}, _expect(), "no gradient named 'W9'"),
    "Zoë Ünal (copy)!": ({"answers.toml": _toml(_formulas(W2="a1 @ dz2.T", b1="-dz1"))},
                         _expect(W2=("fails", T, 0.5), b1=("fails", S, 0.5)), "has characters"),
}
#: Single-file students: ``<student>.toml``.
FILES = {
    "s30-file.toml": (_toml(REWRITTEN), _expect(), None),
}
STUDENT_IDS = {"Zoë Ünal (copy)!": "Zo_nal_copy", "s30-file.toml": "s30-file"}


def write_class(folder: Path) -> Path:
    """Write the class into ``folder`` (plus a stray README.md); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for student, (files, _, _) in CLASS.items():
        (folder / student).mkdir()
        for name, text in files.items():
            (folder / student / name).write_text(text, encoding="utf-8")
    for name, (text, _, _) in FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "README.md").write_text("not a submission\n")
    return folder


def expected() -> dict:
    """student id -> ({target: (verdict, diagnosis, points)}, note word)."""
    out = {}
    for student, (_, expect, note) in CLASS.items():
        out[STUDENT_IDS.get(student, student)] = (expect, note)
    for name, (_, expect, note) in FILES.items():
        out[STUDENT_IDS.get(name, name)] = (expect, note)
    return out


def write_large_class(folder: Path, formulas: int = 100, code: int = 100, seed: int = 0) -> Path:
    """A realistic class for the benchmark: ``formulas`` formula submissions drawn from the right answer,
    its rewritings and the usual mistakes, and ``code`` code submissions (right, transposed, crashing)."""
    import random

    rng = random.Random(seed)
    choices = {
        "W1": ["dz1 @ x.T", "outer(dz1, x)", "dz1@x.T", "(x @ dz1.T).T", "x @ dz1.T", "2 * dz1 @ x.T", "dz1 @ x"],
        "b1": ["dz1", "(dz1)", "-dz1", "da1"],
        "W2": ["dz2 @ a1.T", "outer(dz2, a1)", "a1 @ dz2.T", "dz2 @ a1.T / 2", "dz2 @ relu(z1).T"],
        "b2": ["dz2", "a2 - y", "y - a2", "dz2 + 1"],
        "z1": ["(W2.T @ dz2) * step(z1)", "step(z1) * (W2.T @ dz2)", "W2.T @ dz2", "da1 * step(z1)", "da1"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(formulas):
        claims = {t: rng.choice(options) for t, options in choices.items()}
        (folder / f"f{k:03d}.toml").write_text(_toml(claims), encoding="utf-8")
    kinds = [_code(), _code(transpose=True), _code("1 / 0"), _code().replace("dz2 @ a1.T", "-(dz2 @ a1.T)")]
    for k in range(code):
        (folder / f"c{k:03d}").mkdir()
        (folder / f"c{k:03d}" / "backward.py").write_text(rng.choice(kinds), encoding="utf-8")
    return folder


def write_distinct_class(folder: Path, formulas: int = 100) -> Path:
    """A class in which no two answers are equal (for the benchmark's scaling of the judging itself, which
    equal answers judged once would hide): student k scales each right answer by its own factor
    (``(k + 2) * dz1 @ x.T``, ``dz1 / (k + 2)``, ...), so every claim is judged, and diagnosed, on its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(formulas):
        c = k + 2
        claims = {"W1": f"{c} * dz1 @ x.T", "b1": f"dz1 / {c}", "W2": f"dz2 @ a1.T * {c + 1} / {c}",
                  "b2": f"{c} * dz2 / {c + 1}", "z1": f"(W2.T @ dz2) * step(z1) * {c}"}
        (folder / f"d{k:03d}.toml").write_text(_toml(claims), encoding="utf-8")
    return folder
