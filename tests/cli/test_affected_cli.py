"""`buildsys affected` and `--affected[=REF]` on build, push, plan, apply and deploy: whole outputs,
in-process (click's runner in the test's working directory)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from buildsys.cli import cli
from buildsys.cli.app import App
from buildsys.errors import BuildsysError
from tests.cli.test_json_output import check

PROJECT = """\
name: shop
work_pools:
  - {name: local, type: process}
build:
  - run_shell_script:
      id: shared
      script: echo shared
      inputs: [common.txt]
deployments:
  - name: a
    entrypoint: flows/a.py:a
    work_pool: {name: local}
  - name: b
    entrypoint: flows/b.py:b
    work_pool: {name: local}
    build:
      - run_shell_script:
          id: own
          script: echo own
          inputs: [flows/b.py]
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def bs(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), obj=App(), catch_exceptions=False)
    return result


@pytest.fixture
def shop(isolated: Path) -> Path:
    """Committed on main, built and applied: the store and the cache hold the base."""
    (isolated / "prefect.yaml").write_text(PROJECT)
    (isolated / ".gitignore").write_text(".buildsys/\n")
    (isolated / "common.txt").write_text("one\n")
    (isolated / "flows").mkdir()
    (isolated / "flows" / "a.py").write_text("def a(n: int = 1):\n    return n\n")
    (isolated / "flows" / "b.py").write_text("def b(n: int = 1):\n    return n\n")
    git(isolated, "init", "-q", "-b", "main")
    git(isolated, "add", "-A")
    git(isolated, "commit", "-q", "-m", "base")
    assert bs("deploy", "-q").exit_code == 0
    return isolated


def change_b(root: Path) -> None:
    (root / "flows" / "b.py").write_text("def b(n: int = 2):\n    return n\n")


def test_affected_text_and_json(shop: Path) -> None:
    commit = git(shop, "rev-parse", "HEAD")
    r = bs("affected", "--base", "main")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        f"Compared with main ({commit[:12]}).\nSteps affected: 0 of 2\nDeployments affected: 0 of 2\n"
    )
    change_b(shop)
    r = bs("affected")
    assert r.stdout == (
        f"Compared with the merge base with main ({commit[:12]}).\n"
        "Steps affected: 1 of 2\n"
        "  ▶ own  input file flows/b.py changed\n"
        "Deployments affected: 1 of 2\n"
        "  ~ b  step own: input file flows/b.py changed\n"
        "      entrypoint file flows/b.py changed: version, parameter_schema\n"
    )
    r = bs("--json", "affected", "--base", "main")
    document = json.loads(r.stdout)
    check(document, "cli/affected.schema.json")
    assert document["deployments"] == [{
        "name": "b", "identity": "b/b", "steps": ["own"], "fields": ["version", "parameter_schema"],
        "reasons": ["step own: input file flows/b.py changed", "entrypoint file flows/b.py changed: version, parameter_schema"],
    }]
    assert document["counts"] == {"steps": 1, "total_steps": 2, "deployments": 1, "total_deployments": 2}


def test_build_and_push_affected_run_only_the_affected_deployments(shop: Path) -> None:
    r = bs("--json", "build", "--affected=main")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["message"] == "build ok: nothing affected since main; nothing was run"
    assert "0 of 2 deployment(s): none" in r.stderr
    change_b(shop)
    (shop / "common.txt").write_text("two\n")  # not committed either: deployment a is affected too
    r = bs("--json", "push", "--affected=main", "-d", "b")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    for event in events:
        check(event, "cli/build-event.schema.json")
    assert [(e["event"], e.get("step")) for e in events if e["event"] in ("start", "cached")] == [("start", "own")]
    assert "1 of 2 deployment(s): b" in r.stderr


