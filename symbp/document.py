"""Derivation documents: a network and its gradients, typeset step by step (the "render" step).

How it works: :func:`context` gathers everything a document shows into plain dicts and lists: the
network's conventions and notation, the forward pass, and for each layer from the output back the
per-element chain rule, the derived entries (:func:`symbp.derive`'s compact entries), their assembly
into a matrix (elided with dots beyond a few rows and columns), the closed form with a shape check of
every product, and how it was verified. Every piece of mathematics in it is printed by
:class:`symbp.latex.SymbpLatexPrinter` from SymPy expressions or parsed formulas; the layout, the prose
and the generic index notation live in the templates (``templates/derivation.tex.j2``).
:func:`render` fills the template; :func:`write` writes the ``.tex`` atomically and, on request,
compiles the PDF next to it. :func:`gallery` regenerates the curated documents of ``derivations/``.

Determinism: the same network gives byte-identical LaTeX. Nothing depends on the date, on dict or set
order, or on floating-point noise: the worked example is computed exactly (or with 30 significant
digits for exp, tanh, ...) and every number is formatted explicitly; the numeric check is printed as
a power-of-ten bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import sympy as sp

from . import __version__
from . import latex as tex
from . import registry
from .derive import Gradients, derive
from .errors import SymbpError
from .network import MLP
from .numeric import error_exponent

#: The worked numeric example is included by default when every width is at most this ...
EXAMPLE_MAX_WIDTH = 6
#: ... and the batch (if any) at most this.
EXAMPLE_MAX_BATCH = 4
#: The worked example puts a layer's matrices on one line when every width is at most this.
COMPACT_WIDTH = 5
#: Digits after the decimal point in the worked example.
DIGITS = 4
#: Sums with more terms print as ``t1 + t2 + ... + tn``.
MAX_TERMS = 5
#: Wider per-element sums are split between their terms over several lines (characters).
LINE_WIDTH = 46
#: A closed form wider than this (characters, see :func:`symbp.latex.visible_width`) is displayed
#: under its layer's table rather than in it.
CLOSED_WIDTH = 18
#: A network's derived entry wider than this in all (characters, over its lines) is not displayed:
#: one sentence says so, and the table's closed form stands for it.
ENTRY_WIDTH = 60
#: ... or holding more fractions than this (each a tall line): a forward entry, a gradient's entry.
ENTRY_FRACTIONS = 4
GRADIENT_FRACTIONS = 3
#: A network's closed form wider than this (characters) is displayed under its layer's table.
NETWORK_CLOSED_WIDTH = 24
#: The widest matrix of symbols shown, in characters (see :func:`symbp.latex.visible_width`).
MATRIX_WIDTH = 50


#: The sections of an MLP document, in order; ``sections=`` keeps a subset (the conventions box and
#: the backward pass by layer are always there).
SECTIONS = ("notation", "forward", "generic", "output", "code", "batch", "example", "flow", "checks")


def controls(*, sections=None, student: bool = False, author: str | None = None, date: str | None = None,
             title_tex: bool = False) -> dict:
    """A teacher's choices as the templates read them: ``{"show": {section: bool}, "student": bool,
    "author": str|None, "date": str|None, "title_tex": bool}``. ``sections``: names of
    :data:`SECTIONS` to keep (default: all); ``student``: leave out verification marks, the checks and
    the tool talk; ``author``/``date``: printed under the title (plain text, escaped; no date by default,
    so documents stay byte-identical); ``title_tex``: the title is LaTeX (math allowed), not plain text.

    >>> controls(sections=["forward"])["show"]["example"], controls(student=True)["show"]["checks"]
    (False, False)
    """
    keep = set(SECTIONS if sections is None else sections)
    unknown = sorted(keep - set(SECTIONS))
    if unknown:
        raise SymbpError(f"document: unknown section {unknown[0]!r}; the sections are {', '.join(SECTIONS)}")
    show = {name: name in keep for name in SECTIONS}
    if student:
        show["checks"] = False
    for text, what in ((author, "author"), (date, "date")):
        if text is not None and not isinstance(text, str):
            raise SymbpError(f"document: {what} must be text, got {text!r}")
    return {"show": show, "student": bool(student), "author": author, "date": date, "title_tex": bool(title_tex)}


# --------------------------------------------------------------------------- public API


def render(net, *, grads: Gradients | None = None, title: str | None = None, example: bool | None = None,
           template: str | None = None, template_dir=None, report=None, numeric_error=None, **choices) -> str:
    """The LaTeX source of the derivation document of ``net`` (a :class:`symbp.MLP` or a
    :class:`symbp.layers.Network`).

    ``grads``: ``symbp.derive(net)`` if already at hand (the chain method; its layout is stated).
    ``title``: plain text, escaped (default :func:`default_title`). ``example``: include the worked
    numeric example (MLPs; default: when every width is at most ``EXAMPLE_MAX_WIDTH``). ``template_dir``:
    a folder of templates looked up before the packaged ones. ``choices``: the teacher's controls
    (``sections``, ``student``, ``author``, ``date``, ``title_tex``: see :func:`controls`). For a network, ``report`` (a
    :class:`symbp.verify.Report` of its textbook claims) and ``numeric_error`` (see
    :func:`network_checks`) are used when given, else computed.

    >>> import symbp
    >>> source = render(symbp.MLP([2, 2], output="softmax", loss="cross_entropy"), title="A & B")
    >>> source.startswith("\\\\documentclass"), "A \\\\& B" in source
    (True, True)
    """
    if _is_network(net):
        if example:
            raise SymbpError("document: the worked example is written for MLPs only; leave out example")
        check_partials(net, template_dir)
        ctx = network_context(net, grads=grads, title=title, report=report, numeric_error=numeric_error)
        return tex.render(template or "network.tex.j2", user_dir=template_dir, **_with(ctx, _network_controls(choices)))
    ctx = context(net, grads=grads, title=title, example=example)
    return tex.render(template or "derivation.tex.j2", user_dir=template_dir, **_with(ctx, controls(**choices)))


def _with(ctx: dict, chosen: dict) -> dict:
    """The context with the teacher's controls: a given author replaces symbp's name (which a student
    version leaves out)."""
    author = chosen.pop("author")
    if author is not None:
        ctx = {**ctx, "author": author}
    elif chosen["student"]:
        ctx = {**ctx, "author": ""}
    return {**ctx, **chosen}


def _network_controls(choices) -> dict:
    """A network's document takes the author, the date, the student version and a LaTeX title; its
    sections are its layers, so ``sections`` is refused."""
    if choices.get("sections") is not None:
        raise SymbpError("document: sections are chosen for MLP documents only; a network's document "
                         "has one section per layer")
    return controls(**choices)


def check_partials(net, template_dir=None) -> None:
    """Every op of ``net`` has its document partial ``ops/<partial>.tex.j2``, else a
    :class:`SymbpError` naming the op (and the layer) before any rendering."""
    import jinja2

    env = tex.environment(template_dir)
    for layer in net.layers:
        name = f"ops/{partial_of(layer.op)}.tex.j2"
        try:
            env.get_template(name)
        except jinja2.TemplateNotFound:
            raise SymbpError(f"document: op '{layer.op.name}' ({layer.label}) has no document partial {name!r} "
                             f"in {', '.join(map(str, tex.template_dirs(template_dir)))}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise SymbpError(f"document: the partial of op '{layer.op.name}', template {exc.filename or exc.name}, "
                             f"line {exc.lineno}: {exc.message}") from None


def write(net, path, *, pdf: bool = False, grads: Gradients | None = None, title: str | None = None,
          example: bool | None = None, template_dir=None, report=None, numeric_error=None, **choices) -> dict:
    """Write the document of ``net`` (an MLP or a network) to ``path`` (a ``.tex`` file), and ``path``
    with ``.pdf`` when ``pdf``. Nothing is written when rendering or compiling fails. Returns
    ``{"tex": Path, "pdf": Path|None}``."""
    tex.check_output(path, also=(".pdf",) if pdf else ())  # before the (slow) rendering
    source = render(net, grads=grads, title=title, example=example, template_dir=template_dir, report=report,
                    numeric_error=numeric_error, **choices)
    return tex.write_document(source, path, pdf=pdf)


def index_context(deriv, *, title=None, author=None, date=None) -> dict:
    """The context of ``index.tex.j2``: a :class:`symbp.indexform.IndexDerivation` for the template."""
    from .network import MLP as _MLP

    net = deriv.net
    sizes = [tex.latex(sp.Symbol(s, positive=True)) for s in deriv.sizes]
    return {
        "title": title or "Backpropagation for all sizes",
        "author": author or "", "date": date,
        "description": deriv.description,
        "sizes": sizes, "batch": bool(net.batch), "a0": isinstance(net, _MLP),
        "side_condition": deriv.side_condition,
        "forward": [{"lhs": lhs, "rhs": rhs, "layers": layers} for lhs, rhs, layers in deriv.forward],
        "loss": deriv.loss[1],
        "derivations": [{"lhs": d.lhs, "layers": d.layers, "steps": d.steps, "claim_tex": d.claim_tex,
                         "name": d.name_tex, "proved": d.proved, "assumptions": d.assumptions,
                         "targets": d.targets} for d in deriv.derivations],
        "checked": deriv.checked, "unchecked": deriv.unchecked(),
        "versions": {"symbp": __version__, "sympy": sp.__version__},
    }


def write_index(deriv, path, *, pdf: bool = False, title: str | None = None, template_dir=None, author=None,
                date=None) -> dict:
    """Write the all-sizes derivation ``deriv`` (see :mod:`symbp.indexform`) to ``path`` (``.tex``) and,
    with ``pdf``, its PDF; nothing is written when rendering or compiling fails."""
    tex.check_output(path, also=(".pdf",) if pdf else ())
    for text, what in ((title, "title"), (author, "author"), (date, "date")):
        if text is not None:
            tex.check_text(text, what)
    source = tex.render("index.tex.j2", user_dir=template_dir,
                        **index_context(deriv, title=title, author=author, date=date))
    return tex.write_document(source, path, pdf=pdf)


@dataclass(frozen=True)
class GalleryEntry:
    """One curated document of ``derivations/``."""

    name: str  # file name without extension
    config: dict  # keyword arguments of MLP, with "sizes"; or of symbp.layers.network, with "layers"
    title: str | None = None

    def network(self):
        config = dict(self.config)
        if "layers" in config:
            from .layers import network

            return network(config.pop("layers"), **config)
        return MLP(config.pop("sizes"), **config)


#: The gallery: the seeds' 3-layer ReLU/softmax net (as ``symbp derive 4,5,3,3`` writes it), a batch
#: network whose adjacent widths differ and whose batch is unlike every width (so that every shape
#: check can fail), sigmoid + binary cross-entropy, a deep tanh net, a residual net; and networks of layers: a
#: layer norm, a batch norm and a self-attention block.
GALLERY = (
    GalleryEntry("mlp-4-5-3-3", dict(sizes=[4, 5, 3, 3])),
    GalleryEntry("mlp-6-5-3-2-batch", dict(sizes=[6, 5, 3, 2], batch=4),
                 "A batch of 4 examples: rows are examples, the loss is the mean"),
    GalleryEntry("sigmoid-bce", dict(sizes=[3, 4, 2], hidden="sigmoid", output="sigmoid",
                                     loss="binary_cross_entropy"),
                 "Sigmoid layers and binary cross-entropy"),
    GalleryEntry("deep-tanh", dict(sizes=[3, 3, 3, 3, 3, 2], hidden="tanh"),
                 "A deep tanh network: four hidden layers"),
    GalleryEntry("residual", dict(sizes=[3, 3, 3, 2], hidden="relu", residual=True),
                 "A residual network: the identity path"),
    GalleryEntry("layernorm", dict(layers=[{"op": "affine", "out": 4}, {"op": "layernorm"}, {"op": "relu"},
                                           {"op": "affine", "out": 3}, {"op": "softmax"}],
                                   input=3, batch=2, loss="cross_entropy"),
                 "Layer normalisation: an affine layer, LayerNorm, ReLU, softmax"),
    GalleryEntry("batchnorm", dict(layers=[{"op": "affine", "out": 3}, {"op": "batchnorm"}, {"op": "relu"},
                                           {"op": "affine", "out": 2}], input=2, batch=3, loss="mse"),
                 "Batch normalisation over a batch of 3"),
    GalleryEntry("attention", dict(layers=[{"op": "attention", "dk": 2}, {"op": "affine", "out": 2}],
                                   input=3, batch=3, loss="mse"),
                 "One head of self-attention over 3 tokens"),
)


#: Gradient-flow documents of the gallery (:func:`symbp.flow.write_flow`): name -> ``symbp.flow`` options.
FLOW_GALLERY = (
    ("flow-tanh-depth20", dict(depth=20, width=16, hidden="tanh", init_scale=0.5, residual=True)),
)


#: Computation-graph documents of the gallery (seeds 003 and 004):
#: name -> (expression, point, options of ``symbp.graph``, title).
GRAPH_GALLERY = (
    ("graph-seed003", "e = a*b; d = e + c; L = f*d", "a=2,b=-3,c=5,f=-2", {},
     "Seed 003: e = a*b; d = e + c; L = f*d, as in micrograd"),
    ("graph-seed003-accumulation", "a + a", "a=2", {}, "Seed 003: b = a + a accumulates, a.grad = 2"),
    ("graph-seed004-neuron", "1/(1+exp(-(w0*x0+w1*x1+w2)))", "w0=2,x0=-1,w1=-3,x1=-2,w2=-3", {},
     "Seed 004: the sigmoid neuron, gate by gate (cs231n)"),
    ("graph-seed004-sigmoid-gate", "sigmoid(w0*x0 + w1*x1 + w2)", "w0=2,x0=-1,w1=-3,x1=-2,w2=-3", {},
     "Seed 004: the sigmoid neuron with one sigmoid gate"),
)

#: Worked examples of the gallery: name -> spec file shipped in ``symbp/data`` (copied beside them,
#: so that ``symbp example derivations/seed000.toml`` works on the copy).
EXAMPLE_GALLERY = (("example-seed000", "seed000.toml"),)


#: The derivations for all sizes (``symbp derive SIZES --sizes symbolic``): name, MLP options.
INDEX_GALLERY = (
    ("allsizes-mlp", {"sizes": [4, 5, 3, 3]}),
    ("allsizes-batch", {"sizes": [4, 5, 3, 3], "batch": 2}),
)


def gallery(out_dir, *, pdf: bool = True, entries=GALLERY, flows=FLOW_GALLERY, graphs=GRAPH_GALLERY,
            examples=EXAMPLE_GALLERY, indexes=INDEX_GALLERY) -> list[Path]:
    """(Re)generate the gallery in ``out_dir``: one ``.tex`` (and ``.pdf``) per derivation entry, the
    gradient-flow documents (``.tex``, and ``.pdf`` and ``.png`` of the plot page), the computation
    graphs and the worked examples (with their spec files). Returns the paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SymbpError(f"{str(out_dir)!r} is not a folder")
    if not out_dir.parent.is_dir():  # symbp never creates missing parents (see symbp.latex.write_atomic)
        raise SymbpError(f"cannot write into {str(out_dir)!r}: folder {str(out_dir.parent)!r} does not exist")
    out_dir.mkdir(exist_ok=True)
    written = []
    for entry in entries:
        done = write(entry.network(), out_dir / f"{entry.name}.tex", pdf=pdf, title=entry.title)
        written += [p for p in (done["tex"], done["pdf"]) if p is not None]
    if flows:
        from .flow import flow, write_flow

        for name, options in flows:
            done = write_flow(flow(**options), out_dir / f"{name}.tex", pdf=pdf)
            written += [Path(done[k]) for k in ("tex", "pdf", "png") if done[k] is not None]
    for name, expression, point, options, title in graphs:
        from .graph import document as graph_document, graph, parse_point

        g = graph(expression, at=parse_point(point), **options)
        done = tex.write_document(graph_document(g, title=title), out_dir / f"{name}.tex", pdf=pdf)
        written += [p for p in (done["tex"], done["pdf"]) if p is not None]
    for name, config in indexes:
        from .indexform import derive_index

        config = dict(config)
        done = write_index(derive_index(MLP(config.pop("sizes"), **config)), out_dir / f"{name}.tex", pdf=pdf)
        written += [p for p in (done["tex"], done["pdf"]) if p is not None]
    for name, spec_name in examples:
        from importlib import resources

        from .example import document as example_document, from_spec

        spec = tex.write_atomic(out_dir / spec_name, (resources.files("symbp") / "data" / spec_name).read_bytes())
        done = tex.write_document(example_document(from_spec(spec)), out_dir / f"{name}.tex", pdf=pdf)
        written += [spec] + [p for p in (done["tex"], done["pdf"]) if p is not None]
    return written


