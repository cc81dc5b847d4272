"""Matrix-level NumPy code for a verified backward pass: ``symbp.compile``.

How it works: the claims are first judged by :func:`symbp.verify` against the per-element
derivation; nothing is compiled unless every one holds. Each claim is then parsed by the formula
parser (:mod:`symbp.formula`) into a typed tree, and the tree is walked to write one line of NumPy:
``dW3 = dz3.T @ a2``. The user's text is never pasted into the code: every token of the generated
module comes from a node of the tree (an operator, a name the network knows, a number the parser
read), so the module is as safe as the tree. The claims are ordered so that each one's upstream
gradients (``dz3`` in ``dz3.T @ a2``) are computed before it; a claim may only use upstream gradients
that another claim defines.

The generated module is standalone (it imports NumPy only) and readable: a header naming the network
and the verified claims, a few helper functions (numerically stable ``softmax`` and ``sigmoid``; the
step function with ``step(0) = 0``), ``forward`` (matrix products, one line per stage), ``loss`` (in
stable form: log-sum-exp for softmax with cross-entropy) and ``backward`` (one line per claim). Batch
networks are compiled for any number of rows: ``N`` is read from ``x.shape[0]``, never written in.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import linecache
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import sympy as sp

from . import functions as F
from .errors import SymbpError, closest
from .formula import parse, sugar_operand
from .layers import Network
from .network import MLP
from .verify import verify

# Python's operator precedence, as far as the generated code needs it (higher binds tighter).
_ADD, _MUL, _UNARY, _POW, _ATOM = 1, 2, 3, 4, 5
_BINARY = {"add": ("+", _ADD), "sub": ("-", _ADD), "mul": ("*", _MUL), "div": ("/", _MUL),
           "matmul": ("@", _MUL)}

#: Helper functions the generated module defines when it uses them (stable forms, one each).
_HELPERS = {
    "relu": '''def relu(z):
    return np.maximum(z, 0.0)
''',
    "step": '''def step(z):
    """The derivative of relu, with step(0) = 0 (as PyTorch): Heaviside(z, 0)."""
    return (z > 0).astype(z.dtype)
''',
    "leaky_relu": '''def leaky_relu(z):
    """Slope 0.01 below zero (PyTorch's default)."""
    return np.where(z > 0, z, 0.01 * z)
''',
    "sigmoid": '''def sigmoid(z):
    """The logistic function; exp only ever sees -|z|, so it cannot overflow."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
''',
    "erf": '''def erf(z):
    """The error function, entry-wise: math.erf vectorised (SciPy is not a dependency)."""
    return np.vectorize(math.erf, otypes=[float])(z)
''',
    "softplus": '''def softplus(z):
    """log(1 + exp(z)), computed without overflow."""
    return np.logaddexp(0.0, z)
''',
    "softmax": '''def softmax(z, axis):
    """Softmax along an axis (1: each row is an example; 0: each column), shifted by the maximum."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
''',
    "logsumexp": '''def logsumexp(z, axis):
    """log(sum(exp(z))) along an axis, shifted by the maximum so it cannot overflow."""
    m = z.max(axis=axis, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))
''',
}


# --------------------------------------------------------------------------- backends
#
# The module is written once, in NumPy (every op's ``code`` column and every claim tree print NumPy);
# a framework backend is a translation of that text by the table below: each NumPy name the writer
# can emit maps to the framework's spelling (a name, or a helper the module defines), and any other
# NumPy name is refused (never silently passed through). The helpers are each backend's stable forms.

_TORCH_HELPERS = {
    "relu": '''def relu(z):
    return torch.relu(z)
''',
    "step": '''def step(z):
    """The derivative of relu, with step(0) = 0 (as PyTorch): Heaviside(z, 0)."""
    return (z > 0).to(z.dtype)
''',
    "leaky_relu": '''def leaky_relu(z):
    """Slope 0.01 below zero (PyTorch's default)."""
    return torch.where(z > 0, z, 0.01 * z)
''',
    "sigmoid": '''def sigmoid(z):
    return torch.sigmoid(z)
''',
    "erf": '''def erf(z):
    return torch.erf(z)
''',
    "softplus": '''def softplus(z):
    """log(1 + exp(z)), without overflow (and with no threshold, unlike torch.nn.functional.softplus)."""
    return torch.logaddexp(torch.zeros_like(z), z)
''',
    "softmax": '''def softmax(z, axis):
    """Softmax along an axis (1: each row is an example; 0: each column)."""
    return torch.softmax(z, dim=axis)
''',
    "logsumexp": '''def logsumexp(z, axis):
    """log(sum(exp(z))) along an axis, kept as a row or a column."""
    return torch.logsumexp(z, dim=axis, keepdim=True)
''',
    "reduce_sum": '''def reduce_sum(z, axis=None, keepdims=False):
    """NumPy's sum: over one axis, or over every entry when axis is None."""
    return torch.sum(z, dim=tuple(range(z.dim())) if axis is None else axis, keepdim=keepdims)
''',
    "reduce_mean": '''def reduce_mean(z, axis=None, keepdims=False):
    """NumPy's mean: over one axis, or over every entry when axis is None."""
    return torch.mean(z, dim=tuple(range(z.dim())) if axis is None else axis, keepdim=keepdims)
''',
    "reduce_var": '''def reduce_var(z, axis=None, keepdims=False):
    """NumPy's var: biased (divided by the count), over one axis or over every entry."""
    return torch.var(z, dim=tuple(range(z.dim())) if axis is None else axis, keepdim=keepdims, correction=0)
