"""plan / apply / deploy through the real command line, against a real SQLite store in a git repo."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buildsys.store.base import Change
from buildsys.store.sql import SqlStore

BUILDSYS = [sys.executable, "-m", "buildsys"]

FLOW = '''
from prefect import flow


@flow(name="nightly-etl")
def etl(day: str = "today"):
    """Load the day's data."""
'''

PROJECT = """
name: shop
work_pools:
  - name: local
    type: process
    queues:
      - {name: urgent, priority: 1}
variables:
  region: eu-west-1
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    tags: [etl]
    parameters: {day: today}
    work_pool:
      name: local
      job_variables:
        env: {LOG_LEVEL: "{{ $ETL_LOG_LEVEL }}"}
    pull: []
  - name: hourly
    entrypoint: flows/etl.py:etl
    work_pool: {name: local}
    pull: []
"""


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUILDSYS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def deploy_time_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """PROJECT's job variable reads $ETL_LOG_LEVEL, resolved when planning (as prefect deploy does)."""
    monkeypatch.setenv("ETL_LOG_LEVEL", "INFO")


@pytest.fixture
def repo(isolated: Path) -> Path:
    write(isolated / "prefect.yaml", PROJECT)
    write(isolated / "flows" / "etl.py", FLOW)
    write(isolated / ".gitignore", ".buildsys/\n*.plan.json\n")
    git(isolated, "init", "-q", "-b", "main")
    commit(isolated, "flows")
    return isolated


def store(repo: Path) -> SqlStore:
    return SqlStore.sqlite(repo / ".buildsys" / "state.db")


def header(repo: Path, dirty: bool = False) -> str:
    sha = git(repo, "rev-parse", "HEAD")[:12]
    return f"Planned from prefect.yaml at {sha}" + (" with uncommitted changes" if dirty else "") + "\n\n"


def test_newcomer_flow_plan_apply_edit_prune(repo: Path) -> None:
    first = run(repo, "plan", "--detailed-exitcode")
    # the store it read is named (on stderr, stdout stays the plan)
    assert (first.returncode, first.stderr) == (2, f"State store: SQLite file {repo / '.buildsys' / 'state.db'}\n")
    assert first.stdout.startswith(header(repo) + "+ create variable region\n")
    assert first.stdout.endswith("Plan: 4 to add, 0 to change, 0 to destroy.\n")
    assert '    job_variables: {"env": {"LOG_LEVEL": "INFO"}}\n' in first.stdout

    applied = run(repo, "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.endswith("Apply complete: 4 change(s) written (store serial 1).\n")
    again = run(repo, "plan", "--detailed-exitcode")
    assert (again.returncode, again.stdout) == (
        0,
        header(repo) + "No changes. The store matches the project (serial 1).\n",
    )

    text = (repo / "prefect.yaml").read_text()
    (repo / "prefect.yaml").write_text(text.replace("tags: [etl]", "tags: [etl, daily]"))
    commit(repo, "tag it")
    edited = run(repo, "plan", "--detailed-exitcode")
    assert (edited.returncode, edited.stdout) == (
        2,
        header(repo)
        + "~ update deployment nightly-etl/nightly\n"
        + '    tags: ["etl"] → ["etl", "daily"]\n'
        + "\n"
        + "Plan: 0 to add, 1 to change, 0 to destroy.\n",
    )
    assert run(repo, "apply", "--auto-approve").returncode == 0

    text = (repo / "prefect.yaml").read_text()
    (repo / "prefect.yaml").write_text(text[: text.index("  - name: hourly")])
    commit(repo, "drop hourly")
    orphan = run(repo, "plan")
    assert orphan.stdout == (
        header(repo)
        + "note: 1 resource(s) owned by 'shop' are no longer declared (plan with --prune to delete them):\n"
        + "    deployment nightly-etl/hourly\n"
        + "\n"
        + "No changes. The store matches the project (serial 2).\n"
    )
    pruned = run(repo, "apply", "--prune", "--auto-approve")
    assert pruned.stdout == (
        header(repo)
        + "- delete deployment nightly-etl/hourly\n"
        + "\n"
        + "Plan: 0 to add, 0 to change, 1 to destroy.\n"
        + "Apply complete: 1 change(s) written (store serial 3).\n"
    )
    with store(repo) as s:
        assert sorted((r.kind, r.name, r.owner) for r in s.list_resources()) == [
            ("deployment", "nightly-etl/nightly", "shop"),
            ("pool", "local", "shop"),
            ("variable", "region", "shop"),
        ]
        nightly = s.get_resource("deployment", "nightly-etl/nightly")
        assert nightly is not None
        # resolved when planning, as `prefect deploy` resolves it (not from the worker's environment)
        assert nightly.spec["job_variables"] == {"env": {"LOG_LEVEL": "INFO"}}
        assert nightly.source == {
            "commit": git(repo, "rev-parse", "HEAD~1"),
            "ref": None,
            "file": "prefect.yaml",
            "dirty": False,
        }
    assert run(repo, "plan", "--prune", "--detailed-exitcode").returncode == 0


def test_drift_shows_as_an_update_back_to_git(repo: Path) -> None:
    assert run(repo, "apply", "--auto-approve").returncode == 0
    with store(repo) as s:
        r = s.get_resource("deployment", "nightly-etl/nightly")
        assert r is not None
        spec = {**r.spec, "tags": ["edited-in-ui"], "paused": True}
        s.apply([Change("update", r.kind, r.name, spec, r.owner, r.source)], expected_serial=s.serial())
    drift = run(repo, "plan", "--detailed-exitcode")
    assert (drift.returncode, drift.stdout) == (
        2,
        header(repo)
        + "~ update deployment nightly-etl/nightly\n"
        + '    tags: ["edited-in-ui"] → ["etl"]\n'
        + "\n"
        + "Plan: 0 to add, 1 to change, 0 to destroy.\n",
    )
    assert run(repo, "apply", "--auto-approve").returncode == 0
    with store(repo) as s:
        r = s.get_resource("deployment", "nightly-etl/nightly")
        assert r is not None and (r.spec["tags"], r.spec["paused"]) == (
            ["etl"],
            True,
        )  # pause not declared: kept


def test_saved_plan_is_applied_exactly_and_refused_when_the_store_moved(repo: Path) -> None:
    saved = run(repo, "plan", "-o", "first.plan.json")
    assert saved.stdout.endswith(
        "Saved the plan to first.plan.json. Apply exactly this plan with: buildsys apply first.plan.json\n"
    )
    plan = json.loads((repo / "first.plan.json").read_text())
    assert (plan["serial"], plan["summary"]) == (0, {"add": 4, "change": 0, "destroy": 0})
    # someone else applies meanwhile
    assert run(repo, "apply", "--auto-approve").returncode == 0
    refused = run(repo, "apply", "first.plan.json")
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        1,
        "",
        "error: the state store changed since this plan was made (plan serial 0, store serial 1); nothing was applied\n"
        "  hint: run `buildsys plan` again and review the new plan\n",
    )
    with store(repo) as s:
        assert s.serial() == 1
    fresh = run(repo, "plan", "-o", "second.plan.json", "--json")
    assert json.loads(fresh.stdout)["summary"] == {"add": 0, "change": 0, "destroy": 0}
    done = run(repo, "apply", "second.plan.json")
    assert (done.returncode, done.stdout) == (0, "No changes to apply (store serial 1).\n")


def test_edited_plan_file_is_refused(repo: Path) -> None:
    run(repo, "plan", "-o", "p.plan.json")
    data = json.loads((repo / "p.plan.json").read_text())
    data["changes"][0]["after"]["value"] = "us-east-1"
    (repo / "p.plan.json").write_text(json.dumps(data))
    refused = run(repo, "apply", "p.plan.json")
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: the plan file was modified after it was made (its hash does not match its content)\n"
        "  hint: make a new one with `buildsys plan -o PLAN`; a plan is applied exactly as shown\n",
    )


def test_apply_without_a_terminal_needs_auto_approve(repo: Path) -> None:
    refused = run(repo, "apply")
    assert refused.returncode == 1
    assert refused.stdout.endswith("Plan: 4 to add, 0 to change, 0 to destroy.\n")
    assert refused.stderr == (
        "error: apply needs approval, and there is no terminal to ask on; nothing was applied\n"
        "  hint: pass --auto-approve, or apply a reviewed plan file: `buildsys plan -o PLAN` then `buildsys apply PLAN`\n"
    )
    with store(repo) as s:
        assert (s.serial(), s.list_resources()) == (0, [])


def test_two_applies_at_once_never_lose_an_update(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    state = str(repo / ".buildsys" / "state.db")
    base = (repo / "prefect.yaml").read_text()
    for round_ in range(2):
        write(other / "prefect.yaml", f"name: other\nvariables: {{color: blue{round_}}}\n")
        (repo / "prefect.yaml").write_text(base.replace("tags: [etl]", f"tags: [etl, r{round_}]"))
        procs = [
            subprocess.Popen(
                [*BUILDSYS, "--state", state, "apply", "--auto-approve"],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for cwd in (repo, other)
        ]
        outcomes = [(p.communicate(timeout=120)[1], p.returncode) for p in procs]
        for err, code in outcomes:
            assert code == 0 or err.startswith("error: the state store changed since this plan was made"), err
        assert any(code == 0 for _, code in outcomes)
        for (_, code), cwd in zip(outcomes, (repo, other), strict=True):
            if code != 0:  # the refused one plans again and sees the other's write
                assert run(cwd, "--state", state, "apply", "--auto-approve").returncode == 0
        with store(repo) as s:
            color = s.get_resource("variable", "color")
            nightly = s.get_resource("deployment", "nightly-etl/nightly")
            assert color is not None and nightly is not None
            assert (color.spec["value"], nightly.spec["tags"]) == (f"blue{round_}", ["etl", f"r{round_}"])
            assert s.serial() == 2 * (round_ + 1)  # one write per apply, none lost, none doubled


def test_ref_plans_another_commit_without_checkout(repo: Path) -> None:
    v1 = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    text = (repo / "prefect.yaml").read_text()
    (repo / "prefect.yaml").write_text(
        text.replace("parameters: {day: today}", "parameters: {day: yesterday}")
    )
    commit(repo, "yesterday")
    assert run(repo, "apply", "--auto-approve").returncode == 0
    back = run(repo, "plan", "--ref", "v1", "--detailed-exitcode")
    assert (back.returncode, back.stdout) == (
        2,
        f"Planned from prefect.yaml at v1 ({v1[:12]})\n"
        "\n"
        "~ update deployment nightly-etl/nightly\n"
        '    parameters.day: "yesterday" → "today"\n'
        "\n"
        "Plan: 0 to add, 1 to change, 0 to destroy.\n",
    )
    assert "yesterday" in (repo / "prefect.yaml").read_text()  # the working tree was not touched
    bad = run(repo, "plan", "--ref", "v9")
    assert (bad.returncode, bad.stderr) == (
        1,
        "error: --ref v9: no such commit, branch or tag\n  hint: see `git log --oneline` or `git tag`\n",
    )


def test_dirty_tree_is_noted(repo: Path) -> None:
    (repo / "flows" / "new.py").write_text("x = 1\n")
    out = run(repo, "plan", "--json")
    assert json.loads(out.stdout)["source"]["dirty"] is True
    assert run(repo, "plan").stdout.startswith(header(repo, dirty=True))


def test_outputs_unknown_until_built_then_deploy(repo: Path) -> None:
    write(
        repo / "prefect.yaml",
        """
        name: built
        work_pools: [{name: local, type: process}]
        build:
          - run_shell_script:
              id: sha
              script: echo abc123
              stream_output: false
        deployments:
          - name: d1
            entrypoint: flows/etl.py:etl
            version: "{{ sha.stdout }}"
            work_pool: {name: local}
            pull: []
        """,
    )
    commit(repo, "built")
    before = run(repo, "plan")
    assert "    version: (known after build)\n" in before.stdout
    refused = run(repo, "apply", "--auto-approve")
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: deployment nightly-etl/d1: version depend on build outputs that are not known yet\n"
        "  hint: run `buildsys build` (or `buildsys push`) first, or use `buildsys deploy`\n",
    )
    deployed = run(repo, "deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert '    version: "abc123"\n' in deployed.stdout
    after = run(repo, "plan", "--detailed-exitcode")  # outputs now come from the cache
    assert (after.returncode, after.stdout) == (
        0,
        header(repo) + "No changes. The store matches the project (serial 1).\n",
    )


def test_prune_with_a_selection_and_prune_with_a_plan_file_are_refused(repo: Path) -> None:
    selected = run(repo, "plan", "--prune", "-d", "nightly")
    assert (selected.returncode, selected.stderr) == (
        1,
        "error: --prune needs the whole project, but only some deployments were selected\n"
        "  hint: drop -d/--deployment when pruning\n",
    )
    run(repo, "plan", "-o", "p.plan.json")
    both = run(repo, "apply", "p.plan.json", "--prune")
    assert both.returncode == 1
    assert "--prune is decided when the plan is made" in both.stderr


def _apply_on_a_terminal(repo: Path, answer: bytes) -> tuple[int, str]:
    """`buildsys apply` on a real pseudo-terminal, answering the prompt once it is shown."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*BUILDSYS, "--no-color", "apply"], stdin=slave, stdout=slave, stderr=slave, cwd=repo, close_fds=True
    )
    os.close(slave)
    transcript = b""
    try:
        deadline = time.monotonic() + 60
        while b"Apply these changes? [y/N]: " not in transcript:
            assert time.monotonic() < deadline, transcript
            transcript += os.read(master, 4096)
        os.write(master, answer)
        code = proc.wait(timeout=60)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            transcript += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, transcript.decode().replace("\r\n", "\n")


def test_apply_asks_on_a_terminal(repo: Path) -> None:
    code, text = _apply_on_a_terminal(repo, b"n\n")
    assert code == 1
    assert text.endswith(
        "Plan: 4 to add, 0 to change, 0 to destroy.\nApply these changes? [y/N]: n\nAborted.\n"
    )
    with store(repo) as s:
        assert s.serial() == 0
    code, text = _apply_on_a_terminal(repo, b"y\n")
    assert code == 0
    assert text.endswith(
        "Apply these changes? [y/N]: y\n"
        f"State store: SQLite file {repo / '.buildsys' / 'state.db'}\n"
        "Apply complete: 4 change(s) written (store serial 1).\n"
    )


def test_the_same_commands_against_the_http_store(repo: Path, tmp_path: Path) -> None:
    from tests.server.running import threaded_server

    with SqlStore.sqlite(tmp_path / "served.db") as backing, threaded_server(backing) as url:
        assert run(repo, "--state", url, "plan", "-o", "p.plan.json").returncode == 0
        applied = run(repo, "--state", url, "apply", "--auto-approve")
        assert applied.stdout.endswith("Apply complete: 4 change(s) written (store serial 1).\n"), (
            applied.stderr
        )
        again = run(repo, "--state", url, "plan", "--detailed-exitcode")
        assert (again.returncode, again.stdout) == (
            0,
            header(repo) + "No changes. The store matches the project (serial 1).\n",
        )
        stale = run(repo, "--state", url, "apply", "p.plan.json")
        assert (stale.returncode, stale.stderr.splitlines()[0]) == (
            1,
            "error: the state store changed since this plan was made (plan serial 0, store serial 1); "
            "nothing was applied",
        )
        assert sorted(r.name for r in backing.list_resources()) == [
            "local",
            "nightly-etl/hourly",
            "nightly-etl/nightly",
            "region",
        ]


def test_ref_checks_entrypoint_files_at_that_commit_not_in_the_working_tree(repo: Path) -> None:
    git(repo, "tag", "v1")
    git(repo, "mv", "flows/etl.py", "flows/pipeline.py")
    write(repo / "prefect.yaml", PROJECT.replace("flows/etl.py", "flows/pipeline.py"))
    commit(repo, "moved")
    at_v1 = run(repo, "plan", "--ref", "v1")
    assert at_v1.returncode == 0, at_v1.stderr
    assert "does not exist" not in at_v1.stdout  # flows/etl.py is gone from disk, but not from v1
    (repo / "flows" / "pipeline.py").unlink()
    here = run(repo, "plan")
    at_head = run(repo, "plan", "--ref", "HEAD")
    assert here.returncode == 0 and at_head.returncode == 0, here.stderr + at_head.stderr
    assert "does not exist" not in at_head.stdout  # committed at HEAD, deleted only on disk
    # located exactly as `validate` prints it: FILE:LINE:COL: warning: …, the document path, the hint
    warnings = here.stdout.split("\n\n", 1)[0].split("\n")
    assert [line for line in warnings if "entrypoint" in line] == [
        line
        for n, name in ((11, "nightly"), (20, "hourly"))
        for line in (
            f"prefect.yaml:{n}:5: warning: entrypoint file flows/pipeline.py does not exist (relative to {repo.resolve()})",
            f"  at deployments[{name}].entrypoint",
            "  hint: entrypoints are relative to the directory that holds the project file",
        )
    ]


def test_a_plan_imports_only_what_it_uses(tmp_path: Path) -> None:
    """A plan against a SQLite store, its parameters and job variables valid, imports no
    jsonschema (only a refused value is explained by it), no httpx/rich CLI, no Docker SDK,
    GitPython (no repository), networkx or SQLAlchemy: their imports were most of a CI plan's time."""
    write(tmp_path / "flows" / "etl.py", FLOW)
    write(tmp_path / "prefect.yaml", PROJECT)
    heavy = ["jsonschema", "rich", "pygments", "httpx", "docker", "git", "networkx", "sqlalchemy"]
    probe = (
        "import sys\nfrom buildsys.cli import main\n"
        "try:\n    main(['--state', 'state.db', 'plan'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, env={**os.environ, "ETL_LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.stderr
    assert "+ create deployment nightly-etl/nightly" in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
