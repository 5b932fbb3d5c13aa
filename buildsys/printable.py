"""What reaches a terminal or a page: text from users (names, values, log lines, error messages)
with its control, bidi and invisible characters shown as escapes (`\\x1b`, `\\u202e`), so that a
name cannot move the cursor, retitle the window, hide text or reorder a line it is printed in.

The CLI's output channel (`App.echo`, warnings, errors, the build reporter), the web UI's templates
and the server's JSON all go through this one rule.
"""

from __future__ import annotations

import re
from functools import cache

# C0 and C1 controls and DEL; the bidi embeddings, overrides, isolates and marks; zero-width and
# other invisible format characters (not U+200D, which joins emoji); line and paragraph separators;
# the byte-order mark; lone surrogates; interlinear annotations; Unicode tag characters.
_UNSAFE = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f"
)


@cache
def _in_text() -> re.Pattern[str]:
    """The unsafe characters (newlines and tabs stay: they lay out text). Compiled when first
    needed: text that `str.isprintable` passes holds none, and most processes print only such."""
    return re.compile(f"[{_UNSAFE}]")


@cache
def _in_line() -> re.Pattern[str]:
    """One line (a name, a value, a log line): the unsafe characters, newlines and tabs."""
    return re.compile(f"[\t\n{_UNSAFE}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` with every unsafe character shown as its escape; `one_line` escapes newlines and tabs
    too (a name or a value that must not start a line of its own)."""
    if text.isprintable():  # every unsafe character is a control, format, separator or surrogate
        return text
    pattern = _in_line() if one_line else _in_text()
    return pattern.sub(_escape, text) if pattern.search(text) else text


def unsafe_characters(text: str) -> list[str]:
    """The unsafe characters `text` holds (newlines and tabs included), as escapes, in order."""
    return [] if text.isprintable() else [_escape(m) for m in _in_line().finditer(text)]


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a JSON string spells a character past U+FFFF as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable_json(text: str) -> str:
    """A JSON text with the unsafe characters in its strings spelled as `\\uXXXX` escapes: the same
    document once parsed, but safe to show (`curl` to a terminal). Outside strings JSON holds none."""
    if text.isprintable():
        return text
    pattern = _in_text()
    return pattern.sub(_json_escape, text) if pattern.search(text) else text
