"""The prefect+http store against a real Prefect 3.9 server (tests/services/prefect.py).

The server is shared by the session and never emptied: every test names what it makes with its
own prefix. Plans and applies go through the same library calls as the CLI (plan with the store's
normal form, stepwise apply); a few tests run the real command line.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from buildsys.errors import ConflictError, NotFoundError
from buildsys.reconcile import PartialApplyError, adopt, read_plan_file, write_plan_file
from buildsys.store.base import COMPLETED, Resource
from tests.conftest import CORPUS
from tests.services.prefect import PrefectServer, prefect_env
from tests.services.waiting import wait_for
from tests.store.prefect_helpers import (
    Counting,
    apply,
    changed_fields,
    desired,
    flow_source,
    make_plan,
    open_store,
    write_project,
)
from tests.test_corpus import UNRESOLVED_REFS

BUILDSYS = [sys.executable, "-m", "buildsys"]


@pytest.fixture
def uid() -> str:
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=prefect_server.api_url, timeout=30, transport=_RetryingTransport()) as client:
        yield client


class _RetryingTransport(httpx.HTTPTransport):
    """The test's own edits, as a user's would be, sent again while Prefect's SQLite answers a
    server error under load ("database is locked"): an edit that silently failed made a saved plan
    look fresh and the conflict test fail."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + 30
        while True:
            response = super().handle_request(request)
            if response.status_code < 500 or time.monotonic() > deadline:
                return response
            response.read()
            response.close()
            threading.Event().wait(0.2)  # back off before sending it again


def project_text(uid: str, *, cron: str = "0 2 * * *", extra: str = "") -> str:
    return f"""
        name: {uid}-shop
        work_pools:
          - name: {uid}-pool
            type: process
            concurrency_limit: 4
            queues:
              - {{name: urgent, priority: 1, concurrency_limit: 2}}
        variables:
          {uid}_region: eu-west-1
        deployments:
          - name: nightly
            entrypoint: flows/etl.py:etl
            parameters: {{day: mon}}
            tags: [etl]
            schedules:
              - cron: "{cron}"
                timezone: Europe/Paris
              - interval: 3600
                slug: hourly-check
            work_pool: {{name: {uid}-pool, job_variables: {{env: {{A: "1"}}}}}}
            triggers:
              - match: {{prefect.resource.id: "prefect.flow-run.*"}}
                expect: [prefect.flow-run.Completed]
                parameters: {{day: "{{{{ event.id }}}}"}}
            pull: []
          - name: hourly
            entrypoint: flows/etl.py:etl
            concurrency_limit: 2
            work_pool: {{name: {uid}-pool, work_queue_name: urgent}}
            pull: []
        {extra}
    """


def shop(tmp_path: Path, uid: str, **kw: str) -> Path:
    return write_project(
        tmp_path / "shop", project_text(uid, **kw), {"flows/etl.py": flow_source("etl", f"{uid}-etl", ["day"])}
    )


# --- zero perpetual diffs over the corpus --------------------------------------------------------


def corpus_files() -> list[str]:
    """Valid files, less those whose step-output references are broken (test_corpus.py): Prefect
    silently drops such values, buildsys refuses to plan them, so there is nothing to apply."""
    index = CORPUS / "INDEX.tsv"
    if not index.is_file():
        return []
    with index.open() as fh:
        rows = [r["file"] for r in csv.DictReader(fh, delimiter="\t") if "invalid" not in r["features"].split(",")]
    return [r for r in rows if r not in UNRESOLVED_REFS]


ENTRY = re.compile(r"^\s*entrypoint:\s*['\"]?([^'\"\s#]+)", re.M)


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_project_applies_then_plans_no_changes(
    name: str, prefect_server: PrefectServer, api: httpx.Client, tmp_path: Path, uid: str
) -> None:
    root = tmp_path / "p"
    root.mkdir()
    text = (CORPUS / name).read_text()
    shutil.copy(CORPUS / name, root / "prefect.yaml")
    for entry in set(ENTRY.findall(text)):  # each entrypoint gets a small flow named for this test
        path, _, func = entry.rpartition(":")
        # An absolute entrypoint (/opt/prefect/...) names a file on the worker's machine: never
        # write outside this test's directory (it would change what later tests find there).
        if path.endswith(".py") and func.isidentifier() and not path.startswith("/") and not (root / path).exists():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(flow_source(func, f"{uid}-{func}"))
    state = desired(root / "prefect.yaml", outputs=True)
    for pool in {r.spec.get("work_pool_name") for r in state.resources if r.kind == "deployment"} - {None}:
        api.post("/work_pools/", json={"name": pool, "type": "process"})  # Prefect needs it; 409 if there
    store = open_store(prefect_server.api_url)
    try:
        first = make_plan(store, state, owner=f"{uid}-corpus")
        apply(store, first)
        again = make_plan(store, state, owner=f"{uid}-corpus")
        assert changed_fields(again) == {}, f"perpetual diff in {name}"
    finally:
        store.close()


