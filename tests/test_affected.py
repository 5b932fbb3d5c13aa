"""`buildsys.affected`: for each kind of change the affected steps are exactly those a full build
reruns after a build of the base, and the affected deployments are those whose chain or spec
changed; on corpus files with many deployments a one-flow change affects one deployment."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildsys.affected import Affected, affected
from buildsys.compiled import compile_project
from buildsys.engine import build
from buildsys.errors import BuildsysError
from buildsys.model import Deployment
from buildsys.project import load_project
from tests.conftest import CORPUS
from tests.services.gitrepo import commit_tree, git, write
from tests.test_corpus import UNRESOLVED_REFS

PROJECT = """\
name: shop
build:
  - run_shell_script:
      id: shared
      script: echo shared
      inputs: [common/**]
  - run_shell_script:
      id: package
      script: "echo package {{ shared.stdout }}"
      inputs: [src/**]
deployments:
  - name: a
    entrypoint: flows/a.py:a
    tags: [shop]
  - name: b
    entrypoint: flows/b.py:b
    tags: [shop]
  - name: c
    entrypoint: flows/c/flow.py:c
    parameters: {size: 1}
    build:
      - run_shell_script:
          id: fetch
          script: echo fetch
          inputs: [flows/c/data.txt]
      - run_shell_script:
          id: compile
          script: echo compile
          inputs: [flows/c/*.py]
      - run_shell_script:
          id: bundle
          script: "echo bundle"
          needs: [fetch]
"""

FILES = {
    "common/lib.txt": "lib 1\n",
    "src/app.py": "print('app')\n",
    "flows/a.py": "def a(n: int = 1):\n    return n\n",
    "flows/b.py": "def b(n: int = 1):\n    return n\n",
    "flows/c/flow.py": "def c(size: int = 1):\n    return size\n",
    "flows/c/data.txt": "data 1\n",
}


def full_build(root: Path) -> set[str]:
    """Build every deployment; the labels of the steps that ran (were not cached)."""
    project = load_project(root / "prefect.yaml")
    compiled = compile_project(project, sections=("build", "push"))
    result = build(project, compiled.graph, compiled.steps, jobs=2)
    assert result.ok, {k: r.error for k, r in result.results.items() if r.error}
    return {r.label for r in result.results.values() if r.status == "ran"}


@pytest.fixture
def shop(isolated: Path) -> Path:
    """The project committed on main and built (so the cache holds the base's results)."""
    root = isolated / "shop"
    root.mkdir()
    commit_tree(root, {"prefect.yaml": PROJECT, ".gitignore": ".buildsys/\n", **FILES})
    full_build(root)
    return root


def check(root: Path, steps: set[str], deployments: dict[str, list[str]], *, proved: bool | None = None) -> Affected:
    """`affected` against main names these steps and deployments (with these reasons), the same
    as computing the whole base side gives, and a full build now reruns exactly those steps.
    `proved`: whether the base side was proved from git's changed paths (default: when the
    project file did not change)."""
    found = affected(root / "prefect.yaml", "main")
    if proved is None:
        proved = "prefect.yaml" not in git(root, "diff", "--name-only", "main").split()
    assert found.proved == proved
    assert {s.label for s in found.steps} == steps
    assert {d.name: list(d.reasons) for d in found.deployments} == deployments
    assert found.to_dict() == affected(root / "prefect.yaml", "main", prove=False).to_dict()  # the whole base side
    assert full_build(root) == steps
    return found


def edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_nothing_changed_affects_nothing(shop: Path) -> None:
    found = check(shop, set(), {})
    assert (found.total_steps, found.total_deployments, found.removed) == (5, 3, ())
    assert found.commit == git(shop, "rev-parse", "HEAD")


def test_a_step_input_file(shop: Path) -> None:
    write(shop, {"flows/c/data.txt": "data 2\n"})
    check(shop, {"fetch", "compile", "bundle"}, {"c": [
        "step fetch: input file flows/c/data.txt changed",
        "step compile: upstream step fetch changed",  # the implicit edge: the step before it
        "step bundle: upstream step fetch changed",  # its `needs`
    ]})


def test_a_deployment_field(shop: Path) -> None:
    edit(shop, "prefect.yaml", "    tags: [shop]\n  - name: b", "    tags: [shop, new]\n  - name: b")
    found = check(shop, set(), {"a": ["fields changed: tags"]})
    assert found.deployments[0].fields == ("tags",)
    edit(shop, "prefect.yaml", "parameters: {size: 1}", "parameters: {size: 2}")
    check(shop, set(), {"a": ["fields changed: tags"], "c": ["fields changed: parameters.size"]})


def test_a_shared_top_level_step(shop: Path) -> None:
    write(shop, {"common/lib.txt": "lib 2\n"})
    found = check(shop, {"shared", "package"}, {
        "a": ["step shared: input file common/lib.txt changed", "step package: upstream step shared changed"],
        "b": ["step shared: input file common/lib.txt changed", "step package: upstream step shared changed"],
    })
    assert {s.label: s.deployments for s in found.steps} == {"shared": ("a", "b"), "package": ("a", "b")}


def test_an_entrypoint_file(shop: Path) -> None:
    edit(shop, "flows/b.py", "n: int = 1", "n: int = 1, verbose: bool = False")
    found = check(shop, set(), {"b": ["entrypoint file flows/b.py changed: version, parameter_schema"]})
    assert found.deployments[0].identity == "b/b"
    # an entrypoint that is also a step's input: the step and the version
    edit(shop, "flows/c/flow.py", "return size", "return size * 2")
    check(shop, {"compile"}, {
        "b": ["entrypoint file flows/b.py changed: version, parameter_schema"],
        "c": ["step compile: input file flows/c/flow.py changed", "entrypoint file flows/c/flow.py changed: version"],
    })


def test_a_needs_edge(shop: Path) -> None:
    edit(shop, "prefect.yaml", "needs: [fetch]", "needs: [compile]")
    check(shop, {"bundle"}, {"c": ["step bundle: upstream step compile changed; upstream step fetch changed"]})


def test_a_changed_upstream_output_reference(shop: Path) -> None:
    """A step whose inputs name another step's output: rendered with a symbol for that output, so
    the text around it counts, and the upstream key behind it."""
    edit(shop, "prefect.yaml", "echo package {{ shared.stdout }}", "echo pkg {{ shared.stdout }}")
    check(shop, {"package"}, {"a": ["step package: inputs changed: script"], "b": ["step package: inputs changed: script"]})


def test_new_and_removed_deployments_and_a_renamed_step(shop: Path) -> None:
    text = (shop / "prefect.yaml").read_text()
    text = text.replace("  - name: b\n    entrypoint: flows/b.py:b\n    tags: [shop]\n", "")
    text = text.replace("id: compile", "id: compile2") + "  - name: d\n    entrypoint: flows/a.py:a\n"
    (shop / "prefect.yaml").write_text(text)
    found = check(shop, set(), {"d": ["new deployment (not at main)"]})  # a renamed step keeps its key: a cache hit
    assert found.removed == ("b/b",)


def test_the_default_base_is_the_merge_base_with_the_default_branch(shop: Path) -> None:
    git(shop, "checkout", "-q", "-b", "feature")
    write(shop, {"flows/c/data.txt": "data 2\n"})
    git(shop, "commit", "-q", "-am", "change c")
    git(shop, "checkout", "-q", "main")
    write(shop, {"src/app.py": "print('moved on')\n"})
    git(shop, "commit", "-q", "-am", "main moves on")
    git(shop, "checkout", "-q", "feature")
    found = affected(shop / "prefect.yaml")
    assert found.commit == git(shop, "merge-base", "HEAD", "main")
    assert [d.name for d in found.deployments] == ["c"]  # main's own change is not this branch's


# --- proving the base side from git's changed paths: each kind of change equals the whole base side ---


def test_an_untracked_file_in_an_input_folder_and_one_no_step_reads(shop: Path) -> None:
    write(shop, {"notes/todo.txt": "later\n"})  # an untracked folder no step reads
    check(shop, set(), {})
    write(shop, {"common/new.txt": "new\n"})
    check(shop, {"shared", "package"}, {
        "a": ["step shared: input file common/new.txt added", "step package: upstream step shared changed"],
        "b": ["step shared: input file common/new.txt added", "step package: upstream step shared changed"],
    })


def test_a_file_git_ignores_but_buildsys_does_not(shop: Path) -> None:
    """`.git/info/exclude` is git's, not buildsys's: the file is an input, so the step is affected."""
    (shop / ".git" / "info" / "exclude").write_text("*.log\n")
    write(shop, {"src/debug.log": "x\n"})
    assert "src/debug.log" not in git(shop, "status", "--porcelain")
    check(shop, {"package"}, {
        "a": ["step package: input file src/debug.log added"], "b": ["step package: input file src/debug.log added"],
    })


def test_a_deleted_and_a_renamed_input_file(shop: Path) -> None:
    (shop / "flows" / "c" / "data.txt").unlink()
    check(shop, {"fetch", "compile", "bundle"}, {"c": [
        "step fetch: input file flows/c/data.txt removed",
        "step compile: upstream step fetch changed",
        "step bundle: upstream step fetch changed",
    ]})
    git(shop, "checkout", "--", ".")
    git(shop, "mv", "src/app.py", "src/main.py")
    check(shop, {"package"}, {
        "a": ["step package: input file src/app.py no longer an input; input file src/main.py added"],
        "b": ["step package: input file src/app.py no longer an input; input file src/main.py added"],
    })


def test_the_working_tree_and_the_base_are_asked_of_git_in_four_processes(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rev-parse` (the top directory and the base's commit), `config`, one `status` (the revision's
    commit and dirtiness, and the untracked and ignored paths), `diff`: not six. An untracked folder
    that alone could make the working tree dirty is asked the step-by-step way, with the same answer."""
    import buildsys.revision

    started: list[str] = []
    real = buildsys.revision._start
    monkeypatch.setattr(buildsys.revision, "_start", lambda cwd, args, **kw: started.append(args[0]) or real(cwd, args, **kw))
    write(shop, {"README.md": "a file no step reads\n"})
    found = affected(shop / "prefect.yaml", "main")
    assert found.proved and sorted(started) == ["config", "diff", "rev-parse", "status"]
    (shop / "README.md").unlink()
    write(shop, {"notes/new.txt": "an untracked folder\n"})
    started.clear()
    again = affected(shop / "prefect.yaml", "main")
    assert started.count("status") == 3  # the quick one, then both of the step-by-step way
    assert again.to_dict() == affected(shop / "prefect.yaml", "main", prove=False).to_dict()


def test_a_change_no_key_or_spec_reads_writes_no_base_files(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import buildsys.revision

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base's files were written")

    monkeypatch.setattr(buildsys.revision, "export_tree", refuse)
    write(shop, {"README.md": "a file no step reads\n", "flows/a.py": "def a(n: int = 1):\n    return n\n"})
    found = affected(shop / "prefect.yaml", "main")
    assert found.proved and not found.anything


def test_a_files_hook_and_a_version_that_follows_the_commit(isolated: Path) -> None:
    """A step's files hook names a file that is deleted; a deployment's version is the commit's."""
    root = commit_tree(isolated / "hooked", {
        "prefect.yaml": "build:\n  - pip_install_requirements:\n      id: install\n      directory: deps\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n    version_type: vcs:git\n"
                        "  - name: b\n    entrypoint: a.py:a\n    version: '1'\n",
        "a.py": "def a():\n    pass\n", "deps/requirements.txt": "six\n", ".gitignore": ".buildsys/\n",
    })
    (root / "deps" / "requirements.txt").unlink()
    git(root, "commit", "-q", "-am", "no requirements")
    found = affected(root / "prefect.yaml", "HEAD~1")
    assert found.proved
    assert [(s.label, s.reason) for s in found.steps] == [("install", "input file deps/requirements.txt removed")]
    assert {d.name: d.fields for d in found.deployments} == {"a": ("version",), "b": ()}
    assert found.to_dict() == affected(root / "prefect.yaml", "HEAD~1", prove=False).to_dict()


def test_what_defines_every_key_is_compared_whole(shop: Path) -> None:
    """The project file and the root ignore files decide every step's inputs: when one of them
    changed, the whole base side is computed (and gives the same answer as before)."""
    write(shop, {".gitignore": ".buildsys/\ncommon/lib.txt\n"})
    check(shop, {"shared", "package"}, {
        "a": ["step shared: input file common/lib.txt no longer an input", "step package: upstream step shared changed"],
        "b": ["step shared: input file common/lib.txt no longer an input", "step package: upstream step shared changed"],
    }, proved=False)


def test_a_step_whose_code_is_in_the_repository(isolated: Path) -> None:
    """A project-local step's code may differ at the base: the whole base side is computed."""
    root = commit_tree(isolated / "local", {
        "prefect.yaml": "build:\n  - mysteps.py:paint:\n      id: paint\n      color: red\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n",
        "mysteps.py": "def paint(color):\n    return {'color': color}\n",
        "a.py": "def a():\n    pass\n", ".gitignore": ".buildsys/\n",
    })
    full_build(root)
    write(root, {"mysteps.py": "def paint(color):\n    return {'color': color.upper()}\n"})
    found = affected(root / "prefect.yaml", "main")
    assert not found.proved and [s.label for s in found.steps] == ["paint"]
    assert found.steps[0].reason.startswith("step version changed")  # a plain function's version is its source's
    assert found.to_dict() == affected(root / "prefect.yaml", "main", prove=False).to_dict()
    assert full_build(root) == {"paint"}


HOOKED_PLUGIN = """\
import os

from buildsys.step import step


@step("pick")
def pick(ctx, name: str):
    return {"name": name}


@pick.files
def _files(inputs, ctx):
    # chooses its files by testing existence alone: no audit event shows that read
    return ["b.txt"] if os.path.exists(os.path.join(ctx.cwd, "USE_B")) else ["a.txt"]
"""


def test_a_plugins_files_hook_that_tests_existence(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A files hook from outside buildsys may decide by `os.path.exists`, which leaves no trace:
    such a step is keyed on the base's files whenever anything changed, so the answer is still
    what the whole base side and a full build give."""
    plugins = isolated / "plugins"
    plugins.mkdir()
    (plugins / "hookplug.py").write_text(HOOKED_PLUGIN)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.delitem(sys.modules, "hookplug", raising=False)
    root = commit_tree(isolated / "plugged", {
        "prefect.yaml": "build:\n  - hookplug.pick:\n      id: pick\n      name: x\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n",
        "a.py": "def a():\n    pass\n", "a.txt": "a\n", "b.txt": "b\n", ".gitignore": ".buildsys/\n",
    })
    full_build(root)
    write(root, {"USE_B": ""})
    found = check(root, {"pick"}, {"a": ["step pick: input file a.txt no longer an input; input file b.txt added"]})
    assert found.proved
    monkeypatch.delitem(sys.modules, "hookplug", raising=False)


def test_an_environment_variable_in_a_key(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same process keys both sides, so a variable's value is never a change; an input file is."""
    root = commit_tree(isolated / "env2", {
        "prefect.yaml": "build:\n  - run_shell_script:\n      id: paint\n      script: echo {{ $COLOR }}\n"
                        "      inputs: [paint.txt]\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n",
        "a.py": "def a():\n    pass\n", "paint.txt": "1\n", ".gitignore": ".buildsys/\n",
    })
    monkeypatch.setenv("COLOR", "red")
    full_build(root)
    check(root, set(), {})
    write(root, {"paint.txt": "2\n"})
    check(root, {"paint"}, {"a": ["step paint: input file paint.txt changed"]})


def test_a_base_without_the_project_counts_everything(shop: Path) -> None:
    empty_tree = git(shop, "hash-object", "-t", "tree", "/dev/null")
    git(shop, "branch", "empty", git(shop, "commit-tree", empty_tree, "-m", "nothing"))
    found = affected(shop / "prefect.yaml", "empty")
    assert len(found.steps) == 5 and found.names == ["a", "b", "c"]
    assert found.notes == ("the project file does not exist at empty",)


def test_bad_refs_are_clear_errors(shop: Path, isolated: Path) -> None:
    with pytest.raises(BuildsysError, match="nope: no such commit, branch or tag"):
        affected(shop / "prefect.yaml", "nope")
    bare = isolated / "bare"
    bare.mkdir()
    write(bare, {"prefect.yaml": "deployments: []\n"})
    with pytest.raises(BuildsysError, match="not inside a git repository"):
        affected(bare / "prefect.yaml")


# --- the corpus: one flow changed in a file with many deployments ---------------------------------------


# corpus files where some flow has a file of its own (the others keep all their flows in one file)
ONE_FILE_EACH = {"002-AhmadSaeedZaidi-pleiades.yaml", "036-limaofeng-quantx.yaml", "041-Nerdboss-stm-pulsetrack.yaml"}


def many_deployment_files() -> list[str]:
    index = CORPUS / "INDEX.tsv"
    if not index.is_file():
        return []
    with index.open() as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if "invalid" not in r["features"].split(",")]
    out = []
    for row in rows:
        data = yaml.safe_load((CORPUS / row["file"]).read_text())
        deployments = data.get("deployments") or [] if isinstance(data, dict) else []
        if len(deployments) >= 5 and row["file"] not in UNRESOLVED_REFS:  # plan refuses those; so does affected
            out.append(row["file"])
    return out


@pytest.mark.parametrize("name", many_deployment_files())
def test_a_one_flow_change_in_a_corpus_file_affects_one_deployment(name: str, isolated: Path) -> None:
    root = isolated / "project"
    root.mkdir()
    shutil.copy(CORPUS / name, root / "prefect.yaml")
    project = load_project(root / "prefect.yaml")
    files: dict[str, list[str]] = {}
    for d in project.deployments:
        path, func = (d.entrypoint or "").rsplit(":", 1)
        files.setdefault(path, []).append(func)
    for path, funcs in files.items():
        write(root, {path: "".join(f"def {f}(n: int = 1):\n    return n\n\n\n" for f in funcs)})
    commit_tree(root, {})
    def file_of(d: Deployment) -> str:
        return (d.entrypoint or "").rsplit(":", 1)[0]

    # one flow whose file no other deployment uses; in a file where every flow shares one file,
    # changing one flow changes that file's MD5, the version of every deployment in it (as Prefect)
    target = next((d for d in project.deployments if len(files[file_of(d)]) == 1), project.deployments[0])
    func = (target.entrypoint or "").rsplit(":", 1)[1]
    edit(root, file_of(target), f"def {func}(n: int = 1)", f"def {func}(n: int = 1, extra: str = 'x')")
    found = affected(root / "prefect.yaml", "main")
    assert found.proved and found.to_dict() == affected(root / "prefect.yaml", "main", prove=False).to_dict()
    sharing = [d.name for d in project.deployments if file_of(d) == file_of(target)]
    assert [d.name for d in found.deployments] == sharing
    assert "parameter_schema" in found.deployments[sharing.index(target.name)].fields
    assert not found.steps and found.total_deployments == len(project.deployments) >= 5
    if name in ONE_FILE_EACH:
        assert sharing == [target.name]


def test_the_base_side_is_reused_only_for_the_same_environment(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base's keys are kept in .buildsys/affected/ (a commit never changes), but they hold the
    digests of the environment values a step names: other values compute them again."""
    root = isolated / "env"
    root.mkdir()
    commit_tree(root, {
        "prefect.yaml": "build:\n  - run_shell_script:\n      id: paint\n      script: echo {{ $COLOR }}\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n",
        "a.py": "def a():\n    pass\n",
        ".gitignore": ".buildsys/\n",
    })
    monkeypatch.setenv("COLOR", "red")
    assert not affected(root / "prefect.yaml", "main", prove=False).anything
    assert len(list((root / ".buildsys" / "affected").iterdir())) == 1
    monkeypatch.setenv("COLOR", "blue")  # the same on both sides: nothing is affected
    assert not affected(root / "prefect.yaml", "main", prove=False).anything
    monkeypatch.delenv("COLOR")
    assert not affected(root / "prefect.yaml", "main", prove=False).anything
    assert affected(root / "prefect.yaml", "main").proved  # nothing changed: no base side at all


def test_a_step_whose_files_depend_on_another_steps_output_counts_as_affected(isolated: Path) -> None:
    """Its key cannot be known before a build (which files its hook names depends on an output),
    so it is affected whatever changed, and so is every step after it."""
    root = isolated / "hook"
    root.mkdir()
    commit_tree(root, {
        "prefect.yaml": "build:\n"
                        "  - run_shell_script:\n      id: where\n      script: echo deps\n"
                        "  - pip_install_requirements:\n      id: install\n      directory: '{{ where.stdout }}'\n"
                        "  - run_shell_script:\n      id: after\n      script: echo after\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n",
        "a.py": "def a():\n    pass\n",
    })
    found = affected(root / "prefect.yaml", "main")
    assert [(s.label, s.reason) for s in found.steps] == [
        ("install", "the files it reads depend on another step's outputs, known only after a build"),
        ("after", "upstream step install is affected"),
    ]
    assert found.names == ["a"]


def test_only_the_changed_files_of_the_base_are_written_when_a_step_digests_them(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file a step digests, changed in place: its base key is its working-tree key with that
    file's base digest (and the base keys of the steps after it), so only that file is written."""
    import buildsys.revision

    written: list[object] = []
    real = buildsys.revision.export_tree

    def export(*args: object, paths: object = None, **kwargs: object) -> object:
        written.append(paths)
        return real(*args, paths=paths, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(buildsys.revision, "export_tree", export)
    write(shop, {"flows/c/data.txt": "data 2\n", "flows/b.py": "def b(n: int = 2):\n    return n\n"})
    check(shop, {"fetch", "compile", "bundle"}, {
        "b": ["entrypoint file flows/b.py changed: version, parameter_schema"],
        "c": ["step fetch: input file flows/c/data.txt changed", "step compile: upstream step fetch changed",
              "step bundle: upstream step fetch changed"],
    })
    assert written[0] == ["flows/b.py", "flows/c/data.txt"]
    (shop / "flows" / "c" / "extra.py").write_text("x = 1\n")  # added where `compile` lists: every file
    written.clear()
    found = affected(shop / "prefect.yaml", "main")
    assert found.proved and found.to_dict() == affected(shop / "prefect.yaml", "main", prove=False).to_dict()
    assert [s.reason for s in found.steps][1] == "input file flows/c/extra.py added; upstream step fetch changed"
    assert written[0] is None


def test_a_docker_build_context(isolated: Path) -> None:
    """build_docker_image's files hook lists its context and reads its .dockerignore: a file
    changed in place is edited into the key; a changed .dockerignore or a new file is keyed on
    the base's files; each the same as the whole base side."""
    root = commit_tree(isolated / "img", {
        "prefect.yaml": "deployments:\n  - name: a\n    entrypoint: a.py:a\n    build:\n"
                        "      - prefect_docker.deployments.steps.build_docker_image:\n          id: image\n"
                        "          image_name: test/img\n          path: ctx\n          dockerfile: Dockerfile\n",
        "a.py": "def a():\n    pass\n", "ctx/Dockerfile": "FROM scratch\nCOPY . /app\n", "ctx/app.py": "1\n",
        "ctx/.dockerignore": "*.log\n", ".gitignore": ".buildsys/\n",
    })
    for files in ({"ctx/app.py": "2\n"}, {"ctx/debug.log": "x\n"}, {"ctx/.dockerignore": "*.md\n"}, {"ctx/new.py": "n\n"}):
        write(root, files)
        found = affected(root / "prefect.yaml", "main")
        assert found.proved and found.to_dict() == affected(root / "prefect.yaml", "main", prove=False).to_dict()
    assert [s.label for s in found.steps] == ["image"] and found.names == ["a"]


def test_a_file_a_step_digests_through_a_link(shop: Path) -> None:
    """A link in a step's inputs is digested as its target: a change to the target is a change."""
    (shop / "src" / "shared.txt").symlink_to("../common/lib.txt")
    git(shop, "add", "-A")
    git(shop, "commit", "-qm", "a link")
    full_build(shop)
    write(shop, {"common/lib.txt": "lib 2\n"})
    found = affected(shop / "prefect.yaml", "HEAD")
    assert found.proved and found.to_dict() == affected(shop / "prefect.yaml", "HEAD", prove=False).to_dict()
    assert [s.label for s in found.steps] == ["shared", "package"]
    assert "input file src/shared.txt changed" in found.steps[1].reason


def test_a_submodule_that_moved(shop: Path, isolated: Path) -> None:
    """git names a submodule as one path: a step reading a file inside it is touched by it."""
    lib = commit_tree(isolated / "lib", {"file.txt": "1\n"})
    git(shop, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "vendor/lib")
    edit(shop, "prefect.yaml", "inputs: [src/**]", "inputs: [src/**, vendor/lib/file.txt]")
    git(shop, "add", "-A")
    git(shop, "commit", "-qm", "a submodule")
    write(shop / "vendor" / "lib", {"file.txt": "2\n"})
    git(shop / "vendor" / "lib", "commit", "-qam", "moved")
    assert git(shop, "diff", "--name-status", "HEAD") == "M\tvendor/lib"
    found = affected(shop / "prefect.yaml", "HEAD")
    assert found.proved and found.to_dict() == affected(shop / "prefect.yaml", "HEAD", prove=False).to_dict()
    assert [s.label for s in found.steps] == ["package"]


def test_a_sparse_checkout_is_compared_whole(shop: Path) -> None:
    """Files a sparse checkout leaves out are no changed paths to git: the whole base side."""
    git(shop, "sparse-checkout", "set", "--no-cone", "/*", "!/common/")
    assert not (shop / "common").exists()
    found = affected(shop / "prefect.yaml", "main")
    assert not found.proved
    assert found.to_dict() == affected(shop / "prefect.yaml", "main", prove=False).to_dict()


def test_changed_paths_a_step_read_are_those_the_definition_gives() -> None:
    """`_Changes.hits` (what the proof asks of every step) against its definition, on random
    trees: a changed path counts when a read path (inside the repository, not under .git,
    .buildsys… at any depth) is it or a folder holding it, or when a read path lies in it (the
    deepest such changed path)."""
    import os
    import random

    from buildsys.affected import _Changes
    from buildsys.stepkeys import Reads

    top = "/r"
    names = ["a", "b", ".git", ".buildsys", "c.txt", "d"]
    rng = random.Random(19)

    def some_path() -> str:
        return "/".join(rng.choice(names) for _ in range(rng.randint(1, 4)))

    def kept_out(path: str) -> bool:
        return any(part in (".git", ".buildsys", "__pycache__", ".venv") for part in os.path.relpath(path, top).split("/"))

    for _ in range(400):
        changed = {some_path() + rng.choice(["", "", "/"]) for _ in range(rng.randint(0, 4))}
        changes = _Changes(top, changed)
        heads = changes.paths | changes.folders
        reads = Reads()
        for bucket in (reads.files, reads.listed, reads.opened):
            bucket.update(os.path.normpath(os.path.join(rng.choice([top, "/elsewhere"]), some_path()))
                          for _ in range(rng.randint(0, 5)))
        read = {p for p in (*reads.files, *reads.listed, *reads.opened)
                if (p == top or p.startswith(top + "/")) and not kept_out(p)}
        expected = {c for c in heads if any(c == r or c.startswith(r + "/") for r in read)}
        for r in read:
            holding = [c for c in heads if r == c or r.startswith(c + "/")]
            if holding:
                expected.add(max(holding, key=len))
        assert changes.hits(reads, top) == expected, (changed, read)


def _keyed_and_digested(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], set[str]]:
    """The labels `Engine.key_for` keys and the files the cache digests, from now on."""
    from buildsys.cache import Cache
    from buildsys.engine import Engine

    keyed: list[str] = []
    digested: set[str] = set()
    key_for, digests = Engine.key_for, Cache.digests

    def record_key(self: Engine, node: Any, stepdef: Any) -> Any:
        keyed.append(node.label)
        return key_for(self, node, stepdef)

    def record_digests(self: Cache, paths: Any) -> Any:
        digested.update(paths)
        return digests(self, paths)

    monkeypatch.setattr(Engine, "key_for", record_key)
    monkeypatch.setattr(Cache, "digests", record_digests)
    return keyed, digested


def test_only_the_steps_a_change_can_reach_are_digested(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof lists every step's files (what keying it reads) but digests and keys only the
    steps a changed path can reach, on both sides; the answer is the whole base side's."""
    keyed, digested = _keyed_and_digested(monkeypatch)
    write(shop, {"flows/c/data.txt": "data 2\n"})
    found = affected(shop / "prefect.yaml", "main")
    assert found.proved and [s.label for s in found.steps] == ["fetch", "compile", "bundle"]
    assert sorted(set(keyed)) == ["bundle", "compile", "fetch"]
    assert not digested & {"common/lib.txt", "src/app.py", "flows/a.py"}
    assert "flows/c/data.txt" in digested
    monkeypatch.undo()
    assert found.to_dict() == affected(shop / "prefect.yaml", "main", prove=False).to_dict()


def test_a_file_only_a_files_hooks_listing_shows(isolated: Path) -> None:
    """A file deleted from a Docker build context: the step's files now do not name it; only the
    hook's own listing of the context (an audit event while its files are listed, not digested)
    shows that the change reaches the step. Another image's step is untouched."""
    image = ("      - prefect_docker.deployments.steps.build_docker_image:\n          id: image\n"
             "          image_name: test/{0}\n          path: {0}\n          dockerfile: Dockerfile\n")
    root = commit_tree(isolated / "two", {
        "prefect.yaml": "deployments:\n"
                        "  - name: a\n    entrypoint: a.py:a\n    build:\n" + image.format("one") +
                        "  - name: b\n    entrypoint: a.py:a\n    build:\n" + image.format("two"),
        "a.py": "def a():\n    pass\n", ".gitignore": ".buildsys/\n",
        "one/Dockerfile": "FROM scratch\nCOPY . /app\n", "one/app.py": "1\n",
        "two/Dockerfile": "FROM scratch\nCOPY . /app\n", "two/app.py": "2\n",
    })
    (root / "two" / "app.py").unlink()
    found = affected(root / "prefect.yaml", "main")
    assert found.proved and found.names == ["b"]
    assert [(s.label, s.reason) for s in found.steps] == [("image@b", "input file two/app.py no longer an input")]
    assert found.to_dict() == affected(root / "prefect.yaml", "main", prove=False).to_dict()


def test_an_unreadable_build_cache_leaves_every_key_unknown(shop: Path) -> None:
    """When the build cache cannot be read no step can be keyed: each step's key is unknown (all
    affected), the proof's as the whole base side's, not only those of the steps it digests."""
    (shop / ".buildsys" / "cache.db").write_bytes(b"not a database" * 100)
    for name in ("cache.db-wal", "cache.db-shm"):
        (shop / ".buildsys" / name).unlink(missing_ok=True)
    write(shop, {"flows/c/data.txt": "data 2\n"})
    found = affected(shop / "prefect.yaml", "main")
    assert found.proved and len(found.steps) == 5
    assert all("cannot be computed before a build" in s.reason for s in found.steps)
    assert found.to_dict() == affected(shop / "prefect.yaml", "main", prove=False).to_dict()


def test_an_input_file_that_cannot_be_read_in_a_step_no_change_reaches(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digesting a file that cannot be opened fails, so that step's key is unknown: a step the
    proof would not digest is keyed when one of its files cannot be read, and says why."""
    import os

    import buildsys.cache

    lib = str(shop / "common" / "lib.txt")
    hash_file, access = buildsys.cache._hash_file, os.access

    def refuse(path: str, size: int = -1) -> str:
        if path == lib:
            raise PermissionError(13, "Permission denied", path)
        return hash_file(path, size)

    monkeypatch.setattr(buildsys.cache, "_hash_file", refuse)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: path != lib and access(path, mode, **kw))
    write(shop, {"flows/c/data.txt": "data 2\n"})
    found = affected(shop / "prefect.yaml", "main")
    assert found.proved
    assert [(s.label, s.reason.split(" (")[0]) for s in found.steps][:2] == [
        ("shared", "its key cannot be computed before a build"), ("package", "upstream step shared is affected"),
    ]
    # (the whole base side words the step after it "upstream step shared changed": the base keys it)


def test_a_file_a_step_reads_through_a_linked_folder(isolated: Path) -> None:
    """A step's input named through a link to a folder is digested from the folder's file: a change
    there reaches the step (each folder's real path is found once, not each file's)."""
    root = isolated / "linked"
    root.mkdir()
    (root / "alias").symlink_to("real")
    commit_tree(root, {
        "prefect.yaml": "build:\n  - run_shell_script:\n      id: one\n      script: echo one\n      inputs: [alias/lib.txt]\n"
                        "  - run_shell_script:\n      id: two\n      script: echo two\n      inputs: [other.txt]\n"
                        "deployments:\n  - name: a\n    entrypoint: a.py:a\n",
        "real/lib.txt": "1\n", "other.txt": "o\n", "a.py": "def a():\n    pass\n", ".gitignore": ".buildsys/\n",
    })
    write(root, {"real/lib.txt": "2\n"})
    found = affected(root / "prefect.yaml", "main")
    assert found.proved and [(s.label, s.reason) for s in found.steps] == [
        ("one", "input file alias/lib.txt changed"), ("two", "upstream step one changed")]
    assert found.to_dict() == affected(root / "prefect.yaml", "main", prove=False).to_dict()


def test_the_real_paths_of_read_files_are_realpaths(tmp_path: Path) -> None:
    """`stepkeys._Realpaths` (a folder's real path found once, a file looked at alone) against
    `os.path.realpath`, on a random tree of folders, files and links (to files, folders, links,
    missing paths; relative and absolute), through links and missing components."""
    import os
    import random

    from buildsys.stepkeys import _Realpaths

    rng = random.Random(5)
    top = os.path.realpath(tmp_path)
    folders, files, links = [top], [], []
    for i in range(40):
        folders.append(os.path.join(rng.choice(folders), f"d{i}"))
        os.mkdir(folders[-1])
    for i in range(80):
        files.append(os.path.join(rng.choice(folders), f"f{i}"))
        Path(files[-1]).touch()
    for i in range(40):
        at = os.path.join(rng.choice(folders), f"l{i}")
        target = rng.choice([*folders, *files, *links, os.path.join(top, "missing")])
        os.symlink(os.path.relpath(target, os.path.dirname(at)) if rng.random() < 0.5 else target, at)
        links.append(at)
    paths = [*files, *links]
    for _ in range(3000):
        parts = [rng.choice(["f1", "d3", "l2", "x", "l7", "f5", "l0"]) for _ in range(rng.randint(0, 3))]
        paths.append(os.path.normpath(os.path.join(rng.choice([*folders, *links]), *parts)))
    real = _Realpaths()
    assert [real(p) for p in paths] == [os.path.realpath(p) for p in paths]


def test_random_changes_affect_what_a_full_build_reruns(shop: Path) -> None:
    """Seeded random changes (files edited, rewritten unchanged, added, deleted, made executable;
    in input folders and outside them; committed on a branch, staged, or left in the working tree;
    a deployment's field): each time the proof from git's changed paths says what computing the
    whole base side says, a full build reruns exactly the affected steps, and every deployment of
    an affected step is affected. Each case's first change is of the next kind in turn."""
    import random
    import stat

    rng = random.Random(1904)
    places = [*FILES, "common/extra.txt", "src/util.py", "flows/c/more.py", "flows/c/other.txt",
              "notes/todo.txt", "flows/d.py"]
    kinds = ("edit", "same", "delete", "exec", "edit", "delete", "field")
    cache = shop.parent / "base-cache"
    shutil.copytree(shop / ".buildsys", cache)  # the base's build alone (an earlier case's results would be hits)
    for case in range(3 * len(kinds)):
        git(shop, "checkout", "-q", "-f", "main")
        git(shop, "clean", "-fdq")
        if "case" in git(shop, "branch", "--list", "case"):
            git(shop, "branch", "-q", "-D", "case")
        shutil.rmtree(shop / ".buildsys")
        shutil.copytree(cache, shop / ".buildsys")
        assert full_build(shop) == set(), f"case {case}: the base is not all cached after the reset"
        git(shop, "checkout", "-q", "-b", "case")
        done: list[str] = []
        for n in range(rng.randint(1, 3)):
            kind = kinds[case % len(kinds)] if n == 0 else rng.choice(kinds)
            there = [rel for rel in places if (shop / rel).is_file()]
            rel = rng.choice(there if kind in ("same", "delete", "exec") else places)
            path = shop / rel
            if kind == "field":
                edit(shop, "prefect.yaml", "parameters: {size: ", f"parameters: {{size: {rng.randint(2, 9)}, was{n}: ")
                rel = "prefect.yaml"
            elif kind == "delete":
                path.unlink()
            elif kind == "same":
                path.write_text(path.read_text())
            elif kind == "exec":
                path.chmod(path.stat().st_mode | stat.S_IXUSR)
            else:
                write(shop, {rel: f"{rel} {rng.random()}\n"})
            done.append(f"{kind} {rel}")
            how = rng.choice(["commit", "stage", "leave"])
            if how != "leave":
                git(shop, "add", "-A")
            if how == "commit":
                git(shop, "commit", "-q", "--allow-empty", "-m", f"case {case}")
        found = affected(shop / "prefect.yaml", "main")
        whole = affected(shop / "prefect.yaml", "main", prove=False)
        assert found.to_dict() == whole.to_dict(), f"case {case}: {done}"
        assert {s.label for s in found.steps} == full_build(shop), f"case {case}: {done}"
        named = {d.name for d in found.deployments}
        assert {d for s in found.steps for d in s.deployments} <= named, f"case {case}: {done}"
