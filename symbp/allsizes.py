"""Proofs for all sizes: a claim judged with the widths and the batch as symbols, in index notation.

How it works
    Every width is a SymPy symbol (``n0, n1, ..., nL`` for an MLP, ``n_<name>`` for a network of
    layers, ``N`` for the batch) and every variable an ``IndexedBase`` (``W2[i, j]``, ``z2[n, i]``;
    one example is a column, ``z2[i, 1]``). Each op of the table gives its forward in index form
    (the ``index`` column of :class:`symbp.ops.Op`: ``z[n, i] = Sum(W[i, k] * a[n, k], (k, 1, n_in)) +
    b[i, 1]``), and the loss row gives its per-unit form (read off the registry row's own SymPy form,
    summed over the units or averaged when the row averages: ``1/n``; ``1/N`` for a mean over a batch).

    The truth for ``dL/dV[r, c]`` is derived, never written: for each layer ``l`` that reads ``V``,
    ``sum_{n, i} dL/dout_l[n, i] * diff(out_l[n, i], V[r, c])`` with ``sympy.diff`` of the index form
    (which yields Kronecker deltas), where ``dL/dout_l`` is the free symbol ``d<out>[n, i]`` (the true
    upstream gradient, as in the claim language) or, for the last output, ``diff`` of the loss. The
    claim's parse tree (:mod:`symbp.formula`) is translated to index form with symbolic shapes (``@``
    a sum over the shared index, ``.T`` swapped indices, ``*`` entry-wise with NumPy broadcasting of a
    dimension of 1, ``sum(axis)``, ``mean`` as a sum over the symbolic count, ``ones``, sizes by name);
    a shape that does not agree for every size (``n2`` against ``n3``, ``N`` against 1) leaves the
    claim undecided. The outputs of parameter-free layers (``a_l = f(z_l)``, softmax) are replaced by
    their definitions on both sides. An op with internal stages (a norm's mean and variance) gives
    each stage's index form too (the row's ``index_stages``: ``mu[n] = Sum(x[n, k], (k, 1, D)) / D``,
    ``var[n] = Sum((x[n, k] - mu[n])**2, (k, 1, D)) / D``, batch norm's over the examples, ``1/N``); the
    output's form reads them, so the truth differentiates through them, and a claim's stage
    (``ln2mean``) is replaced by its definition, exactly as the op's forward defines it. A stage that
    the row's backward gives a claim for (attention's ``Q``, ``K``, ``V``, scores ``S``, weights ``P``)
    is instead a variable of its own: the forms that read it see its entries, the truth sums over its
    readers too with its own true upstream ``d<stage>``, and a parameter-free one (``S``, ``P``) is
    replaced by its definition on both sides. A configuration field that sets a new width (attention's
    ``dk``, also its scale ``1/sqrt(dk)``) is that width's symbol, as :func:`_twin` varies it.

    The normal form of ``claim - truth``: every ``Sum`` pulled to the top (each bound index renamed
    fresh, so products of sums never capture), products distributed, each Kronecker delta
    ``delta(k, v)`` with ``k`` a bound index summed out by ``k = v`` where ``v`` lies in ``k``'s range
    for every size (``v`` a free index or a bound index with the same range, or 1): this is SymPy's
    ``deltasummation`` with its ``Piecewise`` on the range discharged by that range fact; a bound
    index the term does not use gives the factor ``hi``; under softmax + cross-entropy's side
    condition (every target row sums to 1), ``sum_k y[n, k] * R = R`` when ``k`` appears nowhere
    else. Bound indices are then renamed canonically, terms are grouped by their sums (same ranges),
    and each group's integrand is tested by :func:`symbp.exact.frozen_zero` (entries, remaining sums
    and function applications frozen to indeterminates, then ``cancel(together(...))``).

Soundness (no false "holds")
    Every rewriting step is an identity valid for all positive whole sizes: a parameter-free output or
    an internal stage replaced by its definition (the op's own index form), distributing a product over
    sums, renaming bound indices, ``sum_k f(k) delta(k, v) = f(v)`` for ``v`` in ``1..hi`` (checked
    symbolically, not assumed), ``sum_k c = hi * c``, and the stated side condition; causal
    attention's mask ``step(n - m + 1/2)`` is 0 or 1 at whole indices (never at the kink), so the
    ``step ** k = step`` of :func:`_zero` holds for it; and when that does not show it, each entry of a
    stage's upstream ``d<stage>`` replaced by that stage's own truth (both stand for the same true
    gradient), which is how causal attention's ``dS``, zero above the diagonal, is seen to be so. A group whose integrand is zero as a rational
    function of indeterminates is zero whatever the entries are, and a sum of zero groups is zero.
    So when every group vanishes the claim equals the truth for every
    width, every batch and every value of the entries: ``"all-sizes"``, ``"sizes": "all"``. The converse
    is not claimed: a group that does not vanish proves nothing, and the claim goes to the concrete
    tiers of :mod:`symbp.verify`, at the given sizes (and, to catch a claim true only at those sizes,
    at other sizes too: :func:`general`).

Why one layer is enough
    A claim names its upstream gradients (``dz3``, ``da2``) and each stands for the *true* gradient,
    whatever the layers above compute: the index form keeps them as free symbols. A claim for a
    layer's input or parameters is therefore a statement about that one op and its upstream value, and
    a proof of it with symbolic sizes holds for that op at any position in any network of any depth:
    the textbook backward is proved layer by layer, once for every network.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from . import functions as F
from .errors import SymbpError
from .exact import frozen_zero
from .formula import CONSTANTS, ELEMENTWISE

POSITIVE = {"integer": True, "positive": True}


class Undecided(Exception):
    """The normal form cannot decide this claim (the reason is the message)."""


def _index(name):
    return sp.Dummy(name, **POSITIVE)


# --------------------------------------------------------------------------- the network in index form


class World:
    """``net`` with symbolic sizes: width symbols, shapes, entries, definitions and the loss."""

    def __init__(self, net):
        from .network import MLP

        self.net = net
        self.layers = net.network.layers if isinstance(net, MLP) else net.layers
        self.batch = bool(net.batch)
        self.N = sp.Symbol("N", **POSITIVE) if net.batch else None
        self.width, self.sizes, self.params, self.param_shape = {}, {}, {}, {}
        n0 = sp.Symbol("n0", **POSITIVE)
        self.width["x"] = self.width["a0"] = n0
        self.sizes.update({"n0": n0, "n_x": n0})
        if self.N is not None:
            self.sizes["N"] = self.N
        affines = 0
        for layer in self.layers:
            op = layer.op
            n_in = self.width[layer.inp]
            try:
                new = op.width(layer.cfg, layer.n_in) == op.width(layer.cfg, layer.n_in + 1)
            except Exception:
                new = True
            if new:
                affines += 1
                symbol = sp.Symbol(f"n{affines}" if isinstance(net, MLP) else f"n_{layer.name}", **POSITIVE)
            else:
                symbol = n_in
            self.width[layer.name] = symbol
            for other in layer.extra.values():
                if other in self.width and self.width[other] != n_in:
                    # the network adds two outputs: their widths are one size (it was checked so)
                    if not isinstance(n_in, sp.Symbol) or n_in in (n0, self.N):
                        raise Undecided(f"{layer.label} adds {other} of another width")
                    keep = self.width[other]
                    self.width = {k: (keep if v == n_in else v) for k, v in self.width.items()}
                    self.param_shape = {k: tuple(d.xreplace({n_in: keep}) for d in v) if v else v
                                        for k, v in self.param_shape.items()}
                    symbol = keep if symbol == n_in else symbol
                    self.width[layer.name] = symbol
                    n_in = keep
                if other not in self.width:  # a mask: an input shaped like the layer's input
                    self.width[other] = n_in
            if op.index is None:
                continue
            for role, name in layer.params.items():
                cfg = {key: (symbol if value == layer.n_out and key in op.fields else value)
                       for key, value in layer.cfg.items()}
                try:
                    shape = tuple(sp.sympify(d) for d in op.param_shape(role, cfg, n_in))
                except Exception:
                    shape = None
                self.param_shape[name] = shape
        if isinstance(net, MLP):
            for l in range(net.L + 1):
                self.sizes[f"n{l}"] = self.width["x" if l == 0 else f"z{l}"]
        else:
            for name, symbol in self.width.items():
                self.sizes[f"n_{name}"] = symbol
        self.last = self.layers[-1]
        self.width["y"] = self.width[self.last.name]
        self.definitions = {layer.name: layer for layer in self.layers
                            if layer.op.index is not None and not layer.params and not layer.stages}
        self.bases = {}
        # a stage's name: (its layer, key); its symbolic shape; the stages read as variables of their own
        self.stage_of, self.stage_shape, self.nodes = {}, {}, set()
        for layer in self.layers:
            if layer.op.index is not None and layer.stages:
                claimed = set(layer.op.backward(layer.context(net)))
                self.nodes |= {name for name in layer.stages.values() if name in claimed}
                forms = self._inputs(layer, self.raw)[3]
                params = [self.base(name) for name in layer.params.values()]
                for key, name in layer.stages.items():
                    rows, cols = (sp.sympify(d) for d in forms[key][0])
                    self.stage_of[name] = (layer, key)
                    self.stage_shape[name] = (rows, cols) if self.batch else (cols, rows)
                    if name in self.nodes and not forms[key][1](_index("e"), _index("i")).has(*params):
                        self.definitions[name] = layer  # a parameter-free stage (scores, weights)
        fused = net.fused
        self.side_condition = fused.side_condition if fused is not None and fused.side_condition else None
        self.loss_unit, self.loss_scale = _loss_form(net.loss_row)

    # shapes and entries, in the network's orientation (columns for one example, rows for a batch)
    def shape(self, name):
        if name in self.stage_shape:
            return self.stage_shape[name]
        if name in self.param_shape:
            if self.param_shape[name] is None:
                raise Undecided(f"no symbolic shape for {name}")
            return self.param_shape[name]
        if name not in self.width:
            raise Undecided(f"'{name}' has no index form")
        w = self.width[name]
        return (self.N, w) if self.batch else (w, sp.Integer(1))

    def base(self, name):
        if name == "a0":
            name = "x"
        if name not in self.bases:
            self.bases[name] = sp.IndexedBase(name)
        return self.bases[name]

    def raw(self, name):
        return lambda r, c: self.base(name)[r, c]

    def rows(self, at):
        """``at(r, c)`` read by example ``e`` and feature ``i`` (one example: ``e`` is 1)."""
        return (lambda e, i: at(e, i)) if self.batch else (lambda e, i: at(i, sp.Integer(1)))

    def value(self, name):
        """Entries of ``name`` with the outputs of parameter-free layers and the internal stages (a norm's
        mean) replaced by their definitions."""
        if name in self.stage_of and (name not in self.nodes or name in self.definitions):
            layer, key = self.stage_of[name]
            entry = self._inputs(layer, self.value)[3][key][1]
            return lambda r, c: entry(r, c) if self.batch else entry(c, r)
        if name in self.stage_of:
            return self.raw(name)
        layer = self.definitions.get(name)
        if layer is None:
            return self.raw(name)

        def at(r, c):
            e, i = (r, c) if self.batch else (sp.Integer(1), r)
            X = self.rows(self.value(layer.inp))
            E = {key: self.rows(self.value(other)) for key, other in layer.extra.items()}
            return layer.op.index(X, {}, E, layer.cfg, e, i, self.width[layer.inp])

        return at

    def substitute(self, expr):
        return expr.replace(lambda u: isinstance(u, sp.Indexed) and str(u.base) in self.definitions,
                            lambda u: self.value(str(u.base))(*u.indices))

    def _local(self, layer, e, i):
        """The raw index form of ``layer``'s output at example ``e``, feature ``i`` (its stages expanded)."""
        X, P, E, forms = self._inputs(layer, self.raw)
        if not forms:
            return layer.op.index(X, P, E, layer.cfg, e, i, self.width[layer.inp])
        return layer.op.index(X, P, E, self._cfg(layer), e, i, self.width[layer.inp], self.N or sp.Integer(1))

    def _cfg(self, layer):
        """The layer's configuration with a whole-number field that sets its new width (attention's
        ``dk``) as the width's symbol, as :func:`_twin` varies it."""
        if self.width[layer.name] == self.width[layer.inp]:
            return layer.cfg
        return {key: (self.width[layer.name] if type(value) is int and value == layer.n_out
                      and key in layer.op.fields else value) for key, value in layer.cfg.items()}

    def _inputs(self, layer, read):
        """``(X, P, E, stages)`` of ``layer`` in the rows orientation, ``read`` giving the entries of its
        input and extra inputs; ``E`` also holds each internal stage's index form by its key (the op's
        ``index_stages``, which read the earlier stages from ``E`` when an entry is taken)."""
        X = self.rows(read(layer.inp))
        E = {key: self.rows(read(other)) for key, other in layer.extra.items()}
        P = {role: self.raw(name) for role, name in layer.params.items()}
        if not layer.stages:
            return X, P, E, {}
        if layer.op.index_stages is None:
            raise Undecided(f"{layer.label} has no index form of its stages")
        forms = layer.op.index_stages(X, P, E, self._cfg(layer), self.width[layer.inp], self.N or sp.Integer(1))
        if set(forms) != set(layer.stages) or set(forms) & set(E):
            raise Undecided(f"{layer.label}: its stages' index forms do not match its stages")

        def lazy(name):  # a stage read as a variable, its entries taken when asked (value reads itself)
            return self.rows(lambda r, c: read(name)(r, c))

        E.update({key: (lazy(layer.stages[key]) if layer.stages[key] in self.nodes else entry)
                  for key, (_, entry) in forms.items()})
        return X, P, E, forms

    def _examples(self, body, e):
        return sp.Sum(body, (e, 1, self.N)) if self.batch else body.xreplace({e: sp.Integer(1)})

    def loss_gradient(self, r, c):
        """``dL/d out[r, c]`` for the last output, by ``sympy.diff`` of the loss in index form (derived
        once at two placeholder indices, then put at ``r, c``)."""
        if "loss" not in self.bases:
            p, q = sp.Symbol("_lr", **POSITIVE), sp.Symbol("_lc", **POSITIVE)
            self.bases["loss"] = (p, q, self._loss_gradient(p, q if self.batch else sp.Integer(1)))
        p, q, value = self.bases["loss"]
        return value.xreplace({p: r, q: c} if self.batch else {p: r})

    def loss(self):
        """The loss in index form, over the raw entries of the last output (nothing substituted)."""
        out, width = self.last.name, self.width[self.last.name]
        e, k = _index("e"), _index("k")
        a, y = self.rows(self.raw(out)), self.rows(self.raw("y"))
        unit = self.loss_unit(a(e, k), y(e, k))
        scale = self.loss_scale(width) / (self.N if self.batch and self.net.reduction == "mean" else 1)
        return scale * self._examples(sp.Sum(unit, (k, 1, width)), e)

    def _loss_gradient(self, r, c):
        return self.substitute(sp.diff(self.loss(), self.raw(self.last.name)(r, c)))

    def readers(self, target):
        """The layers whose index form reads ``target`` (as input, extra input, parameter or a stage
        read as a variable of its own)."""
        return [layer for layer in self.layers
                if layer.inp == target or target in layer.extra.values() or target in layer.params.values()
                or target in self.nodes and target in layer.stages.values()]

    def upstream(self, name):
        if name == self.last.name:
            return self.loss_gradient
        return self.raw(f"d{name}")

    def truth(self, target, r, c):
        """``dL/d target[r, c]``: the chain rule over the layers that read ``target``, in index form."""
        entry = self.raw(target)(r, c)
        total = sp.Integer(0)
        readers = self.readers(target)
        staged = False
        for name in self.nodes:  # an internal stage read as a variable, with its own upstream d<stage>
            layer, key = self.stage_of[name]
            (rows, cols), form = self._inputs(layer, self.raw)[3][key]
            e, i = _index("e"), _index("i")
            at = form(e, i)
            if at.has(self.base(target)):
                staged = True
                up = self.rows(self.raw(f"d{name}"))(e, i)
                total += sp.Sum(sp.Sum(up * self.substitute(sp.diff(at, entry)), (i, 1, cols)), (e, 1, rows))
        for layer in readers:
            if layer.op.index is None:
                raise Undecided(f"{layer.label} has no index form")
            e, i = _index("e"), _index("i")
            local = sp.diff(self._local(layer, e if self.batch else sp.Integer(1), i), entry)
            up = self.rows(self.upstream(layer.name))(e, i)
            total += self._examples(sp.Sum(up * self.substitute(local), (i, 1, self.width[layer.name])), e)
        if target == self.last.name:
            total += self.loss_gradient(r, c)
        if not readers and not staged and target != self.last.name:
            raise Undecided(f"no layer reads {target}")
        return total


