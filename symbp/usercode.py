"""Running user code (backward functions) so that nothing it does can stop or fool the run.

How it works:

* A ``[code]`` claim of a spec file (a :class:`CodeFile`) runs in a **child process**: a fresh
  ``python -c`` running :mod:`symbp._usercode_child`, which imports only NumPy and the user's module
  (no SymPy, no symbp: it starts in about 0.1 s). The parent sends the random points on the child's
  stdin and reads one answer per point back. The child's address space is capped at ``memory_mb``
  (``RLIMIT_AS``; a ``MemoryError`` is reported as "used more than ... MB"), and the parent stops it
  (``SIGKILL`` to its process group, so processes it started go too) once ``seconds`` have passed
  since it was ready. Whatever the code does (raise, ``sys.exit``, ``os._exit``, a signal, an
  endless loop, printing), the parent gets a :class:`Run`: the answers delivered and, if it stopped
  early, what happened, in words.
* A Python callable given to :func:`symbp.verify` runs **in-process** (closures and lambdas cannot in
  general be sent to a fresh process): every exception and ``SystemExit`` it raises is caught and
  becomes what happened; ``KeyboardInterrupt`` is not caught, since in-process it cannot be told
  apart from the person at the keyboard pressing Ctrl-C. It has no time or memory limit, and
  ``os._exit`` ends the calling process: pass a :class:`CodeFile` for code you want bounded.

Framework code: a :class:`CodeFile` of ``kind = "torch"`` names a ``torch.autograd.Function``
subclass, of ``kind = "jax"`` a ``jax.custom_vjp`` function; the child imports the framework (before
the time limit starts) and calls its forward and backward itself (see :mod:`symbp._usercode_child`).
A missing framework is a :class:`SymbpError` naming the extra to install, before any process starts.
A Function subclass or custom_vjp function passed as a Python callable is recognised and run the
same way, in-process.

This bounds mistakes, not malice: the child runs with the user's rights, files and network. It is
no sandbox; run untrusted code in a container.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from . import _usercode_child as child
from .errors import SymbpError, closest

SECONDS = 60
MEMORY_MB = 4096
KINDS = ("numpy", "torch", "jax")
DTYPES = ("float64", "float32")
STARTUP_SECONDS = 60  # for the child to import NumPy and say it is ready (not the user's time)


@dataclass(frozen=True)
class CodeFile:
    """A backward function in a Python file, to run in a child process under limits.

    >>> code = CodeFile("backward.py", seconds=5)
    >>> code.function, code.seconds, code.memory_mb, code.label
    ('backward', 5, 4096, 'backward')
    """

    path: Path
    function: str = "backward"
    seconds: float = SECONDS
    memory_mb: int = MEMORY_MB
    _: KW_ONLY  # the options below are given by name only
    cwd: Path | None = None  # the child's working directory (and HOME, TMPDIR); None: the caller's
    quiet: bool = False  # discard what the code prints (symbp grade); False: it goes to our stderr
    confine: bool = False  # Landlock (Linux): read only Python and sys.path, write only cwd (see _usercode_child)
    kind: str = "numpy"  # "torch": a torch.autograd.Function subclass; "jax": a jax.custom_vjp function
    dtype: str = "float64"  # the dtype the inputs are given in ("float32" to judge a float32 pass)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if self.kind not in KINDS:
            raise SymbpError(f"code.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}"
                             f"{closest(str(self.kind), KINDS)}")
        if self.dtype not in DTYPES:
            raise SymbpError(f"code.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def label(self) -> str:
        return self.function


@dataclass
class Run:
    """What running user code at the points gave: ``outputs[k]`` the answer at point ``k``
    (``{name: array, or the reason it is not an array of numbers}``) for each point delivered, in
    order; ``failure`` what stopped it before every point was delivered (``None`` if nothing did),
    ``failed_at`` the point it stopped at (``None``: before the first call, e.g. on import)."""

    label: str
    outputs: list = field(default_factory=list)
    failure: str | None = None
    failed_at: int | None = None


def require(kind: str):
    """Refuse, in one line naming the extra, framework code whose framework is not installed.

    >>> require("numpy")
    """
    if kind in child.FRAMEWORKS and importlib.util.find_spec(kind) is None:
        raise SymbpError(f"code.kind = {kind!r} needs {child.FRAMEWORKS[kind]}, which is not installed: "
                         f"pip install 'symbp[{kind}]'")


def run(code, points: list, params=(), upstream=False) -> Run:
    """Run ``code`` (a :class:`CodeFile` or a callable ``backward(values) -> dict``) at each point;
    ``params`` (the network's parameters, in order) are the inputs of framework code after ``x, y``;
    ``upstream``: the network is one layer judged on its own (``y`` its upstream gradient), so framework
    code may be a layer (see :func:`symbp._usercode_child.framework_backward`)."""
    if isinstance(code, CodeFile):
        require(code.kind)
        return run_file(code, points, params, upstream)
    kind = child.kind_of(code)
    if kind != "numpy":
        label = getattr(code, "__name__", None) or type(code).__name__
        wrapped = child.framework_backward(kind, code, tuple(params), upstream=upstream)
        wrapped.__name__ = label
        return call(wrapped, points, base=_source_dir(getattr(code, "backward", None) or getattr(code, "bwd", None)))
    return call(code, points)


# --------------------------------------------------------------------------- in-process


def _source_dir(function) -> str:
    function = getattr(function, "__func__", function)
    target = getattr(function, "__code__", None) or getattr(getattr(function, "__call__", None), "__code__", None)
    filename = target.co_filename if target is not None else ""
    return os.path.dirname(os.path.realpath(filename)) if filename and not filename.startswith("<") else os.getcwd()


def call(function, points: list, base=None) -> Run:
    """Call a Python callable at each point, in this process.

    >>> import numpy as np
    >>> r = call(lambda values: {"W1": values["x"] * 2}, [{"x": np.ones((1, 2))}])
    >>> r.outputs[0]["W1"].tolist(), r.failure
    ([[2.0, 2.0]], None)
    >>> call(lambda values: 1 / 0, [{}]).failure.split(" (")[0]
    '<lambda> raised ZeroDivisionError: division by zero'
    """
    label = getattr(function, "__name__", None) or type(function).__name__
    out = Run(label)
    base = base or _source_dir(function)
    for k, values in enumerate(points):
        try:
            answer = child.plain_answer(function({name: array.copy() for name, array in values.items()}))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the user's code: every other way out is an answer
            out.failure, out.failed_at = f"{label} {child.describe(exc, base)}", k
            return out
        if isinstance(answer, str):
            out.failure, out.failed_at = f"{label} {answer}", k
            return out
        out.outputs.append(answer)
    return out


# --------------------------------------------------------------------------- in a child process


class _Builtins(pickle.Unpickler):
    """Unpickles builtins only: a frame naming any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the answer names {module}.{name}")


def _decode(answer):
    import numpy as np

    if isinstance(answer, str):
        return answer
    out = {}
    for name, value in answer.items():
        if isinstance(value, str):
            out[str(name)] = value
            continue
        dtype, shape, data = value
        dtype = np.dtype(dtype)
        if dtype.kind not in child.NUMERIC_KINDS or dtype.fields is not None:
            raise pickle.UnpicklingError(f"dtype {dtype}")
        out[str(name)] = np.frombuffer(data, dtype=dtype).reshape(tuple(shape)).copy()
    return out


def _request(code: CodeFile, points, params=(), upstream=False) -> bytes:
    import numpy as np

    arrays = [{name: np.ascontiguousarray(v, dtype=float) for name, v in point.items()} for point in points]
    return pickle.dumps({"path": str(code.path.resolve()), "function": code.function, "memory_mb": code.memory_mb,
                         "confine": code.confine,
                         "kind": code.kind, "dtype": code.dtype, "params": list(params), "upstream": bool(upstream),
                         "points": [{n: (a.dtype.str, a.shape, a.tobytes()) for n, a in p.items()}
                                    for p in arrays]}, protocol=4)


def _source() -> str:
    return Path(child.__file__).read_text(encoding="utf-8")


def _stop(proc):
    """SIGKILL the child's process group (the child and anything it started), before it is reaped."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError, OSError):
        try:
            proc.kill()
        except OSError:
            pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def run_file(code: CodeFile, points: list, params=(), upstream=False) -> Run:
    """Run a :class:`CodeFile` at each point in a fresh child process, under its limits."""
    env = dict(os.environ)
    popen = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    if code.cwd is not None:
        popen["cwd"] = str(code.cwd)
        env.update(HOME=str(code.cwd), TMPDIR=str(code.cwd))
    if code.quiet:
        popen["stderr"] = subprocess.DEVNULL
    if os.name == "posix":
        popen["start_new_session"] = True  # its own process group: stopped as one; Ctrl-C reaches only us
    proc = subprocess.Popen([sys.executable, "-c", _source()], **popen)
    try:
        return _talk(proc, code, points, params, upstream)
    finally:
        _stop(proc)
        proc.stdout.close()
        proc.wait()


class _Channel:
    """The child's answers: length-prefixed frames read against a deadline."""

    def __init__(self, proc, cap):
        self.proc, self.cap = proc, cap
        self.fd = proc.stdout.fileno()
        self.buffer = bytearray()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)

    def frame(self, deadline):
        """The next frame; ``"eof"`` when the child closed its end; ``"late"`` past the deadline;
        ``"garbled"`` when what arrived is no frame of ours."""
        while True:
            if len(self.buffer) >= 8:
                (length,) = struct.unpack("<Q", self.buffer[:8])
                if length > self.cap:
                    return ("garbled",)
                if len(self.buffer) >= 8 + length:
                    data = bytes(self.buffer[8:8 + length])
                    del self.buffer[:8 + length]
                    try:
                        frame = _Builtins(io.BytesIO(data)).load()
                    except Exception:  # noqa: BLE001 - anything unreadable is garbled
                        return ("garbled",)
                    return frame if isinstance(frame, tuple) and frame and isinstance(frame[0], str) else ("garbled",)
            left = deadline - time.monotonic()
            if left <= 0:
                return ("late",)
            if not self.selector.select(min(left, 1.0)):
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return ("eof",)
            self.buffer += chunk


