"""Derivations for all sizes: the backward pass in index notation, every step checked by the engine.

``derive(net, sizes="symbolic")`` (and ``symbp derive ... --sizes symbolic``) writes, for every
gradient of the textbook backward pass, the derivation the way seed 002 does it by hand::

    dL/dW_ij = sum_{n,k} dL/dz_{n,k} dz_{n,k}/dW_ij       the chain rule over the entries W feeds
    dz_{n,k}/dW_ij = [k = i] a_{n,j}                      sympy.diff of the forward in index form
             = sum_{n,k} delta_{n,k} [k = i] a_{n,j}      the two lines above
             = sum_n delta_{n,i} a_{n,j}                  [k = i] sums out k (i lies in 1..n_l)
             = (delta^T a)_{ij}                           the closed form, proved for all sizes

with the widths ``n0 .. nL`` and the batch ``N`` as symbols (:class:`symbp.allsizes.World`): no
concrete entry appears anywhere.

How each line is obtained and checked
    * The forward of each layer is the op table's ``index`` column; the loss is the registry row's own
      per-unit form (:func:`symbp.allsizes._loss_form`).
    * The local partial is ``sympy.diff`` of that index form with respect to the target's entry
      ``V[i, j]`` (SymPy writes the Kronecker deltas); it is displayed with its inner sums collapsed
      and with softmax's ``exp(z_k) / sum_m exp(z_m)`` folded back into ``a_k``, and that display is
      checked equal to ``sympy.diff``'s own result.
    * Each later line is checked equal to the line before by :mod:`symbp.allsizes`' normal form (the
      outputs of parameter-free layers replaced by their definitions on both sides, deltas collapsed
      under the range facts, side conditions applied and named): a check holds for every width and
      batch, by the soundness argument of that module.
    * The closed form is the textbook claim (:func:`symbp.verify.textbook`), proved for all sizes by
      :func:`symbp.allsizes.prove`.

A step the normal form cannot show is marked unchecked (``Step.checked`` False) and reported; the
document never marks it. A network whose ops have no index form is refused in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

from . import allsizes
from .allsizes import POSITIVE, Undecided, World, _collapse, _index, _terms, _zero
from .errors import SymbpError
from sympy.printing.latex import LatexPrinter

from .latex import SymbpLatexPrinter, formula_latex


@dataclass
class Step:
    """One line ``= tex`` of a derivation, with the reason and whether the engine checked it."""

    tex: str
    why: str
    checked: bool | None  # None: a definition (the chain rule), not a claim to check
    lhs: str = ""  # the left-hand side when the line starts a new equation (the local partial)


@dataclass
class Derivation:
    """The index-notation derivation of one gradient ``dL/d target`` (or of a group of targets that
    read alike with the layer as ``l``)."""

    target: str
    targets: list
    claim: str
    claim_tex: str
    lhs: str
    steps: list
    assumptions: list
    proved: bool
    name_tex: str = ""  # the variable's name (W^{(l)}), for the summary
    layers: str = ""  # "l = 1, 2, 3" when one derivation stands for several layers

    @property
    def checked(self) -> bool:
        return self.proved and all(s.checked is not False for s in self.steps)


@dataclass
class IndexDerivation:
    """Every gradient of ``net`` derived in index notation for all sizes (see the module docstring)."""

    net: object
    sizes: list  # the size symbols' names: n0, n1, ..., N
    forward: list  # [(lhs tex, rhs tex, layers)]
    loss: tuple  # (lhs tex, rhs tex)
    derivations: list = field(default_factory=list)
    side_condition: str | None = None
    description: str = ""  # the network in words, its sizes by name

    @property
    def checked(self) -> bool:
        return all(d.checked for d in self.derivations)

    def __getitem__(self, target):
        for d in self.derivations:
            if target in d.targets:
                return d
        raise KeyError(target)

    def unchecked(self) -> list[str]:
        return [t for d in self.derivations if not d.checked for t in d.targets]

    def write(self, path, *, pdf: bool = False, title: str | None = None, template_dir=None, author=None,
              date=None) -> dict:
        """Write the derivation as a LaTeX document to ``path`` (``.tex``) and, with ``pdf``, its PDF."""
        from . import document

        return document.write_index(self, path, pdf=pdf, title=title, template_dir=template_dir,
                                    author=author, date=date)


# --------------------------------------------------------------------------- printing index expressions


class IndexPrinter(SymbpLatexPrinter):
    """symbp's printer for index expressions: ``W2[i, k]`` as ``W^{(2)}_{i,k}``, ``dz2[n, i]`` as
    ``\\delta^{(2)}_{n,i}``, a dimension of 1 left out (``b2[i, 1]`` is ``b^{(2)}_{i}``),
    ``KroneckerDelta(k, i)`` as the Iverson bracket ``[k = i]``, one summation sign per index, indices
    by their display names, and in an MLP ``x`` as ``a^{(0)}`` (so that layer 1 reads as every layer)."""

    def __init__(self, world, names, *, a0=False, printed=None):
        super().__init__(names=printed)
        self.world = world
        self.index_names = names
        self.a0 = a0

    def parts(self, var):
        if self.a0 and var in ("x", "a0"):
            return "a", "(0)"
        return super().parts(var)

    def dimensions(self, node):
        """The shape of a claim's subtree with sizes by name (for ``\\mathbf{1}_{N}``)."""
        shape, _ = allsizes.translate(node, self.world)
        return tuple(self._print(d) for d in shape)

    def _print_Indexed(self, expr):
        name = str(expr.base)
        grad = name.startswith("d") and any(name[1:] in table for table in
                                            (self.world.width, self.world.param_shape, self.world.stage_shape))
        var = name[1:] if grad else name
        try:
            shape = self.world.shape(var)
        except Undecided:
            shape = (None, None)
        indices = [i for i, d in zip(expr.indices, shape) if not (d == 1 and i == 1)] or list(expr.indices)
        sub = ",".join(self._print(i) for i in indices)
        head = self.grad_base(var) if grad else self.base(var)
        return f"{head}_{{{sub}}}"

    def count(self, node):
        """The count of a ``mean``/``var`` claim node, by name (``n_{z1}``, ``N``)."""
        shape, _ = allsizes.translate(allsizes.sugar_summed(node), self.world)
        axis = node.sugar[1]
        return self._print(shape[0] * shape[1] if axis is None else shape[axis])

    def _print_Pow(self, expr):
        if isinstance(expr.base, sp.Indexed) and expr.exp.is_Integer and expr.exp > 0:
            return f"{{{self._print(expr.base)}}}^{{{self._print(expr.exp)}}}"  # no double superscript
        return super()._print_Pow(expr)

    def _print_KroneckerDelta(self, expr, exp=None):
        i, j = expr.args
        return rf"[{self._print(i)} = {self._print(j)}]"

    def _print_Dummy(self, expr):
        return self.index_names.get(expr, expr.name)

    def _print_Symbol(self, expr, style="plain"):
        if expr in self.index_names:
            return self.index_names[expr]
        return super()._print_Symbol(expr, style)

    def _print_Sum(self, expr):
        limits = "".join(rf"\sum_{{{self._print(k)}=1}}^{{{self._print(hi)}}} " for k, _, hi in reversed(expr.limits))
        body = expr.function
        tex = self._print(body)
        if body.is_Add:
            tex = rf"\left({tex}\right)"
        return limits + tex

    def _print_Mul(self, expr):
        # the textbooks' order: gradients, brackets, entries, then functions (delta_k [k = i] a_j)
        coeff, rest = expr.as_coeff_Mul()
        if coeff is sp.S.NegativeOne and rest != 1:
            return "- " + self._print(rest)

        def rank(f):
            base = f.base if f.is_Pow else f
            if isinstance(base, sp.Indexed):
                return 0 if str(base.base).startswith("d") else 2
            if isinstance(base, sp.KroneckerDelta):
                return 1
            return 3 if not f.is_Number else -1
        factors = sorted(sp.Mul.make_args(expr), key=rank)
        saved = self._settings["order"]
        self._settings["order"] = "none"
        try:
            return LatexPrinter._print_Mul(self, sp.Mul(*factors, evaluate=False))
        finally:
            self._settings["order"] = saved


