"""symbp grade: a generated class of 30 students (tests/grade_class.py) graded with every verdict,
diagnosis and point asserted, in every output format; the same class on a 2-worker Dask LocalCluster."""

import csv
import io
import json
import sys
from pathlib import Path

import pytest

import symbp
from symbp.errors import SymbpError
from symbp.grade import credit, csv_text, discover, grade, gradescope, load_assignment, normal_form, write

sys.path.insert(0, str(Path(__file__).parent))
import grade_class as gc  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    (root / "assignment.toml").write_text(gc.ASSIGNMENT)
    gc.write_class(root / "subs")
    return root


@pytest.fixture(scope="module")
def graded(klass):
    return grade(klass / "assignment.toml", klass / "subs", workers=2, progress=False)


def _rows(grading):
    return {g.student: g for g in grading.grades}


def test_every_student_every_target(graded):
    want = gc.expected()
    got = _rows(graded)
    assert sorted(got) == sorted(want)
    for student, (expect, note) in want.items():
        g = got[student]
        outcome = {r["target"]: (r["verdict"], r["diagnosis"], r["points"]) for r in g.results}
        assert outcome == expect, student
        assert g.total == sum(p for _, _, p in expect.values()), student
        if note:
            assert any(note in line for line in g.notes), (student, g.notes)
    assert graded.skipped == ["README.md: not a submission (a folder, or a <student>.toml file); ignored"]


def test_what_happened_to_code(graded):
    g = _rows(graded)
    detail = {s: g[s].results[0]["detail"] for s in g}
    assert detail["s17-code-crash"] == "backward raised ZeroDivisionError: division by zero (backward.py, line 4)"
    assert detail["s18-code-hang"] == "backward ran past 2 s"
    assert detail["s19-code-sys-exit"] == "backward called sys.exit(3) (backward.py, line 5)"
    assert detail["s20-code-memory-bomb"] == "backward used more than 400 MB"
    assert detail["s21-code-huge-output"] == "backward ran past 2 s"
    assert detail["s27-os-exit"] == "backward: the process exited with status 7 before returning"
    assert detail["s23-not-python"].startswith("importing backward.py raised SyntaxError")
    # code answers count where they are better; the formula wins a tie
    assert [r["source"] for r in g["s24-both-formula-wrong-code-right"].results] == ["code"] + ["formula"] * 4
    assert [r["source"] for r in g["s25-both-formula-right-code-wrong"].results] == ["formula"] * 5
    assert g["s15-code-right"].results[4]["source"] == "none"  # code delivers no dL/dz1


def test_equal_answers_judged_once(graded):
    # 81 formulas on rubric targets; distinct: the 5 right answers, the 4 wrong-but-readable ones of
    # s04-s10 (7 mistakes, 2 of them the same transposed W2 of s04 and Zoë, plus b1 -dz1 twice) and the
    # wrong formula of s24 (-dz1 @ x.T). The rewritings (s02, s03, s30) all hit.
    assert graded.formulas == 81
    assert graded.judged == 13
    assert round(graded.hit_rate, 4) == round(1 - 13 / 81, 4)


def test_normal_form():
    net = symbp.MLP([3, 4, 2])
    key = normal_form("dz2 @ a1.T", net, "W2")[0]
    for same in ["outer(dz2, a1)", "(a1 @ dz2.T).T", "  dz2@a1.T ", "((dz2) @ (a1.T))", "1 * dz2 @ a1.T"]:
        assert normal_form(same, net, "W2")[0] == key, same
    for other in ["a1 @ dz2.T", "-dz2 @ a1.T", "dz2 @ relu(z1).T", "dz2 @ a1.T / 2"]:
        assert normal_form(other, net, "W2")[0] != key, other
    assert normal_form("dz2", net, "b2")[0] != normal_form("dz2", net, "z2")[0]  # per target
    assert normal_form("dz2 @@ a1", net, "W2")[0] is None


def test_normal_form_of_big_formulas_is_the_tree(monkeypatch):
    import symbp.grade as grade_module

    net = symbp.MLP([3, 4, 2])
    monkeypatch.setattr(grade_module, "SYMBOLIC_WORK", 0)
    key = normal_form("dz2 @ a1.T", net, "W2")[0]
    assert normal_form(" ((dz2)) @ (a1.T) ", net, "W2")[0] == key
    assert normal_form("outer(dz2, a1)", net, "W2")[0] != key  # equal, but only the symbols would tell


