"""Desired state: flow names read without importing, identities, spec fields, git revisions."""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from pathlib import Path

import pytest

from buildsys.desired import (
    BuildOutputs,
    DesiredStateError,
    desired_state,
    project_identity,
    read_desired,
)
from buildsys.entrypoints import SourceReader, flow_info, parse_entrypoint
from buildsys.errors import ProjectError, TemplateError
from buildsys.project import load_project
from buildsys.revision import RevisionError, open_revision, strip_credentials
from buildsys.selector import SelectionError
from buildsys.templating import UNKNOWN


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def reader(files: dict[str, str]) -> SourceReader:
    return files.get


# --- flow names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "entrypoint", "expected"),
    [
        ("from prefect import flow\n@flow(name='Nightly ETL')\ndef etl(): ...\n", "f.py:etl", "Nightly ETL"),
        ("from prefect import flow\n@flow\ndef my_flow(): ...\n", "f.py:my_flow", "my-flow"),
        ("from prefect import flow\n@flow(retries=2)\nasync def a_b(): ...\n", "f.py:a_b", "a-b"),
        ("import prefect\n@prefect.flow(name='dotted')\ndef x(): ...\n", "f.py:x", "dotted"),
        ("from prefect import flow as F\n@F(name='aliased')\ndef x(): ...\n", "f.py:x", "aliased"),
        (
            "from prefect import flow\ndef impl(): ...\netl = flow(name='assigned')(impl)\n",
            "f.py:etl",
            "assigned",
        ),
        (
            "from prefect import flow\nclass C:\n    @flow(name='method')\n    def run(self): ...\n",
            "f.py:C.run",
            "method",
        ),
        (
            "from prefect import flow\nN = 'x'\n@flow(name=N)\ndef not_literal(): ...\n",
            "f.py:not_literal",
            "not-literal",
        ),
    ],
)
def test_flow_name_from_the_source_without_importing(source: str, entrypoint: str, expected: str) -> None:
    info = flow_info(entrypoint, reader({"f.py": source}))
    assert (info.name, info.file, info.problem) == (expected, "f.py", None)


def test_flow_docstring_is_read() -> None:
    info = flow_info(
        "f.py:etl", reader({"f.py": 'from prefect import flow\n@flow\ndef etl():\n    """Loads."""\n'})
    )
    assert info.docstring == "Loads."


def test_module_path_entrypoints_resolve_relative_to_the_root() -> None:
    files = {"pkg/mod.py": "from prefect import flow\n@flow(name='m')\ndef f(): ...\n"}
    assert flow_info("pkg.mod:f", reader(files)).name == "m"
    assert flow_info("pkg.mod.f", reader(files)).name == "m"
    init = {"pkg/mod/__init__.py": "from prefect import flow\n@flow(name='i')\ndef f(): ...\n"}
    assert flow_info("pkg.mod:f", reader(init)).file == "pkg/mod/__init__.py"


def test_missing_file_falls_back_to_the_function_name_with_a_reason() -> None:
    info = flow_info("./flows/etl.py:load_all", reader({}))
    assert (info.name, info.problem) == ("load-all", "flows/etl.py not found")


def test_unparsable_file_and_missing_function_are_reasons() -> None:
    assert (
        flow_info("f.py:g", reader({"f.py": "def (:\n"})).problem
        == "f.py does not parse (invalid syntax, line 1)"
    )
    assert flow_info("f.py:g", reader({"f.py": "x = 1\n"})).problem == "f.py defines no function 'g'"


def test_parse_entrypoint_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_entrypoint("noflow")
    assert parse_entrypoint("./a/b.py:C.m").candidates == ("a/b.py",)


# --- identity -----------------------------------------------------------------------------------


def test_project_identity_precedence(tmp_path: Path) -> None:
    named = write(tmp_path / "a" / "prefect.yaml", "name: shop\nbuildsys: {project: team/shop}\n")
    assert project_identity(load_project(named)) == "team/shop"
    write(named, "name: shop\n")
    assert project_identity(load_project(named)) == "shop"
    write(named, "deployments: []\n")
    assert project_identity(
        load_project(named), remote_url="https://h/x.git", file_in_repo="a/prefect.yaml"
    ) == ("https://h/x.git#a/prefect.yaml")
    assert project_identity(load_project(named)) == "a"


