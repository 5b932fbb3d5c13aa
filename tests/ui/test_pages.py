"""UI pages rendered in-process over a SQLite store (no browser, no server process): a run's state
history (and its live update), the server's Plans page from the store's record of each apply."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from buildsys.server.app import Settings, create_app
from buildsys.store.base import COMPLETED, RUNNING, Change
from buildsys.store.sql import SqlStore

SOURCE = {"commit": "0123456789abcdef0123456789abcdef01234567", "ref": "main", "file": "prefect.yaml", "dirty": False}
POOL = {"type": "process", "description": "", "concurrency_limit": None, "paused": False, "queues": []}
DEPLOYMENT = {"flow_name": "etl", "name": "nightly", "entrypoint": "flows/etl.py:etl", "work_pool_name": "local",
              "parameters": {"n": 1}, "tags": ["a"]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "state.db")
    yield s
    s.close()


@pytest.fixture
def app(store: SqlStore) -> Starlette:
    return create_app(store, settings=Settings(housekeeping=False))


def get(app: Starlette, path: str, **headers: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


def texts(page: str, pattern: str) -> list[str]:
    """The text of each match of `pattern` (one group), tags dropped and whitespace collapsed."""
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", m)).split()) for m in re.findall(pattern, page, re.S)]


def seed(store: SqlStore, owner: str = "proj") -> None:
    store.apply(
        [Change("create", "pool", "local", POOL, owner, SOURCE), Change("create", "deployment", "etl/nightly", DEPLOYMENT, owner, SOURCE)],
        expected_serial=None,
    )


def test_a_runs_page_shows_every_state_it_entered_and_follows_new_ones(store: SqlStore, app: Starlette) -> None:
    seed(store)
    run = store.create_run("etl/nightly")
    store.claim_runs("local", "w1")
    store.set_run_state(run.id, RUNNING, worker="w1")
    page = get(app, f"/runs/{run.id}")
    assert page.status_code == 200
    rows = texts(page.text, r'<tbody>(.*?)</tbody>')[0]
    assert re.fullmatch(
        r"Scheduled \S+ \S+ UTC \d+\.\d s 1 — Pending \S+ \S+ UTC \d+\.\d s 1 w1 Running \S+ \S+ UTC \d+\.\d s so far 1 w1", rows
    ), rows
    # a follower that saw "Running" is answered at once when the run moves, with the new history
    store.set_run_state(run.id, COMPLETED, worker="w1")
    followed = get(app, f"/runs/{run.id}/logs?after=0&state=Running/1", **{"HX-Request": "true"})
    assert 'id="run-states" hx-swap-oob="true"' in followed.text
    states = texts(followed.text, r'<tr[^>]*>\s*<td><span class="state[^>]*>(.*?)</span>')
    assert states == ["Scheduled", "Pending", "Running", "Completed"]
    assert "(ended)" in texts(followed.text, r'<tr[^>]*>(.*?)</tr>')[-1]


def test_the_plans_page_of_a_server_shows_each_apply_as_plan_prints_it(store: SqlStore, app: Starlette) -> None:
    seed(store)
    store.apply(
        [Change("create", "variable", "region", {"value": "eu"}, "proj", SOURCE),  # in a plan's order
         Change("update", "deployment", "etl/nightly", {**DEPLOYMENT, "tags": ["a", "b"], "parameters": {"n": 2}}, "proj", SOURCE)],
        expected_serial=1,
    )
    store.apply([Change("delete", "variable", "region", None, "proj", SOURCE)], expected_serial=2)
    page = get(app, "/plans")
    assert page.status_code == 200
    assert texts(page.text, r"<summary>(.*?)</summary>") == [
        f"Applied {t}: store serial {s - 1} → {s}, {add} to add, {change} to change, {destroy} to destroy (project proj)"
        for t, (s, add, change, destroy) in zip(
            re.findall(r"<summary>Applied (.*? UTC):", page.text), [(3, 0, 0, 1), (2, 1, 1, 0), (1, 2, 0, 0)], strict=True
        )
    ]
    diffs = [html.unescape(d) for d in re.findall(r'<pre class="diff">(.*?)</pre>', page.text, re.S)]
    assert diffs == [
        "Planned from prefect.yaml at main (0123456789ab)\n\n- delete variable region\n\n"
        "Plan: 0 to add, 0 to change, 1 to destroy.\n",
        "Planned from prefect.yaml at main (0123456789ab)\n\n"
        "+ create variable region\n    value: \"eu\"\n\n"
        "~ update deployment etl/nightly\n    parameters.n: 1 → 2\n    tags: [\"a\"] → [\"a\", \"b\"]\n\n"
        "Plan: 1 to add, 1 to change, 0 to destroy.\n",
        "Planned from prefect.yaml at main (0123456789ab)\n\n"
        "+ create pool local\n    type: \"process\"\n\n"
        "+ create deployment etl/nightly\n    flow_name: \"etl\"\n    name: \"nightly\"\n"
        "    entrypoint: \"flows/etl.py:etl\"\n    work_pool_name: \"local\"\n    parameters: {\"n\": 1}\n    tags: [\"a\"]\n\n"
        "Plan: 2 to add, 0 to change, 0 to destroy.\n",
    ]


def test_a_servers_deployment_page_shows_what_changed_since_the_projects_last_apply(store: SqlStore, app: Starlette) -> None:
    from buildsys.reconcile import set_paused

    store.apply([Change("create", "pool", "local", POOL, "proj", SOURCE)], expected_serial=0)
    store.apply([Change("create", "deployment", "etl/nightly", DEPLOYMENT, "proj", SOURCE)], expected_serial=1)
    store.apply([Change("create", "variable", "other_thing", {"value": 1}, "proj", SOURCE)], expected_serial=2)

    def since() -> str:
        page = get(app, "/deployments/etl/nightly")
        assert page.status_code == 200
        return re.sub(r" ([,.)])", r"\1", texts(page.text, r'<h3 id="since">.*?</h3>(.*?)</section>')[0])

    first = since()
    assert re.fullmatch(r"Last applied from a project at store serial 2, \S+ \S+ UTC, by project proj "
                        r"\(prefect\.yaml at commit 0123456789ab\)\. Unchanged since: the store holds what that apply wrote\.",
                        first), first
    set_paused(store, "deployment", "etl/nightly", True)  # `buildsys deployment pause`: an edit, not a plan
    edited = since()
    assert "Changed since that apply" in edited
    assert "paused true (absent)" in edited  # field, now, as applied (the project did not say)
    assert re.search(r"Store serial 4, \S+ \S+ UTC ?: edited paused \(not from a plan\)", edited), edited
    # the project's next apply puts it back and is the new reference
    store.apply([Change("update", "deployment", "etl/nightly", {**DEPLOYMENT, "paused": False}, "proj", SOURCE)], expected_serial=4)
    assert "Last applied from a project at store serial 5" in since() and "Unchanged since" in since()
    # a deployment no plan wrote (or whose plan is no longer kept) says so
    store.apply([Change("create", "deployment", "etl/by_hand", DEPLOYMENT, None, None)], expected_serial=None)
    page = get(app, "/deployments/etl/by_hand")
    assert "keeps no apply from a project that wrote it" in page.text


def test_a_runs_logs_can_show_only_warnings_and_errors_and_follow_so(store: SqlStore, app: Starlette) -> None:
    from buildsys.store.base import LogEntry

    seed(store)
    run = store.create_run("etl/nightly")
    store.append_logs(run.id, [LogEntry(1.0, "stdout", "all fine"), LogEntry(2.0, "stderr", "disk nearly full"),
                               LogEntry(3.0, "prefect", "task failed", 40, "prefect.task_runs"),
                               LogEntry(4.0, "prefect", "task started", 20, "prefect.task_runs")])
    lines = r'<li class="log-[a-z]+">(.*?)</li>'
    every = texts(get(app, f"/runs/{run.id}").text, lines)
    assert [x.split(" UTC ", 1)[1] for x in every] == ["all fine", "disk nearly full", "ERROR task failed", "task started"]
    page = get(app, f"/runs/{run.id}?logs=problems").text
    assert [x.split(" UTC ", 1)[1] for x in texts(page, lines)] == ["disk nearly full", "ERROR task failed"]
    assert f'hx-get="/runs/{run.id}/logs?after=4&amp;state=Scheduled/1&amp;logs=problems"' in page  # it follows so
    store.append_logs(run.id, [LogEntry(5.0, "stdout", "more"), LogEntry(6.0, "stderr", "worse")])
    followed = get(app, f"/runs/{run.id}/logs?after=4&state=Scheduled/1&logs=problems", **{"HX-Request": "true"}).text
    assert [x.split(" UTC ", 1)[1] for x in texts(followed, lines)] == ["worse"]
    assert "after=6&amp;" in followed
