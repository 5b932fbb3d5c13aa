"""`--json` is machine output: every command writes one JSON document (or documented JSON Lines),
failures and warnings included, and each document matches its schema in `schemas/`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "$id" in data:
            resources.append((data["$id"], Resource.from_contents(data)))
    return Registry().with_resources(resources)


def check(document: Any, schema: str) -> None:
    data = json.loads((SCHEMAS / schema).read_text())
    errors = sorted(Draft202012Validator(data, registry=_registry()).iter_errors(document), key=str)
    assert [e.message for e in errors] == []


def bs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "BUILDSYS_STATE": str(cwd / "state.db")}, timeout=120)


BROKEN = """\
build:
  - run_shell_script:
      id: build_image
      script: echo image
deployments:
  - name: web
    entrypoint: flows.py:main
    work_pool:
      name: local
      job_variables:
        image: "{{ build-image.stdout }}"
"""
ERROR_AT = {
    "severity": "error",
    "message": "{{ build-image.stdout }} refers to step 'build-image', which does not exist here "
               "(Prefect would silently drop the value)",
    "file": "prefect.yaml",
    "line": 11,
    "col": 17,
    "path": "deployments[web].work_pool.job_variables.image",
    "hint": "did you mean 'build_image'?; step ids here: build_image",
}


@pytest.fixture
def broken(isolated: Path) -> Path:
    (isolated / "prefect.yaml").write_text(BROKEN)
    (isolated / "flows.py").write_text("def main():\n    pass\n")
    return isolated


@pytest.mark.parametrize("command", [["plan"], ["apply", "--auto-approve"], ["deploy"], ["pool", "preview", "web"]])
def test_a_failing_command_writes_one_error_document(broken: Path, command: list[str]) -> None:
    r = bs("--json", *command, cwd=broken)
    assert r.returncode == 1
    document = json.loads(r.stdout)
    check(document, "cli/error.schema.json")
    assert document == {"ok": False, "exit_code": 1, "error": ERROR_AT, "problems": [ERROR_AT]}
    assert r.stderr.startswith("prefect.yaml:11:17: error: {{ build-image.stdout }} refers to step")


def test_validate_reports_the_same_error_as_plan(broken: Path) -> None:
    r = bs("--json", "validate", cwd=broken)
    assert r.returncode == 1
    document = json.loads(r.stdout)
    check(document, "cli/validate.schema.json")
    assert document == {"valid": False, "problems": [ERROR_AT], "deployments": 1, "steps": 1}


def test_usage_errors_and_unknown_commands_are_documents_too(isolated: Path) -> None:
    for args, message in (
        (["plan", "--json", "--bogus"], "No such option '--bogus'"),
        (["--json", "plam"], "No such command 'plam'."),
    ):
        r = bs(*args, cwd=isolated)
        assert r.returncode == 1
        document = json.loads(r.stdout)
        check(document, "cli/error.schema.json")
        assert document["error"]["message"].startswith(message), document


def test_build_is_json_lines_ending_with_a_summary_or_the_error(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(BROKEN.replace("build-image", "build_image"))
    (isolated / "flows.py").write_text("def main():\n    pass\n")
    r = bs("--json", "build", cwd=isolated)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    for event in events:
        check(event, "cli/build-event.schema.json")
    assert [e["event"] for e in events if e["event"] != "log"] == ["start", "done", "summary"]
    assert (events[-1]["ok"], events[-1]["ran"]) == (True, 1)
    (isolated / "prefect.yaml").write_text("build: [\n")
    failed = bs("--json", "build", cwd=isolated)
    assert failed.returncode == 1
    (last,) = [json.loads(line) for line in failed.stdout.splitlines()]
    check(last, "cli/error.schema.json")
    assert last["error"]["line"] == 2


def test_apply_and_deploy_documents_and_warnings(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(BROKEN.replace("build-image", "build_image"))
    (isolated / "flows.py").write_text("def main():\n    pass\n")
    r = bs("--json", "deploy", cwd=isolated)
    assert r.returncode == 0, r.stderr
    *events, last = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events if e["event"] != "log"] == ["start", "done"]
    check(last, "cli/apply.schema.json")
    assert last["applied"] == 1
    assert last["plan"]["warnings"] == [
        "warning: deployment main/web uses work pool 'local', which is neither in the store nor declared here; "
        "runs wait until the pool exists"
    ]
    again = bs("--json", "apply", "--auto-approve", cwd=isolated)
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    check(document, "cli/apply.schema.json")
    assert document["applied"] == 0
