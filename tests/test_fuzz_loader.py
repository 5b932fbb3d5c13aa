"""Fuzz the project loader with mutated corpus files: no input may produce a traceback.

`load_project` either returns a Project or raises ProjectError whose diagnostics all say something;
`validate_project` returns diagnostics and never raises. Mutations work on lines (delete,
duplicate, swap, re-indent, truncate), on values (numbers, nulls, lists, mappings, templates,
aliases) and on raw characters and bytes (YAML punctuation, tabs, CR, NUL, BOM, invalid UTF-8).
"""

from __future__ import annotations

import copy
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.errors import Diagnostic, ProjectError
from buildsys.model import Project
from buildsys.project import load_project
from buildsys.validation import validate_project
from tests.conftest import CORPUS

SPECIAL_TEXT = [
    ":", "-", "- ", ": ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a", "!", "!!python/object ", "|", ">",
    "'", '"', "#", "%", "@", "`", "?", "\t", "\r", "\n", "\x00", "\ufeff", "{{", "}}", "{{ a.b }}", "$",
    "\\", "\u2028", "é", "🙂", "---\n", "...\n", "~", "null", "true", "1e999", "0x1F", ".inf",
]
SPECIAL_BYTES = [b"\xff", b"\xfe\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\x00"]
SCALARS = [
    "0", "-1", "3.5", "1e308", "null", "~", "true", "no", "[]", "{}", "[1, 2]", "{a: 1}", "[[[]]]", "''",
    '"{{ missing.output }}"', '"{{ $ENV_NOT_SET }}"', '"{{ prefect.variables.x }}"', "*undefined_alias",
    "&anchor value", "!!binary aGk=", "!!timestamp 2001-12-14", "2024-01-01", "12:30", "0o17",
    "- item", "|\n  block", "? complex", '"\\u0000"',
]


@cache
def corpus_files() -> tuple[Path, ...]:
    return tuple(sorted(CORPUS.glob("*.yaml"))) if CORPUS.is_dir() else ()


@st.composite
def mutations(draw: st.DrawFn, lines: list[bytes]) -> list[bytes]:
    """Apply one random mutation to a list of lines (each keeps its line ending)."""
    n = len(lines)
    kind = draw(
        st.sampled_from(
            ["delete", "duplicate", "swap", "indent", "dedent", "scalar", "insert_text", "insert_bytes",
             "truncate", "join", "tabify"]
        )
    )
    if n == 0:
        return [draw(st.sampled_from(SCALARS)).encode()]
    i = draw(st.integers(0, n - 1))
    line = lines[i]
    out = list(lines)
    if kind == "delete":
        del out[i]
    elif kind == "duplicate":
        out.insert(i, line)
    elif kind == "swap":
        j = draw(st.integers(0, n - 1))
        out[i], out[j] = out[j], out[i]
    elif kind == "indent":
        out[i] = b" " * draw(st.integers(1, 6)) + line
    elif kind == "dedent":
        out[i] = line[draw(st.integers(1, 6)) :] if line.startswith(b" ") else line.lstrip()
    elif kind == "tabify":
        out[i] = b"\t" + line.lstrip(b" ")
    elif kind == "scalar":
        text = line.rstrip(b"\r\n")
        ending = line[len(text) :]
        value = draw(st.sampled_from(SCALARS)).encode()
        if b": " in text:
            out[i] = text.split(b": ", 1)[0] + b": " + value + ending
        elif text.lstrip().startswith(b"- "):
            out[i] = text[: text.index(b"- ") + 2] + value + ending
        else:
            out[i] = text + b": " + value + ending
    elif kind == "insert_text":
        pos = draw(st.integers(0, len(line)))
        piece = draw(st.sampled_from(SPECIAL_TEXT) | st.text(min_size=1, max_size=4)).encode("utf-8", "surrogatepass")
        out[i] = line[:pos] + piece + line[pos:]
    elif kind == "insert_bytes":
        pos = draw(st.integers(0, len(line)))
        out[i] = line[:pos] + draw(st.sampled_from(SPECIAL_BYTES)) + line[pos:]
    elif kind == "truncate":
        pos = draw(st.integers(0, len(line)))
        out = [*lines[:i], line[:pos]]
    elif kind == "join" and i + 1 < n:
        out[i : i + 2] = [line.rstrip(b"\r\n") + b" " + lines[i + 1]]
    return out


