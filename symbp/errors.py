"""The one exception type for bad input.

Every mistake a user can make (an unknown activation, sizes that do not make a network, a formula
that does not parse, a spec field of the wrong type) raises :class:`SymbpError`, whose message names
the culprit. The command line turns it into one line on stderr and exit code 2; anything else that
escapes is a bug in symbp.
"""

from __future__ import annotations

import difflib


class SymbpError(ValueError):
    """Bad input, with a message naming the culprit (a token, a shape, a field)."""


def closest(word: str, known) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for an unknown ``word``, or ``""``.

    >>> closest("rleu", ["relu", "tanh"])
    " (did you mean 'relu'?)"
    """
    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class UnknownName(SymbpError, KeyError):
    """A name a mapping does not hold (``grads["W9"]``): a :class:`SymbpError` whose message names it
    and the known names, and a ``KeyError``, so that ``in`` and ``.get`` work as for any mapping."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""