# --------------------------------------------------------------------------- the context


def default_title(net: MLP) -> str:
    """The title when none is given: ``Backpropagation through the MLP [4, 5, 3, 3]``."""
    return f"Backpropagation through the MLP {list(net.sizes)}"


def context(net: MLP, *, grads: Gradients | None = None, title: str | None = None, example: bool | None = None) -> dict:
    """Everything the derivation template shows, as plain data (LaTeX strings from the printer)."""
    if not isinstance(net, MLP):
        raise SymbpError(f"document: expected a symbp.MLP, got {type(net).__name__}")
    layout = "denominator"
    if grads is not None:
        if not isinstance(grads, Gradients) or grads.net is not net:
            raise SymbpError("document: grads must be symbp.derive(net) of this network, or left out")
        layout = grads.layout
        if layout != "denominator":  # its matrices, closed forms and worked example are all denominator
            raise SymbpError("document: written in denominator layout only (dL/dV has the shape of V); "
                             "leave out the numerator layout for a document")
        # The document shows the chain method's compact entries (``expand`` writes everything out).
        grads = grads.with_layout("denominator") if grads.method == "chain" else None
    if grads is None:
        grads = derive(net)
    printer = tex.SymbpLatexPrinter(columns=net.columns, max_terms=MAX_TERMS)
    skipped = None
    if example is None:
        example = max(net.sizes) <= EXAMPLE_MAX_WIDTH and (net.batch or 0) <= EXAMPLE_MAX_BATCH
        if max(net.sizes) > EXAMPLE_MAX_WIDTH:
            skipped = (f"its widest layer has {max(net.sizes)} units, more than the {EXAMPLE_MAX_WIDTH} "
                       "a worked example prints cell by cell")
        elif not example:
            skipped = (f"its batch has {net.batch} examples, more than the {EXAMPLE_MAX_BATCH} "
                       "a worked example prints cell by cell")
    checks = verification(net, grads, printer)
    backward = _backward(net, grads, printer, checks)
    worked, omitted = None, None
    if example:
        try:
            worked = worked_example(net, grads, printer)
        except NotPrintable as exc:
            omitted = str(exc)  # the document says why it has no worked example
    return {
        "title": title if title is not None else default_title(net),
        "author": f"symbp {__version__}",
        "versions": {"symbp": __version__, "sympy": sp.__version__},
        "net": _network(net, layout),
        "names": {"aL": printer.base(f"a{net.L}"), "zL": printer.base(f"z{net.L}"),
                  "deltaL": printer.grad_base(f"z{net.L}")},
        "symbols": _symbols(net, printer),
        "forward": _forward(net, printer),
        "notation_rows": _notation_rows(net),
        "backward": backward,
        "allsizes": allsizes_once([t for layer in backward for t in layer["rows"]]),
        "output": _output(net, grads, printer),
        "checks": checks["summary"],
        "example": worked,
        "example_omitted": omitted,
        "example_skipped": skipped,
        "flowsec": _flow_section(net),
        "code": backward_code(net),
    }