# --- one change per kind shows as exactly that change ----------------------------------------


def test_apply_then_each_change_is_exactly_that_change(prefect_server: PrefectServer, tmp_path: Path, uid: str, api: httpx.Client) -> None:
    counting = Counting()
    store = open_store(prefect_server.api_url, counting)
    try:
        first = make_plan(store, desired(shop(tmp_path, uid)))
        assert first.summary == {"add": 4, "change": 0, "destroy": 0}
        apply(store, first)
        dep = api.get(f"/deployments/name/{uid}-etl/nightly").json()
        ids = sorted(s["id"] for s in dep["schedules"])

        counting.requests.clear()
        same = make_plan(store, desired(shop(tmp_path, uid)))
        assert not same.has_changes and apply(store, same).applied == 0
        assert counting.writes == []  # a no-change apply writes nothing: Prefect's scheduled runs stay

        yaml = (tmp_path / "shop" / "prefect.yaml")
        edits = [
            ("concurrency_limit: 4", "concurrency_limit: 5", {f"pool {uid}-pool": ["concurrency_limit"]}),
            (f"{uid}_region: eu-west-1", f"{uid}_region: us-east-1", {f"variable {uid}_region": ["value"]}),
            ("tags: [etl]", "tags: [etl, daily]", {f"deployment {uid}-etl/nightly": ["tags"]}),
            ('cron: "0 2 * * *"', 'cron: "0 3 * * *"', {f"deployment {uid}-etl/nightly": ["schedules[0].cron"]}),
            ("expect: [prefect.flow-run.Completed]", "expect: [prefect.flow-run.Failed]",
             {f"deployment {uid}-etl/nightly": ["triggers[nightly__automation_1].expect"]}),
            ("concurrency_limit: 2\n", "concurrency_limit: 3\n", {f"deployment {uid}-etl/hourly": ["concurrency_limit"]}),
        ]
        for old, new, expected in edits:
            yaml.write_text(yaml.read_text().replace(old, new, 1))
            made = make_plan(store, desired(yaml))
            assert changed_fields(made) == expected, (old, new)
            counting.requests.clear()
            apply(store, made)
            assert counting.writes, "an apply with changes writes"
            assert not make_plan(store, desired(yaml)).has_changes, f"{new}: applied, yet still a diff"
        dep = api.get(f"/deployments/name/{uid}-etl/nightly").json()
        assert sorted(s["id"] for s in dep["schedules"]) == ids  # the cron change patched its schedule in place
    finally:
        store.close()


# --- ownership: prune only what buildsys made; import ----------------------------------------


