"""`buildsys.affected`: for each kind of change the affected steps are exactly those a full build
reruns after a build of the base, and the affected deployments are those whose chain or spec
changed; on corpus files with many deployments a one-flow change affects one deployment."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

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


def check(root: Path, steps: set[str], deployments: dict[str, list[str]]) -> Affected:
    """`affected` against main names these steps and deployments (with these reasons), and a full
    build now reruns exactly those steps."""
    found = affected(root / "prefect.yaml", "main")
    assert {s.label for s in found.steps} == steps
    assert {d.name: list(d.reasons) for d in found.deployments} == deployments
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
    assert not affected(root / "prefect.yaml", "main").anything
    assert len(list((root / ".buildsys" / "affected").iterdir())) == 1
    monkeypatch.setenv("COLOR", "blue")  # the same on both sides: nothing is affected
    assert not affected(root / "prefect.yaml", "main").anything
    monkeypatch.delenv("COLOR")
    assert not affected(root / "prefect.yaml", "main").anything


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