def test_credentials_are_stripped_from_remote_urls() -> None:
    assert strip_credentials("https://user:tok@github.com/a/b.git") == "https://github.com/a/b.git"
    assert strip_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"
    assert strip_credentials("postgresql://app:pw@db:5432/state") == "postgresql://db:5432/state"
    assert strip_credentials(".buildsys/state.db") == ".buildsys/state.db"


# --- spec fields --------------------------------------------------------------------------------

PROJECT = """
name: demo
build:
  - run_shell_script:
      id: sha
      script: git rev-parse --short HEAD
work_pools:
  - name: local
    type: process
    paused: true
    queues:
      - {name: urgent, priority: 5, concurrency_limit: 2}
      - {name: bulk}
variables:
  region: eu-west-1
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    version: "{{ sha.stdout }}"
    tags: [a, "v-{{ sha.stdout }}"]
    parameters: {day: today}
    work_pool:
      name: local
      job_variables:
        env: {TOKEN: "{{ $TOKEN }}", PW: "{{ prefect.blocks.secret.pw }}", WHEN: "{{ ctx.flow_run.name }}"}
    pull:
      - git_clone:
          id: clone
          repository: https://example.com/r.git
          access_token: "{{ prefect.blocks.secret.gh }}"
          branch: "{{ sha.stdout }}"
      - pip_install_requirements:
          directory: "{{ clone.directory }}"
  - name: paused
    entrypoint: flows/etl.py:etl
    paused: true
    schedules: []
    work_pool: {name: local}
"""


def test_resources_with_managed_keys_and_unknown_outputs(tmp_path: Path) -> None:
    file = write(tmp_path / "prefect.yaml", PROJECT)
    write(
        tmp_path / "flows" / "etl.py",
        "from prefect import flow\n@flow(name='etl-flow')\ndef etl():\n    'Doc.'\n",
    )
    _, state = read_desired(file)
    assert [(r.kind, r.name) for r in state.resources] == [
        ("variable", "region"),
        ("pool", "local"),
        ("deployment", "etl-flow/nightly"),
        ("deployment", "etl-flow/paused"),
    ]
    assert state.owner == "demo"
    assert state.source == {"commit": None, "ref": None, "file": "prefect.yaml", "dirty": False}
    nightly = state.resources[2]
    assert nightly.spec["version"] is UNKNOWN
    assert nightly.spec["tags"] == ["a", "v-(known after build)"]
    assert nightly.spec["description"] == "Doc."
    assert nightly.spec["job_variables"] == {
        "env": {
            "TOKEN": "{{ $TOKEN }}",
            "PW": "{{ prefect.blocks.secret.pw }}",
            "WHEN": "{{ ctx.flow_run.name }}",
        }
    }
    assert nightly.spec["pull_steps"] == [
        {
            "git_clone": {
                "id": "clone",
                "repository": "https://example.com/r.git",
                "access_token": "{{ prefect.blocks.secret.gh }}",
                "branch": UNKNOWN,
            }
        },
        {"pip_install_requirements": {"directory": "{{ clone.directory }}"}},
    ]
    assert "paused" not in nightly.managed and "schedules" not in nightly.managed
    assert (nightly.spec["paused"], nightly.spec["schedules"]) == (False, [])  # defaults for a create only
    paused = state.resources[3]
    assert {"paused", "schedules"} <= paused.managed
    assert (paused.spec["paused"], paused.spec["schedules"]) == (True, [])
    pool = state.resources[1]
    assert pool.spec["queues"] == [
        {"name": "urgent", "priority": 5, "concurrency_limit": 2, "description": None, "paused": False},
        {"name": "bulk", "priority": 2, "concurrency_limit": None, "description": None, "paused": False},
    ]
    assert pool.spec["paused"] is True and "paused" in pool.managed
    assert pool.spec["base_job_template"]["job_configuration"]["command"] == "{{ command }}"