def _notation_rows(net: MLP) -> list[tuple[int, int]]:
    """The notation table's rows as runs of layers ``(first, last)``: consecutive layers with the same
    width, activation and shapes share a row (``1--4`` in a deep network of equal widths)."""
    key = lambda l: (net.sizes[l], net.sizes[l - 1], net.activation(l).name, net.shape(f"z{l}"))
    runs: list[list[int]] = []
    for l in range(1, net.L + 1):
        if runs and key(runs[-1][-1]) == key(l):
            runs[-1].append(l)
        else:
            runs.append([l])
    return [(run[0], run[-1]) for run in runs]


def backward_code(net: MLP) -> dict | None:
    """The backward pass as code: the ``backward`` function that :func:`symbp.compile` writes from
    :func:`symbp.textbook`'s claims (the same writer, the same verified claims as the tables), and the
    parameters for the update. None when ``compile`` cannot take the claims (the document says so).

    When the layers share their formulas and the loop is no longer than the unrolled code, the listing
    is one loop over them (:func:`symbp.codegen.layer_loop`, checked against the unrolled code), else
    the unrolled ``backward`` itself.

    >>> code = backward_code(MLP([2, 2]))
    >>> code["source"].splitlines()[0], code["params"], code["loop"]
    ('def backward(x, y, W1, b1):', ['W1', 'b1'], False)
    >>> backward_code(MLP([2, 3, 3, 2]))["source"].splitlines()[0]
    'def backward(x, y, W, b):'
    """
    from .codegen import compile as compile_claims
    from .codegen import layer_loop
    from .verify import textbook

    try:
        compiled = compile_claims(net, textbook(net))
    except SymbpError:
        return None
    source = compiled.source
    start = source.index("def backward(")
    end = source.find("\n\n\n", start)
    unrolled = source[start:end if end != -1 else len(source)].rstrip()
    loop = layer_loop(compiled)
    if loop is not None and loop.count("\n") <= unrolled.count("\n"):  # the loop when it is not the longer
        return {"source": loop.rstrip(), "params": list(net.params), "loop": True}
    return {"source": unrolled, "params": list(net.params), "loop": False}


def _shape(shape) -> dict:
    return {"rows": shape[0], "cols": shape[1]}


def _network(net: MLP, layout: str) -> dict:
    hidden = [{"layer": l, "name": a.name, "tex": a.latex, "expression": a.expression}
              for l, a in enumerate(net.hidden, start=1)]
    return {
        "sizes": list(net.sizes),
        "L": net.L,
        "batch": net.batch,
        "reduction": net.reduction,
        "bias": net.bias,
        "layout": layout,
        "hidden": hidden,
        "kinks": _kinks(net),
        "definitions": _definitions(net),
        "output": {"name": net.output.name, "tex": net.output.latex},
        "loss": {"name": net.loss_row.name, "tex": net.loss_row.latex},
        "fused": None if not net.fused else {
            "tex": net.fused.latex,
            "side_condition": net.fused.side_condition,
            "simplified": net.fused.simplified,
        },
        "residual": list(net.residual_layers),
    }


def _entry_wise_rows(net: MLP) -> list:
    """The distinct entry-wise activation rows of ``net``: hidden ones, and the output op's when it is
    entry-wise (its op row's ``activation`` column)."""
    from .ops import OPS

    rows = list(net.hidden) + [OPS[net.output.name].activation]
    return list(dict.fromkeys(r for r in rows if r is not None))


def _kinks(net: MLP) -> list[dict]:
    """Each kink of an activation with its convention, ``f'(k)`` by ``sympy.diff`` of the row's form:
    ``[{"f": "\\operatorname{ReLU}", "at": "0", "value": "0"}]``."""
    printer = tex.SymbpLatexPrinter()
    z = sp.Symbol("z", real=True)
    found = []
    for row in _entry_wise_rows(net):
        slope = sp.diff(row.sympy(z), z)
        for k in row.kinks:
            at = sp.nsimplify(k)
            found.append({"f": row.latex, "at": printer.doprint(at), "value": printer.doprint(slope.subs(z, at))})
    return found


def _definitions(net: MLP) -> list[dict]:
    """The activations a reader may not know, defined: ``{"f": name, "tex": f(z) written out}``: a
    function of symbp's own (sigmoid, softplus) rewritten in exponentials, a compound one (GELU, SiLU,
    ELU) as its SymPy form; standard functions (tanh), ReLU (see the kinks), the identity and custom
    activations (given by their expression) are not."""
    printer = tex.SymbpLatexPrinter()
    z = sp.Symbol("z", real=True)
    found = []
    for row in _entry_wise_rows(net):
        e = row.sympy(z)
        if e == z or row.expression or row.kinks:
            continue
        if e.args == (z,):  # f(z) itself: define it when it rewrites into exponentials
            explicit = e.rewrite(sp.exp)
            if explicit == e or not type(e).__module__.startswith("symbp"):
                continue
            e = explicit
        found.append({"f": row.latex, "tex": printer.doprint(e)})
    return found


def _symbols(net: MLP, printer) -> list[dict]:
    rows = [{"kind": "x", "tex": "x", "shape": _shape(net.shape("x")), "layer": 0},
            {"kind": "y", "tex": "y", "shape": _shape(net.shape("y")), "layer": net.L}]
    for l in range(1, net.L + 1):
        names = [f"W{l}"] + ([f"b{l}"] if net.bias else []) + [f"z{l}", f"a{l}"]
        for name in names:
            rows.append({"kind": name[0], "tex": printer.base(name), "shape": _shape(net.shape(name)), "layer": l})
        for name in (f"z{l}", f"a{l}"):
            rows.append({"kind": "d" + name[0], "tex": printer.grad_base(name), "of": printer.base(name),
                         "shape": _shape(net.shape(name)), "layer": l})
    return rows


def _entry(net, M, symbols, printer, i=0, j=0) -> dict:
    return {"lhs": printer.doprint(symbols[i, j]), "rhs": printer.doprint(M[i, j]),
            "lines": printer.lines(M[i, j], width=LINE_WIDTH)}


def _forward(net: MLP, printer) -> list[dict]:
    layers = []
    for l in range(1, net.L + 1):
        row = net.activation(l)
        layers.append({
            "l": l,
            "W": printer.base(f"W{l}"),
            "W_T": printer.base(f"W{l}", r"\top"),
            "b": printer.base(f"b{l}") if net.bias else None,
            "b_T": printer.base(f"b{l}", r"\top") if net.bias else None,
            "z": printer.base(f"z{l}"),
            "a": printer.base(f"a{l}"),
            "prev": printer.base(f"a{l - 1}"),
            "f": row.latex,
            "fname": row.name,
            "output": l == net.L,
            "residual": l in net.residual_layers,
            "z_shape": _shape(net.shape(f"z{l}")),
            "z_entry": _entry(net, net.local(f"z{l}"), net.symbols(f"z{l}"), printer),
            "a_entry": _entry(net, net.local(f"a{l}"), net.symbols(f"a{l}"), printer),
            # built like layer l - 1, one index up (layer 1 reads x: shown)
            "like": l - 1 if l > 2 and _same_as(net, l - 1) else None,
        })
    return layers


def allsizes_once(targets) -> dict | None:
    """Say the all-sizes proof once per document (issue 13): ``targets`` in the document's order, each
    a dict with ``"tex"`` and ``"mark"``. When some marks carry :mod:`symbp.allsizes`' detail and every
    one of them names the same sizes, each such target gets a copy of its mark with ``"detail"``
    emptied and ``"allsizes"`` set, and the one note is returned: ``{"names": "n0, n1", "upstream":
    bool, "assuming": [(tex, "every target row sums to 1")]}``. Otherwise None, nothing changed."""
    from .allsizes import detail_parts

    found = [(t, detail_parts(t["mark"]["detail"])) for t in targets if t and t.get("mark") and t["mark"].get("detail")]
    found = [(t, parts) for t, parts in found if parts is not None]
    if not found or len({tuple(parts["names"]) for _, parts in found}) != 1:
        return None
    for t, parts in found:
        t["mark"] = dict(t["mark"], detail="", allsizes=True, assuming="; ".join(parts["assuming"]))
    return {"names": ", ".join(found[0][1]["names"]), "upstream": any(p["upstream"] for _, p in found),
            "assuming": [(t["tex"], "; ".join(p["assuming"])) for t, p in found if p["assuming"]],
            "first": found[0][0]["name"]}


