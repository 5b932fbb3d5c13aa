"""A cache shared between machines: step results stored under their content key in a remote
backend (`buildsys server`'s cache endpoint, or an S3 bucket), so a fresh CI runner reuses what
another runner built from the same inputs. `buildsys help shared-cache` describes it for users.

An entry is JSON (never a pickle): the step's outputs and what the local cache records about the
run, sealed with the writer's key (buildsys.caches.seal) and bound to its content key. Reading
needs the key and is the default; writing needs `--cache-write` and the backend's write
permission. The engine uses a hit only after the step confirms the artifact still exists where
this machine can get it (the step's `shared` hook). A backend that cannot be reached is a warning,
never a failed build: the build goes on without it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from buildsys.records import Record
from buildsys.sharedcache.backend import MAX_ENTRY_BYTES, Backend, SharedCacheError, Unreachable, WriteRefused

FORMAT = 1
KEY_ENV = "BUILDSYS_CACHE_KEY"
URL_ENV = "BUILDSYS_CACHE"
MIN_KEY_CHARS = 32
KEY_CHARS = frozenset("0123456789abcdef")

Warn = Callable[[str], None]
_set = object.__setattr__  # a Record is frozen: its __init__ sets its fields past __setattr__


class SharedEntry(Record):
    """A step result as another runner recorded it."""

    __slots__ = __match_args__ = ("key", "step", "version", "label", "outputs", "duration", "created", "writer")
    key: str
    step: str
    version: str
    label: str
    outputs: dict[str, Any]
    duration: float
    created: float
    writer: str  # the id of the key that sealed it

    def __init__(self, key: str, step: str, version: str, label: str, outputs: dict[str, Any], duration: float,
                 created: float, writer: str) -> None:
        _set(self, "key", key)
        _set(self, "step", step)
        _set(self, "version", version)
        _set(self, "label", label)
        _set(self, "outputs", outputs)
        _set(self, "duration", duration)
        _set(self, "created", created)
        _set(self, "writer", writer)


def valid_key(key: str) -> bool:
    return 16 <= len(key) <= 128 and set(key) <= KEY_CHARS


def encode(entry: SharedEntry, secret: bytes) -> bytes:
    """The entry as stored: the payload text and its seal, in one JSON document."""
    from buildsys import caches

    payload = json.dumps(
        {"step": entry.step, "version": entry.version, "label": entry.label, "outputs": entry.outputs,
         "duration": round(entry.duration, 3), "created": round(entry.created, 3)},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    mac = caches.seal(secret, entry.key, payload.encode())
    doc = {"format": FORMAT, "key": entry.key, "writer": caches.key_id(secret), "mac": mac, "payload": payload}
    return json.dumps(doc, sort_keys=True).encode()


def decode(key: str, data: bytes, secret: bytes) -> SharedEntry:
    """The entry stored under `key`; ValueError saying why it is refused (damaged, foreign, moved)."""
    from buildsys import caches

    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"it is larger than {MAX_ENTRY_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"it is not a format-{FORMAT} entry")
    payload, mac, writer = doc.get("payload"), doc.get("mac"), doc.get("writer")
    if not isinstance(payload, str) or not isinstance(mac, str) or doc.get("key") != key:
        raise ValueError("it is damaged or stored under another key")
    if not caches.sealed_by(secret, key, payload.encode(), mac):
        mine = caches.key_id(secret)
        if writer == mine:
            raise ValueError("its signature does not match: it was altered after this key sealed it")
        raise ValueError(f"its signature does not match: it was sealed with key {writer}, not this runner's key {mine}")
    body = json.loads(payload)
    outputs = body.get("outputs")
    if not isinstance(outputs, dict):
        raise ValueError("it holds no outputs")
    return SharedEntry(key, str(body.get("step", "")), str(body.get("version", "")), str(body.get("label", "")),
                       outputs, float(body.get("duration") or 0.0), float(body.get("created") or 0.0), str(writer))


class SharedCache:
    """One build's view of a shared cache. Thread-safe. After the first failure to reach the
    backend it is `down`: one warning, then no more attempts for this build."""

    def __init__(self, backend: Backend, secret: bytes, *, write: bool, warn: Warn | None = None) -> None:
        self.backend = backend
        self.secret = secret
        self.write = write
        self.warn: Warn = warn or (lambda _text: None)
        self.down = False
        self._lock = threading.Lock()
        self.counts = {"hits": 0, "misses": 0, "refused": 0, "written": 0}

    @property
    def where(self) -> str:
        return self.backend.where

    def get(self, key: str, label: str) -> SharedEntry | None:
        """The authenticated entry for `key`, or None (absent, refused with a warning, or down)."""
        data = self._call(lambda: self.backend.get(key))
        if data is None:
            self._count("misses")
            return None
        try:
            entry = decode(key, data, self.secret)
        except ValueError as exc:
            self._count("refused")
            self.warn(f"shared cache: the entry for {label} in {self.where} is refused: {exc}")
            return None
        self._count("hits")
        return entry

    def put(self, entry: SharedEntry, *, if_absent: bool = False) -> None:
        """Store `entry` (read-only caches never do). An entry over the size bound is skipped."""
        if not self.write or self.down:
            return
        data = encode(entry, self.secret)
        if len(data) > MAX_ENTRY_BYTES:
            self.warn(f"shared cache: {entry.label}'s result is larger than {MAX_ENTRY_BYTES} bytes; not shared")
            return
        if if_absent and self._call(lambda: self.backend.has(entry.key)) is not False:
            return
        try:
            if self._call(lambda: _put(self.backend, entry.key, data)):
                self._count("written")
        except WriteRefused as exc:
            with self._lock:
                first, self.write = self.write, False
            if first:
                self.warn(f"shared cache: {exc}; results are not shared from this build")

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self.down:
            return None
        try:
            return fn()
        except Unreachable as exc:
            with self._lock:
                first, self.down = not self.down, True
            if first:
                self.warn(f"shared cache {self.where} is unavailable ({exc}); building without it")
            return None

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


def _put(backend: Backend, key: str, data: bytes) -> bool:
    backend.put(key, data)
    return True


def open_shared(
    url: str, *, write: bool = False, env: Mapping[str, str], warn: Warn | None = None
) -> SharedCache | None:
    """The shared cache `url` names (http(s)://SERVER or s3://BUCKET[/PREFIX]), or None with a
    warning when this runner has no key to authenticate entries with. A bad URL is an error."""
    say: Warn = warn or (lambda _text: None)
    backend = _backend(url.strip(), env)
    secret = env.get(KEY_ENV, "")
    if len(secret) < MIN_KEY_CHARS:
        problem = "is not set" if not secret else f"is shorter than {MIN_KEY_CHARS} characters"
        say(f"shared cache {backend.where} not used: {KEY_ENV} {problem} (entries are authenticated with it)")
        return None
    return SharedCache(backend, secret.encode(), write=write, warn=say)


def _backend(url: str, env: Mapping[str, str]) -> Backend:
    if url.startswith(("http://", "https://")):
        from buildsys.sharedcache.server import ServerBackend

        return ServerBackend(url, env)
    if url.startswith("s3://"):
        from buildsys.sharedcache.s3 import S3Backend

        return S3Backend(url, env)
    raise SharedCacheError(
        f"unknown shared cache URL {url!r}",
        hint="use http(s)://HOST:PORT (a buildsys server) or s3://BUCKET[/PREFIX]",
    )


def entry_for(key: str, step: str, version: str, label: str, outputs: Mapping[str, Any], duration: float) -> SharedEntry:
    return SharedEntry(key, step, version, label, dict(outputs), duration, time.time(), "")
