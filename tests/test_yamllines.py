"""The line reader of plain block YAML: for every text it reads, exactly what the event builder
builds (values and their types, every mark, the templated strings noted per container, the
storable flag); every other text is left to the event builder (None)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

from buildsys.yamlevents import load_events
from buildsys.yamllines import load_lines
from buildsys.yamlsource import Located, YamlError, load_yaml
from tests.conftest import CORPUS

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
from bench_plan import project_text  # the bench's own project

pytestmark = pytest.mark.unit


def _marks(doc: Located, value: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every located container's marks and templated strings, by path (ids differ between loads)."""
    at = doc.marks.get(id(value))
    if at is None:
        return {}
    out: dict[tuple[Any, ...], Any] = {path: (type(at), doc.templates(value), id(value) in doc.merged)}
    pairs = at.items() if isinstance(at, dict) else enumerate(at)
    for key, mark in pairs:
        out[(*path, key)] = mark
        out.update(_marks(doc, value[key], (*path, key)))
    return out


def _typed(value: Any) -> Any:
    """`value` with every scalar's type beside it (1 == True == 1.0 would hide a difference)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


def same_as_events(text: str) -> bool:
    """True when the line reader reads `text` (and then as the event builder does); False when it
    leaves it to the event builder."""
    fast = load_lines(text, "f.yaml")
    if fast is None:
        return False
    slow = load_events(text, "f.yaml")
    assert _typed(fast.value) == _typed(slow.value)
    assert (fast.file, fast.root, fast.storable, fast.texts) == (slow.file, slow.root, slow.storable, slow.texts)
    assert _marks(fast, fast.value) == _marks(slow, slow.value)
    assert len(fast.held) == len(slow.held) and len(fast.marks) == len(slow.marks)
    return True


def _files() -> list[Path]:
    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("examples/**/*.yaml")) + sorted((root / "tests").glob("**/*.yaml"))
    return files + (sorted(CORPUS.glob("*.yaml")) if CORPUS.is_dir() else [])


def test_every_file_read_by_lines_is_what_the_events_build() -> None:
    read = [f for f in _files() if same_as_events(f.read_text(errors="replace"))]
    assert len(read) >= 20  # most project files are plain block YAML: the reader is used


def test_the_bench_project_is_read_by_lines() -> None:
    text = project_text(50, frozenset({3}))
    assert same_as_events(text)
    assert load_yaml(text, "f.yaml").texts == load_events(text, "f.yaml").texts == ["{{ $TOKEN }}"] * 50


READ = [
    "a: 1\n",
    "a: b #c\nd: e#f\ng:   h   \n",
    "# top\n\na:\n  # inside\n\n  b: 1\n  c:\n    - x\n    -   y\n",
    "a: 'it''s'  # c\nb: \"q  r\"\nc: ''\nd: \"\"\n",
    "a: [a, b] #c\nb: [a,b]\nc: [ a , b ]\nd: []\ne: {}\nf: [[]]\ng: [{}]\nh: [a b, ' c ']\n",
    "a: {b: [1, {c: [x, {d: e}]}], f: 'g'}\nb: {b: 1, c: {}}\n",
    "a:\n- x\n- y\nb: 1\n",
    "a:\n  b:\n  - x\n  - k: v\n    l: w\n  c: 1\n",
    "a_b.c-d: 1\nx1: 2\n",
    "a: ~\nb: null\nc: Null\nd: yes\ne: off\nf: 0o17\ng: 0x1f\nh: 1_000\ni: 1e3\nj: .5\nk: 2020-01-01\n",
    "a: 2020-01-01 10:00:00\nb: 190:20:30\nc: 00\nd: 0\ne: 012\nf: 123456789012345678\ng: 1234567890123456789\n",
    "a: .inf\nb: .nan\nc: 99999999999999999999\n",
    "a: [.inf, 1]\n",
    "a:\nb:\n  c:\n",
    "a:\n  - a\n  -\n    b: 1\n  -\n    - c\n",
    "a: '{{ x }}'\nb: [\"{{ y }}\", z]\nc: {d: '{{ z }}'}\ne: x {{ a }}\n",
    "a: x[0]\nb: b:c\nc: http://x/y?z=1&w\nd: 'a: b'\ne: \"x # y\"\n",
    "a: y\nb: n\nc: Y\n",
    "  a: 1\n  b:\n    c: 2\n",
    "a: [x, y]   \nb: {c: d}   # t\n",
    "deployments:\n- name: a\n  tags: [x]\n- name: b\n  tags: [x]\n- name: c\n  tags: [x]\n",
]


@pytest.mark.parametrize("text", READ)
def test_plain_block_yaml_is_read_as_the_events_build_it(text: str) -> None:
    assert same_as_events(text)


LEFT = [
    "",
    "# only a comment\n",
    "---\na: 1\n",
    "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "- a\n- b\n",
    "just text\n",
    "a:value\n",
    "a: b: c\n",
    "a: b:\n",
    "a: 1\n  b: 2\n",
    "a: x\n  continued\n",
    "a:\n  - x\n  b: 1\n",
    "a: |\n  text\n",
    "a: >\n  text\n",
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "a: 'open\n  quote'\n",
    'a: "esc\\n"\n',
    "a: [1,\n  2]\n",
    "a: [a, b,]\n",
    "a: {b: 1, b: 2}\n",
    "a: 1\na: 2\n",
    "a: {b: }\n",
    "a: {b:1}\n",
    "a: [b: c]\n",
    "a: {'b': 1}\n",
    "a: - b\n",
    "a: -1\n",
    "a: [-1]\n",
    "on: 1\n",
    "yes: 1\n",
    "null: 1\n",
    "<<: {a: 1}\n",
    "? a\n: b\n",
    "a: 'x' y\n",
    "a: [x] y\n",
    "a: [x]#c\n",
    "a:\tb\n",
    "a: b\r\n",
    "a: café\n",
    "a: b\x00\n",
    "a:\n-\n",
    "a:\n  - - x\n",
    "a: {{ x }} y\n",
    "a: @x\n",
    "a: `x`\n",
    "a: [a # c]\n",
    "a: {b: [c, d: e]}\n",
    "k" * 1001 + ": 1\n",
    "a: !!timestamp 2001-12-14 - x\n",
    "f: {{ b }}\n",
]


@pytest.mark.parametrize("text", LEFT)
def test_anything_else_is_left_to_the_event_builder(text: str) -> None:
    assert load_lines(text, "f.yaml") is None


def test_a_value_that_does_not_build_is_the_event_builders_error() -> None:
    """A plain text the resolver types but the constructor refuses: the event builder's message."""
    text = "a: 2001-12-14 25:00:00\n"
    assert load_lines(text, "f.yaml") is None
    with pytest.raises(YamlError):
        load_events(text, "f.yaml")