def test_credit_table():
    assert [credit({"verdict": "fails", "diagnosis": d}) for d in
            ["transposed", "sign", "scaled", "missing-activation-derivative", "extra-activation-derivative",
             "shape", "other", None]] == [0.5, 0.5, 0.5, 0.25, 0.25, 0, 0, 0]


def test_outputs(graded, tmp_path):
    written = write(graded, tmp_path / "results")
    out = tmp_path / "results"
    rows = list(csv.reader(io.StringIO((out / "grades.csv").read_text())))
    assert rows[0] == ["student", "total", "W1", "b1", "W2", "b2", "z1"]
    want = gc.expected()
    assert [r[0] for r in rows[1:]] == sorted(want, key=lambda s: [g.student for g in graded.grades].index(s))
    for row in rows[1:]:
        expect = want[row[0]][0]
        points = [expect[t][2] for t in gc.TARGETS]
        assert row[1:] == [f"{sum(points):g}"] + [f"{p:g}" for p in points], row
    assert rows[1] == ["Zo_nal_copy", "6.5", "2", "0.5", "1", "1", "2"]
    assert rows[2] == ["s01-right", "8", "2", "1", "2", "1", "2"]
    # one JSON per student: verify's keys plus points
    data = json.loads((out / "s04-W2-transposed.json").read_text())
    assert data["total"] == 7 and data["max_total"] == 8 and data["ok"] is False
    w2 = data["results"][2]
    assert {k: w2[k] for k in ("target", "claim", "verdict", "diagnosis", "points", "max_points", "source")} == \
        {"target": "W2", "claim": "a1 @ dz2.T", "verdict": "fails", "diagnosis": "transposed", "points": 1,
         "max_points": 2, "source": "formula"}
    assert w2["method"] in ("symbolic", "exact-random", "all-sizes", "numeric")
    assert w2["words"].startswith("Transposed: the transpose of your answer is right")
    # Gradescope
    gs = json.loads((out / "s04-W2-transposed" / "results.json").read_text())
    assert gs["score"] == 7
    assert [(t["name"], t["score"], t["max_score"], t["status"]) for t in gs["tests"]] == [
        ("dL/dW1", 2, 2, "passed"), ("dL/db1", 1, 1, "passed"), ("dL/dW2", 1, 2, "failed"),
        ("dL/db2", 1, 1, "passed"), ("dL/dz1", 2, 2, "passed")]
    assert gs["tests"][2]["output"].startswith("Your answer (formula): a1 @ dz2.T\nTransposed")
    crash = json.loads((out / "s17-code-crash" / "results.json").read_text())
    assert crash["score"] == 0 and "ZeroDivisionError" in crash["tests"][0]["output"]
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages") == 3  # 1 + 5 targets / 4
    first = pdf
    write(graded, out)
    assert (out / "report.pdf").read_bytes() == first  # no creation date: the same class, the same file
    assert len(written) == 1 + 2 * len(want) + 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_same_grades_on_a_dask_local_cluster(klass, graded):
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                                  dashboard_address=None) as cluster:
        on_dask = grade(klass / "assignment.toml", klass / "subs", scheduler=cluster.scheduler_address,
                        progress=False)
    assert csv_text(on_dask) == csv_text(graded)
    for a, b in zip(on_dask.grades, graded.grades):
        assert a.to_json() == b.to_json()
        assert gradescope(a) == gradescope(b)
    assert (on_dask.formulas, on_dask.judged) == (graded.formulas, graded.judged)


def test_a_dask_scheduler_without_workers_is_refused_in_one_line_not_waited_on(klass, monkeypatch):
    import distributed

    from symbp import grade as grade_module

    monkeypatch.setattr(grade_module, "WORKER_WAIT", 2.0)
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        with pytest.raises(SymbpError) as raised:
            grade(klass / "assignment.toml", klass / "subs", scheduler=cluster.scheduler_address, progress=False)
    assert str(raised.value) == (f"--scheduler {cluster.scheduler_address}: no worker joined within 2 s "
                                 f"(start one with: dask worker {cluster.scheduler_address})")


