"""Recipes: every built-in renders into a valid project; unsafe recipes are refused; git recipes
are fetched from a real git server once and then served from the cache with no network."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from buildsys.project import load_project
from buildsys.recipes.cache import (
    GitRecipeRef,
    RecipeCache,
    default_cache_dir,
    parse_git_source,
    public_url,
    resolve_recipe,
)
from buildsys.recipes.manifest import (
    PLACEHOLDER,
    MissingFieldsError,
    RecipeError,
    RecipeSource,
    builtin_recipe,
    builtin_recipes,
    common_fields,
    load_recipe,
    resolve_fields,
)
from buildsys.recipes.render import RecipeConflictError, read_record, render_recipe
from tests.services.git import GitHttpServer, GitRedirect, GitRepos
from tests.services.net import free_port, port_open
from tests.services.waiting import wait_for

BUILTINS = ["docker", "docker-git", "git", "kubernetes", "local", "s3"]
FIELDS = {
    "image_name": "127.0.0.1:5000/demo",
    "bucket": "demo-bucket",
    "repository": "https://git.example.com/team/demo.git",
}
# Placeholders that must survive rendering (resolved later from step outputs).
STEP_OUTPUTS = {
    "docker": {"build_image.image_name", "build_image.tag", "build_image.image"},
    "docker-git": {"build_image.image_name", "build_image.tag", "build_image.image", "clone.directory"},
    "git": {"clone.directory"},
    "kubernetes": {"build_image.image_name", "build_image.tag", "build_image.image"},
    "local": set(),
    "s3": {"push_code.bucket", "push_code.folder"},
}
POOL_TYPES = {"docker": "docker", "docker-git": "docker", "git": "process", "kubernetes": "kubernetes",
              "local": "process", "s3": "process"}


def render(name: str, target: Path, **given: str) -> Path:
    recipe = builtin_recipe(name)
    fields = {k: v for k, v in {**FIELDS, **given}.items() if recipe.field(k)}
    resolved = resolve_fields(recipe, fields, common=common_fields(target), env={})
    render_recipe(recipe, target, resolved.values)
    return target


# ── built-ins ──────────────────────────────────────────────────────────────────────────────────


def test_the_builtin_recipes() -> None:
    assert [r.name for r in builtin_recipes()] == BUILTINS
    for recipe in builtin_recipes():
        assert recipe.source == RecipeSource("builtin", recipe.name)
        assert recipe.description.endswith("pool).")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_recipe_renders_a_valid_project(name: str, tmp_path: Path) -> None:
    target = render(name, tmp_path / "demo")
    project = load_project(target / "prefect.yaml", strict=True)
    assert project.warnings == ()
    assert [d.name for d in project.deployments] == ["hello"]
    assert [(p.name, p.type) for p in project.work_pools] == [
        (project.deployments[0].work_pool.name, POOL_TYPES[name])
    ]
    assert project.deployments[0].entrypoint == "flows/hello.py:hello"
    text = (target / "prefect.yaml").read_text()
    assert {m.group(1) for m in PLACEHOLDER.finditer(text.split("\nbuildsys:")[0])
            if not m.group(0).startswith("{{ prefect.")} == STEP_OUTPUTS[name]
    for path in target.rglob("*"):
        if path.is_file() and path.name != "prefect.yaml":
            leftovers = {m.group(1) for m in PLACEHOLDER.finditer(path.read_text())}
            assert leftovers <= {"build_image.image", "prefect.blocks.secret.git-token"}, path
    recipe = builtin_recipe(name)
    assert project.recipe == read_record(target / "prefect.yaml")
    assert project.recipe == {
        "name": name,
        "source": "builtin",
        "fields": {f.name: _expected_value(f.name, f.default, target) for f in sorted(recipe.fields, key=lambda f: f.name)},
    }


def _expected_value(name: str, default: str | None, target: Path) -> str:
    if name in FIELDS:
        return FIELDS[name]
    if name == "name":
        return target.name
    if name == "branch":
        return "main"
    assert default is not None
    return default


@pytest.mark.parametrize("name", BUILTINS)
def test_the_sample_flow_runs(name: str, tmp_path: Path) -> None:
    target = render(name, tmp_path / "demo")
    out = subprocess.run(["python3", "-c", "from flows.hello import hello; hello('recipes')"], cwd=target,
                         capture_output=True, text=True, check=True)
    assert out.stdout == "Hello, recipes!\n"


def test_record_renders_the_same_project_again(tmp_path: Path) -> None:
    first = render("docker", tmp_path / "a", tag="v1")
    record = read_record(first / "prefect.yaml")
    assert record is not None
    second = tmp_path / "b"
    render_recipe(builtin_recipe(record["name"]), second,
                  {**common_fields(first), **record["fields"]})
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


# ── fields ─────────────────────────────────────────────────────────────────────────────────────


def test_missing_required_fields_are_all_listed(tmp_path: Path) -> None:
    recipe = builtin_recipe("docker-git")
    with pytest.raises(MissingFieldsError) as err:
        resolve_fields(recipe, {}, common=common_fields(tmp_path), env={})
    assert [f.name for f in err.value.missing] == ["image_name", "repository"]
    assert err.value.render() == (
        "error: recipe 'docker-git' needs values for 2 field(s):\n"
        "  image_name: Image to build and push, with its registry (e.g. registry.example.com/team/app or "
        "127.0.0.1:5000/app).\n"
        "  repository: URL the worker clones the code from (https://, ssh://, git:// or file://).\n"
        "  hint: pass --field image_name=… --field repository=…"
    )


def test_invalid_values_are_all_listed(tmp_path: Path) -> None:
    recipe = builtin_recipe("docker")
    given = {"image_name": "Not An Image", "tag": "bad tag", "deployment": "ok"}
    with pytest.raises(RecipeError) as err:
        resolve_fields(recipe, given, common=common_fields(tmp_path), env={})
    assert err.value.message == (
        "invalid field value(s) for recipe 'docker':\n"
        f"  image_name='Not An Image': must match {recipe.field('image_name').pattern}\n"  # type: ignore[union-attr]
        "  tag='bad tag': must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    )


def test_a_value_with_a_newline_is_refused(tmp_path: Path) -> None:
    recipe = builtin_recipe("local")
    with pytest.raises(RecipeError) as err:
        resolve_fields(recipe, {"pool": "a\nbuild: evil"}, common=common_fields(tmp_path), env={})
    assert err.value.message == (
        "invalid field value(s) for recipe 'local':\n"
        "  pool='a\\nbuild: evil': must be a single line without control characters"
    )


def test_env_overrides_a_default_and_unknown_fields_are_reported(tmp_path: Path) -> None:
    recipe = builtin_recipe("docker")
    resolved = resolve_fields(recipe, {"image_name": "app", "colour": "blue"}, common=common_fields(tmp_path),
                              env={"BUILDSYS_DOCKER_BASE_IMAGE": "local/base:1"})
    assert resolved.values["base_image"] == "local/base:1"
    assert resolved.values["tag"] == "latest"
    assert resolved.unknown == ("colour",)


def test_common_fields_come_from_the_git_checkout(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "trunk", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", "https://example.com/r.git"], check=True)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert common_fields(tmp_path) == {
        "directory": str(tmp_path.resolve()),
        "name": tmp_path.name,
        "repository": "https://example.com/r.git",
        "branch": "trunk",
        "dockerfile": "Dockerfile",
    }
    resolved = resolve_fields(builtin_recipe("git"), {}, common=common_fields(tmp_path), env={})
    assert (resolved.values["repository"], resolved.values["branch"]) == ("https://example.com/r.git", "trunk")


# ── writing ────────────────────────────────────────────────────────────────────────────────────


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "hello.py").write_text("# mine\n")
    recipe = builtin_recipe("local")
    values = resolve_fields(recipe, {}, common=common_fields(tmp_path), env={}).values
    with pytest.raises(RecipeConflictError) as err:
        render_recipe(recipe, tmp_path, values)
    assert err.value.conflicts == ("README.md", "flows/hello.py")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["README.md", "flows", "hello.py"]
    assert (tmp_path / "README.md").read_text() == "mine\n"
    result = render_recipe(recipe, tmp_path, values, force=True)
    assert result.overwritten == ("README.md", "flows/hello.py")
    assert result.written == (".gitignore", "prefect.yaml")
    again = render_recipe(recipe, tmp_path, values)
    assert (again.written, again.overwritten) == ((), ())
    assert again.unchanged == (".gitignore", "README.md", "prefect.yaml", "flows/hello.py")


def make_recipe(root: Path, files: dict[str, str], manifest: str | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "recipe.yaml").write_text(manifest or (
        "description: test recipe\n"
        "fields:\n"
        "  out:\n"
        "    description: where\n"
        "    default: sub\n"
    ))
    files = {"prefect.yaml": "name: t\ndeployments: []\n", **files}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _render_path(tmp_path: Path, recipe_dir: Path, **fields: str) -> Path:
    recipe = load_recipe(recipe_dir, RecipeSource("path", str(recipe_dir)))
    target = tmp_path / "target"
    render_recipe(recipe, target, resolve_fields(recipe, fields, common=common_fields(tmp_path), env={}).values)
    return target


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("..", "recipe refused: '{{ out }}/x.txt' renders to '../x.txt', outside the target"),
        ("../../etc", "recipe refused: '{{ out }}/x.txt' renders to '../../etc/x.txt', outside the target"),
        ("/tmp/evil", "recipe refused: '{{ out }}/x.txt' renders to the absolute path '/tmp/evil/x.txt'"),
        (".git", "recipe refused: '{{ out }}/x.txt' writes into .git"),
        (".buildsys/compiled", "recipe refused: '{{ out }}/x.txt' writes into .buildsys"),
        ("a/.BuildSys", "recipe refused: '{{ out }}/x.txt' writes into .BuildSys"),
    ],
)
def test_paths_that_escape_the_target_are_refused(tmp_path: Path, out: str, message: str) -> None:
    recipe_dir = make_recipe(tmp_path / "r", {"{{ out }}/x.txt": "hi\n"})
    with pytest.raises(RecipeError) as err:
        _render_path(tmp_path, recipe_dir, out=out)
    assert err.value.message == message
    assert not (tmp_path / "target").exists()
    assert not Path("/tmp/evil").exists()
    assert not (tmp_path / "x.txt").exists()


def test_a_recipes_own_caches_never_reach_the_target(tmp_path: Path) -> None:
    """`.buildsys/` holds caches buildsys trusts when it reads them: a recipe never writes there."""
    recipe_dir = make_recipe(tmp_path / "r", {"x.txt": "hi\n", ".buildsys/compiled/0123": "planted"})
    target = _render_path(tmp_path, recipe_dir)
    assert (target / "x.txt").read_text() == "hi\n"
    assert not (target / ".buildsys").exists()
    with pytest.raises(RecipeError) as err:
        render_recipe(load_recipe(recipe_dir, RecipeSource("path", str(recipe_dir))), target / ".buildsys" / "projects", {})
    assert err.value.message == f"recipe refused: the target {target}/.buildsys/projects is inside .buildsys"


def test_a_recipe_containing_a_symlink_is_refused(tmp_path: Path) -> None:
    recipe_dir = make_recipe(tmp_path / "r", {})
    (recipe_dir / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(RecipeError) as err:
        _render_path(tmp_path, recipe_dir)
    assert err.value.render() == (
        "error: recipe refused: passwd is a symlink\n  hint: recipes may only contain regular files and folders"
    )
    assert not (tmp_path / "target").exists()


def test_never_writes_through_a_symlink_in_the_target(tmp_path: Path) -> None:
    recipe_dir = make_recipe(tmp_path / "r", {"sub/x.txt": "hi\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    with pytest.raises(RecipeError) as err:
        _render_path(tmp_path, recipe_dir)
    assert err.value.message == "refusing to write sub/x.txt: sub is a symlink"
    assert list(outside.iterdir()) == []


def test_a_recipe_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    recipe_dir = make_recipe(tmp_path / "r", {"setup.py": script, "conftest.py": script, "hooks/post_init.py": script})
    (recipe_dir / "setup.py").chmod(0o755)
    target = _render_path(tmp_path, recipe_dir)
    assert not marker.exists()
    assert (target / "setup.py").read_text() == script
    assert os.access(target / "setup.py", os.X_OK)
    manifest = "description: d\npost_init: python hooks/post_init.py\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(make_recipe(tmp_path / "r2", {}, manifest), RecipeSource("path", "r2"))
    assert err.value.message == (
        f"{tmp_path / 'r2' / 'recipe.yaml'}: invalid recipe manifest:\n"
        "  (top): Additional properties are not allowed ('post_init' was unexpected)"
    )


def test_a_field_that_breaks_the_yaml_is_refused(tmp_path: Path) -> None:
    recipe_dir = make_recipe(tmp_path / "r", {"prefect.yaml": "name: {{ out }}\n"})
    with pytest.raises(RecipeError) as err:
        _render_path(tmp_path, recipe_dir, out="a: b")
    assert err.value.message.startswith("recipe 'r': prefect.yaml is not valid YAML after filling in the fields:")
    assert not (tmp_path / "target").exists()


# ── git sources ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("git+https://h.example/team/r.git", GitRecipeRef("https://h.example/team/r.git")),
        ("git+https://h.example/r.git@v1.2#recipes/api",
         GitRecipeRef("https://h.example/r.git", "v1.2", "recipes/api")),
        ("git+https://tok@h.example/r.git@feature/x", GitRecipeRef("https://tok@h.example/r.git", "feature/x")),
        ("git+file:///srv/r@0123abc", GitRecipeRef("file:///srv/r", "0123abc")),
        ("git+git://127.0.0.1:9418/r.git#a", GitRecipeRef("git://127.0.0.1:9418/r.git", None, "a")),
    ],
)
def test_parse_git_source(text: str, expected: GitRecipeRef) -> None:
    assert parse_git_source(text) == expected
    assert str(parse_git_source(text)) == text.replace("//tok@", "//****@")  # shown: never a token


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("git+ftp://h/r.git", "unsupported git URL scheme in 'git+ftp://h/r.git'"),
        ("git+https://h/r.git@-upload-pack=x", "invalid revision '-upload-pack=x' in 'git+https://h/r.git@-upload-pack=x'"),
        ("git+https://h/r.git#../up", "recipe subdir '../up' in 'git+https://h/r.git#../up' must be a relative path "
                                      "inside the repository"),
        ("git+https://h", "no repository path in 'git+https://h'"),
    ],
)
def test_bad_git_sources(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        parse_git_source(text)
    assert err.value.message == message


def test_public_url_drops_credentials() -> None:
    assert public_url("https://user:tok@h.example:8443/r.git") == "https://h.example:8443/r.git"
    assert public_url("file:///srv/r") == "file:///srv/r"


@dataclass
class Daemon:
    """A `git daemon` this module starts and can stop in the middle of a test."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={self.root}", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or port_open("127.0.0.1", self.port), 10, "git daemon")
        assert proc.poll() is None, "git daemon exited"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        wait_for(lambda: not port_open("127.0.0.1", self.port), 10, "git daemon to stop listening")