PIECES = [
    " ", "  ", "-", "- ", ":", ": ", "#", " #", "'", '"', "''", "[", "]", "{", "}", ",", ", ", "\n", "\n  ",
    "\n- ", "&a ", "*a", "!!str ", "|", ">", "?", "~", "null", "yes", "on", "0", "-1", "1.5", ".inf", "0o7",
    "012", "2001-12-14", "{{ x }}", "x: y", "---", "...", "%", "@", "`", "a:b", "\\", "<<: ", "0x1F", "1_000",
]


def _mutants(texts: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text) + 1)
            roll = rng.random()
            if roll < 0.4:
                text = text[:i] + rng.choice(PIECES) + text[i:]
            elif roll < 0.7:
                text = text[:i] + text[min(len(text), i + rng.randint(1, 4)) :]
            else:
                lines = text.split("\n")
                k = rng.randrange(len(lines))
                lines.insert(k, lines[k])
                text = "\n".join(lines)
        out.append(text)
    return out


def test_mutated_files_are_read_as_the_events_build_them_or_left_alone() -> None:
    """Edits of YAML punctuation, indentation and values (seeded): whatever the line reader reads,
    the event builder builds alike, and never refuses (a refused text must reach its error)."""
    texts = [project_text(8), *READ] + [f.read_text() for f in _files()[:60] if f.stat().st_size < 20_000]
    texts = [t for t in texts if load_lines(t, "f.yaml") is not None]
    read = 0
    for text in _mutants(texts, 3000, seed=18):
        if load_lines(text, "f.yaml") is None:
            continue
        try:
            load_events(text, "f.yaml")
        except YamlError as exc:
            raise AssertionError(f"read by lines, refused by the events ({exc.message}):\n{text}") from None
        assert same_as_events(text), text
        read += 1
    assert read > 500


def test_the_implicit_types_read_here_are_pyyamls() -> None:
    """Plain texts starting with a letter or `~` are typed here (bool, null or text) without
    PyYAML; every other first character PyYAML's resolver types is left to it."""
    import yaml

    from buildsys.yamllines import _BOOLS, _NULLS, _TYPED_FIRST, _Reader

    table = yaml.resolver.Resolver.yaml_implicit_resolvers
    assert None not in table  # no resolver that looks at every text
    for first, resolvers in table.items():
        tags = {tag.rsplit(":", 1)[1] for tag, _ in resolvers}
        assert first in _TYPED_FIRST or tags <= {"bool", "null"}, first
    words = [*_BOOLS, *_NULLS, "yes!", "Yes ", "nULL", "NuLL", "tRUE", "ok", "n", "y", "Y", "~x", "off-", "o"]
    resolver, reader = yaml.resolver.Resolver(), _Reader("f")
    for text in words:
        assert reader.resolve(text) == resolver.resolve(yaml.ScalarNode, text, (True, False)), text
        assert same_as_events(f"a: {text}\n" if text.strip() == text else f"a: '{text}'\n")
    assert {text: _BOOLS[text] for text in _BOOLS} == {
        text: yaml.safe_load(f"a: {text}")["a"] for text in _BOOLS
    }


def test_a_plan_of_plain_yaml_does_not_import_pyyaml() -> None:
    """Reading a file in the subset needs no PyYAML; a number or date it cannot type imports it."""
    import subprocess

    code = (
        "import sys\n"
        "from buildsys.yamlsource import load_yaml\n"
        "load_yaml(sys.argv[1], 'f.yaml')\n"
        "print('yaml' in sys.modules)\n"
    )
    for text, imported in (("a: [x, 1, yes, ~]\nb: {c: d}\n", "False"), ("a: 1.5\n", "True"), ("a: &x 1\n", "True")):
        out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == imported, text
