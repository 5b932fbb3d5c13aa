"""Entry points without importlib.metadata when only buildsys's own are installed, and the full
scan (the same reports as always) as soon as anything else could register a name."""

from __future__ import annotations

import shutil
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

from buildsys import infra, plugins, registry
from buildsys.errors import StepError
from tests.services.distributions import forget_plugins, installed_distribution

GROUPS = ("buildsys.steps", "buildsys.pool_types")


def _full(group: str) -> list[tuple[str, str, str]]:
    return sorted((e.name, e.value, e.dist.name) for e in plugins._installed().select(group=group))


def _seen(group: str) -> list[tuple[str, str, str]]:
    return sorted((e.name, e.value, e.dist.name) for e in plugins.group(group))


def test_buildsys_alone_is_read_from_its_own_file_and_equals_the_full_scan() -> None:
    forget_plugins()
    assert plugins._own_only() is not None  # this environment: no other package names buildsys
    for group in GROUPS:
        assert _seen(group) == _full(group) != []
    own = {(e.name, e.value) for e in plugins.group("buildsys.pool_types")}
    assert own == {(ep.name, ep.value) for ep in distribution("buildsys").entry_points.select(group="buildsys.pool_types")}
    assert plugins.group("buildsys.pool_types")[0].load() is infra.pool_type(plugins.group("buildsys.pool_types")[0].name)
    assert registry.resolve("run_shell_script").name == "run_shell_script"


def test_a_plugin_that_shadows_a_built_in_name_is_still_reported(plugin_site: Path) -> None:
    installed_distribution(plugin_site, "shadow", "[buildsys.steps]\nrun_shell_script = shadow:step\n"
                          "[buildsys.pool_types]\nprocess = shadow:Pool\n")
    assert plugins._own_only() is None
    for group in GROUPS:
        assert _seen(group) == _full(group)
    with pytest.raises(StepError) as info:
        registry.resolve("run_shell_script")
    assert info.value.message == (  # the first on sys.path first, as importlib.metadata lists them
        "step name 'run_shell_script' is claimed by more than one plugin: "
        "shadow (shadow:step) and buildsys (buildsys.steps.shell:run_shell_script)"
    )
    with pytest.raises(infra.InfrastructureError, match="work pool type 'process' is registered twice"):
        infra.pool_type("process")


def test_a_broken_plugin_is_still_reported(plugin_site: Path) -> None:
    installed_distribution(plugin_site, "broken", "[buildsys.steps]\nacme_step = broken:step\n",
                           {"broken": "raise ImportError('no acme here')\n"})
    with pytest.raises(StepError, match=r"plugin broken failed to import step 'acme_step' \(broken:step\): "
                                        r"ImportError: no acme here"):
        registry.resolve("acme_step")
    assert registry.resolve("run_shell_script").name == "run_shell_script"  # others unaffected


def test_any_other_mention_of_buildsys_takes_the_full_scan(plugin_site: Path) -> None:
    installed_distribution(plugin_site, "tool", "[console_scripts]\ntool = buildsys_tool:main\n")
    assert plugins._own_only() is None
    for group in GROUPS:
        assert _seen(group) == _full(group)


def test_an_unrelated_distribution_keeps_the_own_file(plugin_site: Path) -> None:
    installed_distribution(plugin_site, "other", "[console_scripts]\nother = other:main\n")
    assert plugins._own_only() is not None
    for group in GROUPS:
        assert _seen(group) == _full(group)


def test_a_broken_install_reports_what_the_full_scan_reports(plugin_site: Path) -> None:
    """A second buildsys distribution first on the path, without entry points (an install that did
    not write them): importlib.metadata takes the first, so no pool type is registered; said so."""
    real = Path(str(distribution("buildsys")._path))  # type: ignore[attr-defined]
    copy = plugin_site / real.name
    shutil.copytree(real, copy)
    (copy / "entry_points.txt").unlink()
    assert plugins._own_only() is None
    assert _seen("buildsys.pool_types") == _full("buildsys.pool_types") == []
    problem = infra.unknown_pool_type("process")
    assert problem is not None and "no pool type is registered" in problem[1]


def test_a_zip_on_the_path_takes_the_full_scan(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = plugin_site / "lib.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
    monkeypatch.setattr(sys, "path", [str(archive), *sys.path])
    plugins.refresh()
    assert plugins._own_only() is None


def test_the_parser_follows_importlib_metadata() -> None:
    from importlib.metadata import EntryPoints

    text = "# a comment\n\n[g1]\n a = m:f \n# x = y\nb=m.n:C.d [extra]\n[ g2 ]\nc = m\n"
    ours = [(e.name, e.value, e.group) for e in plugins._parse(text)]
    theirs = [(e.name, e.value, e.group) for e in EntryPoints._from_text(text)]  # type: ignore[attr-defined]
    assert ours == theirs == [("a", "m:f", "g1"), ("b", "m.n:C.d [extra]", "g1"), ("c", "m", " g2 ")]
