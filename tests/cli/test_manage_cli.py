"""Terraform's and Prefect's habits on the store: `import` (and its alias `state adopt`), `state rm`,
`deployment pause/resume`, `runs retry`, `plan/show --full`; in-process, against a file store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from buildsys.cli import main
from buildsys.store import open_store
from buildsys.store.base import Change

LONG = "a description of " + "many words " * 30  # 347 characters
PROJECT = f"""\
name: demo
work_pools:
  - name: local
    type: process
deployments:
  - name: a
    entrypoint: flows.py:a
    description: {LONG}
    work_pool: {{name: local}}
    parameters: {{x: 1}}
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(isolated: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    (isolated / "prefect.yaml").write_text(PROJECT)
    (isolated / "flows.py").write_text("def a(x: int = 0):\n    pass\n")
    code, out, err = cli(capsys, "apply", "--auto-approve")
    assert code == 0, err
    assert "Apply complete: 2 change(s) written" in out
    return isolated


def owner_of(project: Path, kind: str, name: str) -> str | None:
    with sqlite3.connect(project / ".buildsys" / "state.db") as db:
        row = db.execute("SELECT owner FROM resources WHERE kind = ? AND name = ?", (kind, name)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_state_rm_forgets_import_and_state_adopt_take_over(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert owner_of(project, "deployment", "a/a") == "demo"
    code, out, err = cli(capsys, "state", "rm", "deployment", "a")
    assert (code, err) == (0, "")
    assert out.startswith("Removed deployment a/a from project 'demo''s state: it stays in the store, unmanaged.")
    assert owner_of(project, "deployment", "a/a") is None
    code, out, _ = cli(capsys, "--json", "state", "rm", "deployment", "a/a")  # again: nothing to do
    assert code == 0 and json.loads(out)["changed"] is False

    code, out, _ = cli(capsys, "plan", "--prune")  # not pruned; declared, so taken over again
    assert code == 0
    assert "~ update deployment a/a (owner: none → demo)\n" in out
    assert "0 to destroy" in out

    code, out, err = cli(capsys, "import", "deployment", "a")
    assert (code, err) == (0, "")
    assert out == "Adopted deployment a/a: now managed by project 'demo'. Run `buildsys plan` to see how it differs.\n"
    assert owner_of(project, "deployment", "a/a") == "demo"
    code, out, _ = cli(capsys, "plan")
    assert code == 0 and "No changes." in out

    cli(capsys, "state", "rm", "pool", "local")
    code, out, _ = cli(capsys, "--json", "state", "adopt", "pool", "local")  # the alias
    assert code == 0 and json.loads(out)["owner"] == "demo"
    assert owner_of(project, "pool", "local") == "demo"


def test_state_rm_refuses_what_another_project_owns_and_what_is_missing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(str(project / ".buildsys" / "state.db"), root=project)
    try:
        have = store.get_resource("deployment", "a/a")
        assert have is not None
        store.apply([Change("update", "deployment", "a/a", dict(have.spec), "other", None)], expected_serial=None)
    finally:
        store.close()
    code, _, err = cli(capsys, "state", "rm", "deployment", "a/a")
    assert code == 1
    assert "deployment a/a is managed by project 'other', not this one ('demo'); nothing was changed" in err
    assert owner_of(project, "deployment", "a/a") == "other"
    code, _, err = cli(capsys, "import", "deployment", "a/a")
    assert code == 1 and "already managed by project 'other'" in err
    code, _, err = cli(capsys, "state", "rm", "variable", "nope")
    assert code == 1 and "no variable 'nope' in the store" in err


def test_deployment_pause_and_resume(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "deployment", "pause", "a")
    assert (code, err) == (0, "")
    assert out == "Deployment a/a paused: no new runs are scheduled until it is resumed.\n"
    code, out, _ = cli(capsys, "deployment", "pause", "a/a")
    assert out == "Deployment a/a was already paused; nothing to do.\n"
    code, out, _ = cli(capsys, "plan")  # the project does not declare `paused`: not its business
    assert "No changes." in out
    code, out, _ = cli(capsys, "--json", "deployment", "resume", "a")
    assert code == 0 and json.loads(out)["paused"] is False and json.loads(out)["changed"] is True
    code, _, err = cli(capsys, "deployment", "pause", "nope")
    assert code == 1 and "no deployment 'nope' in the state store" in err

    (project / "prefect.yaml").write_text(PROJECT + "    paused: false\n")  # now it does
    cli(capsys, "deployment", "pause", "a")
    code, out, _ = cli(capsys, "plan")
    assert "~ update deployment a/a\n    paused: true → false\n" in out


def test_runs_retry_makes_a_new_run_with_the_same_inputs(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--json", "run", "a", "-p", "x=5", "-jv", "env={\"K\": \"v\"}")
    assert code == 0, out
    first = json.loads(out)
    code, _, err = cli(capsys, "runs", "retry", first["id"])
    assert code == 1
    assert f"flow run {first['name']} is SCHEDULED; only a finished run" in err
    cli(capsys, "runs", "cancel", first["id"])
    code, out, _ = cli(capsys, "--json", "runs", "retry", first["name"])
    assert code == 0
    again = json.loads(out)
    assert again["retry_of"] == first["id"] and again["id"] != first["id"]
    assert (again["parameters"], again["job_variables"], again["state"]) == ({"x": 5}, {"env": {"K": "v"}}, "SCHEDULED")
    code, out, _ = cli(capsys, "runs", "retry", first["id"][:8])
    assert code == 0 and f", a retry of {first['name']} (CANCELLED).\n" in out


def test_plan_and_show_full(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "prefect.yaml").write_text(PROJECT.replace(LONG, LONG + "and more"))
    code, out, _ = cli(capsys, "plan", "-o", "plan.json")
    assert code == 0
    assert "chars; see --full or --json)" in out and LONG not in out
    for args in (["plan", "--full"], ["show", "--full", "plan.json"]):
        code, out, _ = cli(capsys, *args)
        assert code == 0
        assert f'    description: "{LONG.strip()}" → "{LONG}and more"\n' in out, args


def test_runs_mark_and_delete(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--json", "run", "a")
    assert code == 0, out
    run = json.loads(out)
    code, _, err = cli(capsys, "runs", "mark", run["id"], "completed")
    assert code == 1 and "SCHEDULED" in err  # a scheduled run can only be cancelled, as set_run_state says
    code, out, err = cli(capsys, "runs", "mark", run["id"], "cancelled", "-m", "not needed")
    assert (code, out) == (0, f"Flow run {run['name']} ({run['id']}) is now CANCELLED.\n"), err
    code, _, err = cli(capsys, "runs", "mark", run["id"], "COMPLETED")
    assert code == 1 and err.startswith("error:")
    code, out, _ = cli(capsys, "--json", "runs", "mark", run["id"], "COMPLETED", "--force")
    assert code == 0 and json.loads(out)["state"] == "COMPLETED"
    code, _, err = cli(capsys, "runs", "mark", run["id"], "RUNNING")
    assert code != 0 and "'RUNNING' is not one of" in err, err

    code, _, err = cli(capsys, "runs", "delete", run["id"])  # no terminal under pytest: asks for --yes
    assert code == 1 and "pass --yes" in err and "nothing was deleted" in err
    code, out, err = cli(capsys, "runs", "delete", run["id"], "--yes")
    assert (code, out) == (0, f"Deleted flow run {run['name']} ({run['id']}) with its logs, states and task runs.\n"), err
    code, _, err = cli(capsys, "runs", "show", run["id"])
    assert code == 1 and f"flow run '{run['id']}' not found" in err



@pytest.mark.parametrize("answer, deleted", [("y\n", True), ("n\n", False), ("\n", False)])
def test_runs_delete_asks_on_a_terminal_and_no_is_the_default(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, answer: str, deleted: bool
) -> None:
    """The one rule of apply, `state import` and `runs delete` (cli.app.ask_or_refuse): on a terminal
    the question is asked and only yes goes ahead (the refusal without one is tested above)."""
    import io

    code, out, _ = cli(capsys, "--json", "run", "a")
    assert code == 0, out
    run = json.loads(out)
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    code, out, err = cli(capsys, "runs", "delete", run["id"])
    assert f"Delete flow run {run['name']} (SCHEDULED) with its logs, states and task runs? [y/N]" in out
    assert (code == 0) is deleted, err
    code, _, err = cli(capsys, "runs", "show", run["id"])
    assert (code == 1 and "not found" in err) is deleted