''',
    "sqrt": '''def sqrt(z):
    """The square root of a tensor, or of a number (a width, as in sqrt(dk))."""
    return torch.sqrt(z) if isinstance(z, torch.Tensor) else math.sqrt(z)
''',
    "tri": '''def tri(n, dtype=bool):
    """The lower triangle, diagonal included, of an n x n matrix (NumPy's tri)."""
    return torch.ones((n, n), dtype=torch.bool).tril()
''',
    "outer": '''def outer(u, v):
    """NumPy's outer: of the entries of u and of v, flattened."""
    return torch.outer(u.ravel(), v.ravel())
''',
}

#: JAX's helpers: the NumPy ones with ``jnp`` for ``np`` (one text for both), except where JAX has its
#: own form: ``erf`` (NumPy's vectorises math.erf, which a traced array cannot enter) and the three
#: that jax.nn provides (stable, and differentiated by JAX's own rules rather than through a shift).
_JAX_OWN = {
    "sigmoid": '''def sigmoid(z):
    return jax.nn.sigmoid(z)
''',
    "erf": '''def erf(z):
    return jax.scipy.special.erf(z)
''',
    "softmax": '''def softmax(z, axis):
    """Softmax along an axis (1: each row is an example; 0: each column)."""
    return jax.nn.softmax(z, axis=axis)
''',
    "logsumexp": '''def logsumexp(z, axis):
    """log(sum(exp(z))) along an axis, kept as a row or a column."""
    return jax.nn.logsumexp(z, axis=axis, keepdims=True)