_BOUND_NAMES = ("k", "p", "q", "s", "t", "u", "v", "w")


def _display_names(exprs, free, world):
    """Display names of the indices of ``exprs``: the free ones as given; a summed example index
    ``n`` (``m`` when ``n`` is free), any other ``k, p, q, ...`` in order of appearance."""
    names = dict(free)
    taken = set(names.values())
    pool = [n for n in _BOUND_NAMES if n not in taken]
    examples = [n for n in ("n", "m", "n'") if n not in taken]
    for expr in exprs:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Sum):
                for k, _, hi in node.limits:
                    if k in names:
                        continue
                    if world.batch and hi == world.N and examples:
                        names[k] = examples.pop(0)
                    else:
                        names[k] = pool.pop(0) if pool else f"k_{{{len(names)}}}"
    return names


# --------------------------------------------------------------------------- the engine's lines


def _rebuild(terms):
    """``sum over bounds of body`` for each ``(bounds, body)``, as one expression."""
    out = sp.Integer(0)
    for bounds, body in terms:
        for k, hi in (bounds.items() if isinstance(bounds, dict) else bounds):
            body = sp.Sum(body, (k, 1, hi))
        out += body
    return out


def _collapsed(expr, ranges, world, used):
    """``expr`` with its sums pulled out, distributed, and its Kronecker deltas summed out: the
    display form of a line (the check of the line is separate)."""
    expanded = sp.expand(expr, deep=False, power_exp=False, power_base=False, log=False)
    terms = []
    for bounds, body in _terms(expanded):
        for mono in sp.Add.make_args(sp.expand(body, deep=False, power_exp=False, power_base=False, log=False)):
            sub = _terms(mono) if mono.has(sp.Sum) else [((), mono)]
            for b2, t2 in sub:
                terms.append(_collapse(tuple(bounds) + tuple(b2), t2, ranges, world, used))
    return sp.factor_terms(_rebuild(terms))


