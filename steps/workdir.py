"""set_working_directory: move the following steps (and, at run time, the flow) into a directory."""

from __future__ import annotations

from buildsys.step import Context, StepError, step


@step(
    "set_working_directory",
    aliases=(
        "prefect.deployments.steps.set_working_directory",
        "prefect.deployments.steps.pull.set_working_directory",
        "prefect.projects.steps.set_working_directory",
    ),
    version="1",
    outputs=("directory",),
    sets_cwd=True,
    cacheable=False,
    description="Set the working directory for the steps that follow (and the flow, at run time).",
    example="- set_working_directory:\n    directory: /opt/prefect/my-project",
)
def set_working_directory(ctx: Context, *, directory: str) -> dict[str, str]:
    """The engine runs later steps of the section in `directory`; it never changes this process's
    working directory during a build (the in-run runtime does chdir, as Prefect does)."""
    target = ctx.path(directory).resolve()
    if not target.is_dir():
        raise StepError(f"directory {directory!r} does not exist (resolved to {target})")
    return {"directory": str(target)}
