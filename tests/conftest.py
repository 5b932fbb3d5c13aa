"""Shared test setup: every test runs isolated (temp cwd, temp home and cache, fixed git identity)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hygiene import Snapshot
from tests.services.distributions import forget_plugins
from tests.services.require import unavailable

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "prefect-yaml"

pytest_plugins = ["tests.services.plugin"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test is integration unless its module says unit: `-m unit` is the fast core, `-m integration`
    the rest. A unit test that asks for a service fixture is a collection error, so the core stays fast."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)
            continue
        defs = getattr(item, "_fixtureinfo", None)
        chosen = {name: found[-1] for name, found in (defs.name2fixturedefs.items() if defs else ()) if found}
        used = sorted(name for name, d in chosen.items() if d.func.__module__.startswith("tests.services."))
        if used:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses service fixtures: {', '.join(used)}")


@pytest.fixture(autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    """Fail a test that leaves the environment, cwd, signal dispositions or mask, umask, a patched
    module attribute or a running child process behind (see tests/hygiene.py), and undo it, so the
    suite passes in any order. Set up before and torn down after every other function fixture."""
    before = Snapshot.take()
    yield
    before.put_back_imports()
    leaks = before.leaks()
    if leaks:
        pytest.fail("the test left state behind for later tests:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture(autouse=True)
def isolated(
    leaves_nothing_behind: None, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Temp cwd, temp HOME and XDG dirs, fixed git identity, NO_COLOR; the real home is off limits."""
    base = tmp_path_factory.mktemp("iso")
    home = base / "home"
    work = base / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "buildsys tests")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "tests@buildsys.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "buildsys tests")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "tests@buildsys.invalid")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    monkeypatch.delenv("BUILDSYS_STATE", raising=False)
    monkeypatch.delenv("BUILDSYS_TOKEN", raising=False)
    monkeypatch.chdir(work)
    yield work


@pytest.fixture
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        unavailable(f"corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory first on sys.path where a test installs distributions
    (`tests.services.distributions.installed_distribution`); the plugin caches are forgotten before
    and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_plugins()
    yield tmp_path
    monkeypatch.undo()
    forget_plugins()