def _loss_form(row):
    """``(unit, scale)``: the loss of one example is ``scale(n) * sum_k unit(a_k, y_k)``, read off the
    row's own SymPy form (summed over the units, or averaged: ``1/n``)."""
    a1, a2, y1, y2 = sp.symbols("a1 a2 y1 y2", positive=True)
    u, v = sp.Dummy("u"), sp.Dummy("v")
    unit = row.sympy([u], [v])
    two = row.sympy([a1, a2], [y1, y2])
    summed = unit.xreplace({u: a1, v: y1}) + unit.xreplace({u: a2, v: y2})
    if sp.expand(two - summed) == 0:
        scale = lambda n: sp.Integer(1)  # noqa: E731
    elif sp.expand(two - summed / 2) == 0:
        scale = lambda n: 1 / n  # noqa: E731
    else:
        raise Undecided(f"loss {row.name!r} is not a sum or mean over the units")
    return (lambda a, y: unit.xreplace({u: a, v: y})), scale


# --------------------------------------------------------------------------- claims in index form


def translate(node, world):
    """``(shape, entry)``: a parsed claim with symbolic shapes, ``entry(r, c)`` a SymPy expression."""
    op = node.op
    if op == "name":
        name = node.value
        if name == "N":
            return (sp.Integer(1), sp.Integer(1)), lambda r, c: world.N
        if name.startswith("d") and (name[1:] in world.width | world.param_shape or name[1:] in world.nodes):
            return world.shape(name[1:]), world.upstream(name[1:])
        return world.shape(name), world.value(name)
    if op == "number":
        value = sp.Rational(node.value.numerator, node.value.denominator)
        return (sp.Integer(1), sp.Integer(1)), lambda r, c: value
    if op == "size":
        if node.value[0] not in world.sizes:
            raise Undecided(f"size {node.value[0]} has no symbol")
        symbol = world.sizes[node.value[0]]
        return (sp.Integer(1), sp.Integer(1)), lambda r, c: symbol
    if op == "const":
        value = CONSTANTS[node.value]
        return (sp.Integer(1), sp.Integer(1)), lambda r, c: value
    if op == "ones":
        dims = tuple(_dimension(d, world) for d in node.value)
        return dims, lambda r, c: sp.Integer(1)
    args = [translate(a, world) for a in node.args]
    if op == "neg":
        (shape, f), = args
        return shape, lambda r, c: -f(r, c)
    if op == "transpose":
        (shape, f), = args
        return (shape[1], shape[0]), lambda r, c: f(c, r)
    if op == "pow":
        (shape, f), = args
        exponent = sp.Rational(node.value.numerator, node.value.denominator)
        return shape, lambda r, c: f(r, c) ** exponent
    if op == "func":
        (shape, f), = args
        fn = ELEMENTWISE[node.value]
        return shape, lambda r, c: fn(f(r, c))
    if op == "softmax":
        (shape, f), = args
        axis = node.value

        def soft(r, c):
            k = _index("k")
            total = sp.Sum(sp.exp(f(k, c) if axis == 0 else f(r, k)), (k, 1, shape[axis]))
            return sp.exp(f(r, c)) / total
        return shape, soft
    if op == "sum":
        (shape, f), = args
        return _sum(shape, f, node.value)
    if op == "matmul":
        (s1, f), (s2, g) = args
        if s1[1] != s2[0]:
            raise Undecided(f"{node.text}: inner sizes {s1[1]} and {s2[0]} differ in general")

        def product(r, c):
            if s1[1] == 1:
                return f(r, 1) * g(1, c)
            k = _index("k")
            return sp.Sum(f(r, k) * g(k, c), (k, 1, s1[1]))
        return (s1[0], s2[1]), product
    if op in ("add", "sub", "mul", "div"):
        (s1, f), (s2, g) = args
        shape = tuple(_broadcast(d1, d2, node) for d1, d2 in zip(s1, s2))
        f, g = _stretch(f, s1), _stretch(g, s2)
        if op == "div" and node.sugar and node.sugar[0] in ("mean", "var"):
            axis, (inner, _) = node.sugar[1], translate(sugar_summed(node), world)
            count = inner[0] * inner[1] if axis is None else inner[axis]
            return shape, lambda r, c: f(r, c) / count
        combine = {"add": sp.Add, "sub": lambda u, v: u - v, "mul": sp.Mul, "div": lambda u, v: u / v}[op]
        return shape, lambda r, c: combine(f(r, c), g(r, c))
    raise Undecided(f"{op} has no index form here")


