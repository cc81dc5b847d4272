"""The table of ops: one row per rule, read by every step of symbp.

How it works: a network (:mod:`symbp.layers`) is a list of layers, each an :class:`Op` of this table
applied to the previous layer's output (and, for some ops, to a named earlier output or an input such
as a dropout mask). A row holds everything the other steps need to know about its rule:

``forward``
    its output in SymPy, entry by entry, from the symbols of its input, its parameters and its extra
    inputs; an op may first define internal stages (attention's ``Q, K, V``, its scores and
    probabilities; a norm's mean and variance) through the ``stage`` callback, each an intermediate of
    the network with its own symbols, so that every local expression stays small. The per-element
    derivative is *not* a column of the row: it is ``sympy.diff`` of this forward (:mod:`symbp.derive`),
    so the truth stays independent of the ``backward`` column it judges.
``backward``
    the matrix-level backward in the claim language (:mod:`symbp.formula`): what ``textbook`` returns.
``mistakes``
    typical wrong backwards (a layer norm treating its mean and variance as constants...), each a name
    and the wrong claims, for the diagnosis: a claim that equals one of them is named after it.
``numpy`` (and ``torch``)
    an independent forward on arrays, for the reference engines: never derived from the SymPy form.
``latex``, ``note``, ``kinks``
    how documents name it, the convention it follows, where its derivative jumps.

Orientation: ``forward``, ``numpy`` and ``torch`` see *rows*: an ``(N, n)`` matrix whose rows are the
examples (the tokens, for attention), one row for a single example (:mod:`symbp.layers` transposes the
column vectors of a single example for them and back). Parameters keep their own shapes (``W`` is
``(out, in)``, ``gamma`` is ``(n, 1)``). ``backward`` and ``mistakes`` are written for the network's own
orientation (columns for one example, rows for a batch): the :class:`Context` says which.

Adding an op is adding a row to :data:`OPS` (in :mod:`symbp.ops.table`); an entry-wise activation is
a row of :data:`symbp.registry.ACTIVATIONS`, which this table presents as an op.
"""

from __future__ import annotations

from .base import REQUIRED, Context, Op
from .table import OPS, activation_op, op

__all__ = ["OPS", "REQUIRED", "Context", "Op", "activation_op", "op"]