def _fold(expr, world):
    """Softmax's ``exp(z[n, k]) * (sum_m exp(z[n, m]))**-p`` folded back into ``a[n, k]`` factors (a
    display form; the line is checked with ``a`` replaced by its definition)."""
    soft = [layer for layer in world.layers if layer.op.name == "softmax"]
    if not soft:
        return expr
    expr = sp.expand(expr, deep=False, power_exp=False, power_base=False, log=False)

    def fold_term(term):
        for layer in soft:
            base = world.base(layer.inp)
            factors = list(sp.Mul.make_args(term))
            dens = [f for f in factors if f.is_Pow and f.exp.is_Integer and f.exp < 0 and isinstance(f.base, sp.Sum)
                    and isinstance(f.base.function, sp.exp) and isinstance(f.base.function.args[0], sp.Indexed)
                    and f.base.function.args[0].base == base]
            for den in dens:
                p = -int(den.exp)
                exps = [f for f in factors if isinstance(f, sp.exp) and isinstance(f.args[0], sp.Indexed)
                        and f.args[0].base == base]
                if len(exps) < p:
                    continue
                out = world.base(layer.name)
                rest = [f for f in factors if f is not den]
                for e in exps[:p]:
                    rest.remove(e)
                    rest.append(out[e.args[0].indices])
                term = sp.Mul(*rest)
                factors = list(sp.Mul.make_args(term))
        return term

    return sp.Add(*[fold_term(t) for t in sp.Add.make_args(expr)])


def _equal(world, left, right, ranges):
    """Whether ``left = right`` for all sizes, by the normal form (definitions substituted), and the
    side conditions it used. Never True for a false equation; False when it cannot tell."""
    used = set()
    try:
        difference = world.substitute(left) - world.substitute(right)
        groups = allsizes.normal_form(sp.expand(difference, deep=False, power_exp=False, power_base=False,
                                                log=False), ranges, world, used)
        return all(_zero(body) for body in groups.values()), sorted(used)
    except (Undecided, RecursionError, TypeError, ValueError, AttributeError, KeyError, NotImplementedError):
        return False, []


