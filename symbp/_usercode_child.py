"""The child process that runs a ``[code]`` backward function (see :mod:`symbp.usercode`).

How it works: the parent starts ``python -c <this file's text>``, so the child imports neither symbp
nor SymPy, only NumPy and the user's module (start-up is Python's and NumPy's, about 0.1 s). The
child

1. takes a copy of its stdout as the answer channel and points its stdout at stderr, so whatever the
   user's code prints goes to stderr and never into the answer (or into ``--json`` output);
2. reads the request (file, function, memory limit, the points) from stdin, imports NumPy, says
   ``ready`` (the parent's clock for the time limit starts there), and caps its address space
   (``RLIMIT_AS``) at the memory limit;
3. imports the user's module and calls the function at each point, sending each answer as soon as
   it has it. Every ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, ``MemoryError``...)
   is caught and sent as what happened; after the last answer, or a failure, the child leaves with
   ``os._exit(0)``, so no ``atexit`` hook or lingering thread of the user's can add anything.

Frames are an 8-byte length and a pickle of builtins only (tuples, dicts, strings, bytes, numbers):
the parent unpickles them with no class lookups at all, so an answer cannot run code in the parent.
Arrays travel as ``(dtype.str, shape, bytes)`` and only numeric dtypes are sent.

Framework code (``kind = "torch"`` or ``"jax"``): the framework is imported before ``ready`` (its
start-up is not the user's time), and :func:`framework_backward` wraps the user's object as a
``backward(values) -> {name: array}``: for a ``torch.autograd.Function`` subclass it calls ``forward(ctx,
x, y, *params)`` and then ``backward(ctx, 1)`` itself (torch's engine would refuse a wrongly shaped
gradient before symbp could judge it); for a ``jax.custom_vjp`` function it calls the function, its
``fwd`` and its ``bwd`` with 64-bit enabled. The loss the forward returned travels as ``"L"`` (and the
``fwd`` rule's as ``"L.fwd"``), to be checked against the network's own loss.

The helpers :func:`describe` and :func:`plain` are also used in-process for Python callables.
"""

import os
import pickle
import struct
import sys

MESSAGE_LENGTH = 300
NUMERIC_KINDS = "biufc"  # bool, int, unsigned, float, complex: anything else is not an array of numbers


def _safe_text(exc) -> str:
    """``str(exc)`` on one line, cut short; the user's ``__str__`` may itself fail."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - the user's __str__: anything may happen
        return "<the exception's message could not be printed>"
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LENGTH else text[:MESSAGE_LENGTH - 3] + "..."


def _not_users(filename: str, own: tuple) -> bool:
    if filename.startswith("<"):  # <string> (this program), <frozen ...>
        return True
    path = os.path.realpath(filename)
    return any(path == p or path.startswith(p + os.sep) for p in own)


def where(tb, base: str) -> str:
    """``"backward.py, line 7"``: the innermost frame of ``tb`` in the user's files (anything but
    symbp itself and the Python installation, NumPy included), relative to ``base``; or ``""``."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = tuple(prefixes | {os.path.dirname(os.path.realpath(__file__))}) if "__file__" in globals() \
        else tuple(prefixes)
    found = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        if not _not_users(code.co_filename, own):
            path = os.path.realpath(code.co_filename)
            shown = os.path.relpath(path, base) if path.startswith(base + os.sep) else path
            found = f"{shown}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def describe(exc: BaseException, base: str, memory_mb=None) -> str:
    """What a ``BaseException`` from user code says, after the actor's name: ``raised
    ZeroDivisionError: division by zero (backward.py, line 7)``, ``called sys.exit(0) (...)``, or
    ``used more than 4096 MB`` (a ``MemoryError`` under a memory limit)."""
    if isinstance(exc, MemoryError) and memory_mb:
        return f"used more than {memory_mb} MB"
    if isinstance(exc, SystemExit):
        text = "called sys.exit()" if exc.code is None else f"called sys.exit({exc.code!r})"
    else:
        message = _safe_text(exc)
        text = f"raised {type(exc).__name__}" + (f": {message}" if message else "")
    location = where(exc.__traceback__, base)
    return text + (f" ({location})" if location else "")


def plain(value):
    """A returned gradient as a NumPy array of numbers, or the reason it is not one (a string)."""
    import numpy as np

    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor (maybe requiring grad)
        try:
            value = value.detach().cpu().numpy()
        except Exception as exc:  # noqa: BLE001 - the user's value: anything may happen
            return f"not an array of numbers ({type(exc).__name__}: {_safe_text(exc)})"
    try:
        array = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - the user's value: anything may happen
        return f"not an array of numbers ({type(exc).__name__}: {_safe_text(exc)})"
    if array.dtype.kind not in NUMERIC_KINDS or array.dtype.fields is not None:
        return f"not an array of numbers (dtype {array.dtype})"
    return array


