"""The compiled yes/no schema check agrees with jsonschema, and validation messages are unchanged.

The check is only a fast path: a "yes" skips jsonschema, a "no" asks jsonschema to explain. So the
one thing that must never happen is a "yes" where jsonschema finds a problem; these tests compare
the two on every example and corpus file and on many mutations of them (types swapped, booleans
for numbers, keys removed and added), and compare whole diagnostics with and without the check.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from buildsys import schema as schema_module
from buildsys.registry import resolve
from buildsys.schema import checking_schema, project_schema, schema_problems
from buildsys.schemacheck import compile_check, equal
from buildsys.yamlsource import YamlError, load_yaml
from tests.conftest import CORPUS

REPO = Path(__file__).resolve().parents[1]
SWAPS: list[Any] = [None, True, False, 0, 1, 2.0, 2.5, -1, "", "x", "1", [], [1], {}, {"k": "v"}, ["a", "a"]]


def documents() -> list[Path]:
    files = sorted((REPO / "examples").glob("**/prefect.yaml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.glob("*.yaml"))
    return files


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(doc)
    cur = out
    for part in path[:-1]:
        cur = cur[part]
    cur[path[-1]] = value
    return out


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(doc)
    cur = out
    for part in path[:-1]:
        cur = cur[part]
    del cur[path[-1]]
    return out


def mutations(doc: Any, rng: random.Random, count: int) -> Iterator[Any]:
    paths = list(_paths(doc))
    for _ in range(count):
        path = rng.choice(paths)
        kind = rng.randrange(3)
        if kind == 0 or not path:
            yield _set(doc, path, rng.choice(SWAPS))
        elif kind == 1:
            yield _delete(doc, path)
        else:
            yield _set(doc, path, {"name": "x", "unknown_key": 1, "id": True, "enabled": 1})


def _agree(check: Any, validator: Draft202012Validator, value: Any) -> None:
    errors = list(validator.iter_errors(value))
    assert check(value) == (not errors), (value, [e.message for e in errors])


@pytest.mark.parametrize("file", documents(), ids=lambda p: p.name if p.parent == CORPUS else p.parent.name)
def test_the_check_agrees_with_jsonschema_on_files_and_their_mutations(file: Path) -> None:
    try:
        doc = load_yaml(file.read_text(), str(file)).value
    except YamlError:
        return  # a corpus file that is not YAML at all: nothing to validate
    shipped = project_schema()  # what editors read
    _agree(compile_check(shipped), Draft202012Validator(shipped), doc)
    schema = checking_schema()  # what the loader validates with: unknown keys refused
    check = compile_check(schema)
    assert check is not None
    validator = Draft202012Validator(schema)
    _agree(check, validator, doc)
    rng = random.Random(file.name)
    for mutated in mutations(doc, rng, 25):
        _agree(check, validator, mutated)


def test_jsonschema_equality_rules() -> None:
    schema = {"enum": [1, "a", [1, True]], "items": {"const": 0}}
    check = compile_check(schema)
    validator = Draft202012Validator(schema)
    for value in (1, True, 1.0, "a", [1, True], [True, 1], [1, 1], [], [0, False], [0.0], False):
        _agree(check, validator, value)
    assert not equal(True, 1) and equal(1, 1.0) and not equal([0], [False])
    unique = {"type": "array", "uniqueItems": True}
    for value in ([1, True], [1, 1.0], [{"a": 1}, {"a": True}], [[1], [1]]):
        _agree(compile_check(unique), Draft202012Validator(unique), value)


def test_numbers_strings_and_patterns_follow_jsonschema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "exclusiveMinimum": 0},
            "s": {"type": "string", "pattern": "^[a-z$]+$", "maxLength": 4},
        },
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    }
    check = compile_check(schema)
    validator = Draft202012Validator(schema)
    for value in (
        {"n": 2.0}, {"n": True}, {"n": 0}, {"n": 1.5}, {"s": "ab\n"}, {"s": "a$"}, {"s": "abcde"},
        {"x-a": "1"}, {"x-a": 1}, {"y": 1}, {"n": None},
    ):
        _agree(check, validator, value)
    assert check is not None and not check({1: "a"})  # a non-string key: jsonschema judges it, as before


def test_unsupported_keywords_leave_validation_to_jsonschema() -> None:
    assert compile_check({"prefixItems": [{"type": "string"}]}) is None
    assert compile_check({"$ref": "https://example.com/other.json"}) is None
    assert compile_check({"format": "date"}) is None


def test_step_input_schemas_compile() -> None:
    for name in ("run_shell_script", "git_clone", "build_docker_image", "set_working_directory"):
        stepdef = resolve(name, REPO)
        assert compile_check({k: v for k, v in stepdef.schema.items() if not k.startswith("x-")}) is not None, name


BAD = """\
name: demo
prefect-version: 3.1.0
build:
  - run_shell_script:
      id: one
      script: echo hi
      stream_output: "yes"
