"""The plugin's own tests: run them with the plugin installed (`pip install -e .[test] && pytest`)."""

from __future__ import annotations

import hashlib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from buildsys_render_template import render_template

from buildsys.step import Context, StepDef, StepError


def make_ctx(tmp_path: Path) -> tuple[Context, list[str]]:
    lines: list[str] = []
    return Context(root=tmp_path, cwd=tmp_path, emit=lines.append), lines


def test_renders_the_template(tmp_path: Path) -> None:
    (tmp_path / "t.tmpl").write_text("region = \"$region\"\ncost = $$5\n")
    ctx, lines = make_ctx(tmp_path)

    out = render_template(ctx, template="t.tmpl", output="out/settings.toml", values={"region": "eu-west-1"})

    text = 'region = "eu-west-1"\ncost = $5\n'
    assert (tmp_path / "out" / "settings.toml").read_text() == text
    assert out == {"path": "out/settings.toml", "sha256": hashlib.sha256(text.encode()).hexdigest()}
    assert lines == ["rendered t.tmpl -> out/settings.toml"]


def test_a_missing_value_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.tmpl").write_text("x = $missing\n")
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(StepError) as err:
        render_template(ctx, template="t.tmpl", output="o.txt")
    assert err.value.message == "template 't.tmpl' uses $missing, which `values` does not set"
    assert err.value.hint == "add missing: ... under values (or write $$ for a literal $)"


def test_hooks_declare_the_template_and_check_the_output(tmp_path: Path) -> None:
    (tmp_path / "t[1].tmpl").write_text("v=$v\n")
    ctx, _ = make_ctx(tmp_path)
    inputs = {"template": "t[1].tmpl", "output": "o.txt", "values": {"v": 1}}
    assert render_template.files_hook is not None and render_template.check_hook is not None
    assert render_template.files_hook(inputs, ctx) == ["t[[]1].tmpl"]
    out = render_template(ctx, **inputs)
    assert render_template.check_hook(out, inputs, ctx) is True
    (tmp_path / "o.txt").write_text("edited by hand\n")
    assert render_template.check_hook(out, inputs, ctx) is False


def test_the_entry_point_names_the_step() -> None:
    found = {ep.name: ep for ep in entry_points(group="buildsys.steps") if ep.value.startswith("buildsys_render")}
    assert sorted(found) == ["buildsys_render_template.render_template", "render_template"]
    loaded = found["render_template"].load()
    assert isinstance(loaded, StepDef)
    assert loaded.name == "render_template"
