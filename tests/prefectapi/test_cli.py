"""`buildsys runs show / logs / limit(s)` over what Prefect's engine recorded (written here through
the store's engine calls, as /prefect/api writes them)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from buildsys.store.base import Artifact, Change, LogEntry, TaskRun
from buildsys.store.sql import SqlStore
from tests.server.running import run_cli

T0 = 1_800_000_000.0


def _populated(tmp_path: Path) -> tuple[str, str]:
    db = tmp_path / "state.db"
    with SqlStore.sqlite(db) as store:
        store.apply(
            [
                Change("create", "pool", "local", {"type": "process"}),
                Change("create", "deployment", "etl/main", {"flow_name": "etl", "name": "main", "work_pool_name": "local"}),
            ],
            expected_serial=None,
        )
        run = store.create_run("etl/main")
        for tid, name, count, cached, start in (("a" * 8, "double-1", 1, False, T0), ("b" * 8, "flaky-2", 2, False, T0 + 1)):
            history = ({"type": "RUNNING", "name": "Running", "ts": start}, {"type": "COMPLETED", "name": "Completed", "ts": start + 0.25})
            store.record_task_run(
                TaskRun(id=tid, flow_run_id=run.id, name=name, state="COMPLETED", state_name="Completed",
                        state_ts=start + 0.25, created_at=start, started_at=start, ended_at=start + 0.25,
                        run_count=count, cached=cached, history=history)
            )
        store.record_task_run(
            TaskRun(id="c" * 8, flow_run_id=run.id, name="cached-3", state="COMPLETED", state_name="Cached",
                    state_ts=T0 + 2, created_at=T0 + 2, cached=True)
        )
        store.create_artifact(Artifact(id="", flow_run_id=run.id, key="report", type="markdown", data="# Report\nbody"))
        store.append_logs(
            run.id,
            [
                (T0, "stdout", "plain output"),
                LogEntry(T0 + 0.5, "prefect", "doubling 7", 20, "prefect.task_runs", "a" * 8),
                LogEntry(T0 + 3, "prefect", "it broke", 40, "prefect.flow_runs"),
            ],
        )
    return str(db), run.id


def test_runs_show_lists_task_runs_and_artifacts(tmp_path: Path) -> None:
    db, run_id = _populated(tmp_path)
    shown = run_cli("--state", db, "runs", "show", run_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    tail = shown.stdout[shown.stdout.index("TASK RUN  "):]  # after the fields and the state history
    assert tail == (
        "TASK RUN  STATE      DURATION  ATTEMPTS  CACHED\n"
        "double-1  Completed  0.25s     1\n"
        "flaky-2   Completed  0.25s     2\n"
        "cached-3  Cached               0         yes\n"
        "\n"
        "ARTIFACT  TYPE      DESCRIPTION\n"
        "report    markdown  # Report\n"
    )
    as_json = json.loads(run_cli("--state", db, "--json", "runs", "show", run_id, cwd=tmp_path).stdout)
    assert [t["name"] for t in as_json["task_runs"]] == ["double-1", "flaky-2", "cached-3"]
    assert as_json["task_runs"][1]["history"][1]["name"] == "Completed"
    assert as_json["artifacts"][0]["data"] == "# Report\nbody"


def test_runs_logs_shows_time_level_logger_and_task(tmp_path: Path) -> None:
    db, run_id = _populated(tmp_path)
    shown = run_cli("--state", db, "runs", "logs", run_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr

    def at(ts: float) -> str:
        return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]

    assert shown.stdout == (
        "plain output\n"
        f"{at(T0 + 0.5)} INFO     prefect.task_runs double-1: doubling 7\n"
        f"{at(T0 + 3)} ERROR    prefect.flow_runs: it broke\n"
    )


def test_runs_limit_sets_lists_and_removes_a_tag_limit(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    made = run_cli("--state", db, "runs", "limit", "db", "2", cwd=tmp_path)
    assert made.stdout == "Concurrency limit tag:db: 2 slot(s), 0 in use.\n", made.stderr
    with SqlStore.sqlite(Path(db)) as store:
        lease, limits = store.acquire_slots(["tag:db", "tag:other"], 1, 60.0)
        assert lease is not None and [x.name for x in limits] == ["tag:db"]
        assert store.acquire_slots(["tag:db"], 2, 60.0)[0] is None  # 1 + 2 > 2
    listed = run_cli("--state", db, "runs", "limits", cwd=tmp_path)
    assert listed.stdout == "NAME    LIMIT  IN USE\ntag:db  2      1\n"
    removed = run_cli("--state", db, "runs", "limit", "db", "--delete", cwd=tmp_path)
    assert removed.stdout == "Removed the concurrency limit tag:db.\n"
    assert run_cli("--state", db, "runs", "limits", cwd=tmp_path).stdout == "No concurrency limits.\n"
    wrong = run_cli("--state", db, "runs", "limit", "db", cwd=tmp_path)
    assert wrong.returncode == 1 and "give SLOTS to set the limit, or --delete to remove it" in wrong.stderr


def test_export_and_import_keep_task_runs_artifacts_and_limits(tmp_path: Path) -> None:
    db, run_id = _populated(tmp_path)
    with SqlStore.sqlite(Path(db)) as store:
        store.set_concurrency_limit("tag:db", 3)
        exported = store.export()
    assert [t["name"] for t in exported["task_runs"]] == ["double-1", "flaky-2", "cached-3"]
    assert exported["concurrency_limits"] == [{"name": "tag:db", "limit": 3}]
    with SqlStore.sqlite(tmp_path / "copy.db") as copy:
        copy.import_(json.loads(json.dumps(exported)))
        again = copy.export()
        assert [t.name for t in copy.list_task_runs(run_id)] == ["double-1", "flaky-2", "cached-3"]
        assert [a.data for a in copy.list_artifacts(flow_run_id=run_id)] == ["# Report\nbody"]
        assert [line.logger for line in copy.read_logs(run_id)] == [None, "prefect.task_runs", "prefect.flow_runs"]
    for key in ("task_runs", "artifacts", "concurrency_limits", "logs", "runs"):
        assert again[key] == exported[key]


def test_runs_logs_json_is_one_object_per_line_on_stdout(tmp_path: Path) -> None:
    """`--json runs logs` was empty on stdout (the text lines went to stderr): JSON Lines now."""
    from tests.cli.test_json_output import check

    db, run_id = _populated(tmp_path)
    shown = run_cli("--state", db, "--json", "runs", "logs", run_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    for line in lines:
        check(line, "cli/log-line.schema.json")
    assert [(x["seq"], x["stream"], x["level"], x["logger"], x["task_run"], x["message"]) for x in lines] == [
        (1, "stdout", None, None, None, "plain output"),
        (2, "prefect", "INFO", "prefect.task_runs", "double-1", "doubling 7"),
        (3, "prefect", "ERROR", "prefect.flow_runs", None, "it broke"),
    ]
    assert datetime.fromisoformat(lines[1]["time"]).timestamp() == T0 + 0.5
