"""`buildsys help [TOPIC]`, `buildsys completion SHELL` and the completers, `validate FILE…` and the
pre-commit hook that relies on it: whole outputs, exit codes, real subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from buildsys import docs
from buildsys.cli import COMMANDS, cli

REPO = Path(__file__).resolve().parents[2]


def bs(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_help_lists_every_topic_with_its_summary(isolated: Path) -> None:
    r = bs("help", cwd=isolated)
    assert r.returncode == 0, r.stderr
    topics = docs.topics()
    width = max(len(t.name) for t in topics)
    assert r.stdout.splitlines() == [
        "Help topics (buildsys help TOPIC):",
        *(f"  {t.name.ljust(width)}  {t.summary}" for t in topics),
        "",
        "Commands (buildsys help COMMAND, or buildsys COMMAND --help):",
        "  " + ", ".join(sorted(COMMANDS)),
    ]
    assert r.stderr == ""


def test_help_topic_prints_the_file_as_written_without_a_terminal(isolated: Path) -> None:
    r = bs("help", "exit-codes", cwd=isolated)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (REPO / "buildsys" / "docs" / "exit-codes.md").read_text()
    # the notes that say how an example is tested (tests/test_doc_examples.py) are not shown
    text = (REPO / "buildsys" / "docs" / "plan-apply.md").read_text()
    r = bs("help", "plan-apply", cwd=isolated)
    assert "<!-- run in: the project above -->" in text and "<!--" not in r.stdout
    assert r.stdout == "".join(line for line in text.splitlines(keepends=True) if not line.startswith("<!--"))


def test_help_generated_topic_and_json(isolated: Path) -> None:
    r = bs("--json", "help", "pool-variables", cwd=isolated)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["topic"], data["title"], data["generated"]) == ("pool-variables", "Pool variables", True)
    assert data["summary"] == "The job variables of each work pool type, generated from its default base job template."
    assert "## kubernetes" in data["text"]


def test_help_unknown_topic_is_an_error_with_did_you_mean(isolated: Path) -> None:
    r = bs("help", "exit-code", cwd=isolated)
    assert r.returncode == 1
    assert r.stdout == ""
    names = ", ".join(t.name for t in docs.topics())
    assert r.stderr == (f"error: no help topic 'exit-code'\n"
                        f"  hint: did you mean 'exit-codes'? `buildsys help` lists the topics ({names})\n")


def test_help_command_is_that_commands_help(isolated: Path) -> None:
    r = bs("help", "validate", cwd=isolated)
    direct = bs("validate", "--help", cwd=isolated)
    assert r.returncode == 0 == direct.returncode
    assert r.stdout.replace("buildsys help validate", "buildsys validate") == direct.stdout


def test_help_picks_up_any_markdown_file_in_the_docs_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zebra.md").write_text("# Zebras\n\nStripes, explained. More text\non two lines.\n\n## Detail\n")
    (tmp_path / "notes.txt").write_text("not a topic\n")
    monkeypatch.setattr(docs, "files", lambda _name: tmp_path)
    result = CliRunner().invoke(cli, ["help"], obj=None)
    assert result.exit_code == 0, result.output
    assert "  zebra           Stripes, explained." in result.output.splitlines()
    assert "notes" not in result.output
    shown = CliRunner().invoke(cli, ["help", "zebra"])
    assert shown.output == "# Zebras\n\nStripes, explained. More text\non two lines.\n\n## Detail\n"


# ---------------------------------------------------------------------------------------------------
# completion

PROJECT = """\
build:
  - run_shell_script:
      id: stamp
      script: echo hi
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    build:
      - run_shell_script:
          id: own-step
          script: echo own
  - name: hourly
    entrypoint: flows/etl.py:etl
  - name: adhoc
    entrypoint: flows/etl.py:etl