def sugar_summed(node):
    """The operand summed by a ``mean``/``var`` node (``div(sum(X, axis), count)``): ``X``."""
    return node.args[0].args[0]


def _sum(shape, f, axis):
    def total(r, c):
        k, j = _index("k"), _index("j")
        if axis is None:
            return sp.Sum(sp.Sum(f(k, j), (j, 1, shape[1])), (k, 1, shape[0]))
        if axis == 0:
            return sp.Sum(f(k, c), (k, 1, shape[0]))
        return sp.Sum(f(r, j), (j, 1, shape[1]))
    out = (sp.Integer(1), sp.Integer(1)) if axis is None else \
        ((sp.Integer(1), shape[1]) if axis == 0 else (shape[0], sp.Integer(1)))
    return out, total


def _dimension(d, world):
    if isinstance(d, int):
        return sp.Integer(d)
    if d not in world.sizes:
        raise Undecided(f"size {d} has no symbol")
    return world.sizes[d]


def _broadcast(d1, d2, node):
    if d1 == d2:
        return d1
    if d1 == 1:
        return d2
    if d2 == 1:
        return d1
    raise Undecided(f"{node.text}: sizes {d1} and {d2} differ in general")


def _stretch(f, shape):
    one = sp.Integer(1)
    return lambda r, c: f(one if shape[0] == 1 else r, one if shape[1] == 1 else c)


