"""What a network will cost before it is built: the time and memory of each step, from its size.

How it works: every step of the per-element pipeline does about the same work for each *entry* of
the forward pass: one product ``W_ij a_j`` per weight and example, one bias and one activation per
unit and example, and ``n_L`` terms per output unit of a softmax (its sum). So

    entries = max(N, 1) * (sum_l n_l (n_(l-1) + 1) + n_L * (n_L if softmax else 1))

and a step costs ``entries`` times its measured seconds per entry (:data:`SECONDS_PER_ENTRY`);
memory is ``entries`` times the measured bytes per entry (:data:`BYTES_PER_ENTRY`) of the symbolic
network, its derivation and the generated code, which all stay alive. ``expand`` (``sympy.diff`` of
the written-out loss) grows with the square of the entries instead. :func:`estimate` is the one
place these figures live; :func:`refuse_if_too_big` turns an estimate past :data:`LIMIT_SECONDS` or
:data:`LIMIT_BYTES` into a one-line :class:`~symbp.errors.SymbpError` naming the size, the estimate
and the way out. The command line calls it before building anything; from Python, call
:func:`estimate` yourself (nothing refuses there).

The figures were measured on a shared 2-core x86_64 VM (see the README's benchmarks; on a busy
machine everything takes up to twice as long): the estimate is a guide to the order of magnitude
(minutes or hours), not a promise to the second.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SymbpError
from .progress import duration

#: Seconds per forward entry of each step, measured under a load average of 3 to 5 at
#: [256, 128, 64, 10], [784, 128, 64, 10] with a batch of 4 (437,944 entries: build 16 s, derive
#: 27 s, lambdify 152 s, one evaluation 3 s) and [600, 600, 10] with tanh (366,710 entries: 37 s,
#: 18 s, 212 s): building the symbolic ``MLP``, ``derive`` (chain), ``verify`` of the textbook
#: claims, ``lambdify``, evaluating the lambdified code and the NumPy engines at one point
#: (``check``), the LaTeX document with its own verification and lambdify (``document``), and
#: ``symbp example``'s exact cells (``example``).
SECONDS_PER_ENTRY = {
    "build": 60e-6,
    "derive": 50e-6,
    "verify": 200e-6,
    "lambdify": 450e-6,
    "check": 10e-6,
    "document": 600e-6,
    "example": 400e-6,
}
#: Seconds per hidden unit (and example) of an activation other than relu, leaky_relu and identity,
#: on top of its entries: ``sympy.diff`` of ``tanh(z)`` and printing its derivative take about 50 ms a
#: unit (measured: ``symbp flow --width 4`` at depths 350, 700 and 1400: 58, 145 and 274 s).
SECONDS_PER_SMOOTH_UNIT = 0.05
PIECEWISE_LINEAR = ("relu", "leaky_relu", "identity")
#: ``expand``: seconds per entry squared ([8, 8, 8, 4], 196 entries: about 50 s).
EXPAND_SECONDS_PER_ENTRY_SQUARED = 1.3e-3
#: Peak memory per forward entry (the symbolic network, its derivation and the generated code; measured:
#: 3.4 kB at [784, 128, 64, 10] with a batch of 4, 5.9 kB at [600, 600, 10] with tanh).
BYTES_PER_ENTRY = 6000
#: Refuse what would take longer than this ...
LIMIT_SECONDS = 600.0
#: ... or need more memory than this (8 GB).
LIMIT_BYTES = 8 * 10**9

DERIVE_STEPS = ("build", "derive", "lambdify", "check")


@dataclass(frozen=True)
class Estimate:
    """The expected cost of ``steps`` for a network of ``entries`` forward entries."""

    entries: int
    seconds: dict  # step -> seconds
    bytes: int

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def too_big(self) -> bool:
        return self.total_seconds > LIMIT_SECONDS or self.bytes > LIMIT_BYTES

    def text(self) -> str:
        """``"about 2.0 h and 91 GB"``."""
        return f"about {duration(self.total_seconds)} and {_size(self.bytes)}"


def _size(n):
    if n >= 1e9:
        return f"{n / 1e9:.0f} GB" if n >= 10e9 or n % 10**9 == 0 else f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB"


def entries(sizes, batch=None, *, output="softmax") -> int | None:
    """The number of forward entries of ``sizes`` (``None`` for sizes that are not a list of
    positive whole numbers: the network itself says what is wrong with them).

    >>> entries([4, 5, 3, 3]), entries([4, 5, 3, 3], batch=2), entries([4, 5, 3, 3], output="identity")
    (64, 128, 58)
    """
    try:
        sizes = list(sizes)
    except TypeError:
        return None
    if isinstance(sizes, str) or len(sizes) < 2 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        return None
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 0):
        return None
    per_example = sum(n * (m + 1) for m, n in zip(sizes, sizes[1:]))
    per_example += sizes[-1] * (sizes[-1] if output == "softmax" else 1)
    return max(batch or 1, 1) * per_example


def smooth_units(sizes, batch=None, hidden="relu") -> int:
    """Hidden units (times examples) whose activation is not piecewise linear (see
    :data:`SECONDS_PER_SMOOTH_UNIT`); ``hidden`` is one name (or expression) or one per hidden layer.

    >>> smooth_units([4, 5, 3, 3], hidden="tanh"), smooth_units([4, 5, 3, 3], 2, ["relu", "tanh"])
    (8, 6)
    """
    widths = list(sizes)[1:-1]
    names = hidden if isinstance(hidden, (list, tuple)) else [hidden] * len(widths)
    if len(names) != len(widths):
        return 0
    return max(batch or 1, 1) * sum(n for n, name in zip(widths, names) if name not in PIECEWISE_LINEAR)


def estimate(sizes, *, batch=None, output="softmax", hidden="relu", steps=DERIVE_STEPS, method="chain",
             runs=1) -> Estimate | None:
    """The expected time (per step) and memory of ``steps`` for the network ``sizes``.

    ``steps`` are names of :data:`SECONDS_PER_ENTRY`; with ``method="expand"`` the ``derive`` step
    is the quadratic ``expand``; ``runs`` networks of this size are worked (``symbp flow --residual``:
    2). ``None`` for sizes that are not valid.

    >>> e = estimate([784, 256, 128, 10], batch=64)
    >>> e.entries, e.too_big
    (15055744, True)
    >>> estimate([4, 5, 3, 3]).too_big
    False
    """
    n = entries(sizes, batch, output=output)
    if n is None:
        return None
    seconds = {}
    smooth = smooth_units(sizes, batch, hidden) * SECONDS_PER_SMOOTH_UNIT / 2  # half derive, half lambdify
    for step in steps:
        if step == "derive" and method == "expand":
            seconds[step] = runs * EXPAND_SECONDS_PER_ENTRY_SQUARED * n * n
        else:
            seconds[step] = runs * (SECONDS_PER_ENTRY[step] * n + (smooth if step in ("derive", "lambdify") else 0))
    return Estimate(n, seconds, runs * BYTES_PER_ENTRY * n)


def refuse_if_too_big(sizes, *, batch=None, output="softmax", hidden="relu", steps=DERIVE_STEPS,
                      method="chain", runs=1, batch_option: str = "--batch", way_out: str | None = None,
                      what: str | None = None) -> Estimate | None:
    """The estimate, or a one-line :class:`SymbpError` if it is past the limits, naming the size, the
    estimate and the way out (``batch_option`` is how the user sets the batch: ``--batch`` on the
    command line, ``batch =`` in a spec file; ``way_out`` replaces the suggestion, ``what`` the
    network's description).

    >>> refuse_if_too_big([2, 2], batch=10**9)
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: MLP [2, 2] with a batch of 1000000000: 10,000,000,000 forward entries, about 66 days and 60000 GB (limit: 10 min, 8 GB); the derivation is the same for any batch size: use --batch 4, and symbp.compile for numbers at a batch of 1000000000
    """
    e = estimate(sizes, batch=batch, output=output, hidden=hidden, steps=steps, method=method, runs=runs)
    if e is None or not e.too_big:
        return e
    small = estimate(sizes, batch=4, output=output, hidden=hidden, steps=steps, method=method, runs=runs)
    if way_out is not None:
        pass
    elif method == "expand" and not estimate(sizes, batch=batch, output=output, hidden=hidden, steps=steps).too_big:
        way_out = "use the chain method (the default), which derives the same partials"
    elif batch and batch > 4 and not small.too_big:
        way_out = (f"the derivation is the same for any batch size: use {batch_option} 4, and symbp.compile "
                   f"for numbers at a batch of {batch}")
    else:
        way_out = ("work per element on a smaller network (the same layers, smaller widths), and use "
                   "symbp.compile for numbers at this size; or derive every gradient for all sizes at once "
                   "in index notation (derive --sizes symbolic, symbp.indexform.derive_index)")
    batch_text = f" with a batch of {batch}" if batch else ""
    raise SymbpError(f"{what or f'MLP {list(sizes)}'}{batch_text}: {e.entries:,} forward entries, {e.text()} "
                     f"(limit: {duration(LIMIT_SECONDS)}, {_size(LIMIT_BYTES)}); {way_out}")
