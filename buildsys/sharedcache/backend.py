"""What a shared-cache backend is (bytes by content key) and how it fails; one module per backend
beside this one (server.py, s3.py)."""

from __future__ import annotations

from typing import Protocol

from buildsys.errors import BuildsysError

MAX_ENTRY_BYTES = 1 << 20  # an entry (outputs and record) larger than this is neither written nor read


class SharedCacheError(BuildsysError):
    """The shared cache is configured wrongly (a bad URL, a missing library)."""


class Unreachable(Exception):
    """The backend did not answer, or answered with an error that is not about one entry."""


class WriteRefused(Exception):
    """The backend refused a write (a token or credentials that may only read)."""


class Backend(Protocol):
    """Where entries live: bytes by content key. Raises Unreachable when it cannot answer."""

    where: str  # for messages: the URL without secrets

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def has(self, key: str) -> bool: ...
