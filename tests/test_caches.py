"""The cache layer: records are reused only while nothing they depend on changed (buildsys's own code
included), and a file nobody with the user's key wrote is never unpickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import buildsys
from buildsys import caches
from buildsys.caches import compiled_build, load_project
from buildsys.errors import ProjectError

STEP = "def act(*, n):\n    return {'n': n}\n"
PACKAGE = Path(buildsys.__file__).parent
REPO = PACKAGE.parent


def records(root: Path, kind: str) -> list[Path]:
    return sorted((root / ".buildsys" / kind).iterdir())


def test_reused_then_recompiled_on_project_or_step_file_change(isolated: Path) -> None:
    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1}\n")
    first = compiled_build(pf, sections=("build",), deployments=())
    assert len(records(isolated, "compiled")) == 1
    again = compiled_build(pf, sections=("build",), deployments=())
    assert again.graph is not first.graph and again.graph.order() == first.graph.order()
    assert again.steps["s.py:act"].version == first.steps["s.py:act"].version
    # A changed step file: recompiled (and its version changes, so the step reruns).
    (isolated / "s.py").write_text(STEP.replace("{'n': n}", "{'n': n, 'm': 1}"))
    third = compiled_build(pf, sections=("build",), deployments=())
    assert third.steps["s.py:act"].version != first.steps["s.py:act"].version
    # A changed project file with an error: reported, never served from the cache.
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1, bogus: 2}\n")
    with pytest.raises(ProjectError) as info:
        compiled_build(pf, sections=("build",), deployments=())
    assert "has no input 'bogus'" in info.value.render()


def test_a_reused_compiled_build_loads_file_steps_without_scanning_plugins(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its key covers the installed packages, so no plugin can have claimed the name since."""
    from buildsys import registry

    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1}\n")
    compiled_build(pf, sections=("build",), deployments=())
    registry.refresh()

    def no_scan() -> dict[str, list[object]]:
        raise AssertionError("entry points were scanned")

    monkeypatch.setattr(registry, "_claims", no_scan)
    again = compiled_build(pf, sections=("build",), deployments=())
    assert again.steps["s.py:act"].func(n=2) == {"n": 2}


def test_a_reused_compiled_build_gives_plain_steps_their_recorded_versions(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain function's version (a digest of its source) comes from the record, whose digest of
    the function's file was just found unchanged: no inspect.getsource (it tokenizes the module)."""
    from buildsys import registry, step

    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1}\n")
    first = compiled_build(pf, sections=("build",), deployments=())
    registry.refresh()  # resolved again from the file, as in a new process

    def no_source(func: object) -> str:
        raise AssertionError("the source was read again")

    with monkeypatch.context() as patched:
        patched.setattr(step.inspect, "getsource", no_source)
        again = compiled_build(pf, sections=("build",), deployments=())
    assert again.steps["s.py:act"].version == first.steps["s.py:act"].version != "0"
    assert again.steps["s.py:act"].func is not first.steps["s.py:act"].func  # a fresh StepDef, not a cached one
    assert step.proven_versions == {}  # vouched for only while the record's steps load


