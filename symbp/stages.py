"""What every symbolic network shares: stages of symbols with local definitions, and the loss.

How it works: a network (:class:`symbp.MLP` or a network of layers, :mod:`symbp.layers`) is a list of
*stages*, each a matrix of symbols and a matrix of local expressions giving each entry in the symbols of
earlier stages and the parameters. Substituting the local expressions into one another writes the network
out (:meth:`Staged.written_out`), which ``derive``'s ``expand`` method differentiates; the ``chain`` method
works on the local expressions. A subclass provides ``shape``, ``stages``, ``_stage`` (name -> stage),
``batch``, ``reduction``, ``loss_row``, ``fused``, ``output_name`` and ``loss_stage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import sympy as sp

from .errors import SymbpError
from .names import matrix_symbols


@dataclass(frozen=True)
class Stage:
    """One intermediate variable of the forward pass: its symbols and their local definitions."""

    name: str  # "z2", "a2", "ln2mean"
    layer: int  # 1-based: the MLP layer, or the position of the layer of a network of layers
    symbols: sp.Matrix
    local: sp.Matrix  # each entry in terms of earlier stages' symbols and the parameters


class Staged:
    """The symbols, the forward written out and the loss, from the stages (see the module docstring)."""

    def symbols(self, name: str) -> sp.Matrix:
        """The matrix of symbols of ``name``, shaped like it (``a0`` is ``x``)."""
        if name == "a0":
            name = "x"
        return self._symbols(name, self.shape(name))

    @property
    def targets(self) -> tuple[str, ...]:
        """The variables a claim may be about (``dL/dV`` for each): the input ``x``, every parameter and
        every intermediate. ``x`` is what lets one layer be judged on its own (its loss ``sum(y * out)``
        makes ``y`` the upstream gradient); ``derive`` leaves it out (see :meth:`Gradients.with_input`)."""
        return ("x", *self.params, *self.intermediates)

    def grad_symbols(self, name: str) -> sp.Matrix:
        """The symbols ``dV_i_j`` that stand for the upstream gradients dL/dV_ij."""
        return self._symbols("d" + name, self.shape(name))

    def _symbols(self, name, shape):
        cache = self.__dict__.setdefault("_symbol_cache", {})
        if name not in cache:
            cache[name] = matrix_symbols(name, shape)
        return cache[name]

    def local(self, name: str) -> sp.Matrix:
        """The local definition of an intermediate: entries in earlier symbols and the parameters."""
        if name not in self._stage:
            raise SymbpError(f"'{name}' is not an intermediate; intermediates: {', '.join(self.intermediates)}")
        return self._stage[name].local

    def _examples(self, M):
        """The rows of examples of a (batch) matrix, or the one column of a single example."""
        if self.batch:
            return [list(M.row(n)) for n in range(M.rows)]
        return [list(M.col(0))]

    def _reduce(self, per_example):
        total = sp.Add(*per_example)
        if self.batch and self.reduction == "mean":
            return total / self.batch
        return total

    @cached_property
    def output_loss(self) -> sp.Expr:
        """The loss as a function of the last output (and ``y``): what dL/d(output) differentiates."""
        a, y = self.symbols(self.output_name), self.symbols("y")
        return self._reduce([self.loss_row.sympy(ak, yk) for ak, yk in zip(self._examples(a), self._examples(y))])

    @cached_property
    def local_loss(self) -> sp.Expr:
        """The loss as a function of the last stage it needs: the logits when the output/loss pair is
        written in them (softmax + cross-entropy: log-sum-exp), else the last output."""
        if not self.fused:
            return self.output_loss
        z, y = self.symbols(self.loss_stage), self.symbols("y")
        return self._reduce([self.fused.sympy(zk, yk) for zk, yk in zip(self._examples(z), self._examples(y))])

    def forward_env(self, start: str | None = None) -> dict:
        """Symbol -> written-out expression for every stage after ``start`` (all stages if ``None``).

        The stage ``start`` itself and everything not downstream of it stay as symbols.
        """
        env = {}
        after = start is None
        for stage in self.stages:
            if after:
                env.update(zip(stage.symbols, stage.local.xreplace(env)))
            after = after or stage.name == start
        return env

    def written_out(self, name: str) -> sp.Matrix:
        """Intermediate ``name`` written out in the inputs and the parameters."""
        return self.symbols(name).xreplace(self.forward_env())

    @cached_property
    def loss(self) -> sp.Expr:
        """The scalar loss written out in the inputs and the parameters."""
        return self.local_loss.xreplace(self.forward_env())

    def loss_from(self, name: str) -> sp.Expr:
        """The loss written out as a function of intermediate ``name`` (and what is not downstream of it)."""
        if name == self.output_name:
            return self.output_loss
        return self.local_loss.xreplace(self.forward_env(start=name))
