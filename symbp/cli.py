"""The command line: parses arguments, calls the public API, prints. Nothing else lives here.

Exit codes: 0 all is well, 1 a claim or a check fails, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import textwrap

from . import __version__
from .characters import require_ascii
from .errors import SymbpError

CONVENTIONS = """\
conventions:
  sizes [n0, n1, ..., nL] give L weight layers ("3 layers" = [n0, n1, n2, n3]).
  one example: column vectors, z_l = W_l a_(l-1) + b_l, a_l = f_l(z_l), a0 = x, W_l is (n_l, n_(l-1)).
  batch of N: rows are examples, z_l = a_(l-1) W_l^T + 1_N b_l^T; the loss is the mean (or sum) over rows.
  denominator layout: dL/dV has the shape of V, entry (i, j) is dL/dV_ij (numerator layout on request).
  relu'(0) = 0 (PyTorch, micrograd); leaky_relu slope 0.01; softplus(z) = log(1 + exp(z)).
  cross_entropy sums over classes; binary_cross_entropy and mse average over output units.
  dL/dz_L = a_L - y for softmax + cross-entropy holds only when every target row sums to 1.
  printed indices are 1-based; JSON indices are 0-based, as in NumPy."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_sizes(text: str) -> list[int]:
    """``"4,5,3,3"`` (or ``"[4, 5, 3, 3]"``) -> ``[4, 5, 3, 3]``; the network checks the values.

    >>> parse_sizes("[4, 5, 3, 3]")
    [4, 5, 3, 3]
    """
    require_ascii(text, "sizes")  # int() would read Arabic-Indic or fullwidth digits as widths
    parts = [p.strip() for p in text.strip().strip("[]").split(",")]
    for part in parts:
        if not re.fullmatch(r"[+-]?[0-9]+", part):
            raise SymbpError(f"sizes {text!r}: {part!r} is not a whole number (write e.g. 4,5,3,3)")
    return [int(p) for p in parts]


def json_ready(value):
    """``value`` with every non-finite float written as a string (``"nan"``, ``"inf"``, ``"-inf"``):
    JSON has no NaN or Infinity, and ``null`` would compare as a small number in some tools (jq).

    >>> json_ready({"error": float("nan"), "norms": [1.5, float("-inf")], "shape": (2, 1)})
    {'error': 'nan', 'norms': [1.5, '-inf'], 'shape': [2, 1]}
    """
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def dumps(payload) -> str:
    """The one JSON encoder of every command: strict JSON (``allow_nan=False``) after :func:`json_ready`."""
    return json.dumps(json_ready(payload), indent=2, allow_nan=False)


def _emit(args, payload: dict, text: str) -> None:
    print(dumps(payload) if args.json else text)


# --------------------------------------------------------------------------- derive


