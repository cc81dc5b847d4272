"""Grading a class's answers: ``symbp grade assignment.toml submissions/``.

How it works:

1. **The assignment** is a spec file (:mod:`symbp.spec`) whose ``[model]`` is the network, whose
   ``[rubric]`` gives each target's points (``W1 = 2``) and whose optional ``[limits]`` bound the
   students' code. A bad assignment is the only bad input of the command (exit 2, nothing written).
2. **The submissions** (:func:`discover`): one folder per student holding ``answers.toml`` (its
   ``[claims]``) and/or ``backward.py`` (function ``backward``), or one ``<student>.toml``. What cannot
   be read (not TOML, an empty folder, a claim that does not parse) becomes a line in the student's
   ``notes`` and 0 points for what it concerns; the run goes on.
3. **Equal answers judged once** (:func:`normal_form`): each formula is parsed by the whitelist parser
   and evaluated on free symbols, one per entry of every name (``W2``, ``a1``, ``dz2``...), to a SymPy
   matrix; its ``srepr`` (after ``expand`` on small entries) is the answer's key. ``dz2 @ a1.T``,
   ``outer(dz2, a1)`` and ``(a1 @ dz2.T).T`` give the same matrix of products and are judged once;
   spacing and parentheses never matter. Two keys are equal only when the two formulas are the same
   function of the network's values, so sharing a verdict can never turn a wrong answer into a right
   one. A formula whose shapes do not fit is keyed by its text without blanks.
4. **Tasks** (:func:`judge_task`): one per submission, holding its code (if any) and the formulas
   whose key no earlier submission had; sent in batches to local worker processes
   (``--workers K``, default the number of cores; 1 runs in this process) or to a Dask cluster
   (``--scheduler tcp://host:port``, :mod:`distributed`). Each worker process builds the network and
   its derivation once (:func:`context`, cached by the assignment's text) and reuses it for every
   task. The tasks are the same whichever executor runs them, so the grades are identical.
5. **Code** runs through :mod:`symbp.usercode` in a child process under ``[limits]``: a copy of the
   student's ``backward.py`` in a fresh temporary folder that is also its working directory, ``HOME``
   and ``TMPDIR``, with what it prints discarded. A crash, a hang, ``sys.exit``, a memory bomb or
   gigabytes of output give ``error`` on every gradient it was to deliver, with what happened.
6. **Points** (:func:`credit`): a target earns ``points * credit``: 1 when the answer holds, 1/2 for a
   slip that keeps the structure of the answer (``transposed``, ``sign``, ``scaled``), 1/4 for a named
   conceptual mistake (``missing-activation-derivative``, ``extra-activation-derivative`` and the
   named mistakes of a layer's op row), 0 for ``shape``, ``other``, ``error`` and no answer. A target
   answered both as a formula and by code counts once, with the better of the two (the formula on a
   tie).
7. **Outputs** (:func:`write`): ``grades.csv``, ``<student>.json`` (verify's JSON, every result with
   its ``points``), ``<student>/results.json`` (Gradescope's autograder format) and ``report.pdf``
   (score histogram, outcomes per target), written to a temporary folder first and moved into place.

Isolation is what a process can arrange, no more. Where Linux offers Landlock (5.13 and later) the
child confines itself before importing the student's module (:func:`symbp._usercode_child.confine`):
it may read only the Python installation, the folders on ``sys.path`` and the system's libraries, and
write only its own temporary folder, so opening another submission or the results folder is a
``PermissionError`` (an ``error`` verdict naming it). Without Landlock there is no such confinement.
Either way the code runs with the grader's user rights otherwise: it can use the network, see other
processes, and read anything under ``sys.path``. It cannot stop the run, use more memory than
``memory_mb``, run past ``seconds``, or touch the grades (written only after every task is done). Run
untrusted code in a container (one grading run per class, the submissions mounted read-only, no
network, the results folder outside it).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SymbpError

#: What each outcome earns, as a fraction of the target's points (see the module docstring).
CREDIT = {"holds": 1.0, "transposed": 0.5, "sign": 0.5, "scaled": 0.5,
          "missing-activation-derivative": 0.25, "extra-activation-derivative": 0.25,
          "shape": 0.0, "other": 0.0}
#: A failing answer named after a layer's own mistake (``op.mistakes``, e.g. ``dropout-without-the-scale``).
NAMED_MISTAKE_CREDIT = 0.25
#: Entries of a target up to which :func:`normal_form` expands (bigger ones keep SymPy's automatic form).
EXPAND_ENTRIES = 400
#: Formulas whose writing out on symbols takes more scalar operations are keyed by their tree instead.
SYMBOLIC_WORK = 50_000
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ANSWERS, CODE = "answers.toml", "backward.py"


# --------------------------------------------------------------------------- the assignment


@dataclass(frozen=True)
class Assignment:
    """An assignment: its text (what a worker rebuilds it from), path, spec and rubric."""

    text: str
    path: str
    spec: object
    rubric: dict


def load_assignment(path) -> Assignment:
    """Read an assignment spec: ``[model]`` (or ``[[layers]]``), ``[rubric]``, optional ``[limits]``."""
    from .spec import loads, read

    path = Path(path)
    text = read(path, "assignment file")
    spec = loads(text, path=path, steps=("build", "derive", "verify"))
    if not spec.rubric:
        raise SymbpError(f"{path}: no [rubric] table (points per target, e.g. W1 = 2)")
    return Assignment(text, str(path.resolve()), spec, dict(spec.rubric))


@dataclass
class Context:
    """What every task of one worker process shares: the network and its derivation."""

    net: object
    grads: object
    limits: dict


@functools.lru_cache(maxsize=4)
def context(text: str, path: str) -> Context:
    """The network and derivation of an assignment, built once per process (cached by its text)."""
    from .derive import derive
    from .spec import loads

    spec = loads(text, path=path, steps=("build", "derive", "verify"))
    return Context(spec.net, derive(spec.net, method="chain"), spec.limits)


# --------------------------------------------------------------------------- submissions


@dataclass
class Submission:
    """One student's work: ``claims`` {target: text}, ``code`` (a path or None), ``notes`` (one line
    each: what could not be read), ``problem`` (why nothing could be graded, or None)."""

    student: str
    source: str
    claims: dict = field(default_factory=dict)
    code: str | None = None
    notes: list = field(default_factory=list)
    problem: str | None = None


def _student_id(name: str, taken: set, notes: list) -> str:
    stem = name
    student = stem if SAFE_NAME.fullmatch(stem) else \
        re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]", "_", stem)).strip("._-")[:100]
    student = student or "student"
    if student != stem:
        notes.append(f"the name {stem!r} has characters other than letters, digits, '.', '_', '-': "
                     f"its results are named {student!r}")
    base, k = student, 2
    while student.lower() in taken:
        student, k = f"{base}-{k}", k + 1
    taken.add(student.lower())
    return student


def _read_claims(file: Path, sub: Submission, targets):
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return f"{file.name}: cannot be read ({type(exc).__name__})"
    except tomllib.TOMLDecodeError as exc:
        return f"{file.name}: not valid TOML: {exc}"
    for key in data:
        if key != "claims":
            sub.notes.append(f"{file.name}: table [{key}] ignored (answers go in [claims])")
    claims = data.get("claims", {})
    if not isinstance(claims, dict):
        return f"{file.name}: 'claims' must be a table [claims]"
    for target, text in claims.items():
        if target not in targets:
            sub.notes.append(f"{file.name}: claims.{target}: no gradient named '{target}'; ignored")
        elif not isinstance(text, str):
            sub.notes.append(f"{file.name}: claims.{target}: expected a formula string, got {text!r}")
            sub.claims[target] = None
        else:
            sub.claims[target] = text
    return None


def discover(folder, net) -> tuple[list, list]:
    """The submissions in ``folder`` (sorted by name) and the lines about entries that are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SymbpError(f"no such submissions folder: {folder}")
    targets = set(net.targets)
    subs, skipped, taken = [], [], set()
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            notes = []
            sub = Submission(_student_id(entry.name, taken, notes), entry.name, notes=notes)
            answers, code = entry / ANSWERS, entry / CODE
            others = sorted(p.name for p in entry.iterdir()
                            if p.name not in (ANSWERS, CODE) and not p.name.startswith("."))
            if others:
                sub.notes.append(f"ignored {', '.join(others)} (a submission is {ANSWERS} and/or {CODE})")
            if not answers.is_file() and not code.is_file():
                sub.problem = f"empty folder: no {ANSWERS} and no {CODE}"
            if code.is_file():
                sub.code = str(code.resolve())
            if answers.is_file():
                problem = _read_claims(answers, sub, targets)
                if problem and sub.code:
                    sub.notes.append(problem)
                elif problem:
                    sub.problem = problem
            subs.append(sub)
        elif entry.suffix == ".toml":
            notes = []
            sub = Submission(_student_id(entry.stem, taken, notes), entry.name, notes=notes)
            sub.problem = _read_claims(entry, sub, targets)
            subs.append(sub)
        else:
            skipped.append(f"{entry.name}: not a submission (a folder, or a <student>.toml file); ignored")
    for sub in subs:
        if sub.problem is None and not sub.code and not any(t for t in sub.claims.values()):
            sub.problem = "no answers: [claims] is empty"
    return subs, skipped


