"""The JSON Schema an editor uses (schemas/project.schema.json) and `buildsys validate` accept and refuse
the same files: every file of the corpus and generated cases (unknown keys, step inputs, wrong types).

Unknown keys are warnings for validate (Prefect ignores them), so the shipped schema allows them and
marks the objects `x-unknown-keys: warning`; the loader adds `additionalProperties: false` there in
memory to find them. Built-in steps' inputs are checked through copies of schemas/steps/*.json
embedded in the project schema (kept identical by a test here; regenerate with
`python -m tests.test_schema_agreement`). What no JSON Schema can say is listed in VALIDATE_ONLY."""

from __future__ import annotations

import copy
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from buildsys.schema import checking_schema
from buildsys.validation import validate_project

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
STEP_DEF = "inputs_of_"

# Errors validate finds that a JSON Schema cannot express (one document, no cross-references, no
# YAML source): each file that only validate refuses must match one of these.
VALIDATE_ONLY = {
    "duplicate key": re.compile(r"duplicate key '[^']+': YAML keeps only the last one"),
    "reference to a step that does not exist": re.compile(
        r"refers to step '[^']+', which does not exist here|does not match any step id or output before it"),
    # pool types are plugins (entry-point group buildsys.pool_types): what is installed decides
    "a pool type no installed plugin registers": re.compile(r"unknown work pool type '[^']+'"),
}


def validate_only(errors: list[str]) -> bool:
    return bool(errors) and all(any(rule.search(e) for rule in VALIDATE_ONLY.values()) for e in errors)


def step_schemas() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((SCHEMAS / "steps").glob("*.json"))}


def with_steps(project: dict[str, Any]) -> dict[str, Any]:
    """The project schema with each built-in step's input schema embedded and used for its names."""
    out = copy.deepcopy(project)
    defs = out["$defs"]
    for key in [k for k in defs if k.startswith(STEP_DEF)]:
        del defs[key]
    names: dict[str, Any] = {}
    for name, schema in step_schemas().items():
        defs[STEP_DEF + name] = schema
        for alias in (name, *schema.get("x-aliases", ())):
            names[alias] = {"$ref": f"#/$defs/{STEP_DEF}{name}"}
    step = defs["step"]
    rebuilt = {k: v for k, v in step.items() if k not in ("properties", "additionalProperties")}
    rebuilt["properties"] = names
    rebuilt["additionalProperties"] = step["additionalProperties"]
    defs["step"] = rebuilt
    return out


def shipped() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / "project.schema.json").read_text(encoding="utf-8"))
    return data


def test_embedded_step_schemas_are_the_shipped_ones() -> None:
    assert shipped() == with_steps(shipped()), "run `python -m tests.test_schema_agreement` to regenerate"