def _entry_indices(world, target):
    shape = world.shape(target)
    r = sp.Symbol("r", **POSITIVE) if shape[0] != 1 else sp.Integer(1)
    c = sp.Symbol("c", **POSITIVE) if shape[1] != 1 else sp.Integer(1)
    ranges = {s: d for s, d in ((r, shape[0]), (c, shape[1])) if s != 1}
    rows = ("n", "i") if world.batch and target not in world.param_shape else ("i", "j")
    return r, c, ranges, {s: n for s, n in zip((r, c), rows) if s != 1}


def _pull(expr):
    """A display form: numbers and sizes that do not depend on a sum's index taken out of the sum
    (``sum_k -y_k log a_k`` is ``-sum_k y_k log a_k``). An identity, so nothing to check."""
    if isinstance(expr, sp.Sum):
        body = _pull(expr.function)
        bound = {k for k, _, _ in expr.limits}
        outside = [f for f in sp.Mul.make_args(body) if not (f.free_symbols & bound) and not f.has(sp.Indexed)]
        inside = [f for f in sp.Mul.make_args(body) if f not in outside]
        return sp.Mul(*outside) * sp.Sum(sp.Mul(*inside), *expr.limits)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_pull(a) for a in expr.args])


def _chain_tex(p, pieces, entry):
    """The chain rule line: for each ``(upstream, output entry, limits)`` the sums over the limits of
    the upstream times the output's partial (``(up, None, [])`` is a term of its own: the loss's)."""
    terms = []
    for up, out, limits in pieces:
        if out is None:
            terms.append(p.doprint(up))
            continue
        sums = "".join(rf"\sum_{{{p.doprint(k)}=1}}^{{{p.doprint(hi)}}} " for k, _, hi in reversed(limits))
        up_tex = p.doprint(up)
        if up.is_Add:
            up_tex = rf"\left({up_tex}\right)"
        terms.append(rf"{sums}{up_tex} \frac{{\partial {p.doprint(out)}}}{{\partial {p.doprint(entry)}}}")
    return " + ".join(terms)


def _closed_step(world, target, node, p, free):
    """``(step, proved, assumptions, claim's LaTeX)``: the closed form, proved by
    :func:`symbp.allsizes.prove` (or marked not proved)."""
    try:
        proof, _ = allsizes.prove(world.net, target, node, world)
        proved = True
    except Undecided:
        proof, proved = [], False
    claim_tex = formula_latex(node, printer=p)
    index = ",".join(free.values())
    closed = claim_tex if node.op == "name" else rf"\left({claim_tex}\right)"
    step = Step(f"{closed}_{{{index}}}" if index else claim_tex,
                "closed form, all sizes" if proved else "closed form: NOT proved", proved)
    return step, proved, proof, claim_tex