def _samples(shape) -> list[tuple[int, int]]:
    """Which entries to show one by one: the first, and the last when there is more than one."""
    last = (shape[0] - 1, shape[1] - 1)
    return [(0, 0)] if last == (0, 0) else [(0, 0), last]


def _target(net, grads, name, printer, checks) -> dict:
    M = grads[name]
    rows = tex.elided(M, printer=printer, width=MATRIX_WIDTH)
    fits = tex.matrix_width(rows) <= MATRIX_WIDTH
    return {
        "name": name,
        "kind": name[0],
        "layer": int(name[1:]),
        "tex": printer.base(name),
        "shape": _shape(net.shape(name)),
        "entries": [_entry(net, M, net.symbols(name), printer, i, j) for i, j in _samples(M.shape)],
        "matrix": rows if fits else None,
        "elided": M.rows > len(rows) or M.cols > len(rows[0]),
        "closed": checks["closed"].get(name),
        "mark": checks["marks"].get(name),
    }


def _backward(net: MLP, grads, printer, checks) -> list[dict]:
    layers = []
    for l in range(net.L, 0, -1):
        targets = {"z": _target(net, grads, f"z{l}", printer, checks),
                   "W": _target(net, grads, f"W{l}", printer, checks),
                   "b": _target(net, grads, f"b{l}", printer, checks) if net.bias else None,
                   "a": _target(net, grads, f"a{l - 1}", printer, checks) if l > 1 else None}
        layers.append({
            "l": l,
            "output": l == net.L,
            "f": net.activation(l).latex,
            "fname": net.activation(l).name,
            "n": net.sizes[l],
            "prev": printer.base(f"a{l - 1}"),
            "prev_grad": printer.grad_base(f"a{l - 1}") if l > 1 else None,
            "W": printer.base(f"W{l}"),
            "z": printer.base(f"z{l}"),
            "a": printer.base(f"a{l}"),
            "delta": printer.grad_base(f"z{l}"),
            "abar": printer.grad_base(f"a{l}"),
            "residual": l in net.residual_layers,
            "derivative": _derivative(net.hidden[l - 1], printer) if l < net.L else None,
            "targets": targets,
            "coincide": _coincidences(targets.values()),
            "display": _display_lines(net, l, targets),
            "same_as": _same_as(net, l),
        })
        layers[-1]["rows"] = _rows(layers[-1])
    # a run of layers each the layer above's, one index lower, shares one section and one table
    head = None
    for layer in layers:
        if head is not None and layer["same_as"] and head["group"][-1]["same_as"]:
            head["group"].append(layer)
            head["coincide"] = _coincidences(t for g in head["group"] for t in g["targets"].values())
            layer["group"] = None
        else:
            head, layer["group"] = layer, [layer]
    return layers


def _same_as(net: MLP, l: int) -> int | None:
    """``l + 1`` when hidden layer ``l``'s assembled matrices are layer ``l + 1``'s with every layer
    index one lower (the same activation, the same shapes, both or neither a skip connection; layer 1
    reads ``x`` for ``a^(0)`` and has no upstream gradient of its own), so that the document shows them
    once; else None."""
    if not 1 <= l < net.L - 1 or net.hidden[l - 1].name != net.hidden[l].name:
        return None
    if len({net.sizes[l - 1], net.sizes[l], net.sizes[l + 1]}) != 1:
        return None
    if (l in net.residual_layers) != (l + 1 in net.residual_layers):
        return None
    return l + 1


def _rows(layer) -> list[dict]:
    """A layer's table rows, in the table's order (dL/dz, dL/dW, dL/db, dL/da)."""
    t = layer["targets"]
    return [t[k] for k in ("z", "W", "b", "a") if t[k] is not None]


#: Assembled matrices share a display line while their estimated widths add up to at most this.
DISPLAY_WIDTH = 60


def _display_lines(net: MLP, l: int, targets: dict) -> list[list[str]]:
    """Which assembled matrices of layer ``l`` share a display line: ``[["z", "b"], ["W"], ...]`` (keys
    of ``targets``), packed in order while they fit; the output's error term is shown in its own
    section when the loss is fused and simplified, and one example's bias gradient (the error term
    itself) only in the table."""
    shown = []
    for key in ("z", "b", "W", "a"):
        t = targets.get(key)
        if t is None or t["matrix"] is None or (l == net.L and net.fused and net.fused.simplified and key == "z"):
            continue
        if key == "b" and not net.batch:  # dL/db = delta entry for entry: the table's row says so
            continue
        shown.append((key, t["matrix"]))
    return _packed(shown)


def _packed(items, limit: int = DISPLAY_WIDTH, label: int = 8) -> list[list]:
    """``items``, ``(value, matrix rows)`` pairs (or ``(value, rows, label width)``) in order, packed
    onto display lines while their matrices fit (``limit`` characters, each with its label beside it,
    by default the fraction ``dL/dV`` of :data:`DISPLAY_WIDTH`): ``[[value, ...], ...]``."""
    lines, width = [], 0
    for value, rows, *extra in items:
        w = tex.matrix_width(rows) + (extra[0] if extra else label)
        if lines and width + w <= limit:
            lines[-1].append(value)
            width += w
        else:
            lines.append([value])
            width = w
    return lines


def _coincidences(targets) -> list[tuple]:
    """The size coincidences of some shape checks, the names of one value together, each once:
    ``[(name, name, ..., value)]``, the names in order of their layer index (``n_{0}`` before ``n_{3}``)."""
    names: dict = {}
    for t in targets:
        named = t and t["closed"] and t["closed"]["named"]
        for *pair, value in (named["coincide"] if named else ()):
            names.setdefault(value, [])
            names[value] += [n for n in pair if n not in names[value]]
    order = lambda name: ([int(d) for d in re.findall(r"\d+", name)], name)
    return [(*sorted(found, key=order), value) for value, found in names.items()]


def _derivative(activation, printer) -> str:
    """``f'(z)`` of an activation row, ``sympy.diff`` of its SymPy form, printed (``1 - \\tanh^{2}...``)."""
    z = sp.Symbol("z", real=True)
    return printer.doprint(sp.diff(activation.sympy(z), z))


# --------------------------------------------------------------------------- the output layer


def in_outputs(net: MLP, expr):
    """Rewrite the output layer's functions of ``z_L`` into the outputs ``a_L``: the output op's
    ``in_outputs`` column (softmax), else, for an entry-wise output op, ``f(z_k)`` becomes ``a_k``."""
    from .ops import OPS

    z, a = net.symbols(f"z{net.L}"), net.symbols(f"a{net.L}")
    rows, outs = net._examples(z), net._examples(a)
    row = OPS[net.output.name]
    if row.in_outputs is not None:
        return row.in_outputs(expr, rows, outs)
    if row.activation is not None:
        f = row.activation.sympy
        return expr.xreplace({f(zk): ak for zs, As in zip(rows, outs) for zk, ak in zip(zs, As) if f(zk) != zk})
    return expr


def _output(net: MLP, grads, printer) -> dict:
    """The output layer's error term, entry (1, 1): as derived, in the outputs, and simplified."""
    from .ops import OPS

    name = f"z{net.L}"
    derived = grads[name][0, 0]
    steps = [derived]
    in_a = in_outputs(net, derived)
    a11 = net.symbols(f"a{net.L}")[0, 0]
    # The loss's constant factor (1/N for a batch mean, 1/n for a mean over output units) kept outside.
    # (Only for a fused pair: otherwise the factor sits in the upstream gradients of a_L.)
    scale = sp.S.One / net.batch if net.fused and net.batch and net.reduction == "mean" else sp.S.One
    if net.fused and net.loss_row.units_mean:
        scale = scale / net.sizes[-1]
    inner = None
    if in_a is not None and in_a != derived:
        upstream = [s for s in net.grad_symbols(f"a{net.L}") if in_a.has(s)]
        inner = sp.collect(sp.expand(in_a / scale), upstream or [a11])
        steps.append(sp.Mul(scale, inner, evaluate=False) if scale != 1 else inner)
    simplified, condition = None, None
    if net.fused and net.fused.simplified and inner is not None:
        y = net.symbols("y")
        y_row = net._examples(y)[0]
        candidate = inner
        if net.fused.side_condition:
            condition = sp.Eq(sp.Add(*y_row), 1)
            candidate = candidate.xreplace({sp.Add(*y_row): sp.S.One})
        if sp.expand(candidate - (a11 - y[0, 0])) == 0:
            simplified = sp.Mul(scale, a11 - y[0, 0], evaluate=False) if scale != 1 else a11 - y[0, 0]
    a_grad = grads[f"a{net.L}"][0, 0]
    return {
        "fused": net.fused is not None,
        "entry": printer.doprint(net.grad_symbols(name)[0, 0]),
        "z11": printer.doprint(net.symbols(name)[0, 0]),
        "a11": printer.doprint(a11),
        "abar11": printer.doprint(net.grad_symbols(f"a{net.L}")[0, 0]),
        "abar_entry": printer.doprint(a_grad),
        "steps": [printer.lines(s, width=LINE_WIDTH) for s in steps],
        "condition": printer.doprint(condition) if condition is not None else None,
        "condition_text": net.fused.side_condition if net.fused else None,
        "simplified": printer.doprint(simplified) if simplified is not None else None,
        "partial": partial_of(OPS[net.output.name]),
        "fused_partial": net.fused.partial if net.fused else "",
        "scale": printer.doprint(scale) if scale != 1 else None,
        "n": net.sizes[-1],
    }


