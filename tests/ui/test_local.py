"""`buildsys ui` over a project's own file store: loopback only, no token, the project's applied
plans and its step graph with cache states, stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from tests.services.net import free_port
from tests.services.waiting import wait_for
from tests.ui.browser import Browser

PROJECT = """\
name: demo
prefect-version: 3.0.0
build:
  - prefect.deployments.steps.run_shell_script:
      id: stamp
      script: echo built
  - prefect.deployments.steps.run_shell_script:
      id: second
      script: echo "{{ stamp.stdout }}"
work_pools:
  - name: local
    type: process
deployments:
  - name: dev
    entrypoint: flow.py:hello
    work_pool:
      name: local
"""


def buildsys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_buildsys_ui_shows_the_projects_plans_and_step_graph(tmp_path: Path, browser: Browser) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "prefect.yaml").write_text(PROJECT)
    (root / "flow.py").write_text(textwrap.dedent('def hello(name: str = "world"):\n    print("hello", name)\n'))
    buildsys("build", cwd=root)
    buildsys("apply", "--auto-approve", cwd=root)
    changed = PROJECT.replace("echo built", "echo rebuilt")  # stamp would run again
    (root / "prefect.yaml").write_text(changed.replace("    entrypoint: flow.py:hello", "    entrypoint: flow.py:hello\n    tags: [nightly]"))
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "buildsys", "ui", "--port", str(port), "--no-browser"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/plans").status_code == 200, 30, "buildsys ui to answer",
                 ignore=(httpx.TransportError,))
        assert log.read_text() == f"buildsys ui on {url}/ (state .buildsys/state.db); Ctrl-C stops it\n"
        browser.get(f"{url}/plans")
        plans = browser.text("section[aria-labelledby=plans]")
        assert "store serial 0 → 1, 2 to add, 0 to change, 0 to destroy" in plans
        assert "+ create pool local" in plans and "Plan: 2 to add, 0 to change, 0 to destroy." in plans
        graph = browser.text("section[aria-labelledby=graph] table")
        rows = [re.sub(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", " <built>", line) for line in graph.splitlines()[2:]]
        assert rows == [
            "stamp build would run inputs changed: script <built>",
            "second build blocked upstream step stamp would run first <built>",
        ]
        svg = browser.find("svg.stepgraph")
        assert svg.find_element("css selector", "title").get_attribute("textContent") == "Step graph: 2 step(s)"
        assert browser.unlabelled() == []
        browser.screenshot("plans-local")
        browser.get(f"{url}/pools/local")
        assert "Owned by git" in browser.text("main")
        assert "The store matches the project's prefect.yaml" in browser.text("section[aria-labelledby=drift]")
        browser.get(f"{url}/deployments/hello/dev")  # desired (the edited prefect.yaml) against the store
        drift = browser.text("section[aria-labelledby=drift]")
        assert "The store differs from the project: the next buildsys apply makes these changes." in drift
        assert [r.text for r in browser.find_all("table.drift tbody tr")] == ['tags [] ["nightly"]']
        assert browser.text("section[aria-labelledby=drift] pre.diff") == '~ update deployment hello/dev\n    tags: [] → ["nightly"]'
        browser.screenshot("deployment-drift")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(20)
    assert code == 0, log.read_text()
