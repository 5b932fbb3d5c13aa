"""The event-driven YAML loader: values as `safe_load` builds them, a location for every node,
and one clear located error for each way a file can be bad."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from buildsys.errors import Location
from buildsys.storable import value_problems
from buildsys.templating import templated
from buildsys.yamlsource import YamlError, load_yaml
from tests.conftest import CORPUS  # the corpus of real prefect.yaml files

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

DOC = """\
defaults: &defaults
  pool: {name: k8s, job_variables: {cpu: 1}}
  tags: [a, b]
deployments:
  - &first
    name: one
    <<: *defaults
    tags: [own]
  - <<: [*first, {retries: 3}]
    name: two
  - *first
numbers: {int: 7, float: 1.5, bool: yes, null: ~, date: 2024-01-02, hex: 0x1f, quoted: "7"}
200: status
"""


def error(text: str) -> str:
    with pytest.raises(YamlError) as info:
        load_yaml(text, "f.yaml")
    (d,) = info.value.diagnostics()
    return d.render()


def test_values_are_what_safe_load_builds() -> None:
    doc = load_yaml(DOC, "f.yaml")
    expected = yaml.safe_load(DOC)
    expected["200"] = expected.pop(200)  # non-string keys keep the text that was written
    expected["numbers"]["null"] = expected["numbers"].pop(None)
    assert doc.value == expected
    one, two, three = doc.value["deployments"]
    assert two == {"name": "two", "pool": one["pool"], "tags": ["own"], "retries": 3}
    assert three == one and three is not one  # an alias is a fresh copy: editing one edits no other
    assert three["pool"] is not one["pool"]


def test_plain_integers_are_what_safe_load_builds() -> None:
    """Plain decimal digits are built without the resolver; everything else integer-like with it."""
    texts = ["0", "7", "00", "012", "0_1", "1_000", "123", "-1", "+1", "0x1F", "0b101", "1:30", "1e3", "1.0",
             "\u0663", "\u00b2", "12\u0663", "999999999999999999", "9223372036854775807", "9223372036854775808",
             "99999999999999999999999", "'12'", "!!str 12", "!!int 12"]
    text = "".join(f"k{i}: {t}\n" for i, t in enumerate(texts)) + "\n".join(f"{t}: x" for t in ["12", "012", "0"]) + "\n"
    doc = load_yaml(text, "f.yaml")
    expected = yaml.safe_load(text)
    for key in [12, 10, 0]:  # non-string keys keep the text that was written
        expected[{12: "12", 10: "012", 0: "0"}[key]] = expected.pop(key)
    assert doc.value == expected
    assert [type(doc.value[f"k{i}"]) for i in range(len(texts))] == [type(expected[f"k{i}"]) for i in range(len(texts))]
    assert not doc.storable  # 9223372036854775808 and the longer one


def test_a_text_seen_before_builds_what_it_built_then_plain_or_quoted() -> None:
    """The loader reuses the string a plain text built; quoted text may reuse it, never the other
    way round (a quoted `yes` is a string, a plain one a boolean), and tags or NUL text never."""
    text = (
        "a: [abc, 'abc', \"abc\", yes, 'yes', yes, '012', 012, 012, '1.5', 1.5, !!str 7, 7, ~, '~', ~]\n"
        "'abc': {abc: 'on', 'on': on, on2: on}\n"
        "b: [nul, 'nul\\0', \"nul\\0\"]\n"
    )
    doc = load_yaml(text, "f.yaml")
    assert doc.value == yaml.safe_load(text)
    assert [type(v) for v in doc.value["a"]] == [str, str, str, bool, str, bool, str, int, int, str, float, str, int,
                                                  type(None), str, type(None)]
    assert not doc.storable  # the NUL written as an escape, after the same text without it


def test_every_node_has_its_location_and_aliases_point_into_the_anchor() -> None:
    doc = load_yaml(DOC, "f.yaml")
    at = {
        (): (1, 1),
        ("defaults",): (1, 1),
        ("defaults", "pool", "job_variables", "cpu"): (2, 37),
        ("deployments", 0): (5, 5),
        ("deployments", 0, "tags", 0): (8, 12),
        ("deployments", 1, "name"): (10, 5),
        ("deployments", 2): (11, 5),  # where the alias is used
        ("deployments", 2, "tags", 0): (8, 12),  # inside it: where the anchored value was written
        ("numbers", "hex"): (12, 69),
        ("200",): (13, 1),
    }
    assert {path: doc.loc(path) for path in at} == {path: Location("f.yaml", *lc) for path, lc in at.items()}
    # merged keys have no place of their own: the nearest located ancestor answers
    assert doc.loc(("deployments", 0, "pool", "name")) == Location("f.yaml", 5, 5)


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("a: 1\na: 2\n", "f.yaml:2:1: error: duplicate key 'a': YAML keeps only the last one, so the first would be "
         "silently lost\n  hint: remove or rename one of the two entries"),
        ("a: *nowhere\n", "f.yaml:1:4: error: not valid YAML: found undefined alias *nowhere\n"
         "  hint: define the anchor (&nowhere) before using the alias (*nowhere)"),
        ("a: &x 1\nb: &x 2\n", "f.yaml:2:4: error: not valid YAML: the anchor &x is defined twice (first defined at "
         "line 1)\n  hint: give each anchor its own name"),
        ("a: &x [1, *x]\n", "f.yaml:1:11: error: recursive YAML alias: *x is used inside the node &x names"),
        ("a: 1\n---\nb: 2\n", "f.yaml:2:1: error: not valid YAML: expected a single document in the stream: but "
         "found another document\n  hint: a prefect.yaml is one YAML document: remove the second `---`, or split "
         "the file"),
        ("a: !!int ten\n", "f.yaml:1:4: error: bad YAML value 'ten' for tag:yaml.org,2002:int: invalid literal for "
         "int() with base 10: 'ten'"),
        ("a: !Ref x\n", "f.yaml:1:4: error: bad YAML value: could not determine a constructor for the tag '!Ref'"),
        ("a: !!timestamp 2001-12-14 - x\n", "f.yaml:1:4: error: bad YAML value '2001-12-14 - x' for "
         "tag:yaml.org,2002:timestamp: not a value of that type"),  # PyYAML's constructor crashed on it
        ("? [a, b]\n: c\n", "f.yaml:1:3: error: a mapping key must be a plain value"),
        ("a: &m [1]\nb: {<<: *m}\n", "f.yaml:2:9: error: a merge key (<<) needs a mapping or a list of mappings"),
        ("a:\n\tb: 1\n", "f.yaml:2:1: error: not valid YAML: while scanning for the next token: found character "
         "that cannot start any token\n  hint: YAML does not allow tabs for indentation; use spaces"),
        ("a: 1\nb: x\x01y\n", "f.yaml:2:5: error: not valid YAML: the character '\\x01' (#x0001) is not allowed in a "
         "YAML file\n  hint: is this a binary file? a prefect.yaml is UTF-8 text"),
        ("a: @b\n", "f.yaml:1:4: error: not valid YAML: while scanning for the next token: found character "
         "that cannot start any token\n  hint: quote the value: a plain YAML value cannot start with '@'"),
    ],
)
def test_bad_input_gets_one_located_error(text: str, rendered: str) -> None:
    assert error(text) == rendered


def test_a_syntax_error_later_in_the_file_wins_over_a_bad_value_before_it() -> None:
    """As when the whole file is parsed first: the broken syntax is what must be fixed first."""
    assert error("a: !!int ten\nb: [unclosed\n").startswith("f.yaml:2:4: error: not valid YAML: while parsing a flow")


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("tags: [a, b\ndescription: x\n", "f.yaml:1:7: error: not valid YAML: while parsing a flow sequence: did not "
         "find expected ',' or ']' (the parser stopped at line 2, column 12)\n"
         "  hint: close the list with ']' (a value that starts with '[' must be quoted)"),
        ("env: {A: 1,\nb: 2\n", "f.yaml:1:6: error: not valid YAML: while parsing a flow mapping: did not find "
         "expected ',' or '}' (the parser stopped at line 3, column 1)\n"
         "  hint: close the mapping with '}' (a value that starts with '{' must be quoted)"),
        ('name: "a\nentrypoint: f.py:f\n', "f.yaml:1:7: error: not valid YAML: while scanning a quoted scalar: found "
         "unexpected end of stream (the parser stopped at line 3, column 1)\n  hint: close the quote"),
    ],
)
def test_an_unclosed_list_mapping_or_quote_is_reported_where_it_opens(text: str, rendered: str) -> None:
    assert error(text) == rendered


def test_empty_documents() -> None:
    assert load_yaml("", "f.yaml").value is None
    assert load_yaml("# only a comment\n", "f.yaml").loc(()) == Location("f.yaml", 1, 1)
    assert load_yaml("---\n", "f.yaml").value is None


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert load_yaml("[" * 300 + "]" * 300, "f.yaml").loc((0,) * 299) == Location("f.yaml", 1, 300)
    assert error("[" * 900 + "]" * 900) == "f.yaml:1:1: error: the YAML is nested too deeply to load"
    # deeper still, libyaml refuses first
    assert error("[" * 2000 + "]" * 2000) == (
        "f.yaml:1:1001: error: not valid YAML: while increasing flow level: exceeded maximum nesting depth"
    )


def _bomb(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9, 30])
def test_an_alias_bomb_is_a_located_error_at_once(levels: int) -> None:
    # 10**levels elements: 10**6 took 13.5 s and 513 MB before; 10**9 ended in a segfault
    with pytest.raises(YamlError) as err:  # refused at the line that passes the budget, not after expanding
        load_yaml(_bomb(levels), "bomb.yaml")
    location = err.value.location  # an alias of the line that would pass the budget
    assert location is not None and (location.file, location.line) == ("bomb.yaml", 5)
    assert re.fullmatch(
        r"YAML aliases would expand to more than 2\d,\d{3} nodes or 4,0\d\d,\d{3} characters "
        r"\(\*a3 alone is 12,222 nodes, 30,000 characters\): an alias bomb\?",
        err.value.message,
    ), err.value.message


def test_a_bomb_of_long_strings_is_bounded_by_size() -> None:
    text = "x: &x " + "y" * 100_000 + "\nl: [" + ", ".join(["*x"] * 200) + "]\n"
    with pytest.raises(YamlError) as err:
        load_yaml(text, "wide.yaml")
    assert err.value.location is not None and err.value.location.line == 2
    assert "characters" in err.value.message


def test_ordinary_aliases_and_merges_stay_within_the_budget() -> None:
    text = "defaults: &d {" + ", ".join(f"k{i}: v{i}" for i in range(40)) + "}\n" + "deployments:\n" + "".join(
        f"  - {{name: n{i}, <<: *d}}\n" for i in range(500)
    )
    value = load_yaml(text, "ok.yaml").value
    assert len(value["deployments"]) == 500 and value["deployments"][-1]["k39"] == "v39"


class _AliasAt:
    """An alias in PyYAML's node tree: the anchored node, and where the alias itself was written."""

    def __init__(self, node: yaml.Node, mark: yaml.Mark) -> None:
        self.node, self.mark = node, mark


