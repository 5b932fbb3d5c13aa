"""Fake installed distributions for the plugin tests: a dist-info folder (METADATA, entry_points.txt)
and its modules in a directory that a test puts first on ``sys.path`` (``plugin_site``) or on a
subprocess's ``PYTHONPATH``, as importlib.metadata and buildsys's own entry-point reader see an
installed package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def installed_distribution(site: Path, name: str, entry_points: str, modules: Mapping[str, str] | None = None) -> Path:
    """Install distribution `name` 1.0 into `site`: its entry_points.txt holds `entry_points` as
    given (with its `[group]` headers), and each of `modules` is written as `site/<key>.py`.
    Returns the dist-info folder."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, text in (modules or {}).items():
        (site / f"{module}.py").write_text(text)
    return info


def forget_plugins() -> None:
    """Drop every cached answer about installed plugins: entry points, step and pool-type lookups."""
    from buildsys import infra, pools, registry

    registry.refresh()  # plugins.refresh() too
    infra._registered.cache_clear()
    infra.pool_type.cache_clear()
    pools._load_default.cache_clear()

