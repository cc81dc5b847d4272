"""The ASCII rule: every text symbp parses (claims, expressions, ``--at``, sizes) is plain ASCII.

Why refuse rather than normalise: Python's ``ast`` reads identifiers in NFKC form, so a claim with a
fullwidth ``ａ3`` or a mathematical italic ``𝑎3`` would silently be read as ``a3``, while ``int()``
reads Arabic-Indic digits as widths, and other parts of symbp (``--at`` names, spec keys) compare
names as typed. Refusing every non-ASCII character, with the character, its Unicode name, its column
and the ASCII it looks like, keeps one rule everywhere: what you see is not always what you typed,
so symbp says so.

>>> first_non_ascii("a3 - y"), first_non_ascii("ａ3")
(None, (1, 'ａ'))
>>> require_ascii("a３", "formula")
Traceback (most recent call last):
...
symbp.errors.SymbpError: formula 'a３': '３' (U+FF13 FULLWIDTH DIGIT THREE) at column 2 is not ASCII; write '3'
"""

from __future__ import annotations

import unicodedata

from .errors import SymbpError

#: Lookalikes NFKC does not map to ASCII: typographic signs and common Cyrillic/Greek homoglyphs.
_LOOKALIKES = {
    "\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-",
    "\u00d7": "*", "\u22c5": "*", "\u00b7": "*", "\u2217": "*", "\u00f7": "/", "\u2215": "/",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0445": "x",
    "\u0443": "y", "\u0456": "i", "\u0458": "j", "\u0455": "s", "\u0410": "A", "\u0412": "B",
    "\u0415": "E", "\u041a": "K", "\u041c": "M", "\u041d": "H", "\u041e": "O", "\u0420": "P",
    "\u0421": "C", "\u0422": "T", "\u0425": "X", "\u03bf": "o", "\u039f": "O", "\u0391": "A",
    "\u0392": "B", "\u0395": "E", "\u0396": "Z", "\u0397": "H", "\u0399": "I", "\u039a": "K",
    "\u039c": "M", "\u039d": "N", "\u03a1": "P", "\u03a4": "T", "\u03a7": "X", "\u03a5": "Y",
}


def first_non_ascii(text: str):
    """``(column, character)`` of the first non-ASCII character of ``text`` (1-based), or None."""
    for k, ch in enumerate(text):
        if ord(ch) > 127:
            return k + 1, ch
    return None


def lookalike(ch: str) -> str | None:
    """The ASCII that ``ch`` looks like or stands for (``'ａ'`` -> ``'a'``, ``'٣'`` -> ``'3'``), or None."""
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    folded = unicodedata.normalize("NFKC", ch)
    if folded.isascii() and folded:
        return folded
    digit = unicodedata.digit(ch, None)
    return None if digit is None else str(digit)


def describe(ch: str, column: int) -> str:
    """``"'ａ' (U+FF41 FULLWIDTH LATIN SMALL LETTER A) at column 1 is not ASCII; write 'a'"``."""
    name = unicodedata.name(ch, "unnamed character")
    shown = ch if ch.isprintable() and not ch.isspace() else ascii(ch)[1:-1]
    ascii_form = lookalike(ch)
    if ascii_form and ascii_form.isspace():
        advice = "write a plain space"
    else:
        advice = f"write '{ascii_form}'" if ascii_form else "symbp reads ASCII only"
    return f"'{shown}' (U+{ord(ch):04X} {name}) at column {column} is not ASCII; {advice}"


def one_line(message: str) -> str:
    """``message`` with line breaks and other control characters escaped (``\\n``), for one-line errors.

    >>> one_line("'a\\n+ b' is not allowed")
    "'a\\\\n+ b' is not allowed"
    """
    return "".join(ascii(ch)[1:-1] if ch != "\t" and (ord(ch) < 32 or ord(ch) == 127) else ch for ch in message)


def require_ascii(text: str, what: str) -> None:
    """Raise :class:`SymbpError` naming the first non-ASCII character of ``text`` (as ``what``)."""
    found = first_non_ascii(text)
    if found:
        column, ch = found
        raise SymbpError(f"{what} {text!r}: {describe(ch, column)}")