"""


def complete(words: str, cwd: Path) -> list[str]:
    parts = words.split(" ")
    r = bs(cwd=cwd, env={"_BUILDSYS_COMPLETE": "bash_complete", "COMP_WORDS": words,
                         "COMP_CWORD": str(len(parts) - 1)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return [line.split(",", 1)[1] for line in r.stdout.splitlines() if line]


def test_completion_of_deployments_steps_and_commands(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(PROJECT)
    assert complete("buildsys build -d ", isolated) == ["adhoc", "hourly", "nightly"]
    assert complete("buildsys plan --deployment h", isolated) == ["hourly"]
    assert complete("buildsys run n", isolated) == ["nightly"]
    assert complete("buildsys cache explain ", isolated) == ["own-step", "stamp"]
    assert complete("buildsys steps show git_", isolated) == ["git_clone"]
    assert complete("buildsys com", isolated) == ["completion"]
    assert complete("buildsys completion ", isolated) == ["bash", "zsh", "fish"]


def test_completion_reads_the_file_given_with_f_and_survives_a_broken_project(isolated: Path) -> None:
    (isolated / "other.yaml").write_text(PROJECT)
    (isolated / "prefect.yaml").write_text("deployments: [\n")
    assert complete("buildsys build -d ", isolated) == []
    assert complete("buildsys -f other.yaml pull -d ", isolated) == ["adhoc", "hourly", "nightly"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_calls_buildsys_with_its_variable(isolated: Path, shell: str) -> None:
    r = bs("completion", shell, cwd=isolated)
    assert r.returncode == 0, r.stderr
    assert "_BUILDSYS_COMPLETE" in r.stdout
    assert f"{shell}_complete" in r.stdout


def test_completion_script_works_in_bash(isolated: Path) -> None:
    """Source the real script in bash and ask it for candidates, as a terminal would."""
    (isolated / "prefect.yaml").write_text(PROJECT)
    bindir = Path(sys.executable).parent
    if not (bindir / "buildsys").exists():
        pytest.skip("the buildsys console script is not installed next to this interpreter")
    script = textwrap.dedent("""\
        eval "$(buildsys completion bash)"
        COMP_WORDS=(buildsys build -d h); COMP_CWORD=3
        _buildsys_completion buildsys
        printf '%s\\n' "${COMPREPLY[@]}"
    """)
    r = subprocess.run(["bash", "-c", script], cwd=isolated, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hourly\n"


# ---------------------------------------------------------------------------------------------------
# validate FILE… and the pre-commit hook

GOOD = "deployments:\n  - name: a\n    entrypoint: flows.py:a\n"
BAD = "deployments:\n  - name: b\n    entrypoint: flows.py:a\n    work_poll: x\n    schedules: 3\n"


@pytest.fixture(autouse=True)
def _flows(isolated: Path) -> None:
    (isolated / "flows.py").write_text("def a():\n    pass\n")


def test_validate_several_files(isolated: Path) -> None:
    (isolated / "svc").mkdir()
    (isolated / "svc" / "flows.py").write_text("def a():\n    pass\n")
    (isolated / "prefect.yaml").write_text(GOOD)
    (isolated / "svc" / "prefect.yaml").write_text(BAD)
    r = bs("validate", "prefect.yaml", "svc/prefect.yaml", cwd=isolated)
    assert r.returncode == 1
    assert r.stdout == "prefect.yaml: valid — 1 deployment(s), 0 step(s)\n"
    assert r.stderr == (
        "svc/prefect.yaml:4:5: warning: unknown key 'work_poll' (ignored)\n"
        "  at deployments[b].work_poll\n"
        "  hint: did you mean 'work_pool'?\n"
        "svc/prefect.yaml:5:5: error: expected array or null, got integer 3\n"
        "  at deployments[b].schedules\n"
        "svc/prefect.yaml: invalid (1 error, 1 warning)\n"
    )
    ok = bs("validate", "prefect.yaml", "prefect.yaml", cwd=isolated)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "prefect.yaml: valid — 1 deployment(s), 0 step(s)\n" * 2


def test_validate_several_files_as_one_json_document(isolated: Path) -> None:
    (isolated / "a.yaml").write_text(GOOD)
    (isolated / "b.yaml").write_text(BAD)
    r = bs("--json", "validate", "a.yaml", "b.yaml", cwd=isolated)
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["valid"] is False
    assert [(f["file"], f["valid"]) for f in data["files"]] == [("a.yaml", True), ("b.yaml", False)]
    assert [(p["severity"], p["line"], p["col"]) for p in data["files"][1]["problems"]] == [
        ("warning", 4, 5), ("error", 5, 5)]


def test_validate_refuses_files_and_f_together(isolated: Path) -> None:
    (isolated / "a.yaml").write_text(GOOD)
    r = bs("-f", "a.yaml", "validate", "a.yaml", cwd=isolated)
    assert r.returncode == 1
    assert "give the project files either as arguments or with -f, not both" in r.stderr


def test_pre_commit_hook_runs_validate_on_the_files_it_matches(isolated: Path) -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["validate"]
    hook = hooks[0]
    assert hook["entry"] == "buildsys validate" and hook["language"] == "python"
    assert hook.get("pass_filenames", True) is True
    pattern = re.compile(hook["files"])
    staged = ["prefect.yaml", "svc/prefect.yml", "prefect.yaml.bak", "notprefect.yaml", "docs/prefect.md"]
    matched = [name for name in staged if pattern.search(name)]
    assert matched == ["prefect.yaml", "svc/prefect.yml"]
    (isolated / "svc").mkdir()
    (isolated / "svc" / "flows.py").write_text("def a():\n    pass\n")
    (isolated / "prefect.yaml").write_text(GOOD)
    (isolated / "svc" / "prefect.yml").write_text(BAD)
    program, *args = hook["entry"].split()
    assert program == "buildsys"
    r = bs(*args, *matched, cwd=isolated)
    assert r.returncode == 1
    assert r.stdout == "prefect.yaml: valid — 1 deployment(s), 0 step(s)\n"
    assert "svc/prefect.yml: invalid (1 error, 1 warning)" in r.stderr
