"""pip_install_requirements: install a requirements file into the running interpreter."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from buildsys.step import Context, StepError, step


@step(
    "pip_install_requirements",
    aliases=(
        "prefect.deployments.steps.pip_install_requirements",
        "prefect.deployments.steps.utility.pip_install_requirements",
        "prefect.projects.steps.pip_install_requirements",
    ),
    version="1",
    outputs=("stdout", "stderr"),
    description="pip install -r a requirements file into the interpreter running buildsys.",
    example="- pip_install_requirements:\n    directory: '{{ clone.directory }}'\n    requirements_file: requirements.txt",
)
def pip_install_requirements(
    ctx: Context,
    *,
    directory: str | None = None,
    requirements_file: str = "requirements.txt",
    stream_output: bool = True,
) -> dict[str, str]:
    """Runs `python -m pip install -r FILE` in `directory`; a bad requirement fails the step with
    pip's own explanation."""
    cwd = ctx.path(directory) if directory else ctx.cwd
    req = cwd / requirements_file
    if not req.is_file():
        raise StepError(f"requirements file {requirements_file!r} not found in {cwd}")
    result = ctx.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-r", requirements_file],
        cwd=cwd,
        stream=bool(stream_output),
        check=False,
    )
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("ERROR")] or result.stderr.splitlines()[-5:]
        raise StepError(
            f"pip install -r {requirements_file} failed (exit {result.returncode})\n" + ctx.mask("\n".join(lines))
        )
    return {"stdout": result.stdout.strip(), "stderr": result.stderr.strip()}


@pip_install_requirements.files
def _requirements(inputs: Mapping[str, Any], ctx: Context) -> list[str]:
    directory = inputs.get("directory")
    name = str(inputs.get("requirements_file") or "requirements.txt")
    return [f"{directory}/{name}" if directory else name]