@st.composite
def mutated_corpus_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """A corpus file with 1-4 line/character mutations."""
    files = corpus_files()
    path = draw(st.sampled_from(files))
    lines = path.read_bytes().splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        lines = draw(mutations(lines))
    return path.name, b"".join(lines)


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.sampled_from(["", "x", "{{ a.b }}", "{{ $HOME }}", "{{ prefect.blocks.x.y }}", "prefect.yaml",
                       "run_shell_script", "x.py:f", "*/5 * * * *", "../..", "/etc/passwd"])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def tree_mutated_corpus_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """A corpus file parsed, with 1-3 nodes replaced by values of another type (or deleted), and
    written back as YAML: valid YAML that reaches the schema and the model's narrowing."""
    files = [p for p in corpus_files() if _parsed(p) is not None]
    path = draw(st.sampled_from(files))
    doc = copy.deepcopy(_parsed(path))
    for _ in range(draw(st.integers(1, 3))):
        doc = _mutate_tree(draw, doc)
    return path.name, yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()


def _mutate_tree(draw: st.DrawFn, node: Any) -> Any:
    """Descend to a random node and replace or delete it."""
    if isinstance(node, dict | list) and node and draw(st.integers(0, 3)) > 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 5)) == 0:
            del node[key]
        else:
            node[key] = _mutate_tree(draw, node[key])
        return node
    return draw(JSONISH)


@cache
def _parsed(path: Path) -> Any:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _check_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for d in diagnostics:
        assert d.severity in ("error", "warning"), d
        assert isinstance(d.message, str) and d.message.strip(), d
        assert d.render().strip()


def check_loader(content: bytes) -> None:
    """The property: a Project or a ProjectError with messages; validate never raises."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        path = Path(tmp) / "prefect.yaml"
        path.write_bytes(content)
        try:
            project = load_project(path)
        except ProjectError as exc:
            loaded = False
            assert exc.diagnostics(), "ProjectError without any diagnostic"
            assert any(d.is_error for d in exc.diagnostics())
            _check_diagnostics(exc.diagnostics())
        else:
            loaded = True
            assert isinstance(project, Project)
            _check_diagnostics(list(project.warnings))
        diagnostics, summary = validate_project(path)
        _check_diagnostics(diagnostics)
        assert isinstance(summary, dict)
        if not loaded:
            assert any(d.is_error for d in diagnostics), "load_project failed but validate_project found no error"


needs_corpus = pytest.mark.skipif(not corpus_files(), reason=f"corpus not found at {CORPUS}")

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@needs_corpus
@FUZZ
@given(mutated_corpus_file())
def test_mutated_corpus_files_never_crash_the_loader(case: tuple[str, bytes]) -> None:
    _, content = case
    check_loader(content)


@needs_corpus
@FUZZ
@given(tree_mutated_corpus_file())
def test_type_confused_corpus_files_never_crash_the_loader(case: tuple[str, bytes]) -> None:
    _, content = case
    check_loader(content)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe garbage", id="not-utf8"),
        pytest.param(b"\x00", id="nul"),
        pytest.param(b"deployments:\n  - name: a\n    build:\n      - \xed\xa0\x80: {}\n", id="surrogate-bytes"),
        pytest.param(b"a: &x [*x]\n", id="recursive-alias"),
        pytest.param(b"deployments: &d\n  - name: a\n    x: *d\n", id="self-containing-alias"),
        pytest.param(b"build:\n  - run_shell_script:\n      script: [1, 2]\n", id="list-script"),
        pytest.param(b"deployments:\n  - name: 1\n    schedule: {cron: 5}\n", id="numeric-cron"),
        pytest.param(b"deployments:\n  - ? [a]\n    : 1\n", id="complex-key"),
        pytest.param(b"deployments:\n- name: a\n  build: {}\n  pull: 7\n", id="scalar-pull"),
        pytest.param(b"build:\n  - {}\n  - a.b: null\n  - 'x.py:f':\n      needs: 3\n", id="odd-steps"),
        pytest.param(b"{{ a }}: 1\n", id="template-key"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="deep-nesting"),
        pytest.param(b"- a\n- b\n", id="top-level-list"),
        pytest.param(b"---\na: 1\n---\nb: 2\n", id="two-documents"),
        pytest.param(b"definitions: !!python/name:os.system\n", id="python-tag"),
    ],
)
def test_hand_written_nasty_inputs(content: bytes) -> None:
    check_loader(content)