# --------------------------------------------------------------------------- named shape checks


def _probe(net: MLP) -> MLP:
    """``net`` with sizes that name themselves: every width distinct (equal only where a skip
    connection needs it) and a batch unlike every width and unlike 1."""
    sizes = []
    for l in range(net.L + 1):
        sizes.append(sizes[-1] if l in net.residual_layers else l + 2)
    return MLP(sizes, hidden=list(net.hidden), output=net.output.name, loss=net.loss_row.name, bias=net.bias,
               batch=net.L + 3 if net.batch else None, reduction=net.reduction, residual=list(net.residual_layers))


def size_names(net: MLP, probe: MLP) -> dict:
    """``{probe value: LaTeX name}`` for the widths ``n_l`` and the batch ``N`` of ``probe``; a value
    two widths share (a skip connection) has no name."""
    names = {}
    for l, n in enumerate(probe.sizes):
        names.setdefault(n, []).append(f"n_{{{l}}}")
    if probe.batch:
        names.setdefault(probe.batch, []).append("N")
    named = {v: ns[0] for v, ns in names.items() if len(ns) == 1}
    named[1] = "1"
    return named


def named_products(net: MLP, claim: str, probe: MLP | None = None) -> dict | None:
    """The shape check of ``claim`` with the sizes by name: ``{"products": [(left, right, result)],
    "shape": (rows, cols), "coincide": [(name, name, value)]}``, each dimension a LaTeX name
    (``n_{3}``, ``N``, ``1``). ``coincide`` lists the pairs of different sizes that are equal in this
    network within one product or the result (then a shape check cannot tell a matrix from its
    transpose). None when the claim's sizes cannot be named (a number standing for a width).

    >>> net = MLP([4, 5, 3, 3])
    >>> named_products(net, "dz3 @ a2.T")["products"]
    [(('n_{3}', '1'), ('1', 'n_{2}'), ('n_{3}', 'n_{2}'))]
    >>> named_products(net, "dz3 @ a2.T")["coincide"]
    [('n_{2}', 'n_{3}', 3)]
    """
    from .formula import parse

    probe = probe or _probe(net)
    names = size_names(net, probe)
    try:
        node = parse(claim, probe)
    except SymbpError:
        return None
    real = net.sizes + ((net.batch,) if net.batch else ())
    value = dict(zip(probe.sizes + ((probe.batch,) if probe.batch else ()), real))
    value[1] = 1

    def name(dims):
        if any(d not in names for d in dims):
            raise KeyError(dims)
        return tuple(names[d] for d in dims)

    try:
        products = [tuple(name(d) for d in p) for p in tex.products(node)]
        shape = name(tuple(node.shape))
    except KeyError:
        return None
    coincide = []
    for group in [*[(*p[0], *p[1]) for p in products], shape]:
        for i, u in enumerate(group):
            for v in group[i + 1:]:
                pair = tuple(sorted((u, v)))
                if u != v and "1" not in pair and _value(u, names, value) == _value(v, names, value) \
                        and pair + (_value(u, names, value),) not in coincide:
                    coincide.append(pair + (_value(u, names, value),))
    return {"products": products, "shape": shape, "coincide": sorted(coincide)}


def _value(label, names, value):
    return value[next(v for v, n in names.items() if n == label)]


# --------------------------------------------------------------------------- verification


def verification(net: MLP, grads, printer=None) -> dict:
    """How each gradient was established: ``{"closed": {name: ...}, "marks": {name: ...}, "summary": ...}``.

    The closed forms are :func:`symbp.textbook`'s claims, parsed by :mod:`symbp.formula` and printed
    with their shape checks; :func:`symbp.verify` judges each against the derived entries (symbolic
    proof, exact random points, or float agreement). Independently, the lambdified gradients are
    compared with the NumPy reference backprop at a random point away from the kinks; that error is
    printed as a power-of-ten bound (so the document does not depend on floating-point noise).
    """
    import numpy as np

    from . import numeric
    from .formula import parse
    from .verify import textbook, verify

    printer = printer or tex.SymbpLatexPrinter(columns=net.columns)
    values = numeric.random_values(net, 0)
    with np.errstate(all="ignore"):  # gradients that are not finite here make the check undecidable
        got = numeric.lambdify(net, grads)(**values)
        reference = numeric.reference_gradients(net, values)
    errors = {name: numeric.max_abs_error({name: got[name]}, {name: reference[name]})
              for name in net.params + net.intermediates}
    claims = textbook(net)
    report = verify(net, claims, grads=grads)
    closed, marks = {}, {}
    probe = _probe(net)
    for result in report.results:
        node = parse(result.claim, net)
        closed[result.target] = {"claim": result.claim, "tex": tex.formula_latex(node, printer=printer),
                                 "products": tex.products(node), "shape": tuple(node.shape),
                                 "named": named_products(net, result.claim, probe),
                                 "wide": tex.visible_width(tex.formula_latex(node, printer=printer)) > CLOSED_WIDTH}
        marks[result.target] = {"verdict": result.verdict, "method": result.method,
                                "detail": result.detail if result.method != "numeric" else "",
                                "bound": error_exponent(errors[result.target])}
    for name, error in errors.items():
        marks.setdefault(name, {"verdict": "holds" if error < 1e-8 else "fails", "method": "numeric",
                                "detail": "", "bound": error_exponent(error)})
    for mark in marks.values():
        mark["numeric_ok"] = mark["bound"] is not None and mark["bound"] <= -8  # None: nan, undecidable
    # max() skips a nan that is not first: an undecidable entry makes the whole check undecidable.
    worst = math.nan if any(math.isnan(e) for e in errors.values()) else max(errors.values())
    summary = {"numeric_bound": error_exponent(worst), "numeric_ok": worst < 1e-8,
               "ok": report.ok, "assumptions": list(report.assumptions),
               "methods": sorted({r.method for r in report.results if r.method})}
    return {"closed": closed, "marks": marks, "summary": summary}


# --------------------------------------------------------------------------- worked example


def _sequence(seed: int):
    """A tiny deterministic pseudo-random sequence (a fixed LCG), the same on every platform."""
    state = seed
    while True:
        state = (state * 1103515245 + 12345) % 2**31
        yield state >> 16


#: The worked example's point is drawn again (up to ``EXAMPLE_DRAWS`` times) while a hidden unit sits
#: on a kink of its activation or saturates: a smooth activation's slope below ``SATURATED`` times
#: its slope at 0 (tanh beyond |z| = 1.82, the logistic sigmoid beyond 3.64).
EXAMPLE_DRAWS = 400
SATURATED = 0.1


def example_values(net: MLP) -> dict:
    """Small exact inputs for the worked example: integers in x and b, halves and integers in W (so
    that softmax does not saturate), a one-hot (cross-entropy) or 0/1 (binary cross-entropy) target;
    the first draw where no hidden unit sits on a kink or saturates (:func:`example_troubles`), else
    the draw with the fewest such units (the document flags them).

    >>> example_values(MLP([2, 2], output="identity", loss="mse"))["W1"]
    Matrix([
    [  1, -1/2],
    [1/2,  1/2]])
    """
    best = None
    for seed in range(7, 7 + EXAMPLE_DRAWS):
        values = _draw(net, seed)
        troubles = example_troubles(net, values)
        if not troubles:
            return values
        if best is None or len(troubles) < best[0]:
            best = (len(troubles), values)
    return best[1]


def example_troubles(net: MLP, values: dict) -> list[dict]:
    """The hidden units that sit on a kink or saturate at ``values``, in float64:
    ``[{"l", "n", "i", "z", "kind": "kink" | "saturated", "slope"}]`` (0-based example ``n`` and unit
    ``i``). Empty when a custom activation cannot be evaluated there (the exact example decides).

    >>> net = MLP([1, 1, 1], hidden="tanh", output="identity", loss="mse", bias=False)
    >>> v = {"x": sp.Matrix([[3]]), "W1": sp.Matrix([[1]]), "W2": sp.Matrix([[1]]), "y": sp.Matrix([[0]])}
    >>> [(t["l"], t["kind"], round(t["slope"], 4)) for t in example_troubles(net, v)]
    [(1, 'saturated', 0.0099)]
    """
    import numpy as np

    found = []
    A = np.array(values["x"].tolist(), dtype=float)
    try:
        with np.errstate(all="ignore"):
            for l in range(1, net.L):
                W = np.array(values[f"W{l}"].tolist(), dtype=float)
                Z = A @ W.T if net.batch else W @ A
                if net.bias:
                    b = np.array(values[f"b{l}"].tolist(), dtype=float)
                    Z = Z + (b.T if net.batch else b)
                row = net.hidden[l - 1]
                slope = np.asarray(row.numpy_derivative(Z), dtype=float) * np.ones_like(Z)
                at0 = abs(float(np.asarray(row.numpy_derivative(np.zeros(1)), dtype=float).ravel()[0]))
                for (r, c), z in np.ndenumerate(Z):
                    n, i = (r, c) if net.batch else (0, r)
                    kind = None
                    if any(abs(z - k) < 1e-12 for k in row.kinks):
                        kind = "kink"
                    elif not row.kinks and 0 < at0 < math.inf and abs(slope[r, c]) < SATURATED * at0:
                        kind = "saturated"
                    if kind:
                        found.append({"l": l, "n": n, "i": i, "z": float(z), "kind": kind, "slope": float(slope[r, c])})
                F = np.asarray(row.numpy(Z), dtype=float)
                A = A + F if l in net.residual_layers else F
    except Exception:  # a custom activation that NumPy cannot evaluate: keep the first draw
        return []
    return found


