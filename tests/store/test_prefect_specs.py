"""Prefect objects <-> specs: the normal form both sides of a plan are put in (pure, no server)."""

from __future__ import annotations

import pytest

from buildsys.store import prefect_specs as specs

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

STORED_SCHEDULE = {
    "id": "s1",
    "schedule": {"interval": 3600.0, "anchor_date": "2026-12-02T19:33:08.102431Z", "timezone": "UTC"},
    "active": True,
    "parameters": {},
    "slug": None,
}


def test_interval_without_anchor_takes_the_one_prefect_picked() -> None:
    stored = [specs.schedule_spec(STORED_SCHEDULE)]
    assert stored == [{"interval": 3600.0, "timezone": "UTC", "anchor_date": "2026-12-02T19:33:08.102431Z",
                       "active": True, "parameters": {}}]
    assert specs.normalise_schedule({"interval": 3600, "active": True, "parameters": {}}, stored) == stored[0]
    # a different interval is a different schedule: no anchor borrowed, so the plan shows the change
    assert "anchor_date" not in specs.normalise_schedule({"interval": 60}, stored)


def test_anchor_dates_compare_as_instants() -> None:
    item = specs.normalise_schedule({"interval": 60, "anchor_date": "2024-01-01T00:00:00"}, [])
    assert item["anchor_date"] == "2024-01-01T00:00:00Z"
    assert specs.normalise_schedule({"interval": 60, "anchor_date": "2024-01-01T01:00:00+01:00"}, [])["anchor_date"] == (
        "2024-01-01T00:00:00Z"
    )


def test_cron_gets_prefects_defaults() -> None:
    stored = specs.schedule_spec({"schedule": {"cron": "0 2 * * *", "timezone": None, "day_or": True}, "active": True})
    assert specs.normalise_schedule({"cron": "0 2 * * *"}, []) == stored == {
        "cron": "0 2 * * *", "day_or": True, "active": True, "parameters": {}
    }


def test_pool_keeps_prefects_default_queue_unless_declared() -> None:
    stored = specs.pool_spec(
        {"type": "process", "base_job_template": {}, "is_paused": False},
        [{"name": "default", "priority": 2, "description": "The work pool's default queue."},
         {"name": "urgent", "priority": 1, "description": ""}],
    )
    wanted = {"type": "process", "queues": [{"name": "urgent", "priority": 1, "concurrency_limit": None,
                                              "description": None, "paused": False}]}
    assert specs.normalise_pool(wanted, stored)["queues"] == stored["queues"]


def test_trigger_round_trips_through_its_automation() -> None:
    item = {"name": "d__automation_1", "match": {"prefect.resource.id": "x.*"}, "expect": ["b", "a"],
            "parameters": {"day": "{{ event.id }}"}}
    body = specs.automation_payload(specs.normalise_trigger(item), "dep-1", "proj")
    assert body["tags"] == [specs.TRIGGER_TAG, "buildsys:proj"]
    stored = {**body, "trigger": {**body["trigger"], "id": "t1"},
              "actions": [{**body["actions"][0], "job_variables": None, "schedule_after": 0.0}]}
    assert specs.automation_deployment(stored) == "dep-1"
    assert specs.trigger_spec(stored) == specs.normalise_trigger(item)


def test_owner_tags_are_not_user_tags() -> None:
    tags = ["etl", "buildsys:shop"]
    assert specs.owner_of(tags) == "shop" and specs.user_tags(tags) == ["etl"]
    assert specs.pool_owner_variable("cloud run sandbox") == "buildsys-pool-cloud_20_run_20_sandbox"