# --------------------------------------------------------------------------- equal answers


@functools.lru_cache(maxsize=4)
def _symbol_env(net):
    from .formula import known_shapes

    env = {}
    for name in known_shapes(net):
        if name == "N":
            continue
        if name.startswith("d") and name[1:] in net.params + net.intermediates:
            env[name] = net.grad_symbols(name[1:])
        elif name == "a0":
            env[name] = net.symbols("x")
        else:
            env[name] = net.symbols(name)
    return env


def normal_form(text: str, net, target: str):
    """``(key, node_or_error)``: a key equal for equal formulas, and the parsed tree (or the
    :class:`~symbp.formula.FormulaError` when the text is no formula of this network).

    >>> import symbp
    >>> net = symbp.MLP([3, 4, 2])
    >>> keys = {normal_form(t, net, "W2")[0] for t in ["dz2 @ a1.T", "outer(dz2, a1)", "((a1 @ dz2.T)).T"]}
    >>> len(keys)
    1
    >>> normal_form("dz2 @ a1", net, "W2")[0] == normal_form("dz2@a1", net, "W2")[0]
    True
    """
    import sympy as sp

    from .formula import FormulaError, _unparse, evaluate, parse

    try:
        node = parse(text, net, what=f"claims.{target}")
    except FormulaError as exc:
        if exc.kind != "shape":
            return None, exc
        return "text:" + "".join(text.split()), exc
    if _work(node) > SYMBOLIC_WORK:  # too big to write out: equal trees (spacing, parentheses) still merge
        return hashlib.sha256(f"{target}|tree:{_unparse(node)}".encode()).hexdigest(), node
    env = {name: value for name, value in _symbol_env(net).items() if name in node.names() or name == "x"}
    try:
        matrix = evaluate(node, env, N=net.batch)
        if len(matrix) <= EXPAND_ENTRIES:
            matrix = matrix.applyfunc(sp.expand)
        form = sp.srepr(matrix)
    except Exception:  # noqa: BLE001 - SymPy could not write it out: the text is the key
        form = "text:" + "".join(text.split())
    return hashlib.sha256(f"{target}|{form}".encode()).hexdigest(), node


