"""The launcher's direct path for a plain `build` / `push` (`buildsys.cli.direct`): it reads an
argument list exactly as the click command does, or leaves it to click; it runs and fails as the
click command does; and it imports no click."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import pytest

import buildsys.cli.build
import buildsys.cli.buildrun
from buildsys.cli import main
from buildsys.cli.app import App
from buildsys.cli.direct import Direct, parse, run
from buildsys.cli.group import cli

# Read by the direct path (each must give what click gives).
ACCEPTED = [
    ["build"], ["push"], ["build", "-q"], ["build", "-j", "2"], ["build", "--jobs=8"], ["build", "--jobs", "16"],
    ["build", "-j", "1"], ["build", "-j", "123456789"], ["build", "-f", "p.yaml"], ["build", "--file=p.yaml"],
    ["build", "--file", "p.yaml", "-d", "a", "-d", "b*"], ["build", "--deployment=x", "--deployment", "y"],
    ["build", "-v", "-v", "-q"], ["build", "--verbose", "--quiet", "--quiet"],
    ["build", "--json", "--no-color", "--explain", "--keep-going", "--no-cache", "--install-requires", "-n"],
    ["build", "--dry-run"], ["build", "--json", "--json"], ["build", "-n", "-n"], ["build", "-d", "a=b"],
    ["build", "--file=a=b.yaml"], ["push", "--cache-from", "http://127.0.0.1:9", "--cache-write"],
    ["push", "--cache-from=s3://bucket/prefix", "-q", "-j", "4", "-f", "x.yaml"], ["build", "--cache-write"],
    ["push", "-d", "a", "-q", "--cache-from", "http://h", "-d", "b", "-v"],
]
# Left to click although click reads them (forms the direct path does not read).
TO_CLICK = [
    ["build", "-qv"], ["build", "-vv"], ["build", "-j2"], ["build", "-fp.yaml"], ["build", "--affected"],
    ["build", "--affected=main"], ["build", "-j", "2", "-j", "3"], ["build", "--state", "x.db"],
    ["build", "--state-key-env", "K"], ["build", "-j", "+3"], ["build", "-j", " 3"], ["build", "-j", "1_0"],
    ["build", "-j", "\u0663"], ["build", "-j", "01"], ["build", "--file="], ["build", "-d", ""],
    ["build", "--cache-from", "u", "--cache-from", "v"], ["build", "-d", "-x"], ["build", "-f", "--json"],
    ["-q", "build"], ["--file", "p.yaml", "build"], ["graph"], ["--version"], [],
]
# Refused by click (the direct path must leave each to click, which says why).
ERRORS = [
    ["build", "-j", "0"], ["build", "-j", "x"], ["build", "-j", "-1"], ["build", "--jobs=0"], ["build", "-j"],
    ["build", "-f", "a", "-f", "b"], ["build", "--file=a", "--file=b"], ["build", "--file"], ["build", "-d"],
    ["build", "--json=1"], ["build", "--json="], ["build", "--no-cache=yes"], ["build", "--cache-write=1"],
    ["build", "extra"], ["build", "--unknown"], ["build", "-x"], ["build", "--jso"], ["build", "--", "x"],
    ["build", "-h"], ["build", "--help"], ["push", "--help"], ["bild"], ["build", "-q=1"], ["build", "--verbose=2"],
]
ENVIRONMENTS = [{}, {"BUILDSYS_CACHE": "http://from-env"}, {"BUILDSYS_CACHE": ""}]


def by_click(argv: list[str]) -> tuple[Any, ...] | str:
    """What the click command gives for `argv`: the App's settings and the parameters, or how it
    refused (an error, or the help's exit)."""
    if not argv:
        return "group"
    command = cli.get_command(click.Context(cli), argv[0])
    if command is None:
        return "error"  # no such command
    if argv[0] not in ("build", "push"):
        return "not build"
    app = App()
    try:
        with command.make_context(argv[0], list(argv[1:]), obj=app) as ctx:
            params = dict(ctx.params)
    except click.exceptions.Exit:
        return "exit"
    except click.ClickException:
        return "error"
    return app.file, app.json, app.verbosity, app.color, params


def seen(direct: Direct) -> tuple[Any, ...]:
    return direct.file, direct.json, direct.verbosity, direct.color, direct.params


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=["no-env", "cache-env", "empty-env"])
@pytest.mark.parametrize("argv", ACCEPTED + TO_CLICK + ERRORS, ids=lambda a: " ".join(a) or "(none)")
def test_the_direct_path_reads_an_argument_list_as_click_does_or_leaves_it(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BUILDSYS_CACHE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    direct = parse(argv, os.environ)
    expected = by_click(argv)
    if argv in ERRORS:
        assert expected in ("error", "exit")  # the table is what it says
    if argv in ACCEPTED:
        assert direct is not None
        assert isinstance(expected, tuple)
        assert direct.sections == (("build",) if argv[0] == "build" else ("build", "push"))
    if argv in TO_CLICK:
        assert direct is None
    if direct is not None:
        assert seen(direct) == expected
    if isinstance(expected, str):
        assert direct is None


def _both(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[tuple[object, str, str]]:
    """The outcome (exit status, stdout, stderr) of `argv` through the direct path and through click."""
    out = []
    for way in ("direct", "click"):
        with pytest.raises(SystemExit) as exc:
            if way == "direct":
                direct = parse(argv, os.environ)
                assert direct is not None
                run(direct, argv)
            else:
                main(argv)
            raise SystemExit(0)
        got = capsys.readouterr()
        out.append((exc.value.code, *(re.sub(r"buildsys-crash-[^\s\"]+", "LOG", text) for text in (got.out, got.err))))
    return out


def test_the_direct_path_fails_as_click_does(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["build"], ["build", "--json"], ["push", "-f", "other.yaml", "-q"]):  # no project file
        direct, through_click = _both(argv, capsys)
        assert direct == through_click
        assert direct[0] == 1 and "no project file" in direct[1] + direct[2]
    (isolated / "prefect.yaml").write_text("name: p\nbuild:\n  - run_shell_script: {id: a, script: 'exit 3'}\n")
    direct, through_click = _both(["build", "-q"], capsys)  # a step fails: SystemExit(1), the same report
    assert direct == through_click and direct[0] == 1 and "build failed" in direct[2]

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(buildsys.cli.buildrun, "run_sections", interrupted)
    monkeypatch.setattr(buildsys.cli.build, "run_sections", interrupted)
    for argv in (["build"], ["build", "--json"]):
        direct, through_click = _both(argv, capsys)
        assert direct == through_click and direct[:1] == (1,) and direct[2] == "\nAborted.\n"

    def crashed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(buildsys.cli.buildrun, "run_sections", crashed)
    monkeypatch.setattr(buildsys.cli.build, "run_sections", crashed)
    monkeypatch.setattr(tempfile, "tempdir", str(isolated))  # the crash logs
    direct, through_click = _both(["build", "--json"], capsys)
    assert direct == through_click and direct[0] == 3 and "internal error: buildsys crashed" in direct[2]


def test_a_plain_build_runs_without_click(isolated: Path) -> None:
    """A rebuild (not a no-op) through the real entry point imports no click; one the direct path
    does not read goes through click with the same outcome."""
    (isolated / "prefect.yaml").write_text("name: p\nbuild:\n  - run_shell_script: {id: a, script: 'echo hi', inputs: [x.txt]}\n")
    outputs = []
    for n, argv in enumerate((["build", "-q", "-j", "2"], ["build", "-qj", "2"])):
        (isolated / "x.txt").write_text(f"{n}\n")
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "buildsys", *argv], cwd=isolated,
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr[-3000:]
        modules = {m.group(1) for m in re.finditer(r"^import time:.*\| +(\S+)$", result.stderr, re.M)}
        assert ("click" in modules) == (n == 1), argv
        assert "buildsys.engine" in modules
        outputs.append((result.stdout, [line for line in result.stderr.splitlines() if not line.startswith("import time:")]))
    assert outputs[0] == outputs[1] == ("", ["build ok: 1 ran, 0 cached, 0 failed, 0 not run"])


def test_the_no_op_answer_is_given_only_to_what_click_accepts(isolated: Path) -> None:
    """A provable no-op is answered from the manifest (the control), but an argument list click
    refuses gets click's refusal, not the manifest's answer (before: `build -j 0`, `-j abc`,
    `--json=` and `--explain=` answered 'build ok' with status 0)."""
    (isolated / "prefect.yaml").write_text("name: p\nbuild:\n  - run_shell_script: {id: a, script: 'echo hi', inputs: [x.txt]}\n")
    (isolated / "x.txt").write_text("x\n")
    for name in ("prefect.yaml", "x.txt"):  # older than the racy window: the manifest can prove a no-op
        os.utime(isolated / name, (1_700_000_000, 1_700_000_000))

    def buildsys(*argv: str) -> tuple[int, str]:
        result = subprocess.run([sys.executable, "-m", "buildsys", *argv], cwd=isolated, capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL)
        return result.returncode, result.stdout + result.stderr

    assert buildsys("build", "-q") == (0, "build ok: 1 ran, 0 cached, 0 failed, 0 not run\n")
    assert buildsys("build", "-j", "1") == (0, "build ok: 0 ran, 1 cached, 0 failed, 0 not run\n")
    for argv, said in ((["-j", "0"], "0 is not in the range x>=1"), (["-j", "abc"], "'abc' is not a valid integer"),
                       (["--json="], "Option '--json' does not take a value"),
                       (["--explain="], "Option '--explain' does not take a value")):
        code, output = buildsys("build", *argv)
        assert code == 1 and said in output and "build ok" not in output, (argv, output)


SAY = """
import io, sys
buffer = io.BytesIO()
sys.stderr = io.TextIOWrapper(buffer, encoding=sys.argv[1], errors="backslashreplace", write_through=True)
if sys.argv[2] == "click":
    import click
    click.echo("caf\\u00e9 \\u25b6 done", err=True)
else:
    from buildsys.cli import _say
    _say("caf\\u00e9 \\u25b6 done")
sys.stderr.flush()
sys.__stdout__.write(repr(buffer.getvalue()) + " " + str("click" in sys.modules))
"""


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "ascii"])
def test_a_failure_message_is_written_as_click_writes_it(encoding: str) -> None:
    """The failure rule's messages (`cli._say`) are the bytes `click.echo(err=True)` writes, on an
    ASCII stderr too (click re-encodes it as UTF-8); click is imported for it only there."""
    def run(way: str) -> tuple[str, str]:
        out = subprocess.run([sys.executable, "-c", SAY, encoding, way], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        written, imported = out.rsplit(" ", 1)
        return written, imported

    by_click, by_say = run("click"), run("say")
    assert by_say[0] == by_click[0]
    assert by_say[1] == ("True" if encoding == "ascii" else "False")


def test_the_no_op_answer_says_what_the_build_would_say(isolated: Path) -> None:
    """The manifest's answer reads the command line as the build does (`cli.direct`, one reader):
    a step's line at verbosity above 0 or with --explain, never below 0, as the reporter shows it.
    Before, its own reading showed the lines for `-v -q` and `--explain -q`, where the build does not."""
    (isolated / "prefect.yaml").write_text("name: p\nbuild:\n  - run_shell_script: {id: a, script: 'echo hi', inputs: [x.txt]}\n")
    (isolated / "x.txt").write_text("x\n")
    for name in ("prefect.yaml", "x.txt"):  # older than the racy window: the manifest can prove a no-op
        os.utime(isolated / name, (1_700_000_000, 1_700_000_000))

    def buildsys(*argv: str) -> tuple[int, str, bool]:
        """(status, output, whether the engine was imported: False when the manifest answered)."""
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "buildsys", *argv], cwd=isolated,
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        return result.returncode, result.stdout + "".join(f"{line}\n" for line in said), "buildsys.engine" in result.stderr

    assert buildsys("build")[0] == 0
    summary = "build ok: 0 ran, 1 cached, 0 failed, 0 not run\n"
    line = "= a  cached (unchanged)\n"
    for argv, expected in ((["-v", "-q"], summary), (["-q"], summary), (["-v"], line + summary),
                           (["--explain", "-q"], summary), (["--explain"], line + summary), (["-v", "-v", "-q"], line + summary)):
        assert buildsys("build", *argv) == (0, expected, False), argv  # the manifest's answer
        assert buildsys("build", *argv, "-j2") == (0, expected, True), argv  # the build's (click reads -j2)