# --------------------------------------------------------------------------- the normal form


def _terms(expr):
    """``expr`` as ``[(bounds, body)]``: ``sum over bounds of body`` for each term, sums pulled out."""
    if isinstance(expr, sp.Sum):
        body, bounds = expr.function, []
        for k, lo, hi in expr.limits:
            if lo != 1:
                raise Undecided("a sum that does not start at 1")
            fresh = _index("k")
            body = body.xreplace({k: fresh})
            bounds.append((fresh, hi))
        return [(tuple(bounds) + b, t) for b, t in _terms(body)]
    if expr.is_Add:
        return [term for arg in expr.args for term in _terms(arg)]
    if expr.is_Mul:
        out = [((), sp.Integer(1))]
        for arg in expr.args:
            out = [(b1 + b2, t1 * t2) for b1, t1 in out for b2, t2 in _terms(arg)]
        return out
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0 and expr.base.has(sp.Sum):
        return _terms(sp.Mul(*[expr.base] * int(expr.exp), evaluate=False))
    return [((), expr)]


def _in_range(v, hi, ranges):
    if v == 1:
        return True
    return ranges.get(v) == hi


def _collapse(bounds, body, ranges, world, used):
    """Sum out the Kronecker deltas, the unused bound indices and (under it) the side condition."""
    bounds = dict(bounds)
    changed = True
    while changed:
        changed = False
        for factor in sp.Mul.make_args(body):
            if not isinstance(factor, sp.KroneckerDelta):
                continue
            u, v = factor.args
            for k, other in ((u, v), (v, u)):
                if k in bounds and not other.has(k) and _in_range(other, bounds[k], {**ranges, **bounds}):
                    body = body.xreplace({k: other})
                    del bounds[k]
                    changed = True
                    break
            if changed:
                break
    for k in list(bounds):
        if not body.has(k):
            body = body * bounds.pop(k)
    if world.side_condition:
        feature = 1 if world.batch else 0
        for k in list(bounds):
            factors = [f for f in sp.Mul.make_args(body) if f.has(k)]
            if len(factors) == 1 and isinstance(factors[0], sp.Indexed) and str(factors[0].base) == "y" \
                    and factors[0].indices[feature] == k and not factors[0].indices[1 - feature].has(k) \
                    and bounds[k] == world.width["y"]:
                body = body / factors[0]
                del bounds[k]
                used.add(world.side_condition)
    return bounds, body