@pytest.fixture
def daemon(git_repos: GitRepos) -> Iterator[Daemon]:
    server = Daemon(git_repos.root, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


RECIPE_REPO = {
    "team/api/recipe.yaml": (
        "description: Team API service\n"
        "fields:\n"
        "  service:\n"
        "    description: Service name\n"
        "    pattern: '[a-z]+'\n"
        "    required: true\n"
    ),
    "team/api/prefect.yaml": (
        "name: '{{ service }}'\n"
        "build:\n"
        "  - run_shell_script:\n"
        "      id: version\n"
        "      script: echo 1.0\n"
        "deployments:\n"
        "  - name: '{{ service }}-nightly'\n"
        "    entrypoint: flows/{{ service }}.py:main\n"
        "    version: '{{ version.stdout }}'\n"
    ),
    "team/api/flows/{{ service }}.py": "def main() -> None:\n    print('{{ service }} ran')\n",
    "team/batch/recipe.yaml": "description: Team batch jobs\n",
    "team/batch/prefect.yaml": "name: batch\ndeployments: []\n",
    "README.md": "recipes of the team\n",
}


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_git_recipe_end_to_end_then_from_cache_with_the_server_stopped(
    git_repos: GitRepos, daemon: Daemon, tmp_path: Path
) -> None:
    commit = git_repos.create("recipes", RECIPE_REPO)
    source = f"git+{daemon.url('recipes')}@{commit}#team/api"
    recipe, warnings = resolve_recipe(source)
    assert warnings == ()
    assert recipe.name == "api"
    assert recipe.source == RecipeSource("git", daemon.url("recipes"), commit, commit, "team/api")
    target = tmp_path / "one"
    render_recipe(recipe, target, resolve_fields(recipe, {"service": "billing"}, common={}, env={}).values)
    files = _files(target)
    assert files["flows/billing.py"] == "def main() -> None:\n    print('billing ran')\n"
    assert sorted(files) == ["flows/billing.py", "prefect.yaml"]
    assert yaml.safe_load(files["prefect.yaml"])["buildsys"] == {"recipe": {
        "name": "api", "source": f"git+{daemon.url('recipes')}", "commit": commit,
        "subdir": "team/api", "fields": {"service": "billing"}}}
    project = load_project(target / "prefect.yaml", strict=True)
    assert project.deployments[0].version == "{{ version.stdout }}"
    cache_entries = sorted(p.name for p in default_cache_dir().iterdir())
    assert len(cache_entries) == 3 and cache_entries[-1] == "validated"  # + the url's folder and lock file

    daemon.stop()
    recipe2, warnings2 = resolve_recipe(source)
    assert (recipe2.source, warnings2) == (recipe.source, ())
    render_recipe(recipe2, tmp_path / "two", resolve_fields(recipe2, {"service": "billing"}, common={}, env={}).values)
    assert _files(tmp_path / "two") == files
    short = resolve_recipe(f"git+{daemon.url('recipes')}@{commit[:10]}#team/api")[0]
    assert short.source.commit == commit
    assert sorted(p.name for p in default_cache_dir().iterdir()) == cache_entries


def test_a_moving_ref_warns_and_suggests_the_commit(git_repos: GitRepos, daemon: Daemon) -> None:
    first = git_repos.create("recipes", RECIPE_REPO)
    recipe, warnings = resolve_recipe(f"git+{daemon.url('recipes')}@main#team/batch")
    assert recipe.source.commit == first
    assert warnings == (
        f"'main' is a branch or tag, so this recipe can change under you; resolved to {first[:12]}. "
        f"Pin it for reproducible inits: --recipe git+{daemon.url('recipes')}@{first}#team/batch",
    )
    second = git_repos.commit("recipes", {"team/batch/recipe.yaml": "description: Team batch jobs v2\n"})
    recipe, warnings = resolve_recipe(f"git+{daemon.url('recipes')}#team/batch")
    assert (recipe.source.commit, recipe.description) == (second, "Team batch jobs v2")
    assert warnings[0].startswith("no revision was given, so this recipe can change under you")


def test_a_repository_with_several_recipes_needs_a_subdir(git_repos: GitRepos, daemon: Daemon) -> None:
    git_repos.create("recipes", RECIPE_REPO)
    with pytest.raises(RecipeError) as err:
        resolve_recipe(f"git+{daemon.url('recipes')}")
    assert err.value.render() == (
        f"error: {daemon.url('recipes')} holds 2 recipes; choose one with #SUBDIR\n"
        "  hint: recipes in this repository: team/api, team/batch"
    )
    with pytest.raises(RecipeError) as err:
        resolve_recipe(f"git+{daemon.url('recipes')}#team/nope")
    assert err.value.message == f"no recipe at 'team/nope' in {daemon.url('recipes')}"


def test_an_unknown_revision_is_a_clear_error(git_repos: GitRepos, daemon: Daemon) -> None:
    git_repos.create("recipes", RECIPE_REPO)
    with pytest.raises(RecipeError) as err:
        resolve_recipe(f"git+{daemon.url('recipes')}@no-such-branch")
    assert err.value.message.startswith(f"could not fetch recipe git+{daemon.url('recipes')}@no-such-branch: ")
    assert err.value.hint == "check the URL and the revision (a branch, a tag or a commit sha)"


def test_a_commit_the_server_does_not_advertise_is_still_fetched(git_repos: GitRepos, daemon: Daemon) -> None:
    old = git_repos.create("recipes", RECIPE_REPO)
    git_repos.commit("recipes", {"README.md": "newer\n"})
    subprocess.run(["git", "config", "--unset", "uploadpack.allowAnySHA1InWant"],
                   cwd=git_repos.bare("recipes"), check=True)
    recipe, _ = resolve_recipe(f"git+{daemon.url('recipes')}@{old}#team/batch")
    assert recipe.source.commit == old


def test_concurrent_inits_share_one_clone(git_repos: GitRepos, daemon: Daemon) -> None:
    commit = git_repos.create("recipes", RECIPE_REPO)
    ref = parse_git_source(f"git+{daemon.url('recipes')}@{commit}")
    results: list[Path] = []
    errors: list[BaseException] = []

    def checkout() -> None:
        try:
            results.append(RecipeCache().checkout(ref).tree)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=checkout) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(set(results)) == 1
    repo_dir = results[0].parent
    assert sorted(p.name for p in repo_dir.iterdir()) == [commit]