def test_prune_deletes_only_owned_and_import_adopts(prefect_server: PrefectServer, tmp_path: Path, uid: str, api: httpx.Client) -> None:
    store = open_store(prefect_server.api_url)
    try:
        apply(store, make_plan(store, desired(shop(tmp_path, uid))))
        flow = api.post("/flows/", json={"name": f"{uid}-etl"}).json()
        hand = {"name": "by-hand", "flow_id": flow["id"], "work_pool_name": f"{uid}-pool", "description": "made in the UI"}
        assert api.post("/deployments/", json=hand).status_code == 201
        # a plan reads the deployments its project declares or owns, not the rest of the server
        declared = [f"{uid}-etl/nightly", f"{uid}-etl/by-hand"]

        def seen(resources: list[Resource]) -> set[tuple[str, str, str | None]]:
            return {(r.kind, r.name, r.owner) for r in resources if r.name.startswith(uid)}

        full = seen(store.list_resources())
        assert seen(store.plan_resources(f"{uid}-shop", declared)) == full
        assert seen(store.plan_resources(f"{uid}-shop", [])) == {r for r in full if r[2] or r[0] != "deployment"}
        assert seen(store.plan_resources(f"{uid}-other", declared[1:])) == {
            r for r in full if r[0] != "deployment" or r[1] == declared[1]
        }

        # the project now declares `by-hand` too, and renames `hourly` (so the old one is an orphan)
        by_hand = f"- name: by-hand\n            entrypoint: flows/etl.py:etl\n            work_pool: {{name: {uid}-pool}}\n            pull: []\n"
        text = project_text(uid).replace("- name: hourly", by_hand + "          - name: hourly-2")
        yaml = write_project(tmp_path / "shop", text)
        made = make_plan(store, desired(yaml), prune=True)
        assert [c.address for c in made.changes if c.action == "delete"] == [f"deployment {uid}-etl/hourly"]
        assert any(f"deployment {uid}-etl/by-hand exists in the store but was not made by buildsys" in w for w in made.warnings)
        assert f"deployment {uid}-etl/by-hand" not in [c.address for c in made.changes]
        # adopted (the CLI), it is this project's; the next plan shows how it differs from the project
        env = {**os.environ, "BUILDSYS_STATE": f"prefect+{prefect_server.api_url}"}
        out = subprocess.run([*BUILDSYS, "state", "adopt", "deployment", "by-hand"], cwd=yaml.parent, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert f"Adopted deployment {uid}-etl/by-hand: now managed by project '{uid}-shop'" in out.stdout
        with pytest.raises(ConflictError, match="already managed by project"):
            adopt(store, "deployment", f"{uid}-etl/by-hand", "another-project")
        made = make_plan(store, desired(yaml), prune=True)
        by_hand = next(c for c in made.changes if c.name == f"{uid}-etl/by-hand")
        assert by_hand.action == "update" and "description" in [f.path for f in by_hand.fields]
        apply(store, made)
        assert not make_plan(store, desired(yaml), prune=True).has_changes
        assert api.get(f"/deployments/name/{uid}-etl/hourly").status_code == 404
    finally:
        store.close()


# --- honest apply: stop at the first failure, finish with the next plan; stale plans -----------


def test_failure_mid_apply_reports_what_was_written_and_next_plan_finishes(prefect_server: PrefectServer, tmp_path: Path, uid: str) -> None:
    counting = Counting(fail=lambda method, path: method == "POST" and path.endswith("/deployments/"))
    store = open_store(prefect_server.api_url, counting)
    try:
        yaml = shop(tmp_path, uid)
        with pytest.raises(PartialApplyError) as info:
            apply(store, make_plan(store, desired(yaml)))
        message = info.value.message
        assert f"apply stopped at create of deployment {uid}-etl/hourly" in message
        assert f"Written before it: created variable {uid}_region; created pool {uid}-pool." in message
        assert "1 change(s) after it" in message and "run `buildsys plan` again" in (info.value.hint or "")
        counting.fail = None
        rest = make_plan(store, desired(yaml))
        assert [c.address for c in rest.changes] == [f"deployment {uid}-etl/hourly", f"deployment {uid}-etl/nightly"]
        apply(store, rest)
        assert not make_plan(store, desired(yaml)).has_changes
    finally:
        store.close()


def test_failure_inside_a_change_names_what_prefect_accepted(prefect_server: PrefectServer, tmp_path: Path, uid: str) -> None:
    counting = Counting(fail=lambda method, path: method == "POST" and path.endswith("/automations/"))
    store = open_store(prefect_server.api_url, counting)
    try:
        yaml = shop(tmp_path, uid)
        with pytest.raises(PartialApplyError) as info:
            apply(store, make_plan(store, desired(yaml)))
        assert f"apply stopped at create of deployment {uid}-etl/nightly" in info.value.message
        assert "(for this change Prefect had already accepted: POST /deployments/)" in info.value.message
        counting.fail = None
        rest = make_plan(store, desired(yaml))  # the deployment is there, its trigger is not
        assert changed_fields(rest) == {f"deployment {uid}-etl/nightly": ["triggers"]}
        apply(store, rest)
        assert not make_plan(store, desired(yaml)).has_changes
    finally:
        store.close()


def test_prefect_refusal_stops_apply(prefect_server: PrefectServer, tmp_path: Path, uid: str) -> None:
    """A variable value longer than Prefect allows (5,000 characters) is refused by Prefect itself."""
    yaml = write_project(tmp_path / "p", f"""
        name: {uid}-refused
        variables:
          {uid}_a: 1
          {uid}_b: "{"x" * 6000}"
        work_pools:
          - {{name: {uid}-never, type: process}}
    """)
    store = open_store(prefect_server.api_url)
    try:
        with pytest.raises(PartialApplyError) as info:
            apply(store, make_plan(store, desired(yaml)))
        assert f"apply stopped at create of variable {uid}_b: Prefect refused POST /variables/ (422)" in info.value.message
        assert f"Written before it: created variable {uid}_a." in info.value.message
        assert store.get_resource("variable", f"{uid}_a") is not None
        assert store.get_resource("pool", f"{uid}-never") is None
    finally:
        store.close()


def test_saved_plan_is_refused_when_a_resource_changed_since(prefect_server: PrefectServer, tmp_path: Path, uid: str, api: httpx.Client) -> None:
    store = open_store(prefect_server.api_url)
    try:
        yaml = shop(tmp_path, uid)
        apply(store, make_plan(store, desired(yaml)))
        yaml.write_text(yaml.read_text().replace("tags: [etl]", "tags: [etl, v2]"))
        saved = tmp_path / "plan.json"
        write_plan_file(make_plan(store, desired(yaml)), saved)
        dep = api.get(f"/deployments/name/{uid}-etl/nightly").json()
        # bookkeeping only (same values): `updated` moves, the content does not -> still applies
        assert api.patch(f"/deployments/{dep['id']}", json={"description": dep["description"]}).status_code == 204
        plan = read_plan_file(saved)
        assert api.patch(f"/deployments/{dep['id']}", json={"description": "edited in the UI"}).status_code == 204
        with pytest.raises(ConflictError) as info:
            apply(store, plan)
        assert f"deployment {uid}-etl/nightly: description changed since" in info.value.message
        assert "nothing was applied" in info.value.message
        assert api.get(f"/deployments/{dep['id']}").json()["tags"] == ["etl", f"buildsys:{uid}-shop"]
    finally:
        store.close()


def test_saved_plan_applies_when_only_updated_moved(prefect_server: PrefectServer, tmp_path: Path, uid: str, api: httpx.Client) -> None:
    store = open_store(prefect_server.api_url)
    try:
        yaml = shop(tmp_path, uid)
        apply(store, make_plan(store, desired(yaml)))
        yaml.write_text(yaml.read_text().replace("tags: [etl]", "tags: [etl, v2]"))
        saved = make_plan(store, desired(yaml))
        dep = api.get(f"/deployments/name/{uid}-etl/nightly").json()
        api.patch(f"/deployments/{dep['id']}", json={"description": dep["description"]})
        assert api.get(f"/deployments/{dep['id']}").json()["updated"] != dep["updated"]
        assert apply(store, saved).applied == 1
    finally:
        store.close()


def test_the_store_imports_httpcore_without_trio_or_h2() -> None:
    """httpcore imports trio whenever it is installed, only to tell async libraries apart (~0.15 s
    of a plan's CPU), and h2 for names it exports: buildsys.httpclient leaves both out, and both
    still import for whoever needs them (an HTTP/2 connection imports its module itself)."""
    if importlib.util.find_spec("trio") is None or importlib.util.find_spec("h2") is None:
        pytest.skip("trio or h2 is not installed here")
    probe = (
        "import sys\nfrom buildsys.store.prefect import PrefectStore\n"
        "PrefectStore('prefect+http://127.0.0.1:9/api').close()\n"
        "import httpcore._synchronization as s\n"
        "print([m for m in ('trio', 'h2', 'httpcore._sync.http2') if m in sys.modules], 'httpcore' in sys.modules, s.trio)\n"
        "import trio\nfrom httpcore._sync.http2 import HTTP2Connection\nprint(HTTP2Connection.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]", "True", "None", "httpcore._sync.http2"], out.stdout + out.stderr


# --- the command line: plan/apply, state show, worker, run with Prefect's own worker ----------


HELLO = """from prefect import flow, task
from prefect.artifacts import create_markdown_artifact


@task
def step() -> int:
    return 1


@flow(name="{flow}")
def hello() -> None:
    step()
    create_markdown_artifact("# done", key="{key}")
"""


def test_cli_and_prefect_worker_runs_deployment_to_completed(prefect_server: PrefectServer, prefect_python: str, tmp_path: Path, uid: str) -> None:
    yaml = write_project(tmp_path / "w", f"""
        name: {uid}-w
        work_pools:
          - {{name: {uid}-wpool, type: process}}
        deployments:
          - name: once
            entrypoint: flows/hello.py:hello
            work_pool: {{name: {uid}-wpool}}
    """, {"flows/hello.py": HELLO.format(flow=f"{uid}-hello", key=f"{uid}-report")})
    env = {**os.environ, "BUILDSYS_STATE": f"prefect+{prefect_server.api_url}"}
    env.pop("PREFECT_API_KEY", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BUILDSYS, *args], cwd=yaml.parent, env=env, capture_output=True, text=True, timeout=120)

    applied = cli("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert "Apply complete: 2 change(s) written" in applied.stdout
    assert cli("plan", "--detailed-exitcode").returncode == 0
    shown = cli("state", "show", "--kind", "deployment")
    assert re.search(rf"deployment\s+{uid}-hello/once\s+{uid}-w\b", shown.stdout), shown.stdout
    refused = cli("worker", "start", "--pool", f"{uid}-wpool", "--once")
    assert refused.returncode == 1
    assert f"its runs are served by Prefect's own workers, not by `buildsys worker`. Start one with: prefect worker start --pool {uid}-wpool" in refused.stderr
    missing_key = cli("plan", "--state-key-env", f"{uid.upper()}_KEY")
    assert missing_key.returncode == 1 and f"--state-key-env names {uid.upper()}_KEY, which is not set" in missing_key.stderr

    started = cli("--json", "run", "once")
    assert started.returncode == 0, started.stderr
    home = tmp_path / "prefect-home"
    home.mkdir()
    worker = subprocess.Popen(
        [prefect_python, "-m", "prefect", "worker", "start", "--pool", f"{uid}-wpool", "--type", "process"],
        cwd=yaml.parent, env=prefect_env(prefect_server.api_url, home), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    store = open_store(prefect_server.api_url)
    try:
        run = store.list_runs(deployment=f"{uid}-hello/once")[0]
        done = wait_for(lambda: store.get_run(run.id).is_terminal and store.get_run(run.id), 120, "the run to finish")
        assert done.state == COMPLETED, done
        # Prefect's engine ships log lines in batches of its own: the last may reach the server after
        # the run's final state does
        wait_for(lambda: any("Finished in state Completed()" in line.message for line in store.read_logs(run.id)),
                 60, "the run's last log line to reach Prefect")
        logs = cli("runs", "logs", run.id)
        assert f"Beginning flow run {done.name!r} for flow '{uid}-hello'" in logs.stdout, logs.stdout + logs.stderr
        assert "Finished in state Completed()" in logs.stdout
        assert any(line.logger == "prefect.flow_runs" and line.level == 20 for line in store.read_logs(run.id))
        tasks = store.list_task_runs(run.id)
        assert [(t.name.split("-")[0], t.state) for t in tasks] == [("step", COMPLETED)]
        states = store.list_run_states(run.id)  # Prefect's own history of the run
        assert states[0].state == "SCHEDULED" and [s.state for s in states][-3:] == ["PENDING", "RUNNING", COMPLETED], states
        assert [a.key for a in store.list_artifacts(flow_run_id=run.id)] == [f"{uid}-report"]
        limit = store.set_concurrency_limit(f"{uid}-db", 3)
        assert limit is not None and (limit.name, limit.limit) == (f"{uid}-db", 3)
        assert (f"{uid}-db", 3) in [(x.name, x.limit) for x in store.list_concurrency_limits()]
        assert store.set_concurrency_limit(f"{uid}-db", None) is None
        # a final state set by hand (Prefect's set_state, force only when asked) and a delete
        with pytest.raises(ConflictError, match="replaced only when forced"):
            store.mark_run(run.id, "FAILED")
        marked = store.mark_run(run.id, "FAILED", message="checked by hand", force=True)
        assert (marked.state, marked.state_message) == ("FAILED", "checked by hand")
        assert store.list_run_states(run.id)[-1].state == "FAILED"
        assert store.delete_run(run.id).id == run.id
        with pytest.raises(NotFoundError):
            store.get_run(run.id)
    finally:
        store.close()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
