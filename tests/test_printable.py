"""Names and values from users reach terminals and pages with their control, bidi and invisible
characters shown as escapes: CLI listings, plans, errors and logs, the server's JSON and the UI."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from buildsys.cli import main
from buildsys.printable import printable, printable_json
from buildsys.server.app import Settings
from buildsys.store.base import Change
from buildsys.store.sql import SqlStore
from tests.server.running import threaded_server
from tests.store.contract import SOURCE, deployment_spec, pool_spec

OSC = "\x1b]0;pwned\x07"  # retitles a terminal window
POOL = f"evil{OSC}pool"
DEPLOYMENT = "etl/rev\u202eabc"  # U+202E shows what follows right to left
LOG = "line\x1b[2J\x1b[8mhidden\r\u2028fake prompt $ \u202e"
# what must never reach a terminal raw (escapes in our own output are only the ones we print)
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def test_printable_escapes_what_moves_hides_or_reorders_text() -> None:
    assert printable(POOL) == "evil\\x1b]0;pwned\\x07pool"
    assert printable("a\u202eb\u2066c\u200bd\ufeffe\U000e0041f\x85g\ud800") == (
        "a\\u202eb\\u2066c\\u200bd\\ufeffe\\U000e0041f\\x85g\\ud800"
    )
    assert printable("two\nlines\tand tabs") == "two\nlines\tand tabs"
    assert printable("two\nlines\tand tabs", one_line=True) == "two\\x0alines\\x09and tabs"
    # what people write stays as it is: accents, CJK, emoji (a joiner included), right-to-left text
    assert printable("café 東京 👩\u200d💻 שלום") == "café 東京 👩\u200d💻 שלום"


def test_printable_json_is_the_same_document() -> None:
    value = {"name": POOL, "d": DEPLOYMENT, "tag": "\U000e0041", "lone": "\udc80", "ok": "東京 \u200d"}
    text = printable_json(json.dumps(value, ensure_ascii=False))
    assert RAW.search(text) is None and "\U000e0041" not in text and "\udc80" not in text
    assert "東京" in text
    assert json.loads(text) == value


def hostile_store(path: Path) -> str:
    """A store holding hostile names (as an older buildsys, or another door, could have stored them)
    and a run with a hostile log line; returns the run's id."""
    with SqlStore.sqlite(path) as store:
        store.apply(
            [
                Change("create", "pool", "p", pool_spec(), "proj", SOURCE),
                Change("create", "deployment", "etl/d", deployment_spec("d", work_pool_name="p"), "proj", SOURCE),
            ],
            expected_serial=0,
        )
        run = store.create_run("etl/d")
        store.append_logs(run.id, [(1.0, "stdout", LOG)])
    with sqlite3.connect(path) as db:
        db.execute("update resources set name = ? where name = 'p'", (POOL,))
        db.execute("update resources set name = ? where name = 'etl/d'", (DEPLOYMENT,))
        db.execute("update flow_runs set pool = ?, deployment = ?", (POOL, DEPLOYMENT))
    return run.id


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


def test_cli_output_shows_hostile_names_and_logs_as_escapes(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = hostile_store(isolated / "s.db")
    shown_pool, shown_deployment = printable(POOL), printable(DEPLOYMENT)
    outputs = {}
    for args in (
        ("pool", "ls"),
        ("pool", "show", POOL),
        ("runs", "ls"),
        ("runs", "show", run_id),
        ("runs", "logs", run_id),
        ("state", "show"),
        ("run", f"{POOL}/x"),  # an error repeating what was typed
        ("runs", "ls", "--limit", OSC),  # a usage error repeating what was typed
    ):
        code, text = cli(capsys, *args, "--state", "s.db")
        assert RAW.search(text) is None, (args, text)
        outputs[" ".join(args[:2])] = (code, text)
    assert shown_pool in outputs["pool ls"][1] and shown_pool in outputs["pool show"][1]
    assert shown_deployment in outputs["runs show"][1] and shown_deployment in outputs["state show"][1]
    assert printable(LOG, one_line=True) in outputs["runs logs"][1]
    assert shown_pool in outputs[f"run {POOL}/x"][1] and printable(OSC) in outputs["runs ls"][1]
    assert outputs["runs show"][0] == 0 and outputs[f"run {POOL}/x"][0] == 1


def test_plan_shows_hostile_orphans_and_owners_as_escapes(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (isolated / ".buildsys").mkdir()
    hostile_store(isolated / ".buildsys" / "state.db")
    (isolated / "prefect.yaml").write_text("name: proj\nvariables:\n  region: eu\n")
    code, text = cli(capsys, "plan")
    assert code == 0 and RAW.search(text) is None, text
    assert f"    deployment {printable(DEPLOYMENT)}" in text.splitlines()
    assert f"    pool {printable(POOL)}" in text.splitlines()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    run_id = hostile_store(tmp_path / "server.db")
    with SqlStore.sqlite(tmp_path / "server.db") as store, threaded_server(
        store, settings=Settings(housekeeping=False)
    ) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, run_id


def test_server_json_and_pages_show_hostile_names_as_escapes(served: tuple[httpx.Client, str]) -> None:
    client, run_id = served
    for path in ("/api/v1/pools", f"/api/v1/deployments/{DEPLOYMENT}", "/api/v1/runs", f"/api/v1/runs/{run_id}/logs",
                 "/api/v1/resources"):
        answer = client.get(path)
        assert answer.status_code == 200 and RAW.search(answer.text) is None, (path, answer.text)
    assert client.get("/api/v1/pools").json()["items"][0]["name"] == POOL  # the data itself is intact
    for page in ("/pools", "/runs", f"/runs/{run_id}"):
        answer = client.get(page)
        assert answer.status_code == 200 and RAW.search(answer.text) is None, (page, answer.text)
    assert printable(POOL) in client.get("/pools").text
    assert printable(DEPLOYMENT) in client.get("/runs").text


def test_text_that_str_isprintable_passes_holds_no_unsafe_character() -> None:
    """printable() returns such text as it is, without its pattern: every character the pattern
    escapes must be one that str.isprintable refuses."""
    from buildsys.printable import _UNSAFE

    ranges = re.findall(r"(.)(?:-(.))?", _UNSAFE, re.S)
    unsafe = [c for lo, hi in ranges for c in map(chr, range(ord(lo), ord(hi or lo) + 1))]
    assert len(unsafe) > 2000
    assert not [hex(ord(c)) for c in unsafe if c.isprintable()]
    assert printable("plain text, ünïcödé, emoji 👍") == "plain text, ünïcödé, emoji 👍"
    assert printable("a\u202eb") == "a\\u202eb" and printable("a\nb", one_line=True) == "a\\x0ab"
