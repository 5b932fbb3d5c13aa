"""Deployment schedules (cron, interval, rrule) turned into SCHEDULED flow runs ahead of time.

Like Prefect's scheduler: for every active schedule of every deployment that is not paused (and whose
pool is not paused) the next runs are created ahead of time — at least `MIN_RUNS`, and every run in
the next `MIN_HORIZON` seconds, never more than `MAX_RUNS` nor further than `MAX_HORIZON`. Each run
carries the idempotency key ``scheduled <deployment id> <iso time>``, so calling this again, after a
restart or from several servers at once, never creates a duplicate.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from dateutil import rrule as dateutil_rrule
from dateutil.parser import isoparse

from buildsys.errors import BuildsysError
from buildsys.store.base import FlowRun, Resource, StateStore

MIN_RUNS = 3
MAX_RUNS = 100
MIN_HORIZON = 3600.0  # one hour
MAX_HORIZON = 100 * 86400.0  # 100 days

_DAY = 86400.0
_HMS = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d(?:\.\d+)?)$")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class ScheduleError(BuildsysError):
    """A deployment's schedule cannot be understood (bad cron, interval, rrule or timezone)."""


@dataclass(frozen=True)
class Schedule:
    """One schedule of a deployment, normalised from any of the accepted spec shapes."""

    kind: str  # cron | interval | rrule
    value: Any  # cron expression, interval seconds, or rrule string
    timezone: str = "UTC"
    anchor: float | None = None  # interval anchor / rrule start (epoch seconds); None = deployment created_at
    day_or: bool = True
    active: bool = True
    parameters: Mapping[str, Any] = field(default_factory=dict)


# --- parsing -----------------------------------------------------------------------------------


def parse_schedule(item: Mapping[str, Any], where: str = "schedule") -> Schedule:
    """Accept the prefect.yaml shape ({cron|interval|rrule, timezone, ...}), the API shape
    ({schedule: {...}, active, parameters}) and the model's shape ({kind, value, ...})."""
    inner = item.get("schedule")
    body: dict[str, Any] = dict(inner) if isinstance(inner, Mapping) else {}
    body.update({k: v for k, v in item.items() if k != "schedule"})
    if "kind" in body and "value" in body and body["kind"] in ("cron", "interval", "rrule"):
        body.setdefault(str(body["kind"]), body["value"])
    kinds = [k for k in ("cron", "interval", "rrule") if body.get(k) is not None]
    if len(kinds) != 1:
        raise ScheduleError(
            f"{where}: exactly one of cron, interval, rrule is required (found {kinds or 'none'})"
        )
    kind = kinds[0]
    tz = str(body.get("timezone") or "UTC")
    _zone(tz, where)
    value: Any = body[kind]
    if kind == "interval":
        value = parse_interval(value, where)
    elif kind == "cron":
        value = str(value)
        if not croniter.is_valid(value):
            raise ScheduleError(f"{where}: invalid cron expression {value!r}")
    else:
        value = str(value)
    anchor = body.get("anchor_date")
    active = body.get("active", True)
    params = body.get("parameters") or {}
    return Schedule(
        kind=kind,
        value=value,
        timezone=tz,
        anchor=_parse_datetime(anchor, tz, where) if anchor is not None else None,
        day_or=bool(body.get("day_or", True)),
        active=active is True or (isinstance(active, str) and active.strip().lower() in ("true", "yes", "1")),
        parameters=dict(params) if isinstance(params, Mapping) else {},
    )


def parse_interval(value: Any, where: str = "interval") -> float:
    """Seconds from a number, an ISO-8601 duration (PT10M) or HH:MM:SS."""
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if (m := _HMS.match(text)) is not None:
            seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        elif (
            (m := _ISO_DURATION.match(text)) is not None
            and text not in ("P", "PT")
            and not text.endswith("T")
        ):
            parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
            seconds = timedelta(**parts).total_seconds()
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ScheduleError(
            f"{where}: invalid interval {value!r}",
            hint="use seconds (600), an ISO-8601 duration (PT10M) or HH:MM:SS (00:10:00)",
        )
    return seconds