def _add_derive(sub):
    p = sub.add_parser("derive", help="derive every dL/dV_ij of an MLP or a spec file's network and check the numbers",
                       description="Derive every per-element partial of a network's loss with SymPy, assemble "
                       "them into matrices, and check them numerically. The network is an MLP given by its SIZES "
                       "and the options below, or the [model] of a spec file (SPEC.toml: sizes = [...] for an MLP, "
                       "or input = ... and [[layers]] tables for a network of layers); the MLP options do not "
                       "apply to a spec file.\n\n" + CONVENTIONS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sizes", help="layer widths, e.g. 4,5,3,3; or a spec file SPEC.toml")
    p.add_argument("--sizes", dest="size_mode", default="given", metavar="given|symbolic",
                   help="symbolic: derive in index notation for ALL sizes (the widths and the batch as "
                   "symbols; SIZES gives only the depth and the options), every step checked by the "
                   "engine; no entry is built (default given)")
    p.add_argument("--hidden", default=None,
                   help="hidden activation: relu, leaky_relu, sigmoid, tanh, softplus, identity, an expression "
                   "in x such as 'x*sigmoid(x)', or one per hidden layer separated by ';' (default relu)")
    p.add_argument("--output", default=None, help="softmax, sigmoid or identity (default softmax)")
    p.add_argument("--loss", default=None,
                   help="cross_entropy, binary_cross_entropy or mse (default cross_entropy)")
    p.add_argument("--batch", type=int, default=None, help="batch size N (rows are examples); 0: one example")
    p.add_argument("--reduction", default=None, help="mean or sum over the batch (default mean)")
    p.add_argument("--no-bias", action="store_true", help="layers without biases")
    p.add_argument("--residual", action="store_true", help="skip connections a_l = a_(l-1) + f(z_l)")
    p.add_argument("--method", default="chain", help="chain (default) or expand")
    p.add_argument("--layout", default="denominator", help="denominator (default) or numerator")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check point")
    p.add_argument("--title", default=None, help="title of the document (with -o)")
    p.add_argument("-o", dest="out", metavar="FILE.tex", default=None,
                   help="write the step-by-step LaTeX derivation to FILE.tex (atomically)")
    p.add_argument("--pdf", action="store_true", help="also compile FILE.pdf next to FILE.tex (needs pdflatex)")
    p.add_argument("--template-dir", default=None, metavar="DIR",
                   help="a folder of your own templates, looked up before symbp's (e.g. derivation.tex.j2)")
    _add_document_controls(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_progress(p)
    p.set_defaults(run=_run_derive)


def _add_document_controls(p):
    """A teacher's controls of the derivation document (see symbp.document.controls)."""
    from .document import SECTIONS

    g = p.add_argument_group("document controls (with -o)")
    g.add_argument("--sections", default=None, metavar="LIST",
                   help=f"the sections to keep, comma-separated, of: {', '.join(SECTIONS)} (default all)")
    g.add_argument("--no-checks", action="store_true", help="leave out the verification marks' section")
    g.add_argument("--student", action="store_true", help="a student version: no verification marks, no tool talk")
    g.add_argument("--author", default=None, help="the author printed under the title")
    g.add_argument("--date", default=None, help="the date printed under the title (none by default)")
    g.add_argument("--title-tex", action="store_true", help="the --title is LaTeX (math allowed), not plain text")


def _document_choices(args) -> dict:
    """The document controls of ``args`` as keyword arguments of symbp.document.write, checked."""
    from .document import SECTIONS, controls
    from .latex import check_text

    sections = None if args.sections is None else [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.no_checks:
        sections = [s for s in (sections or SECTIONS) if s != "checks"]
    for text, flag in ((args.author, "--author"), (args.date, "--date")):
        if text is not None:
            check_text(text, flag)
    choices = dict(sections=sections, student=args.student, author=args.author, date=args.date,
                   title_tex=args.title_tex)
    controls(**choices)  # refuses an unknown section before any work
    return choices


#: The options of ``derive`` that describe an MLP given by its sizes, with their defaults.
MLP_OPTIONS = {"hidden": "relu", "output": "softmax", "loss": "cross_entropy", "batch": 0, "reduction": "mean",
               "no_bias": False, "residual": False}


def _mlp_defaults(args) -> None:
    """Fill in the MLP options left out (their defaults are None so that a spec file can refuse them)."""
    for key, default in MLP_OPTIONS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)


def network_from_args(args):
    from .network import MLP

    _mlp_defaults(args)
    hidden = args.hidden.split(";") if ";" in args.hidden else args.hidden
    return MLP(parse_sizes(args.sizes), hidden=hidden, output=args.output, loss=args.loss,
               bias=not args.no_bias, batch=_batch(args.batch), reduction=args.reduction,
               residual=args.residual)


def _add_progress(p):
    p.add_argument("--progress", action="store_true", default=None,
                   help="show each step and its time on stderr (default: steps past a second, on a terminal only)")


def _progress(args):
    from .progress import Progress

    return Progress(f"symbp {args.command}", args.progress)


def _batch(value):
    if value < 0:
        raise SymbpError(f"--batch {value}: the batch size must be positive (or 0 for one example)")
    return value or None


def _is_spec_file(text: str) -> bool:
    """``derive``'s first argument names a spec file (rather than sizes) when it ends in ``.toml`` or
    is an existing file."""
    return text.strip().lower().endswith(".toml") or os.path.isfile(text)


def _derive_spec_network(args, steps):
    """The network of the spec file ``args.sizes`` (refusing the MLP options, which it does not take)."""
    from .spec import load

    for key, default in MLP_OPTIONS.items():
        given = getattr(args, key)
        if given is not None and given is not False:
            flag = "--no-bias" if key == "no_bias" else f"--{key}"
            raise SymbpError(f"{flag} describes an MLP given by its sizes; {args.sizes} is a spec file, whose "
                             "[model] says the network: leave out " + flag)
    return load(args.sizes, steps=steps).net


def _run_derive(args):
    from . import cost
    from .derive import derive
    from .layers import Network

    _check_document_options(args, args.out)
    if args.size_mode not in ("given", "symbolic"):
        raise SymbpError(f"--sizes {args.size_mode!r}: expected given or symbolic")
    if args.size_mode == "symbolic":
        return _run_derive_symbolic(args)
    choices = _document_choices(args)
    if args.out is not None and args.layout == "numerator":
        raise SymbpError("--layout numerator: the document is written in denominator layout only (dL/dV has the "
                         "shape of V); leave out -o, or --layout")
    steps = cost.DERIVE_STEPS + (("document",) if args.out is not None else ())
    guess = {}
    progress = _progress(args)
    if _is_spec_file(args.sizes):
        with progress.step(f"reading {args.sizes} and building the network"):
            net = _derive_spec_network(args, steps)
    else:
        _mlp_defaults(args)
        estimate = cost.refuse_if_too_big(parse_sizes(args.sizes), batch=_batch(args.batch), output=args.output,
                                          hidden=args.hidden.split(";") if ";" in args.hidden else args.hidden,
                                          steps=steps, method=args.method)
        guess = estimate.seconds if estimate else {}
        with progress.step(f"building the network {args.sizes}", guess.get("build")):
            net = network_from_args(args)
    layered = isinstance(net, Network)
    with progress.step(f"derive ({args.method})", guess.get("derive")):
        grads = derive(net, method=args.method, layout=args.layout, progress=False)
    check = _numeric_check(net, grads, args, progress, guess)
    reference_error, fd_error, fd_excluded = check["reference"], check["fd"], check["fd_excluded"]
    payload = {
        "sizes": ([{"op": layer.op.name, "name": layer.name, "out": layer.n_out} for layer in net.layers]
                  if layered else list(net.sizes)),
        "network": net.describe(),
        "method": grads.method,
        "layout": grads.layout,
        "seconds": round(grads.seconds, 3),
        "params": {n: {"shape": list(net.shape(n)), "entry": grads.text(n)} for n in net.params},
        "intermediates": {n: {"shape": list(net.shape(n)), "entry": grads.text(n)} for n in net.intermediates},
        "checks": {"numeric_max_abs_error": reference_error, "engine": check["engine"],
                   "jax_engine": JAX_ENGINE if check["jax"] is not None else None, "jax_max_abs_error": check["jax"],
                   "finite_difference_max_abs_error": fd_error,
                   "finite_difference_kink_crossings": fd_excluded if fd_error is not None else None},
        "output": None,
    }
    if layered:
        payload["input"] = net.input_width
    if args.out is not None:
        from . import document

        with progress.step(f"writing {args.out}" + (" and its PDF" if args.pdf else ""), guess.get("document")):
            written = document.write(net, args.out, pdf=args.pdf, grads=grads, title=args.title,
                                     template_dir=args.template_dir, **choices)
        payload["output"] = str(written["tex"])
        payload["pdf"] = str(written["pdf"]) if written["pdf"] else None
    lines = [net.describe(),
             f"{grads.layout} layout (dL/dV {'has the shape of V' if grads.layout == 'denominator' else 'is transposed'}); "
             "relu'(0) = 0; indices 1-based",
             f"derived by the {grads.method} method in {grads.seconds:.2f} s: {net.n_params} parameters",
             ""]
    width = max(len(n) for n in net.names)
    for name in net.params + net.intermediates:
        r, c = grads[name].shape
        lines.append(f"  {name:<{width}}  {f'{r}x{c}':>7}  {grads.text(name)}")
    if not check["available"]:
        payload["checks"]["ok"] = None
        lines += ["", f"numeric check: not available ({check['why']}); the derivation is not checked numerically"]
        decided = True
    else:
        fd = f", {fd_error:.1e} vs central differences" if fd_error is not None else \
            f" (central differences skipped above {FD_LIMIT} parameters)"
        if fd_excluded:
            fd += (f" (leaving out {fd_excluded} entr{'y' if fd_excluded == 1 else 'ies'} whose perturbation "
                   "crosses a kink: there a difference quotient is not a derivative)")
        jax = f", {check['jax']:.1e} vs {JAX_ENGINE}" if check["jax"] is not None else ""
        decided = all(e is None or math.isfinite(e) for e in (reference_error, check["jax"], fd_error))
        # the engines (not central differences, whose error is the step's) must agree to float64 precision
        engines = [(check["jax"], JAX_ENGINE)]
        if check["engine"] != "central differences":
            engines.insert(0, (reference_error, check["engine_text"]))
        apart = [(e, name) for e, name in engines if e is not None and e >= AGREE]
        payload["checks"]["ok"] = decided and not apart
        if decided and apart:
            lines += ["", f"numeric check at a random point (float64): DISAGREES: max abs error {apart[0][0]:.1e} vs "
                      f"{apart[0][1]} (at least {AGREE:.0e}): the derivation and that engine differ{fd}"]
            decided = False
        elif decided:
            lines += ["", f"numeric check at a random point (float64): max abs error {reference_error:.1e} "
                      f"vs {check['engine_text']}{jax}{fd}"]
        else:
            lines += ["", "numeric check at a random point (float64): UNDECIDABLE: the gradients are not finite "
                      "there (nan or infinity), so the derivation is not checked"]
    if args.out is not None:
        lines.append(f"wrote {payload['output']}" + (f" and {payload['pdf']}" if payload["pdf"] else ""))
    _emit(args, payload, "\n".join(lines))
    return 0 if decided else 1


def _run_derive_symbolic(args):
    """``derive --sizes symbolic``: the derivation in index notation for all sizes (symbp.indexform)."""
    from .indexform import derive_index

    for flag, value, default in (("--method", args.method, "chain"), ("--layout", args.layout, "denominator"),
                                 ("--sections", args.sections, None)):
        if value != default:
            raise SymbpError(f"{flag} {value}: not with --sizes symbolic (the index derivation is one "
                             "document in denominator layout, every step checked)")
    for flag, on in (("--no-checks", args.no_checks), ("--student", args.student), ("--title-tex", args.title_tex)):
        if on:
            raise SymbpError(f"{flag}: not with --sizes symbolic (its marks are what it shows)")
    progress = _progress(args)
    if _is_spec_file(args.sizes):
        with progress.step(f"reading {args.sizes} and building the network"):
            net = _derive_spec_network(args, ())
    else:  # the widths are symbols: a small twin of the same depth and options stands for every size
        _mlp_defaults(args)
        given = parse_sizes(args.sizes)
        small = {w: 2 + j for j, w in enumerate(dict.fromkeys(given))}  # equal widths stay equal (residual)
        args.sizes = ",".join(str(small[w]) for w in given)
        args.batch = 2 if _batch(args.batch) else args.batch
        net = network_from_args(args)
    with progress.step("derive in index notation (all sizes)"):
        deriv = derive_index(net)
    payload = {"sizes": "symbolic", "symbols": deriv.sizes, "network": deriv.description, "checked": deriv.checked,
               "unchecked": deriv.unchecked(), "assumptions": sorted({a for d in deriv.derivations for a in d.assumptions}),
               "gradients": {t: {"claim": d.claim if t == d.target else None, "proved": d.proved,
                                 "steps": len(d.steps), "layers": d.layers or None}
                             for d in deriv.derivations for t in d.targets},
               "output": None, "pdf": None}
    lines = [deriv.description,
             f"derived in index notation for all sizes ({', '.join(deriv.sizes)} symbolic); indices 1-based; "
             "denominator layout", ""]
    names = {d.target: ", ".join(d.targets) for d in deriv.derivations}
    width = max(len(n) for n in names.values())
    for d in deriv.derivations:
        mark = "checked" if d.checked else "NOT CHECKED"
        lines.append(f"  dL/d{names[d.target]:<{width}}  {len(d.steps)} steps, {mark}: {d.claim}"
                     + (f" (written for {d.target}; {d.layers})" if d.layers else ""))
    if payload["assumptions"]:
        lines += ["", f"assuming: {'; '.join(payload['assumptions'])}"]
    lines += ["", "every step checked for all sizes by the normal form; a proof for one layer holds at any depth"
              if deriv.checked else f"NOT every step was checked: {', '.join(deriv.unchecked())}"]
    if args.out is not None:
        with progress.step(f"writing {args.out}" + (" and its PDF" if args.pdf else "")):
            written = deriv.write(args.out, pdf=args.pdf, title=args.title, author=args.author, date=args.date,
                                  template_dir=args.template_dir)
        payload["output"] = str(written["tex"])
        payload["pdf"] = str(written["pdf"]) if written["pdf"] else None
        lines.append(f"wrote {payload['output']}" + (f" and {payload['pdf']}" if payload["pdf"] else ""))
    _emit(args, payload, "\n".join(lines))
    return 0 if deriv.checked else 1


def _numeric_check(net, grads, args, progress, guess) -> dict:
    """The numeric check of ``derive``: the lambdified derivation at a random point against the NumPy
    reference engine and, for small networks, central differences. A network of layers is checked
    against torch autograd in float64 through each op's torch form (when torch is installed), JAX autodiff
    of the loss written from the op table's code (when jax is installed; parameters only) and central
    differences of the independent NumPy forward (:func:`symbp.numeric.check_network`)."""
    from . import numeric
    from .layers import Network

    out = {"available": True, "reference": None, "fd": None, "fd_excluded": 0, "jax": None,
           "engine": "numpy reference backprop", "engine_text": "NumPy reference backprop"}
    if isinstance(net, Network):
        with progress.step("lambdify", guess.get("lambdify")):
            fn = numeric.lambdify(net, grads.with_layout("denominator"))
        with progress.step("the numeric check", guess.get("check")):
            check = numeric.check_network(net, grads.with_layout("denominator"), args.seed, fn=fn,
                                          finite_differences=net.n_params <= FD_LIMIT)
        out["fd"], out["fd_excluded"], out["jax"] = check.finite_differences, check.kink_crossings, check.jax
        if check.torch is not None:
            out.update(reference=check.torch, engine="torch autograd (float64)",
                       engine_text="torch autograd (float64)")
        elif check.finite_differences is not None:
            out.update(reference=check.finite_differences, fd=None, engine="central differences",
                       engine_text=f"central differences of the NumPy forward ({check.torch_skipped})")
        elif check.jax is not None:
            out.update(reference=check.jax, jax=None, engine=JAX_ENGINE,
                       engine_text=f"{JAX_ENGINE} ({check.torch_skipped})")
        else:
            out.update(available=False, engine=None, why=f"{check.torch_skipped}, and central differences are "
                                                         f"skipped above {FD_LIMIT} parameters")
        return out
    values = numeric.random_values(net, args.seed)
    with progress.step("lambdify", guess.get("lambdify")):
        fn = numeric.lambdify(net, grads)
    with progress.step("the numeric check", guess.get("check")):
        got = fn(**values)
        if args.layout == "numerator":
            got = {n: v.T for n, v in got.items()}
        out["reference"] = numeric.max_abs_error(got, numeric.reference_gradients(net, values))
        if net.n_params <= FD_LIMIT:
            out["fd"], out["fd_excluded"] = numeric.finite_differences(net, values).max_abs_error(got)
    return out


FD_LIMIT = 2000
AGREE = 1e-8  # an engine agreeing with the derivation at float64 differs by less (the documents' bound too)
JAX_ENGINE = "jax autodiff (float64, parameters only)"  # jax.grad of the loss: it differentiates arguments

# --------------------------------------------------------------------------- graph


def _add_graph(sub):
    p = sub.add_parser("graph", help="the computation graph of a scalar expression, with every gradient",
                       description=textwrap.fill(
                           "Build the computation graph of a scalar expression (SymPy syntax: + - * / **, exp, log, "
                           "sqrt, abs, sigmoid, tanh, relu, softplus, sin, cos, max/Max, min/Min; parsed, never "
                           "evaluated), one node per operation, and backpropagate through it micrograd-style. Each "
                           "gate is named for what it does to the gradient (add: distributor, mul: switcher, "
                           "max/min/relu: router, neg: sign flipper, other unary gates: scaler); a value used twice "
                           "accumulates (+=). Every input gradient is checked against sympy.diff of the whole "
                           "expression. Values are exact for exact inputs (2, -3, 1/2, 0.1), within 10^-3000..10^3000 "
                           "(past that: floats, and the output says so). relu'(0) = 0; a tie in max/min splits "
                           "the gradient equally between the tied inputs, or a tied constant takes it all "
                           "(max(0, u) is relu). An expression may start with '-' (symbp graph -a*b --at ...).", 100)
                       + "\n\nexit codes: 0 all gradients agree with sympy.diff, 1 one does not, 2 bad input",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("expression", help="e.g. '(a*b + c)*f', or a program: 'e = a*b; d = e + c; L = f*d'")
    p.add_argument("--at", required=True, help="the point, e.g. a=2,b=-3,c=5,f=-2")
    p.add_argument("--structure", default="source", choices=["source", "sympy"],
                   help="source: gates as written, binary, in source order (default); sympy: SymPy's canonical "
                   "tree (n-ary add and mul, a - b as a + (-1)*b, x/y as x*y**-1)")
    p.add_argument("--primitives", "--expand-sigmoid", dest="primitives", action="store_true",
                   help="draw sigmoid, tanh, softplus and relu as their primitives (exp, +, 1/x, max)")
    p.add_argument("--title", default=None, help="title of the document")
    p.add_argument("-o", dest="out", metavar="FILE.tex", default=None, help="write the LaTeX document to FILE.tex")
    p.add_argument("--pdf", action="store_true", help="also compile FILE.pdf next to FILE.tex")
    _add_blank(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_graph)


def _check_document_options(args, out) -> None:
    """``--pdf``, ``--title`` and ``--template-dir`` belong to a document: refuse them without
    ``-o FILE.tex``, before any work (one rule and one message for every command). With ``-o``, check
    before any work that the title can be typeset and that every file can be written."""
    if out is None:
        for flag, attr in (("--pdf", "pdf"), ("--title", "title"), ("--template-dir", "template_dir"),
                           ("--blank", "blank")):
            if getattr(args, attr, None):
                raise SymbpError(f"{flag} is an option of the document: add -o FILE.tex")
        return
    from .latex import check_output, check_text

    if args.title is not None:
        check_text(args.title, "--title")
    check_output(out, also=((".pdf", ".png") if args.command == "flow" else (".pdf",)) if args.pdf else ())


def _write_document(args, tex):
    """Write ``-o FILE.tex`` (and ``FILE.pdf`` with ``--pdf``); nothing is written if LaTeX fails."""
    from .latex import write_document

    if not args.out:
        return None
    return str(write_document(tex, args.out, pdf=args.pdf)["tex"])


def _add_blank(p):
    p.add_argument("--blank", action="store_true", help="with -o: FILE.tex is a problem sheet (the given numbers, "
                   "a box for every cell to fill in); the solution is FILE-solution.tex")


def _write_sheet(args, make):
    """``-o FILE.tex`` from ``make(blank)``; with ``--blank`` the sheet, and ``make(False)`` as
    ``FILE-solution.tex`` (and their PDFs with ``--pdf``)."""
    if not args.out:
        return None
    if not args.blank:
        return _write_document(args, make(False))
    from pathlib import Path

    from .latex import check_output

    solution = Path(args.out).with_name(Path(args.out).stem + "-solution.tex")
    check_output(solution, also=(".pdf",) if args.pdf else ())
    sheet = _write_document(args, make(True))
    _write_document(argparse.Namespace(out=str(solution), pdf=args.pdf), make(False))
    return sheet


_GRAPH_VALUED = ("--at", "--structure", "--title", "-o")


def _graph_expression(argv: list) -> list:
    """``symbp graph -a*b --at ...``: argparse takes an expression starting with ``-`` for an option. The
    first argument of ``graph`` that starts with ``-`` and is no option nor an option's value is the
    expression: a space in front makes argparse see a positional (``_run_graph`` strips it). ``-o`` and
    ``-oFILE`` stay the option; ``-o*x`` is an expression."""
    if not argv or argv[0] != "graph":
        return argv
    argv = list(argv)
    k = 1
    while k < len(argv):
        token = argv[k]
        if token == "--" or not token.startswith("-") or token == "-":
            break  # the expression is already a positional
        if token in _GRAPH_VALUED:
            k += 2
            continue
        if token.startswith("--") or token == "-h" or (token.startswith("-o") and not any(c in token for c in "*+/()")):
            k += 1
            continue
        argv[k] = " " + token
        break
    return argv


def _run_graph(args):
    from .graph import document, graph, parse_point

    _check_document_options(args, args.out)
    g = graph(args.expression.strip(), at=parse_point(args.at), structure=args.structure,
              granularity="primitives" if args.primitives else "gates")
    checks = g.check()
    written = _write_sheet(args, lambda blank: document(g, title=args.title, checks=checks, blank=blank))
    payload = g.to_json()
    payload["checks"] = {n: {"graph": str(a), "sympy_diff": str(b), "agree": ok} for n, (a, b, ok) in checks.items()}
    payload["output"] = written
    bad = [n for n, (_, _, ok) in checks.items() if not ok]
    text = g.report() + "\n\n" + (f"checked against sympy.diff of the whole expression: all {len(checks)} agree"
                                   if not bad else f"DIFFERS from sympy.diff for {', '.join(bad)}")
    if written:
        text += f"\nwrote {written}" + (" and its PDF" if args.pdf else "")
    _emit(args, payload, text)
    return 1 if bad else 0


# --------------------------------------------------------------------------- example


def _add_example(sub):
    p = sub.add_parser("example", help="every cell of a small network by hand; check hand-computed cells",
                       description=textwrap.fill(
                           "Compute every cell of the forward and backward pass (z, a, the loss, dz, da, dW, db) of "
                           "the network in a spec file at its [values], exactly, and judge the hand-computed "
                           "[claimed_values]: each claimed cell is right (equal, or within the tolerance) or wrong, "
                           "with its reason (a forgotten ReLU mask, a transposed product, a wrong sign, a missing "
                           "1/N, ...).", 100)
                       + "\n\nexit codes: 0 every claimed cell is right, 1 one is wrong, 2 bad input\n\n" + CONVENTIONS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="a TOML spec file with [model], [values] and optional [claimed_values]")
    p.add_argument("--tolerance", default=None,
                   help="how far a claimed cell may be from the true value and still be right (default 0.005, "
                   "or [example] tolerance in the spec)")
    p.add_argument("--title", default=None, help="title of the document")
    p.add_argument("-o", dest="out", metavar="FILE.tex", default=None, help="write the LaTeX document to FILE.tex")
    p.add_argument("--pdf", action="store_true", help="also compile FILE.pdf next to FILE.tex")
    _add_blank(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_progress(p)
    p.set_defaults(run=_run_example)


def _run_example(args):
    from .example import document, from_spec

    _check_document_options(args, args.out)
    progress = _progress(args)
    with progress.step("every cell by hand"):
        ex = from_spec(args.spec, tolerance=args.tolerance)
    written = None
    if args.out:
        with progress.step(f"writing {args.out}"):
            written = _write_sheet(args, lambda blank: document(ex, title=args.title, blank=blank))
    payload = ex.to_json()
    payload["output"] = written
    text = ex.report() + (f"\nwrote {written}" + (" and its PDF" if args.pdf else "") if written else "")
    _emit(args, payload, text)
    return 0 if ex.ok else 1


# --------------------------------------------------------------------------- verify


def _add_verify(sub):
    p = sub.add_parser("verify", help="judge the gradient claims (and backward code) of a spec file",
                       description="Judge each claim of a spec file's [claims] table (dL/d<name> in denominator "
                       "layout, in the formula language) and the optional [code] function (run in a child process "
                       "under the spec's [limits]: seconds, default 60; memory_mb, default 4096) against the derived "
                       "gradients: holds (symbolic proof, exact random rational points, or float agreement) or "
                       "fails, with the nearest usual mistake (transposed, scaled, sign, "
                       "missing-activation-derivative, extra-activation-derivative, shape, other), checked.\n\nexit codes: 0 every claim holds, "
                       "1 a claim fails, 2 bad input\n\n" + CONVENTIONS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="the spec file (TOML): [model], [claims], optional [code]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check points")
    p.add_argument("--rtol", help="code claims: relative tolerance, times the largest entry of the true gradient "
                   "(default: by the returned dtype, 1e-7 for float64, from float32's epsilon and the sizes for float32)")
    p.add_argument("--atol", help="code claims: absolute tolerance added to it (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_progress(p)
    p.set_defaults(run=_run_verify)


def _tolerance_flag(text, flag):
    """A finite number >= 0 from the command line, or a one-line error naming the flag."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SymbpError(f"{flag}: expected a finite number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SymbpError(f"{flag}: expected a finite number >= 0, got {text}")
    return value


def _run_verify(args):
    from .derive import derive
    from .spec import load
    from .verify import Report, verify

    rtol, atol = _tolerance_flag(args.rtol, "--rtol"), _tolerance_flag(args.atol, "--atol")
    progress = _progress(args)
    with progress.step("reading the spec and building the network"):
        spec = load(args.spec, steps=("build", "derive", "verify"))
    claims = dict(spec.claims)
    code = spec.code_claim() if spec.code else None  # run in a child process under [limits]
    if not claims and code is None:
        raise SymbpError(f"{args.spec}: nothing to verify (no [claims] and no [code])")
    grads = None  # formula claims proved for all sizes need no concrete derivation: verify derives on demand
    if code is not None:  # code is judged against the derived gradients: derive once, for both parts
        with progress.step("derive"):
            grads = derive(spec.net, method="chain")
    results, assumptions = [], []
    parts = []
    if claims:
        parts.append((claims, f"verify: {len(claims)} claim{'s' if len(claims) != 1 else ''}"))
    if code is not None:
        parts.append((code, f"verify: the code {spec.code.get('function', 'backward')}"))
    for part, what in parts:
        with progress.step(what):
            report = verify(spec.net, part, grads=grads, seed=args.seed, rtol=rtol, atol=atol)
        results += report.results
        assumptions += [a for a in report.assumptions if a not in assumptions]
    report = Report(results, assumptions, spec.net.describe())
    _emit(args, report.to_json(), report.text())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- flow


def _add_flow(sub):
    p = sub.add_parser("flow", help="gradient norms layer by layer in a deep network, plain and residual",
                       description="Measure ||dL/dW_l||_F and ||dL/da_l||_F for every layer of the network "
                       "[W] * (D + 1) + [C] (D hidden layers, softmax + cross-entropy) with weights from "
                       "N(0, S^2 / fan_in), zero biases, a random input and a one-hot target. The numbers come from "
                       "the derived, lambdified gradients (checked against a NumPy backprop). With --residual the "
                       "plain network is measured too, at the same weights.\n\n" + CONVENTIONS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, required=True, help="D, the number of hidden layers")
    p.add_argument("--width", type=int, required=True, help="W, the width of the input and every hidden layer")
    p.add_argument("--hidden", default="tanh", help="hidden activation (default tanh)")
    p.add_argument("--init-scale", type=float, required=True, help="S: weights ~ N(0, S^2 / fan_in)")
    p.add_argument("--classes", type=int, default=10, help="C, the number of classes (default 10)")
    p.add_argument("--residual", action="store_true",
                   help="skip connections a_l = a_(l-1) + f(z_l) in every hidden layer (and the plain run beside it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, input and target (default 0)")
    p.add_argument("-o", "--output-file", dest="output_file", metavar="FILE.tex",
                   help="write the LaTeX document (plot and reading)")
    p.add_argument("--pdf", action="store_true", help="also compile FILE.pdf and render its plot page as FILE.png")
    p.add_argument("--title", default=None, help="the document's title")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_progress(p)
    p.set_defaults(run=_run_flow)


def _run_flow(args):
    from . import cost
    from .flow import MAX_PARAMS, flow, write_flow

    _check_document_options(args, args.output_file)
    if 1 <= args.depth * (args.width + 1) * args.width <= MAX_PARAMS and args.classes >= 2:  # else flow refuses
        cost.refuse_if_too_big([args.width] * (args.depth + 1) + [args.classes], hidden=args.hidden,
                               steps=("build", "derive", "lambdify", "check"), runs=2 if args.residual else 1,
                               way_out="choose a smaller --depth or --width",
                               what=f"the flow network of depth {args.depth} and width {args.width}"
                               + (" (plain and residual)" if args.residual else ""))
    progress = _progress(args)
    with progress.step("building, deriving and measuring the network" + ("s" if args.residual else "")):
        result = flow(depth=args.depth, width=args.width, hidden=args.hidden, init_scale=args.init_scale,
                      classes=args.classes, residual=args.residual, seed=args.seed)
    written = {"tex": None, "pdf": None, "png": None}
    if args.output_file:
        with progress.step(f"writing {args.output_file}"):
            written = write_flow(result, args.output_file, pdf=args.pdf, title=args.title)
    payload = dict(result.to_json(), output=written["tex"], pdf=written["pdf"], png=written["png"])
    text = result.text()
    for kind in ("tex", "pdf", "png"):
        if written[kind]:
            text += f"\nwrote {written[kind]}"
    _emit(args, payload, text)
    return 0 if result.ok else 1


# --------------------------------------------------------------------------- gallery


def _add_gallery(sub):
    p = sub.add_parser("gallery", help="regenerate the curated derivation documents (derivations/)",
                       description="Write the gallery of derivation documents (.tex and .pdf): the seeds' "
                       "3-layer ReLU/softmax network, its batch version, sigmoid + binary cross-entropy, a deep "
                       "tanh network and a residual network; and the gradient-flow document of a 20-layer tanh "
                       "network, plain and residual (.tex, .pdf, .png).")
    p.add_argument("--out", default="derivations", metavar="DIR", help="folder to write to (default derivations/)")
    p.add_argument("--no-pdf", action="store_true", help="write the .tex files only")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_gallery)


def _run_gallery(args):
    from . import document

    written = document.gallery(args.out, pdf=not args.no_pdf)
    _emit(args, {"written": [str(p) for p in written]}, "\n".join(f"wrote {p}" for p in written))
    return 0


# --------------------------------------------------------------------------- grade


def _add_grade(sub):
    p = sub.add_parser("grade", help="grade a class's answers (formulas and backward code) against a rubric",
                       description="Grade every submission in a folder (per student a folder with answers.toml "
                       "[claims] and/or backward.py, or a <student>.toml) against an assignment spec ([model], "
                       "[rubric] points per target, optional [limits] for the code). Per target: verdict, diagnosis "
                       "in words, points (1 holds; 1/2 transposed, sign, scaled; 1/4 a missing or extra activation "
                       "derivative or a layer's named mistake; 0 otherwise). Writes grades.csv, <student>.json, "
                       "<student>/results.json (Gradescope) and report.pdf. Equal formulas are judged once.\n\n"
                       "exit codes: 0 every submission graded, 2 a bad assignment\n\n" + CONVENTIONS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment", help="the assignment spec (TOML): [model], [rubric], optional [limits]")
    p.add_argument("submissions", help="the folder of submissions")
    p.add_argument("-o", "--output", default="results", help="the results folder (default: results)")
    p.add_argument("--workers", type=int, help="local worker processes (default: the number of cores; 1: serial)")
    from .grade import WORKER_WAIT  # standard library only: cheap at start-up

    p.add_argument("--scheduler", help="a Dask scheduler's address (tcp://host:port) instead of local workers; "
                   f"refused when no worker joins within {WORKER_WAIT:g} s")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_grade)


def _run_grade(args):
    from .grade import grade, load_assignment, summary, write

    assignment = load_assignment(args.assignment)
    grading = grade(assignment, args.submissions, workers=args.workers, scheduler=args.scheduler)
    write(grading, args.output)
    payload = grading.to_json()
    payload["output"] = str(args.output)
    _emit(args, payload, summary(grading) + f"\nwrote {args.output}/grades.csv, report.pdf and one JSON per student")
    return 0


# --------------------------------------------------------------------------- main

COMMANDS = [_add_derive, _add_verify, _add_flow, _add_graph, _add_example, _add_gallery, _add_grade]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="symbp", description="Symbolic derivation and verification of backpropagation.\n\n"
                     + CONVENTIONS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"symbp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    import numpy as np

    args = build_parser().parse_args(_graph_expression(sys.argv[1:] if argv is None else argv))
    previous = _on_sigterm_exit()
    try:
        # NumPy's float warnings (overflow, 0/0) would quote generated code at the user; every check
        # reports nan and infinity itself (undecidable, never a pass).
        with np.errstate(all="ignore"):
            return args.run(args)
    except SymbpError as exc:
        print(f"symbp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (symbp ... | head -1): Python's documented recipe, so that the
        # interpreter's final flush does not fail again; 141 is 128 + SIGPIPE, as a shell reports it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm_exit():
    """Turn SIGTERM into ``SystemExit(143)`` (128 + SIGTERM) so that every ``finally`` and context
    manager runs: temporary folders of a PDF compile and half-written temporary files are removed, and
    a running pdflatex is killed by ``subprocess.run``. Returns the previous handler (None off the main
    thread, where Python cannot install one)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
