"""What the state store can hold and address: the names of pools, queues, deployments, flows and
steps, and the values stored with them. One rule for `validate`, `plan` and every API body, so
that nothing passes a check only to break apply, a database or a URL later.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from buildsys.printable import printable, unsafe_characters

# Prefect refuses these in flow, work pool and work queue names; `/` also splits FLOW/DEPLOYMENT
# and URL paths, `%` is read as an escape in a URL.
BANNED_IN_NAMES = "/%&<>"
INT_RANGE = (-(2**63), 2**63 - 1)  # PostgreSQL's BIGINT and SQLite's INTEGER

Path_ = tuple[str | int, ...]


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a stored, addressable name (None when it can). Kept per short name: a
    project names one pool and one queue in each of its thousands of deployments (long names,
    which a request may send, are not kept)."""
    return _short_name_problem(name) if len(name) <= 256 else _name_problem(name)


@lru_cache(maxsize=4096)
def _short_name_problem(name: str) -> str | None:
    return _name_problem(name)


def _name_problem(name: str) -> str | None:
    if not name.strip():
        return "is empty"
    unsafe = unsafe_characters(name)
    if unsafe:
        return f"holds control or invisible characters ({', '.join(dict.fromkeys(unsafe))})"
    banned = [c for c in BANNED_IN_NAMES if c in name]
    if banned:
        return f"holds {' '.join(repr(c) for c in banned)} (names may not hold any of {' '.join(BANNED_IN_NAMES)})"
    if name in (".", ".."):
        return "is a path segment (`.` or `..`) that a URL cannot address"
    if name != name.strip():
        return "starts or ends with whitespace"
    return None


def value_problems(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """Every part of a JSON-like value the store cannot hold as it is, with its path: integers past
    64 bits, floats that are not finite (NaN never equals itself, so a plan would always differ),
    NUL characters (PostgreSQL refuses them) and lone surrogates (not encodable as UTF-8)."""
    # A node's path is kept as a link (parent link, key) and made into a tuple only for a problem:
    # a whole project is walked on every load and nearly every value is fine.
    stack: list[tuple[Any, Any]] = [(None, value)]
    while stack:
        link, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not item.isascii():  # the only texts text_problem can refuse
                problem = text_problem(item)
                if problem:
                    yield _path(path, link), problem
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT_RANGE[0] <= item <= INT_RANGE[1]:
                shown = str(item) if len(str(item)) <= 24 else f"{str(item)[:20]}… ({len(str(item))} digits)"
                yield _path(path, link), f"the integer {shown} is out of range (stored integers are 64-bit: at most 2**63-1 in size)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                yield _path(path, link), f"the number {item} cannot be stored (JSON has no NaN or infinity)"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if isinstance(key, str) and ("\x00" in key or not key.isascii()):
                    key_problem = text_problem(key)
                    if key_problem:
                        yield _path(path, link), f"the key '{printable(key, one_line=True)}': {key_problem}"
                stack.append(((link, key), child))
        elif isinstance(item, list | tuple):
            stack.extend(((link, i), child) for i, child in reversed(list(enumerate(item))))


def _path(prefix: Path_, link: Any) -> Path_:
    keys: list[str | int] = []
    while link is not None:
        link, key = link
        keys.append(key)
    return (*prefix, *reversed(keys))


def text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "the text holds a NUL character (\\x00), which databases cannot store"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "the text holds a lone surrogate (\\ud800-\\udfff), which is not a character"
    return None



def resource_name_problem(kind: str, name: str) -> str | None:
    """Why a stored resource cannot be called `name` (a deployment is FLOW/DEPLOYMENT)."""
    if kind != "deployment":
        return name_problem(name)
    flow, _, deployment = name.partition("/")
    for part, what in ((flow, "its flow name"), (deployment, "its deployment name")):
        problem = name_problem(part)
        if problem:
            return f"{what} '{printable(part, one_line=True)}' {problem}"
    return None


def where(path: Path_, root: str = "") -> str:
    """A value's path as `root.parameters.items[2]`."""
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
