"""Schedules → scheduled runs: exact times for cron (with DST), interval and rrule, and no
duplicates across repeated or concurrent scheduler passes, on a real SQLite store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildsys.schedules import (
    FailureReports,
    ScheduleError,
    idempotency_key,
    parse_interval,
    parse_schedule,
    schedule_due_runs,
    schedule_round,
    upcoming,
)
from buildsys.store.base import Change
from buildsys.store.sql import SqlStore

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


# --- times -------------------------------------------------------------------------------------


def test_cron_in_a_timezone_keeps_wall_clock_across_dst() -> None:
    schedule = parse_schedule({"cron": "0 9 * * *", "timezone": "Europe/Paris"})
    now = ts("2026-03-27T12:00:00+00:00")  # Paris moves to summer time on Sunday 29 March
    times = upcoming(schedule, now, anchor=0)
    assert [iso(t) for t in times] == [
        "2026-03-28T08:00:00Z",  # 09:00 CET
        "2026-03-29T07:00:00Z",  # 09:00 CEST
        "2026-03-30T07:00:00Z",
    ]


def test_cron_day_or_false_needs_both_day_fields() -> None:
    schedule = parse_schedule({"cron": "0 0 13 * 5", "day_or": False})  # Friday the 13th only
    times = upcoming(schedule, ts("2026-01-01T00:00:00+00:00"), anchor=0)
    # the next one (13 November) is past the 100-day horizon, so only two exist yet
    assert [iso(t) for t in times] == ["2026-02-13T00:00:00Z", "2026-03-13T00:00:00Z"]


def test_interval_counts_from_its_anchor_and_fills_the_next_hour() -> None:
    schedule = parse_schedule({"interval": 600, "anchor_date": "2026-01-01T00:00:00Z"})
    now = ts("2026-01-01T00:20:34+00:00")
    assert [iso(t) for t in upcoming(schedule, now, anchor=0)] == [
        "2026-01-01T00:30:00Z",
        "2026-01-01T00:40:00Z",
        "2026-01-01T00:50:00Z",
        "2026-01-01T01:00:00Z",
        "2026-01-01T01:10:00Z",
        "2026-01-01T01:20:00Z",
    ]


def test_daily_interval_follows_local_time_over_dst() -> None:
    schedule = parse_schedule(
        {"interval": "P1D", "anchor_date": "2026-03-27T09:00:00", "timezone": "Europe/Paris"}
    )
    times = upcoming(schedule, ts("2026-03-27T10:00:00+00:00"), anchor=0)
    assert [iso(t) for t in times] == ["2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z", "2026-03-30T07:00:00Z"]


def test_interval_without_anchor_counts_from_the_deployment_creation() -> None:
    schedule = parse_schedule({"interval": "01:00:00"})
    anchor = ts("2026-05-01T10:15:00+00:00")
    times = upcoming(schedule, ts("2026-05-02T00:00:00+00:00"), anchor=anchor)
    assert [iso(t) for t in times] == ["2026-05-02T00:15:00Z", "2026-05-02T01:15:00Z", "2026-05-02T02:15:00Z"]


def test_rrule_with_and_without_dtstart() -> None:
    with_start = parse_schedule(
        {"rrule": "DTSTART:20260101T060000\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE", "timezone": "America/New_York"}
    )
    times = upcoming(with_start, ts("2026-01-01T00:00:00+00:00"), anchor=0)
    assert [iso(t) for t in times] == ["2026-01-05T11:00:00Z", "2026-01-07T11:00:00Z", "2026-01-12T11:00:00Z"]
    bare = parse_schedule({"rrule": "FREQ=DAILY;BYHOUR=6;BYMINUTE=30;BYSECOND=0;COUNT=2"})
    times = upcoming(bare, ts("2026-01-01T00:00:00+00:00"), anchor=ts("2026-01-01T00:00:00+00:00"))
    assert [iso(t) for t in times] == ["2026-01-01T06:30:00Z", "2026-01-02T06:30:00Z"]  # COUNT ends it


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("PT10M", 600.0), ("P1DT1H", 90000.0), ("00:10:00", 600.0), ("45", 45.0)],
)
def test_interval_forms(value: Any, seconds: float) -> None:
    assert parse_interval(value) == seconds


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"interval": 0}, "schedule: invalid interval 0"),
        ({"interval": "PT"}, "schedule: invalid interval 'PT'"),
        ({"cron": "61 * * * *"}, "schedule: invalid cron expression '61 * * * *'"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "schedule: unknown timezone 'Mars/Olympus'"),
        (
            {"cron": "* * * * *", "interval": 5},
            "schedule: exactly one of cron, interval, rrule is required (found ['cron', 'interval'])",
        ),
        ({"interval": 5, "anchor_date": "yesterday"}, "schedule: invalid anchor_date 'yesterday'"),
    ],
)
def test_bad_schedules_are_refused_with_a_reason(item: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(item)
    assert info.value.message == message


def test_api_and_model_shapes_are_accepted() -> None:
    api = parse_schedule(
        {"schedule": {"cron": "*/5 * * * *", "timezone": "UTC"}, "active": False, "parameters": {"a": 1}}
    )
    assert (api.kind, api.value, api.active, dict(api.parameters)) == ("cron", "*/5 * * * *", False, {"a": 1})
    model = parse_schedule({"kind": "interval", "value": 30.0, "timezone": None})
    assert (model.kind, model.value, model.timezone) == ("interval", 30.0, "UTC")


# --- runs in a real store ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "state.db")
    yield s
    s.close()


def deploy(
    store: SqlStore, name: str, schedules: list[Any], *, pool: str = "local", paused: bool = False
) -> None:
    changes = []
    if store.get_resource("pool", pool) is None:
        changes.append(
            Change("create", "pool", pool, {"type": "process", "paused": pool.startswith("paused")})
        )
    spec = {
        "flow_name": "f",
        "name": name,
        "entrypoint": "f.py:f",
        "work_pool_name": pool,
        "schedules": schedules,
        "paused": paused,
    }
    changes.append(Change("create", "deployment", f"f/{name}", spec))
    store.apply(changes, expected_serial=None)


NOW = ts("2026-06-01T12:00:00+00:00")


def test_scheduler_creates_the_next_runs_once(store: SqlStore) -> None:
    deploy(
        store,
        "every-20m",
        [{"interval": 1200, "anchor_date": "2026-01-01T00:00:00Z", "parameters": {"x": 1}}],
    )
    created = schedule_due_runs(store, now=NOW)
    deployment = store.get_resource("deployment", "f/every-20m")
    assert deployment is not None
    expected = [NOW + 1200 * k for k in (1, 2, 3)]
    assert sorted(r.scheduled_at for r in created) == expected
    assert sorted(r.idempotency_key or "" for r in created) == [
        idempotency_key(deployment.id, t) for t in expected
    ]
    assert idempotency_key(deployment.id, expected[0]) == f"scheduled {deployment.id} 2026-06-01T12:20:00Z"
    assert all(r.auto_scheduled and r.state == "SCHEDULED" and dict(r.parameters)["x"] == 1 for r in created)
    assert schedule_due_runs(store, now=NOW) == []
    assert schedule_due_runs(store, now=NOW + 1300) == [
        r for r in store.list_runs(deployment="f/every-20m") if r.scheduled_at == NOW + 1200 * 4
    ]
    assert len(store.list_runs(deployment="f/every-20m")) == 4


def test_paused_deployments_pools_and_inactive_schedules_get_no_runs(store: SqlStore) -> None:
    deploy(store, "paused", [{"interval": 60}], paused=True)
    deploy(store, "inactive", [{"interval": 60, "active": False}])
    deploy(store, "in-paused-pool", [{"interval": 60}], pool="paused-pool")
    deploy(store, "broken", [{"cron": "not a cron"}])
    deploy(store, "fine", [{"cron": "0 * * * *"}])
    created = schedule_due_runs(store, now=NOW)
    assert sorted({r.deployment for r in created}) == ["f/fine"]
    assert len(created) == 3


def test_concurrent_schedulers_never_duplicate(store: SqlStore, tmp_path: Path) -> None:
    deploy(store, "minutely", [{"cron": "* * * * *"}])  # 60 runs in the next hour
    others = [SqlStore.sqlite(tmp_path / "state.db") for _ in range(4)]
    barrier = threading.Barrier(len(others))

    def scheduler(s: SqlStore) -> None:
        barrier.wait()
        schedule_due_runs(s, now=NOW)

    threads = [threading.Thread(target=scheduler, args=(s,)) for s in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in others:
        s.close()
    runs = store.list_runs(deployment="f/minutely", limit=1000)
    assert len(runs) == 60
    assert len({r.scheduled_at for r in runs}) == 60


def test_one_bad_deployment_never_stops_the_others_and_is_said_once(store: SqlStore) -> None:
    # sorted first: a scheduled deployment without a work pool, and one with a schedule that
    # cannot be followed next to one that can
    store.apply([Change("create", "deployment", "f/a-no-pool", {"flow_name": "f", "name": "a-no-pool",
                                                                 "schedules": [{"interval": 600, "anchor_date": "2026-01-01T00:00:00Z"}]})],
                expected_serial=None)
    deploy(store, "b-half", [{"cron": "not a cron"}, {"interval": 3600, "anchor_date": "2026-01-01T00:00:00Z"}])
    deploy(store, "c-fine", [{"cron": "0 * * * *"}])
    reports = FailureReports()
    first = schedule_round(store, now=NOW)
    assert sorted((r.deployment, r.scheduled_at) for r in first.created) == [
        *(("f/b-half", NOW + 3600 * k) for k in (1, 2, 3)),
        *(("f/c-fine", NOW + 3600 * k) for k in (1, 2, 3)),
    ]
    no_pool = ("deployment 'f/a-no-pool' has no work pool, so no worker could run it "
               "(set work_pool.name on the deployment in prefect.yaml and apply)")
    assert first.failed == {"f/a-no-pool": no_pool, "f/b-half": first.failed["f/b-half"]}
    assert "not a cron" in first.failed["f/b-half"]
    assert reports.news(first) == [
        (True, f"Scheduled runs of deployment f/a-no-pool cannot be created: {no_pool}"),
        (True, f"Scheduled runs of deployment f/b-half cannot be created: {first.failed['f/b-half']}"),
    ]
    assert reports.news(schedule_round(store, now=NOW)) == []  # the same failures are not said again
    fixed = {"flow_name": "f", "name": "a-no-pool", "work_pool_name": "local", "schedules": [{"interval": 600, "anchor_date": "2026-01-01T00:00:00Z"}]}
    store.apply([Change("update", "deployment", "f/a-no-pool", fixed)], expected_serial=None)
    again = schedule_round(store, now=NOW)
    assert reports.news(again) == [(False, "Scheduled runs of deployment f/a-no-pool are created again.")]
    assert len([r for r in again.created if r.deployment == "f/a-no-pool"]) == 6  # every 10 minutes for an hour
