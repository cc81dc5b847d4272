"""The row type of the op table and the context its claim columns are written in."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Mapping

#: The default of a field that must be given (``out`` of ``affine``, ``dk`` of ``attention``).
REQUIRED = object()


def number(value) -> str:
    """An exact number as claim-language text: ``1/100000`` as ``(1/100000)``, ``2`` as ``2``.

    >>> number(Fraction(1, 100000)), number(Fraction(2)), number(Fraction(-1, 2))
    ('(1/100000)', '2', '(-1/2)')
    """
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator) if value >= 0 else f"({value.numerator})"
    return f"({value.numerator}/{value.denominator})"


@dataclass(frozen=True)
class Context:
    """The names a layer's claim columns are written with, and the network's orientation.

    ``out`` is the layer's output, ``inp`` its input (``x`` for the first layer), ``params`` maps each
    parameter role to its name (``{"W": "W1", "b": "b1"}``), ``extra`` each extra input's field to its
    name (``{"from": "a1"}``, ``{"mask": "m1"}``), ``stages`` each internal stage to its name
    (attention's ``{"Q": "Q1", ...}``). ``batch`` is the number of examples, or None for one example
    (column vectors).
    """

    out: str
    inp: str
    params: Mapping[str, str]
    extra: Mapping[str, str]
    stages: Mapping[str, str]
    cfg: Mapping[str, object]
    batch: int | None
    n_in: int
    n_out: int
    mean_over_batch: str = ""  # " / N" for a batch with reduction "mean" (the loss's scale)

    @property
    def features(self) -> int:
        """The axis of the features of one example: 0 (a column) for one example, 1 for a batch."""
        return 1 if self.batch else 0

    def over_examples(self, text: str) -> str:
        """A per-example ``(n, 1)`` parameter's gradient from ``text`` (shaped like the output): itself
        for one example, the sum over the rows of a batch, as a column."""
        return f"sum({text}, axis=0).T" if self.batch else text

    def as_feature(self, name: str) -> str:
        """An ``(n, 1)`` parameter lined up with one example's features: itself for a column, its
        transpose (a row, broadcast over the examples) for a batch."""
        return f"{name}.T" if self.batch else name

    def num(self, value) -> str:
        return number(value)


@dataclass(frozen=True)
class Op:
    """One rule of the table (see :mod:`symbp.ops`)."""

    name: str
    summary: str  # one line: what it computes, per example
    forward: Callable  # (X, P, E, cfg, stage) -> local (rows), SymPy
    numpy: Callable  # (X, P, E, cfg, stage) -> output (rows), NumPy float64
    backward: Callable  # Context -> {target name: claim}
    latex: str  # the op's name in documents
    params: tuple[str, ...] = ()  # parameter roles, in order
    fields: Mapping[str, object] = field(default_factory=dict)  # field -> default (REQUIRED)
    extra: tuple[str, ...] = ()  # fields that name another input: ("from",), ("mask",)
    stages: tuple[str, ...] = ()  # internal stages, in the order defined
    prefix: str = "h"  # default output name: prefix + position
    width: Callable = lambda cfg, n_in: n_in  # output width per example
    param_shape: Callable | None = None  # (role, cfg, n_in) -> (rows, cols)
    check: Callable | None = None  # (cfg, n_in, batch) -> error text or None
    torch: Callable | None = None  # as numpy, on torch tensors (float64)
    mistakes: Callable = lambda ctx: ()  # Context -> ((name, {target: wrong claim}), ...)
    kinks: tuple = ()
    note: str = ""  # the convention it follows, for documents
    activation: object = None  # the registry row of an entry-wise op
    #: The forward as NumPy source, for ``symbp.compile``: ``(Context, show) -> ["name = expression", ...]``,
    #: one assignment per internal stage (in the order of ``stages``) and last the output, in the
    #: network's own orientation (as ``backward``); ``show`` prints a SymPy expression as NumPy code.
    code: Callable | None = None
    # The document partial templates/ops/<partial>.tex.j2; "" is "activation" for an entry-wise op
    # (one partial for them all), else the op's name.
    partial: str = ""
    #: The forward in index notation, for proofs for all sizes (:mod:`symbp.allsizes`):
    #: ``(X, P, E, cfg, e, i, n_in) -> SymPy`` the output's entry for example ``e``, feature ``i``
    #: (symbolic indices), where ``X(e, k)`` and ``E[field](e, k)`` give entries of the input and the
    #: extra inputs, ``P[role](r, c)`` entries of the parameters, and ``n_in`` is the input's width (a
    #: symbol); sums are ``sympy.Sum`` over ``(k, 1, n_in)``. None: the op is judged at the given sizes.
    index: Callable | None = None
    #: The internal stages in index notation, for an op whose ``index`` reads them: ``(X, P, E, cfg,
    #: n_in, N) -> {key: ((rows, cols), entry)}`` in the order of ``stages``, each shape in the rows
    #: orientation (``N`` the batch symbol, 1 for one example; ``n_in`` the input's width) and
    #: ``entry(e, i)`` its entry; ``index`` and each later stage read stage ``key`` as ``E[key](e, i)``,
    #: and ``index`` takes ``N`` as an eighth argument. A stage that ``backward`` gives a claim for
    #: (attention's ``Q``, ``S``, ``P``) is read as a variable of its own, with its own upstream
    #: gradient; the others (a norm's mean) are folded into the forms that read them.
    index_stages: Callable | None = None
    #: For the output op of an MLP document: ``(expr, z rows, a rows) -> expr`` with the op's functions of
    #: the logits written in its outputs (None when that does not simplify). None: an entry-wise op's
    #: ``f(z_k)`` becomes ``a_k`` (see :func:`symbp.document.in_outputs`).
    in_outputs: Callable | None = None