# `plan`: read by the direct path (each must give what the click group and command give).
PLAN_ACCEPTED = [
    ["plan"], ["--json", "plan"], ["plan", "--json"], ["--json", "plan", "--state", "../state.db"],
    ["--json", "plan", "--state", "s.db", "--affected=origin/main"], ["plan", "--affected"],
    ["plan", "--affected", "main"], ["plan", "--affected", "--json"], ["plan", "--affected", "-d", "x"],
    ["plan", "--affected", "plan"], ["plan", "--affected", ""], ["-v", "plan", "-v", "-q"],
    ["-q", "-q", "plan", "--verbose"], ["--state", "a.db", "plan", "--state", "b.db"], ["--state=a.db", "plan"],
    ["--state", "a.db", "--state", "b.db", "plan"], ["--state-key-env", "K", "plan"], ["plan", "--state-key-env=K"],
    ["-f", "p.yaml", "plan"], ["plan", "--file=p.yaml"], ["--no-color", "plan", "--prune", "--detailed-exitcode", "--full"],
    ["plan", "-d", "a", "--deployment=b*", "-d", "c"], ["plan", "--ref", "main"], ["plan", "--ref=v1.0"],
    ["plan", "-o", "plan.json"], ["plan", "--out=plan.json", "--detailed-exitcode", "--affected=origin/main"],
    ["--json", "--json", "plan", "--json"], ["plan", "--prune", "--prune"], ["plan", "-o", "existing.json"],
]
# Left to click although click reads them.
PLAN_TO_CLICK = [
    ["plan", "-qv"], ["-vv", "plan"], ["plan", "-fp.yaml"], ["plan", "-op.json"], ["plan", "--ref", "a", "--ref", "b"],
    ["plan", "-o", "a", "-o", "b"], ["plan", "--affected="], ["plan", "--affected", "-"], ["plan", "--affected=-x"],
    ["plan", "-d", "-x"], ["--state", "", "plan"], ["plan", "--ref="], ["plan", "--affected", "main", "--affected"],
    ["--version"], [],
]
# Refused by click or by the command (the direct path must leave each to click).
PLAN_ERRORS = [
    ["plan", "--affected=main", "--ref", "x"], ["plan", "--ref", "x", "--affected"], ["-f", "a", "plan", "-f", "b"],
    ["plan", "-f", "a", "--file", "b"], ["plan", "extra"], ["plan", "--prune=1"], ["plan", "--full=yes"],
    ["plan", "--json=1"], ["--json=1", "plan"], ["plan", "--unknown"], ["plan", "-h"], ["plan", "--help"],
    ["-h", "plan"], ["plan", "--ref"], ["plan", "-o"], ["plan", "-o", "."], ["plan", "--", "x"], ["plna"],
    ["--state"], ["plan", "-d"], ["--affected", "plan"], ["--prune", "plan"], ["-d", "x", "plan"],
    ["--ref", "x", "plan"], ["--version", "plan"],
]