def test_known_outputs_are_rendered_and_pull_keeps_everything_else(tmp_path: Path) -> None:
    file = write(tmp_path / "prefect.yaml", PROJECT)
    project = load_project(file)
    outputs = BuildOutputs({"sha": {"stdout": "abc123"}, "stdout": "abc123"})
    state = desired_state(project, owner="o", source={}, read=reader({}), outputs=lambda d: outputs)
    nightly = state.get("deployment", "etl/nightly")
    assert nightly is not None
    assert (nightly.spec["version"], nightly.spec["tags"]) == ("abc123", ["a", "v-abc123"])
    assert nightly.spec["pull_steps"][0]["git_clone"]["branch"] == "abc123"
    assert nightly.spec["pull_steps"][0]["git_clone"]["access_token"] == "{{ prefect.blocks.secret.gh }}"


def test_a_typo_in_an_output_reference_is_an_error_not_a_dropped_value(tmp_path: Path) -> None:
    file = write(
        tmp_path / "prefect.yaml",
        """
        build:
          - run_shell_script: {id: build_image, script: "true"}
        deployments:
          - name: d
            entrypoint: f.py:f
            work_pool: {name: p, job_variables: {image: "{{ build-image.image }}"}}
        """,
    )
    project = load_project(file)
    built = BuildOutputs({"build_image": {"stdout": ""}, "stdout": ""})
    message = ("{{ build-image.image }} refers to step 'build-image', which does not exist here "
               "(Prefect would silently drop the value)")
    with pytest.raises(TemplateError) as err:
        desired_state(project, owner="o", source={}, read=reader({}), outputs=lambda d: built)
    assert (err.value.message, err.value.hint) == (message, "did you mean 'build_image'?; step ids here: build_image")
    # before any build, too: never "(known after build)" for a step that does not exist (corpus 031)
    with pytest.raises(TemplateError) as unbuilt:
        desired_state(project, owner="o", source={}, read=reader({}), outputs=None)
    assert unbuilt.value.message == message
    # and read_desired (plan, apply, deploy, watch) refuses it as `validate` does, at the placeholder
    with pytest.raises(ProjectError) as planned:
        read_desired(file)
    assert [d.render() for d in planned.value.diagnostics()] == [
        f"{file}:6:50: error: {message}\n  at deployments[d].work_pool.job_variables.image\n"
        "  hint: did you mean 'build_image'?; step ids here: build_image"
    ]


def test_deployment_without_entrypoint_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "prefect.yaml", "deployments:\n  - name: x\n    work_pool: {name: p}\n")
    with pytest.raises(DesiredStateError, match="deployment 'x' has no entrypoint"):
        read_desired(file)


def test_selection_by_name_glob_and_flow(tmp_path: Path) -> None:
    file = write(
        tmp_path / "prefect.yaml",
        """
        deployments:
          - {name: a-prod, entrypoint: f.py:load_all}
          - {name: a-dev, entrypoint: f.py:load_all}
          - {name: b, entrypoint: g.py:other}
        """,
    )
    _, state = read_desired(file, select=["*-prod", "other/b"])
    assert [r.name for r in state.resources] == ["load-all/a-prod", "other/b"]
    assert state.partial
    with pytest.raises(SelectionError, match="no deployment matches 'nope'"):
        read_desired(file, select=["nope"])


# --- git revisions ------------------------------------------------------------------------------