_CANONICAL = [sp.Symbol(f"_k{j}", **POSITIVE) for j in range(12)]


def _height(expr):
    if isinstance(expr, sp.Sum):
        return 1 + _height(expr.function)
    if expr.is_Atom or not expr.args:
        return 0
    return max(_height(a) for a in expr.args)


def _inner(expr):
    """Every sum's indices renamed by its height (the nesting of sums below it): a sum met in two
    places becomes one object, so ``S * S**-2`` is ``1/S`` (no capture: an enclosing sum is higher)."""
    if isinstance(expr, sp.Sum):
        body = _inner(expr.function)
        height, limits = _height(body), []
        for j, (k, lo, hi) in enumerate(expr.limits):
            fresh = sp.Symbol(f"_s{height}_{j}", **POSITIVE)
            body = body.xreplace({k: fresh})
            limits.append((fresh, lo, hi))
        return sp.Sum(body, *limits)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_inner(a) for a in expr.args])


def _template(u, sizes):
    free, seen, symbols = [], set(), u.free_symbols
    for s in sp.preorder_traversal(u):
        if isinstance(s, sp.Symbol) and s in symbols and s not in sizes and s not in seen:
            seen.add(s)
            free.append(s)
    return u.xreplace({f: sp.Symbol(f"_p{m}") for m, f in enumerate(free)}), free


def _atomize(expr, sizes):
    """Sums met as a denominator or inside a function (softmax's ``sum_k exp(z[n, k])``) become one
    opaque function of their free indices everywhere they occur, also as plain factors, so that
    ``S * (1/S)**2`` cancels. Sound: an identity with an opaque function holds for the real one."""
    atoms = {}

    def collect(e, plain):
        if isinstance(e, sp.Sum):
            if not plain:
                key = _template(e, sizes)[0]
                atoms.setdefault(key, sp.Function(f"S{len(atoms)}"))
                return
            collect(e.function, True)
            return
        if e.is_Atom or not e.args:
            return
        if e.is_Add or e.is_Mul:
            for a in e.args:
                collect(a, plain)
        elif e.is_Pow:
            collect(e.base, plain and e.exp.is_Integer and e.exp > 0)
            collect(e.exp, False)
        else:
            for a in e.args:
                collect(a, False)

    collect(expr, True)
    if not atoms:
        return expr

    def swap(e):
        if isinstance(e, sp.Sum):
            key, free = _template(e, sizes)
            if key in atoms:
                return atoms[key](*free)
        if e.is_Atom or not e.args:
            return e
        return e.func(*[swap(a) for a in e.args])

    return swap(expr)


def _canonical(bounds, body):
    body = _inner(body)
    keys = list(bounds)
    if len(keys) > 5:
        raise Undecided("too many nested sums")
    _, rest = body.as_coeff_Mul()
    best = None
    for order in itertools.permutations(keys):
        mapping = {k: _CANONICAL[j] for j, k in enumerate(order)}
        key = (tuple(str(bounds[k]) for k in order), sp.srepr(rest.xreplace(mapping)))
        if best is None or key < best[0]:
            best = (key, mapping, order)
    _, mapping, order = best
    signature = tuple((_CANONICAL[j], bounds[k]) for j, k in enumerate(order))
    return signature, body.xreplace(mapping)


def normal_form(expr, ranges, world, used):
    """``{sums: integrand}``: ``expr`` as a sum of groups, each group a sum over the same ranges."""
    groups = {}
    for bounds, body in _terms(_atomize(_inner(expr), set(world.sizes.values()))):
        expanded = sp.expand(body, deep=False, power_exp=False, power_base=False, log=False)
        for mono in sp.Add.make_args(expanded):
            if mono.has(sp.Sum) and any(isinstance(f, sp.Sum) for f in sp.Mul.make_args(mono)):
                for b2, t2 in _terms(mono):  # a sum the expansion brought up
                    _add(groups, *_collapse(bounds + b2, t2, ranges, world, used))
                continue
            _add(groups, *_collapse(bounds, mono, ranges, world, used))
    return groups


def _add(groups, bounds, body):
    if body.has(sp.Heaviside):  # step(u)**k = step(u) (a 0/1 value) before the canonical renaming, so
        body = body.replace(lambda u: u.is_Pow and isinstance(u.base, sp.Heaviside)  # that terms equal
                            and u.exp.is_Integer and u.exp > 0, lambda u: u.base)   # up to it group alike
    signature, body = _canonical(bounds, body)
    groups[signature] = groups.get(signature, sp.Integer(0)) + body


def _zero(expr) -> bool:
    """Zero as a rational function of entries, remaining sums and function applications, after two
    identities of the kinks valid for every real ``u``: ``relu(u) = u * step(u)`` (both 0 at 0) and
    ``step(u) ** k = step(u)`` (a 0/1 value), so that ``(1 - step(u)) * relu(u)`` is 0 (ELU's form)."""
    table = {}
    if expr.has(F.relu):
        expr = expr.replace(lambda u: isinstance(u, F.relu), lambda u: u.args[0] * F.step(u.args[0]))
    if expr.has(sp.Heaviside):
        expr = sp.expand(expr, deep=False, power_exp=False, power_base=False, log=False)
        expr = expr.replace(lambda u: u.is_Pow and isinstance(u.base, sp.Heaviside) and u.exp.is_Integer
                            and u.exp > 0, lambda u: u.base)

    def freeze(u):
        if u not in table:
            table[u] = sp.Dummy("E")
        return table[u]

    frozen = expr.replace(lambda u: isinstance(u, (sp.Sum, sp.Indexed)), freeze)
    return frozen_zero(frozen)


# --------------------------------------------------------------------------- proofs


def prove(net, target, node, world=None):
    """``(True, assumptions, detail)`` when the claim ``node`` for ``dL/d target`` holds for all sizes;
    raises :class:`Undecided` (with the reason) otherwise. Never says True for a claim that is false."""
    world = world or World(net)
    shape = world.shape(target)
    cshape, claim = translate(node, world)
    if tuple(cshape) != tuple(shape):
        raise Undecided(f"shape {_shape_text(cshape)} against {_shape_text(shape)} in general")
    r = sp.Symbol("r", **POSITIVE) if shape[0] != 1 else sp.Integer(1)
    c = sp.Symbol("c", **POSITIVE) if shape[1] != 1 else sp.Integer(1)
    ranges = {s: d for s, d in ((r, shape[0]), (c, shape[1])) if s != 1}
    used = set()
    truth = world.truth(target, r, c)
    difference = claim(r, c) - truth
    if not _vanishes(difference, ranges, world, used):
        # a stage's upstream (causal attention's dS, zero above the diagonal) replaced by its own
        # truth in terms of the gradients above it: the same true gradient, so the same difference
        opened = _open_upstreams(difference, world)
        used = set()
        if opened is None or not _vanishes(opened, ranges, world, used):
            raise Undecided("the normal form does not show claim = truth")
    return sorted(used), _detail(world, truth, sorted(used))


