"""A run of a real Prefect flow (Prefect's own engine against `buildsys server`'s Prefect API)
shows its task runs as a timeline and its artifact on the run's page; deleting the run deletes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildsys.errors import NotFoundError
from buildsys.store.sql import SqlStore
from tests.prefectapi.engine import claimed_run, copy_project, deploy, run_engine
from tests.server.running import server_process
from tests.ui.browser import Browser

pytestmark = pytest.mark.slow


def test_task_runs_and_artifacts_of_a_prefect_flow(prefect_python: str, tmp_path: Path, browser: Browser) -> None:
    db = tmp_path / "server.db"
    store = SqlStore.sqlite(db)
    try:
        deploy(store)
        with server_process(str(db), tmp_path) as server:
            run = claimed_run(store, "etl", parameters={"count": 2})
            done = run_engine(prefect_python, f"{server.url}/prefect/api", run, copy_project(tmp_path))
            assert store.get_run(run.id).is_terminal, done.stdout + done.stderr
            tasks = store.list_task_runs(run.id)
            # the engine's states went through /prefect/api's set_state: the history has them
            history = [(s.state, s.worker) for s in store.list_run_states(run.id)]
            assert history == [("SCHEDULED", None), *((t, "test-worker") for t in ("PENDING", "RUNNING", "COMPLETED"))], history
            browser.get(f"{server.url}/runs/{run.id}")
            title = browser.find("svg.tasks title").get_attribute("textContent")
            assert re.fullmatch(rf"Task runs over time: {len(tasks)} task run\(s\), [0-9.]+ s from the first start to the last end", title)
            rows = browser.find_all("table caption")
            assert any(r.text == f"{len(tasks)} task run(s), as Prefect's engine reported them" for r in rows)
            cells = [[td.text for td in tr.find_elements("css selector", "td")] for tr in browser.find_all("table tbody tr")]
            doubles = [c for c in cells if c[0].startswith("double-")]
            assert len(doubles) == 5 and all(c[1] == "Completed" and c[5] == "Pending → Running → Completed" for c in doubles), doubles
            artifact = browser.find("section.artifact")
            assert artifact.find_element("css selector", "h3").text == "report markdown"
            assert artifact.find_element("css selector", "pre").text == "# report\nall good"
            assert browser.unlabelled() == []
            browser.screenshot("run-with-task-runs")
            # deleting the run takes its task runs and logs with it (Prefect's cascade); the keyed artifact stays
            assert store.read_logs(run.id)
            browser.find("#delete-run").click()
            assert f"its {len(tasks)} task run(s)" in browser.wait_text("#delete-what", "cannot be undone")
            browser.submit("form[action$='/delete'] button")
            browser.wait_text("#deleted", f"Deleted run {run.name}")
            assert store.list_task_runs(run.id) == [] and all(store.get_task_run(t.id) is None for t in tasks)
            with pytest.raises(NotFoundError):
                store.read_logs(run.id)
            assert [a.key for a in store.list_artifacts(key="report")] == ["report"]
    finally:
        store.close()