def test_ref_reads_another_commit_without_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    file = write(repo / "proj" / "prefect.yaml", "deployments:\n  - {name: one, entrypoint: flows/f.py:f}\n")
    write(repo / "proj" / "flows" / "f.py", "from prefect import flow\n@flow(name='first')\ndef f(): ...\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", "https://bot:secret@example.com/acme/flows.git")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    write(file, "deployments:\n  - {name: two, entrypoint: flows/f.py:f}\n")
    write(repo / "proj" / "flows" / "f.py", "from prefect import flow\n@flow(name='second')\ndef f(): ...\n")
    git(repo, "commit", "-qam", "two")
    write(file, "deployments:\n  - {name: three, entrypoint: flows/f.py:f}\n")  # uncommitted

    _, at_tag = read_desired(file, ref="v1")
    assert [r.name for r in at_tag.resources] == ["first/one"]  # the flow file is read at v1 too
    assert at_tag.source == {"commit": first, "ref": "v1", "file": "proj/prefect.yaml", "dirty": False}
    assert at_tag.owner == "https://example.com/acme/flows.git#proj/prefect.yaml"
    _, work = read_desired(file)
    assert [r.name for r in work.resources] == ["second/three"]
    assert work.source["dirty"] is True and work.source["commit"] == git(repo, "rev-parse", "HEAD")
    assert git(repo, "status", "--porcelain") == "M proj/prefect.yaml"  # nothing was checked out


def test_untracked_buildsys_dir_does_not_make_the_tree_dirty(tmp_path: Path) -> None:
    file = write(tmp_path / "prefect.yaml", "name: x\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "c")
    write(tmp_path / ".buildsys" / "state.db", "x")
    assert open_revision(file).dirty is False
    write(tmp_path / "new_flow.py", "x")
    assert open_revision(file).dirty is True


def test_bad_refs_and_missing_repos_are_clear_errors(tmp_path: Path) -> None:
    file = write(tmp_path / "prefect.yaml", "name: x\n")
    with pytest.raises(RevisionError, match="needs a git repository"):
        open_revision(file, "main")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "c")
    with pytest.raises(RevisionError, match="--ref nope: no such commit, branch or tag"):
        open_revision(file, "nope")
    other = write(tmp_path / "sub" / "prefect.yaml", "name: y\n")
    with pytest.raises(RevisionError, match=r"sub/prefect.yaml does not exist at commit"):
        open_revision(other, "HEAD")


def test_parameter_schema_from_the_signature() -> None:
    source = (
        "from prefect import flow\n"
        "import datetime, typing\n"
        "@flow\n"
        "def etl(day: str, n: int = 3, *, ratio: float = 0.5, tags: list[str] | None = None,\n"
        "        opts: typing.Dict[str, int] = {'a': 1}, when: datetime.date = datetime.date.today()): ...\n"
    )
    info = flow_info("f.py:etl", reader({"f.py": source}))
    # Prefect's shape (tests/test_paramschema.py compares with Prefect itself); a default computed
    # when the module runs (`date.today()`) is left out
    assert info.parameter_schema == {
        "title": "Parameters",
        "type": "object",
        "properties": {
            "day": {"title": "day", "position": 0, "type": "string"},
            "n": {"title": "n", "position": 1, "type": "integer", "default": 3},
            "ratio": {"title": "ratio", "position": 2, "type": "number", "default": 0.5},
            "tags": {
                "title": "tags",
                "position": 3,
                "anyOf": [{"items": {"type": "string"}, "type": "array"}, {"type": "null"}],
                "default": None,
            },
            "opts": {
                "title": "opts",
                "position": 4,
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "default": {"a": 1},
            },
            "when": {"title": "when", "position": 5, "format": "date", "type": "string"},
        },
        "required": ["day"],
    }
    method = flow_info("f.py:C.run", reader({"f.py": "class C:\n    def run(self, x: bool = True): ...\n"}))
    assert method.parameter_schema == {  # `self` is counted in positions and left out, as Prefect does
        "title": "Parameters",
        "type": "object",
        "properties": {"x": {"title": "x", "position": 1, "type": "boolean", "default": True}},
    }


def test_yaml_dates_become_iso_text_before_they_are_checked(tmp_path: Path) -> None:
    file = write(
        tmp_path / "prefect.yaml",
        """
        variables: {since: 2024-01-31}
        deployments:
          - name: d
            entrypoint: f.py:etl
            parameters: {start: 2024-01-31}
            work_pool: {name: p}
        """,
    )
    write(tmp_path / "f.py", "from prefect import flow\n@flow\ndef etl(start: str): ...\n")
    _, state = read_desired(file)
    assert state.get("variable", "since").spec == {"value": "2024-01-31"}  # type: ignore[union-attr]
    assert state.get("deployment", "etl/d").spec["parameters"] == {"start": "2024-01-31"}  # type: ignore[union-attr]