def _draw(net: MLP, seed: int) -> dict:
    """One draw of the worked example's point from the fixed sequence ``seed``."""
    draw = _sequence(seed)
    pick = lambda choices: choices[next(draw) % len(choices)]
    half = sp.Rational(1, 2)
    values = {"x": sp.Matrix(*net.shape("x"), lambda i, j: pick([-1, 1, 2, 0, -2, 1]))}
    for l in range(1, net.L + 1):
        values[f"W{l}"] = sp.Matrix(*net.shape(f"W{l}"), lambda i, j: pick([-half, half, 1, 0, -1, half]))
        if net.bias:
            values[f"b{l}"] = sp.Matrix(*net.shape(f"b{l}"), lambda i, j: pick([0, 1, -1]))
    r, c = net.shape("y")
    n = net.sizes[-1]
    if net.loss_row.target == "one-hot":
        hot = lambda example, k: int(k == (example + 1) % n)
    elif net.loss_row.target == "binary":
        hot = lambda example, k: (example + k + 1) % 2
    else:
        hot = lambda example, k: pick([0, 1, -1, 2])
    values["y"] = sp.Matrix(r, c, lambda i, j: hot(i, j) if net.batch else hot(0, i))
    return values


class NotPrintable(Exception):
    """A cell of the worked example is not a finite real number of printable size (a custom
    activation such as ``1/x`` at 0, or ``exp(exp(exp(x)))``): the example is left out, and the
    document says why."""


#: The worked example prints numbers with ``DIGITS`` decimals in full: none may reach this size.
EXAMPLE_MAX_ABS = sp.Integer(10) ** 12


def _exact(expr):
    """An exact rational stays exact; anything else (exp, tanh, ...) becomes a 30-digit Float.
    Raises :class:`NotPrintable` for a value that is not a finite real number below ``EXAMPLE_MAX_ABS``.

    >>> _exact(sp.Rational(1, 3)), _exact(sp.exp(1))
    (1/3, 2.71828182845904523536028747135)
    >>> _exact(sp.log(0))
    Traceback (most recent call last):
    ...
    symbp.document.NotPrintable: a cell of the worked example is zoo, not a finite real number
    """
    value = sp.sympify(expr)
    if not value.is_Rational:
        value = sp.N(value, 30)
        if not (value.is_Float or value.is_Rational):
            raise NotPrintable(f"a cell of the worked example is {sp.N(value, 3)}, not a finite real number")
        value = sp.Float(value, 30)
    if abs(value) >= EXAMPLE_MAX_ABS:
        raise NotPrintable(f"a cell of the worked example is about {str(sp.Float(value, 3)).lower()}, too large to print "
                           f"with {DIGITS} decimals")
    return value


def number_tex(value, digits: int = DIGITS, *, strip: bool = True) -> str:
    """A number as the worked example prints it: integers and short decimals as they are, else
    ``digits`` significant digits (never ``0`` for a small nonzero number, never an exponent); a fixed
    column (``strip`` false) has ``digits`` decimals, rounded half to even.

    >>> number_tex(sp.Integer(-3)), number_tex(sp.Rational(1, 3)), number_tex(sp.Float("0.5"))
    ('-3', '0.3333', '0.5')
    >>> number_tex(sp.Rational(27, 10**6)), number_tex(sp.Rational(-123456, 1000)), number_tex(sp.exp(-3))
    ('0.000027', '-123.5', '0.04979')
    >>> number_tex(sp.Float("0.19"), 3, strip=False)
    '0.190'
    """
    value = sp.sympify(value)
    if value.is_Integer and strip:
        return str(int(value))
    if strip and value != 0:
        from .example import significant

        exact = (Decimal(int(value.p)) / Decimal(int(value.q)) if value.is_Rational else
                 Decimal(str(value)) if value.is_Float else None)
        if exact is not None and len(format(exact.normalize(), "f").lstrip("-").replace(".", "").strip("0")) <= digits:
            return format(exact.normalize(), "f")  # a short decimal as it is: 0.5, -0.05, 0.001
        return significant(sp.N(value, 30), digits)
    rounded = Decimal(str(sp.N(value, 30))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN)
    if rounded == 0:
        rounded = abs(rounded)  # never "-0"
        if strip:
            return "0"
    out = format(rounded, "f")
    return out.rstrip("0").rstrip(".") if strip else out


#: A worked example's matrices share a display line, one layer and direction at a time, while their
#: estimated widths (as :func:`symbp.latex.matrix_width`, labels included) add up to at most this.
EXAMPLE_LINE_WIDTH = 60


def worked_example(net: MLP, grads, printer) -> dict:
    """Every cell of the forward and backward pass at :func:`example_values`, computed exactly."""
    values = example_values(net)
    env = {}
    for name, M in values.items():
        env.update(zip(net.symbols(name), M))
    for stage in net.stages:
        for symbol, local in zip(stage.symbols, stage.local):
            env[symbol] = _exact(local.xreplace(env))
    loss = _exact(net.local_loss.xreplace(env))
    for symbol, expression in grads.definitions:
        env[symbol] = _exact(expression.xreplace(env))
    computed = {name: grads[name].xreplace(env).applyfunc(_exact) for name in net.params + net.intermediates}

    def cells(M):
        return [[tex.Cell(tex=number_tex(v)) for v in M.row(i)] for i in range(M.rows)]

    forward = []
    for l in range(1, net.L + 1):
        z = net.symbols(f"z{l}").xreplace(env)
        a = net.symbols(f"a{l}").xreplace(env)
        forward.append({"l": l, "W": cells(values[f"W{l}"]),
                        "b": cells(values[f"b{l}"]) if net.bias else None,
                        "z": cells(z), "a": cells(a)})
    backward = []
    for l in range(net.L, 0, -1):
        slope = None
        if l < net.L:
            slope = net.symbols(f"z{l}").xreplace(env).applyfunc(_slope(net.hidden[l - 1]))
        backward.append({
            "l": l,
            "delta": cells(computed[f"z{l}"]),
            "abar": cells(computed[f"a{l}"]) if l < net.L else None,
            "slope": cells(slope) if slope is not None else None,
            "W": cells(computed[f"W{l}"]),
            "b": cells(computed[f"b{l}"]) if net.bias else None,
        })
    compact = not net.batch and max(net.sizes) <= COMPACT_WIDTH
    forward_lines, backward_lines = [], []
    for f in forward:  # per layer, in reading order: W, b, z, a (x before layer 1's when compact)
        l = f["l"]
        items = [("x", cells(values["x"]), 2)] if l == 1 and compact else []
        items += [(printer.base(f"{k}{l}"), f[k], 4) for k in ("W", "b", "z", "a")]
        forward_lines += _example_lines(items)
    for b in backward:  # per layer: a-bar, f'(z), delta (= dL/db for one example), dL/db, dL/dW
        l = b["l"]
        delta = printer.grad_base(f"z{l}")
        one = b["b"] is not None and not net.batch
        items = [(printer.grad_base(f"a{l}"), b["abar"], 4),
                 (rf"{net.activation(l).latex}'\left( {printer.base(f'z{l}')} \right)", b["slope"], 9),
                 (rf"{delta} = \frac{{\partial L}}{{\partial {printer.base(f'b{l}')}}}" if one else delta,
                  b["delta"], 10 if one else 4),
                 (rf"\frac{{\partial L}}{{\partial {printer.base(f'b{l}')}}}", None if one else b["b"], 6),
                 (rf"\frac{{\partial L}}{{\partial {printer.base(f'W{l}')}}}", b["W"], 6)]
        backward_lines += _example_lines(items)
    flags = []
    for t in example_troubles(net, values):
        row = net.hidden[t["l"] - 1]
        index = f"{t['n'] + 1},{t['i'] + 1}" if net.batch else f"{t['i'] + 1}"
        z = net.symbols(f"z{t['l']}")[(t["n"], t["i"]) if net.batch else (t["i"], 0)].xreplace(env)
        flags.append({"cell": f"z^{{({t['l']})}}_{{{index}}}", "value": number_tex(z), "kind": t["kind"],
                      "f": row.latex, "slope": number_tex(_slope(row)(z))})
    return {"x": cells(values["x"]), "y": cells(values["y"]), "forward": forward, "backward": backward,
            "forward_lines": forward_lines, "backward_lines": backward_lines, "flags": flags,
            "loss": number_tex(loss),
            # x among layer 1's cells and y in the loss's line when every width is small (COMPACT_WIDTH)
            "compact": compact}


def _example_lines(items) -> list[list[dict]]:
    """A layer's labelled matrices of the worked example, ``(label, cells, label width)`` in reading
    order (those without cells left out), packed (:func:`_packed`) while their estimated widths add
    up to at most :data:`EXAMPLE_LINE_WIDTH`: ``[[{"label", "cells"}, ...], ...]``."""
    return _packed([({"label": label, "cells": rows}, rows, extra) for label, rows, extra in items if rows],
                   EXAMPLE_LINE_WIDTH)


def _slope(activation):
    """The derivative f' of an activation row, as a function of an exact number."""
    derivative = registry.derivative(activation)
    return lambda value: _exact(derivative(value))


# --------------------------------------------------------------------------- gradient flow


