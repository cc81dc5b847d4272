"""symbp benchmarks: one run prints every figure of the README's "Benchmarks" table.

    python tests/benchmarks/run.py            # everything (a few minutes on 2 cores)
    python tests/benchmarks/run.py --quick    # small sizes only, to check the script

What it measures, each time figure next to a baseline measured in the same run (the machine is
shared, so only ratios taken side by side mean much):

1. Derivation (``derive(net, method="chain")``) against the network's size: seconds, and
   microseconds per parameter, which stays flat if the cost grows linearly with the parameters.
   Building the symbolic network (``MLP(...)``) is timed apart. Peak memory (RSS) at the end.
2. Verification of the textbook claim set (``verify(net, textbook(net))``); and (2b) on [4, 5, 3, 3],
   the whole set against plain ``sympy.simplify`` of one written-out entry of the difference per
   target (the textbook chain composed down to that target, side condition substituted), each
   stopped after a time limit.
3. Turning gradients into NumPy: ``lambdify`` (per-element code) against ``compile`` (matrix code
   from the verified claims; code generation alone, the verification being item 2).
4. One gradient of [784, 128, 64, 10] on a batch of 256 (float64): the compiled code against a
   hand-written NumPy backprop (the baseline, written below) and, when installed, PyTorch's CPU
   autograd; the three results are checked to agree.
5. For contrast, the largest [k, k, k, 4] network whose ``expand`` derivation (``sympy.diff`` of the
   written-out loss) finishes in 60 s.

Threads: BLAS and torch use ``--threads`` threads (default 1, set before NumPy is imported) so that
colleagues' jobs on the same cores disturb the ratios less.
"""

from __future__ import annotations

import argparse
import os
import sys

_ARGS = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="small sizes only (checks the script runs)")
_ARGS.add_argument("--threads", type=int, default=1, help="BLAS and torch threads (default 1)")
_ARGS.add_argument("--no-expand", action="store_true", help="skip the expand search (item 5)")

if __name__ == "__main__":
    _OPTIONS = _ARGS.parse_args()
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(_OPTIONS.threads)

import multiprocessing  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sympy.core.cache import clear_cache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's symbp, not an installed one
import symbp  # noqa: E402

MNIST = [784, 128, 64, 10]