VERSIONED = """\
deployments:
  - {name: pinned, entrypoint: f.py:f, version: "1.2", version_type: vcs:git}
  - {name: from-git, entrypoint: f.py:f, version_type: vcs:git}
  - {name: from-github, entrypoint: f.py:f, version_type: vcs:github}
  - {name: simple, entrypoint: f.py:f, version_type: "prefect:simple"}
  - {name: plain, entrypoint: f.py:f}
"""


def test_vcs_version_type_takes_the_commit_else_the_flow_file_hash(tmp_path: Path) -> None:
    """Prefect's rules: vcs:* → the commit's first 8 characters; otherwise (and when there is no
    commit) the flow's version, which defaults to the MD5 of the flow's file."""
    file = write(tmp_path / "prefect.yaml", VERSIONED)
    write(tmp_path / "f.py", "def f(): ...\n")
    md5 = hashlib.md5(b"def f(): ...\n").hexdigest()
    _, outside = read_desired(file)
    assert {r.name: r.spec["version"] for r in outside.resources} == {
        "f/pinned": "1.2", "f/from-git": md5, "f/from-github": md5, "f/simple": md5, "f/plain": md5,
    }
    assert [w.message for w in outside.warnings if "version_type" in w.message] == [
        f"deployment {name!r} has version_type {kind} but the project is not in a git repository with a "
        "commit; its version is the flow's (the MD5 of its file)"
        for name, kind in (("from-git", "vcs:git"), ("from-github", "vcs:github"))
    ]
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "c")
    sha = git(tmp_path, "rev-parse", "HEAD")
    _, inside = read_desired(file)
    assert {r.name: r.spec["version"] for r in inside.resources} == {
        "f/pinned": "1.2", "f/from-git": sha[:8], "f/from-github": sha[:8], "f/simple": md5, "f/plain": md5,
    }
    assert not [w for w in inside.warnings if "version_type" in w.message]


def test_an_unknown_version_type_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "prefect.yaml", "deployments:\n  - {name: a, entrypoint: f.py:f, version_type: svn}\n")
    write(tmp_path / "f.py", "def f(): ...\n")
    with pytest.raises(DesiredStateError) as info:
        read_desired(file)
    (d,) = info.value.diagnostics()
    assert (d.message, d.path, d.hint) == (
        "deployment 'a': unknown version_type 'svn'",
        "deployments[a].version_type",
        "one of prefect:simple, vcs:git, vcs:github, vcs:gitlab, vcs:bitbucket, vcs:azuredevops",
    )


def test_triggers_are_templated_except_their_parameters_and_get_prefects_default_names(tmp_path: Path) -> None:
    file = write(
        tmp_path / "prefect.yaml",
        """
        build:
          - run_shell_script: {id: tag, script: echo v1}
        deployments:
          - name: listener
            entrypoint: f.py:f
            triggers:
              - type: event
                expect: ["s3.object.{{ tag.stdout }}"]
                parameters: {key: "{{ event.payload.key }}"}
              - type: event
                name: named
                expect: [done]
        """,
    )
    write(tmp_path / "f.py", "def f(key=None): ...\n")
    project, _ = read_desired(file)
    built = BuildOutputs({"tag": {"stdout": "created"}})
    _, state = read_desired(file, outputs=lambda p: (lambda d: built), loaded=project)
    (deployment,) = state.resources
    assert deployment.spec["triggers"] == [
        {
            "type": "event",
            "expect": ["s3.object.created"],
            "parameters": {"key": "{{ event.payload.key }}"},  # filled when the event arrives
            "name": "listener__automation_1",
        },
        {"type": "event", "name": "named", "expect": ["done"]},
    ]


BATCH_STEPS = '''
def write(*, name, text="x"):
    return {"value": name + ":" + text}
'''