def _work(node) -> float:
    """About how many scalar operations writing ``node`` out on symbols takes."""
    total = 0
    try:
        for n in node.walk():
            rows, cols = n.shape
            total += int(rows) * int(cols) * (int(n.args[0].shape[1]) if n.op == "matmul" else 1)
    except (TypeError, ValueError):
        return float("inf")
    return total


# --------------------------------------------------------------------------- the tasks


def judge_task(text: str, path: str, task: dict) -> dict:
    """Judge one submission's new formulas and its code (in a worker process): ``{"formulas": {key:
    result json}, "code": [result json] | None, "failure": str | None}``."""
    from .usercode import CodeFile
    from .verify import verify

    out = {"formulas": {}, "code": None, "failure": None}
    ctx = context(text, path)
    formulas = task["formulas"]
    if formulas:
        try:
            report = verify(ctx.net, {t: s for _, t, s in formulas}, grads=ctx.grads)
            for (key, _, _), result in zip(formulas, report.results):
                out["formulas"][key] = _result_json(result)
        except Exception:  # noqa: BLE001 - one at a time, so one bad claim costs only itself
            for key, target, claim in formulas:
                try:
                    out["formulas"][key] = _result_json(verify(ctx.net, {target: claim}, grads=ctx.grads).results[0])
                except Exception as exc:  # noqa: BLE001 - a claim symbp cannot judge is undecided
                    out["formulas"][key] = {"target": target, "claim": claim, "verdict": "error", "method": None,
                                            "diagnosis": None, "factor": None, "element": None, "expected": None,
                                            "got": None, "detail": f"symbp could not judge it: {exc}",
                                            "assumptions": []}
    if task["code"]:
        with tempfile.TemporaryDirectory(prefix="symbp-grade-") as work:
            copy = Path(work) / CODE
            try:
                shutil.copyfile(task["code"], copy)
                code = CodeFile(copy, "backward", ctx.limits["seconds"], ctx.limits["memory_mb"], cwd=Path(work),
                                quiet=True, confine=True)
                out["code"] = [_result_json(r) for r in verify(ctx.net, code, grads=ctx.grads).results]
            except SymbpError as exc:  # backward.py defines no function backward
                out["failure"] = str(exc).replace("code.function: ", "")
            except OSError as exc:
                out["failure"] = f"{CODE}: cannot be read ({exc.strerror})"
    return out


