"""Table rows ↔ store records for the SQL store (JSON columns, booleans, column lists)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from buildsys.errors import StateError
from buildsys.store.base import FlowRun, LogLine, Resource, WorkerInfo

RESOURCE_COLUMNS = "kind, name, spec, owner, source, id, created_at, updated_at, serial"

RUN_FIELDS = (
    "id",
    "name",
    "deployment",
    "deployment_id",
    "flow_name",
    "pool",
    "queue",
    "parameters",
    "job_variables",
    "state",
    "state_name",
    "state_message",
    "scheduled_at",
    "created_at",
    "started_at",
    "ended_at",
    "worker",
    "lease_expires_at",
    "attempt",
    "max_retries",
    "retry_delay_seconds",
    "infrastructure_pid",
    "auto_scheduled",
    "idempotency_key",
    "tags",
    "exit_code",
    "parent_task_run_id",
    "run_count",
    "prefect",
)
RUN_COLUMNS = ", ".join(RUN_FIELDS)
_JSON_RUN_FIELDS = {"parameters", "job_variables", "tags", "prefect"}

LOG_FIELDS = ("run_id", "seq", "ts", "message", "stream", "level", "logger", "task_run_id")
LOG_COLUMNS = ", ".join(LOG_FIELDS)
WORKER_OFFLINE_AFTER_S = 90.0  # Prefect: 3 × the 30 s heartbeat interval


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def check_json(value: Any, what: str) -> None:
    """StateError when `value` cannot be stored as JSON (sets, objects, NaN …)."""
    from buildsys.storable import value_problems, where

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StateError(f"{what} cannot be stored: it is not plain JSON ({exc})") from exc
    for at, problem in value_problems(value):
        raise StateError(f"{what} cannot be stored: {where(at) or 'the value'}: {problem}")


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


DAMAGED_HINT = (
    "restore the store from a `buildsys state export` file (`buildsys state import`), "
    "or move the store away and apply again to start afresh"
)


class DamagedRecord(StateError):
    """A record the store holds but cannot read (edited by hand, bytes flipped): says which record
    (the table, and the row by its name or id); the store adds where it is kept (`located`)."""

    def __init__(self, what: str, table: str, text: Any, expected: str) -> None:
        self.detail = f"{what} (table {table}) is {repr(text)[:60]}, not {expected}"
        super().__init__(f"the state store is damaged: {self.detail}", hint=DAMAGED_HINT)

    def located(self, store: str) -> StateError:
        return StateError(f"the state store {store} is damaged: {self.detail}", hint=self.hint)


_KINDS_OF_JSON: dict[type, str] = {dict: "a JSON object", list: "a JSON list"}


def read_json(text: Any, what: str, table: str, kind: type | None = None, *, reader: Callable[[str], Any] = json.loads) -> Any:
    """A JSON column's value; DamagedRecord naming the record when it is not JSON (of `kind`)."""
    try:
        value = reader(text) if isinstance(text, str) else _NOT_TEXT
    except (ValueError, RecursionError):
        value = _NOT_TEXT
    if value is _NOT_TEXT or (kind is not None and not isinstance(value, kind)):
        raise DamagedRecord(what, table, text, _KINDS_OF_JSON.get(kind, "JSON") if kind else "JSON")
    return value


_NOT_TEXT = object()


class SharedSpecs:
    """Decodes the specs of one listing so that what repeats is held once: field names, short
    strings, and equal field values (10,000 deployments of one flow carry one parameter schema,
    one job-variables mapping, ...). A listing of 10,000 deployments takes ~11 MB, not ~60 MB.
    The shared values are read-only, like the rest of a Resource.

    `known`: spec texts (as `dump` writes them) the caller already holds the value of, e.g. a
    plan's desired specs. A row whose text is one of them gets that value, not decoded again:
    equal texts are equal JSON, so the value is the one decoding would give (same types too)."""

    def __init__(self, known: Mapping[str, Any] | None = None) -> None:
        self._known = known or {}
        self._memo: dict[str, Any] = {}
        self._encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
        self._sources: dict[str, Any] = {}

    def source(self, text: str) -> Any:
        """A `source` column: one apply writes the same text on every row it touches, decoded once."""
        value = self._sources.get(text)
        if value is None:
            value = json.loads(text)
            if len(self._sources) < 1024:
                self._sources[text] = value
        return value

    def __call__(self, text: str) -> Any:
        value = self._known.get(text) if self._known else None
        if value is not None:
            return value
        value = json.loads(text)
        if type(value) is not dict:
            return value
        out = {}
        for key, field in value.items():
            if type(field) is str:
                if len(field) <= 64:
                    field = sys.intern(field)
            elif (type(field) is dict or type(field) is list) and field:
                field = self._memo.setdefault(self._encode(field), field)
            out[sys.intern(key)] = field
        return out


