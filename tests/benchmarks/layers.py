"""symbp benchmark of networks of layers: a layer-norm MLP and an attention block next to a plain MLP.

    python tests/benchmarks/layers.py            # width 256, 16 examples / tokens (a few minutes)
    python tests/benchmarks/layers.py --quick    # width 16, 4 examples: checks the script

For each network: building it (symbols and local expressions), ``derive`` (chain), ``verify`` of its
textbook claims, ``compile`` of them (code generation) and one call of the compiled gradient; each
as seconds and as a ratio to the plain MLP of the same widths measured in the same run (the machine is
shared: only side-by-side ratios mean much). The networks:

* plain MLP: input W, [affine W, relu, affine 10, softmax], batch T, cross-entropy;
* layer-norm MLP: the same with a layer norm after the first affine layer;
* attention block: input W, T tokens, [attention dk W/4, affine 10, softmax], cross-entropy.
"""

from __future__ import annotations

import argparse
import os
import sys

_ARGS = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--quick", action="store_true", help="width 16, 4 examples (checks the script runs)")
_ARGS.add_argument("--width", type=int, default=256)
_ARGS.add_argument("--tokens", type=int, default=16, help="examples of the MLPs, tokens of attention")

if __name__ == "__main__":
    _OPTIONS = _ARGS.parse_args()
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's symbp
import symbp  # noqa: E402


def seconds(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def networks(width, tokens):
    head = [{"op": "affine", "out": 10}, {"op": "softmax"}]
    return {
        "plain MLP": dict(layers=[{"op": "affine", "out": width}, {"op": "relu"}, *head],
                          input=width, batch=tokens),
        "layer-norm MLP": dict(layers=[{"op": "affine", "out": width}, {"op": "layernorm"}, {"op": "relu"}, *head],
                               input=width, batch=tokens),
        "attention block": dict(layers=[{"op": "attention", "dk": max(width // 4, 1)}, *head],
                                input=width, batch=tokens),
    }


def point(net, rng):
    values = {name: rng.normal(size=net.shape(name)) / np.sqrt(net.shape(name)[-1]) for name in net.inputs + net.params}
    y = rng.random(net.shape("y"))
    values["y"] = y / y.sum(axis=1, keepdims=True)
    for mask in net.masks:
        values[mask] = (rng.random(net.shape(mask)) > 0.5).astype(float)
    return values


def measure(spec):
    row = {}
    row["build"], net = seconds(symbp.network, **spec)
    row["derive"], grads = seconds(symbp.derive, net)
    claims = symbp.textbook(net)
    row["verify"], report = seconds(symbp.verify, net, claims, grads=grads)
    row["ok"] = report.ok
    row["compile"], fast = seconds(symbp.compile, net, claims, report=report)  # code generation alone
    values = point(net, np.random.default_rng(0))
    row["call"], _ = seconds(fast, **values)
    row["entries"] = sum(int(np.prod(net.shape(n))) for n in net.params + net.intermediates)
    return row


def main(options):
    width, tokens = (16, 4) if options.quick else (options.width, options.tokens)
    print(f"symbp {symbp.__version__}: networks of layers at width {width}, {tokens} examples / tokens")
    rows = {}
    for label, spec in networks(width, tokens).items():
        rows[label] = measure(spec)
        print(f"  measured {label}", flush=True)
    base = rows["plain MLP"]
    steps = ["build", "derive", "verify", "compile", "call"]
    print()
    print("| network | entries | " + " | ".join(f"{s} s (x plain)" for s in steps) + " | verdict |")
    print("|---|---|" + "---|" * len(steps) + "---|")
    for label, row in rows.items():
        cells = [f"{row[s]:.3g} ({row[s] / base[s]:.2g}x)" for s in steps]
        print(f"| {label} | {row['entries']} | " + " | ".join(cells) + f" | {'all hold' if row['ok'] else 'FAILS'} |")
    return 0 if all(row["ok"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main(_OPTIONS))