def test_serial_equals_parallel(klass, graded, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ["s01-right", "s04-W2-transposed", "s16-code-transposed", "s24-both-formula-wrong-code-right"]:
        (subs / name).mkdir()
        for f in (klass / "subs" / name).iterdir():
            (subs / name / f.name).write_bytes(f.read_bytes())
    serial = grade(klass / "assignment.toml", subs, workers=1, progress=False)
    mine = {g.student: g.to_json() for g in graded.grades}
    assert [g.to_json() for g in serial.grades] == [mine[g.student] for g in serial.grades]


def test_code_runs_in_a_fresh_folder(klass, tmp_path):
    subs = tmp_path / "subs"
    (subs / "snoop").mkdir(parents=True)
    (subs / "snoop" / "backward.py").write_text(gc._code(
        "import os\nopen('left-behind.txt', 'w').write(os.getcwd())\n"
        "assert sorted(os.listdir('.')) == ['backward.py', 'left-behind.txt'], os.listdir('.')"))
    g = grade(klass / "assignment.toml", subs, workers=1, progress=False).grades[0]
    assert [r["verdict"] for r in g.results] == ["holds"] * 4 + ["error"]
    assert not (subs / "snoop" / "left-behind.txt").exists()
    assert not list(Path.cwd().glob("left-behind.txt"))


# --------------------------------------------------------------------------- bad input


def test_bad_assignment_is_exit_2_and_writes_nothing(klass, tmp_path, capsys):
    from symbp.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(gc.ASSIGNMENT.replace("z1 = 2", "z9 = 2"))
    assert main(["grade", str(bad), str(klass / "subs"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("symbp grade: error: ") and "rubric: no gradient named 'z9'" in err[0]
    assert not (tmp_path / "out").exists()
    bad.write_text(gc.ASSIGNMENT.split("[rubric]")[0])
    assert main(["grade", str(bad), str(klass / "subs"), "-o", str(tmp_path / "out")]) == 2
    assert "no [rubric] table" in capsys.readouterr().err
    bad.write_text(gc.ASSIGNMENT.replace("W1 = 2", "W1 = -1"))
    with pytest.raises(SymbpError, match=r"rubric.W1: expected a number of points >= 0, got -1"):
        load_assignment(bad)
    assert main(["grade", str(klass / "assignment.toml"), str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]) == 2
    assert "no such submissions folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_json_and_exit_0(klass, tmp_path, capsys):
    from symbp.cli import main

    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ann.toml").write_text(gc._toml(gc.RIGHT))
    (subs / "ben.toml").write_text("not toml [")
    assert main(["grade", str(klass / "assignment.toml"), str(subs), "-o", str(tmp_path / "r"), "--workers", "1",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(s["student"], s["total"]) for s in data["students"]] == [("ann", 8), ("ben", 0)]
    assert data["students"][1]["problem"].startswith("ben.toml: not valid TOML")
    assert (tmp_path / "r" / "grades.csv").read_text().splitlines() == [
        "student,total,W1,b1,W2,b2,z1", "ann,8,2,1,2,1,2", "ben,0,0,0,0,0,0"]


def test_discover_names(tmp_path):
    net = symbp.MLP([3, 4, 2])
    for name in ["a b", "a_b", "A_B2"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "answers.toml").write_text('[claims]\nW1 = "dz1 @ x.T"\n')
    subs, _ = discover(tmp_path, net)
    assert [s.student for s in subs] == ["A_B2", "a_b", "a_b-2"]
    assert len({s.student.lower() for s in subs}) == 3


def test_report_counts(graded):
    from symbp.grade_report import outcomes

    counts = {t: dict(c) for t, c in outcomes(graded).items()}
    # W1: 15 right (formula or code), s10 and s16 transposed, s07 scaled, s08 shape; no answer from
    # s12 (only W2), s13 (not TOML), s14 (empty), s26 (no function backward); 7 code failures
    assert counts["W1"] == {"correct": 15, "not answered": 4, "not graded (error)": 7, "scaled": 1, "shape": 1,
                            "transposed": 2}
    assert counts["W2"] == {"correct": 17, "not answered": 3, "not graded (error)": 8, "transposed": 2}
    assert counts["z1"] == {"correct": 15, "missing-activation-derivative": 1, "not answered": 14}


def test_code_cannot_read_other_submissions_or_write_outside(klass, tmp_path):
    """Landlock (Linux): the code reads only Python and sys.path, writes only its own fresh folder."""
    other = klass / "subs" / "s01-right" / "answers.toml"
    subs = tmp_path / "subs"
    for name, prelude in [("reader", f"open({str(other)!r}).read()"),
                          ("writer", f"open({str(tmp_path / 'planted.txt')!r}, 'w').write('x')"),
                          ("lister", f"import os\nos.listdir({str(klass / 'subs')!r})")]:
        (subs / name).mkdir(parents=True)
        (subs / name / "backward.py").write_text(gc._code(prelude))
    g = _rows(grade(klass / "assignment.toml", subs, workers=1, progress=False))
    assert g["reader"].results[0]["detail"] == \
        f"backward raised PermissionError: [Errno 13] Permission denied: '{other}' (backward.py, line 4)"
    assert g["writer"].results[0]["detail"].startswith("backward raised PermissionError: [Errno 13]")
    assert g["lister"].results[0]["detail"].startswith("backward raised PermissionError: [Errno 13]")
    assert not (tmp_path / "planted.txt").exists()


def _killed_in_a_worker(text, path, task):
    import multiprocessing
    import os
    import signal

    from symbp.grade import judge_task

    if task["code"] and "s17" in task["code"] and multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return judge_task(text, path, task)


def test_a_killed_worker_does_not_stop_the_run(klass, graded, monkeypatch):
    import symbp.grade as grade_module

    monkeypatch.setattr(grade_module, "_guarded", _killed_in_a_worker)
    again = grade(klass / "assignment.toml", klass / "subs", workers=2, progress=False)
    assert csv_text(again) == csv_text(graded)  # the rest graded in this process, the same grades


def test_local_workers_never_fork_once_a_threaded_framework_is_loaded(monkeypatch):
    """JAX (and torch's OpenMP pool) run native threads that threading.active_count() does not see; a
    fork then risks a deadlocked worker, and JAX warns so. Fork only while nothing of the kind is loaded."""
    import threading

    from symbp import grade as grade_module

    for name in grade_module._THREADED_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # earlier tests may leave a thread behind
    assert grade_module._start_method() == "fork"
    monkeypatch.setitem(sys.modules, "jax", object())
    assert grade_module._start_method() == "forkserver"
    monkeypatch.delitem(sys.modules, "jax")
    monkeypatch.setattr(threading, "active_count", lambda: 2)  # a Dask client's or a progress bar's thread
    assert grade_module._start_method() == "forkserver"


def test_a_rubric_may_grade_the_input_gradient(tmp_path):
    """One layer on its own: the rubric's x is the op's backward (loss sum(y * h): y is dL/dh)."""
    dx = ("((dh * g.T) - mean(dh * g.T, axis=1) - ((x - hmean) / sqrt(hvar + 1e-5))"
          " * mean(dh * g.T * (x - hmean) / sqrt(hvar + 1e-5), axis=1)) / sqrt(hvar + 1e-5)")
    (tmp_path / "assignment.toml").write_text(
        '[model]\ninput = 3\nbatch = 2\nloss = "a * y"\nreduction = "sum"\n\n'
        '[[layers]]\nop = "layernorm"\nname = "h"\ngamma = "g"\nbeta = "c"\n\n[rubric]\nx = 2\nc = 1\n')
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ann.toml").write_text(f'[claims]\nx = "{dx}"\nc = "sum(dh, axis=0).T"\n')
    (subs / "ben.toml").write_text(f'[claims]\nx = "-({dx})"\nc = "sum(dh, axis=0).T"\n')
    grading = grade(tmp_path / "assignment.toml", subs, workers=1, progress=False)
    rows = _rows(grading)
    assert (rows["ann"].total, rows["ben"].total) == (3, 2)  # a sign mistake earns half of x's 2
    ben = {r["target"]: r for r in rows["ben"].results}
    assert (ben["x"]["verdict"], ben["x"]["diagnosis"], ben["x"]["points"]) == ("fails", "sign", 1)
    assert csv_text(grading).splitlines()[0] == "student,total,x,c"