def _talk(proc, code: CodeFile, points, params=(), upstream=False) -> Run:
    label = code.label
    out = Run(label)
    try:
        proc.stdin.write(_request(code, points, params, upstream))
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    channel = _Channel(proc, cap=max(code.memory_mb, 64) * 1024 * 1024)
    frame = channel.frame(time.monotonic() + STARTUP_SECONDS)
    if frame[0] != "ready":
        out.failure = f"the child process did not start within {STARTUP_SECONDS} s" if frame[0] == "late" else \
            f"the child process failed to start ({_ended(proc)})"
        return out
    deadline = time.monotonic() + code.seconds
    actor, imported = f"importing {code.path.name}", False
    while True:
        frame = channel.frame(deadline)
        kind, who = frame[0], label if imported else actor
        if kind == "imported":
            imported = True
            continue
        if kind == "point" and len(frame) == 3 and frame[1] == len(out.outputs):
            try:
                answer = _decode(frame[2])
            except (pickle.UnpicklingError, TypeError, ValueError, AttributeError):
                kind = "garbled"
            else:
                if isinstance(answer, str):
                    out.failure, out.failed_at = f"{label} {answer}", frame[1]
                    return out
                out.outputs.append(answer)
                continue
        if kind == "done" and len(out.outputs) == len(points):
            return out
        if kind == "nofunction" and len(frame) == 2 and isinstance(frame[1], list):
            raise SymbpError(f"code.function: '{code.path.name}' defines no function '{code.function}'"
                             f"{closest(code.function, [str(k) for k in frame[1]])}")
        if kind == "notkind" and len(frame) == 2 and isinstance(frame[1], str):
            raise SymbpError(f"code.function: '{code.function}' in {code.path.name} {frame[1]}")
        if kind == "failed" and len(frame) == 3 and isinstance(frame[2], str):
            out.failure, out.failed_at = f"{who} {frame[2]}", frame[1]
            return out
        out.failed_at = len(out.outputs) if imported else None
        if kind == "late":
            out.failure = f"{who} ran past {code.seconds:g} s"
        elif kind == "eof":
            out.failure = f"{who}: {_ended(proc, deadline)}"
        else:
            out.failure = f"{who}: the process sent an answer symbp cannot read"
        return out


def _ended(proc, deadline=None) -> str:
    """How the child ended, in words (waiting a little for it to be gone)."""
    try:
        status = proc.wait(timeout=max(1.0, (deadline - time.monotonic()) if deadline else 5.0))
    except subprocess.TimeoutExpired:
        return "the process closed its answer channel and did not end"
    if status < 0:
        return f"the process was killed by signal {-status} ({_signal_name(-status)})"
    return f"the process exited with status {status} before returning"


def check_limit(value, what: str, *, whole: bool = False):
    """A positive limit (``seconds``; ``memory_mb`` whole), or a one-line :class:`SymbpError`.

    >>> check_limit(2.5, "limits.seconds")
    2.5
    >>> check_limit(0, "limits.memory_mb", whole=True)
    Traceback (most recent call last):
    ...
    symbp.errors.SymbpError: limits.memory_mb: expected a whole number of megabytes > 0, got 0
    """
    if whole:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SymbpError(f"{what}: expected a whole number of megabytes > 0, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SymbpError(f"{what}: expected a number of seconds > 0, got {value!r}")
    return value
