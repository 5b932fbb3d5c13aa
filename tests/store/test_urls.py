"""Which store a --state URL names: mistyped URLs are errors, never a new local store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.errors import StateError
from buildsys.store import describe_store, open_store

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

PROJECT = """\
name: p
work_pools:
  - {name: local, type: process}
"""


@pytest.mark.parametrize(
    ("url", "message", "hint_start"),
    [
        ("htps://127.0.0.1:4960", "unknown state store URL scheme 'htps:' in 'htps://127.0.0.1:4960'",
         "did you mean https://?"),
        ("ftp://x", "unknown state store URL scheme 'ftp:' in 'ftp://x'", "a store is a path"),
        ("postgressql://u:pw@db/x", "unknown state store URL scheme 'postgressql:' in 'postgressql://u:****@db/x'",
         "did you mean postgresql://?"),
        ("sqlite://state.db", "unknown state store URL 'sqlite://state.db'", "a SQLite store is sqlite:///"),
        ("", "the state store URL is empty", "give --state"),
    ],
)
def test_mistyped_urls_are_errors_and_create_nothing(
    tmp_path: Path, url: str, message: str, hint_start: str
) -> None:
    with pytest.raises(StateError) as err:
        open_store(url, root=tmp_path)
    assert err.value.message == message
    assert (err.value.hint or "").startswith(hint_start)
    assert list(tmp_path.iterdir()) == []


def test_paths_and_sqlite_urls_still_open(tmp_path: Path) -> None:
    for url in ("state.db", "./odd:name.db", f"sqlite:///{tmp_path}/abs.db", "sub/dir.db"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        open_store(url, root=tmp_path).close()
    assert sorted(p.name for p in tmp_path.rglob("*.db")) == ["abs.db", "dir.db", "odd:name.db", "state.db"]
    assert describe_store("state.db", tmp_path) == f"SQLite file {tmp_path.resolve() / 'state.db'}"
    assert describe_store("https://u:tok@h:4300/") == "buildsys server https://u:****@h:4300"


def buildsys(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, **env})


def test_apply_to_a_mistyped_url_writes_nothing_and_plan_apply_name_the_store(tmp_path: Path) -> None:
    (tmp_path / "prefect.yaml").write_text(PROJECT)
    done = buildsys(tmp_path, "apply", "--auto-approve", BUILDSYS_STATE="htps://127.0.0.1:4960")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("error: unknown state store URL scheme 'htps:'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefect.yaml"]

    store = tmp_path / ".buildsys" / "state.db"
    planned = buildsys(tmp_path, "plan")
    assert planned.returncode == 0 and planned.stderr == f"State store: SQLite file {store}\n"
    applied = buildsys(tmp_path, "apply", "--auto-approve")
    assert applied.returncode == 0 and applied.stderr == f"State store: SQLite file {store}\n"
    quiet = buildsys(tmp_path, "-q", "plan")
    assert quiet.stderr == ""