def _flow_section(net: MLP) -> dict:
    from .flow import derivation_section  # the section's context and partial belong to symbp.flow

    return derivation_section(net)


# --------------------------------------------------------------------------- networks of layers
#
# A symbp.layers.Network gets its own document (templates/network.tex.j2): the same parts as an MLP's
# (conventions, notation, forward, loss, backward from the output, checks), with each layer's op
# explained by its partial templates/ops/<partial>.tex.j2 (macros ``forward(l, net)`` and
# ``backward(l, net)``), chosen through the op's row (see :func:`partial_of`), never by matching names.

#: How an op's internal stages print, by the stage's key (any other key: :func:`symbp.latex.stem_latex`).
STAGE_SYMBOLS = {"mean": r"\mu", "var": "v"}


def partial_of(row) -> str:
    """The document partial of an op row: its ``partial`` column, else ``"activation"`` for an
    entry-wise activation (one partial serves them all), else the op's name.

    >>> from symbp.ops import op
    >>> partial_of(op("layernorm")), partial_of(op("relu"))
    ('layernorm', 'activation')
    """
    if row.partial:
        return row.partial
    return "activation" if row.activation is not None else row.name


def network_names(net) -> dict:
    """``{name: (body, superscript)}`` for the printer: a stage prints as its key's symbol with its
    layer's superscript (``ln2mean`` as ``\\mu^{(2)}``, ``att1Q`` as ``Q^{(1)}``). Names that would
    print alike (a parameter called ``mu2`` beside ``ln2mean``) print upright as written instead."""
    plain = tex.SymbpLatexPrinter()
    names = {}
    for layer in net.layers:
        body, sup = plain.parts(layer.name)
        for key, stage in layer.stages.items():
            names[stage] = (STAGE_SYMBOLS.get(key) or tex.stem_latex(key), sup or f"({body})")
    printer = tex.SymbpLatexPrinter(names=names)
    seen = {}
    for name in net.names:
        seen.setdefault(printer.parts(name), []).append(name)
    for clash in (group for group in seen.values() if len(group) > 1):
        for name in clash:
            names[name] = (rf"\mathrm{{{name}}}", "")
    return names


def _is_network(net) -> bool:
    from .layers import Network

    return isinstance(net, Network)


def _number(value, printer) -> str:
    """A layer's setting in LaTeX: exact numbers as fractions, flags as words."""
    from fractions import Fraction

    if isinstance(value, bool):
        return r"\text{true}" if value else r"\text{false}"
    if isinstance(value, (int, Fraction)):
        value = Fraction(value)
        return printer.doprint(sp.Rational(value.numerator, value.denominator))
    return printer.base(str(value))  # a name (dropout's mask, add's from)


def _layer_view(net, layer, printer) -> dict:
    """One layer as its partial sees it: names in LaTeX, settings, shapes, symbp's first entries."""
    row = layer.op
    names = {"inp": layer.inp, "out": layer.name}
    view = {
        "position": layer.position, "label": layer.label, "name": layer.name, "op": row.name,
        "op_tex": row.latex, "partial": partial_of(row), "note": row.note, "n_in": layer.n_in,
        "n_out": layer.n_out, "kinks": bool(row.kinks),
        "shape": _shape(net.shape(layer.name)), "in_shape": _shape(net.shape(layer.inp)),
        "cfg": {key: _number(value, printer) for key, value in layer.cfg.items()},
        "on": {key: value for key, value in layer.cfg.items() if isinstance(value, bool)},  # the flags
        "params": {role: printer.base(n) for role, n in layer.params.items()},
        "params_T": {role: printer.base(n, r"\top") for role, n in layer.params.items()},
        "params_grad": {role: printer.grad_base(n) for role, n in layer.params.items()},
        "extra": {key: printer.base(n) for key, n in layer.extra.items()},
        "extra_grad": {key: printer.grad_base(n) for key, n in layer.extra.items()},
        "stages": {key: printer.base(n) for key, n in layer.stages.items()},
        "stages_T": {key: printer.base(n, r"\top") for key, n in layer.stages.items()},
        "stages_grad": {key: printer.grad_base(n) for key, n in layer.stages.items()},
        "activation": None,
    }
    for key, name in names.items():
        view[key] = printer.base(name)
        view[key + "_T"] = printer.base(name, r"\top")
        view[key + "_grad"] = printer.grad_base(name)
        view[key + "_grad_T"] = printer.grad_base(name, r"\top")
    if row.activation is not None:
        view["activation"] = {"tex": row.activation.latex, "expression": row.activation.expression or None,
                              "note": row.activation.note}
    entries = []
    for name in [*layer.stages.values(), layer.name]:
        local, symbols = net.local(name), net.symbols(name)
        entries.append(_entry(net, local, symbols, printer))
    tall = [_tall([e]) > 0 for e in entries]
    view["entries"] = [e for e, t in zip(entries, tall) if not t]
    view["tall"] = [e["lhs"] for e, t in zip(entries, tall) if t]
    return view


def _tall(entries, fractions: int = ENTRY_FRACTIONS) -> int:
    """How many printed lines the longest of ``entries`` takes when they are too long to teach from
    (wider in all than :data:`ENTRY_WIDTH`, or with more than ``fractions`` fractions); else 0."""
    widest = max(sum(map(tex.visible_width, e["lines"])) for e in entries)
    most = max(sum(line.count(r"\frac") for line in e["lines"]) for e in entries)
    tall = widest > ENTRY_WIDTH or most > fractions
    return max(len(e["lines"]) for e in entries) if tall else 0


def _consumers(net) -> dict:
    """``{variable: [stages whose local expressions read it]}``, in the order of the forward pass."""
    from .names import parse as parse_name

    found = {}
    for stage in net.stages:
        read = set()
        for expr in stage.local:
            read |= {parsed[1] for parsed in map(parse_name, expr.free_symbols) if parsed and not parsed[0]}
        for name in sorted(read):
            found.setdefault(name, []).append(stage.name)
    return found


def _network_target(net, grads, name, printer, checks, consumers, index=None) -> dict:
    M = grads[name]
    rows = tex.elided(M, printer=printer, width=MATRIX_WIDTH)
    fits = tex.matrix_width(rows) <= MATRIX_WIDTH
    entries = [_entry(net, M, net.symbols(name), printer, i, j) for i, j in _samples(M.shape)]
    long = _tall(entries, GRADIENT_FRACTIONS)  # one sentence, no display
    layer = net.layer_of(name)
    kind = ("param" if name in net.params else "output" if name in net.outputs else "stage")
    return {
        "name": name,
        "kind": kind,
        "layer": layer.label if layer else None,
        "tex": printer.base(name),
        "grad": printer.grad_base(name),
        "column": name in net.columns,
        "shape": _shape(net.shape(name)),
        # the stages that read it on a path to L, each with its printed name and whether a column vector
        "readers": [{"tex": printer.base(u), "column": u in net.columns} for u in consumers.get(name, []) if u in grads],
        "loss": name == net.loss_stage or (name == net.output_name and not net.fused),
        "entries": entries,
        "matrix": rows if fits and not long else None,
        "elided": M.rows > len(rows) or M.cols > len(rows[0]),
        "long": long,
        "closed": checks["closed"].get(name),
        "mark": checks["marks"].get(name),
        "generic": _generic(index, name),
    }


#: How wide (visible characters) the index-form result of a gradient may be to follow its chain rule
#: on the same line; a wider one is left to the table's closed form.
GENERIC_WIDTH = 56
#: A chain rule and its result wider together than this take a line each.
GENERIC_LINE = 80


def _index_form(net):
    """``derive_index(net)`` (every gradient in index notation, for all sizes), or None when some
    layer has no index form."""
    from .indexform import derive_index

    try:
        return derive_index(net)
    except SymbpError:
        return None


def _generic(index, name) -> dict | None:
    """The all-sizes derivation of ``dL/d name`` in index notation, for a network document: the chain
    rule, SymPy's local partials and the entry with the Kronecker brackets summed (when it is short),
    from :func:`symbp.indexform.derive_index`. None when there is none or one of its steps was not
    checked (the document then writes the chain rule at the given sizes)."""
    if index is None:
        return None
    try:
        derivation = index[name]
    except KeyError:
        return None
    if not derivation.checked or derivation.target != name:
        return None
    steps = derivation.steps
    chain = next((s.tex for s in steps if s.why == "chain rule"), None)
    partials = [(s.lhs, s.tex) for s in steps if s.lhs]
    summed = next((s.tex for s in reversed(steps)
                   if s.why.startswith("brackets summed") or s.why.startswith(r"\texttt{sympy.diff} of")), None)
    if summed is not None and tex.visible_width(summed) > GENERIC_WIDTH:
        summed = None
    if chain is None and summed is None:
        return None
    split = chain is not None and summed is not None and \
        tex.visible_width(derivation.lhs + chain + summed) > GENERIC_LINE
    return {"lhs": derivation.lhs, "chain": chain, "partials": partials, "summed": summed, "split": split}


def _index_sizes(net, index) -> list:
    """The size symbols of ``index`` with this network's values, ``[(tex, value)]``: ``n_{z1}`` is the
    width of ``z1``, ``N`` the batch."""
    from .allsizes import World

    widths = {str(symbol): name for name, symbol in reversed(World(net).width.items())}
    out = []
    for size in index.sizes:
        if size == "N":
            value = net.batch
        elif size in widths:
            value = net.shape(widths[size])[1 if net.batch else 0]
        else:
            return []
        out.append((tex.latex(sp.Symbol(size)), value))
    return out


