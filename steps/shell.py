"""run_shell_script: run each line of a script as a command (Prefect's semantics, §4.3)."""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from typing import Any

from buildsys.step import Context, StepError, step


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
    redirects or `$VAR` expansion (unless `expand_env_vars: true`)."""
    run_env = dict(ctx.env)
    if env:
        run_env.update({str(k): "" if v is None else str(v) for k, v in env.items()})
    cwd = ctx.path(directory) if directory else ctx.cwd
    if not cwd.is_dir():
        raise StepError(f"directory {directory!r} does not exist")
    outs: list[str] = []
    errs: list[str] = []
    for line in str(script).splitlines():
        if not line.strip():
            continue
        command = string.Template(line).safe_substitute(run_env) if expand_env_vars else line
        args: list[str] | str
        if shell:
            args = command
        else:
            try:
                args = shlex.split(command)
            except ValueError as exc:
                raise StepError(f"cannot split the line {command!r}: {exc}") from None
        result = ctx.run(args, cwd=cwd, env=run_env, shell=shell, stream=bool(stream_output), check=False)
        outs.append(result.stdout.strip())
        errs.append(result.stderr.strip())
        if result.returncode != 0:
            detail = ctx.mask("\n".join(e for e in errs if e))
            raise StepError(
                f"`{ctx.mask(command)}` exited with status {result.returncode}"
                + (f"\n{detail}" if detail else "")
            )
    return {"stdout": "\n".join(o for o in outs if o), "stderr": "\n".join(e for e in errs if e)}