class Refusal(str):
    """Why framework code's answer cannot be read (said by symbp's wrapper, not returned by the user)."""


def plain_answer(out):
    """A backward's answer as ``{name: array or reason}``, or a string when it is not a dict."""
    if isinstance(out, Refusal):
        return str(out)
    if not isinstance(out, dict):
        return f"returned {type(out).__name__}, expected a dict {{name: array}}"
    return {str(name): plain(value) for name, value in out.items()}


# --------------------------------------------------------------------------- confinement (Landlock)

_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}  # by Landlock ABI
_FILE_RIGHTS = 1 | 2 | 4 | (1 << 14) | (1 << 15)  # execute, write, read, truncate, ioctl: what a file may get
_READ = 1 | 4 | 8  # execute, read a file, read a directory


def confine(work: str) -> bool:
    """Restrict this process, with Linux's Landlock, to reading the Python installation, the folders
    on ``sys.path`` and the system's libraries, and to reading and writing ``work`` (and
    ``/dev/null``): any other file (other submissions, the results) is refused with
    ``PermissionError``. False, and nothing restricted, where the kernel has no Landlock."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    except (OSError, AttributeError):
        return False
    if abi < 1:
        return False
    handled = _FS_RIGHTS[max(k for k in _FS_RIGHTS if k <= abi)]
    ruleset = libc.syscall(444, ctypes.byref(ctypes.c_uint64(handled)), 8, 0)
    if ruleset < 0:
        return False

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def allow(place, rights):
        try:
            fd = os.open(place, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(place):
                rights &= _FILE_RIGHTS
            libc.syscall(445, ruleset, 1, ctypes.byref(PathBeneath(rights & handled, fd)), 0)
        finally:
            os.close(fd)

    readable = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"}
    readable |= {p for p in sys.path[1:] if p and os.path.isabs(p)}
    for place in sorted(readable):
        allow(place, _READ)
    allow(work, handled)
    allow("/dev/null", 2 | 4)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to restrict oneself
        os.close(ruleset)
        return False
    done = libc.syscall(446, ruleset, 0) == 0  # landlock_restrict_self
    os.close(ruleset)
    return done


# --------------------------------------------------------------------------- framework code

FRAMEWORKS = {"torch": "PyTorch", "jax": "JAX"}  # kind -> the framework's name (the extra is the kind)


def load_framework(kind):
    """Import the framework of ``kind`` (JAX with 64-bit enabled); None for NumPy code."""
    if kind == "torch":
        import torch

        return torch
    if kind == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        return jax
    return None


def kind_of(obj):
    """``"torch"`` for a ``torch.autograd.Function`` subclass, ``"jax"`` for a ``jax.custom_vjp``
    function, else ``"numpy"`` (a plain function, whatever ops it uses)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
        return "torch"
    if "jax" in sys.modules and type(obj).__name__ == "custom_vjp" and type(obj).__module__.startswith("jax"):
        return "jax"
    return "numpy"


def not_of_kind(obj, kind, name):
    """Why ``obj`` cannot be judged as ``kind`` code (a sentence), or None when it can."""
    if kind == "numpy" or kind_of(obj) == kind:
        return None
    if kind == "torch":
        return "is not a torch.autograd.Function subclass (kind = \"torch\")"
    return "is not a jax.custom_vjp function with its fwd and bwd defined (kind = \"jax\")"


class TorchContext:
    """What torch gives ``forward`` and ``backward`` as ``ctx``: saved tensors and any attribute."""

    def __init__(self, inputs):
        self.saved_tensors = ()
        self.needs_input_grad = (False, False) + (True,) * (inputs - 2)
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *args):
        pass

    def mark_dirty(self, *args):
        pass

    def set_materialize_grads(self, value):
        self.materialize_grads = value


def _grads_answer(grads, inputs, params, who, layer=False):
    """``{name: gradient}`` from the gradients returned for ``inputs`` (``x, y, *params``, or ``x,
    *params`` for a layer, whose ``dx`` is judged too; ``None`` left out), or the reason they cannot
    be read (a string)."""
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(inputs):
        data = [n for n in inputs if n not in params]
        return Refusal(f"{who} returned {len(grads)} gradient{'s' if len(grads) != 1 else ''}; expected "
                       f"{len(inputs)}, one per input ({', '.join(inputs)}; None for {' and '.join(data)})")
    keep = set(params) | ({"x"} if layer else set())  # a layer on its own: its input gradient is its own
    return {name: g for name, g in zip(inputs, grads) if g is not None and name in keep}