class _MarkedLoader(yaml.SafeLoader):
    """PyYAML's own composer (pure Python, a node with marks for every value), keeping alias places."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            return _AliasAt(super().compose_node(parent, index), mark)  # type: ignore[return-value]
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _reference(text: str) -> dict[tuple[object, ...], tuple[int, int]]:
    """Every located path by an independent route: a mapping value is where its key is written, a
    list item (or the document) where it starts, an alias's children inside the anchor; merged
    keys have no place of their own."""
    loader = _MarkedLoader(text)
    constructor = yaml.constructor.SafeConstructor()
    found: dict[tuple[object, ...], tuple[int, int]] = {}

    def walk(node: object, path: tuple[object, ...], mark: yaml.Mark) -> None:
        found[path] = (mark.line + 1, mark.column + 1)
        body = node.node if isinstance(node, _AliasAt) else node
        if isinstance(body, yaml.MappingNode):
            for key, value in body.value:
                plain = key.node if isinstance(key, _AliasAt) else key
                if plain.tag == "tag:yaml.org,2002:merge":
                    continue
                kept_as_text = plain.tag in {f"tag:yaml.org,2002:{t}" for t in ("str", "bool", "int", "float", "null")}
                name = plain.value if kept_as_text else constructor.construct_object(plain, deep=True)
                walk(value, (*path, name), key.mark if isinstance(key, _AliasAt) else key.start_mark)
        elif isinstance(body, yaml.SequenceNode):
            for i, item in enumerate(body.value):
                walk(item, (*path, i), item.mark if isinstance(item, _AliasAt) else item.start_mark)

    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    if root is not None:
        walk(root, (), root.start_mark)
    return found


def _all_paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [path, (*path, "no such key"), (*path, -1), (*path, 10**6)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _all_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _all_paths(v, (*path, i))
    return out


def _yaml_files() -> list[object]:
    root = Path(__file__).resolve().parents[1]
    files: list[object] = sorted(root.glob("examples/**/*.yaml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.glob("*.yaml"))
    return [DOC, *files]


@pytest.mark.parametrize("source", _yaml_files(), ids=lambda s: s.name if isinstance(s, Path) else "DOC")
def test_every_path_of_every_file_is_located_as_pyyaml_marks_it(source: str | Path) -> None:
    """Locations are kept beside the containers and found by walking down (not a dict of every
    path): on each corpus file and example, every path, and paths that name nothing, answer as a
    path → mark table built from PyYAML's own composer does (nearest located ancestor)."""
    text = source.read_text() if isinstance(source, Path) else source
    try:
        doc = load_yaml(text, "f.yaml")
    except YamlError:
        return  # a corpus file that is not valid YAML: the error tests cover those
    assert doc.storable == (not any(value_problems(doc.value)))  # the loader's own look agrees
    reference = _reference(text)
    for path in _all_paths(doc.value):
        probe = path
        while probe not in reference:
            probe = probe[:-1]
        assert doc.loc(path) == Location("f.yaml", *reference[probe]), path
    for path in [(), *_all_paths(doc.value)]:  # a container's children at once, as one by one
        keys = ["no-such-key", 99, *_children(doc.value, path)]
        assert doc.locs(path, keys) == [doc.loc((*path, k)) for k in keys], path
        container = _value_at(doc.value, path)
        if container is not _NOTHING:  # one look at the container's marks answers as the walk does
            for k in keys:
                assert doc.at(container, k, (*path, k)) == doc.loc((*path, k)), (*path, k)  # type: ignore[arg-type]
            if isinstance(container, dict):
                assert doc.keys_at(container, path) == doc.locs(path, container), path


