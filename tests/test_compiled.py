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


def test_a_reused_compiled_project_loads_file_steps_without_scanning_plugins(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its key covers the installed packages, so no plugin can have claimed the name since."""
    from buildsys import registry

    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1}\n")
    compile_project(pf, sections=("build",), deployments=())
    registry.refresh()

    def no_scan() -> dict[str, list[object]]:
        raise AssertionError("entry points were scanned")

    monkeypatch.setattr(registry, "_claims", no_scan)
    again = compile_project(pf, sections=("build",), deployments=())
    assert again.stepdefs["s.py:act"].func(n=2) == {"n": 2}


def test_corrupt_compiled_file_is_ignored(isolated: Path) -> None:
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: a, script: echo}\n")
    compile_project(pf, sections=("build",), deployments=())
    (cached,) = (isolated / ".buildsys" / "compiled").glob("*.pickle")
    cached.write_bytes(b"not a pickle")
    again = compile_project(pf, sections=("build",), deployments=())
    assert [n.label for n in again.graph.nodes.values()] == ["a"]


def test_loaded_projects_are_cached_by_content_and_entrypoint_existence(isolated: Path) -> None:
    from buildsys.project import load_project

    pf = isolated / "prefect.yaml"
    pf.write_text("deployments:\n  - name: a\n    entrypoint: flows/a.py:a\n")
    load_project(pf)
    assert not (isolated / ".buildsys").exists()  # never creates .buildsys/ beside a bare file
    (isolated / ".buildsys").mkdir()
    first = load_project(pf)
    assert [w.message for w in first.warnings] == [f"entrypoint file flows/a.py does not exist (relative to {isolated})"]
    assert len(list((isolated / ".buildsys" / "projects").glob("*.pickle"))) == 1
    again = load_project(pf)
    assert again is not first and again == first  # unpickled: equal, not the same object
    (isolated / "flows").mkdir()
    (isolated / "flows" / "a.py").write_text("def a(): pass\n")
    assert load_project(pf).warnings == ()  # the file appeared: loaded afresh, no warning
    pf.write_text("deployments:\n  - name: b\n    entrypoint: flows/a.py:a\n")
    assert [d.name for d in load_project(pf).deployments] == ["b"]
