"""Spec files (TOML): a network, claims about its gradients, backward-pass code, concrete values.

How it works: the file is read with ``tomllib``; every table and field is checked against the list
below before anything is built, so a misspelt field is an error naming it (with the closest known
name), never silently ignored. ``[model]`` becomes a :class:`~symbp.network.MLP`; each ``[claims]``
entry is parsed by the formula parser at load time, so a bad formula is reported as
``claims.W3: ...`` with its column.

.. code-block:: toml

    [model]
    sizes = [4, 5, 3, 3]     # required
    hidden = "relu"          # or one per hidden layer: ["relu", "tanh"]
    output = "softmax"
    loss = "cross_entropy"
    bias = true
    batch = 0                # 0 or absent: one example, column vectors
    reduction = "mean"
    residual = false         # or a list of layers

    [claims]                 # dL/d<name>, denominator layout
    z3 = "a3 - y"

    [code]                   # optional
    path = "backward.py"     # relative to the spec file
    function = "backward"
    kind = "numpy"           # or "torch" (a torch.autograd.Function), "jax" (a jax.custom_vjp function)
    dtype = "float64"        # or "float32": the dtype the inputs are given in

    [limits]                 # for [code], run in a child process (see symbp.usercode)
    seconds = 60             # wall-clock time for the module's import and every call
    memory_mb = 4096         # its address space

    [rubric]                 # symbp grade: points per target
    W1 = 2

    [values]                 # nested lists, shapes as the conventions
    x = [[1], [0], [2], [-1]]

    [claimed_values]         # hand-computed numbers to check
    dz1 = [[1], [-2], [2], [-1]]

A network of layers instead (see INTERFACE.md, "Networks of layers"):

.. code-block:: toml

    [model]
    input = 6                # features per example
    batch = 4                # 0 or absent: one example
    loss = "cross_entropy"   # a registry loss, or an expression in a and y: "log(cosh(a - y))"
    reduction = "mean"

    [[layers]]
    op = "affine"
    out = 5
    name = "z1"
    W = "W1"
    b = "b1"

    [[layers]]
    op = "layernorm"
    name = "h1"
    eps = 1e-5               # exactly 1/100000
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import cost
from .errors import SymbpError, closest
from .layers import Network, network
from .network import MLP
from .usercode import DTYPES, KINDS, MEMORY_MB, SECONDS, CodeFile, check_limit

TABLES = ("model", "layers", "claims", "code", "limits", "values", "claimed_values", "example", "rubric")
MODEL_FIELDS = ("sizes", "hidden", "output", "loss", "bias", "batch", "reduction", "residual")
#: The fields of a ``[model]`` whose network is given by ``[[layers]]`` tables.
LAYERS_MODEL_FIELDS = ("input", "batch", "loss", "reduction")


class Written(float):
    """A TOML float that remembers the decimal it was written as: ``repr`` gives that text back, so the
    exact readers (:func:`symbp.expression.literal`, :func:`symbp.example.exact`) take ``1e-5`` as
    ``1/100000`` and ``0.1`` as ``1/10``, digit for digit, while arithmetic sees an ordinary float.

    >>> w = _written("1e-5"); w == 1e-05, repr(w)
    (True, '1e-5')
    """

    text: str

    def __repr__(self):
        return self.text

    __str__ = __repr__


def _written(text: str) -> float:
    """``parse_float`` of the spec reader: a :class:`Written` for a decimal, a plain float for
    ``inf`` and ``nan`` (which have no exact value)."""
    plain = text.replace("_", "")
    value = float(plain)
    if value != value or value in (float("inf"), float("-inf")):
        return value
    written = Written(plain)
    written.text = plain.lstrip("+")
    return written
CODE_FIELDS = ("path", "function", "kind", "dtype")
LIMIT_FIELDS = ("seconds", "memory_mb")


@dataclass
class Spec:
    """A loaded spec file: the network, the claims (``{target: formula}``), the optional code claim,
    and the ``[values]`` / ``[claimed_values]`` tables (name -> nested lists, unchecked here)."""

    net: MLP | Network
    model: dict
    claims: dict = field(default_factory=dict)
    code: dict | None = None
    values: dict = field(default_factory=dict)
    claimed_values: dict = field(default_factory=dict)
    path: Path | None = None
    example: dict = field(default_factory=dict)  # options of ``symbp example``: title, note, tolerance
    limits: dict = field(default_factory=lambda: {"seconds": SECONDS, "memory_mb": MEMORY_MB})
    layers: list | None = None  # the [[layers]] tables as read (None for an MLP)
    rubric: dict = field(default_factory=dict)  # symbp grade: {target: points}, in the file's order

    def _code_file(self):
        if self.code is None:
            raise SymbpError("spec has no [code] table")
        base = self.path.parent if self.path else Path.cwd()
        file = (base / self.code["path"]).resolve()
        if not file.is_file():
            raise SymbpError(f"code.path: no such file '{self.code['path']}' (looked in {base})")
        module_spec = importlib.util.spec_from_file_location(f"symbp_user_{file.stem}", file)
        if module_spec is None or module_spec.loader is None:  # Python imports only .py (and the like)
            raise SymbpError(f"code.path: '{self.code['path']}' is not a Python file (.py)")
        return file, module_spec

    def code_claim(self) -> CodeFile:
        """The ``[code]`` function as a :class:`~symbp.usercode.CodeFile`: run in a child process
        under ``[limits]`` when verified (what ``symbp verify`` does)."""
        file, _ = self._code_file()
        return CodeFile(file, self.code["function"], self.limits["seconds"], self.limits["memory_mb"],
                        kind=self.code.get("kind", "numpy"), dtype=self.code.get("dtype", "float64"))

    def function(self):
        """The ``[code]`` function, imported into this process from its file (the user's own code,
        run as Python, unbounded: :meth:`code_claim` runs it in a child process instead)."""
        file, module_spec = self._code_file()
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: any failure is bad input, named
            raise SymbpError(f"code.path: importing '{self.code['path']}' raised {type(exc).__name__}: {exc}") from None
        name = self.code["function"]
        fn = getattr(module, name, None)
        if not callable(fn):
            defined = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")]
            raise SymbpError(f"code.function: '{self.code['path']}' defines no function '{name}'"
                             f"{closest(name, defined)}")
        return fn


def load(path, *, steps=("build",)) -> Spec:
    """Read a spec file (``SymbpError`` naming the file, the table or the field on any mistake).

    ``steps`` are the steps of :mod:`symbp.cost` the caller will take: a network whose estimate for
    them is past the limits is refused before it is built (by default, only building it)."""
    path = Path(path)
    return loads(read(path), path=path, steps=steps)


def read(path, what="spec file") -> str:
    """The text of the file ``path`` (UTF-8); a missing or unreadable file is one line naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SymbpError(f"no such {what}: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SymbpError(f"cannot read {what} {path}: {exc}") from None


def loads(text: str, *, path=None, steps=("build",)) -> Spec:
    """Parse the text of a spec file (``steps`` as for :func:`load`; with ``"verify"``, a ``[code]``
    table adds the ``lambdify`` its judging takes).

    >>> spec = loads('[model]\\nsizes = [4, 5, 3, 3]\\n[claims]\\nz3 = "a3 - y"')
    >>> spec.net.sizes, spec.claims
    ((4, 5, 3, 3), {'z3': 'a3 - y'})
    >>> loads('[model]\\nsizes = [2, 2]\\nhiden = "relu"')
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: model: unknown field 'hiden' (did you mean 'hidden'?); fields: sizes, hidden, output, loss, bias, batch, reduction, residual
    """
    where = f"{path}: " if path else ""
    try:
        data = tomllib.loads(text, parse_float=_written)
    except tomllib.TOMLDecodeError as exc:
        raise SymbpError(f"{where}not valid TOML: {exc}") from None
    for key, value in data.items():
        if key not in TABLES:
            raise SymbpError(f"{where}unknown table [{key}]{closest(key, TABLES)}; tables: {', '.join(TABLES)}")
        if key == "layers":
            if not isinstance(value, list):
                raise SymbpError(f"{where}'layers' must be an array of tables [[layers]] (one per layer), "
                                 f"got {'a table [layers]' if isinstance(value, dict) else repr(value)}")
        elif not isinstance(value, dict):
            raise SymbpError(f"{where}'{key}' must be a table [{key}], got {type(value).__name__}")
    if "model" not in data:
        raise SymbpError(f"{where}missing table [model] (with at least "
                         + ("input = ... for the [[layers]])" if "layers" in data else "sizes = [...])"))
    steps = tuple(steps) + (("lambdify",) if "code" in data and "verify" in steps else ())
    if "layers" in data or "input" in data["model"]:
        net = _layers_network(data["model"], data.get("layers"), steps, where)
    else:
        model = _model_kwargs(data["model"])
        try:
            cost.refuse_if_too_big(model["sizes"], batch=model.get("batch"), output=model.get("output", "softmax"),
                                   hidden=model.get("hidden", "relu"), steps=steps, batch_option="batch =")
        except SymbpError as exc:
            raise SymbpError(f"{where}{exc}") from None
        net = MLP(model.pop("sizes"), **model)
    claims = _claims(data.get("claims", {}), net)
    code = _code(data["code"]) if "code" in data else None
    limits = _limits(data.get("limits", {}))
    values = _arrays(data.get("values", {}), "values")
    claimed = _arrays(data.get("claimed_values", {}), "claimed_values", scalars=("L",))
    # Every command reads the whole file: a misspelt name is an error here, whichever command it is for.
    _known_names(values, list(net.inputs + net.params), "values", where)
    cells = list(net.intermediates) + ["L"] + [f"d{n}" for n in net.intermediates + net.params]
    for key in claimed:
        if key.startswith(("dL/d", "dL_d")):
            raise SymbpError(f"{where}claimed_values: unknown name '{key}' (write d{key[4:]} for dL/d{key[4:]})")
    _known_names(claimed, cells, "claimed_values", where)
    _known_names(data.get("example", {}), list(EXAMPLE_FIELDS), "example", where, kind="key")
    rubric = _rubric(data.get("rubric", {}), net, where)
    return Spec(net, dict(data["model"]), claims, code, values, claimed, Path(path) if path else None,
                dict(data.get("example", {})), limits, data.get("layers"), rubric)


def model_from_table(table: dict) -> MLP:
    """An :class:`MLP` from a ``[model]`` table (a dict), fields checked."""
    model = _model_kwargs(table)
    return MLP(model.pop("sizes"), **model)


def _layers_network(table, layers, steps, where="") -> Network:
    """A :class:`~symbp.layers.Network` from a ``[model]`` table with ``input`` and the list of
    ``[[layers]]`` tables (each checked by :func:`symbp.network`, which names a bad one by position)."""
    if "sizes" in table and layers is not None:
        raise SymbpError("model: sizes = [...] (an MLP) and [[layers]] tables (a network of layers) describe "
                         "two networks; give one of them")
    if "layers" in table:
        raise SymbpError("model: unknown field 'layers': the layers are [[layers]] tables of their own, after "
                         "[model] (one [[layers]] header per layer)")
    if layers is None:
        raise SymbpError("model: input = ... is the width of a network of layers, but the file has no [[layers]] "
                         "tables (or give sizes = [...] for an MLP)")
    for key in table:
        if key not in LAYERS_MODEL_FIELDS:
            hint = closest(key, LAYERS_MODEL_FIELDS)
            if not hint and key in MODEL_FIELDS:
                hint = " (a field of an MLP, sizes = [...]; with [[layers]] every activation is a layer)"
            raise SymbpError(f"model: unknown field '{key}'{hint}; fields with [[layers]]: "
                             f"{', '.join(LAYERS_MODEL_FIELDS)}")
    if "input" not in table:
        raise SymbpError("model: missing field 'input' (the features per example, e.g. input = 6)")
    width = table["input"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise SymbpError(f"model.input: expected a positive whole number of features per example, got {width!r}")
    batch = table.get("batch", 0)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise SymbpError(f"model.batch: expected a whole number of examples (0 for one example), got {batch!r}")
    for key in ("loss", "reduction"):
        if key in table and not isinstance(table[key], str):
            raise SymbpError(f"model.{key}: expected a name" + (" or an expression in a and y" if key == "loss" else "")
                             + f", got {table[key]!r}")
    if table.get("reduction", "mean") not in ("mean", "sum"):
        raise SymbpError(f"model.reduction: expected 'mean' or 'sum', got {table['reduction']!r}")
    if not layers:
        raise SymbpError("layers: a network needs at least one [[layers]] table")
    _refuse_big_layers(width, batch, layers, steps, where)
    return network(layers, input=width, batch=batch or None, loss=table.get("loss", "cross_entropy"),
                   reduction=table.get("reduction", "mean"))


def _refuse_big_layers(width, batch, layers, steps, where):
    """The estimate of :mod:`symbp.cost` for the affine and attention layers, taken as the layers of an
    MLP of those widths (their products are most of a network's entries): refused before the network is
    built, as an MLP past the limits is. A width that is not a positive whole number is left to the
    layer's own check."""
    sizes = [width]
    for spec in layers:
        if not isinstance(spec, dict):
            return
        out = spec.get("out") if spec.get("op") == "affine" else spec.get("dk") if spec.get("op") == "attention" else None
        if out is not None:
            if isinstance(out, bool) or not isinstance(out, int) or out < 1:
                return
            sizes.append(out)
    if len(sizes) < 2:
        return
    try:
        cost.refuse_if_too_big(sizes, batch=batch or None, output="identity", hidden="identity", steps=steps,
                               batch_option="batch =", what=f"network of {len(layers)} layers (widths {sizes})")
    except SymbpError as exc:
        raise SymbpError(f"{where}{exc}") from None


def _model_kwargs(table):
    for key in table:
        if key not in MODEL_FIELDS:
            raise SymbpError(f"model: unknown field '{key}'{closest(key, MODEL_FIELDS)}; fields: {', '.join(MODEL_FIELDS)}")
    if "sizes" not in table:
        raise SymbpError("model: missing field 'sizes' (the layer widths, e.g. sizes = [4, 5, 3, 3])")
    kwargs = dict(table)
    for key in ("output", "loss", "reduction"):
        if key in kwargs and not isinstance(kwargs[key], str):
            raise SymbpError(f"model.{key}: expected a name, got {kwargs[key]!r}")
    if "hidden" in kwargs and not isinstance(kwargs["hidden"], (str, list)):
        raise SymbpError(f"model.hidden: expected a name or a list of names, got {kwargs['hidden']!r}")
    if "batch" in kwargs:
        batch = kwargs["batch"]
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
            raise SymbpError(f"model.batch: expected a whole number of examples (0 for one example), got {batch!r}")
        kwargs["batch"] = batch or None
    if "residual" in kwargs and not isinstance(kwargs["residual"], (bool, list)):
        raise SymbpError(f"model.residual: expected true/false or a list of layers, got {kwargs['residual']!r}")
    return kwargs


def _claims(table, net):
    from .formula import FormulaError, parse

    claims = {}
    targets = net.targets
    for key, text in table.items():
        if key not in targets:
            raise SymbpError(f"claims: no gradient named '{key}'{closest(key, targets)}; targets: {', '.join(targets)}")
        if not isinstance(text, str):
            raise SymbpError(f"claims.{key}: expected a formula string, got {text!r}")
        try:
            parse(text, net, what=f"claims.{key}")
        except FormulaError as exc:
            if exc.kind != "shape":  # shapes that do not fit are a verdict of verify, not bad input
                raise
        claims[key] = text
    return claims


def _rubric(table, net, where=""):
    """``[rubric]`` of an assignment (``symbp grade``): points per target, each a number >= 0."""
    targets = net.targets
    for key, points in table.items():
        if key not in targets:
            raise SymbpError(f"{where}rubric: no gradient named '{key}'{closest(key, targets)}; "
                             f"targets: {', '.join(targets)}")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or not 0 <= points < float("inf"):
            raise SymbpError(f"{where}rubric.{key}: expected a number of points >= 0, got {points!r}")
    return {key: float(points) if isinstance(points, Written) else points for key, points in table.items()}


def _code(table):
    for key in table:
        if key not in CODE_FIELDS:
            raise SymbpError(f"code: unknown field '{key}'{closest(key, CODE_FIELDS)}; fields: {', '.join(CODE_FIELDS)}")
    if not isinstance(table.get("path"), str):
        raise SymbpError("code: missing field 'path' (the Python file, relative to the spec file)")
    function = table.get("function", "backward")
    if not isinstance(function, str) or not function.isidentifier():
        raise SymbpError(f"code.function: expected a function name, got {function!r}")
    kind, dtype = table.get("kind", "numpy"), table.get("dtype", "float64")
    if kind not in KINDS:
        raise SymbpError(f"code.kind: expected one of {', '.join(KINDS)}, got {kind!r}{closest(str(kind), KINDS)}")
    if dtype not in DTYPES:
        raise SymbpError(f"code.dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return {"path": table["path"], "function": function, "kind": kind, "dtype": dtype}


def _limits(table):
    for key in table:
        if key not in LIMIT_FIELDS:
            raise SymbpError(f"limits: unknown field '{key}'{closest(key, LIMIT_FIELDS)}; fields: {', '.join(LIMIT_FIELDS)}")
    seconds = table.get("seconds", SECONDS)
    seconds = float(seconds) if isinstance(seconds, Written) else seconds
    return {"seconds": check_limit(seconds, "limits.seconds"),
            "memory_mb": check_limit(table.get("memory_mb", MEMORY_MB), "limits.memory_mb", whole=True)}


def _arrays(table, what, scalars=()):
    """The nested lists of a ``[values]``-like table; the names in ``scalars`` (the loss ``L``) may
    also be a plain number."""
    out = {}
    for key, value in table.items():
        scalar = key in scalars and isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(value, list) and not scalar:
            raise SymbpError(f"{what}.{key}: expected nested lists of numbers, got {value!r}")
        out[key] = value
    return out


#: The keys of ``[example]`` (options of ``symbp example``).
EXAMPLE_FIELDS = ("tolerance", "title", "note")


def _known_names(table, known, what, where="", kind="name"):
    """Refuse a key of ``table`` that is not in ``known``, as a misspelt ``[model]`` field is."""
    for key in table:
        if key not in known:
            raise SymbpError(f"{where}{what}: unknown {kind} '{key}'{closest(key, known)}; known: {', '.join(known)}")