def _vanishes(expr, ranges, world, used) -> bool:
    groups = normal_form(sp.expand(expr, deep=False, power_exp=False, power_base=False, log=False), ranges,
                         world, used)
    return all(_zero(body) for body in groups.values())


def _open_upstreams(expr, world):
    """``expr`` with each entry of a stage's true upstream ``d<stage>[a, b]`` (a stage read as a
    variable: attention's ``dS``) replaced by ``World.truth(stage, a, b)``, or None when it has none."""
    names = {f"d{name}": name for name in world.nodes}
    found = [u for u in expr.atoms(sp.Indexed) if str(u.base) in names]
    if not found:
        return None
    p, q = sp.Symbol("_up_r", **POSITIVE), sp.Symbol("_up_c", **POSITIVE)
    forms = {}
    for u in found:
        name = names[str(u.base)]
        if name not in forms:
            shape = world.shape(name)
            forms[name] = (world.truth(name, p if shape[0] != 1 else sp.Integer(1),
                                       q if shape[1] != 1 else sp.Integer(1)))
    return expr.xreplace({u: forms[names[str(u.base)]].xreplace({p: u.indices[0], q: u.indices[1]}) for u in found})


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _detail(world, truth, assumptions):
    names = sorted({str(s) for s in world.sizes.values()}, key=lambda s: (s != "N", len(s), s))
    upstream = sorted({str(u.base) for u in truth.atoms(sp.Indexed) if str(u.base).startswith("d")})
    up = f", with the true upstream {', '.join(upstream)}" if upstream else ""
    assuming = f", assuming {'; '.join(assumptions)}" if assumptions else ""
    return (f"proved for all sizes ({', '.join(names)} symbolic){up}{assuming}; "
            "a proof for one layer holds at any depth")


def detail_parts(detail: str) -> dict | None:
    """The pieces of a :func:`_detail` text, so that a document says the common part once:
    ``{"names": [...], "upstream": [...], "assuming": [...]}``, or None for any other text.

    >>> detail_parts("proved for all sizes (n0, n1 symbolic), with the true upstream dz2, da1, "
    ...              "assuming every target row sums to 1; a proof for one layer holds at any depth")
    {'names': ['n0', 'n1'], 'upstream': ['dz2', 'da1'], 'assuming': ['every target row sums to 1']}
    """
    import re

    m = re.fullmatch(r"proved for all sizes \((.*?) symbolic\)(?:, with the true upstream (.*?))?"
                     r"(?:, assuming (.*))?; a proof for one layer holds at any depth", detail or "")
    if m is None:
        return None
    return {"names": m.group(1).split(", "), "upstream": m.group(2).split(", ") if m.group(2) else [],
            "assuming": m.group(3).split("; ") if m.group(3) else []}


def try_prove(net, target, node, world=None):
    """``(assumptions, detail)`` or ``(None, reason)``."""
    try:
        assumptions, detail = prove(net, target, node, world)
        return assumptions, detail
    except Undecided as why:
        return None, str(why)
    except (SymbpError, RecursionError, TypeError, ValueError, AttributeError, KeyError, NotImplementedError) as why:
        return None, f"the index form failed ({type(why).__name__})"


# --------------------------------------------------------------------------- claims true at the given sizes only


def _generic(given, avoid=()):
    """Other sizes: distinct from each other and from the given ones, small."""
    out, taken = [], set(avoid)
    for g in given:
        v = 2
        while v in taken or v == g:
            v += 1
        out.append(v)
        taken.add(v)
    return out


def _twin(net, sizes, batch):
    """``net`` with other widths (``sizes``: n0, then each new width in order) and batch."""
    from .layers import Network
    from .network import MLP

    if isinstance(net, MLP):
        return MLP(sizes, hidden=list(net.hidden), output=net.output.name, loss=net.loss_row.name,
                   bias=net.bias, batch=batch, reduction=net.reduction)
    if not isinstance(net, Network):
        raise SymbpError("not a network")
    specs, world = [], World(net)
    value = dict(zip([symbol for _, _, symbol in _size_list(net, world)], sizes))
    for layer in net.layers:
        spec = {"op": layer.op, "name": layer.name, **layer.params, **dict(layer.cfg)}
        symbol = world.width[layer.name]
        if symbol != world.width[layer.inp] and symbol in value:
            for key, given in layer.cfg.items():
                if given == layer.n_out and key in layer.op.fields:
                    spec[key] = value[symbol]
        specs.append(spec)
    loss = net.loss_row.name if not hasattr(net.loss_row, "text") else net.loss_row.text
    return Network(specs, input=sizes[0], batch=batch, loss=loss, reduction=net.reduction)


def _size_list(net, world):
    """``[(name, given value, symbol)]`` of the independent sizes: the widths in order, then ``N``."""
    from .network import MLP

    if isinstance(net, MLP):
        out = [(f"n{l}", v, world.sizes[f"n{l}"]) for l, v in enumerate(net.sizes)]
    else:
        out, seen = [("n0", net.input_width, world.width["x"])], {world.width["x"]}
        for layer in net.layers:
            symbol = world.width[layer.name]
            if symbol not in seen and layer.op.index is not None:  # an op without an index form keeps its sizes
                seen.add(symbol)
                out.append((str(symbol), layer.n_out, symbol))
    if net.batch:
        out.append(("N", net.batch, world.N))
    return out


