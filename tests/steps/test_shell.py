"""run_shell_script with hostile templated values: a newline, U+2028 or \\x1c in an environment
variable or a step output never starts another command (build through the engine, pull through the
runtime), with and without `shell: true`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from buildsys.compiled import compile_project
from buildsys.engine import build
from buildsys.project import load_project
from buildsys.reporter import Event
from buildsys.runtime import run_pull_steps

INJECTIONS = {
    "newline": "main\ntouch {marker}",
    "u2028": "main\u2028touch {marker}",
    "x1c": "main\x1ctouch {marker}",
    "semicolon": "main; touch {marker}",
    "subshell": "$(touch {marker})",
    "quote": "main' ; touch {marker} ; echo '",
}
PRINT_ARGS = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"


class Quiet:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def event(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def _project(root: Path, shell: bool) -> None:
    (root / "prefect.yaml").write_text(
        "build:\n"
        "  - run_shell_script:\n"
        "      id: upstream\n"
        f"      script: {sys.executable} -c 'import os; print(os.environ[\"BRANCH_NAME\"], end=\"\")'\n"
        "      stream_output: false\n"
        "  - run_shell_script:\n"
        "      id: tag\n"
        f"      shell: {'true' if shell else 'false'}\n"
        "      stream_output: false\n"
        "      script: |\n"
        f"        {PRINT_ARGS} tag={{{{ $BRANCH_NAME }}}}\n"
        f"        {PRINT_ARGS} \"from={{{{ upstream.stdout }}}}\"\n"
        f"        {PRINT_ARGS} 'single={{{{ $BRANCH_NAME }}}}'\n"
        "deployments:\n  - {name: d, entrypoint: f.py:f}\n"
    )


@pytest.mark.parametrize("shell", [False, True], ids=["exec", "shell"])
@pytest.mark.parametrize("kind", sorted(INJECTIONS))
def test_values_from_env_and_step_outputs_never_start_a_command(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, kind: str, shell: bool
) -> None:
    marker = isolated / "pwned"
    value = INJECTIONS[kind].format(marker=marker)
    monkeypatch.setenv("BRANCH_NAME", value)
    _project(isolated, shell)

    compiled = compile_project(load_project(isolated / "prefect.yaml"))
    result = build(compiled.project, compiled.graph, compiled.steps, reporter=Quiet(), use_cache=False)

    assert not marker.exists(), f"{kind}: a templated value ran a command"
    outputs = {r.label: r.outputs for r in result.results.values()}
    lines = outputs["tag"]["stdout"].split("\n")
    assert [json.loads(line) for line in lines] == [[f"tag={value}"], [f"from={value}"], [f"single={value}"]]


def test_pull_steps_keep_values_whole_too(isolated: Path) -> None:
    marker = isolated / "pwned"
    env = {"PATH": "/usr/bin:/bin", "BRANCH_NAME": f"main\ntouch {marker}"}
    outputs = run_pull_steps(
        [{"run_shell_script": {"id": "t", "script": f"{PRINT_ARGS} {{{{ $BRANCH_NAME }}}}", "stream_output": False}}],
        root=isolated, env=env, variables={}, emit=lambda line: None,
    )
    assert not marker.exists()
    assert json.loads(outputs["t"]["stdout"]) == [env["BRANCH_NAME"]]


def test_the_scripts_own_lines_are_still_commands(isolated: Path) -> None:
    from buildsys.steps.shell import run_shell_script

    from buildsys.step import Context

    ctx = Context(root=isolated, cwd=isolated)
    out = run_shell_script(ctx, script="echo one\r\n\necho two\u2028three\n", stream_output=False)
    assert out["stdout"] == "one\ntwo\u2028three"
