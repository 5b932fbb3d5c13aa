"""What reaches a terminal or a page: text from users (names, values, log lines, error messages)
with its control, bidi and invisible characters shown as escapes (`\\x1b`, `\\u202e`), so that a
name cannot move the cursor, retitle the window, hide text or reorder a line it is printed in.

The CLI's output channel (`App.echo`, warnings, errors, the build reporter), the web UI's templates
and the server's JSON all go through this one rule.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; the bidi embeddings, overrides, isolates and marks; zero-width and
# other invisible format characters (not U+200D, which joins emoji); line and paragraph separators;
# the byte-order mark; lone surrogates; interlinear annotations; Unicode tag characters.
_UNSAFE = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u180e\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f"
)
_IN_TEXT = re.compile(f"[{_UNSAFE}]")  # newlines and tabs stay: they lay out text
_IN_LINE = re.compile(f"[\t\n{_UNSAFE}]")  # one line: a name, a value, a log line


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` with every unsafe character shown as its escape; `one_line` escapes newlines and tabs
    too (a name or a value that must not start a line of its own)."""
    pattern = _IN_LINE if one_line else _IN_TEXT
    return pattern.sub(_escape, text) if pattern.search(text) else text


def unsafe_characters(text: str) -> list[str]:
    """The unsafe characters `text` holds (newlines and tabs included), as escapes, in order."""
    return [_escape(m) for m in _IN_LINE.finditer(text)]


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a JSON string spells a character past U+FFFF as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable_json(text: str) -> str:
    """A JSON text with the unsafe characters in its strings spelled as `\\uXXXX` escapes: the same
    document once parsed, but safe to show (`curl` to a terminal). Outside strings JSON holds none."""
    return _IN_TEXT.sub(_json_escape, text) if _IN_TEXT.search(text) else text
