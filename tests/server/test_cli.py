"""The command line against `buildsys server` (a real process): apply, plan, run, a worker running
the flow, logs — with auth and BUILDSYS_TOKEN; and `server start` refusing what it cannot do."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from buildsys.store.http import HttpStore
from tests.server.running import run_cli, server_process
from tests.services.waiting import wait_for

PROJECT = """\
name: demo
work_pools:
  - name: local
    type: process
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    parameters: {n: 3}
    work_pool: {name: local}
"""


def make_project(root: Path) -> Path:
    project = root / "project"
    (project / "flows").mkdir(parents=True)
    (project / "flows" / "etl.py").write_text("def etl(n: int = 1):\n    print('rows', n)\n")
    (project / "prefect.yaml").write_text(PROJECT)
    return project


def test_apply_plan_run_and_work_through_the_server(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    db = tmp_path / "server.db"
    token = run_cli(
        "server", "token", "create", "--scope", "admin", "--db", str(db), cwd=tmp_path
    ).stdout.strip()
    with server_process(str(db), tmp_path, extra=["--auth"]) as server:
        env = {"BUILDSYS_TOKEN": token}

        def cli(*args: str) -> tuple[int, str, str]:
            result = run_cli("--state", server.url, *args, cwd=project, env=env, timeout=120)
            return result.returncode, result.stdout, result.stderr

        code, out, err = cli("apply", "--auto-approve")
        assert code == 0, err
        assert out.endswith("Apply complete: 2 change(s) written (store serial 1).\n")
        assert cli("plan", "--detailed-exitcode")[:2] == (
            0,
            "No changes. The store matches the project (serial 1).\n",
        )
        code, out, err = cli("run", "etl/nightly")
        assert code == 0, err
        with HttpStore(server.url, token=token) as store:
            (run,) = store.list_runs(deployment="etl/nightly")
            assert (run.state, dict(run.parameters)) == ("SCHEDULED", {"n": 3})
            code, out, err = cli("worker", "start", "--pool", "local", "--once")
            assert code == 0, out + err
            finished = store.get_run(run.id)
            assert (finished.state, finished.exit_code) == ("COMPLETED", 0)
            assert "rows 3" in [line.message for line in store.read_logs(run.id)]
        wrong = run_cli(
            "--state", server.url, "plan", cwd=project, env={"BUILDSYS_TOKEN": "bst_000000000000_x"}
        )
        assert wrong.returncode == 1
        assert wrong.stderr == (
            f"error: the buildsys server at {server.url} refused the request: a valid bearer token is required "
            "(Authorization: Bearer <token>)\n"
            "  hint: set BUILDSYS_TOKEN to a token made with `buildsys server token create`\n"
        )
    assert token not in server.output()


def test_unreachable_server_is_one_line_for_the_cli(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    result = run_cli("--state", "http://127.0.0.1:9", "plan", cwd=project, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the buildsys server at http://127.0.0.1:9 is unreachable: ")
    assert "Traceback" not in result.stderr


def test_a_long_poll_does_not_hold_a_restart(tmp_path: Path) -> None:
    import json
    import socket
    import time

    import httpx

    with server_process(str(tmp_path / "s.db"), tmp_path) as server:
        body = json.dumps({"pool": "none", "worker": "w", "wait": 25}).encode()
        request = (
            f"POST /api/v1/runs/claim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as poll:
            poll.sendall(request)
            # a later request answered means the server has read the long-poll before it
            assert httpx.get(f"{server.url}/healthz").status_code == 200
            start = time.monotonic()
            server.process.terminate()
            server.process.wait(20)
            assert time.monotonic() - start < 10


def test_the_database_must_be_a_database(tmp_path: Path) -> None:
    result = run_cli("server", "start", "--db", "http://127.0.0.1:4300", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.endswith(
        "error: --db must name a database, not a server: http://127.0.0.1:4300\n"
        "  hint: use a SQLite path or a postgresql:// URL\n"
    )


def test_a_schedule_in_prefect_yaml_becomes_runs_on_the_server(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    text = PROJECT + "    schedules:\n      - cron: '30 6 * * *'\n        timezone: Europe/Paris\n"
    (project / "prefect.yaml").write_text(text)
    with server_process(str(tmp_path / "s.db"), tmp_path, extra=["--housekeeping-seconds", "0.2"]) as server:
        result = run_cli("--state", server.url, "apply", "--auto-approve", cwd=project, timeout=120)
        assert result.returncode == 0, result.stderr
        with HttpStore(server.url) as store:
            wait_for(lambda: len(store.list_runs(deployment="etl/nightly")) >= 3, 20, "three scheduled runs")
            runs = store.list_runs(deployment="etl/nightly")
    local = sorted(datetime.fromtimestamp(r.scheduled_at, ZoneInfo("Europe/Paris")) for r in runs)
    assert len(local) == 3
    assert {(t.hour, t.minute, t.second) for t in local} == {(6, 30, 0)}
    assert [(b - a).days for a, b in itertools.pairwise(local)] == [1, 1]
    assert all(r.state == "SCHEDULED" and dict(r.parameters) == {"n": 3} for r in runs)