def general(net, target, text, given_result, seed=0):
    """A claim that holds at the given sizes (concrete tiers) but was not proved for all: judge it at
    other sizes too. Returns a failing :class:`symbp.verify.Result` (with the sizes at which it happens
    to hold in ``detail`` and the general form in ``expected``) or None when it holds there as well."""
    from .formula import FormulaError, parse
    from .verify import textbook, verify

    try:
        world = World(net)
        sizes = _size_list(net, world)
    except (Undecided, SymbpError):
        return None
    values = [v for _, v, _ in sizes]
    other = _generic(values)

    def judged(config):
        widths = config[:len(config) - 1] if net.batch else config
        batch = config[-1] if net.batch else None
        try:
            twin = _twin(net, widths, batch)
        except (SymbpError, StopIteration):
            return None
        try:
            parse(text, twin)
        except FormulaError as error:
            if error.kind != "shape":
                return None
        except SymbpError:
            return None
        try:
            return verify(twin, {target: text}, seed=seed, _general=False).results[0]
        except SymbpError:
            return None

    elsewhere = judged(other)
    if elsewhere is None or elsewhere.verdict != "fails":
        return None
    only = None
    for count in (1, 2):
        for chosen in itertools.combinations(range(len(sizes)), count):
            if any(values[j] > 16 for j in chosen):
                continue
            config = [values[j] if j in chosen else other[j] for j in range(len(sizes))]
            result = judged(config)
            if result is not None and result.verdict == "holds":
                only = ", ".join(f"{sizes[j][0]} = {values[j]}" for j in chosen)
                break
        if only:
            break
    at = ", ".join(f"{name} = {v}" for (name, _, _), v in zip(sizes, other))
    general_form = None
    try:
        book = textbook(net).get(target)
        if book is not None and try_prove(net, target, parse(book, net), world)[0] is not None:
            general_form = book
    except SymbpError:
        pass
    where = f"holds only at {only}" if only else "holds at the given sizes only"
    detail = f"{where}, not for all sizes: at {at} it fails ({elsewhere.diagnosis or 'other'})"
    given_result.verdict = "fails"
    given_result.method = elsewhere.method
    given_result.sizes = "all"
    given_result.diagnosis = elsewhere.diagnosis or "other"
    given_result.factor = None
    given_result.expected = general_form
    given_result.got = text
    given_result.detail = detail
    return given_result


def prove_all(net, parsed):
    """``{(target, text): (assumptions or None, detail or reason)}`` for the parsed claims of verify."""
    from .formula import Node

    try:
        world = World(net)
    except Undecided as why:
        return {(t, text): (None, str(why)) for t, text, node in parsed if isinstance(node, Node)}
    out = {}
    for target, text, node in parsed:
        if isinstance(node, Node):
            out[target, text] = try_prove(net, target, node, world)
    return out


# --------------------------------------------------------------------------- diagnosis in general form

MAX_CORRECTIONS = 80  # candidates proved at most, per failed claim


@dataclass(frozen=True)
class Diagnosis:
    """A usual mistake named in general form: ``name`` (verify's vocabulary), the corrected ``claim``
    (formula text, sizes by name: ``(a3 - y) / N``), a ``detail`` line, the proof's ``assumptions``
    and, for ``scaled``, the ``factor`` truth / claim as a SymPy expression in the size symbols and
    its ``value`` at the given sizes."""

    name: str
    claim: str
    detail: str
    assumptions: tuple = ()
    factor: sp.Expr | None = None
    value: float | None = None


def diagnose(net, target, node, world=None, *, ratio=None):
    """A corrected claim *proved for all sizes* (:func:`prove`) for the failed claim ``node`` for
    ``dL/d target``, as a :class:`Diagnosis`, or None when no usual mistake explains it.

    Tried, cheapest first, at most :data:`MAX_CORRECTIONS`: the whole claim transposed, each named
    operand transposed (``W3`` for ``W3.T`` and back), the sign, a factor of sizes (``N``, ``1/N``, 2,
    1/2, each width and its inverse, ``2/n``, each width times ``N`` or ``1/N``; then ``ratio`` itself,
    a number the claim got wrong), an activation
    derivative (the rows' ``f'``, as verify's variants take them) multiplied in at an operand, and one
    removed. ``ratio``, truth / claim at the given sizes when the caller knows it (0 when it is not
    one number there), keeps only the factors of that value. This never refutes anything: the claim's
    ``fails`` needs its own counterexample; only the correction's ``holds`` is proved here.

    >>> import symbp
    >>> from symbp.formula import parse
    >>> net = symbp.MLP([4, 5, 3, 3], batch=4)
    >>> found = diagnose(net, "W3", parse("dz3.T @ a2 / N", net))
    >>> found.name, found.claim, found.detail
    ('scaled', 'dz3.T @ a2', 'multiplied by N it holds for all sizes (1/N applied twice)')
    """
    from .formula import FormulaError, Node, parse

    try:
        world = world or World(net)
    except (Undecided, SymbpError):
        return None
    seen = {str(node)}
    for count, (name, text, detail, factor) in enumerate(_corrections(net, world, target, node, ratio)):
        if count >= MAX_CORRECTIONS:
            break
        if text is None or text in seen:
            continue
        seen.add(text)
        fixed = None
        try:
            fixed = parse(text, net)
            while text.startswith("(") and text.endswith(")") and parse(text[1:-1], net) == fixed:
                text = text[1:-1]  # "(dz2 @ W2)" is "dz2 @ W2"
        except FormulaError:
            if not isinstance(fixed, Node):
                continue
        if fixed.shape != net.shape(target):
            continue
        used, _ = try_prove(net, target, fixed, world)
        if used is not None:
            detail = f"{detail} (assuming {'; '.join(used)})" if used else detail
            value = None
            if factor is not None:
                value = float(factor.xreplace({symbol: v for _, v, symbol in _size_list(net, world)}))
            return Diagnosis(name, text, detail, tuple(used), factor, value)
    return None