deployments:
  - name: etl
    entrypoint: flows.py:main
    scedule: {cron: "0 * * * *"}
    tags: "nightly"
    work_pool: {name: 12, job_variables: []}
    schedules:
      - cron: 5
        active: "no"
  - name: etl
    entrypoint: 3
    concurrency_limit: {limit: "2", collision_strategy: QUEUE}
"""


@pytest.mark.parametrize("strict", [False, True])
def test_messages_are_unchanged_by_the_fast_path(monkeypatch: pytest.MonkeyPatch, strict: bool) -> None:
    doc = load_yaml(BAD, "prefect.yaml")
    with_check = schema_problems(doc, strict)
    monkeypatch.setattr(schema_module, "_CHECK", [None])  # jsonschema alone, as before the check
    alone = schema_problems(doc, strict)
    assert with_check == alone
    assert len(alone) >= 5
    rendered = [d.render() if hasattr(d, "render") else str(d) for d in alone]
    assert any("unknown key 'scedule'" in line for line in rendered), rendered


FLOW_SOURCE = '''
import datetime
from enum import Enum
from typing import Literal, Optional
from pydantic import BaseModel
from prefect import flow


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Size(BaseModel):
    width: int
    height: float = 1.0


@flow
def etl(day: str, shard: int = 0, ratio: float = 0.5, on: bool = True, when: datetime.date | None = None,
        names: list[str] = [], extra: dict = {}, mode: Literal["a", "b"] = "a", color: Color = Color.RED,
        size: Optional[Size] = None, stamp: datetime.datetime = None, anything=None):
    """Load."""
'''


def _parameter_schema() -> dict[str, Any]:
    import ast

    from buildsys.paramschema import parameter_schema

    tree = ast.parse(FLOW_SOURCE)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    return parameter_schema(node, tree, ast.get_docstring(node))


def test_parameter_and_job_variable_checks_agree_with_jsonschema() -> None:
    """The plan's parameter and job-variable checks answer "valid" without jsonschema: the checks
    they compile (Prefect's `position`, `format` and `definitions` taken as the annotations they
    are to a validator without a format checker) agree with jsonschema on values and mutations."""
    import json

    from buildsys import parameters, pools

    prepared = parameters._prepared(_parameter_schema())
    assert "definitions" in prepared or "$defs" in prepared, "the flow has a model: the schema refers to it"
    variables = [
        {k: v for k, v in json.loads((REPO / "schemas" / "job-templates" / f"{kind}.json").read_text())["variables"].items()
         if k != "required"}
        for kind in ("process", "docker", "kubernetes")
    ]
    good = {"day": "mon", "shard": 2, "ratio": 1, "on": False, "when": "2024-01-01", "names": ["a"],
            "extra": {"k": [1]}, "mode": "b", "color": "blue", "size": {"width": 3}, "stamp": None, "anything": [1]}
    rng = random.Random(7)
    for schema, ignore, doc in [(prepared, parameters._NOT_ASSERTED, good)] + [
        (v, pools._NOT_ASSERTED, {k: p.get("default") for k, p in v["properties"].items() if "default" in p})
        for v in variables
    ]:
        check = compile_check(schema, ignore=ignore)
        assert check is not None, "the fast path applies to the schemas plans check"
        validator = Draft202012Validator(schema)
        _agree(check, validator, doc)
        for value in mutations(doc, rng, 150):
            _agree(check, validator, value)


def test_parameter_problems_are_unchanged_by_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys import parameters

    schema = _parameter_schema()
    cases = [{"day": 1, "shard": "x"}, {"size": {"width": "wide"}, "color": "green"}, {"day": "mon", "shard": 3},
             {"on": 1, "mode": "c", "nope": 2}, {"names": "a"}]
    with_check = [parameters.check(schema, c, partial=True) for c in cases]
    monkeypatch.setattr(parameters, "_fast_check", lambda key, schema: None)  # jsonschema alone
    assert with_check == [parameters.check(schema, c, partial=True) for c in cases]
    assert [bool(p) for p in with_check] == [True, True, False, True, True]


def test_a_reference_inside_its_own_target_checks_at_every_depth() -> None:
    tree = {
        "$ref": "#/$defs/node",
        "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                                                          "n": {"type": "integer"}}, "additionalProperties": False}},
    }
    check = compile_check(tree)
    assert check is not None
    assert check({"n": 1, "kids": [{"n": 2, "kids": [{"n": 3}]}, {}]})
    assert not check({"n": 1, "kids": [{"n": 2, "kids": [{"n": "3"}]}]})
    assert not check({"kids": [{"kids": [{"other": 1}]}]})