def _derive_one(world, target, claim, printer_for):
    """The derivation of ``dL/d target`` (see the module docstring)."""
    from .formula import parse

    r, c, ranges, free = _entry_indices(world, target)
    entry = world.raw(target)(r, c)
    loss = world.loss()
    assumptions = set()
    readers = world.readers(target)
    staged = _stage_readers(world, target)
    if not readers and not staged and target != world.last.name:
        raise Undecided(f"no layer reads {target}")
    if staged or target in world.stage_of or any(layer.stages for layer in readers):
        return _derive_staged(world, target, claim, printer_for, readers, staged, (r, c, ranges, free))
    pieces, locals_, plugged = [], [], sp.Integer(0)
    for layer in readers:
        e = _index("e") if world.batch else sp.Integer(1)
        k = _index("k")
        out = world.rows(world.raw(layer.name))(e, k)
        local_ranges = {**ranges, k: world.width[layer.name], **({e: world.N} if world.batch else {})}
        if layer.name == world.last.name:
            up = _collapsed(sp.diff(loss, out), local_ranges, world, set())
        else:
            up = world.rows(world.raw(f"d{layer.name}"))(e, k)
        raw_local = sp.diff(world._local(layer, e, k), entry)
        shown = sp.factor_terms(_fold(_collapsed(raw_local, local_ranges, world, set()), world))
        ok, used = _equal(world, raw_local, shown, local_ranges)
        assumptions.update(used)
        limits = [(k, 1, world.width[layer.name])] + ([(e, 1, world.N)] if world.batch else [])
        pieces.append((up, out, limits))
        locals_.append((out, shown, ok))
        plugged += sp.Sum(up * shown, *limits)
    if target == world.last.name:
        up = _collapsed(sp.diff(loss, entry), ranges, world, set())
        pieces.append((up, None, []))
        plugged += up
    truth = world.truth(target, r, c)
    used = set()
    collapsed = sp.factor_terms(_fold(_collapsed(plugged, ranges, world, used), world))
    node = parse(claim, world.net)
    names = _display_names([sp.Add(*[sp.Sum(sp.Integer(1), *lim) for _, _, lim in pieces if lim]),
                            plugged], free, world)
    p = printer_for(names)
    q = printer_for(_display_names([_pull(collapsed)], free, world))  # a line of its own: its own names

    if locals_:
        steps = [Step(_chain_tex(p, pieces, entry), "chain rule", None)]
    else:  # the last output: dL/da is the loss's own derivative
        ok, used0 = _equal(world, plugged, truth, ranges)
        assumptions.update(used0)
        steps = [Step(_chain_tex(p, pieces, entry), r"\texttt{sympy.diff} of $L$", ok)]
    for out, shown, ok in locals_:
        steps.append(Step(p.doprint(shown), r"\texttt{sympy.diff}", ok,
                          lhs=rf"\frac{{\partial {p.doprint(out)}}}{{\partial {p.doprint(entry)}}}"))
    if locals_:
        ok, used1 = _equal(world, plugged, truth, ranges)
        assumptions.update(used1)
        steps.append(Step(p.doprint(_pull(plugged)), "put in", ok))
    last = steps[-1].tex
    renamed_only = not plugged.has(sp.KroneckerDelta) and not used and \
        len(plugged.atoms(sp.Sum)) == len(collapsed.atoms(sp.Sum))
    if q.doprint(_pull(collapsed)) != last and not renamed_only:
        ok, used2 = _equal(world, plugged if locals_ else truth, collapsed, ranges)
        why = "brackets summed" if plugged.has(sp.KroneckerDelta) else "collected"
        if used or used2:
            why += ", assumption below"
        assumptions.update(used2)
        steps.append(Step(q.doprint(_pull(collapsed)), why, ok))
    closed, proved, proof, claim_tex = _closed_step(world, target, node, p, free)
    steps.append(closed)
    assumptions.update(proof)
    lhs = rf"\frac{{\partial L}}{{\partial {p.doprint(entry)}}}"
    return Derivation(target, [target], claim, claim_tex, lhs, steps, sorted(assumptions), proved, p.base(target))


def _raw_inputs(world, layer):
    """``(X, P, E)`` of ``layer`` with its stages as entries of their own names (for display)."""
    X = world.rows(world.raw(layer.inp))
    E = {key: world.rows(world.raw(other)) for key, other in layer.extra.items()}
    E.update({key: world.rows(world.raw(name)) for key, name in layer.stages.items()})
    return X, {role: world.raw(name) for role, name in layer.params.items()}, E


def _stage_lines(world, layer, e, i):
    """``[(stage entry, its index form)]`` of ``layer``'s internal stages, each reading the earlier
    stages by name (a norm's ``mu[n] = sum_k x[n, k] / D``, then its variance)."""
    X, P, E = _raw_inputs(world, layer)
    forms = layer.op.index_stages(X, P, E, world._cfg(layer), world.width[layer.inp], world.N or sp.Integer(1))
    lines = []
    for key, ((rows, cols), form) in forms.items():
        r = e if rows != 1 else sp.Integer(1)
        c = i if cols != 1 else sp.Integer(1)
        lines.append((E[key](r, c), form(r, c)))
    return lines


