"""Prefect-compatible `{{ … }}` placeholders (a regex engine, not Jinja), with stricter failure modes.

Kinds: step outputs (`{{ step_id.key }}` or flat `{{ key }}`), environment (`{{ $NAME }}`),
variables (`{{ prefect.variables.name }}`), blocks (`{{ prefect.blocks.type.name[.path] }}`) and
run-time context (`{{ ctx.* }}`, `{{ flow_run.* }}`), which always survives to run time.
A whole-string placeholder keeps the value's type (env values are always strings); embedded ones
become `str(value)`. Standard library only: the in-run runtime uses this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from buildsys.errors import Location, TemplateError
from buildsys.records import Record
from buildsys.sensitive import is_secret_name

PLACEHOLDER = re.compile(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}")
RUNTIME_PREFIXES = ("ctx.", "flow_run.", "flow.", "deployment.")
_INDEX = re.compile(r"\[(\d+)\]")


class _Unknown:
    """A value that depends on a build that has not run yet."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "(known after build)"

    __str__ = __repr__


UNKNOWN: Any = _Unknown()


_set = object.__setattr__


class Placeholder(Record):
    __slots__ = __match_args__ = ("text", "name", "kind", "step_id", "keypath")
    text: str  # the whole `{{ … }}`
    name: str
    kind: str  # output | env | variable | block | ctx
    step_id: str | None  # for outputs written as step_id.key
    keypath: tuple[str | int, ...]

    def __init__(
        self,
        text: str,
        name: str,
        kind: str,
        step_id: str | None = None,
        keypath: tuple[str | int, ...] = (),
    ) -> None:
        _set(self, "text", text)
        _set(self, "name", name)
        _set(self, "kind", kind)
        _set(self, "step_id", step_id)
        _set(self, "keypath", keypath)


@lru_cache(maxsize=4096)
def classify(name: str) -> Placeholder:
    """What a placeholder names. Placeholders are immutable, so a name written 10,000 times (one
    `{{ $TOKEN }}` per deployment) is classified once."""
    if name.startswith("$"):
        return Placeholder(f"{{{{ {name} }}}}", name, "env", keypath=(name[1:],))
    if name.startswith("prefect.variables."):
        return Placeholder(f"{{{{ {name} }}}}", name, "variable", keypath=_keypath(name[18:]))
    if name.startswith("prefect.blocks."):
        return Placeholder(f"{{{{ {name} }}}}", name, "block", keypath=_keypath(name[15:]))
    if name.startswith(RUNTIME_PREFIXES):
        return Placeholder(f"{{{{ {name} }}}}", name, "ctx")
    path = _keypath(name)
    step_id = str(path[0]) if len(path) > 1 else None
    return Placeholder(f"{{{{ {name} }}}}", name, "output", step_id=step_id, keypath=path)


def _keypath(name: str) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    for segment in _INDEX.sub(r".\1", name).split("."):
        if segment == "":
            continue
        parts.append(int(segment) if segment.isdigit() else segment)
    return tuple(parts)


def placeholders(value: Any) -> list[Placeholder]:
    """Every placeholder in a value (strings inside dicts and lists; keys are never templated)."""
    if isinstance(value, str):
        texts = [value] if "{{" in value else []
    else:
        texts = []
        templated(value, texts)
    return [ph for text in texts for ph in _in_text(text)]


# whether `{{ $NAME }}` resolves a secret (masked, warned about): every deployment asks of the same few names
secret_env_name = lru_cache(maxsize=1024)(is_secret_name)


@lru_cache(maxsize=4096)
def _in_text(text: str) -> tuple[Placeholder, ...]:
    """The placeholders of one templated string (the same texts recur in every deployment)."""
    return tuple(classify(m.group(1)) for m in PLACEHOLDER.finditer(text))


# the types of value a walk for placeholders need not enter or read (buildsys.validation too)
LEAVES = frozenset({int, float, bool, type(None)})