def seconds(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(title, header, rows):
    print(f"\n## {title}\n")
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()


# --------------------------------------------------------------------------- 1. derivation


def derivation(sizes_list, batch_sizes, repeats=2):
    symbp.derive(symbp.MLP([4, 5, 3, 3]))  # warm up: imports and SymPy's caches, outside the timings
    rows, nets, previous = [], {}, None
    for sizes, batch in [(s, None) for s in sizes_list] + [(s, b) for s, b in batch_sizes]:
        clear_cache()  # no help from SymPy's cache of an earlier network with the same output symbols
        build, net = seconds(symbp.MLP, sizes, batch=batch)
        took = float("inf")
        for _ in range(repeats):  # the best of a few: colleagues' jobs share the cores
            clear_cache()
            once, grads = seconds(symbp.derive, net, method="chain")
            took = min(took, once)
        per = took / net.n_params * 1e6
        # the slope from the previous (smaller, single-example) row: the cost of each added parameter
        slope = "-" if previous is None or batch else \
            f"{(took - previous[1]) / (net.n_params - previous[0]) * 1e6:.1f}"
        rows.append([str(sizes), batch or "-", f"{net.n_params:,}", f"{build:.2f}", f"{took:.2f}", f"{per:.1f}",
                     slope])
        previous = None if batch else (net.n_params, took)
        nets[(tuple(sizes), batch)] = (net, grads)
    table("1. derive(net, method='chain') against size (relu/relu/softmax + cross-entropy)",
          ["sizes", "batch", "parameters", "MLP() s", "derive s", "us / parameter", "us / added parameter"], rows)
    return nets


# --------------------------------------------------------------------------- 2. verification


def verification(nets):
    rows, reports = [], {}
    for (sizes, batch), (net, grads) in nets.items():
        claims = symbp.textbook(net)
        took, report = seconds(symbp.verify, net, claims, grads=grads)
        methods = sorted({r.method for r in report.results})
        rows.append([str(list(sizes)), batch or "-", len(claims), "yes" if report.ok else "NO", f"{took:.2f}",
                     ", ".join(methods)])
        reports[(sizes, batch)] = report
    table("2. verify(net, textbook(net)), every element (derivation given)",
          ["sizes", "batch", "claims", "all hold", "verify s", "methods"], rows)
    return reports


def _simplify_child(sizes, target, queue):
    """Plain ``sympy.simplify`` of (claim - truth) for entry (0, 0) of ``target``. The claim is the
    textbook chain composed all the way down (each ``dV`` replaced by the claim for ``V``, not by the
    truth), written out in x, y, W*, b*, as is the truth; the softmax + cross-entropy side condition
    is substituted (y_last = 1 - others)."""
    import sympy as sp

    from symbp.errors import SymbpError
    from symbp.formula import evaluate, parse

    net = symbp.MLP(sizes)
    grads = symbp.derive(net)
    env = {name: net.symbols(name) for name in net.inputs + net.params}
    env.update({name: net.written_out(name) for name in net.intermediates})
    pending = dict(symbp.textbook(net))
    while "d" + target not in env:
        for name, claim in list(pending.items()):
            try:
                env["d" + name] = evaluate(parse(claim, net), env, N=net.batch)
            except SymbpError:  # an upstream claim is not composed yet
                continue
            del pending[name]
    y = list(net.symbols("y"))
    condition = {y[-1]: 1 - sum(y[:-1])}
    difference = (env["d" + target][0, 0] - grads.written_out(target)[0, 0]).xreplace(condition)
    took, result = seconds(sp.simplify, difference)
    queue.put((took, result == 0))


def verification_against_simplify(sizes=(4, 5, 3, 3), targets=("z3", "z2", "W1"), limit=120.0):
    """symbp's verify of the whole textbook set against plain ``simplify`` of one entry per target."""
    net = symbp.MLP(list(sizes))
    grads = symbp.derive(net)
    claims = symbp.textbook(net)
    took, report = seconds(symbp.verify, net, claims, grads=grads)
    rows = [[f"verify: all {len(claims)} claims, every element", "yes" if report.ok else "NO", f"{took:.2f}", "1.0"]]
    for target in targets:
        queue = multiprocessing.Queue()
        child = multiprocessing.Process(target=_simplify_child, args=(list(sizes), target, queue))
        child.start()
        child.join(limit)
        if child.is_alive():
            child.terminate()
            child.join()
            rows.append([f"simplify: {target}[1,1] = {claims[target]!r}", "-", f"> {limit:.0f} (stopped)",
                         f"> {limit / took:,.0f}"])
            continue
        spent, zero = queue.get()
        rows.append([f"simplify: {target}[1,1] = {claims[target]!r}", "yes" if zero else "not shown",
                     f"{spent:.1f}", f"{spent / took:,.0f}"])
    table(f"2b. verify against plain sympy.simplify of (claim - truth), written out, {list(sizes)}",
          ["what", "zero / holds", "seconds", "ratio to verify"], rows)


# --------------------------------------------------------------------------- 3. lambdify vs compile


def code_generation(nets, reports, sizes_list):
    rows = []
    for sizes in sizes_list:
        net, grads = nets[(tuple(sizes), None)]
        sizes = list(sizes)
        lam, _ = seconds(symbp.lambdify, net, grads)
        claims = symbp.textbook(net)
        gen, _ = seconds(symbp.compile, net, claims, report=reports[(tuple(sizes), None)])
        rows.append([str(sizes), f"{lam:.2f}", f"{gen * 1e3:.1f}", f"{lam / gen:,.0f}x"])
    table("3. NumPy code: lambdify (per-element) against compile (matrix code; verification excluded)",
          ["sizes", "lambdify s", "compile ms", "lambdify / compile"], rows)


# --------------------------------------------------------------------------- 4. gradient evaluation


def hand_backprop(x, y, W1, b1, W2, b2, W3, b3):
    """The baseline: NumPy backprop as one writes it by hand (relu, relu, softmax + cross-entropy, mean)."""
    N = x.shape[0]
    z1 = x @ W1.T + b1.T
    a1 = np.maximum(z1, 0.0)
    z2 = a1 @ W2.T + b2.T
    a2 = np.maximum(z2, 0.0)
    z3 = a2 @ W3.T + b3.T
    e = np.exp(z3 - z3.max(axis=1, keepdims=True))
    a3 = e / e.sum(axis=1, keepdims=True)
    dz3 = (a3 - y) / N
    dz2 = (dz3 @ W3) * (z2 > 0)
    dz1 = (dz2 @ W2) * (z1 > 0)
    return {"W3": dz3.T @ a2, "b3": dz3.sum(axis=0, keepdims=True).T,
            "W2": dz2.T @ a1, "b2": dz2.sum(axis=0, keepdims=True).T,
            "W1": dz1.T @ x, "b1": dz1.sum(axis=0, keepdims=True).T}


def torch_engine(values, threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    x, y = (torch.from_numpy(values[n]) for n in ("x", "y"))
    params = {n: torch.from_numpy(values[n].copy()).requires_grad_() for n in ("W1", "b1", "W2", "b2", "W3", "b3")}
    functional = torch.nn.functional

    def gradient():
        p = params
        for t in p.values():
            t.grad = None
        a1 = torch.relu(x @ p["W1"].T + p["b1"].T)
        a2 = torch.relu(a1 @ p["W2"].T + p["b2"].T)
        z3 = a2 @ p["W3"].T + p["b3"].T
        functional.cross_entropy(z3, y).backward()  # probabilities as targets, mean over the batch
        return {n: t.grad.numpy() for n, t in p.items()}

    return gradient, torch.__version__


def best_of(engines, rounds, number):
    """The fastest time per call of each engine, the engines taking turns round after round."""
    best = {name: float("inf") for name in engines}
    for _ in range(rounds):
        for name, fn in engines.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


def evaluation(net, report, threads, rounds):
    """``net`` is a batch network with two hidden layers (a small symbolic batch: the compiled code
    takes any number of rows), ``report`` its verified textbook claims."""
    took, fast = seconds(symbp.compile, net, symbp.textbook(net), report=report)
    sizes = list(net.sizes)
    rng = np.random.default_rng(0)
    values = {"x": rng.normal(size=(256, sizes[0])), "y": rng.dirichlet(np.ones(sizes[-1]), size=256)}
    for l in range(1, 4):
        values[f"W{l}"] = rng.normal(size=net.shape(f"W{l}")) / np.sqrt(sizes[l - 1])
        values[f"b{l}"] = rng.normal(size=net.shape(f"b{l}")) * 0.1
    backward = fast.backward  # the generated function itself, as a user importing the module calls it
    engines = {"hand NumPy (baseline)": lambda: hand_backprop(**values), "symbp.compile": lambda: backward(**values)}
    torch_ = torch_engine(values, threads)
    if torch_:
        engines[f"torch {torch_[1]} autograd"] = torch_[0]
    results = {name: fn() for name, fn in engines.items()}
    truth = results["hand NumPy (baseline)"]
    agree = {name: max(float(np.max(np.abs(r[k] - truth[k]))) for k in truth) for name, r in results.items()}
    best = best_of(engines, rounds, 20)
    base = best["hand NumPy (baseline)"]
    rows = [[name, f"{t * 1e3:.2f}", f"{t / base:.2f}", f"{agree[name]:.1e}"] for name, t in best.items()]
    table(f"4. one gradient of {sizes}, batch of 256, float64 (best of {rounds} rounds of 20 calls; "
          f"compiled from a symbolic batch of {net.batch} in {took * 1e3:.0f} ms)",
          ["engine", "ms per batch", "ratio to hand NumPy", "max |diff| to hand NumPy"], rows)
    return best


# --------------------------------------------------------------------------- 5. expand, for contrast


def _expand_child(k, queue):
    net = symbp.MLP([k, k, k, 4])
    took, _ = seconds(symbp.derive, net, method="expand")
    queue.put((net.n_params, took))


def expand_search(limit=60.0, widths=range(2, 12)):
    rows = []
    for k in widths:
        queue = multiprocessing.Queue()
        child = multiprocessing.Process(target=_expand_child, args=(k, queue))
        child.start()
        child.join(limit)
        if child.is_alive():
            child.terminate()
            child.join()
            rows.append([f"[{k}, {k}, {k}, 4]", "-", f"> {limit:.0f} (stopped)"])
            break
        params, took = queue.get()
        rows.append([f"[{k}, {k}, {k}, 4]", params, f"{took:.1f}"])
    table(f"5. derive(net, method='expand') (sympy.diff of the written-out loss), up to {limit:.0f} s",
          ["sizes", "parameters", "expand s"], rows)


# --------------------------------------------------------------------------- main


def machine():
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        blas = "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                         f"({i.get('num_threads')} threads)" for i in threadpool_info())
    except ImportError:
        pass
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, SymPy {__import__('sympy').__version__}, NumPy {np.__version__}; "
            f"BLAS: {blas}; OPENBLAS_CORETYPE={coretype or 'unset'}; load average "
            f"{os.getloadavg()[0]:.1f}")


def main(options):
    print(f"# symbp benchmarks ({'quick' if options.quick else 'full'}); {machine()}")
    if options.quick:
        sizes_list, batches = [[16, 16, 16, 10], [32, 32, 32, 10]], [([16, 16, 16, 10], 2)]
    else:
        sizes_list = [[32, 32, 32, 10], [64, 64, 64, 10], [128, 128, 64, 10], [256, 128, 64, 10], MNIST]
        batches = [(MNIST, 4)]
    nets = derivation(sizes_list, batches)
    print(f"\npeak memory so far: {peak_rss_mb():.0f} MB")
    reports = verification(nets)
    verification_against_simplify(limit=20.0 if options.quick else 120.0)
    code_generation(nets, reports, sorted({tuple(sizes_list[1]), tuple(sizes_list[-1])}, key=sum))
    big = (tuple(batches[-1][0]), batches[-1][1])
    evaluation(nets[big][0], reports[big], options.threads, rounds=3 if options.quick else 15)
    del nets, reports
    if not options.no_expand:
        expand_search(widths=range(2, 5) if options.quick else range(2, 12))
    print(f"\npeak memory (RSS) of this process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main(_OPTIONS)
