"""Progress of a long command, on stderr: which step it is at and for how long.

How it works: a command wraps each of its steps (building the network, deriving, verifying,
lambdify, the numeric check, the document) in :meth:`Progress.step`. On a terminal, a step that runs
past a second gets one line, rewritten in place every half second by a small background thread
(``symbp derive: lambdify ... 12 s (estimated 40 s)``), and finished with its time; nothing is shown
for quicker steps. With ``wanted=True`` (``--progress``) every step is shown from its start, and when
stderr is not a terminal (a log file) each step gets two plain lines: its start and its time. The
steps themselves are not touched: SymPy's work goes on in the main thread, the thread only prints.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager


def duration(seconds: float) -> str:
    """A time in words, rounded as an estimate deserves.

    >>> duration(0.4), duration(42), duration(600), duration(7300), duration(5e6)
    ('0.4 s', '42 s', '10 min', '2.0 h', '58 days')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


class Progress:
    """Steps of one command on ``stream`` (stderr). ``wanted``: ``None`` (the default) shows steps
    past a second on a terminal only; ``True`` shows every step, terminal or not; ``False`` nothing.

    >>> import io
    >>> log = io.StringIO()
    >>> with Progress("symbp derive", wanted=True, stream=log).step("deriving"):
    ...     pass
    >>> log.getvalue().splitlines()[0]
    'symbp derive: deriving ...'
    """

    def __init__(self, command: str, wanted=None, *, stream=None, patience: float = 1.0):
        self.command, self.stream = command, stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.wanted = self.terminal if wanted is None else bool(wanted)
        self.patience = patience if wanted is None else 0.0

    @contextmanager
    def step(self, label: str, estimate: float | None = None):
        """Show ``label`` while the body runs (``estimate``: its expected seconds, if known)."""
        if not self.wanted:
            yield
            return
        start = time.perf_counter()
        guess = f" (estimated {duration(estimate)})" if estimate is not None else ""
        if not self.terminal:
            self._print(f"{self.command}: {label} ...{guess}")
            try:
                yield
            finally:
                self._print(f"{self.command}: {label}: {duration(time.perf_counter() - start)}")
            return
        stop, shown = threading.Event(), []

        def tick():
            while not stop.wait(0.5 if shown else max(self.patience, 0.05)):
                shown.append(True)
                self._line(f"{label} ... {duration(time.perf_counter() - start)}{guess}")

        ticker = threading.Thread(target=tick, daemon=True)
        if self.patience == 0:
            shown.append(True)
            self._line(f"{label} ...{guess}")
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            if shown:
                self._line(f"{label}: {duration(time.perf_counter() - start)}")
                self.stream.write("\n")
                self.stream.flush()

    def _line(self, text):
        self.stream.write(f"\r{self.command}: {text}\033[K")
        self.stream.flush()

    def _print(self, text):
        print(text, file=self.stream, flush=True)
