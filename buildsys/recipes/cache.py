"""Recipes hosted in git: `git+URL[@REV][#SUBDIR]` sources and the clone cache that serves them.

A source is fetched once per (url, commit) into ``$XDG_CACHE_HOME/buildsys/recipes``: built in a
temporary directory under a file lock and moved into place atomically, so concurrent inits share
one clone. A source pinned to a commit that is already cached is served with no network at all;
a moving ref (branch, tag, or none) is resolved by fetching and earns a warning to pin it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from buildsys.recipes.manifest import MANIFEST, Recipe, RecipeError, RecipeSource, find_recipes, load_recipe
from buildsys.sensitive import mask_url, mask_url_text

__all__ = ["CheckedOut", "GitRecipeRef", "RecipeCache", "default_cache_dir", "is_git_source",
           "parse_git_source", "public_url", "recipe_in_tree", "resolve_recipe"]

SCHEMES = ("https", "http", "file", "ssh", "git")
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SHA_PREFIX = re.compile(r"^[0-9a-f]{7,64}$")
GIT_TIMEOUT = 120


@dataclass(frozen=True)
class GitRecipeRef:
    """A parsed `git+URL[@REV][#SUBDIR]` source."""

    url: str
    rev: str | None = None
    subdir: str | None = None

    @property
    def pinned(self) -> bool:
        return self.rev is not None and _SHA.match(self.rev) is not None

    def __str__(self) -> str:
        text = f"git+{mask_url(self.url)}"
        if self.rev:
            text += f"@{self.rev}"
        return text + (f"#{self.subdir}" if self.subdir else "")


@dataclass(frozen=True)
class CheckedOut:
    """A source resolved to a commit and present on disk."""

    ref: GitRecipeRef
    commit: str
    tree: Path
    from_cache: bool
    warnings: tuple[str, ...] = ()


def is_git_source(text: str) -> bool:
    return text.startswith("git+")


def parse_git_source(text: str) -> GitRecipeRef:
    """Split `git+URL[@REV][#SUBDIR]`; the rev is the last `@` in the URL's path part."""
    if not is_git_source(text):
        raise RecipeError(f"not a git recipe source: {text!r}", hint="write git+https://host/repo.git[@REV][#SUBDIR]")
    rest, _, subdir = text[len("git+"):].partition("#")
    parts = urlsplit(rest)
    if parts.scheme not in SCHEMES:
        raise RecipeError(f"unsupported git URL scheme in {text!r}",
                          hint=f"use one of: {', '.join('git+' + s + '://' for s in SCHEMES)}")
    path, rev = parts.path, None
    if "@" in path:
        path, rev = path.rsplit("@", 1)
        if not rev or rev.startswith("-") or any(c.isspace() for c in rev):
            raise RecipeError(f"invalid revision {rev!r} in {text!r}")
    if not path.strip("/"):
        raise RecipeError(f"no repository path in {text!r}")
    url = parts._replace(path=path).geturl()
    if parts.scheme == "file" and not url.startswith("file:///"):
        url = "file://" + path  # urlsplit drops the empty authority of file:///…
    return GitRecipeRef(url=url, rev=rev, subdir=_clean_subdir(subdir, text) if subdir else None)


def _clean_subdir(subdir: str, text: str) -> str:
    pure = PurePosixPath(subdir)
    if pure.is_absolute() or ".." in pure.parts:
        raise RecipeError(f"recipe subdir {subdir!r} in {text!r} must be a relative path inside the repository")
    return pure.as_posix()