BATCH = """
deployments:
  - name: a
    entrypoint: f.py:f
    build:
      - mysteps.py:write: {id: img, name: img}
      - mysteps.py:write: {name: extra, text: "{{ img.value }}"}
      - mysteps.py:write: {name: extra, text: "again"}
  - name: b
    entrypoint: f.py:f
    build:
      - mysteps.py:write: {id: img, name: img}
      - mysteps.py:write: {id: tag, name: "{{ img.value }}-b"}
  - name: c
    entrypoint: f.py:f
    build:
      - mysteps.py:write: {id: other, name: c}
  - {name: d, entrypoint: f.py:f}
"""


def test_plan_outputs_keyed_together_are_what_each_deployment_keyed_alone_gives(isolated: Path) -> None:
    """`plan` keys the build steps of all the deployments it reads in one graph (a shared step
    once); each deployment's outputs and pending steps are the same as keying it alone."""
    from buildsys.compiled import compile_project
    from buildsys.engine import build
    from buildsys.reconcile import cached_outputs

    write(isolated / "mysteps.py", BATCH_STEPS)
    file = write(isolated / "prefect.yaml", BATCH)
    project = load_project(file)
    built = compile_project(project, sections=("build", "push"), deployments=["a"])
    build(project, built.graph, built.steps)  # a's steps (img among them) built; b's tag and c not

    alone, together = cached_outputs(project), cached_outputs(project)
    together.prepare(project.deployments)  # type: ignore[attr-defined]
    assert set(together.known) == {"a", "b", "c"}  # type: ignore[attr-defined]  # keyed in one graph
    for d in project.deployments:
        assert together(d) == alone(d), d.name
    outputs = {d.name: together(d) for d in project.deployments}
    assert outputs["a"] is not None and outputs["a"].pending == frozenset()
    assert outputs["a"].namespace["img"] == {"value": "img:x"}
    assert outputs["b"] is not None and outputs["b"].pending == {"tag"} and "img" in outputs["b"].namespace
    assert outputs["c"] is not None and outputs["c"].pending == {"other"}


def test_rendered_fields_are_json_shaped_in_the_same_walk(tmp_path: Path) -> None:
    """parameters, job_variables and pull steps are rendered JSON-shaped (dates as ISO text, keys
    as text, resolved values made canonical) and not walked again: the spec is what canonical()
    of the plainly rendered fields gives."""
    from buildsys.desired import _is_canonical, canonical

    file = write(
        tmp_path / "prefect.yaml",
        """
        deployments:
          - name: d
            entrypoint: f.py:etl
            parameters: {start: 2024-01-31, 1: one, nested: [{when: 2024-02-01}], token: "{{ $TOKEN }}"}
            work_pool:
              name: p
              job_variables: {env: {A: "{{ $TOKEN }}"}, at: 2024-03-01, 2: two}
            pull:
              - set_working_directory: {directory: /x, since: 2024-04-01, who: "{{ $TOKEN }}"}
        """,
    )
    write(tmp_path / "f.py", "from prefect import flow\n@flow\ndef etl(start: str): ...\n")
    _, state = read_desired(file, env={"TOKEN": "t"})
    spec = state.get("deployment", "etl/d").spec  # type: ignore[union-attr]
    assert spec["parameters"] == {
        "start": "2024-01-31", "1": "one", "nested": [{"when": "2024-02-01"}], "token": "t"
    }
    assert spec["job_variables"] == {"env": {"A": "t"}, "at": "2024-03-01", "2": "two"}
    assert spec["pull_steps"] == [{"set_working_directory": {"directory": "/x", "since": "2024-04-01", "who": "t"}}]
    assert _is_canonical(spec)
    assert canonical(spec) is spec


def test_a_parameter_schema_is_made_canonical_once_per_object() -> None:
    from buildsys.desired import _canonical_schema

    schema = {"properties": {"a": {"enum": ("x", "y")}}}
    made = _canonical_schema(schema)
    assert made == {"properties": {"a": {"enum": ["x", "y"]}}}
    assert _canonical_schema(schema) is made  # remembered: one copy for every deployment of the flow
    other = {"properties": {"b": {"enum": ("z",)}}}
    assert _canonical_schema(other) == {"properties": {"b": {"enum": ["z"]}}}
    plain = {"type": "object"}
    assert _canonical_schema(plain) is plain