def _result_json(result) -> dict:
    data = result.to_json()
    data["assumptions"] = list(result.assumptions)
    return data


def _run_tasks(assignment, tasks, workers, scheduler, progress):
    """Every task's answer, in order, on the chosen executor."""
    text, path = assignment.text, assignment.path
    if not tasks:
        return []
    if scheduler:
        return _run_dask(text, path, tasks, scheduler, progress)
    if workers <= 1:
        out = []
        for task in tasks:
            out.append(_guarded(text, path, task))
            progress.update(1)
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = _start_method()
    if start == "fork":
        context(text, path)
    chunk = max(1, len(tasks) // (4 * workers))
    out = []
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start)) as pool:
            for answer in pool.map(_guarded, [text] * len(tasks), [path] * len(tasks), tasks, chunksize=chunk):
                out.append(answer)
                progress.update(1)
    except Exception:  # noqa: BLE001 - a worker killed (BrokenProcessPool: the OOM killer), a task lost: the rest here
        for task in tasks[len(out):]:
            out.append(_guarded(text, path, task))
            progress.update(1)
    return out


# Frameworks whose native thread pools make a forked child deadlock-prone (JAX warns so itself; torch's
# OpenMP pool can hang in a child that computes): once imported, workers never fork.
_THREADED_MODULES = ("jax", "jaxlib", "torch")


def _start_method():
    """How local workers start: "fork" inherits this process's derivation (built once, here), but only
    while this process runs one thread and no threaded framework is loaded (a Dask client, a progress
    bar, JAX or torch make fork unsafe); otherwise a forkserver (spawn where there is none), and each
    worker builds its own derivation once."""
    import multiprocessing
    import threading

    single = threading.active_count() == 1 and not any(name in sys.modules for name in _THREADED_MODULES)
    if single and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _guarded(text, path, task):
    """:func:`judge_task`, with anything unforeseen turned into the submission's failure."""
    try:
        return judge_task(text, path, task)
    except Exception as exc:  # noqa: BLE001 - one submission never stops the run
        return {"formulas": {}, "code": None, "failure": f"symbp could not grade it: {type(exc).__name__}: {exc}"}


#: Seconds a Dask scheduler is given to have at least one worker before the run is refused.
WORKER_WAIT = 60.0