''',
}
_JAX_HELPERS = {name: _JAX_OWN.get(name) or re.sub(r"\bnp\.", "jnp.", text) for name, text in _HELPERS.items()}


@dataclass(frozen=True)
class _Backend:
    """One framework: how its module starts, its helpers, and each NumPy name the writer emits in the
    framework's spelling (a helper's name where the framework's own call differs from NumPy's)."""

    name: str
    imports: str
    helpers: Mapping[str, str]
    names: Mapping[str, str]
    arrays: str  # what the module takes and returns, for its docstring
    module: str = ""  # the package that must be installed ("" for NumPy)
    framework: str = ""


_SAME = ("exp", "log", "tanh", "cosh", "abs", "where", "maximum", "minimum", "diag", "power", "expm1", "log1p")

#: The backends of :func:`compile`: NumPy (the writer's own text) and its translations.
BACKENDS = {
    "numpy": _Backend("numpy", "import numpy as np\n", _HELPERS, {}, "NumPy arrays of float64"),
    "torch": _Backend(
        "torch", "import math\n\nimport torch\n", _TORCH_HELPERS,
        dict({n: f"torch.{n}" for n in _SAME}, sum="reduce_sum", mean="reduce_mean", var="reduce_var",
             sqrt="sqrt", tri="tri", outer="outer", pi="math.pi", inf="math.inf", ones="torch.ones"),
        "torch tensors (or NumPy arrays) of float64 or float32", "torch", "PyTorch"),
    "jax": _Backend(
        "jax", "import jax\nimport jax.numpy as jnp\nimport jax.scipy.special\n\n"
               'jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64, float32 ones float32\n',
        _JAX_HELPERS,
        {n: f"jnp.{n}" for n in _SAME + ("sum", "mean", "var", "sqrt", "tri", "outer", "pi", "inf", "ones")},
        "JAX arrays (or NumPy arrays) of float64 or float32", "jax", "JAX"),
}


def _backend(name) -> _Backend:
    """The backend called ``name``; a missing framework is one line naming the extra to install."""
    if name not in BACKENDS:
        raise SymbpError(f"compile: unknown backend {name!r}{closest(str(name), BACKENDS)}; "
                         f"backends: {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if backend.module and importlib.util.find_spec(backend.module) is None:
        raise SymbpError(f"compile: backend {name!r} needs {backend.framework}, which is not installed: "
                         f"pip install 'symbp[{name}]'")
    return backend


def _lower(text: str, backend: _Backend, helpers: set) -> str:
    """The writer's NumPy code in ``backend``'s spelling, adding the helpers it now calls to ``helpers``."""
    if backend.name == "numpy":
        return text
    # a constant of ones takes the input's dtype (float32 in, float32 out)
    text = re.sub(r"np\.ones\(\(([^()]*)\)\)", r"np.ones((\1), dtype=x.dtype)", text)
    if backend.name == "torch":
        text = text.replace(".astype(", ".to(")

    def spell(match):
        numpy_name = match.group(1)
        if numpy_name not in backend.names:
            raise SymbpError(f"compile: backend {backend.name!r} has no lowering of np.{numpy_name}")
        spelt = backend.names[numpy_name]
        if spelt in backend.helpers:
            helpers.add(spelt)
        return spelt

    text = re.sub(r"(?<![\w.])np\.(\w+)", spell, text)
    return re.sub(r"return float\((.*)\)$", r"return \1", text, flags=re.M)  # the framework's scalar


def loss_function(net, backend: str = "jax"):
    """The network's loss ``loss(x, y, [masks,] params...)`` written in ``backend`` from the op table's
    ``code`` columns (and the loss rows), with no claim in it: what a framework's autodiff
    differentiates in the numeric checks, independently of the derivation and of any backward.

    >>> import numpy as np, symbp
    >>> net = symbp.MLP([3, 2], output="identity", loss="mse")
    >>> loss = loss_function(net.network, "numpy")
    >>> float(loss(x=np.array([[1.0], [0.0], [2.0]]), y=np.array([[0.0], [1.0]]),
    ...            W1=np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), b1=np.zeros((2, 1))))
    1.0
    """
    framework = _backend(backend)
    writer = _NetworkWriter(net) if isinstance(net, Network) else _Writer(net)
    forward, loss = writer.forward(), writer.loss()
    helpers = set(writer.helpers)
    body = [_lower(code, framework, helpers) for _, code in writer.custom.values()]
    body += [_lower(part, framework, helpers) for part in (forward, loss)]
    imports = "import math\n\nimport numpy as np\n" if framework.name == "numpy" else framework.imports
    parts = [f'"""The loss of {_comment_safe(net.describe())} (symbp.codegen.loss_function)."""\n\n' + imports]
    parts += [framework.helpers[name] for name in framework.helpers if name in helpers] + body
    source = "\n\n\n".join(p.rstrip("\n") for p in parts) + "\n"
    return _load(source, net)["loss"]


def _tensors(net, values, backend):
    """``values`` as the framework's tensors, shaped as the network expects (checked as NumPy arrays
    are): a floating tensor or array keeps its dtype (float32 stays float32), anything else is float64."""
    names = net.inputs + net.params
    for name in values:
        if name not in names:
            raise SymbpError(f"unknown argument '{name}'{closest(name, names)}; expected {', '.join(names)}")
    if backend == "torch":
        import torch

        def convert(value):
            t = torch.as_tensor(value)
            return t if t.is_floating_point() else t.to(torch.float64)
    else:
        import jax.numpy as jnp

        def convert(value):
            a = jnp.asarray(value)
            return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.float64)
    out = {}
    for name in names:
        if name not in values:
            raise SymbpError(f"missing value for '{name}' (expected shape {_shape_text(net, name)})")
        array = convert(values[name])
        expected = net.shape(name)
        if array.ndim == 1 and expected[1] == 1 and not (net.batch and name in net.inputs):
            array = array.reshape(-1, 1)
        shape = tuple(array.shape)
        fits = len(shape) == 2 and shape[1] == expected[1] if net.batch and name in net.inputs else shape == expected
        if not fits:
            raise SymbpError(f"{name}: expected shape {_shape_text(net, name)}, got {shape}")
        out[name] = array
    if net.batch and out["x"].shape[0] != out["y"].shape[0]:
        raise SymbpError(f"x has {out['x'].shape[0]} rows but y has {out['y'].shape[0]}: one target row per example")
    return out


class CompiledGradients:
    """The compiled backward pass: ``fast(x=..., y=..., W1=..., ...) -> {name: ndarray}``.

    Returns dL/dV for every claimed ``V``, in denominator layout (shaped like ``V``). ``source`` is the
    standalone module (functions ``forward``, ``loss``, ``backward``); ``names`` the targets in the
    order they are computed; ``claims`` each target's claim as compiled; ``report`` the verification.
    """

    def __init__(self, net, names, claims, source, report, namespace, backend="numpy"):
        self.net, self.names, self.claims, self.source, self.report = net, names, claims, source, report
        self.backend = backend  # "numpy", "torch" or "jax": what the module is written in
        self._namespace = namespace
        self.forward, self.backward, self.loss = (namespace[f] for f in ("forward", "backward", "loss"))

    def __call__(self, **values):
        if self.backend == "numpy":
            return self.backward(**_arrays(self.net, values))
        return self.backward(**_tensors(self.net, values, self.backend))

    def __repr__(self):
        return f"CompiledGradients({self.net!r}, names={self.names})"


def compile(net: MLP, claims: Mapping, *, report=None, backend: str = "numpy") -> CompiledGradients:  # noqa: A001
    """Matrix-level NumPy code for the backward pass described by ``claims``, once they are verified.

    ``claims`` maps targets (``"W3"``, ``"z2"``) to formulas for dL/d<target> (denominator layout,
    the formula language of :mod:`symbp.formula`); :func:`symbp.textbook` gives the standard set.
    They are judged by :func:`symbp.verify` first (pass ``report=`` a report of ``verify(net,
    claims)`` to reuse it); a claim that does not hold is refused with a :class:`SymbpError` naming
    it. The result computes, from raw arrays, the gradient of every claimed target; for a batch
    network, for any number of rows.

    >>> import numpy as np, symbp
    >>> net = symbp.MLP([3, 2], output="identity", loss="mse", batch=4)
    >>> fast = symbp.compile(net, {"z1": "2 * (a1 - y) / (2 * N)", "W1": "dz1.T @ x"})
    >>> g = fast(x=np.ones((5, 3)), y=np.zeros((5, 2)), W1=np.eye(2, 3), b1=np.zeros((2, 1)))
    >>> g["W1"].shape, float(g["W1"][0, 0])     # 5 rows: N is read from x, not fixed at 4
    ((2, 3), 1.0)
    >>> print(fast.source.split("def backward")[1].split("return")[0].strip())
    (x, y, W1, b1):
        \"\"\"dL/dV for every claimed V (denominator layout: shaped like V).\"\"\"
        N = x.shape[0]
        v = forward(x, W1, b1)
        a1 = v["a1"]
        dz1 = 2 * (a1 - y) / (2 * N)
        dW1 = dz1.T @ x
    """
    if not isinstance(net, (MLP, Network)):
        raise SymbpError(f"compile: expected a symbp.MLP or a network of layers, got {type(net).__name__}")
    framework = _backend(backend)
    if not isinstance(claims, Mapping) or not claims:
        raise SymbpError("compile: claims must be a non-empty mapping of target -> formula, "
                         "e.g. symbp.textbook(net)")
    targets = net.params + net.intermediates
    for target, claim in claims.items():
        if target not in targets:
            raise SymbpError(f"compile: no variable '{target}'{closest(str(target), targets)}; "
                             f"targets: {', '.join(targets)}")
        if not isinstance(claim, str):
            raise SymbpError(f"compile: the claim for {target} is not a formula string "
                             f"({type(claim).__name__}); only formulas can be compiled")
    trees = {target: parse(claim, net, what=f"claim for {target}") for target, claim in claims.items()}
    order = _order(net, trees)
    report = _verified(net, claims, report)
    source = _generate(net, {t: trees[t] for t in order}, assumptions=getattr(report, "assumptions", ()),
                       backend=framework.name)
    return CompiledGradients(net, order, {t: claims[t] for t in order}, source, report, _load(source, net),
                             backend=framework.name)


def _verified(net, claims, report):
    """The report of ``verify(net, claims)``, computed unless given; refuse claims that do not hold."""
    if report is None:
        report = verify(net, dict(claims), sizes="given")  # code for this network: judged at its sizes
    judged = {r.target: r for r in report.results}
    for target, claim in claims.items():
        if target not in judged or judged[target].claim != claim:
            raise SymbpError(f"compile: the report given does not judge the claim for {target} ({claim!r}); "
                             "pass report=symbp.verify(net, claims) for these claims")
    for target in claims:
        result = judged[target]
        if result.verdict != "holds":
            diagnosis = f" ({result.diagnosis})" if result.diagnosis else ""
            raise SymbpError(f"compile: the claim for {target}, {result.claim!r}, does not hold{diagnosis}: "
                             f"{result.detail}; nothing was compiled")
    return report


def _order(net, trees):
    """The targets in an order where each claim's upstream gradients come first; refuse a claim that
    uses an upstream gradient nobody defines, and circular claims."""
    needs = {}
    for target, tree in trees.items():
        upstream = set()
        for name in sorted(tree.names()):
            if name.startswith("d") and name[1:] in net.params + net.intermediates:
                if name[1:] not in trees:
                    raise SymbpError(f"compile: the claim for {target} uses {name}, the gradient of {name[1:]}, "
                                     f"but no claim defines it; add a claim for {name[1:]}")
                upstream.add(name[1:])
        needs[target] = upstream
    if isinstance(net, Network):  # each layer from the last: its output, its stages backwards, its parameters
        natural = [n for layer in reversed(net.layers)
                   for n in (layer.name, *reversed(layer.stages.values()), *layer.params.values()) if n in trees]
    else:
        natural = [n for l in range(net.L, 0, -1) for n in (f"a{l}", f"z{l}", f"W{l}", f"b{l}") if n in trees]
    order, done = [], set()
    while len(order) < len(natural):
        ready = [t for t in natural if t not in done and needs[t] <= done]
        if not ready:
            stuck = [t for t in natural if t not in done]
            uses = "; ".join(f"{t} uses " + ", ".join("d" + u for u in sorted(needs[t])) for t in stuck)
            raise SymbpError(f"compile: the claims for {', '.join(stuck)} cannot be ordered: their upstream "
                             f"gradients depend on each other in a circle ({uses})")
        order.append(ready[0])
        done.add(ready[0])
    return order


# --------------------------------------------------------------------------- generation


def _generate(net: MLP, trees: Mapping, *, assumptions=(), backend: str = "numpy") -> str:
    """The source of the standalone module for ``trees`` (target -> formula tree, in computing order),
    for ``backend`` (``"numpy"``, ``"torch"``, ``"jax"``: see :data:`BACKENDS`).

    This writes code only; :func:`compile` is the entry point, which verifies the claims first.
    """
    framework = _backend(backend)
    writer = _NetworkWriter(net) if isinstance(net, Network) else _Writer(net)
    backward = writer.backward(trees)
    forward = writer.forward()
    loss = writer.loss()
    helpers = set(writer.helpers)
    body = [_lower(code, framework, helpers) for _, code in writer.custom.values()]
    body += [_lower(part, framework, helpers) for part in (forward, loss, backward)]
    if framework.name == "numpy":
        imports = "import math\n\nimport numpy as np\n" if "erf" in writer.helpers else "import numpy as np\n"
    else:
        imports = framework.imports
    header = writer.header(trees, assumptions).replace("NumPy arrays of float64", framework.arrays)
    parts = [header + "\n" + imports]
    parts += [framework.helpers[name] for name in framework.helpers if name in helpers]
    parts += body
    return "\n\n\n".join(p.rstrip("\n") for p in parts) + "\n"


class _Writer:
    """Writes the three functions of the module for one network, noting the helpers they call."""

    def __init__(self, net):
        self.net = net
        self.helpers = set()
        self.custom = {}  # activation name -> (function name, source)

    # ------------------------------------------------------------------ pieces

    @property
    def args(self):
        return ", ".join(("x",) + self.net.params)

    def activation(self, layer, z):
        """Code applying hidden layer ``layer``'s activation to the expression ``z``."""
        row = self.net.hidden[layer - 1]
        symbol = sp.Symbol(z, real=True)
        expr = row.sympy(symbol)
        if not row.expression and (expr == symbol or expr.args == (symbol,)):  # z itself, or one call
            return _ExpressionPrinter(self).doprint(expr)
        return f"{self.custom_activation(row)}({z})"  # a function of its own in the module, with f(x)

    def custom_activation(self, row):
        """A function for a user-defined activation, printed from its SymPy form."""
        if row.name not in self.custom:
            function = f"f{len(self.custom) + 1}"
            body = _ExpressionPrinter(self).doprint(row.sympy(sp.Symbol("z", real=True)))
            shown = _comment_safe(sp.sstr(row.sympy(sp.Symbol("x"))))
            self.custom[row.name] = (function, f'def {function}(z):\n    """The activation f(x) = {shown}."""\n'
                                               f"    return {body}\n")
        return self.custom[row.name][0]

    def header(self, trees, notes):
        net = self.net
        lines = [*_wrap(f'"""Gradients of {_comment_safe(net.describe())}.', 100), "",
                 "Generated by symbp.compile from these claims, each verified against the per-element",
                 "derivation (dL/dV in denominator layout: shaped like V):", ""]
        lines += [f"    d{target} = {_Formula(formula=True).code(tree)}" for target, tree in trees.items()]
        if notes:
            lines += ["", "Assumed: " + "; ".join(_comment_safe(n) for n in notes) + "."]
        shapes = ", ".join(f"{n} {_shape_text(net, n)}" for n in net.inputs + net.params)
        lines += ["", "backward(x, y, W1, b1, ...) returns {name: dL/dname}; forward(x, W1, b1, ...) the",
                  "intermediates; loss(x, y, W1, b1, ...) the loss. NumPy arrays of float64, shaped:",
                  *_wrap(shapes, 96), '"""']
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ the functions

    def forward(self):
        net = self.net
        lines = [f"def forward({self.args}):",
                 f'    """Every intermediate z1, a1, ..., z{net.L}, a{net.L} ('
                 + ("rows are examples" if net.batch else "column vectors") + ')."""']
        previous = "x"
        for l in range(1, net.L + 1):
            lines.append(f"    z{l} = {self.affine(l, previous)}")
            if l < net.L:
                a = self.activation(l, f"z{l}")
                if l in net.residual_layers:
                    a = f"{previous} + {a}"
            else:
                a = self.output(f"z{l}")
            lines.append(f"    a{l} = {a}")
            previous = f"a{l}"
        lines.append("    return {")
        lines += _wrap(" ".join(f'"{n}": {n},' for n in net.intermediates), 92, indent=" " * 8)
        lines.append("    }")
        return "\n".join(lines) + "\n"

    def affine(self, l, previous):
        """Code for layer ``l``'s pre-activation from ``previous`` (its input's name)."""
        net = self.net
        if net.batch:
            return f"{previous} @ W{l}.T" + (f" + b{l}.T" if net.bias else "")
        return f"W{l} @ {previous}" + (f" + b{l}" if net.bias else "")

    def note(self, line):
        """Record the helper functions a line of code calls."""
        for name in _HELPERS:
            if re.search(rf"(?<![\w.]){name}\(", line):
                self.helpers.add(name)

    def output(self, z):
        code = self.net.output.code.format(z=z, axis=self._axis)  # the output row's column
        self.note(code)
        return code

    @property
    def _axis(self):
        return 1 if self.net.batch else 0

    def loss(self):
        """The loss, per example then reduced, in the stable form of the output/loss pair."""
        net, axis, L = self.net, self._axis, self.net.L
        lines = [f"def loss(x, y, {', '.join(net.params)}):",
                 f'    """The scalar loss: {net.loss_row.name} of output {net.output.name}'
                 + (f', {net.reduction} over the rows."""' if net.batch else '."""'),
                 f"    v = forward({self.args})",
                 f'    z{L}, a{L} = v["z{L}"], v["a{L}"]']
        if net.fused and net.fused.code:  # the output/loss pair's stable form in the logits
            per = net.fused.code.format(z=f"z{L}", axis=axis)
        elif net.loss_row.code:
            per = net.loss_row.code.format(a=f"a{L}", axis=axis)
        else:  # a row without NumPy source: never a silent MSE
            raise SymbpError(f"compile: the MLP writer has no NumPy form of loss {net.loss_row.name!r}; "
                             "build the network with symbp.network, whose writer prints any loss row")
        self.note(per)
        reduce = "np.mean" if net.batch and net.reduction == "mean" else "np.sum"
        lines.append(f"    return float({reduce}({per}))")
        return "\n".join(lines) + "\n"

    def backward(self, trees):
        net = self.net
        formula = _Formula(self)
        bodies = {target: formula.code(tree) for target, tree in trees.items()}
        used = set().union(*(tree.names() for tree in trees.values()))
        stages = [n for n in net.intermediates if n in used]
        lines = [f"def backward({', '.join(net.inputs + net.params)}):",
                 '    """dL/dV for every claimed V (denominator layout: shaped like V)."""']
        lines += self.sizes(trees, used)
        if stages:
            lines.append(f"    v = forward({self.args})")
            lines.append(f"    {', '.join(stages)} = {', '.join(f'v[{n!r}]' for n in stages)}".replace("'", '"'))
        for target, body in bodies.items():
            lines.append(f"    d{target} = {body}")
        lines.append("    return {")
        lines += _wrap(" ".join(f'"{t}": d{t},' for t in trees), 92, indent=" " * 8)
        lines.append("    }")
        return "\n".join(lines) + "\n"

    @staticmethod
    def sizes(trees, used):
        """The lines defining the sizes the claims use: ``N`` read from ``x``, the widths as numbers."""
        lines = []
        if "N" in used or any(t.op == "ones" and "N" in t.value for tree in trees.values() for t in tree.walk()):
            lines.append("    N = x.shape[0]")
        return lines + [f"    {name} = {n}" for name, n in sorted(_sizes(trees).items())]

    def loop(self, trees):
        """``backward(x, y, W, b)`` as one loop over the layers, written from the same statements as
        :meth:`backward` with each layer's names as list entries relative to the layer (``W3`` in layer 2
        is ``W[l + 1]``); None when the layers do not share their statements (different activations,
        residual layers, a claim missing) or there is no layer to loop over."""
        net = self.net
        kinds = ("a", "z", "W", "b") if net.bias else ("a", "z", "W")
        expected = {f"{k}{l}" for l in range(1, net.L + 1) for k in kinds}
        if not isinstance(net, MLP) or net.L < 2 or net.residual_layers or set(trees) != expected:
            return None
        formula = _Formula(self)
        code = {target: formula.code(tree) for target, tree in trees.items()}

        def statements(l, names, at="l"):
            return [f"d{k}[{at}] = {_relative(code[f'{k}{l}'], l, at)}" for k in names]

        hidden = {tuple(statements(l, ("a", "z"))) for l in range(1, net.L)}
        params = {tuple(statements(l, kinds[2:])) for l in range(1, net.L + 1)}
        forward = {(_relative(self.affine(l, f"a{l - 1}"), l), _relative(self.activation(l, f"z{l}"), l))
                   for l in range(1, net.L)}
        if len(hidden) != 1 or len(params) != 1 or len(forward) != 1:
            return None
        (z_line, a_line), = forward
        output = _relative(self.output(f"z{net.L}"), net.L)
        lists = ", ".join(f"d{k}" for k in kinds)
        used = set().union(*(tree.names() for tree in trees.values()))
        parameters = "W, b" if net.bias else "W"
        lines = [f"def backward(x, y, {parameters}):",
                 f'    """dL/d{parameters.replace(", ", "[l], dL/d")}[l] for l = 1, ..., L '
                 '(the lists count layers from 1: entry 0 is None)."""',
                 "    L = len(W) - 1", *self.sizes(trees, used),
                 "    a, z = [x] + [None] * L, [None] * (L + 1)",
                 "    for l in range(1, L + 1):  # the forward pass",
                 f"        z[l] = {z_line}",
                 f"        a[l] = {a_line}" + ("" if output == a_line else f" if l < L else {output}"),
                 f"    {lists} = ([None] * (L + 1) for _ in range({len(kinds)}))",
                 *("    " + s for s in statements(net.L, ("a", "z"), "L")),
                 "    for l in range(L, 0, -1):  # the backward pass, from the output",
                 "        if l < L:",
                 *("            " + s for s in next(iter(hidden))),
                 *("        " + s for s in next(iter(params))),
                 f"    return {', '.join(f'd{k}' for k in kinds[2:])}"]
        return "\n".join(lines) + "\n"


_LAYER_NAME = re.compile(r"(?<![\w.])(d?)([azWb])(\d+)(?!\w)")


def _relative(code: str, l: int, at: str = "l") -> str:
    """``code`` with the layer names (``W3``, ``dz2``, ``x`` as ``a0``) as list entries relative to layer
    ``l``, written ``at``: ``W3`` in layer 2 is ``W[l + 1]``."""
    code = re.sub(r"(?<![\w.])x(?!\w)", "a0", code)

    def entry(match):
        offset = int(match.group(3)) - l
        index = at if offset == 0 else f"{at} {'+' if offset > 0 else '-'} {abs(offset)}"
        return f"{match.group(1)}{match.group(2)}[{index}]"

    return _LAYER_NAME.sub(entry, code)


def layer_loop(compiled: CompiledGradients) -> str | None:
    """The backward pass of ``compiled`` as one loop over the layers (:meth:`_Writer.loop`), checked
    against ``compiled``'s own backward at a random point: every ``dW[l]``, ``db[l]`` must agree to
    1e-12. None when the layers do not share their formulas, when the gradients are not finite at that
    point (no verdict), or (never expected) the loop disagrees: then the unrolled code stands.

    >>> import symbp
    >>> net = symbp.MLP([3, 3, 3, 2], hidden="tanh")
    >>> print(layer_loop(symbp.compile(net, symbp.textbook(net))).splitlines()[-6:-1])  # doctest: +NORMALIZE_WHITESPACE
    ['        if l < L:', '            da[l] = W[l + 1].T @ dz[l + 1]', '            dz[l] = da[l] * (1 - a[l] ** 2)',
     '        dW[l] = dz[l] @ a[l - 1].T', '        db[l] = dz[l]']
    """
    net = compiled.net
    if compiled.backend != "numpy" or not isinstance(net, MLP):
        return None
    trees = {t: parse(claim, net, what=f"claim for {t}") for t, claim in compiled.claims.items()}
    source = _Writer(net).loop(trees)
    if source is None:
        return None
    namespace = dict(compiled._namespace)
    exec(builtins.compile(source, "<symbp.compile loop>", "exec"), namespace)  # written by us, from trees
    rng = np.random.default_rng(0)
    values = {n: rng.uniform(0.1, 0.9, net.shape(n)) for n in net.inputs + net.params}
    lists = [[None] + [values[f"{k}{l}"] for l in range(1, net.L + 1)] for k in ("W", "b")[:1 + net.bias]]
    with np.errstate(all="ignore"):  # an activation that overflows here: no verdict, not a warning
        expected = compiled(**values)
        try:
            got = namespace["backward"](values["x"], values["y"], *lists)
        except (ArithmeticError, LookupError, TypeError, ValueError):  # shapes that do not meet: not the same code
            return None
    got = got if isinstance(got, tuple) else (got,)
    pairs = [(np.asarray(grads[l]), expected[f"{kind}{l}"]) for kind, grads in zip(("W", "b"), got)
             for l in range(1, net.L + 1)]
    if not all(np.isfinite(want).all() for _, want in pairs):
        return None  # the check cannot tell at this point: the unrolled code stands
    agree = all(have.shape == want.shape and np.allclose(have, want, rtol=1e-12, atol=1e-12) for have, want in pairs)
    return source if agree else None


class _NetworkWriter(_Writer):
    """The module's functions for a network of layers, read from the op table: each layer's ``code``
    column writes its stages and output (:mod:`symbp.ops`), the loss row its per-unit loss."""

    @property
    def args(self):
        return ", ".join(("x", *self.net.masks, *self.net.params))

    def show(self, expr) -> str:
        """A SymPy expression (an entry-wise activation applied to a name) as NumPy code."""
        return _ExpressionPrinter(self).doprint(expr)

    def header(self, trees, notes):
        text = super().header(trees, notes)
        inputs = ", ".join(self.net.inputs)
        return text.replace("backward(x, y, W1, b1, ...) returns {name: dL/dname}; forward(x, W1, b1, ...) the\n"
                            "intermediates; loss(x, y, W1, b1, ...) the loss.",
                            f"backward({inputs}, params...) returns {{name: dL/dname}}; forward(x, masks..., "
                            f"params...)\nevery stage; loss({inputs}, params...) the loss.")

    def forward(self):
        net = self.net
        lines = [f"def forward({self.args}):",
                 '    """Every stage of every layer (' + ("rows are examples" if net.batch else "column vectors")
                 + ')."""']
        for layer in net.layers:
            if layer.op.code is None:
                raise SymbpError(f"compile: {layer.label}: the op has no NumPy code (its row has no code column)")
            lines.append(f"    # {layer.label}")
            for line in layer.op.code(layer.context(net), self.show):
                self.note(line)
                lines.append("    " + line)
        lines.append("    return {")
        lines += _wrap(" ".join(f'"{n}": {n},' for n in net.intermediates), 92, indent=" " * 8)
        lines.append("    }")
        return "\n".join(lines) + "\n"

    def loss(self):
        """The loss from the loss row: its per-unit term printed in the output, summed (or averaged, as
        the row does) over the units of each example, then reduced over the examples."""
        net, out = self.net, self.net.output_name
        a, y = sp.Symbol(out, real=True), sp.Symbol("y", real=True)
        a2, y2 = sp.symbols("_a1 _y1", real=True)
        term = net.loss_row.sympy([a], [y])
        pair = net.loss_row.sympy([a, a2], [y, y2])
        second = term.xreplace({a: a2, y: y2})
        if sp.simplify(pair - (term + second)) == 0:
            over = "np.sum"
        elif sp.simplify(pair - (term + second) / 2) == 0:
            over = "np.mean"
        else:
            raise SymbpError(f"compile: loss {net.loss_row.name!r} is not a sum over the output units")
        axis = 1 if net.batch else 0
        reduce = "np.mean" if net.batch and net.reduction == "mean" else "np.sum"
        return "\n".join([
            f"def loss({', '.join(net.inputs + net.params)}):",
            f'    """The scalar loss: {_comment_safe(net.loss_row.name)} of {out}'
            + (f', {net.reduction} over the rows."""' if net.batch else '."""'),
            f"    {out} = forward({self.args})[{out!r}]".replace("'", '"'),
            f"    return float({reduce}({over}({self.show(term)}, axis={axis})))"]) + "\n"


def _sizes(trees) -> dict:
    """The size names the trees use (``n2``, alone or in ``ones(n2, 1)``), with their values."""
    found = {}
    for tree in trees.values():
        for t in tree.walk():
            if t.op == "size":
                found[t.value[0]] = t.value[1]
            elif t.op == "ones":
                found.update((d, n) for d, n in zip(t.value, t.shape) if isinstance(d, str) and d != "N")
    return found


class _Formula:
    """Prints a formula tree as Python/NumPy code (with a writer: noting helpers) or for the header."""

    def __init__(self, writer=None, *, formula=False):
        self.writer, self.formula = writer, formula

    def code(self, node) -> str:
        return self.visit(node)[0]

    def use(self, helper):
        if self.writer is not None:
            self.writer.helpers.add(helper)

    def visit(self, node):
        op = node.op
        if node.sugar:
            return self.sugar(node), _ATOM
        if op == "name":
            return ("x" if node.value == "a0" and not self.formula else node.value), _ATOM
        if op == "size":
            return node.value[0], _ATOM
        if op == "const":
            return ("pi" if self.formula else "np.pi"), _ATOM
        if op == "number":
            return _number(node.value)
        if op == "neg":
            return "-" + self.wrap(node.args[0], _UNARY), _UNARY
        if op in _BINARY:
            symbol, level = _BINARY[op]
            left = self.wrap(node.args[0], level)
            right = self.wrap(node.args[1], level + 1)  # left-associative: a - (b - c) keeps its brackets
            return f"{left} {symbol} {right}", level
        if op == "pow":
            exponent, _ = _number(node.value)
            return f"{self.wrap(node.args[0], _POW + 1)} ** {exponent}", _POW
        if op == "transpose":
            return self.wrap(node.args[0], _ATOM) + ".T", _ATOM
        inner = [self.code(a) for a in node.args]
        if self.formula:
            return self.formula_call(node, inner), _ATOM
        if op == "func":  # a helper of the module where it has one (stable forms), else NumPy's own
            if node.value in _HELPERS:
                self.use(node.value)
                return f"{node.value}({inner[0]})", _ATOM
            return f"np.{node.value}({inner[0]})", _ATOM
        if op == "softmax":
            self.use("softmax")
            return f"softmax({inner[0]}, axis={node.value})", _ATOM
        if op == "sum":
            axis = "" if node.value is None else f"axis={node.value}, "
            return f"np.sum({inner[0]}, {axis}keepdims=True)", _ATOM
        if op == "ones":
            return f"np.ones(({node.value[0]}, {node.value[1]}))", _ATOM
        if op == "diag":
            return f"np.diag({inner[0]}.ravel())", _ATOM
        if op == "outer":
            return f"np.outer({inner[0]}, {inner[1]})", _ATOM
        raise SymbpError(f"compile: formula op {op!r} has no NumPy form")  # pragma: no cover

    def sugar(self, node):
        """``mean``, ``var``, ``sqrt`` as written (NumPy's mean and var count the rows they are given, so a
        mean over the batch follows the batch size, as ``N`` does)."""
        name, operand = node.sugar[0], self.code(sugar_operand(node))
        if name == "sqrt":
            return f"sqrt({operand})" if self.formula else f"np.sqrt({operand})"
        axis = node.sugar[1]
        if self.formula:
            return f"{name}({operand}" + ("" if axis is None else f", axis={axis}") + ")"
        return f"np.{name}({operand}, " + ("" if axis is None else f"axis={axis}, ") + "keepdims=True)"

    def formula_call(self, node, inner):
        """A function of the formula language, written as the claim would write it."""
        if node.op == "func":
            return f"{node.value}({inner[0]})"
        if node.op == "sum":
            return f"sum({inner[0]}" + ("" if node.value is None else f", axis={node.value}") + ")"
        if node.op == "ones":
            return f"ones({node.value[0]}, {node.value[1]})"
        return f"{node.op}({', '.join(inner)})"

    def wrap(self, node, level):
        text, own = self.visit(node)
        return text if own >= level else f"({text})"


def _number(value: Fraction):
    """A number literal and its precedence (a negative literal binds like unary minus)."""
    if value.denominator == 1:
        text = str(value.numerator)
    else:
        text = repr(float(value))
    return text, (_UNARY if value < 0 else _ATOM)


class _ExpressionPrinter:
    """Prints a scalar SymPy expression (a custom activation) as NumPy code, element-wise."""

    _CALLS = {sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sp.sqrt: "np.sqrt", sp.Abs: "np.abs",
              F.relu: "relu", F.leaky_relu: "leaky_relu", F.sigmoid: "sigmoid", F.softplus: "softplus",
              sp.erf: "erf"}

    def __init__(self, writer):
        self.writer = writer

    def doprint(self, expr):
        from sympy.printing.numpy import NumPyPrinter

        writer = self.writer

        class Printer(NumPyPrinter):
            def _module_format(self, fqn, register=True):
                return "np." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

            def _print_Function(self, e):
                for function, name in _ExpressionPrinter._CALLS.items():
                    if e.func == function and not name.startswith("np."):
                        writer.helpers.add(name)
                        return f"{name}({self._print(e.args[0])})"
                return super()._print_Function(e)

        for function, name in self._CALLS.items():
            if not name.startswith("np."):
                setattr(Printer, f"_print_{function.__name__}", Printer._print_Function)
        return Printer({"fully_qualified_modules": True}).doprint(expr)


def _comment_safe(text: str) -> str:
    """Text for the module's docstring: no quotes or backslashes that could end it."""
    return re.sub(r'["\\]', "", text)


def _shape_text(net, name):
    rows, cols = net.shape(name)
    return f"({'N' if net.batch and name in ('x', 'y') else rows}, {cols})"


def _wrap(text, width, indent=""):
    """``text`` in lines of at most ``width`` characters (after ``indent``), broken at spaces."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [indent + line]


# --------------------------------------------------------------------------- loading and calling

def _load(source, net):
    """Execute the generated module's source in a fresh namespace (registered for tracebacks)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    filename = f"<symbp.compile {list(net.sizes) if isinstance(net, MLP) else 'network'} {digest}>"
    code = builtins.compile(source, filename, "exec")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "symbp.compiled"}
    exec(code, namespace)  # our generated code, written from formula trees (never from user text)
    return namespace


def _arrays(net, values):
    """``values`` as float64 arrays shaped as the network expects; for a batch network, any number of
    rows (the same for ``x`` and ``y``)."""
    names = net.inputs + net.params
    for name in values:
        if name not in names:
            raise SymbpError(f"unknown argument '{name}'{closest(name, names)}; expected {', '.join(names)}")
    out = {}
    for name in names:
        if name not in values:
            raise SymbpError(f"missing value for '{name}' (expected shape {_shape_text(net, name)})")
        array = np.asarray(values[name], dtype=float)
        expected = net.shape(name)
        if array.ndim == 1 and expected[1] == 1 and not (net.batch and name in net.inputs):
            array = array.reshape(-1, 1)
        if net.batch and name in net.inputs:
            ok = array.ndim == 2 and array.shape[1] == expected[1]
        else:
            ok = array.shape == expected
        if not ok:
            raise SymbpError(f"{name}: expected shape {_shape_text(net, name)}, got {array.shape}")
        out[name] = array
    if net.batch and out["x"].shape[0] != out["y"].shape[0]:
        raise SymbpError(f"x has {out['x'].shape[0]} rows but y has {out['y'].shape[0]}: one target row per example")
    return out