def test_git_recipe_over_http_with_a_token_records_no_token(git_repos: GitRepos, git_http: GitHttpServer) -> None:
    commit = git_repos.create("recipes", RECIPE_REPO)
    url = git_http.url("recipes")
    authed = re.sub(r"^http://", f"http://{git_http.token}@", url)
    recipe, _ = resolve_recipe(f"git+{authed}@{commit}#team/batch")
    assert recipe.source.location == url
    assert git_http.token not in str(recipe.source.record())


def test_git_recipe_over_file_url(git_repos: GitRepos, tmp_path: Path) -> None:
    commit = git_repos.create("recipes", RECIPE_REPO)
    recipe, warnings = resolve_recipe(f"git+file://{git_repos.bare('recipes')}@{commit}#team/batch")
    assert (recipe.name, recipe.source.commit, warnings) == ("batch", commit, ())


# ── build and plan (the engine and the store, through the CLI) ────────────────────────────────


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from buildsys.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


DOCKER_RECIPES = {"docker", "docker-git", "kubernetes"}


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_recipe_builds_and_plans(
    name: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_name = f"buildsys-test/recipe-{name}-{os.getpid()}"
    given = {**FIELDS, "image_name": image_name, "tag": "t1"}
    args = ["init", "--recipe", name]
    for key, value in given.items():
        if builtin_recipe(name).field(key):
            args += ["--field", f"{key}={value}"]
    if name in DOCKER_RECIPES:
        client = request.getfixturevalue("docker_client")
        monkeypatch.setenv("BUILDSYS_DOCKER_BASE_IMAGE", request.getfixturevalue("base_image"))
        request.addfinalizer(lambda: _remove_image(client, f"{image_name}:t1"))
    code, _, err = cli(capsys, *args)
    assert (code, err) == (0, "")

    code, out, err = cli(capsys, "build", "--json")
    assert (code, err) == (0, ""), out
    summary = json.loads(out.splitlines()[-1])
    built = 1 if name in DOCKER_RECIPES else 0
    assert (summary["ran"], summary["cached"], summary["failed"]) == (built, 0, 0)
    if built:
        assert client.images.get(f"{image_name}:t1").labels["buildsys.test"] == "1"
    if name in ("docker", "kubernetes"):  # the code is where the pull step will look for it
        from tests.services.docker import TEST_LABELS

        out = client.containers.run(f"{image_name}:t1", ["python3", "-c", "from flows.hello import hello; hello('box')"],
                                    working_dir=f"/opt/buildsys/{isolated.name}", remove=True, labels=TEST_LABELS)
        assert out == b"Hello, box!\n"
        code, out, _ = cli(capsys, "build", "--json")
        assert (code, json.loads(out.splitlines()[-1])["cached"]) == (0, 1)

    code, out, err = cli(capsys, "plan", "--json")
    assert (code, err) == (0, "")
    plan = json.loads(out)
    assert [(c["action"], c["kind"], c["name"]) for c in plan["changes"]] == [
        ("create", "pool", builtin_recipe(name).field("pool").default),  # type: ignore[union-attr]
        ("create", "deployment", "hello/hello"),
    ]
    deployment = plan["changes"][1]["after"]
    assert deployment["entrypoint"] == "flows/hello.py:hello"
    if built:
        assert deployment["job_variables"]["image"] == f"{image_name}:t1"


def _remove_image(client: object, reference: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(reference, force=True)  # type: ignore[attr-defined]


def test_an_abbreviated_commit_is_fetched_then_served_from_the_cache(git_repos: GitRepos, daemon: Daemon) -> None:
    commit = git_repos.create("recipes", RECIPE_REPO)
    git_repos.commit("recipes", {"README.md": "newer\n"})  # the short sha is not a branch tip any more
    recipe, warnings = resolve_recipe(f"git+{daemon.url('recipes')}@{commit[:9]}#team/batch")
    assert recipe.source.commit == commit
    assert warnings == (
        f"'{commit[:9]}' is an abbreviated commit (it could become ambiguous), so this recipe can change under "
        f"you; resolved to {commit[:12]}. Pin it for reproducible inits: "
        f"--recipe git+{daemon.url('recipes')}@{commit}#team/batch",
    )
    daemon.stop()
    assert resolve_recipe(f"git+{daemon.url('recipes')}@{commit[:9]}#team/batch") == (recipe, ())


def test_s3_recipe_pushes_the_code_and_plans_the_pull(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], isolated: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The s3 recipe end to end against a real S3 API (moto on 127.0.0.1), configured only through
    the standard AWS environment, as its README says."""
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)
    assert cli(capsys, "init", "--recipe", "s3", "--field", f"bucket={bucket}", "--field", "name=shop")[0] == 0
    code, out, err = cli(capsys, "push")
    assert code == 0, out + err
    assert sorted(server.objects(bucket)) == ["shop/.gitignore", "shop/README.md", "shop/flows/hello.py",
                                              "shop/prefect.yaml"]
    code, out, _ = cli(capsys, "plan", "--json")
    deployment = json.loads(out)["changes"][1]["after"]
    assert deployment["pull_steps"] == [{"pull_from_s3": {"id": "pull_code", "bucket": bucket, "folder": "shop"}}]


def test_a_recipe_token_never_reaches_gits_command_line(
    git_repos: GitRepos, git_http: GitHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `git` first on PATH that records its command line (what `ps` shows every user), then runs git.
    real_git = shutil.which("git")
    assert real_git is not None
    argv_log = tmp_path / "argv.log"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real_git} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    commit = git_repos.create("recipes", RECIPE_REPO)
    authed = git_http.url("recipes").replace("http://", f"http://ci:{git_http.token}@")

    recipe, _ = resolve_recipe(f"git+{authed}@{commit}#team/batch")

    assert recipe.source.commit == commit
    assert "fetch" in argv_log.read_text()
    assert git_http.token not in argv_log.read_text()
    assert git_http.requests and all(r.status == "200" for r in git_http.requests)


def test_a_recipe_token_never_follows_a_redirect(git_repos: GitRepos, git_redirect: GitRedirect) -> None:
    git_repos.create("recipes", RECIPE_REPO)
    authed = git_redirect.url("recipes").replace("http://", "http://ci:TOKEN-xyz@")

    with pytest.raises(RecipeError) as err:
        resolve_recipe(f"git+{authed}#team/batch")

    assert [r.authorization for r in git_redirect.target.requests if r.authorization] == []
    assert "TOKEN-xyz" not in err.value.message + (err.value.hint or "")
    assert "http://ci:****@127.0.0.1" in err.value.message
    assert err.value.hint == "the server redirected: give the final URL (credentials never follow a redirect)"