def _positional(function) -> int:
    """How many positional parameters ``function`` takes (-1 when it cannot be told)."""
    import inspect

    try:
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
    except (TypeError, ValueError):
        return -1
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return -1
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def framework_backward(kind, obj, params, dtype="float64", upstream=False):
    """``obj`` (a torch Function subclass or a jax custom_vjp function) as ``backward(values) ->
    {name: gradient, "L": loss}``, the network's input, target and parameters given in ``dtype``.

    ``upstream``: the network is judged as a layer on its own (its loss is ``sum(y * out)``, so ``y``
    is the upstream gradient dL/d(out)); code whose forward takes ``x, *params`` (no ``y``) is then
    called as a layer: forward gives the layer's output, and backward gets ``y`` as its upstream
    gradient; symbp computes the loss ``sum(y * out)`` from the output, to check the forward."""
    framework = load_framework(kind)
    full = ("x", "y", *params)
    if kind == "torch":
        torch = framework
        own = obj.setup_context is not torch.autograd.Function.setup_context  # forward without ctx
        layer = upstream and _positional(obj.forward) == len(params) + 1 + (not own)
        order = ("x", *params) if layer else full

        def backward(values):
            args = [torch.tensor(values[n], dtype=getattr(torch, dtype)) for n in order]
            ctx = TorchContext(len(args) + layer)
            with torch.no_grad():
                if own:
                    out = obj.forward(*args)
                    obj.setup_context(ctx, tuple(args), out)
                else:
                    out = obj.forward(ctx, *args)
                if layer:
                    seed = torch.tensor(values["y"], dtype=getattr(torch, dtype))
                    loss = (seed * out).sum() if isinstance(out, torch.Tensor) and out.shape == seed.shape else out
                else:
                    seed = torch.ones_like(out) if isinstance(out, torch.Tensor) else 1.0
                    loss = out
                answer = _grads_answer(obj.backward(ctx, seed), order, params, "backward", layer)
            return answer if isinstance(answer, str) else dict(answer, L=loss)

        return backward
    import jax.numpy as jnp

    layer = upstream and _positional(getattr(obj, "fun", obj)) == len(params) + 1
    order = ("x", *params) if layer else full

    def backward(values):
        args = [jnp.asarray(values[n], dtype=dtype) for n in order]
        primal = obj(*args)
        out, residuals = obj.fwd(*args)
        if layer:
            y = jnp.asarray(values["y"], dtype=dtype)
            seed = y

            def scalar(o):
                return (y * o).sum() if getattr(o, "shape", None) == y.shape else o

            primal, loss = scalar(primal), scalar(out)
        else:
            seed, loss = jnp.ones_like(out), out
        answer = _grads_answer(obj.bwd(residuals, seed), order, params, "bwd", layer)
        return answer if isinstance(answer, str) else dict(answer, **{"L": primal, "L.fwd": loss})

    return backward


# --------------------------------------------------------------------------- the child's program


def _encode(answer):
    if isinstance(answer, str):
        return answer
    return {name: value if isinstance(value, str) else (value.dtype.str, value.shape, value.tobytes())
            for name, value in answer.items()}


def main():
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def send(*frame):
        data = pickle.dumps(frame, protocol=4)
        channel.write(struct.pack("<Q", len(data)) + data)
        channel.flush()

    def leave():
        channel.flush()
        os._exit(0)

    request = pickle.load(sys.stdin.buffer)
    import numpy as np

    kind = request.get("kind", "numpy")
    load_framework(kind)  # before ready: importing the framework is not the user's time
    send("ready")
    memory_mb = request["memory_mb"]
    try:
        import resource

        limit = memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # no resource module (Windows): no memory limit
        memory_mb = None
    path, name = request["path"], request["function"]
    base = os.path.dirname(os.path.realpath(path))
    if request.get("confine"):
        confine(base)
    sys.path[0] = base  # as `python backward.py` would: the user's own modules import
    sys.argv = [path]
    try:
        import importlib.util

        module_name = "symbp_user_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        function = getattr(module, name, None)
    except BaseException as exc:  # noqa: BLE001 - the user's module: every way out is an answer
        send("failed", None, describe(exc, base, memory_mb))
        leave()
    if not callable(function):
        send("nofunction", [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")])
        leave()
    wrong = not_of_kind(function, kind, name)
    if wrong:
        send("notkind", wrong)
        leave()
    if kind != "numpy":
        function = framework_backward(kind, function, request["params"], request.get("dtype", "float64"),
                                      request.get("upstream", False))
    send("imported")
    for k, point in enumerate(request["points"]):
        values = {key: np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
                  for key, (dtype, shape, data) in point.items()}
        if kind == "numpy" and request.get("dtype", "float64") != "float64":
            values = {key: value.astype(request["dtype"]) for key, value in values.items()}
        try:
            answer = _encode(plain_answer(function(values)))
        except BaseException as exc:  # noqa: BLE001 - the user's function: every way out is an answer
            send("failed", k, describe(exc, base, memory_mb))
            leave()
        send("point", k, answer)
    send("done")
    leave()


if __name__ == "__main__":
    main()
