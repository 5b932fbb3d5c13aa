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


def post(app: Starlette, path: str, data: dict[str, str]) -> httpx.Response:
    """A form post as a page sends it: from this origin, with the session's CSRF value."""
    csrf = "c" * 43

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                     cookies={"buildsys_csrf": csrf}) as client:
            return await client.post(path, data={"csrf": csrf, **data}, headers={"Origin": "http://127.0.0.1"})

    return asyncio.run(go())


def test_a_runs_state_is_set_by_hand_and_a_final_one_replaced_only_when_forced(store: SqlStore, app: Starlette) -> None:
    seed(store)
    run = store.create_run("etl/nightly")
    store.claim_runs("local", "w1")
    store.set_run_state(run.id, RUNNING, worker="w1")
    page = get(app, f"/runs/{run.id}").text
    assert f'action="/runs/{run.id}/state"' in page and 'id="delete-run"' not in page  # running: no delete
    moved = post(app, f"/runs/{run.id}/state", {"state": "FAILED", "message": "  marked by hand  "})
    assert moved.status_code == 303 and moved.headers["location"] == f"/runs/{run.id}"
    assert (store.get_run(run.id).state, store.get_run(run.id).state_message) == ("FAILED", "marked by hand")
    refused = post(app, f"/runs/{run.id}/state", {"state": "COMPLETED", "message": "it was fine"})
    assert refused.status_code == 409
    error = texts(refused.text, r'<p class="error" role="alert" id="change-state-error">(.*?)</p>')[0]
    assert "has already finished (FAILED); a finished run's state is replaced only when forced" in error, error
    assert '<option value="COMPLETED" selected>' in refused.text and ">it was fine</textarea>" in refused.text
    assert store.get_run(run.id).state == "FAILED"
    forced = post(app, f"/runs/{run.id}/state", {"state": "COMPLETED", "message": "it was fine", "force": "yes"})
    assert forced.status_code == 303 and store.get_run(run.id).state == "COMPLETED"
    assert [(s.state, s.message) for s in store.list_run_states(run.id)][-2:] == [("FAILED", "marked by hand"),
                                                                                  ("COMPLETED", "it was fine")]
    states = texts(get(app, f"/runs/{run.id}").text, r'<tr[^>]*>\s*<td><span class="state[^>]*>(.*?)</span>')
    assert states == ["Scheduled", "Pending", "Running", "Failed", "Completed"]
    bad = post(app, f"/runs/{run.id}/state", {"state": "RUNNING", "force": "yes"})
    assert bad.status_code == 422 and "set by hand only to a final state" in bad.text
    assert post(app, "/runs/nope/state", {"state": "FAILED"}).status_code == 404


def test_a_run_is_deleted_after_a_confirmation_with_its_logs_and_task_runs(store: SqlStore, app: Starlette) -> None:
    from buildsys.store.base import Artifact, LogEntry, TaskRun

    seed(store)
    run = store.create_run("etl/nightly")
    store.claim_runs("local", "w1")
    store.set_run_state(run.id, RUNNING, worker="w1")
    store.append_logs(run.id, [LogEntry(1.0, "stdout", "hello")])
    store.record_task_run(TaskRun(id="t-1", flow_run_id=run.id, name="extract", created_at=1.0))
    store.create_artifact(Artifact(id="a-1", flow_run_id=run.id, data="# report"))
    store.create_artifact(Artifact(id="a-2", flow_run_id=run.id, key="latest", data="# kept"))
    child = store.create_run("etl/nightly")
    store.set_run_parent(child.id, "t-1")
    refused = get(app, f"/runs/{run.id}/delete")
    assert refused.status_code == 409 and 'action="/runs/' not in refused.text.split("<main", 1)[1]
    assert "Cancel it first, and delete it once it has ended." in texts(refused.text, r'id="delete-refused">(.*?)</p>')[0]
    assert post(app, f"/runs/{run.id}/delete", {}).status_code == 409  # the post is refused the same way
    store.set_run_state(run.id, COMPLETED, worker="w1")
    assert 'id="delete-run"' in get(app, f"/runs/{run.id}").text
    confirm = get(app, f"/runs/{run.id}/delete")
    assert confirm.status_code == 200
    what = texts(confirm.text, r'<p id="delete-what">(.*?)</p>')[0]
    assert "also deletes all its log lines, its 4 recorded state(s), its 1 task run(s)" in what, what
    deleted = post(app, f"/runs/{run.id}/delete", {})
    assert deleted.status_code == 303 and deleted.headers["location"] == f"/runs?deleted={run.name}"
    listed = get(app, deleted.headers["location"]).text
    assert texts(listed, r'id="deleted">(.*?)</p>') == [f"Deleted run {run.name}, with its logs, states and task runs."]
    assert get(app, f"/runs/{run.id}").status_code == 404
    assert [r.id for r in store.list_runs()] == [child.id]
    assert store.list_task_runs(run.id) == [] and store.get_task_run("t-1") is None
    assert store.get_run(child.id).parent_task_run_id is None
    assert [a.id for a in store.list_artifacts(key="latest")] == ["a-2"] and store.list_artifacts(flow_run_id=run.id) == [
        store.list_artifacts(key="latest")[0]]
    with store._db.tx() as tx:  # nothing of the run is left behind
        left = [tx.one(f"SELECT COUNT(*) FROM {t} WHERE {c} = ?", (run.id,))[0]  # type: ignore[index]
                for t, c in (("logs", "run_id"), ("flow_run_states", "run_id"), ("task_runs", "flow_run_id"))]
    assert left == [0, 0, 0]
    # a scheduled run nobody holds can be deleted at once; a page following it learns that it is gone
    assert post(app, f"/runs/{child.id}/delete", {}).status_code == 303 and store.list_runs() == []
    followed = get(app, f"/runs/{child.id}/logs?after=0&state=Scheduled/1", **{"HX-Request": "true"})
    assert followed.status_code == 200 and texts(followed.text, r'<li class="end" role="status">(.*?)</li>') == [
        "This run was deleted."]
    assert "hx-get" not in followed.text and get(app, f"/runs/{child.id}/logs").status_code == 404
