"""An example buildsys step plugin: ``render_template`` writes a file from a ``$placeholder`` template.

It shows the whole step API: the ``@step`` decorator (name, aliases, outputs, example), inputs as
keyword arguments after the context, outputs as a dict, a ``files`` hook (what the step reads, so
the cache reruns it when the template changes), a ``check`` hook (a cached result is trusted only
while the rendered file is still there, unchanged) and ``StepError`` for mistakes a user can fix.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Mapping
from string import Template
from typing import Any

from buildsys.step import Context, StepError, step

__all__ = ["render_template"]

EXAMPLE = """\
build:
  - render_template:
      id: settings
      template: templates/settings.toml.tmpl
      output: build/settings.toml
      values:
        region: eu-west-1
"""


@step(
    "render_template",
    aliases=("buildsys_render_template.render_template",),
    version="1",
    outputs=("path", "sha256"),
    example=EXAMPLE,
)
def render_template(
    ctx: Context, template: str, output: str, values: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Render a template (``$name`` / ``${name}`` placeholders) into a file."""
    source = ctx.path(template)
    if not source.is_file():
        raise StepError(f"template {template!r} not found", hint=f"looked for {source}")
    try:
        text = Template(source.read_text()).substitute({k: str(v) for k, v in (values or {}).items()})
    except KeyError as exc:
        raise StepError(
            f"template {template!r} uses ${exc.args[0]}, which `values` does not set",
            hint=f"add {exc.args[0]}: ... under values (or write $$ for a literal $)",
        ) from None
    except ValueError as exc:
        raise StepError(f"template {template!r} has an invalid placeholder: {exc}") from None
    dest = ctx.path(output)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    ctx.log(f"rendered {template} -> {output}")
    return {"path": output, "sha256": _sha256(text.encode())}


@render_template.files
def _reads(inputs: Mapping[str, Any], ctx: Context) -> list[str]:
    return [glob.escape(str(inputs["template"]))]


@render_template.check
def _still_rendered(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    dest = ctx.path(str(outputs["path"]))
    return dest.is_file() and _sha256(dest.read_bytes()) == outputs["sha256"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