_NOTHING = object()


def _value_at(value: object, path: tuple[object, ...]) -> object:
    """The value `path` names (as `loc` reads a path: list items by an index in range), or _NOTHING."""
    for step in path:
        named = step in value if isinstance(value, dict) else isinstance(value, list) and type(step) is int and 0 <= step < len(value)
        if not named:
            return _NOTHING
        value = value[step]  # type: ignore[index]
    return value


def _containers(value: object) -> list[object]:
    out: list[object] = []
    if isinstance(value, dict | list):
        out.append(value)
        for item in value.values() if isinstance(value, dict) else value:
            out += _containers(item)
    return out


@pytest.mark.parametrize("source", _yaml_files(), ids=lambda s: s.name if isinstance(s, Path) else "DOC")
def test_the_templated_strings_noted_per_container_are_what_a_walk_finds(source: str | Path) -> None:
    """`Located.templates` (noted as the values are built) answers as `templating.templated` walking
    the container, for every mapping and list of every corpus file and example, or says it does
    not know (None: a merge key inside)."""
    text = source.read_text() if isinstance(source, Path) else source
    try:
        doc = load_yaml(text, "f.yaml")
    except YamlError:
        return
    for container in _containers(doc.value):
        noted = doc.templates(container)
        if noted is not None:
            walked: list[str] = []
            templated(container, walked)
            assert noted == tuple(walked), container
    assert doc.templates({"a": "{{ x }}"}) is None  # not built by this document


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:\n  b: '{{ x }}'\n  c: [d, '{{ $Y }} z']\n  e: plain {{ w }}\n", ("{{ x }}", "{{ $Y }} z", "plain {{ w }}")),
        ("'{{ key }}': v\nb: !!str '{{ tagged }}'\n", ("{{ tagged }}",)),  # keys are never templated
        ("a: &x {b: '{{ x }}'}\nc: *x\nd: *x\n", ("{{ x }}",) * 3),  # an alias copies its strings
        ("a: '{{ x }}'\nb: '{{ x }}'\n", ("{{ x }}", "{{ x }}")),  # repeats: each one noted
        ("a: 1\nb: [true, null, 2.5]\n", ()),
    ],
)
def test_templated_strings_are_noted_as_built(text: str, expected: tuple[str, ...]) -> None:
    doc = load_yaml(text, "f.yaml")
    assert doc.templates(doc.value) == expected
    walked: list[str] = []
    templated(doc.value, walked)
    assert tuple(walked) == expected