def _corrections(net, world, target, node, ratio):
    """``(diagnosis, corrected text, detail, factor)``, cheapest first (see :func:`diagnose`)."""
    from .verify import _looks_like_mask, _masks, _subtrees

    whole = str(node.args[0]) if node.op == "transpose" else f"{_atom(node)}.T"
    shape = net.shape(target)
    swapped = f": claim has shape {node.shape}, dL/d{target} has {shape}" if node.shape != shape else ""
    yield "transposed", whole, f"the transpose holds for all sizes{swapped}", None
    subtrees = list(_subtrees(node))
    for path, sub in subtrees:
        if sub.op == "transpose" and sub.args[0].op == "name":
            yield "transposed", _splice(node, sub, str(sub.args[0])), \
                f"with {sub.args[0]} in place of {sub} it holds for all sizes", None
        elif sub.op == "name" and sub.shape != (1, 1) and not (path and _parent(node, path).op == "transpose"):
            yield "transposed", _splice(node, sub, f"{sub}.T"), \
                f"with {sub}.T in place of {sub} it holds for all sizes", None
    for path, sub in subtrees:
        if sub.op == "neg":
            yield "sign", _splice(node, sub, _atom(sub.args[0])), f"without the sign of '{sub}' it holds for all sizes", None
    yield "sign", f"-{_atom(node)}", "the negative holds for all sizes (sign flipped)", None
    for factor, text in _size_factors(net, world, ratio):
        detail = f"multiplied by {text} it holds for all sizes"
        if net.batch and net.reduction == "mean" and factor in (1 / world.N, world.N):
            detail += " (the 1/N of the mean over the batch is missing)" if factor != world.N else " (1/N applied twice)"
        yield "scaled", _scaled(node, factor, world), detail, factor
    masks = _masks(net)
    for path, sub in subtrees:
        if sub.op in ("number", "size", "const", "ones"):
            continue
        for where, (mask, text) in masks.items():
            if mask.shape == sub.shape:
                yield "missing-activation-derivative", _splice(node, sub, f"{_atom(sub)} * {text}"), \
                    f"multiplied by {text} (f'({where})) at '{sub}' it holds for all sizes", None
    for path, sub in subtrees:
        if sub.op != "mul":
            continue
        for k in (0, 1):
            part, other = sub.args[k], sub.args[1 - k]
            if _looks_like_mask(part) and other.shape == sub.shape:
                yield "extra-activation-derivative", _splice(node, sub, _atom(other)), \
                    f"without the factor '{part}' it holds for all sizes", None
        for mask, text in masks.values():  # a derivative of two factors: X * a1 * (1 - a1) is (X * a1) * (1 - a1)
            if sub.text.endswith(f" * {text}") and mask.op == "mul":
                yield "extra-activation-derivative", _splice(node, sub, sub.text[:-len(f" * {text}")]), \
                    f"without the factor '{text}' it holds for all sizes", None


def _parent(node, path):
    for k in path[:-1]:
        node = node.args[k]
    return node


_ATOMS = ("name", "number", "size", "const", "func", "softmax", "sum", "ones", "diag", "outer", "transpose")


def _atom(node):
    """The text of ``node``, parenthesized unless it binds tighter than any operator around it."""
    text = str(node)
    return text if node.op in _ATOMS or node.sugar else f"({text})"


def _splice(root, sub, new):
    """The source of ``root`` with the source of its subtree ``sub`` replaced by ``new`` (in brackets
    unless an atom or the whole claim)."""
    if sub is root or sub.text == root.text:
        return new
    start = sub.column - root.column
    source = str(root)
    if not root.text or not sub.text or source[start:start + len(sub.text)] != sub.text:
        return None
    if not (new.startswith("(") and new.endswith(")")) and not _simple(new):
        new = f"({new})"
    return source[:start] + new + source[start + len(sub.text):]


def _simple(text):
    """A name, a name's transpose or a number: safe in any context."""
    return text.replace(".T", "").replace("_", "").replace(".", "").isalnum()


def _size_factors(net, world, ratio):
    """``(factor, text)``: ``N^{+-1}``, ``2^{+-1}``, each width ``n^{+-1}``, ``2/n``, ``n^{+-1} N^{+-1}`` and
    the number ``ratio`` itself; only those equal to ``ratio`` at the given sizes when it is known."""
    sizes = _size_list(net, world)
    widths = [(symbol, value) for _, value, symbol in sizes if symbol != world.N]
    given = {symbol: value for _, value, symbol in sizes}
    two = sp.Integer(2)
    out = [world.N, 1 / world.N] if world.N is not None else []
    out += [two, 1 / two]
    for w, _ in widths:
        out += [1 / w, w, two / w]
    if world.N is not None:
        for w, _ in widths:
            out += [w / world.N, 1 / (w * world.N), w * world.N, world.N / w]
    if ratio:  # the number itself last: "X / 4" times 4 holds for all sizes when the 4 was written
        number = Fraction(ratio).limit_denominator(10 ** 6)
        if abs(float(number) - float(ratio)) <= 1e-12 * abs(float(ratio)) and number not in (1, -1):
            out.append(sp.Rational(number.numerator, number.denominator))
    for factor in dict.fromkeys(out):
        value = float(factor.xreplace(given))
        if ratio is not None and abs(value - float(ratio)) > 1e-12 * abs(value):
            continue
        yield factor, _factor_text(factor)


def _factor_text(factor):
    numerator, denominator = factor.as_numer_denom()
    top = "*".join(str(f) for f in sp.Mul.make_args(numerator))
    bottom = [str(f) for f in sp.Mul.make_args(denominator)]
    if denominator == 1:
        return top
    below = bottom[0] if len(bottom) == 1 else f"({'*'.join(bottom)})"
    return f"{top}/{below}"


def _scaled(node, factor, world):
    """The claim times ``factor`` as text: ``X / N`` times ``N`` is ``X`` (``2 * X`` times 1/2 is ``X``),
    else ``X * n3 / N``."""
    numerator, denominator = factor.as_numer_denom()
    kept = None
    if node.op == "div" and not node.sugar and denominator == 1 and _size_value(node.args[1], world) == numerator:
        kept = node.args[0]
    elif node.op == "mul" and numerator == 1:
        for k in (0, 1):
            if _size_value(node.args[k], world) == denominator and kept is None:
                kept = node.args[1 - k]
    if kept is not None:
        return str(kept) if kept.op in _ATOMS + ("mul", "div", "matmul") else _atom(kept)
    text = _atom(node) if node.op not in ("mul", "div", "matmul", "neg") else str(node)
    for f in sp.Mul.make_args(numerator):
        if f != 1:
            text += f" * {f}"
    for f in sp.Mul.make_args(denominator):
        if f != 1:
            text += f" / {f}"
    return text


def _size_value(node, world):
    """The value of a size, number or ``N`` node as a SymPy expression (None for anything else)."""
    if node.op == "number":
        return sp.Rational(node.value.numerator, node.value.denominator)
    if node.op == "size":
        return world.sizes.get(node.value[0])
    return world.N if node.op == "name" and node.value == "N" else None
