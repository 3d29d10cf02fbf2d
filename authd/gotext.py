"""Go-compatible text: `%q` quoting, `strconv.ParseBool` and Kubernetes' aggregate errors.

Upstream's messages are Go's formatting of Go values; authd reproduces the few shapes it prints
(quoted strings, boolean spellings, joined error lists) here and nowhere else, so a message
reads the same whichever module produced it. Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

GO_TRUE: frozenset[str] = frozenset({"1", "t", "T", "TRUE", "true", "True"})
"""The spellings `strconv.ParseBool` reads as true."""
GO_FALSE: frozenset[str] = frozenset({"0", "f", "F", "FALSE", "false", "False"})
"""The spellings `strconv.ParseBool` reads as false."""

_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(text: str) -> str:
    """Quote a string as Go's `%q` (`strconv.Quote`) does.

    Printable characters stay as they are (non-ASCII too); quotes, backslashes and the C escapes
    are backslashed; other control characters become `\\xNN`, other unprintable characters
    `\\uNNNN` or `\\UNNNNNNNN`. A byte smuggled in by `surrogateescape` prints as `\\xNN`, as Go
    prints a byte that is not UTF-8.
    """
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(_quote_char(char) for char in text) + '"'


def _quote_char(char: str) -> str:
    """One character of `go_quote`'s output."""
    escaped = _ESCAPES.get(char)
    if escaped is not None:
        return escaped
    return char if char.isprintable() else _escape_code(ord(char))


def _escape_code(code: int) -> str:
    """Go's escape for an unprintable code point."""
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate is not a rune: Go prints U+FFFD
        return "\\ufffd"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def parse_bool(text: str) -> bool:
    """Read a boolean as Go's `strconv.ParseBool` does (exact spellings, no blanks).

    Raises:
        ValueError: `strconv.ParseBool: parsing "<text>": invalid syntax`, Go's text.
    """
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def aggregate_message(messages: Sequence[str]) -> str:
    """Join error texts as Kubernetes' `utilerrors.NewAggregate` prints them.

    One message prints alone; several (duplicates dropped) print as `[a, b]`.
    """
    unique = list(dict.fromkeys(messages))
    if len(unique) == 1:
        return unique[0]
    return "[" + ", ".join(unique) + "]"
