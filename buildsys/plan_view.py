"""Terraform-style text for a plan: `+ create`, `~ update` (field: old → new), `- delete`, a summary.

Secrets are shown masked: a block or environment placeholder is displayed as `(sensitive: NAME)`
and a literal value under a key that looks secret (token, password, …) as `(sensitive value)`.
Plans never hold resolved secrets in the first place; this keeps even references out of CI logs'
eye-catching spots while saying which reference is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from buildsys.plan import ABSENT, EMPTY_DEFAULTS, FieldChange, Plan, ResourceChange
from buildsys.printable import printable
from buildsys.sensitive import is_secret_name, mask_url_text
from buildsys.templating import PLACEHOLDER, UNKNOWN, classify

MAX_WIDTH = 160
_SYMBOL = {"create": "+", "update": "~", "delete": "-"}
_COLOUR = {"create": "green", "update": "yellow", "delete": "red"}

Styler = Callable[[str, str], str]


def render_plan(plan: Plan, *, color: bool = False, full: bool = False) -> str:
    """The whole plan as text (ends with the summary line, or "No changes."); `full`: every value
    whole (long ones are otherwise cut at MAX_WIDTH characters, a pool's template summarised).
    Names and values are shown printable (control and bidi characters as escapes) before any
    colour is added."""
    style = _styler(color)
    lines: list[str] = []
    source = plan.source
    if source.get("commit"):
        at = (
            f"{source.get('ref')} ({str(source['commit'])[:12]})"
            if source.get("ref")
            else str(source["commit"])[:12]
        )
        lines.append(printable(
            f"Planned from {source.get('file')} at {at}"
            + (" with uncommitted changes" if source.get("dirty") else "")
        ))
    for w in plan.warnings:  # each as `validate` prints it, `warning:` after the location if any
        before, said, after = (printable(part) for part in w.partition("warning: "))
        lines.append(before + style(said, "yellow") + after if said else before)
    if source.get("dirty") and not source.get("commit"):
        lines.append(style("note: ", "yellow") + "planned from a working tree that has no commit yet")
    if lines:
        lines.append("")
    for change in plan.changes:
        lines.extend(render_change(masked_change(change, plan.sensitive), style, full=full))
    if plan.orphans:
        lines.append(
            style("note: ", "yellow")
            + printable(f"{len(plan.orphans)} resource(s) owned by {plan.owner!r} are no longer declared ")
            + "(plan with --prune to delete them):"
        )
        lines.extend(f"    {printable(o, one_line=True)}" for o in plan.orphans)
        lines.append("")
    if not plan.has_changes:
        lines.append(f"No changes. The store matches the project (serial {plan.serial}).")
    else:
        s = plan.summary
        lines.append(f"Plan: {s['add']} to add, {s['change']} to change, {s['destroy']} to destroy.")
    return "\n".join(lines) + "\n"


def render_change(change: ResourceChange, style: Styler, *, full: bool = False) -> list[str]:
    head = f"{_SYMBOL[change.action]} {change.action} {change.kind} {printable(change.name, one_line=True)}"
    if change.previous_owner:
        head += printable(f" (owner: {change.previous_owner} → {change.owner})", one_line=True)
    elif change.action == "update" and not change.fields:  # nothing else differs: an unowned one taken over
        head += printable(f" (owner: none → {change.owner})", one_line=True)
    lines = [style(head, _COLOUR[change.action])]
    # A variable's value is secret when its name is (db_password, api_token).
    under = f"{change.name}." if change.kind == "variable" else ""
    if change.action == "create":
        for f in change.fields:
            shown = template_summary(change) if f.path == "base_job_template" and not full else None
            lines.append(printable(f"    {f.path}: {shown or show(f.new, under + f.path, full=full)}", one_line=True))
    elif change.action == "update":
        lines += [printable(f"    {field_line(f, under, full=full)}", one_line=True) for f in change.fields]
    lines.append("")
    return lines


def template_summary(change: ResourceChange) -> str | None:
    """A new pool's template said as "the type's default" plus what differs, not 1,500 characters."""
    from buildsys.errors import BuildsysError
    from buildsys.plan import diff
    from buildsys.pools import default_job_template

    spec = change.spec or {}
    try:
        default = default_job_template(str(spec.get("type")))
    except BuildsysError:
        return None
    changed = [
        f.path.removeprefix("base_job_template.")
        for f in diff("base_job_template", default, spec.get("base_job_template"))
    ]
    if not changed:
        return f"(the {spec.get('type')} default)"
    if len(changed) > 8:
        return None
    return f"(the {spec.get('type')} default, changed: {', '.join(changed)})"


def field_line(f: FieldChange, under: str = "", *, full: bool = False) -> str:
    key = under + f.path
    if f.old is ABSENT:
        return f"{f.path}: (absent) → {show(f.new, key, full=full)}"
    if f.new is ABSENT:
        return f"{f.path}: {show(f.old, key, full=full)} → (removed)"
    old = show(_shown_default(f), key, full=full)
    return f"{f.path}: {old} → {show(f.new, key, full=full)}"


def _shown_default(f: FieldChange) -> Any:
    return EMPTY_DEFAULTS.get(f.path) if f.old is None else f.old


def show(value: Any, path: str = "", *, full: bool = False) -> str:
    """One value, compact JSON, masked and (unless `full`) shortened."""
    if value is UNKNOWN:
        return str(UNKNOWN)
    text = json.dumps(_masked(value, path), ensure_ascii=False, default=str)
    text = text.replace(json.dumps(_UNKNOWN_MARK), str(UNKNOWN))
    text = re.sub(r'"\(sensitive([^"]*)\)"', r"(sensitive\1)", text)
    if len(text) > MAX_WIDTH and not full:
        text = text[: MAX_WIDTH - 1] + f"… ({len(text)} chars; see --full or --json)"
    return text


_UNKNOWN_MARK = "\x00unknown\x00"


def _masked(value: Any, path: str) -> Any:
    if value is UNKNOWN:
        return _UNKNOWN_MARK
    if isinstance(value, dict):
        return {k: _masked(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, path) for v in value]
    if isinstance(value, str):
        return _mask_string(value, path)
    return value


def _mask_string(text: str, path: str) -> str:
    whole = PLACEHOLDER.fullmatch(text)
    if whole is not None and classify(whole.group(1)).kind in ("block", "env"):
        return f"(sensitive: {whole.group(1)})"
    masked = PLACEHOLDER.sub(
        lambda m: (
            f"(sensitive: {m.group(1)})" if classify(m.group(1)).kind in ("block", "env") else m.group(0)
        ),
        text,
    )
    already = "(sensitive: " in text  # named by masked_change: the name says more than "value"
    if masked == text and "{{" not in text and text and not already and any(is_secret_name(k) for k in path.split(".")):
        return "(sensitive value)"
    return mask_url_text(masked)


def masked_change(change: ResourceChange, sensitive: Mapping[str, str]) -> ResourceChange:
    """The change with every value that came from a secret-looking environment variable shown as
    `(sensitive: $NAME)` (the plan file still holds it: apply needs it)."""
    if not sensitive:
        return change
    fields = tuple(FieldChange(f.path, _hide(f.old, sensitive), _hide(f.new, sensitive)) for f in change.fields)
    return ResourceChange(change.action, change.kind, change.name, change.spec, change.before, fields, change.owner,
                          change.source, change.previous_owner)


def _hide(value: Any, sensitive: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for secret in sorted(sensitive, key=len, reverse=True):
            if secret and secret in value:
                value = value.replace(secret, f"(sensitive: {sensitive[secret]})")
        return value
    if isinstance(value, dict):
        return {k: _hide(v, sensitive) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v, sensitive) for v in value]
    return value


def _styler(color: bool) -> Styler:
    if not color:
        return lambda text, _colour: text
    import click

    return lambda text, colour: click.style(text, fg=colour)