def test_one_renderer_per_deployment_names_the_field_it_failed_in() -> None:
    """desired state renders every field of a deployment with one renderer; an error names the
    field being rendered (not the previous one) and is made only when it happens."""
    from buildsys.desired import _Renderer
    from buildsys.model import Deployment
    from buildsys.templating import Scope

    d = Deployment(name="d", index=0, location=None, path="deployments[d]")
    r = _Renderer(Scope(outputs={"s": {"x": 1}}, ids=frozenset({"s"}), pending=frozenset(), env={}), d)
    assert r.value({"a": "{{ s.x }}"}, "parameters") == {"a": 1}
    with pytest.raises(TemplateError) as err:
        r.value({"b": "{{ $MISSING_ONE }}"}, "work_pool.job_variables")
    assert err.value.path == "deployments[d].work_pool.job_variables"
    with pytest.raises(TemplateError) as again:
        r.value("{{ t.y }}", "version")
    assert again.value.path == "deployments[d].version"


def test_secret_variables_are_found_per_set_of_templated_texts(tmp_path: Path) -> None:
    """The secret-looking variables a deployment uses are remembered by its templated texts: the
    deployments sharing them get the same answer, the others their own."""
    file = write(
        tmp_path / "prefect.yaml",
        """
        deployments:
          - {name: a, entrypoint: f.py:etl, work_pool: {name: p, job_variables: {env: {T: "{{ $API_TOKEN }}"}}}}
          - {name: b, entrypoint: f.py:etl, work_pool: {name: p, job_variables: {env: {P: "{{ $DB_PASSWORD }}"}}}}
          - {name: c, entrypoint: f.py:etl, work_pool: {name: p, job_variables: {env: {T: "{{ $API_TOKEN }}"}}}}
          - {name: d, entrypoint: f.py:etl, work_pool: {name: p, job_variables: {env: {R: "{{ $REGION }}"}}}}
        """,
    )
    write(tmp_path / "f.py", "from prefect import flow\n@flow\ndef etl(): ...\n")
    _, state = read_desired(file, env={"API_TOKEN": "tok", "DB_PASSWORD": "pw", "REGION": "eu"})
    said = [w.message for w in state.warnings if "a secret, by its name" in w.message]
    assert [m.split(":")[0] + " " + m.split("$")[1].split(" ")[0] for m in said] == [
        "deployment 'a' API_TOKEN", "deployment 'b' DB_PASSWORD", "deployment 'c' API_TOKEN"
    ]
    assert state.sensitive == {"tok": "$API_TOKEN", "pw": "$DB_PASSWORD"}


def test_a_deployment_named_like_a_glob_is_keyed_as_itself(isolated: Path) -> None:
    """plan keys each deployment's steps by its name: `etl[p]` is that name, not a bracket
    expression matching `etlp` (which made the plan fail, or key another deployment's steps)."""
    from buildsys.engine import cached_namespace
    from buildsys.reconcile import cached_outputs

    write(isolated / "mysteps.py", BATCH_STEPS)
    file = write(isolated / "prefect.yaml", """
deployments:
  - name: "etl[p]"
    entrypoint: f.py:f
    build:
      - mysteps.py:write: {id: mine, name: mine}
  - name: etlp
    entrypoint: f.py:f
    build:
      - mysteps.py:write: {id: theirs, name: theirs}
""")
    project = load_project(file)
    _, pending = cached_namespace(project, "etl[p]")
    assert pending == {"mine"}
    together = cached_outputs(project)
    together.prepare(project.deployments)  # type: ignore[attr-defined]
    assert set(together.known) == {"etl[p]", "etlp"}  # type: ignore[attr-defined]
    assert [together(d).pending for d in project.deployments] == [{"mine"}, {"theirs"}]  # type: ignore[union-attr]