def _run_dask(text, path, tasks, scheduler, progress):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SymbpError("--scheduler needs dask.distributed: pip install 'symbp[grade]'") from None
    try:
        client = Client(scheduler, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SymbpError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    try:
        try:  # a scheduler without workers would hold every task forever
            client.wait_for_workers(1, timeout=WORKER_WAIT)
        except TimeoutError:
            raise SymbpError(f"--scheduler {scheduler}: no worker joined within {WORKER_WAIT:g} s "
                             f"(start one with: dask worker {scheduler})") from None
        shared = client.scatter((text, path), broadcast=True)  # one copy per worker, not per task
        futures = client.map(_dask_task, tasks, assignment=shared, batch_size=max(1, len(tasks) // 8),
                             pure=False, retries=0)
        index = {f.key: k for k, f in enumerate(futures)}
        out = [None] * len(tasks)
        for future in as_completed(futures):
            try:
                out[index[future.key]] = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker lost: that submission's failure
                out[index[future.key]] = {"formulas": {}, "code": None,
                                          "failure": f"the grading worker failed: {type(exc).__name__}: {exc}"}
            progress.update(1)
        return out
    finally:
        client.close()


def _dask_task(task, assignment):
    return _guarded(assignment[0], assignment[1], task)


# --------------------------------------------------------------------------- points and words


def credit(result: dict) -> float:
    """The fraction of a target's points a result earns (see the module docstring).

    >>> credit({"verdict": "holds"}), credit({"verdict": "fails", "diagnosis": "transposed"})
    (1.0, 0.5)
    >>> credit({"verdict": "fails", "diagnosis": "dropout-without-the-scale"}), credit({"verdict": "error"})
    (0.25, 0.0)
    """
    if result["verdict"] == "holds":
        return 1.0
    if result["verdict"] != "fails":
        return 0.0
    diagnosis = result.get("diagnosis") or "other"
    return CREDIT.get(diagnosis, NAMED_MISTAKE_CREDIT)


def _fraction(value) -> str:
    from fractions import Fraction

    f = Fraction(value).limit_denominator(1000)
    return str(f) if abs(float(f) - value) < 1e-12 else f"{value:.6g}"


def words(result: dict) -> str:
    """What a result means, for the student.

    >>> words({"verdict": "fails", "diagnosis": "sign", "element": None})
    'Wrong sign: the negative of your answer is right.'
    """
    verdict, diagnosis = result["verdict"], result.get("diagnosis")
    if verdict == "holds":
        text = "Correct."
        if result.get("assumptions"):
            text = f"Correct (given that {'; '.join(result['assumptions'])})."
        return text
    if verdict == "error":
        return f"Not graded: {result.get('detail') or 'no answer'}."
    text = {
        "transposed": "Transposed: the transpose of your answer is right (check the order of the product).",
        "sign": "Wrong sign: the negative of your answer is right.",
        "scaled": "Off by a constant factor: the right answer is {factor} times yours "
                  "(a missing or doubled 1/N of the mean over the batch is the usual cause).",
        "missing-activation-derivative": "A factor f'(z) of the chain rule is missing: multiply by the "
                                         "activation's derivative where it belongs.",
        "extra-activation-derivative": "An activation's derivative f'(z) is multiplied in where it does not belong.",
        "shape": "Wrong shape: {detail}.",
        "other": "Not the gradient, and not one of the usual mistakes.",
    }.get(diagnosis or "other", "The usual mistake '{diagnosis}' of this layer: {detail}.")
    factor = result.get("factor")
    text = text.format(factor=_fraction(factor) if factor else "a constant", detail=result.get("detail", ""),
                       diagnosis=diagnosis)
    if result.get("expected") is not None and result.get("got") == result.get("claim"):
        text += f" For all sizes, the right answer is {result['expected']}."  # verify's general form
    elif result.get("element") is not None and result.get("expected") is not None:
        i, j = result["element"]
        text += f" At entry ({i + 1}, {j + 1}) the gradient is {result['expected']}, your answer gives {result['got']}."
    return text


# --------------------------------------------------------------------------- grading


@dataclass
class Grade:
    """One student's grade: ``results`` one per rubric target (verify's JSON plus ``points``,
    ``max_points``, ``source`` and ``words``), ``total``, ``notes``, ``problem``."""

    student: str
    source: str
    results: list
    total: float
    max_total: float
    notes: list
    problem: str | None = None
    assumptions: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"student": self.student, "source": self.source, "total": self.total, "max_total": self.max_total,
                "ok": bool(self.results) and all(r["verdict"] == "holds" for r in self.results),
                "assumptions": self.assumptions, "problem": self.problem, "notes": self.notes,
                "results": self.results}


@dataclass
class Grading:
    """A graded class: ``grades`` per student, ``skipped`` (entries that are no submission), and the
    counts of equal answers: ``formulas`` answered, ``judged`` distinct ones judged."""

    assignment: Assignment
    grades: list
    skipped: list
    formulas: int
    judged: int
    seconds: float

    @property
    def hit_rate(self) -> float:
        return 1 - self.judged / self.formulas if self.formulas else 0.0

    def to_json(self) -> dict:
        return {"ok": True, "students": [{"student": g.student, "total": g.total, "max_total": g.max_total,
                                          "problem": g.problem, "notes": g.notes} for g in self.grades],
                "skipped": self.skipped, "rubric": self.assignment.rubric,
                "equal_answers": {"formulas": self.formulas, "judged": self.judged, "hit_rate": self.hit_rate}}


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def grade(assignment, submissions, *, workers: int | None = None, scheduler: str | None = None,
          progress: bool | None = None) -> Grading:
    """Grade every submission in the folder ``submissions`` against ``assignment`` (a path or an
    :class:`Assignment`). ``workers``: local processes (default: the cores; 1 runs here);
    ``scheduler``: a Dask scheduler's address instead; ``progress``: a progress bar on stderr (None: on
    a terminal only)."""
    if not isinstance(assignment, Assignment):
        assignment = load_assignment(assignment)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SymbpError(f"--workers: expected a whole number >= 1, got {workers!r}")
    start = time.perf_counter()
    net = assignment.spec.net
    subs, skipped = discover(submissions, net)
    seen, tasks, keys, formulas = set(), [], [], 0
    for sub in subs:
        task, mine = {"formulas": [], "code": sub.code}, {}
        for target, text in sub.claims.items():
            if text is None or target not in assignment.rubric:
                continue
            formulas += 1
            key, node = normal_form(text, net, target)
            if key is None:  # no formula of this network: a note and no points
                mine[target] = ("bad", str(node))
                continue
            mine[target] = ("key", key)
            if key not in seen:
                seen.add(key)
                task["formulas"].append((key, target, text))
        keys.append(mine)
        tasks.append(task)
    bar = _bar(len(tasks), progress)
    try:
        answers = _run_tasks(assignment, tasks, workers or os.cpu_count() or 1, scheduler, bar)
    finally:
        bar.close()
    judged = {}
    for answer in answers:
        judged.update(answer["formulas"])
    grades = [_grade_one(assignment, sub, mine, answer, judged) for sub, mine, answer in zip(subs, keys, answers)]
    return Grading(assignment, grades, skipped, formulas, len(seen), time.perf_counter() - start)


def _bar(total, wanted):
    import sys

    if wanted is False or (wanted is None and not sys.stderr.isatty()):
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    tqdm.monitor_interval = 0  # no monitor thread: the local workers may then be forked
    return tqdm(total=total, desc="symbp grade", unit="student", file=sys.stderr)


def _unanswered(target, detail):
    return {"target": target, "claim": None, "verdict": "error", "method": None, "diagnosis": None, "factor": None,
            "element": None, "expected": None, "got": None, "detail": detail, "assumptions": []}


def _grade_one(assignment, sub, mine, answer, judged) -> Grade:
    notes = list(sub.notes)
    if answer["failure"]:
        failure = answer["failure"]
        notes.append(failure if failure.startswith(f"'{CODE}'") else f"{CODE}: {failure}")
    code = {r["target"]: r for r in answer["code"] or []}
    failed = {r["detail"] for r in code.values() if r["verdict"] == "error"}
    if code and len(failed) == 1 and all(r["verdict"] == "error" for r in code.values()):
        notes.append(f"{CODE}: {failed.pop()}")  # a crash, a hang, an exit: what happened, once
    results, total = [], 0.0
    for target, points in assignment.rubric.items():
        options = []
        kind = mine.get(target)
        if kind is not None and kind[0] == "key":
            result = dict(judged[kind[1]], claim=sub.claims[target])
            options.append(("formula", result))
        elif kind is not None:
            notes.append(kind[1])
            options.append(("formula", _unanswered(target, f"the formula cannot be read: {kind[1]}")))
        if target in code:
            options.append(("code", dict(code[target])))
        if not options:
            why = sub.problem or (answer["failure"] if answer["failure"] and not code
                                  else "no answer for dL/d" + target)
            options.append(("none", _unanswered(target, why)))
        source, best = max(options, key=lambda o: (credit(o[1]), o[0] == "formula"))
        best["points"] = _round(points * credit(best))
        best["max_points"] = points
        best["source"] = source
        best["words"] = words(best)
        total += best["points"]
        results.append(best)
    missing = [r["target"] for r in results if r["source"] == "none"]
    if sub.problem:
        notes.append(sub.problem)
    elif len(missing) == len(results):
        notes.append("answers none of the rubric's targets")
    elif missing:
        notes.append(f"no answer for {', '.join('dL/d' + t for t in missing)}")
    assumptions = []
    for r in results:
        assumptions += [a for a in r.get("assumptions", []) if a not in assumptions]
    return Grade(sub.student, sub.source, results, _round(total), _round(sum(assignment.rubric.values())),
                 list(dict.fromkeys(notes)), sub.problem, assumptions)


def _round(x):
    x = round(float(x), 6)
    return int(x) if x == int(x) else x


# --------------------------------------------------------------------------- outputs


def csv_text(grading: Grading) -> str:
    """``grades.csv``: ``student, total`` and one column per rubric target."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    targets = list(grading.assignment.rubric)
    writer.writerow(["student", "total"] + targets)
    for g in grading.grades:
        writer.writerow([g.student, g.total] + [r["points"] for r in g.results])
    return buffer.getvalue()


def gradescope(g: Grade) -> dict:
    """Gradescope's autograder ``results.json``: a test per rubric target."""
    tests = []
    for number, r in enumerate(g.results, 1):
        output = r["words"]
        if r["claim"]:
            output = f"Your answer ({r['source']}): {r['claim']}\n{output}"
        tests.append({"name": f"dL/d{r['target']}", "number": str(number), "score": r["points"],
                      "max_score": r["max_points"], "status": "passed" if r["verdict"] == "holds" else "failed",
                      "output": output, "visibility": "visible"})
    return {"score": g.total, "output": "\n".join(g.notes), "visibility": "visible", "tests": tests}


def write(grading: Grading, out) -> list:
    """Write every output into the folder ``out`` (staged in a temporary folder beside it, then
    moved in, so an interrupted run leaves no partial file). Returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".symbp-grade-", dir=out))
    try:
        files = {"grades.csv": csv_text(grading)}
        for g in grading.grades:
            files[f"{g.student}.json"] = json.dumps(g.to_json(), indent=2) + "\n"
            files[f"{g.student}/results.json"] = json.dumps(gradescope(g), indent=2) + "\n"
        for name, text in files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_text(text, encoding="utf-8")
        from .grade_report import report_pdf

        report_pdf(grading, stage / "report.pdf")
        written = []
        for name in list(files) + ["report.pdf"]:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, out / name)
            written.append(out / name)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def summary(grading: Grading) -> str:
    """The lines the command prints: one per student, the notes, the equal-answer count."""
    lines = [f"{line}" for line in grading.skipped]
    width = max([len(g.student) for g in grading.grades] + [7])
    for g in grading.grades:
        lines.append(f"{g.student:<{width}}  {g.total:>6g} / {g.max_total:g}")
        lines += [f"{'':<{width}}  {note}" for note in g.notes]
    lines.append(f"{len(grading.grades)} submissions graded in {grading.seconds:.1f} s; {grading.formulas} formulas, "
                 f"{grading.judged} distinct judged (equal answers: {100 * grading.hit_rate:.0f}% judged once)")
    return "\n".join(lines)