def _matrix_lines(targets) -> list[list[dict]]:
    """A network layer's assembled matrices (the targets that have one) on their display lines."""
    return _packed([(t, t["matrix"]) for t in targets if t["matrix"] is not None])


def _where(targets) -> list:
    """The abbreviations of a layer's closed forms as ``[(for, [(name, definition)])]``: one group
    (``for`` None) when every name means the same in every row, else one group per row that has any,
    ``for`` being that row's gradient."""
    rows = [(t["grad"], list((t["closed"] or {}).get("where", ()))) for t in targets]
    rows = [(grad, where) for grad, where in rows if where]
    merged = {}
    for _, where in rows:
        for name, definition in where:
            if merged.setdefault(name, definition) != definition:
                return rows
    return [(None, list(merged.items()))] if merged else []


def _backward_targets(net, layer, grads) -> list[str]:
    """What the backward section of ``layer`` derives: its stages (last first), its parameters, and
    its input when it is the input's first reader (an output read twice, by the next layer and by a
    later ``add``, is derived where every path to it is known)."""
    names = [*reversed(tuple(layer.stages.values())), *layer.params.values()]
    readers = [l.position for l in net.layers if l.inp == layer.inp or layer.inp in l.extra.values()]
    if layer.inp in grads.keys() and min(readers) == layer.position:
        names.append(layer.inp)
    for other in layer.extra.values():  # an add's "from", when no earlier layer reads it
        others = [l.position for l in net.layers if l.inp == other or other in l.extra.values()]
        if other in grads.keys() and min(others) == layer.position:
            names.append(other)
    return [n for n in names if n in grads.keys()]


def _op_claims(net) -> dict:
    """The op table's backward columns, one claim per target (contributions of several layers summed):
    the closed forms a document shows when :func:`symbp.textbook` cannot give them."""
    parts = {}
    for layer in net.layers:
        for target, claim in layer.op.backward(layer.context(net)).items():
            parts.setdefault(target, []).append(claim)
    return {t: c[0] if len(c) == 1 else " + ".join(f"({x})" for x in c) for t, c in parts.items()}


def network_checks(net, grads, printer, *, report=None, numeric_error=None) -> dict:
    """How each gradient of a network was established (the network counterpart of :func:`verification`).

    ``report``: a :class:`symbp.verify.Report` of the textbook claims, if at hand; else
    ``symbp.verify(net, symbp.textbook(net))`` is run, and when it cannot judge this network the
    document shows the op table's backward columns as the closed forms, marked as not verified, with the
    reason. ``numeric_error``: the max abs error of the lambdified gradients against an independent
    engine, one number or ``{name: number}``; else the numeric check of :mod:`symbp.numeric` is run
    when it takes this network, and the document says so when it does not.
    """
    from .formula import parse

    verify_reason = None
    if report is None:
        from .verify import textbook, verify

        report = verify(net, textbook(net), grads=grads)
    if report is not None:
        claims = {r.target: r.claim for r in report.results if isinstance(r.claim, str)}
    else:
        claims = _op_claims(net)
    errors, numeric_reason = _numeric_errors(net, grads, numeric_error)
    closed, marks = {}, {}
    for target, claim in claims.items():
        try:
            node = parse(claim, net)
        except SymbpError:
            continue  # a claim the document cannot typeset (its verdict still shows)
        main, where = tex.abbreviated(node, printer=printer)
        closed[target] = {"claim": claim, "tex": main, "where": where, "products": tex.products(node),
                          "shape": tuple(node.shape), "wide": tex.visible_width(main) > NETWORK_CLOSED_WIDTH}
    results = {r.target: r for r in report.results} if report is not None else {}
    for name in net.params + net.intermediates:
        result = results.get(name)
        error = errors.get(name) if errors is not None else None
        bound = error_exponent(error) if error is not None else None
        marks[name] = {
            "verdict": result.verdict if result else None,
            "method": result.method if result else None,
            "diagnosis": result.diagnosis if result else None,
            "detail": (result.detail if result.method != "numeric" else "") if result else "",
            "numeric": None if error is None else ("undecidable" if bound is None else
                                                    "ok" if bound <= -8 else "differs"),
            "bound": bound,
        }
    worst = None
    if errors:
        values = list(errors.values())
        worst = math.nan if any(math.isnan(e) for e in values) else max(values)
    summary = {
        "verified": report is not None,
        "verify_reason": verify_reason,
        "ok": report.ok if report is not None else None,
        "assumptions": list(report.assumptions) if report is not None else [],
        "methods": sorted({r.method for r in report.results if r.method}) if report is not None else [],
        "numeric_reason": numeric_reason,
        "numeric_bound": error_exponent(worst) if worst is not None else None,
        "numeric_ok": worst is not None and worst < 1e-8,
        "numeric_done": worst is not None,
    }
    return {"closed": closed, "marks": marks, "summary": summary}


def _numeric_errors(net, grads, given):
    """``({name: max abs error}, None)``, or ``(None, reason)`` when there is no numeric check."""
    names = net.params + net.intermediates
    if given is not None:
        if isinstance(given, (int, float)):
            return {name: float(given) for name in names}, None
        return {name: float(e) for name, e in dict(given).items()}, None
    from . import numeric

    check = numeric.check_network(net, grads.with_layout("denominator"), 0,
                                  finite_differences=net.n_params <= 2000)
    if check.finite_differences is None and check.torch is None:
        return None, f"no reference engine ran ({check.torch_skipped}; central differences are skipped above 2000 parameters)"
    return {name: check.worst for name in names}, None  # the worst error over every gradient, for each


def default_network_title(net) -> str:
    """``Backpropagation through affine, layernorm, relu, affine, softmax``."""
    return "Backpropagation through " + ", ".join(layer.op.name for layer in net.layers)


def network_context(net, *, grads: Gradients | None = None, title: str | None = None, report=None,
                    numeric_error=None) -> dict:
    """Everything the network template shows, as plain data (LaTeX strings from the printer)."""
    if grads is not None:
        if not isinstance(grads, Gradients) or grads.net is not net:
            raise SymbpError("document: grads must be symbp.derive(net) of this network, or left out")
        if grads.layout != "denominator":
            raise SymbpError("document: written in denominator layout only (dL/dV has the shape of V); "
                             "leave out the numerator layout for a document")
        grads = grads if grads.method == "chain" else None
    if grads is None:
        grads = derive(net)
    printer = tex.SymbpLatexPrinter(columns=net.columns, max_terms=MAX_TERMS, names=network_names(net))
    checks = network_checks(net, grads, printer, report=report, numeric_error=numeric_error)
    layers = [_layer_view(net, layer, printer) for layer in net.layers]
    consumers = _consumers(net)
    index = _index_form(net)
    target = lambda name: _network_target(net, grads, name, printer, checks, consumers, index)
    backward = []
    for layer, view in zip(reversed(net.layers), reversed(layers)):
        targets = [target(n) for n in _backward_targets(net, layer, grads)]
        backward.append({"layer": view, "targets": targets, "where": _where(targets), "lines": _matrix_lines(targets)})
    out = target(net.output_name) if net.output_name in grads.keys() else None
    allsizes = allsizes_once([out] + [t for b in backward for t in b["targets"]])
    symbols = [{"tex": "x", "shape": _shape(net.shape("x")), "kind": "input", "layer": None},
               {"tex": "y", "shape": _shape(net.shape("y")), "kind": "target", "layer": None}]
    symbols += [{"tex": printer.base(m), "shape": _shape(net.shape(m)), "kind": "mask",
                 "layer": net.layer_of(next(l.name for l in net.layers if m in l.extra.values())).label}
                for m in net.masks]
    for layer in net.layers:
        for role, name in layer.params.items():
            symbols.append({"tex": printer.base(name), "shape": _shape(net.shape(name)), "kind": "param",
                            "role": role, "layer": layer.label})
        for key, name in layer.stages.items():
            symbols.append({"tex": printer.base(name), "shape": _shape(net.shape(name)), "kind": "stage",
                            "role": key, "layer": layer.label})
        symbols.append({"tex": printer.base(layer.name), "shape": _shape(net.shape(layer.name)),
                        "kind": "output", "layer": layer.label})
    loss = net.loss_row
    custom = getattr(loss, "expression", None)
    output = net.output_name
    return {
        "title": title if title is not None else default_network_title(net),
        "author": f"symbp {__version__}",
        "versions": {"symbp": __version__, "sympy": sp.__version__},
        "net": {
            "input": net.input_width, "batch": net.batch, "reduction": net.reduction,
            "layers": layers, "kinks": any(l.op.kinks for l in net.layers),
            "loss": {"name": loss.name, "tex": loss.latex,
                     "expression": tex.latex(custom) if custom is not None else None},
            "fused": None if not net.fused else {"tex": net.fused.latex, "side_condition": net.fused.side_condition},
            "output": printer.base(output), "output_grad": printer.grad_base(output),
            "n_out": net.layers[-1].n_out,
            "loss_stage": printer.base(net.loss_stage),
        },
        "symbols": symbols,
        "output": out,
        "output_where": _where([out]) if out else [],
        "output_lines": _matrix_lines([out]) if out else [],
        "backward": backward,
        "allsizes": allsizes,
        "index_sizes": _index_sizes(net, index) if index is not None else [],
        "checks": checks["summary"],
    }
