"""run_shell_script: run each line of a script as a command (Prefect's semantics, §4.3)."""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from typing import Any

from buildsys.step import Context, StepError, step
from buildsys.templating import HeldText, fill


@step(
    "run_shell_script",
    aliases=(
        "prefect.deployments.steps.run_shell_script",
        "prefect.deployments.steps.utility.run_shell_script",
        "prefect.projects.steps.run_shell_script",
    ),
    version="1",
    outputs=("stdout", "stderr"),
    description="Run a script, one command per line; fails on the first non-zero exit.",
    example="- run_shell_script:\n    id: sha\n    script: git rev-parse --short HEAD\n    stream_output: false",
    held=("script",),
)
def run_shell_script(
    ctx: Context,
    *,
    script: str,
    directory: str | None = None,
    env: Mapping[str, Any] | None = None,
    stream_output: bool = True,
    expand_env_vars: bool = False,
    shell: bool = False,
) -> dict[str, str]:
    """Each non-blank line is a separate command (no state shared between lines). Without
    `shell: true` a line is split like a POSIX shell would but never run through one: no pipes,
    redirects or `$VAR` expansion (unless `expand_env_vars: true`).

    The script is split into lines and words *before* templated values go in: a value is always
    one word (or, with `shell: true`, one quoted-by-the-shell variable), whatever it holds, so a
    newline, U+2028 or a quote in a branch name or a step output never starts another command."""
    run_env = dict(ctx.env)
    if env:
        run_env.update({str(k): "" if v is None else str(v) for k, v in env.items()})
    cwd = ctx.path(directory) if directory else ctx.cwd
    if not cwd.is_dir():
        raise StepError(f"directory {directory!r} does not exist")
    values = script.values if isinstance(script, HeldText) else ()
    outs: list[str] = []
    errs: list[str] = []
    for line in _lines(str(script)):
        shown = fill(line, values)
        args, line_env = _command(line, values, run_env, expand_env_vars=expand_env_vars, shell=shell)
        result = ctx.run(args, cwd=cwd, env={**run_env, **line_env}, shell=shell, stream=bool(stream_output),
                         check=False)
        outs.append(result.stdout.strip())
        errs.append(result.stderr.strip())
        if result.returncode != 0:
            detail = ctx.mask("\n".join(e for e in errs if e))
            raise StepError(
                f"`{ctx.mask(shown)}` exited with status {result.returncode}" + (f"\n{detail}" if detail else "")
            )
    return {"stdout": "\n".join(o for o in outs if o), "stderr": "\n".join(e for e in errs if e)}


def _lines(script: str) -> list[str]:
    """The script's own lines: split on newlines only (not on U+2028, \\x1c and the other
    characters `str.splitlines` also breaks on)."""
    return [line.rstrip("\r") for line in script.split("\n") if line.strip()]


def _command(
    line: str, values: tuple[str, ...], env: Mapping[str, str], *, expand_env_vars: bool, shell: bool
) -> tuple[list[str] | str, dict[str, str]]:
    """(what to run, extra environment) for one line, values filled in only after splitting."""
    if shell:
        # The shell parses the line; each value reaches it as a quoted variable that it expands (one
        # word, never code).
        extra = {f"BUILDSYS_VALUE_{i}": v for i, v in enumerate(values)}
        return _shell_fill(line), extra
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise StepError(f"cannot split the line {fill(line, values)!r}: {exc}") from None
    if expand_env_vars:
        words = [string.Template(w).safe_substitute(env) for w in words]
    return [fill(w, values) for w in words], {}


def _shell_fill(line: str) -> str:
    """Held markers → "${BUILDSYS_VALUE_n}", quoted to suit where each stands in the line: bare
    inside double quotes, closing and reopening single quotes, in double quotes elsewhere."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\ue000":
            end = line.index("\ue001", i)
            var = "${BUILDSYS_VALUE_" + line[i + 1 : end] + "}"
            out.append({"": f'"{var}"', '"': var, "'": f"'\"{var}\"'"}[quote])
            i = end + 1
            continue
        if c == "\\" and quote != "'" and i + 1 < len(line):
            out.append(line[i : i + 2])
            i += 2
            continue
        if c in "'\"" and quote in ("", c):
            quote = "" if quote == c else c
        out.append(c)
        i += 1
    return "".join(out)
