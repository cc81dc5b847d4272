"""symbp benchmark of proofs for all sizes: the textbook claims at MNIST size, proved vs judged concretely.

    python tests/benchmarks/allsizes.py            # [784, 128, 64, 10], batch 4 (about a minute)
    python tests/benchmarks/allsizes.py --quick    # [4, 5, 3, 3]: checks the script

The same claims (``symbp.textbook``) of the same network, in one run: ``verify`` as it is (proofs for
all sizes, method "all-sizes": no concrete entry is built) and ``verify(..., sizes="given")`` (today's
concrete tiers, including the ``derive`` they need), each in seconds, with their ratio. The all-sizes
time is also measured at [4, 5, 3, 3]: it does not depend on the sizes.
"""

from __future__ import annotations

import argparse
import time

import symbp


def _seconds(run):
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def main(argv=None):
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--quick", action="store_true", help="[4, 5, 3, 3] (checks the script runs)")
    args.add_argument("--batch", type=int, default=4)
    options = args.parse_args(argv)
    sizes = [4, 5, 3, 3] if options.quick else [784, 128, 64, 10]
    net = symbp.MLP(sizes, batch=options.batch)
    small = symbp.MLP([4, 5, 3, 3], batch=options.batch)
    claims = symbp.textbook(net)
    proof_small, _ = _seconds(lambda: symbp.verify(small, symbp.textbook(small)))
    proof, report = _seconds(lambda: symbp.verify(net, claims))
    assert report.ok and {r.method for r in report.results} == {"all-sizes"}, report
    concrete, given = _seconds(lambda: symbp.verify(net, claims, sizes="given"))
    assert given.ok, given
    print(f"textbook claims of MLP {sizes}, batch {options.batch}: {len(claims)} claims")
    print(f"all-sizes verify at [4, 5, 3, 3]       {proof_small:8.2f} s")
    print(f"all-sizes verify at {sizes}  {proof:8.2f} s  (no concrete entry built)")
    print(f"concrete verify (derive + tiers)        {concrete:8.2f} s")
    print(f"ratio concrete / all-sizes              {concrete / proof:8.1f}x")


if __name__ == "__main__":
    main()
