"""Compiled projects are reused only while nothing they depend on changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.compiled import compile_project
from buildsys.errors import ProjectError

STEP = "def act(*, n):\n    return {'n': n}\n"


def test_reused_then_recompiled_on_project_or_step_file_change(isolated: Path) -> None:
    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1}\n")
    first = compile_project(pf, sections=("build",), deployments=())
    cached = list((isolated / ".buildsys" / "compiled").glob("*.pickle"))
    assert len(cached) == 1
    again = compile_project(pf, sections=("build",), deployments=())
    assert again is not first and again.graph.order() == first.graph.order()
    assert again.stepdefs["s.py:act"].version == first.stepdefs["s.py:act"].version
    # A changed step file: recompiled (and its version changes, so the step reruns).
    (isolated / "s.py").write_text(STEP.replace("{'n': n}", "{'n': n, 'm': 1}"))
    third = compile_project(pf, sections=("build",), deployments=())
    assert third.stepdefs["s.py:act"].version != first.stepdefs["s.py:act"].version
    # A changed project file with an error: reported, never served from the cache.
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1, bogus: 2}\n")
    with pytest.raises(ProjectError) as info:
        compile_project(pf, sections=("build",), deployments=())
    assert "has no input 'bogus'" in info.value.render()


def test_corrupt_compiled_file_is_ignored(isolated: Path) -> None:
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: a, script: echo}\n")
    compile_project(pf, sections=("build",), deployments=())
    (cached,) = (isolated / ".buildsys" / "compiled").glob("*.pickle")
    cached.write_bytes(b"not a pickle")
    again = compile_project(pf, sections=("build",), deployments=())
    assert [n.label for n in again.graph.nodes.values()] == ["a"]