def plan_by_click(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...] | str:
    """What the click group and `plan` command give the plan's work for `argv` (the App's settings
    and the parameters), or how they refused it (an error, or no plan: help, --version)."""
    import buildsys.cli.plan

    got: list[tuple[Any, ...]] = []

    def capture(app: App, **params: Any) -> None:
        got.append((app.file, app.state_url, app.state_key_env, app.json, app.verbosity, app.color, params))

    monkeypatch.setattr(buildsys.cli.plan, "run_plan", capture)
    try:
        cli.main(args=list(argv), prog_name="buildsys", standalone_mode=False, obj=App())
    except click.ClickException:
        return "error"
    return got[0] if got else "no plan"


@pytest.mark.parametrize("argv", PLAN_ACCEPTED + PLAN_TO_CLICK + PLAN_ERRORS, ids=lambda a: " ".join(a) or "(none)")
def test_the_direct_path_reads_a_plan_as_click_does_or_leaves_it(
    argv: list[str], isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (isolated / "existing.json").write_text("{}")
    direct = parse(argv, {})
    expected = plan_by_click(argv, monkeypatch)
    capsys.readouterr()  # help and version said
    if argv in PLAN_ERRORS:
        assert expected in ("error", "no plan")  # the table is what it says
    if argv in PLAN_ACCEPTED:
        assert direct is not None and direct.command == "plan"
        assert isinstance(expected, tuple)
    if argv in PLAN_TO_CLICK:
        assert direct is None
    if direct is not None:
        assert (direct.file, direct.state_url, direct.state_key_env, direct.json, direct.verbosity, direct.color,
                direct.params) == expected
    if isinstance(expected, str):
        assert direct is None


def test_shell_completion_is_left_to_click() -> None:
    for argv in (["plan"], ["build"], ["push", "-q"]):
        assert parse(argv, {"_BUILDSYS_COMPLETE": "bash_complete"}) is None
        assert parse(argv, {"_BUILDSYS_COMPLETE": ""}) is not None  # click: an empty variable completes nothing


PLAN_PROJECT = """\
name: p
build:
  - run_shell_script: {id: stamp, script: "echo built", inputs: ["x.txt"]}
deployments:
  - {name: one, entrypoint: flows/etl.py:etl, work_pool: {name: local}}
work_pools:
  - {name: local, type: process}
"""


def test_a_plan_runs_without_click_and_fails_as_click_does(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real entry point a plain plan imports no click and says what the click command
    says (a form only click reads: the same outcome); its failures are click's, by one rule."""
    for argv in (["plan"], ["--json", "plan"], ["plan", "--detailed-exitcode", "-q"]):  # no project file
        direct, through_click = _both(argv, capsys)
        assert direct == through_click
        assert direct[0] == 1 and "no project file" in direct[1] + direct[2]
    (isolated / "flows").mkdir()
    (isolated / "flows" / "etl.py").write_text('from prefect import flow\n\n\n@flow\ndef etl(day: str = "today"):\n    pass\n')
    (isolated / "x.txt").write_text("x\n")
    (isolated / "prefect.yaml").write_text(PLAN_PROJECT)
    outcomes = []
    for n, argv in enumerate((["--state", "s.db", "plan", "--detailed-exitcode", "-o", "p.json"],
                              ["--state", "s.db", "plan", "--detailed-exitcode", "-qv", "-op.json"])):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "buildsys", *argv], cwd=isolated,
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        modules = {m.group(1) for m in re.finditer(r"^import time:.*\| +(\S+)$", result.stderr, re.M)}
        assert ("click" in modules) == (n == 1), argv
        assert "buildsys.reconcile" in modules
        said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        outcomes.append((result.returncode, result.stdout, said, (isolated / "p.json").read_text()))
        (isolated / "p.json").unlink()
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == 2 and "Saved the plan to p.json" in outcomes[0][1]
    for argv in (["--json", "plan", "--state", "s.db"], ["plan", "--state", "s.db", "-d", "nothere"]):
        direct, through_click = _both(argv, capsys)
        assert direct == through_click, argv


ECHO = """
import io, sys
encoding, way, err, color, text = sys.argv[1], sys.argv[2], sys.argv[3] == "err", eval(sys.argv[4]), eval(sys.argv[5])
buffer = io.BytesIO()
stream = io.TextIOWrapper(buffer, encoding=encoding, errors="backslashreplace", write_through=True)
if err:
    sys.stderr = stream
else:
    sys.stdout = stream
if way == "click":
    import click
    click.echo(text, err=err, color=color)
else:
    from buildsys.cli.app import echo
    echo(text, err=err, color=color)
stream.flush()
sys.__stdout__.write(repr(buffer.getvalue()) + " " + str("click" in sys.modules))
"""


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "ascii"])
@pytest.mark.parametrize(("err", "color", "text"), [
    ("out", None, '{\n  "plan": "caf\u00e9"\n}'), ("err", False, "caf\u00e9 \u25b6 done"),
    ("out", False, "\x1b[32m+ add\x1b[0m"), ("out", True, "\x1b[32m+ add\x1b[0m"), ("out", None, "\x1b[1mbold\x1b[0m"),
])
def test_output_is_written_as_click_writes_it(encoding: str, err: str, color: bool | None, text: str) -> None:
    """`app.echo` (every command's output, and the failure rule's messages) writes the bytes
    `click.echo` writes; click is imported for it only where those are not the text itself (an
    ASCII stream, which click re-encodes; escape sequences it strips)."""
    def run(way: str) -> tuple[str, str]:
        out = subprocess.run([sys.executable, "-c", ECHO, encoding, way, err, repr(color), repr(text)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        written, imported = out.rsplit(" ", 1)
        return written, imported

    by_click, by_echo = run("click"), run("echo")
    assert by_echo[0] == by_click[0]
    assert by_echo[1] == str(encoding == "ascii" or ("\x1b" in text and not color))
