"""The web UI in a real browser (Debian's chromium, headless) against a real `buildsys server`
with runs made by a real worker: a run from the generated form with a pydantic parameter, its
logs arriving live, cancel, a state set by hand, delete after a confirmation, a pool's custom
variable edited and used by the next run, sign-in with a token. Every page is screenshotted (desktop and phone) and checked for unlabelled controls."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from buildsys.errors import NotFoundError
from buildsys.store.base import StateStore
from tests.server.running import ServerProcess
from tests.services.waiting import wait_for
from tests.services.workers import Workers
from tests.ui.browser import Browser
from tests.ui.conftest import DEPLOYMENT


def start_run(browser: Browser, url: str, **fields: str) -> str:
    """Fill the deployment's Run form and submit it; returns the new run's id."""
    browser.get(f"{url}/deployments/{DEPLOYMENT}")
    for css, value in fields.items():
        browser.fill(f"#{css}", value)
    browser.submit("form[action$='/run'] button[type=submit]")
    def run_id() -> str:
        url = str(browser.driver.current_url)
        return url.rsplit("/runs/", 1)[-1] if "/runs/" in url else ""

    return wait_for(run_id, 20, "the run page after submitting the form")


def test_run_from_the_form_with_a_pydantic_parameter_and_its_logs_live(
    browser: Browser, server: ServerProcess, api: StateStore, worker: Workers, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    browser.get(f"{server.url}/deployments/{DEPLOYMENT}")
    assert browser.find("label[for='f-settings-retries']").text == "Retries integer"
    browser.screenshot("deployment")
    browser.fill("#f-settings-retries", "5")
    browser.choose("#f-settings-mode", "careful")
    browser.fill("#f-settings-labels", "blue\ngreen")
    browser.fill("#f-gate", str(gate))
    browser.submit("form[action$='/run'] button[type=submit]")
    wait_for(lambda: "/runs/" in browser.driver.current_url, 20, "the run page")
    run_id = browser.driver.current_url.rsplit("/", 1)[-1]
    run = api.get_run(run_id)
    assert run.parameters == {
        "day": "2026-12-01",
        "gate": str(gate),
        "settings": {"retries": 5, "mode": "careful", "labels": ["blue", "green"]},
    }
    browser.driver.execute_script("window.__same_page = 'yes'")
    logs = browser.wait_text("#logs", "waiting for gate", 60)
    expected = json.dumps({"labels": ["blue", "green"], "mode": "careful", "retries": 5}, sort_keys=True)
    assert f"settings {expected}" in logs and "day 2026-12-01" in logs and "GREETING=hello" in logs
    assert "released" not in logs
    browser.screenshot("run-following")
    gate.write_text("")
    browser.wait_text("#logs", "released", 30)
    browser.wait_text("#run-state", "Completed", 30)
    browser.wait_text("#logs", "The run ended: Completed", 10)
    rows = [row.text for row in browser.find_all("#run-states tbody tr")]  # the state history followed live too
    assert [r.split()[0] for r in rows] == ["Scheduled", "Pending", "Running", "Completed"]
    assert "ui-worker" in rows[2] and "(ended) 1 ui-worker" in rows[3]
    assert browser.driver.execute_script("return window.__same_page") == "yes", "the page was reloaded"
    browser.screenshot("run-completed")


def test_invalid_form_values_are_named_and_nothing_runs(browser: Browser, server: ServerProcess, api: StateStore) -> None:
    browser.get(f"{server.url}/deployments/{DEPLOYMENT}")
    browser.driver.execute_script("document.getElementById('f-day').value = ''")  # a required date left out
    browser.find("form[action$='/run'] details > summary").click()  # the job variables, folded
    browser.fill("#f-jv-env", "{not json")
    browser.fill("#f-settings-labels", "kept")
    browser.submit("form[action$='/run'] button[type=submit]")
    browser.wait_text("main", "The run was not created")
    assert browser.text("#f-day-error") == "required"
    assert browser.text("#f-jv-env-error").startswith("not valid JSON: Expecting property name")
    assert browser.find("#f-day").get_attribute("aria-invalid") == "true"
    assert browser.find("#f-settings-labels").get_attribute("value") == "kept"  # what was typed stays
    browser.screenshot("run-form-errors")
    assert [r for r in api.list_runs() if not r.auto_scheduled] == []  # (the cron schedule makes its own)
    # fixed, and started later rather than now (Prefect's custom run "start later"); no worker here
    browser.driver.execute_script("document.getElementById('f-day').value = '2026-12-24'")
    browser.fill("#f-jv-env", "")
    browser.driver.execute_script("document.getElementById('f-start_at').value = '2030-01-02T03:04'")
    browser.submit("form[action$='/run'] button[type=submit]")
    wait_for(lambda: "/runs/" in str(browser.driver.current_url), 20, "the run page")
    [run] = [r for r in api.list_runs() if not r.auto_scheduled]
    assert (run.state, run.scheduled_at, run.parameters["day"]) == ("SCHEDULED", 1893553440.0, "2026-12-24")


def test_cancel_a_running_run_change_its_state_and_delete_it(
    browser: Browser, server: ServerProcess, api: StateStore, worker: Workers, tmp_path: Path
) -> None:
    run_id = start_run(browser, server.url, **{"f-gate": str(tmp_path / "never")})
    browser.wait_text("#logs", "waiting for never", 60)
    assert not browser.find_all("#delete-run")  # a running run offers no delete…
    browser.get(f"{server.url}/runs/{run_id}/delete")  # …and its confirmation page refuses
    assert "Cancel it first, and delete it once it has ended." in browser.text("#delete-refused")
    assert not browser.find_all("main form")
    browser.get(f"{server.url}/runs/{run_id}")
    browser.submit("form[action$='/cancel'] button")
    browser.wait_text("#run-state", "Cancelled", 30)
    assert api.get_run(run_id).state == "CANCELLED"
    assert not browser.find_all("form[action$='/cancel']")
    # Change state: a finished run's state is replaced only when forced, as Prefect's force=True
    browser.find("details.change-state > summary").click()
    browser.choose("#f-new-state", "Completed")
    browser.fill("#f-state-message", "the work was done before the cancel")
    assert browser.unlabelled() == []
    browser.submit("form[action$='/state'] button")
    error = browser.wait_text("#change-state-error", "replaced only when forced")
    assert "has already finished (CANCELLED)" in error and api.get_run(run_id).state == "CANCELLED"
    assert browser.find("#f-state-message").get_attribute("value") == "the work was done before the cancel"
    browser.screenshot("run-cancelled-change-state-refused")
    browser.find("#f-force").click()
    browser.submit("form[action$='/state'] button")
    browser.wait_text("#run-state", "Completed", 20)
    rows = [row.text for row in browser.find_all("#run-states tbody tr")]
    assert [r.split()[0] for r in rows][-2:] == ["Cancelled", "Completed"], rows
    assert rows[-1].endswith("the work was done before the cancel")
    assert api.get_run(run_id).state_message == "the work was done before the cancel"
    browser.submit("form[action$='/retry'] button")
    wait_for(lambda: run_id not in browser.driver.current_url, 20, "the retried run's page")
    again = api.get_run(browser.driver.current_url.rsplit("/", 1)[-1])
    assert again.parameters == api.get_run(run_id).parameters and again.id != run_id
    api.request_cancel(again.id)
    # Delete: a confirmation page (no script needed), then the run and its logs are gone
    browser.get(f"{server.url}/runs/{run_id}")
    browser.find("#delete-run").click()
    assert "also deletes all its log lines" in browser.wait_text("#delete-what", "cannot be undone")
    assert browser.unlabelled() == []
    browser.screenshot("run-delete-confirm")
    browser.submit("form[action$='/delete'] button")
    browser.wait_text("#deleted", "Deleted run")
    assert run_id not in browser.text("table")
    for call in (api.get_run, api.read_logs):
        with pytest.raises(NotFoundError):
            call(run_id)


def test_edit_a_custom_pool_variable_and_the_next_run_uses_it(
    browser: Browser, server: ServerProcess, api: StateStore, worker: Workers
) -> None:
    browser.get(f"{server.url}/pools/local")
    notice = browser.text("#gitops").strip() and browser.text("section.notice")
    assert "A change made here is drift: the next buildsys plan of that project shows it" in notice
    assert "applied from commit 0123456789ab" in notice
    assert browser.find("#f-greeting").get_attribute("value") == "hello"
    assert browser.text("#f-greeting-help") == "What the flow says first (a custom variable of this pool)."
    browser.screenshot("pool")
    browser.fill("#f-greeting", "bonjour")
    browser.submit("form[action$='/preview'] input[value=variables] ~ button")
    diff = browser.wait_text("pre.diff", '+        "default": "bonjour",')
    assert '-        "default": "hello",' in diff
    assert api.get_resource("pool", "local").spec["base_job_template"]["variables"]["properties"]["greeting"]["default"] == "hello"
    browser.screenshot("pool-preview")
    browser.submit("form[action$='/save'] button")
    browser.wait_text("main", "Saved: runs created from now on use the new template.")
    # the server has no project: the page compares the pool with what the project's apply wrote
    since = browser.text("#since ~ .scroll table.drift")
    assert since.startswith("Fields that differ from what the apply wrote") and "base_job_template" in since, since
    assert "(not from a plan)" in browser.text("ul.edits")
    pool = api.get_resource("pool", "local")
    assert pool.spec["base_job_template"]["variables"]["properties"]["greeting"]["default"] == "bonjour"
    assert pool.owner == "git-project"  # still git's: the next plan shows the drift
    start_run(browser, server.url)
    browser.wait_text("#logs", "GREETING=bonjour", 60)
    browser.wait_text("#run-state", "Completed", 30)
    # the pool's pause and concurrency limit, and the deployment's schedules, as in Prefect's UI
    browser.get(f"{server.url}/pools/local")
    browser.fill("#f-concurrency_limit", "two")
    browser.submit("form[action$='/settings'] button")
    assert "'two' is not a whole number" in browser.wait_text("#settings-error", "concurrency limit")
    browser.fill("#f-concurrency_limit", "2")
    browser.find("#f-paused").click()
    browser.fill("#f-new_queue", "urgent")
    browser.submit("form[action$='/settings'] button")
    browser.wait_text("main", "Saved: the pool is paused, concurrency limit 2.")
    spec = api.get_resource("pool", "local").spec
    assert (spec["paused"], spec["concurrency_limit"], [q["name"] for q in spec["queues"]]) == (True, 2, ["urgent"])
    browser.find("#q0-paused").click()
    browser.fill("#q0-priority", "5")
    browser.fill("#q0-limit", "1")
    browser.submit("form[action$='/settings'] button")
    browser.wait_text("main", "Saved: the pool is paused")
    assert api.get_resource("pool", "local").spec["queues"] == [
        {"name": "urgent", "priority": 5, "concurrency_limit": 1, "description": None, "paused": True}]
    assert browser.unlabelled() == []  # the queue rows' controls too
    browser.screenshot("pool-queues")
    browser.get(f"{server.url}/deployments/{DEPLOYMENT}")
    browser.submit("form[action$='/pause'] button")
    browser.wait_text("h1", "paused")
    assert api.get_resource("deployment", DEPLOYMENT).spec["paused"] is True
    assert "paused" in browser.text("ul.edits")  # an edit since the project's apply
    browser.submit("form[action$='/resume'] button")
    wait_for(lambda: api.get_resource("deployment", DEPLOYMENT).spec["paused"] is False, 10, "the deployment resumed")


def test_every_page_renders_labelled_at_desktop_and_phone_width(
    browser: Browser, server: ServerProcess, api: StateStore, worker: Workers
) -> None:
    run = api.create_run(DEPLOYMENT, parameters={"settings": {"retries": 1}})
    wait_for(lambda: api.get_run(run.id).is_terminal, 60, "the run to finish")
    pages = {
        "overview": "/",
        "pools": "/pools",
        "pool": "/pools/local",
        "deployments": "/deployments",
        "deployment-page": f"/deployments/{DEPLOYMENT}",
        "runs": "/runs",
        "runs-filtered": "/runs?state=COMPLETED&pool=local&since=1h",
        "run-page": f"/runs/{run.id}",
        "plans": "/plans",
        "login": "/login",
    }
    problems = {}
    for name, path in pages.items():
        browser.get(server.url + path)
        assert browser.find("h1").text, name
        bad = browser.unlabelled()
        browser.driver.set_window_size(390, 844)
        if browser.overflows():
            bad.append("wider than a phone screen")
        browser.screenshot(name)
        if bad:
            problems[name] = bad
    assert problems == {}
    browser.get(f"{server.url}/runs?state=COMPLETED")
    assert run.name in browser.text("table")
    browser.get(f"{server.url}/runs?state=FAILED")
    assert "No runs." in browser.text("table")


def test_pages_read_without_javascript(server: ServerProcess, api: StateStore, worker: Workers) -> None:
    run = api.create_run(DEPLOYMENT, parameters={"settings": {"retries": 1}})
    wait_for(lambda: api.get_run(run.id).is_terminal, 60, "the run to finish")
    page = httpx.get(f"{server.url}/runs/{run.id}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "GREETING=hello" in page.text and "The run ended: Completed." in page.text
    assert "hx-get" not in page.text  # a finished run has nothing to follow


def test_sign_in_with_a_token_and_refused_without(browser: Browser, tmp_path: Path) -> None:
    from tests.server.running import run_cli, server_process

    db = tmp_path / "auth.db"
    tokens = {}
    for scope in ("apply", "read"):
        made = run_cli("server", "token", "create", "--scope", scope, "--db", str(db), cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        tokens[scope] = made.stdout.strip()
    with server_process(str(db), tmp_path, extra=["--auth"]) as srv:
        refused = httpx.get(f"{srv.url}/pools")
        assert refused.status_code == 303 and refused.headers["location"] == "/login?next=%2Fpools"
        browser.get(f"{srv.url}/pools")
        wait_for(lambda: "/login" in browser.driver.current_url, 10, "the sign-in page")
        browser.screenshot("sign-in")
        browser.fill("#token", "bst_wrong_token")
        browser.submit("form[action='/login'] button")
        assert browser.wait_text("#login-error", "not valid")
        browser.fill("#token", tokens["read"])
        browser.submit("form[action='/login'] button")
        wait_for(lambda: browser.driver.current_url.endswith("/pools"), 10, "the pools page after signing in")
        assert "token scope: read" in browser.text("header")
        cookie = browser.driver.get_cookie("buildsys_token")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert browser.driver.execute_script("return document.cookie") == ""  # scripts cannot read it
        # a read token may look but not change anything
        with httpx.Client(base_url=srv.url, cookies={"buildsys_token": tokens["read"], "buildsys_csrf": "c" * 43}) as c:
            posted = c.post("/runs/x/cancel", data={"csrf": "c" * 43}, headers={"Origin": srv.url})
            assert posted.status_code == 403 and "this needs &#39;apply&#39;" in posted.text
            for path in ("/runs/x/delete", "/runs/x/state"):  # nor delete a run, nor set its state
                posted = c.post(path, data={"csrf": "c" * 43, "state": "FAILED"}, headers={"Origin": srv.url})
                assert posted.status_code == 403 and "this needs &#39;apply&#39;" in posted.text, path
            assert c.get("/runs/x/delete").status_code == 403
        # an apply token may change things, but only from this origin with the session's CSRF value
        with httpx.Client(base_url=srv.url, cookies={"buildsys_token": tokens["apply"], "buildsys_csrf": "c" * 43}) as c:
            cross = c.post("/runs/x/cancel", data={"csrf": "c" * 43}, headers={"Origin": "http://evil.example"})
            assert cross.status_code == 403  # (by the server's request guard, or by the UI itself)
            referred = c.post("/runs/x/cancel", data={"csrf": "c" * 43}, headers={"Referer": "http://evil.example/x"})
            assert referred.status_code == 403 and "posted from another site" in referred.text
            bare = c.post("/runs/x/cancel", data={"csrf": "c" * 43})
            assert bare.status_code == 403 and "posted from another site" in bare.text
            forged = c.post("/runs/x/cancel", data={"csrf": "d" * 43}, headers={"Origin": srv.url})
            assert forged.status_code == 403 and "session check failed" in forged.text
            for path in ("/runs/x/delete", "/runs/x/state"):  # the new forms are checked the same way
                forged = c.post(path, data={"csrf": "d" * 43, "state": "FAILED"}, headers={"Origin": srv.url})
                assert forged.status_code == 403 and "session check failed" in forged.text, path
            allowed = c.post("/runs/x/cancel", data={"csrf": "c" * 43}, headers={"Origin": srv.url})
            assert allowed.status_code == 404 and "flow run &#39;x&#39; not found" in allowed.text
        browser.submit("form[action='/logout'] button")
        wait_for(lambda: "/login" in browser.driver.current_url, 10, "the sign-in page after signing out")
        browser.get(f"{srv.url}/runs")
        wait_for(lambda: "/login?next=%2Fruns" in browser.driver.current_url, 10, "sign-in again")
