"""Benchmark: the generated torch and JAX backward passes against the framework's own autograd.

At [784, 128, 64, 10] (relu, relu, softmax + cross-entropy), a batch of 256, float32 and float64:
``symbp.compile(net, claims, backend="torch" | "jax")`` of the verified textbook claims (compiled
from a symbolic batch of 4: the code takes any N) against autograd of the same forward written in
the framework (torch: ``loss.backward()``; JAX: ``jax.grad``), JAX under ``jax.jit`` on both sides.
Every time is the best of several rounds, measured next to its baseline in the same run; the ratio
is generated / autograd (goal: at most 1). torch runs 1 thread (``--threads``), like BLAS.

    python tests/benchmarks/frameworks.py [--rounds 5] [--calls 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np

import symbp

SIZES = [784, 128, 64, 10]
BATCH = 256


def needed(net, claims):
    """The claims the parameters' gradients need (the textbook's dL/da_L is not one of them)."""
    keep, todo = set(), list(net.params)
    while todo:
        name = todo.pop()
        if name in keep or name not in claims:
            continue
        keep.add(name)
        todo += re.findall(r"\bd(\w+)", claims[name])
    return {k: v for k, v in claims.items() if k in keep}


def best(fn, rounds, calls):
    fn()  # warm up (and, for jit, compile)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def torch_pair(net, fast, values, dtype):
    import torch

    t = {k: torch.tensor(v, dtype=getattr(torch, dtype)) for k, v in values.items()}

    def autograd():
        p = {k: t[k].detach().requires_grad_() for k in net.params}
        a = t["x"]
        for l in range(1, net.L + 1):
            z = a @ p[f"W{l}"].T + p[f"b{l}"].T
            a = torch.relu(z) if l < net.L else z
        loss = -(t["y"] * torch.log_softmax(a, dim=1)).sum(1).mean()
        loss.backward()
        return {k: p[k].grad for k in net.params}

    def generated():
        return fast.backward(**t)

    return generated, autograd


def jax_pair(net, fast, values, dtype):
    import jax
    import jax.numpy as jnp

    t = {k: jnp.asarray(v, dtype=dtype) for k, v in values.items()}

    def loss(p, x, y):
        a = x
        for l in range(1, net.L + 1):
            z = a @ p[f"W{l}"].T + p[f"b{l}"].T
            a = jnp.maximum(z, 0) if l < net.L else z
        return -(y * jax.nn.log_softmax(a, axis=1)).sum(1).mean()

    grad = jax.jit(jax.grad(loss))
    backward = jax.jit(fast.backward)
    params = {k: t[k] for k in net.params}

    def autograd():
        return jax.block_until_ready(grad(params, t["x"], t["y"]))

    def generated():
        return jax.block_until_ready(backward(**t))

    return generated, autograd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    net = symbp.MLP(SIZES, batch=4)
    start = time.perf_counter()
    claims = needed(net, symbp.textbook(net))
    report = symbp.verify(net, claims)
    assert report.ok, report
    fast = {b: symbp.compile(net, claims, backend=b, report=report) for b in ("torch", "jax")}
    print(f"derive + verify of {len(claims)} claims at {SIZES} (batch 4): {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(0)
    values = {"x": rng.normal(size=(BATCH, SIZES[0])), "y": rng.dirichlet(np.ones(SIZES[-1]), size=BATCH)}
    for l in range(1, net.L + 1):
        values[f"W{l}"] = rng.normal(size=net.shape(f"W{l}")) / np.sqrt(SIZES[l - 1])
        values[f"b{l}"] = rng.normal(size=net.shape(f"b{l}")) * 0.1
    print(f"\none gradient of {SIZES}, batch of {BATCH}: best of {args.rounds} rounds of {args.calls} calls, "
          f"torch threads {args.threads}, JAX jit on both sides")
    print(f"{'framework':<8} {'dtype':<8} {'generated ms':>13} {'autograd ms':>12} {'ratio':>7} {'max |diff|':>11}")
    for backend, pair in (("torch", torch_pair), ("jax", jax_pair)):
        for dtype in ("float32", "float64"):
            generated, autograd = pair(net, fast[backend], values, dtype)
            got, want = generated(), autograd()
            diff = max(float(np.max(np.abs(np.asarray(got[k], dtype=float) - np.asarray(want[k], dtype=float))))
                       for k in net.params)
            t_gen = t_auto = float("inf")
            for _ in range(2):  # interleaved, so both see the same load
                t_gen = min(t_gen, best(generated, args.rounds, args.calls))
                t_auto = min(t_auto, best(autograd, args.rounds, args.calls))
            print(f"{backend:<8} {dtype:<8} {t_gen * 1e3:>13.3f} {t_auto * 1e3:>12.3f} {t_gen / t_auto:>7.2f} {diff:>11.1e}")


if __name__ == "__main__":
    main()