def test_the_shipped_schema_allows_unknown_keys_where_validate_only_warns() -> None:
    def objects(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from objects(v)
        elif isinstance(node, list):
            for v in node:
                yield from objects(v)

    project = {k: v for k, v in shipped().items() if k != "$defs"}
    project["$defs"] = {k: v for k, v in shipped()["$defs"].items() if not k.startswith(STEP_DEF)}
    for node in objects(project):
        if node.get("additionalProperties") is False:
            assert node.get("x-unknown-keys") == "error", node.get("description")
    checking = checking_schema()
    assert "properties" not in checking["$defs"]["step"]  # step inputs: validate's own check (templates, plugins)
    assert checking["additionalProperties"] is False and checking["$defs"]["deployment"]["additionalProperties"] is False


def verdicts(path: Path) -> tuple[list[str], list[str]]:
    """(what the shipped schema refuses, the errors validate reports) for one file."""
    validator = Draft202012Validator(shipped())
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        refused = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    except yaml.YAMLError as exc:
        refused = [f"not YAML: {exc}"]
    problems, _ = validate_project(path)
    return refused, [p.render() for p in problems if p.is_error]


def disagreement(path: Path) -> str | None:
    refused, errors = verdicts(path)
    if bool(refused) == bool(errors):
        return None
    if not refused and validate_only(errors):
        return None
    return f"{path.name}: schema refuses {refused[:3]}; validate errors {errors[:3]}"


def test_schema_and_validate_agree_on_the_corpus(corpus_dir: Path) -> None:
    found = [d for p in sorted(corpus_dir.glob("*.yaml")) if (d := disagreement(p))]
    assert found == []


FLOW = "def f():\n    pass\n"
BASE = """\
deployments:
  - name: d
    entrypoint: flows.py:f
"""
# (case, the text added after BASE or replacing it, whether both must refuse it)
CASES: list[tuple[str, str, bool]] = [
    ("plain", BASE, False),
    ("unknown top-level key", BASE + "nmae: x\n", False),
    ("unknown deployment key", BASE + "    work_poll: {name: p}\n", False),
    ("unknown work_pool key", BASE + "    work_pool: {name: p, queue: q}\n", False),
    ("unknown schedule key", BASE + "    schedules: [{cron: '* * * * *', max_runs: 3}]\n", True),
    ("schedules not a list", BASE + "    schedules: 3\n", True),
    ("misspelt step input", "build:\n  - prefect_docker.deployments.steps.build_docker_image:\n"
     "      image_nam: x\n      tag: t\n" + BASE, True),
    ("misspelt input, short name", "build:\n  - run_shell_script: {scrpit: echo}\n" + BASE, True),
    ("step input of the wrong type", "pull:\n  - prefect.deployments.steps.set_working_directory: {directory: 3}\n"
     + BASE, True),
    ("missing required input", "pull:\n  - prefect.deployments.steps.git_clone: {branch: main}\n" + BASE, True),
    ("templated input", "build:\n  - run_shell_script: {id: a, script: echo a}\n"
     "  - run_shell_script: {script: '{{ a.stdout }}', stream_output: true}\n" + BASE, False),
    ("reserved keys", "build:\n  - run_shell_script: {id: a, script: echo, requires: [x], needs: [], inputs: ['*.py']}\n"
     + BASE, False),
    ("a step with two names", "build:\n  - run_shell_script: {script: echo}\n    git_clone: {repository: r}\n" + BASE, True),
    ("step without inputs mapping", "build:\n  - run_shell_script:\n" + BASE, True),
    ("pool type unknown", BASE + "work_pools:\n  - {name: p, type: nomad}\n", True),  # validate only: plugins
    ("pool type not a string", BASE + "work_pools:\n  - {name: p, type: [process]}\n", True),
    ("unknown pool key", BASE + "work_pools:\n  - {name: p, type: process, prio: 1}\n", False),
]


@pytest.mark.parametrize(("case", "text", "refused"), CASES, ids=[c[0] for c in CASES])
def test_schema_and_validate_agree_on_generated_cases(tmp_path: Path, case: str, text: str, refused: bool) -> None:
    (tmp_path / "flows.py").write_text(FLOW)
    path = tmp_path / "prefect.yaml"
    path.write_text(text)
    by_schema, by_validate = verdicts(path)
    assert bool(by_validate) == refused, by_validate
    assert bool(by_schema) == refused or (not by_schema and validate_only(by_validate)), (by_schema, by_validate)


def test_a_misspelt_step_input_is_located_at_its_key(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOW)
    path = tmp_path / "prefect.yaml"
    path.write_text(textwrap.dedent("""\
        build:
          - prefect_docker.deployments.steps.build_docker_image:
              id: build
              image_nam: x
              tag: t
          - run_shell_script:
              script: echo
              stream_output: "yes please"
        """) + BASE)
    problems, _ = validate_project(path)
    assert [p.render().splitlines()[0] for p in problems if p.is_error] == [
        f"{path}:2:5: error: step prefect_docker.deployments.steps.build_docker_image: 'image_name' is a required property",
        f"{path}:4:7: error: step prefect_docker.deployments.steps.build_docker_image has no input 'image_nam'",
        f"{path}:8:7: error: step run_shell_script: stream_output: expected a value of the documented type or a single "
        "\"{{ placeholder }}\", got 'yes please'",
    ]


if __name__ == "__main__":  # regenerate the embedded step schemas
    target = SCHEMAS / "project.schema.json"
    target.write_text(json.dumps(with_steps(shipped()), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