class _Planted:
    """What a hostile repository or recipe could leave in .buildsys/: a pickle that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "ran"))  # type: ignore[return-value]


def test_a_reused_compiled_build_reads_each_step_spec_when_first_used(isolated: Path) -> None:
    """A compiled build read back gives each step's name and id at once and reads the rest of its
    spec when first used (a build after a change settles most steps by label and key alone); it
    is then the StepSpec it was. Equal, shown and pickled as the fresh compile's, read or
    not, shared by the graph and the project as before, and read once when threads race to it."""
    import io
    import threading

    from buildsys.model import StepSpec

    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    steps = "".join(f"  - s.py:act: {{id: s{i}, n: {i}}}\n" for i in range(40))
    pf.write_text("build:\n" + steps)
    fresh = compiled_build(pf, sections=("build",), deployments=())
    fresh_specs = [fresh.graph.nodes[k].spec for k in fresh.graph.order()]
    again = compiled_build(pf, sections=("build",), deployments=())
    specs = [again.graph.nodes[k].spec for k in again.graph.order()]
    assert {type(s) for s in specs} == {caches._DeferredSpec}
    assert [(s.name, s.id) for s in specs] == [(s.name, s.id) for s in fresh_specs]
    assert {type(s) for s in specs} == {caches._DeferredSpec}  # (name and id read nothing)
    assert specs[0].inputs == {"n": 0} and type(specs[0]) is StepSpec
    assert type(specs[1]) is caches._DeferredSpec
    assert specs[1] == fresh_specs[1] and type(specs[1]) is StepSpec
    assert repr(specs[3]) == repr(fresh_specs[3])
    assert type(specs[7]) is caches._DeferredSpec and specs[7].raw == fresh_specs[7].raw
    buffer = io.BytesIO()
    caches._Pickler(buffer).dump(specs[4])
    assert type(specs[4]) is StepSpec and pickle.loads(buffer.getvalue()) == fresh_specs[4]
    assert again.project.build[5] is specs[5] and again.project.build == fresh.project.build
    third = compiled_build(pf, sections=("build",), deployments=())
    racing = [third.graph.nodes[k].spec for k in third.graph.order()]
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.extend(s.location for s in racing)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {type(s) for s in racing} == {StepSpec} and racing == fresh_specs and len(seen) == 160
    assert [s.raw for s in racing] == [s.raw for s in fresh_specs]


@pytest.mark.parametrize("kind", ["compiled", "projects"])
def test_a_record_not_written_with_the_users_key_is_never_unpickled(isolated: Path, kind: str) -> None:
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: a, script: echo}\n")
    (isolated / ".buildsys").mkdir()
    compiled_build(pf, sections=("build",), deployments=())  # writes both kinds of record
    (record,) = records(isolated, kind)
    marker = isolated / "marker"
    for forged in (
        pickle.dumps(_Planted(marker)),  # a bare pickle
        caches.MAGIC + b"\0" * 32 + pickle.dumps(_Planted(marker)),  # the layout, a made-up MAC
        b"not a pickle",
    ):
        record.write_bytes(forged)
        again = compiled_build(pf, sections=("build",), deployments=())
        assert [n.label for n in again.graph.nodes.values()] == ["a"]
        assert not marker.exists()
        assert load_project(pf).build[0].id == "a"
        assert not marker.exists()


def test_a_genuine_record_moved_to_another_name_is_refused(isolated: Path) -> None:
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: a, script: echo}\n")
    compiled_build(pf, sections=("build",), deployments=())
    (record,) = records(isolated, "compiled")
    assert caches.read_record(record) is not None
    moved = record.with_name("0" * 24)
    shutil.copy(record, moved)
    assert caches.read_record(moved) is None


def test_no_key_no_cache_and_the_key_lives_outside_the_project(isolated: Path) -> None:
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: a, script: echo}\n")
    compiled_build(pf, sections=("build",), deployments=())
    key = caches.key_file()
    assert not key.is_relative_to(isolated) and key.stat().st_mode & 0o777 == 0o600
    assert oct(key.parent.stat().st_mode & 0o777) == oct(0o700)
    key.chmod(0o644)  # readable by others: anyone could forge records, so none is trusted
    caches._secrets.clear()
    (record,) = records(isolated, "compiled")
    assert caches.read_record(record) is None
    key.chmod(0o600)
    caches._secrets.clear()
    assert caches.read_record(record) is not None


def test_loaded_projects_are_cached_by_content_and_entrypoint_existence(isolated: Path) -> None:
    from buildsys.project import load_project as load_fresh

    pf = isolated / "prefect.yaml"
    pf.write_text("deployments:\n  - name: a\n    entrypoint: flows/a.py:a\n")
    load_project(pf)
    assert not (isolated / ".buildsys").exists()  # never creates .buildsys/ beside a bare file
    (isolated / ".buildsys").mkdir()
    load_fresh(pf)
    assert list((isolated / ".buildsys").iterdir()) == []  # the loader itself is pure
    first = load_project(pf)
    assert [w.message for w in first.warnings] == [f"entrypoint file flows/a.py does not exist (relative to {isolated})"]
    assert len(records(isolated, "projects")) == 1
    again = load_project(pf)
    assert again is not first and again == first  # unpickled: equal, not the same object
    (isolated / "flows").mkdir()
    (isolated / "flows" / "a.py").write_text("def a(): pass\n")
    assert load_project(pf).warnings == ()  # the file appeared: loaded afresh, no warning
    pf.write_text("deployments:\n  - name: b\n    entrypoint: flows/a.py:a\n")
    assert [d.name for d in load_project(pf).deployments] == ["b"]


def test_cache_clear_empties_every_cache_of_the_layer(isolated: Path) -> None:
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: a, script: echo}\n")
    (isolated / ".buildsys").mkdir()
    r = subprocess.run([sys.executable, "-m", "buildsys", "build"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (isolated / ".buildsys").iterdir()} >= {"cache.db", "compiled", "projects"}
    r = subprocess.run([sys.executable, "-m", "buildsys", "cache", "clear"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not {"compiled", "projects", "noop"} & {p.name for p in (isolated / ".buildsys").iterdir()}


# --- editing buildsys itself ----------------------------------------------------------------------


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package laid out as a wheel installs it (steps and schemas inside), first on
    the path of the processes the tests start."""
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PACKAGE, site / "buildsys", ignore=ignore)
    for part, source in (("steps", "steps"), ("schemas", "schemas"), ("builtin_recipes", "recipes")):
        shutil.copytree(REPO / source, site / "buildsys" / part, ignore=ignore)
    return site


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def _edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new))