def test_a_merge_key_makes_the_templated_strings_unknown() -> None:
    """A merged value can be overridden (`<<: *base` then the same key): walk such a container."""
    doc = load_yaml("base: &b {x: '{{ old }}'}\nd: {<<: *b, x: new, y: {z: '{{ z }}'}}\n", "f.yaml")
    assert doc.templates(doc.value) is None
    assert doc.templates(doc.value["d"]) is None
    assert doc.templates(doc.value["d"]["y"]) == ("{{ z }}",)
    assert doc.templates(doc.value["base"]) == ("{{ old }}",)


def _children(value: object, path: tuple[object, ...]) -> list[object]:
    for step in path:  # paths that name nothing have no children
        named = step in value if isinstance(value, dict) else isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value)
        if not named:
            return []
        value = value[step]  # type: ignore[index]
    if isinstance(value, dict):
        return list(value)
    return list(range(len(value))) if isinstance(value, list) else []


@pytest.mark.parametrize(
    "text",
    [
        "a: 100000000000000000000000",
        "a: [1, -9223372036854775809]",
        "a: .nan",
        "a: {b: -.inf}",
        'a: "x\\0y"',
        '"k\\0": 1',
        'a: !!str "x\\0"',
        "a: !!float 1e400",
        'x: &bad {v: "\\0"}\ny: *bad',
        'x: &bad {v: .inf}\ny: {<<: *bad}',
        "- [1, {b: [x, .inf]}]",
        'x: &k "\\0"\n? *k\n: 1',
    ],
)
def test_the_loader_says_when_a_value_cannot_be_stored(text: str) -> None:
    """`Located.storable` lets a load skip `value_problems`' walk of the whole document: it must be
    False whenever that walk would find something (and True for what people write, above)."""
    doc = load_yaml(text, "f.yaml")
    assert any(value_problems(doc.value))
    assert not doc.storable


def test_the_loader_finds_ordinary_values_storable() -> None:
    doc = load_yaml("a: [9223372036854775807, -9223372036854775808, 1.5, café, 2024-01-01, yes, null, !!binary aGk=]", "f")
    assert not any(value_problems(doc.value))
    assert doc.storable


def test_a_location_survives_edits_of_the_value() -> None:
    doc = load_yaml("a: {b: [1, {c: 2}]}\n", "f.yaml")
    doc.value["a"]["b"] = "replaced"
    assert doc.loc(("a", "b", 1, "c")) == Location("f.yaml", 1, 5)  # the edited node's own place, no deeper
    assert doc.loc(("a", ["unhashable"])) == Location("f.yaml", 1, 1)  # type: ignore[list-item]
