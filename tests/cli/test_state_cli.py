"""`buildsys state show / export / import` as a user runs them: real processes, real store files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from buildsys.store.base import Change
from buildsys.store.sql import SqlStore
from tests.store.contract import SOURCE, deployment_spec, pool_spec


def bs(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True, input=stdin, timeout=120
    )


def filled(path: Path) -> SqlStore:
    store = SqlStore.sqlite(path)
    store.apply(
        [
            Change("create", "pool", "local", pool_spec(), "proj", SOURCE),
            Change("create", "deployment", "etl/nightly", deployment_spec(), "proj", SOURCE),
            Change("create", "variable", "region", {"value": "eu"}, None, None),
        ],
        expected_serial=0,
    )
    run = store.create_run("etl/nightly")
    store.claim_runs("local", "w1")
    store.append_logs(run.id, [(1.0, "stdout", "hello"), (2.0, "stderr", "bye")])
    return store


def test_show_on_a_new_store(isolated: Path) -> None:
    r = bs("state", "show", cwd=isolated)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"store:  sqlite:///{isolated / '.buildsys/state.db'}\nserial: 0\nno resources\n"


def test_show_lists_resources_and_workers(isolated: Path) -> None:
    store = filled(isolated / "s.db")
    updated = {r.name: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated_at)) for r in store.list_resources()}
    seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(store.list_workers()[0].last_heartbeat))
    store.close()
    r = bs("state", "show", "--state", "s.db", cwd=isolated)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines() == [
        f"store:  sqlite:///{isolated / 's.db'}",
        "serial: 1",
        "KIND        NAME         OWNER  SERIAL  UPDATED",
        f"deployment  etl/nightly  proj   1       {updated['etl/nightly']}",
        f"pool        local        proj   1       {updated['local']}",
        f"variable    region       -      1       {updated['region']}",
        f"worker w1 (pool local): ONLINE, last seen {seen}",
    ]


def test_show_json(isolated: Path) -> None:
    filled(isolated / "s.db").close()
    r = bs("state", "show", "--json", "--kind", "pool", "--state", "s.db", cwd=isolated)
    assert (r.returncode, r.stderr) == (0, "")
    data = json.loads(r.stdout)
    assert (data["url"], data["serial"]) == (f"sqlite:///{isolated / 's.db'}", 1)
    assert [(x["kind"], x["name"], x["owner"], x["serial"], x["source"]) for x in data["resources"]] == [
        ("pool", "local", "proj", 1, SOURCE)
    ]
    assert [(w["name"], w["pool"], w["status"]) for w in data["workers"]] == [("w1", "local", "ONLINE")]


def test_export_import_round_trip_through_files(isolated: Path) -> None:
    store = filled(isolated / "s.db")
    expected = store.export()
    store.close()
    r = bs("state", "export", "--state", "s.db", "-o", "backup/state.json", cwd=isolated)
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == "exported 3 resources, 1 run, 2 log lines to backup/state.json (serial 1)\n"
    assert json.loads((isolated / "backup/state.json").read_text()) == expected
    r = bs("state", "import", "backup/state.json", "--state", "restored.db", cwd=isolated)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"imported 3 resources, 1 run, 2 log lines into sqlite:///{isolated / 'restored.db'} (serial 1)\n"
    with SqlStore.sqlite(isolated / "restored.db") as restored:
        assert restored.export() == expected


def test_export_to_stdout_and_import_from_stdin(isolated: Path) -> None:
    filled(isolated / "s.db").close()
    exported = bs("state", "export", "--state", "s.db", cwd=isolated)
    assert (exported.returncode, exported.stderr) == (0, "")
    r = bs("state", "import", "-", "--state", "copy.db", cwd=isolated, stdin=exported.stdout)
    assert (r.returncode, r.stderr) == (0, "")
    again = bs("state", "export", "--state", "copy.db", cwd=isolated)
    assert again.stdout == exported.stdout
    r = bs("state", "import", "-", "--yes", "--json", "--state", "copy.db", cwd=isolated, stdin=exported.stdout)
    assert (r.returncode, r.stderr) == (0, "")
    assert json.loads(r.stdout) == {
        "url": f"sqlite:///{isolated / 'copy.db'}",
        "serial": 2,
        "imported": {"resources": 3, "runs": 1, "logs": 2, "workers": 1},
    }


def test_import_into_a_non_empty_store_needs_yes_without_a_terminal(isolated: Path) -> None:
    filled(isolated / "s.db").close()
    (isolated / "empty.json").write_text(json.dumps({"version": 1, "serial": 0, "resources": [], "runs": []}))
    r = bs("state", "import", "empty.json", "--state", "s.db", cwd=isolated)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"error: the store sqlite:///{isolated / 's.db'} is not empty and an import replaces everything in it\n"
        "  hint: pass --yes to replace it (there is no terminal to ask on)\n"
    )
    with SqlStore.sqlite(isolated / "s.db") as store:
        assert len(store.list_resources()) == 3
    r = bs("state", "import", "empty.json", "--yes", "--state", "s.db", cwd=isolated)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"imported 0 resources, 0 runs, 0 log lines into sqlite:///{isolated / 's.db'} (serial 2)\n"
    with SqlStore.sqlite(isolated / "s.db") as store:
        assert (store.list_resources(), store.list_runs(), store.serial()) == ([], [], 2)


def test_import_refuses_bad_files_and_changes_nothing(isolated: Path) -> None:
    filled(isolated / "s.db").close()
    (isolated / "broken.json").write_text('{"version": 1,\n "serial": }')
    (isolated / "wrong.json").write_text(json.dumps({"version": 1, "serial": 1, "resources": [{"kind": "pool"}], "runs": []}))
    cases = {
        "broken.json": "error: broken.json is not JSON: Expecting value at line 2 column 12\n"
        "  hint: make one with `buildsys state export -o FILE`\n",
        "wrong.json": "error: not a buildsys state export: at resources/0: 'name' is a required property\n"
        "  hint: make one with `buildsys state export`\n",
        "missing.json": "error: cannot read missing.json: No such file or directory\n",
    }
    for name, message in cases.items():
        r = bs("state", "import", name, "--yes", "--state", "s.db", cwd=isolated)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", message)
    with SqlStore.sqlite(isolated / "s.db") as store:
        assert (len(store.list_resources()), store.serial()) == (3, 1)


def test_a_corrupt_store_file_is_one_clear_message(isolated: Path) -> None:
    (isolated / "bad.db").write_text("not sqlite " * 100)
    r = bs("state", "show", "--state", "bad.db", cwd=isolated)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"error: the state store {isolated / 'bad.db'} is not a readable buildsys store: file is not a database\n"
        "  hint: restore it from a `buildsys state export`, or move it away to start afresh\n"
    )