def _zone(name: str, where: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"{where}: unknown timezone {name!r}", hint="use an IANA name such as Europe/Paris"
        ) from exc


def _parse_datetime(value: Any, tz: str, where: str) -> float:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = isoparse(str(value))
        except (ValueError, OverflowError) as exc:
            raise ScheduleError(f"{where}: invalid anchor_date {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(tz, where))
    return moment.timestamp()


# --- next times --------------------------------------------------------------------------------


def next_times(schedule: Schedule, after: float, *, anchor: float) -> Iterator[float]:
    """Epoch seconds of the schedule's occurrences strictly after `after`, in order."""
    zone = _zone(schedule.timezone, "schedule")
    if schedule.kind == "cron":
        start = datetime.fromtimestamp(after, zone)
        it = croniter(str(schedule.value), start, day_or=schedule.day_or)
        while True:
            yield float(it.get_next(float))
    elif schedule.kind == "interval":
        yield from _interval_times(float(schedule.value), schedule.anchor or anchor, after, zone)
    else:
        yield from _rrule_times(str(schedule.value), schedule.anchor or anchor, after, zone)


def _interval_times(step: float, anchor: float, after: float, zone: ZoneInfo) -> Iterator[float]:
    k = max(0, math.floor((after - anchor) / step) + 1)
    if step % _DAY == 0:
        # whole days keep the anchor's wall-clock time across DST changes, as Prefect does
        local = datetime.fromtimestamp(anchor, zone).replace(tzinfo=None)
        while True:
            moment = (local + timedelta(seconds=step * k)).replace(tzinfo=zone).timestamp()
            if moment > after:
                yield moment
            k += 1
    while True:
        moment = anchor + step * k
        if moment > after:
            yield moment
        k += 1


def _rrule_times(text: str, anchor: float, after: float, zone: ZoneInfo) -> Iterator[float]:
    dtstart = datetime.fromtimestamp(math.floor(anchor), zone)
    try:
        rule = dateutil_rrule.rrulestr(text, dtstart=dtstart, forceset=True)
    except (ValueError, TypeError) as exc:
        raise ScheduleError(f"invalid rrule {text!r}: {exc}") from exc
    moment = datetime.fromtimestamp(after, zone)
    naive = False
    while True:
        try:
            found = rule.after(moment.replace(tzinfo=None) if naive else moment, inc=False)
        except TypeError:  # a DTSTART without a zone in the rule: dateutil compares naive times
            if naive:
                raise
            naive = True
            continue
        if found is None:
            return
        if found.tzinfo is None:
            found = found.replace(tzinfo=zone)
        yield found.timestamp()
        moment = found


def upcoming(schedule: Schedule, now: float, *, anchor: float) -> list[float]:
    """The times to have runs for: at least MIN_RUNS and all within MIN_HORIZON, within the caps."""
    times: list[float] = []
    for moment in next_times(schedule, now, anchor=anchor):
        if len(times) >= MAX_RUNS or moment > now + MAX_HORIZON:
            break
        if len(times) >= MIN_RUNS and moment > now + MIN_HORIZON:
            break
        times.append(moment)
    return times


# --- creating runs -----------------------------------------------------------------------------


def idempotency_key(deployment_id: str, moment: float) -> str:
    iso = datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
    return f"scheduled {deployment_id} {iso}"


def deployment_schedules(deployment: Resource) -> tuple[list[Schedule], list[ScheduleError]]:
    """The deployment's active schedules, and an error naming the deployment for each one that
    cannot be read (the others are still followed)."""
    items = deployment.spec.get("schedules") or []
    if not isinstance(items, list | tuple):
        return [], [ScheduleError(f"deployment {deployment.name}: schedules must be a list")]
    found, unreadable = [], []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise ScheduleError(f"deployment {deployment.name}: schedules[{i}] must be a mapping")
            schedule = parse_schedule(item, f"deployment {deployment.name}: schedules[{i}]")
        except ScheduleError as exc:
            unreadable.append(exc)
            continue
        if schedule.active:
            found.append(schedule)
    return found, unreadable


@dataclass(frozen=True)
class Round:
    """One pass of the scheduler: the runs it created, and each deployment it could not schedule
    (name → why). One deployment's failure never stops the others'."""

    created: list[FlowRun]
    failed: dict[str, str]
    scheduled: frozenset[str]  # the deployments that were due for scheduling this round


def schedule_due_runs(store: StateStore, now: float | None = None) -> list[FlowRun]:
    """Create the missing scheduled runs of every schedulable deployment; returns the runs created
    (`schedule_round` also says which deployments failed and why)."""
    return schedule_round(store, now).created


def schedule_round(store: StateStore, now: float | None = None) -> Round:
    """Create the missing scheduled runs of every schedulable deployment, each on its own: a
    deployment whose schedule cannot be read or whose runs cannot be created (no work pool, a
    damaged record) is reported in `failed`, and every other deployment still gets its runs."""
    moment = time.time() if now is None else now
    paused_pools = {p.name for p in store.list_resources("pool") if p.spec.get("paused")}
    created: list[FlowRun] = []
    failed: dict[str, str] = {}
    scheduled: set[str] = set()
    for deployment in store.list_resources("deployment"):
        if deployment.spec.get("paused") or deployment.spec.get("work_pool_name") in paused_pools:
            continue
        scheduled.add(deployment.name)
        try:
            schedules, unreadable = deployment_schedules(deployment)
            if schedules:
                _schedule_deployment(store, deployment, schedules, moment, created)
            if unreadable:
                raise unreadable[0]
        except BuildsysError as exc:
            failed[deployment.name] = exc.message + (f" ({exc.hint})" if exc.hint else "")
        except Exception as exc:  # a bug must not stop every deployment after this one either
            failed[deployment.name] = f"internal error: {type(exc).__name__}: {exc}"
    return Round(created, failed, frozenset(scheduled))


class FailureReports:
    """Turns rounds into what to tell people: each deployment's failure once (again only when
    the reason changes), and once when it is scheduled again; not the same line every round."""

    def __init__(self) -> None:
        self._said: dict[str, str] = {}

    def news(self, round_: Round) -> list[tuple[bool, str]]:
        """(failed, line) for each thing to say after this round: failures first."""
        lines = [
            (True, f"Scheduled runs of deployment {name} cannot be created: {why}")
            for name, why in sorted(round_.failed.items())
            if self._said.get(name) != why
        ]
        lines += [
            (False, f"Scheduled runs of deployment {name} are created again.")
            for name in sorted(set(self._said) - set(round_.failed))
            if name in round_.scheduled
        ]
        self._said = dict(round_.failed)
        return lines


def _schedule_deployment(
    store: StateStore, deployment: Resource, schedules: list[Schedule], now: float, created: list[FlowRun]
) -> None:
    """Add the deployment's missing runs to `created`; a schedule that cannot be followed does not
    stop the deployment's other schedules (its error is raised after them)."""
    anchor = float(math.floor(deployment.created_at or now))
    deployment_id = deployment.id or deployment.name
    # a cheap pre-check; the idempotency key is what really prevents duplicates
    existing = {
        run.idempotency_key
        for run in store.list_runs(deployment=deployment.name, limit=10 * MAX_RUNS)
        if run.auto_scheduled
    }
    unreadable: ScheduleError | None = None
    for schedule in schedules:
        try:
            times = upcoming(schedule, now, anchor=anchor)
        except ScheduleError as exc:
            unreadable = unreadable or exc
            continue
        for moment in times:
            key = idempotency_key(deployment_id, moment)
            if key in existing:
                continue
            run = store.create_run(
                deployment.name,
                parameters=dict(schedule.parameters) or None,
                scheduled_at=moment,
                idempotency_key=key,
                auto_scheduled=True,
            )
            existing.add(key)
            created.append(run)
    if unreadable is not None:
        raise unreadable