def test_plan_and_apply_affected_plan_only_the_affected_deployments(shop: Path) -> None:
    r = bs("--json", "plan", "--affected=main")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["changes"] == []
    change_b(shop)
    r = bs("--json", "plan", "--affected")
    plan = json.loads(r.stdout)
    assert [(c["action"], c["name"], [f["path"] for f in c["fields"]]) for c in plan["changes"]] == [
        ("update", "b/b", ["version", "parameter_schema.properties.n.default"])
    ]
    with pytest.raises(BuildsysError, match="--prune needs the whole project"):
        bs("plan", "--affected", "--prune")
    r = bs("--json", "apply", "--affected=main", "--auto-approve")
    assert json.loads(r.stdout)["applied"] == 1
    assert json.loads(bs("--json", "plan").stdout)["changes"] == []


def test_plan_affected_reads_each_affected_flow_once(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis's working-tree flows are the plan's: b's flow file is parsed once at the
    working tree (and once at the base), not again by the plan of b (the same plan as before)."""
    import buildsys.desired

    read: list[str] = []
    real = buildsys.desired.flow_info

    def counting(entrypoint: str, reader: object) -> object:
        read.append(entrypoint)
        return real(entrypoint, reader)  # type: ignore[arg-type]

    monkeypatch.setattr(buildsys.desired, "flow_info", counting)
    change_b(shop)
    for command in ("plan", "apply"):
        read.clear()
        r = bs("--json", command, "--affected=main", *(["--auto-approve"] if command == "apply" else []))
        assert r.exit_code == 0, r.output
        assert read == ["flows/b.py:b", "flows/b.py:b"], command  # the working tree's, then the base's
    assert json.loads(bs("--json", "plan").stdout)["changes"] == []


def test_plan_affected_loads_the_project_once(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis compiles the project the command loaded, not one read back from the cache
    layer's record of it (a second load: the whole project unpickled); the same plan."""
    import buildsys.caches

    loads: list[str] = []
    real = buildsys.caches.load_project

    def counting(path: Path, *, strict: bool = False) -> object:
        loads.append(str(path))
        return real(path, strict=strict)

    monkeypatch.setattr(buildsys.caches, "load_project", counting)
    change_b(shop)
    r = bs("--json", "plan", "--affected=main")
    assert r.exit_code == 0, r.output
    assert [(c["action"], c["name"]) for c in json.loads(r.stdout)["changes"]] == [("update", "b/b")]
    assert loads == ["prefect.yaml"]


def test_deploy_affected_builds_and_applies_only_the_affected_deployments(shop: Path) -> None:
    (shop / "prefect.yaml").write_text(PROJECT.replace("    work_pool: {name: local}\n  - name: b", "    tags: [new]\n    work_pool: {name: local}\n  - name: b"))
    r = bs("--json", "deploy", "--affected=main")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(e["event"], e.get("step")) for e in lines if e.get("event") in ("start", "cached")] == [("cached", "shared")]
    assert [(c["name"], [f["path"] for f in c["fields"]]) for c in lines[-1]["plan"]["changes"]] == [("a/a", ["tags"])]


def test_affected_refuses_what_it_cannot_do(shop: Path) -> None:
    r = bs("plan", "--affected=main", "--ref", "main")
    assert r.exit_code == 2 and "--affected compares the working tree with a ref" in r.output
    r = bs("apply", "plan.json", "--affected")
    assert r.exit_code == 2 and "--affected is decided when the plan is made" in r.output


def test_a_project_without_deployments_builds_its_top_level_build_when_affected(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(
        "build:\n  - run_shell_script:\n      id: one\n      script: echo one\n      inputs: [in.txt]\n"
        "  - run_shell_script:\n      id: two\n      script: echo two\n"
    )
    (isolated / "in.txt").write_text("1\n")
    (isolated / ".gitignore").write_text(".buildsys/\n")
    git(isolated, "init", "-q", "-b", "main")
    git(isolated, "add", "-A")
    git(isolated, "commit", "-q", "-m", "base")
    assert json.loads(bs("--json", "build", "--affected").stdout.splitlines()[-1])["ran"] == 0
    (isolated / "in.txt").write_text("2\n")
    last = json.loads(bs("--json", "build", "--affected").stdout.splitlines()[-1])
    assert (last["ran"], last["cached"]) == (2, 0)  # nothing was built before: both run
    assert json.loads(bs("--json", "affected").stdout)["counts"]["steps"] == 2