def _stage_readers(world, target):
    """``[(stage name, rows, cols)]``: the internal stages read as variables (attention's Q, K, V, S, P)
    whose index form reads ``target``."""
    out = []
    for name in sorted(world.nodes):
        layer, key = world.stage_of[name]
        (rows, cols), form = world._inputs(layer, world.raw)[3][key]
        if form(_index("e"), _index("i")).has(world.base(target)):
            out.append((name, sp.sympify(rows), sp.sympify(cols)))
    return out


def _derive_staged(world, target, claim, printer_for, readers, staged, at):
    """An op with internal stages (a norm's mean and variance, attention's scores): its entry-by-entry
    lines run through the stages and are too long to teach from, so the derivation is the chain rule
    over the entries that read the target (the stages included) and the closed form, proved for all
    sizes by :func:`symbp.allsizes.prove` against ``sympy.diff`` of the op's index form (which expands
    the stages): every line shown is checked."""
    from .formula import parse

    r, c, ranges, free = at
    entry = world.raw(target)(r, c)
    pieces = []
    for layer in readers:
        e = _index("e") if world.batch else sp.Integer(1)
        k = _index("k")
        limits = [(k, 1, world.width[layer.name])] + ([(e, 1, world.N)] if world.batch else [])
        pieces.append((world.rows(world.raw(f"d{layer.name}"))(e, k), world.rows(world.raw(layer.name))(e, k), limits))
    for name, rows, cols in staged:
        e, k = _index("e"), _index("k")
        view = world.rows(world.raw(name))
        grad = world.rows(world.raw(f"d{name}"))
        limits = [(k, 1, cols), (e, 1, rows)] if world.batch else [(k, 1, cols)]
        pieces.append((grad(e, k) if world.batch else grad(k, e), view(e, k) if world.batch else view(k, e), limits))
    names = _display_names([sp.Add(*[sp.Sum(sp.Integer(1), *lim) for _, _, lim in pieces])], free, world)
    p = printer_for(names)
    closed, proved, proof, claim_tex = _closed_step(world, target, parse(claim, world.net), p, free)
    steps = [Step(_chain_tex(p, pieces, entry), "chain rule", None), closed]
    lhs = rf"\frac{{\partial L}}{{\partial {p.doprint(entry)}}}"
    return Derivation(target, [target], claim, claim_tex, lhs, steps, sorted(proof), proved, p.base(target))


def _order(world, claims):
    """The targets in backprop order: the last layer first, each layer's output before its parameters."""
    out = []
    for layer in reversed(world.layers):
        for name in [layer.name, *layer.params.values()]:
            if name in claims and name not in out:
                out.append(name)
    return out + [t for t in claims if t not in out]


_LAYER = re.compile(r"\^\{\((\d+)\)|n_\{(\d+)\}")


def _relative(text, l):
    """``text`` with the layer superscripts ``(m)`` and widths ``n_m`` written relative to layer
    ``l``: ``(l)``, ``(l-1)``, ``n_{l}``, ``n_{l-1}``."""
    def swap(match):
        m = int(match.group(1) or match.group(2)) - l
        rel = "l" + ("" if m == 0 else f"{m:+d}")
        return "^{(" + rel + ")" if match.group(1) else "n_{" + rel + "}"
    return _LAYER.sub(swap, text)


def _layer_of(name):
    match = re.match(r"^[A-Za-z]+(\d+)$", name)
    return int(match.group(1)) if match else None


def _group(derivations):
    """Derivations that read alike with the layer written ``l`` shown once, with the layers listed."""
    groups, out = {}, []
    for d in derivations:
        l = _layer_of(d.target)
        if l is None:
            out.append(d)
            continue
        key = (re.sub(r"\d+$", "", d.target), _relative(d.lhs, l), tuple(
            (_relative(s.tex, l), s.why, s.checked, _relative(s.lhs, l)) for s in d.steps), _relative(d.claim_tex, l))
        if key in groups:
            first = groups[key]
            first.targets.append(d.target)
            first.proved = first.proved and d.proved
            continue
        groups[key] = d
        d._relative = l
        out.append(d)
    for d in out:
        if len(d.targets) > 1:
            l = d._relative
            d.lhs = _relative(d.lhs, l)
            for s in d.steps:
                s.tex, s.lhs = _relative(s.tex, l), _relative(s.lhs, l)
            d.claim_tex, d.name_tex = _relative(d.claim_tex, l), _relative(d.name_tex, l)
            d.targets.sort(key=_layer_of)
            d.layers = "l = " + ", ".join(str(_layer_of(t)) for t in d.targets)
    return out