def resource_from_row(row: tuple[Any, ...], read_spec: Callable[[str], Any] = json.loads) -> Resource:
    kind, name, spec, owner, source, rid, created, updated, serial = row
    what = f"{kind} {name!r}"
    read_source = read_spec.source if isinstance(read_spec, SharedSpecs) else json.loads
    return Resource(
        kind=kind,
        name=name,
        spec=read_json(spec, f"the spec of {what}", "resources", dict, reader=read_spec),
        owner=owner,
        source=None if source is None else read_json(source, f"the source of {what}", "resources", dict, reader=read_source),
        id=rid,
        created_at=float(created),
        updated_at=float(updated),
        serial=int(serial),
    )


def run_from_row(row: tuple[Any, ...]) -> FlowRun:
    data = dict(zip(RUN_FIELDS, row, strict=True))
    for key in _JSON_RUN_FIELDS:
        kind = list if key == "tags" else dict
        data[key] = read_json(data[key], f"the {key} of flow run {data['id']}", "flow_runs", kind)
    data["tags"] = tuple(data["tags"])
    data["auto_scheduled"] = bool(data["auto_scheduled"])
    return FlowRun(**data)


def run_to_row(run: FlowRun) -> tuple[Any, ...]:
    values: list[Any] = []
    for key in RUN_FIELDS:
        value = getattr(run, key)
        if key in _JSON_RUN_FIELDS:
            value = dump(list(value) if key == "tags" else dict(value))
        elif key == "auto_scheduled":
            value = int(bool(value))
        values.append(value)
    return tuple(values)


def log_from_row(row: tuple[Any, ...]) -> LogLine:
    run_id, seq, ts, message, stream, level, logger, task_run_id = row
    return LogLine(
        run_id=run_id,
        seq=int(seq),
        ts=float(ts),
        message=message,
        stream=stream,
        level=None if level is None else int(level),
        logger=logger,
        task_run_id=task_run_id,
    )


def worker_from_row(row: tuple[Any, ...], now: float) -> WorkerInfo:
    pool, name, last, wtype = row
    status = "ONLINE" if now - float(last) <= WORKER_OFFLINE_AFTER_S else "OFFLINE"
    return WorkerInfo(name=name, pool=pool, last_heartbeat=float(last), status=status, type=wtype)


def indexed_columns(kind: str, spec: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The deployment fields claims filter on, kept in columns: (work pool, concurrency limit)."""
    if kind != "deployment":
        return None, None
    pool = spec.get("work_pool_name")
    limit = spec.get("concurrency_limit")
    return (
        pool if isinstance(pool, str) else None,
        limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
    )


_ADJECTIVES = (
    "amber", "agile", "bold", "brave", "bright", "calm", "clever", "cosmic", "crimson", "daring",
    "eager", "fancy", "fast", "gentle", "golden", "happy", "hidden", "humble", "jolly", "keen",
    "lively", "lucky", "mellow", "merry", "nimble", "noble", "polite", "proud", "quick", "quiet",
    "rapid", "rustic", "shiny", "silent", "smart", "snappy", "solid", "spry", "steady", "sunny",
    "swift", "tidy", "vivid", "warm", "wise", "witty",
)
_ANIMALS = (
    "badger", "bear", "beaver", "bison", "camel", "cheetah", "condor", "crane", "dingo", "dolphin",
    "eagle", "falcon", "ferret", "fox", "gecko", "heron", "ibis", "jackal", "koala", "lemur", "lion",
    "lynx", "marmot", "mole", "moose", "newt", "ocelot", "orca", "otter", "owl", "panda", "parrot",
    "pelican", "puffin", "quail", "raven", "robin", "salmon", "seal", "shrew", "sloth", "swan",
    "tapir", "tiger", "toucan", "walrus", "weasel", "wolf", "wombat", "yak", "zebra",
)


def run_name() -> str:
    """A readable, practically unique run name like Prefect's: adjective-animal-xxxx."""
    import secrets  # on first use (random, base64: ~1.3 ms of every plan's start)

    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.token_hex(2)}"
