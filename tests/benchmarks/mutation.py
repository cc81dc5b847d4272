"""A sampled mutation test: do the tests fail when the code is wrong?

    python tests/benchmarks/mutation.py                      # 40 mutants per module, seed 0, 2 jobs
    python tests/benchmarks/mutation.py --per-module 5       # a quick look
    python tests/benchmarks/mutation.py --list verify        # every mutant of symbp/verify.py, numbered
    python tests/benchmarks/mutation.py --mutant verify:123  # one mutant again (after adding a test)

How it works:

1. Each target module (``symbp/formula.py``, ``verify.py``, ``derive.py``, ``codegen.py``) is parsed
   with :mod:`ast` and every mutant of the usual operators is listed, in source order:
   a comparison flipped (``<`` -> ``<=``, ``<=`` -> ``<``, ``>`` -> ``>=``, ``>=`` -> ``>``, ``==`` <->
   ``!=``, ``in`` <-> ``not in``, ``is`` <-> ``is not``), ``+`` <-> ``-`` and ``*`` <-> ``/`` (also in
   ``+=``, ``-=``), an int or float constant plus 1, ``True`` <-> ``False``, ``and`` <-> ``or``, a
   ``not`` removed, ``return X`` -> ``return None``. Docstrings, other strings, annotations and
   f-strings are left alone.
2. A fixed-seed sample of ``--per-module`` mutants is drawn from each list.
3. Each mutant is written into a temporary copy of the checkout (``symbp/``, ``tests/``,
   ``templates/``, ``pyproject.toml``; one copy per job; never the working tree) by replacing the
   node's source span with the unparsed mutated node; the edit is checked by parsing the result and
   comparing its AST with the intended one. Byte code is never written, so no stale ``.pyc`` is run.
4. The module's own tests run on it: ``python -m pytest -x -q -p no:cacheprovider
   tests/test_<module>.py symbp/<module>.py`` (the module's doctests too), with a timeout of
   ``--timeout-factor`` times the unmutated run's time (at least 240 s: the machine is shared, and a
   loaded run of a surviving mutant can take three times as long). A failing run (any nonzero exit
   code) kills the mutant; a passing one means it survived; a run past the timeout is counted apart.
   Before the mutants, the unmutated copy must pass and must import its own ``symbp``.

The score is killed / sampled: a timeout is not counted as detected (it may only be a slow machine);
the score with timeouts counted as detected is printed next to it. A surviving mutant is either a
missing test or an equivalent mutant (one that does not change behaviour, e.g. a progress message's
period); the list printed at the end says which line and which change, for a person to judge.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {  # module -> its own test files
    "formula": ["tests/test_formula.py"],
    "verify": ["tests/test_verify.py"],
    "derive": ["tests/test_derive.py"],
    "codegen": ["tests/test_codegen.py"],
}
COPIED = ["symbp", "tests", "templates", "pyproject.toml"]

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
           ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-",
           ast.Mult: "*", ast.Div: "/", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    module: str
    number: int  # position in the module's list (``--mutant module:number``)
    line: int
    what: str  # "a < b -> a <= b"
    walk: int  # the original node's position in ``ast.walk`` of the module
    node: ast.AST  # the original node
    new: ast.AST  # the node that replaces it

    @property
    def name(self):
        return f"{self.module}:{self.number}"


# --------------------------------------------------------------------------- enumerating


def _skipped(tree):
    """Nodes whose mutants are not drawn: docstrings, annotations, f-strings (and all below them)."""
    skip = set()

    def below(node):
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                below(first)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            below(node.returns)
            for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]:
                if a is not None:
                    below(a.annotation)
        if isinstance(node, ast.AnnAssign):
            below(node.annotation)
        if isinstance(node, ast.JoinedStr):
            below(node)
    return skip


def _short(node, limit=60):
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _changes(node):
    """(description, new node) for every mutant of ``node`` itself."""
    out = []
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = copy.deepcopy(node)
                new.ops[k] = _COMPARE[type(op)]()
                out.append((f"{_SYMBOL[type(op)]} -> {_SYMBOL[_COMPARE[type(op)]]}", new))
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINARY:
        new = copy.deepcopy(node)
        new.op = _BINARY[type(node.op)]()
        eq = "=" if isinstance(node, ast.AugAssign) else ""
        out.append((f"{_SYMBOL[type(node.op)]}{eq} -> {_SYMBOL[type(new.op)]}{eq}", new))
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append((f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[type(new.op)]}", new))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("not removed", copy.deepcopy(node.operand)))
    elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
        value = (not node.value) if isinstance(node.value, bool) else node.value + 1
        out.append((f"{node.value!r} -> {value!r}", ast.Constant(value)))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(("return X -> return None", ast.Return(ast.Constant(None))))
    return out


def mutants(module: str) -> list:
    source = (ROOT / "symbp" / f"{module}.py").read_text()
    tree = ast.parse(source)
    skip = _skipped(tree)
    found = []
    for walk, node in enumerate(ast.walk(tree)):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        for what, new in _changes(node):
            found.append((node.lineno, node.col_offset, what, walk, node, new))
    found.sort(key=lambda m: m[:3])
    return [Mutant(module, k, line, f"{_short(node)}: {what}", walk, node, new)
            for k, (line, _, what, walk, node, new) in enumerate(found)]


# --------------------------------------------------------------------------- applying


class _Replace(ast.NodeTransformer):
    def __init__(self, target, new):
        self.target, self.new = target, new

    def visit(self, node):
        if node is self.target:
            return self.new
        return self.generic_visit(node)


def mutated_source(mutant: Mutant, source: str) -> str:
    """``source`` with the mutant's node replaced; checked against the intended AST."""
    lines = source.encode().splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    data = source.encode()
    node = mutant.node
    begin = starts[node.lineno - 1] + node.col_offset
    end = starts[node.end_lineno - 1] + node.end_col_offset
    text = ast.unparse(mutant.new)
    if not isinstance(mutant.node, ast.stmt):
        text = f"({text})"
    new_source = (data[:begin] + text.encode() + data[end:]).decode()
    tree = ast.parse(source)
    same = list(ast.walk(tree))[mutant.walk]
    assert ast.dump(same) == ast.dump(node) and same.lineno == node.lineno, f"{mutant.name}: the source changed"
    intended = _Replace(same, copy.deepcopy(mutant.new)).visit(tree)
    if ast.dump(ast.parse(new_source)) != ast.dump(intended):
        raise AssertionError(f"{mutant.name}: the source edit does not give the intended tree")
    return new_source