def templated(value: Any, out: list[str]) -> None:
    """Append to `out` every string inside `value` (as `strings` walks it) that holds `{{`, in
    order. One call per container, not a generator per value: plans ask this of every field of
    every deployment, and almost none is templated."""
    kind = type(value)
    if kind is dict:  # the exact types first: an ABC check per container costs more than its walk
        items: Iterable[Any] = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        if isinstance(value, str) and "{{" in value:
            out.append(value)
        return
    for item in items:
        kind = type(item)
        if kind is str:
            if "{{" in item:
                out.append(item)
        elif kind is dict or kind is list or kind is tuple:
            templated(item, out)
        elif kind not in LEAVES:
            templated(item, out)  # str, Mapping and sequence subclasses: the checks above, in full


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value: the value itself, or those inside its mappings' values,
    lists and tuples (keys are not values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


BlockResolver = Callable[[str, str], Any]


class Scope:
    """What placeholders resolve against. A `None` source means "not available here": its
    placeholders are kept as written (e.g. env and variables when computing cache keys). A plain
    class (never compared nor shown): a dataclass's generated methods cost every process ~0.7 ms."""

    __slots__ = ("blocks", "env", "ids", "outputs", "pending", "secrets", "variables")

    def __init__(
        self,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
        ids: frozenset[str] | None = None,
        env: Mapping[str, str] | None = None,
        variables: Mapping[str, Any] | None = None,
        blocks: BlockResolver | None = None,
        pending: frozenset[str] = frozenset(),
        secrets: set[str] | None = None,
    ) -> None:
        self.outputs: Mapping[str, Mapping[str, Any]] = {} if outputs is None else outputs  # by step id / label
        self.ids = ids  # the real step ids (labels of anonymous steps excluded)
        self.env = env
        self.variables = variables
        self.blocks = blocks
        self.pending = pending  # step ids whose outputs are not known yet
        self.secrets: set[str] = set() if secrets is None else secrets  # filled with every env/block/variable value used

    def step_ids(self) -> frozenset[str]:
        return self.ids if self.ids is not None else frozenset(self.outputs)


_MISSING = object()
_DROP = object()


def render(
    value: Any,
    scope: Scope,
    *,
    missing: str = "error",
    location: Location | None = None,
    path: str | None = None,
    json_shaped: Callable[[Any], Any] | None = None,
) -> Any:
    """Render every placeholder in `value`.

    missing: "error" (TemplateError naming the place), "keep" (leave the placeholder as written),
    "unknown" (UNKNOWN for values of steps that have not run), "blank" (Prefect's default: a missing
    whole-string value drops its key or list item, an embedded one becomes "").
    json_shaped: `buildsys.desired.canonical`, to get `json_shaped(render(value, ...))` in the same
    walk: keys made text, and the function applied to the leaves that are neither text nor numbers
    (dates) and to the values placeholders resolve to.
    """
    renderer = _Renderer(scope, missing, location, path) if json_shaped is None else JsonRenderer(
        scope, missing, location, path, json_shaped
    )
    result = renderer.value(value)
    return None if result is _DROP else result


class _Renderer:
    def __init__(self, scope: Scope, missing: str, location: Location | None, path: str | None) -> None:
        self.scope = scope
        self.missing = missing
        self.location = location
        self.path = path

    def value(self, value: Any) -> Any:
        kind = type(value)
        if kind in LEAVES:  # most values of a project: no ABC checks for them
            return value
        if kind is str or isinstance(value, str):
            return self.string(value) if "{{" in value else value
        if kind is dict or isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                r = self.value(v)
                if r is not _DROP:
                    out[k] = r
            return out
        if isinstance(value, list | tuple):
            items = []
            for v in value:
                r = self.value(v)
                if r is not _DROP:
                    items.append(r)
            return items
        return value

    def place(self) -> str | None:
        """The document path messages name."""
        return self.path

    def string(self, text: str) -> Any:
        whole = PLACEHOLDER.fullmatch(text)
        if whole is not None:
            ph = classify(whole.group(1))
            resolved = self.lookup(ph)
            if resolved is _MISSING:
                return self.on_missing(ph, text, whole_string=True)
            return str(resolved) if ph.kind == "env" else resolved
        return PLACEHOLDER.sub(self.embedded, text)

    def embedded(self, match: re.Match[str]) -> str:
        ph = classify(match.group(1))
        resolved = self.lookup(ph)
        if resolved is _MISSING:
            kept = self.on_missing(ph, match.group(0), whole_string=False)
            return "" if kept is _DROP else str(kept)
        if isinstance(resolved, Mapping | list) and ph.kind == "block":
            raise TemplateError(
                f"block {ph.name!r} is a structure and cannot be embedded in a string",
                location=self.location,
                path=self.place(),
            )
        return str(resolved)

    def lookup(self, ph: Placeholder) -> Any:
        s = self.scope
        if ph.kind == "ctx":
            return _MISSING
        if ph.kind == "env":
            if s.env is None:
                return _MISSING
            name = str(ph.keypath[0])
            val = s.env.get(name)
            if val is not None:
                if secret_env_name(name):
                    s.secrets.add(val)
                return val
            return _MISSING
        if ph.kind == "variable":
            if s.variables is None or not ph.keypath:
                return _MISSING
            return _dig(s.variables, ph.keypath)
        if ph.kind == "block":
            if s.blocks is None or len(ph.keypath) < 2:
                return _MISSING
            data = s.blocks(str(ph.keypath[0]), str(ph.keypath[1]))
            if data is None:
                return _MISSING
            rest = ph.keypath[2:]
            if isinstance(data, Mapping) and set(data) == {"value"} and (not rest or rest[0] != "value"):
                data = data["value"]
            val = _dig(data, rest) if rest else data
            if val is not _MISSING:
                s.secrets.update(strings(val))
            return val
        return self.output(ph)

    def output(self, ph: Placeholder) -> Any:
        s = self.scope
        if ph.step_id is not None and ph.step_id in s.step_ids():
            if ph.step_id in s.pending:
                return _MISSING
            return _dig(s.outputs.get(ph.step_id, {}), ph.keypath[1:])
        head = ph.keypath[0] if ph.keypath else None
        producers = [(sid, out) for sid, out in s.outputs.items() if isinstance(out, Mapping) and head in out]
        if not producers:
            return _MISSING
        values = [_dig(out, ph.keypath) for _, out in producers]
        if len(producers) > 1 and any(v != values[-1] for v in values):
            names = ", ".join(sid for sid, _ in producers)
            raise TemplateError(
                f"{ph.text} is ambiguous: steps {names} all output {head!r}",
                location=self.location,
                path=self.place(),
                hint=f"name the step: {{{{ {producers[-1][0]}.{ph.name} }}}}",
            )
        return values[-1]

    def on_missing(self, ph: Placeholder, text: str, *, whole_string: bool) -> Any:
        if ph.kind == "ctx" or self.missing == "keep":
            return text
        s = self.scope
        if ph.kind == "env" and s.env is None:
            return text
        if ph.kind == "variable" and s.variables is None:
            return text
        if ph.kind == "block" and s.blocks is None:
            return text
        if self.missing == "unknown" and ph.kind == "output" and self.is_pending(ph):
            return UNKNOWN if whole_string else str(UNKNOWN)
        if self.missing == "blank":
            if ph.kind in ("env", "variable"):
                return ""
            return _DROP if whole_string else ""
        raise self.error(ph)

    def is_pending(self, ph: Placeholder) -> bool:
        s = self.scope
        if ph.step_id is not None:
            if ph.step_id in s.pending:
                return True
            if ph.step_id in s.step_ids():
                return ph.step_id not in s.outputs
            if s.ids is not None:
                return False  # no step has this id: an error however much has been built
        return bool(s.pending)

    def error(self, ph: Placeholder) -> TemplateError:
        message, hint = self._problem(ph)
        return TemplateError(message, location=self.location, path=self.place(), hint=hint)

    def _problem(self, ph: Placeholder) -> tuple[str, str | None]:
        """What is wrong with a placeholder that has no value, and the hint: (message, hint)."""
        s = self.scope
        if ph.kind == "env":
            return (
                f"environment variable {ph.keypath[0]} is not set (used as {ph.text})",
                f"export {ph.keypath[0]}=… before running",
            )
        if ph.kind == "variable":
            return (
                f"variable {ph.name[18:]!r} is not defined (used as {ph.text})",
                "declare it under `variables:` in the project file",
            )
        if ph.kind == "block":
            return (
                f"block {ph.name[15:]!r} was not found (used as {ph.text})",
                "set BUILDSYS_BLOCK_<TYPE>_<NAME> in the environment (JSON or a plain value)",
            )
        ids = sorted(s.step_ids())
        if ph.step_id is not None and ph.step_id in s.step_ids():
            out = s.outputs.get(ph.step_id, {})
            keys = ", ".join(sorted(out)) if isinstance(out, Mapping) else ""
            return (
                f"{ph.text}: step {ph.step_id!r} has no output {'.'.join(map(str, ph.keypath[1:]))!r}",
                f"its outputs are: {keys}" if keys else None,
            )
        if ph.step_id is not None and s.ids is not None:
            return unknown_step(ph.text, ph.step_id, ids)
        ref = str(ph.keypath[0]) if ph.keypath else ph.name
        return f"{ph.text} does not match any step output", step_ids_hint(ref, ids)


class JsonRenderer(_Renderer):
    """`render` and then `json_shaped` of the result, in one walk (desired state renders every
    field of every deployment and then needs it JSON-shaped: two walks of the same values)."""

    def __init__(
        self, scope: Scope, missing: str, location: Location | None, path: str | None, finish: Callable[[Any], Any]
    ) -> None:
        super().__init__(scope, missing, location, path)
        self.finish = finish
        self.where: str | None = None

    def field(self, value: Any, where: str) -> Any:
        """`render(value, ..., path=f"{path}.{where}")` with this renderer's scope and rules, the
        path made only when a message needs it: one renderer for every field of a deployment."""
        self.where = where
        result = self.value(value)
        return None if result is _DROP else result

    def place(self) -> str | None:
        return self.path if self.where is None else f"{self.path}.{self.where}"

    def value(self, value: Any) -> Any:
        kind = type(value)
        if kind in LEAVES:
            return value
        if kind is str or isinstance(value, str):
            if "{{" not in value:
                return value
            result = self.string(value)
            return result if type(result) is str or result is _DROP else self.finish(result)
        if kind is dict or isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                r = self.value(v)
                if r is not _DROP:
                    out[k if type(k) is str else str(k)] = r
            return out
        if isinstance(value, list | tuple):
            items = []
            for v in value:
                r = self.value(v)
                if r is not _DROP:
                    items.append(r)
            return items
        return self.finish(value)

def unknown_step(text: str, ref: str, ids: Iterable[str]) -> tuple[str, str]:
    """The one wording (message, hint) of a reference to a step id that does not exist, whichever
    command finds it: validate, plan, apply, deploy, build or the runtime."""
    return (
        f"{text} refers to step {ref!r}, which does not exist here (Prefect would silently drop the value)",
        step_ids_hint(ref, ids),
    )


def step_ids_hint(ref: str, ids: Iterable[str]) -> str:
    """The one hint for a reference that names no step (or no step's output): the closest id, if
    one is close, and the ids there are."""
    from buildsys.suggest import did_you_mean

    known = sorted(ids)
    guess = did_you_mean(ref, known)
    return (guess + "; " if guess else "") + (f"step ids here: {', '.join(known)}" if known else "no step here has an id")


def _dig(data: Any, keypath: tuple[str | int, ...]) -> Any:
    cur = data
    for key in keypath:
        if isinstance(cur, Mapping):
            if key in cur:
                cur = cur[key]
            elif str(key) in cur:
                cur = cur[str(key)]
            else:
                return _MISSING
        elif isinstance(cur, list | tuple) and isinstance(key, int):
            if not -len(cur) <= key < len(cur):
                return _MISSING
            cur = cur[key]
        else:
            return _MISSING
    return cur


def env_blocks(env: Mapping[str, str]) -> BlockResolver:
    """Blocks from the environment: BUILDSYS_BLOCK_<TYPE>_<NAME> holds JSON or a plain value."""
    import json

    def resolve(block_type: str, name: str) -> Any:
        key = "BUILDSYS_BLOCK_" + re.sub(r"[^A-Za-z0-9]", "_", f"{block_type}_{name}").upper()
        raw = env.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    return resolve


# --- held text: placeholders a step fills in only after it has split the text -----------------------

_HOLD = "\ue000(\\d+)\ue001"  # compiled at its first use (re's cache)


class HeldText(str):
    """A template whose placeholders are held out: each is a marker (private-use characters that no
    shell splits on), and ``values`` holds what each renders to. A step that splits text into
    commands and words splits first and then fills each word (:func:`fill`), so a value with a
    newline, U+2028 or a quote stays inside its one word and never starts another command."""

    values: tuple[str, ...] = ()


def render_held(
    text: str, scope: Scope, *, location: Location | None = None, path: str | None = None
) -> HeldText:
    """``text`` with each placeholder replaced by a marker, and the rendered values alongside."""
    if "\ue000" in text or "\ue001" in text:
        raise TemplateError(
            "the characters U+E000 and U+E001 are not allowed here", location=location, path=path
        )
    values: list[str] = []

    def hold(match: re.Match[str]) -> str:
        value = render(match.group(0), scope, missing="error", location=location, path=path)
        values.append(value if isinstance(value, str) else str(value))
        return f"\ue000{len(values) - 1}\ue001"

    held = HeldText(PLACEHOLDER.sub(hold, text))
    held.values = tuple(values)
    return held


def fill(text: str, values: tuple[str, ...], quote: Callable[[str], str] | None = None) -> str:
    """Put held values back into (a piece of) held text, each passed through ``quote`` if given."""
    if "\ue000" not in text:
        return text
    return re.sub(_HOLD, lambda m: (quote or str)(values[int(m.group(1))]), text)


def render_inputs(
    inputs: Mapping[str, Any],
    scope: Scope,
    *,
    held: tuple[str, ...] = (),
    location: Location | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    """A step's inputs rendered; those named in ``held`` (text only) as :class:`HeldText`."""
    rendered = render(inputs, scope, missing="error", location=location, path=path)
    out = dict(rendered) if isinstance(rendered, Mapping) else {}
    for name in held:
        raw = inputs.get(name)
        if isinstance(raw, str) and PLACEHOLDER.fullmatch(raw) is None:
            out[name] = render_held(raw, scope, location=location, path=f"{path}.{name}" if path else name)
    return out