def test_editing_any_buildsys_file_changes_the_key_every_cache_shares(package_copy: Path) -> None:
    code = "import buildsys, buildsys.caches as c; print(buildsys.__file__); print(c.code_key())"
    before = _run(package_copy, "-c", code)
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith(str(package_copy / "buildsys" / "__init__.py"))
    assert _run(package_copy, "-c", code).stdout == before.stdout
    for edited in ("yamlsource.py", "steps/shell.py", "schemas/project.schema.json"):
        file = package_copy / "buildsys" / edited
        file.write_text(file.read_text() + "\n")
        after = _run(package_copy, "-c", code).stdout
        assert after != before.stdout, edited
        before = subprocess.CompletedProcess([], 0, after, "")


def test_an_edit_to_graph_py_shows_in_the_next_build(isolated: Path, package_copy: Path) -> None:
    """The reported bug: `buildsys graph` showed a new label while `buildsys build` (the compiled
    cache, then the no-op manifest) kept the old one."""
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - run_shell_script: {id: one, script: echo one}\n")
    old = time.time() - 3600
    os.utime(pf, (old, old))  # outside the racily-clean window: the no-op manifest is written

    def labels() -> list[str]:
        r = _run(package_copy, "-m", "buildsys", "build", "--json")
        assert r.returncode == 0, r.stderr
        events = [json.loads(line) for line in r.stdout.splitlines()]
        return [e["step"] for e in events if e["event"] in ("done", "cached")]

    assert labels() == ["one"]
    assert labels() == ["one"]  # answered by the no-op manifest
    assert (isolated / ".buildsys" / "noop").is_dir()
    _edit(package_copy / "buildsys" / "graph.py", "base = {k: n.spec.id or n.spec.label", 'base = {k: "L-" + (n.spec.id or n.spec.label)')
    assert labels() == ["L-one"]
    assert labels() == ["L-one"]


def test_the_model_pickles_as_constructor_calls_read_in_c_byte_for_byte(isolated: Path) -> None:
    """caches._Pickler reads a dataclass's fields with operator.attrgetter: the same bytes as
    reading them one by one in Python, and objects equal to the original when loaded."""
    import io

    (isolated / "s.py").write_text(STEP)
    pf = isolated / "prefect.yaml"
    pf.write_text("build:\n  - s.py:act: {id: a, n: 1}\n  - s.py:act: {id: b, n: 2, inputs: ['*.py']}\n"
                  "deployments:\n  - {name: d, entrypoint: s.py:act}\n")
    compiled = compiled_build(pf, sections=("build",), deployments=())

    class ByName(pickle.Pickler):  # the reference: every field by getattr, as before
        def reducer_override(self, obj: object) -> object:
            names = caches._init_fields(type(obj))
            if not names:
                return NotImplemented
            return (type(obj), tuple(getattr(obj, n) for n in names))

    for obj in (compiled.project, compiled.graph):
        fast, slow = io.BytesIO(), io.BytesIO()
        caches._Pickler(fast, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        ByName(slow, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        assert fast.getvalue() == slow.getvalue()
        assert pickle.loads(fast.getvalue()) == obj


def test_the_way_buildsys_is_started_does_not_change_the_key(tmp_path: Path) -> None:
    """The console script (its bin/ first on sys.path) and `python -m buildsys` / `-c` (the current
    directory first) share every cache: the entry Python puts first is no installed package."""
    code = "import buildsys.caches as c; print(c.code_key())"
    script = tmp_path / "bin" / "start.py"
    script.parent.mkdir()
    script.write_text(code + "\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    keys = [
        subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
        for args in ([str(script)], ["-c", code])
    ]
    assert all(k.returncode == 0 for k in keys), [k.stderr for k in keys]
    assert keys[0].stdout == keys[1].stdout
    assert str(script.parent) not in keys[0].stdout