def derive_index(net) -> IndexDerivation:
    """Every gradient of the textbook backward pass of ``net``, derived in index notation for all sizes."""
    from .verify import textbook

    try:
        world = World(net)
        for layer in world.layers:
            if layer.op.index is None:
                raise Undecided(f"{layer.label} has no index form yet")
        claims = textbook(net)
        order = _order(world, claims)
    except Undecided as why:
        raise SymbpError(f"--sizes symbolic: {why}; derive it at the given sizes instead") from None
    sizes = sorted({str(s) for s in world.sizes.values()}, key=lambda s: (s == "N", len(s), s))

    from .network import MLP

    from .document import network_names

    printed = network_names(net) if not isinstance(net, MLP) else None  # att1Q as Q^{(1)}, ln2mean as mu^{(2)}

    def printer_for(names):
        return IndexPrinter(world, names, a0=isinstance(net, MLP), printed=printed)

    forward = []
    for layer in world.layers:
        e = _index("e") if world.batch else sp.Integer(1)
        i = _index("i")
        out = world.rows(world.raw(layer.name))(e, i)
        free = {i: "i", **({e: "n"} if world.batch else {})}
        if layer.stages:  # each stage on a line of its own, the output reading them by name
            for lhs, rhs in _stage_lines(world, layer, e, i):
                p = printer_for(_display_names([rhs], free, world))
                forward.append((p.doprint(lhs), p.doprint(rhs), ""))
            X, P, E = _raw_inputs(world, layer)
            body = layer.op.index(X, P, E, world._cfg(layer), e, i, world.width[layer.inp], world.N or sp.Integer(1))
        else:
            body = world._local(layer, e, i)
        p = printer_for(_display_names([body], free, world))
        forward.append((p.doprint(out), p.doprint(body), layer.name))
    grouped = []  # [relative line, its layers, the first line as written]
    for lhs, rhs, name in forward:
        l = _layer_of(name)
        key = (_relative(lhs, l), _relative(rhs, l)) if l is not None else None
        same = next((g for g in grouped if key is not None and g[0] == key), None)
        if same is not None:
            same[1].append(l)
        else:
            grouped.append((key, [l], (lhs, rhs)))
    forward = [(*key, "l = " + ", ".join(map(str, layers))) if len(layers) > 1 else (*line, "")
               for key, layers, line in grouped]
    loss = world.loss()
    p = printer_for(_display_names([loss], {}, world))
    deriv = IndexDerivation(net, sizes, forward, ("L", p.doprint(_pull(loss))), side_condition=world.side_condition)
    derivations = []
    for target in order:
        try:
            derivations.append(_derive_one(world, target, claims[target], printer_for))
        except Undecided as why:
            raise SymbpError(f"--sizes symbolic: dL/d{target}: {why}; derive it at the given sizes instead") from None
    deriv.derivations = _group(derivations)
    deriv.description = _description(net, world)
    return deriv


def _description(net, world):
    """``net.describe()`` with its sizes by name: the derivation is for every size."""
    from .network import MLP

    batch = (f"a batch of N (rows are examples, {net.reduction} over the batch)" if net.batch
             else "one example (column vectors)")
    if isinstance(net, MLP):
        widths = ", ".join(str(world.sizes[f"n{l}"]) for l in range(net.L + 1))  # a residual's equal widths
        text = re.sub(r"^MLP \[[0-9, ]*\]", f"MLP [{widths}]", net.describe())
        return re.sub(r"batch of \d+ \(rows are examples, \w+ over the batch\)|one example \(column vectors\)",
                      batch, text)
    parts = ", ".join(f"{layer.op.name} {layer.name} ({world.width[layer.name]})" for layer in world.layers)
    return f"network of {len(world.layers)} layers: {parts}; input n0; loss {net.loss_row.name}; {batch}"