# --------------------------------------------------------------------------- running


def _env():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd, cwd, timeout):
    """(exit code or None on timeout, seconds, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, time.perf_counter() - start, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, time.perf_counter() - start, out


def pytest_command(module):
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TARGETS[module],
            f"symbp/{module}.py"]


def make_copy(parent: Path) -> Path:
    where = Path(tempfile.mkdtemp(prefix="copy-", dir=parent))
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, where / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, where / name)
    return where


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default=",".join(TARGETS), help="comma-separated (default: all four)")
    parser.add_argument("--per-module", type=int, default=40, help="mutants drawn per module (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="test runs at a time (default 2)")
    parser.add_argument("--timeout-factor", type=float, default=6.0,
                        help="timeout = this times the unmutated run (at least 240 s; default 6)")
    parser.add_argument("--list", metavar="MODULE", help="print every mutant of MODULE and stop")
    parser.add_argument("--mutant", action="append", default=[], metavar="MODULE:N",
                        help="run these mutants (repeatable) instead of a sample")
    args = parser.parse_args(argv)

    if args.list:
        for m in mutants(args.list):
            print(f"{m.name:<14} symbp/{m.module}.py:{m.line}  {m.what}")
        return 0
    if args.mutant:
        chosen = {}
        for spec in args.mutant:
            module, number = spec.split(":")
            chosen.setdefault(module, []).append(mutants(module)[int(number)])
        listed = {module: len(mutants(module)) for module in chosen}
    else:
        chosen, listed = {}, {}
        for module in args.modules.split(","):
            every = mutants(module)
            listed[module] = len(every)
            sample = random.Random(f"{args.seed}:{module}").sample(every, min(args.per_module, len(every)))
            chosen[module] = sorted(sample, key=lambda m: m.number)

    started = time.perf_counter()
    print(f"# mutation sample, {datetime.date.today()}: python {platform.python_version()}, seed {args.seed}, "
          f"{args.jobs} jobs; command: python tests/benchmarks/mutation.py {' '.join(argv or sys.argv[1:])}")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="symbp-mutation-") as parent:
        copies = [make_copy(Path(parent)) for _ in range(max(1, args.jobs))]
        check = _run([sys.executable, "-c", "import symbp; print(symbp.__file__)"], copies[0], 60)
        if check[0] != 0 or not check[2].strip().startswith(str(copies[0])):
            print(f"the copy does not import its own symbp: {check[2].strip()}")
            return 2
        baseline = {}
        for module in chosen:  # the unmutated module must pass; its time sets the timeout
            code, seconds, out = _run(pytest_command(module), copies[0], 1800)
            if code != 0:
                print(f"symbp/{module}.py: the unmutated tests fail:\n{out[-2000:]}")
                return 2
            baseline[module] = seconds
            print(f"unmutated {module}: passes in {seconds:.1f} s")
            sys.stdout.flush()

        free, lock, results = list(copies), threading.Lock(), {}

        def one(mutant):
            with lock:
                where = free.pop()
            path = where / "symbp" / f"{mutant.module}.py"
            original = path.read_text()
            try:
                path.write_text(mutated_source(mutant, original))
                timeout = max(240.0, args.timeout_factor * baseline[mutant.module])
                code, seconds, out = _run(pytest_command(mutant.module), where, timeout)
            finally:
                path.write_text(original)
                with lock:
                    free.append(where)
            outcome = "timeout" if code is None else ("survived" if code == 0 else "killed")
            results[mutant.name] = (outcome, seconds, first_failure(out) if outcome == "killed" else "")
            print(f"  {mutant.name:<14} {outcome:<8} {seconds:6.1f} s  symbp/{mutant.module}.py:{mutant.line}  "
                  f"{mutant.what}")
            sys.stdout.flush()

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            list(pool.map(one, [m for ms in chosen.values() for m in ms]))

    print("\n| module | mutants | sampled | killed | survived | timeouts | score |")
    print("|---|---|---|---|---|---|---|")
    total = {"sampled": 0, "killed": 0, "survived": 0, "timeout": 0}
    for module, ms in chosen.items():
        counts = {k: sum(results[m.name][0] == k for m in ms) for k in ("killed", "survived", "timeout")}
        for k, v in counts.items():
            total[k] += v
        total["sampled"] += len(ms)
        score = counts["killed"] / len(ms)
        print(f"| {module} | {listed[module]} | {len(ms)} | {counts['killed']} | {counts['survived']} | "
              f"{counts['timeout']} | {score:.0%} |")
    score = total["killed"] / total["sampled"]
    with_timeouts = (total["killed"] + total["timeout"]) / total["sampled"]
    print(f"| all | {sum(listed.values())} | {total['sampled']} | {total['killed']} | {total['survived']} | "
          f"{total['timeout']} | {score:.0%} |")
    print(f"\nscore {score:.1%} ({total['killed']} of {total['sampled']} killed; {with_timeouts:.1%} with the "
          f"{total['timeout']} timeouts) in {(time.perf_counter() - started) / 60:.1f} min")
    for outcome, title in (("timeout", "timeouts (slow, or looping)"),
                           ("survived", "survivors (a missing test, or an equivalent mutant)")):
        listed_here = [m for ms in chosen.values() for m in ms if results[m.name][0] == outcome]
        if listed_here:
            print(f"\n{title}:")
            for m in listed_here:
                source = (ROOT / "symbp" / f"{m.module}.py").read_text()
                changed = mutated_source(m, source).splitlines()[m.line - 1].strip()
                print(f"  {m.name:<14} symbp/{m.module}.py:{m.line}  {m.what}\n{'':<18}becomes: {changed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
