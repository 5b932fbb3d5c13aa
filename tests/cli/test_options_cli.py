"""Options mean the same everywhere: one short option, one long option, across the whole command tree;
`apply -d` selects like `plan -d`; a repeated `-f` is refused instead of silently keeping the last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from buildsys.cli import cli


def commands(group: click.Group, path: tuple[str, ...] = ("buildsys",)) -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group, info_name=path[-1])
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def test_a_short_option_means_one_thing_in_every_command() -> None:
    meanings: dict[str, dict[str, list[str]]] = {}
    for where, command in [("buildsys", cli), *commands(cli)]:
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            longs = sorted(o for o in param.opts if o.startswith("--"))
            for short in (o for o in param.opts if not o.startswith("--")):
                meanings.setdefault(short, {}).setdefault("/".join(longs) or short, []).append(where)
    clashes = {short: uses for short, uses in meanings.items() if len(uses) > 1}
    assert clashes == {
        # Prefect's own CLI: `prefect deployment run -p/--param`, `prefect worker start -p/--pool`
        "-p": {"--param": ["buildsys run"], "--pool": ["buildsys worker start"]},
        # make's `-n` (dry run) on build/push; Prefect's `prefect worker start -n/--name`
        "-n": {"--dry-run": ["buildsys build", "buildsys push"], "--name": ["buildsys worker start"]},
        # both name the file the command writes
        "-o": {"--out": ["buildsys plan"], "--output": ["buildsys state export"]},
    }
    assert set(meanings["-j"]) == {"--jobs"}
    assert set(meanings["-jv"]) == {"--job-variable"}


def bs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "BUILDSYS_STATE": str(cwd / "state.db")}, timeout=120)


PROJECT = """\
work_pools:
  - {name: local, type: process}
deployments:
  - {name: a, entrypoint: flows.py:main, work_pool: {name: local}}
  - {name: b, entrypoint: flows.py:main, work_pool: {name: local}}
"""


def test_apply_selects_deployments_like_plan(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(PROJECT)
    (isolated / "flows.py").write_text("def main():\n    pass\n")
    r = bs("--json", "apply", "-d", "a", "--auto-approve", cwd=isolated)
    assert r.returncode == 0, r.stderr
    applied = json.loads(r.stdout)
    assert sorted((c["kind"], c["name"]) for c in applied["plan"]["changes"]) == [("deployment", "main/a"), ("pool", "local")]
    rest = bs("--json", "plan", cwd=isolated)
    assert [(c["kind"], c["name"]) for c in json.loads(rest.stdout)["changes"]] == [("deployment", "main/b")]
    (isolated / "plan.json").write_text(rest.stdout)
    refused = bs("apply", "plan.json", "-d", "b", cwd=isolated)
    assert refused.returncode == 1
    assert "-d/--deployment is decided when the plan is made: use `buildsys plan -d … -o PLAN`" in refused.stderr


def test_a_repeated_file_option_is_refused(isolated: Path) -> None:
    (isolated / "a.yaml").write_text(PROJECT)
    (isolated / "b.yaml").write_text(PROJECT)
    for args in (["-f", "a.yaml", "-f", "b.yaml", "plan"], ["-f", "a.yaml", "plan", "-f", "b.yaml"],
                 ["plan", "--file", "a.yaml", "-f", "b.yaml"]):
        r = bs(*args, cwd=isolated)
        assert r.returncode == 1, args
        assert r.stderr.endswith(
            "Error: Invalid value for '-f' / '--file': given 2 times (a.yaml, b.yaml); a command reads one project "
            "file (`buildsys validate FILE…` checks several)\n"
        ), r.stderr
    once = bs("validate", "-f", "a.yaml", cwd=isolated)
    assert once.returncode == 0, once.stderr


def test_runs_ls_refuses_a_state_that_does_not_exist(isolated: Path) -> None:
    r = bs("runs", "ls", "-s", "done", cwd=isolated)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--status' / '-s': 'done' is not a run state; the states are SCHEDULED, PENDING, "
        "RUNNING, COMPLETED, FAILED, CANCELLED, CRASHED, CANCELLING, PAUSED"
    )
    typo = bs("runs", "ls", "-s", "runing", cwd=isolated)
    assert typo.stderr.splitlines()[-1].endswith("(did you mean 'RUNNING'?)")
    ok = bs("runs", "ls", "-s", "completed", "-s", "Failed", cwd=isolated)
    assert (ok.returncode, ok.stdout) == (0, "No flow runs.\n")