def public_url(url: str) -> str:
    """The URL without credentials (a token in `https://TOKEN@host/…` is never recorded)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "buildsys" / "recipes"


class RecipeCache:
    """Clones keyed by (url, commit), each an exported tree (no .git) under ``root``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()

    def _repo_dir(self, url: str) -> Path:
        return self.root / hashlib.sha256(public_url(url).encode()).hexdigest()[:20]

    def cached(self, ref: GitRecipeRef) -> CheckedOut | None:
        """The cached tree for a rev that names a commit (full sha, or a unique prefix); no network."""
        if ref.rev is None or not _SHA_PREFIX.match(ref.rev):
            return None
        repo_dir = self._repo_dir(ref.url)
        if not repo_dir.is_dir():
            return None
        matches = [d for d in repo_dir.iterdir() if d.is_dir() and d.name.startswith(ref.rev)
                   and _SHA.match(d.name)]
        if len(matches) != 1:
            return None
        return CheckedOut(ref, matches[0].name, matches[0], from_cache=True)

    def checkout(self, ref: GitRecipeRef) -> CheckedOut:
        """The tree for ``ref``: from the cache when pinned and present, else fetched once."""
        hit = self.cached(ref)
        if hit is not None:
            return hit
        from filelock import FileLock  # only a fetch needs it (and it is slow to import)

        repo_dir = self._repo_dir(ref.url)
        repo_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(repo_dir) + ".lock", timeout=GIT_TIMEOUT * 2):
            hit = self.cached(ref)  # another process may have fetched it while we waited
            if hit is not None:
                return hit
            commit, tree = self._fetch(ref, repo_dir)
        warnings: tuple[str, ...] = ()
        if not ref.pinned:
            if ref.rev and _SHA_PREFIX.match(ref.rev):
                what = f"{ref.rev!r} is an abbreviated commit (it could become ambiguous)"
            else:
                what = f"{ref.rev!r} is a branch or tag" if ref.rev else "no revision was given"
            pinned = GitRecipeRef(public_url(ref.url), commit, ref.subdir)
            warnings = (f"{what}, so this recipe can change under you; resolved to {commit[:12]}. "
                        f"Pin it for reproducible inits: --recipe {pinned}",)
        return CheckedOut(ref, commit, tree, from_cache=False, warnings=warnings)

    def _fetch(self, ref: GitRecipeRef, repo_dir: Path) -> tuple[str, Path]:
        url, auth = credential_env(ref.url)
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=repo_dir) as tmp:
            work = Path(tmp) / "tree"
            _git(["init", "-q", str(work)], ref)
            wanted = ref.rev or "HEAD"
            if _run_git(["-C", str(work), "fetch", "-q", "--depth", "1", url, wanted], auth).returncode != 0:
                # Older servers refuse a sha they do not advertise: fetch everything, then look.
                _git(["-C", str(work), "fetch", "-q", url, "+refs/*:refs/remotes/origin/*"], ref, auth)
                commit = _git(["-C", str(work), "rev-parse", "--verify", "-q", f"{wanted}^{{commit}}"], ref)
            else:
                commit = _git(["-C", str(work), "rev-parse", "FETCH_HEAD^{commit}"], ref)
            _git(["-C", str(work), "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit], ref)
            shutil.rmtree(work / ".git")
            final = repo_dir / commit
            if not final.exists():
                os.replace(work, final)
            return commit, final


def credential_env(url: str) -> tuple[str, dict[str, str]]:
    """(URL without userinfo, environment that gives git the credentials).

    The userinfo never reaches git's command line (``ps`` shows it to every user): it travels as an
    HTTP Basic header in environment-only configuration, scoped to the URL's origin, and redirects
    are refused while it is set (git would send the header to wherever it was redirected).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, {}
    userinfo = unquote(parts.netloc.rsplit("@", 1)[0])
    if ":" not in userinfo:
        userinfo += ":"
    clean = public_url(url)
    origin = f"{parts.scheme}://{urlsplit(clean).netloc}/"
    header = "Authorization: Basic " + base64.b64encode(userinfo.encode()).decode()
    base = int(os.environ.get("GIT_CONFIG_COUNT", "0") or "0")
    env = {
        "GIT_CONFIG_COUNT": str(base + 2),
        f"GIT_CONFIG_KEY_{base}": f"http.{origin}.extraHeader",
        f"GIT_CONFIG_VALUE_{base}": header,
        f"GIT_CONFIG_KEY_{base + 1}": "http.followRedirects",
        f"GIT_CONFIG_VALUE_{base + 1}": "false",
    }
    return clean, env


def _run_git(args: list[str], auth: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(auth or {})}
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise RecipeError("git is not installed", hint="install git to use recipes from git") from None
    except subprocess.TimeoutExpired:
        raise RecipeError(f"git {args[-2] if len(args) > 1 else ''} timed out after {GIT_TIMEOUT}s") from None


def _git(args: list[str], ref: GitRecipeRef, auth: dict[str, str] | None = None) -> str:
    result = _run_git(args, auth)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()
        last = mask_url_text(detail[-1]) if detail else "git failed"
        redirected = auth and ("redirect" in result.stderr.lower() or " 30" in last)
        raise RecipeError(
            f"could not fetch recipe {ref}: {last}",
            hint="the server redirected: give the final URL (credentials never follow a redirect)"
            if redirected
            else "check the URL and the revision (a branch, a tag or a commit sha)",
        )
    return result.stdout.strip()


def resolve_recipe(spec: str, *, cache: RecipeCache | None = None) -> tuple[Recipe, tuple[str, ...]]:
    """A built-in name, a git source or a local folder → the recipe, plus warnings for the user."""
    from buildsys.recipes.manifest import builtin_recipe

    if not is_git_source(spec):
        path = Path(spec)
        if ("/" in spec or spec.startswith(".")) and (path / MANIFEST).is_file():
            return load_recipe(path.resolve(), RecipeSource("path", str(path.resolve()))), ()
        return builtin_recipe(spec), ()
    ref = parse_git_source(spec)
    out = (cache or RecipeCache()).checkout(ref)
    source = RecipeSource("git", public_url(ref.url), ref.rev, out.commit, ref.subdir)
    return recipe_in_tree(out.tree, source), out.warnings


def recipe_in_tree(tree: Path, source: RecipeSource) -> Recipe:
    """The recipe a source names: its subdir, the tree itself, or the tree's only recipe."""
    if source.subdir:
        directory = tree / source.subdir
        if not directory.resolve().is_relative_to(tree.resolve()) or not (directory / MANIFEST).is_file():
            raise RecipeError(f"no recipe at {source.subdir!r} in {source.location}",
                              hint=_listing(tree, source))
        return load_recipe(directory, source)
    if (tree / MANIFEST).is_file():
        return load_recipe(tree, source)
    found = find_recipes(tree, source)
    if len(found) == 1:
        return found[0]
    if not found:
        raise RecipeError(f"no recipe found in {source.location} (no {MANIFEST} anywhere)")
    raise RecipeError(f"{source.location} holds {len(found)} recipes; choose one with #SUBDIR",
                      hint=_listing(tree, source))


def _listing(tree: Path, source: RecipeSource) -> str:
    subs = [r.source.subdir or "." for r in find_recipes(tree, source)]
    return "recipes in this repository: " + (", ".join(subs) if subs else "none")
