"""The JSON Schemas shipped in ``buildsys.schemas``: valid Draft 2020-12, faithful to the corpus of
real prefect.yaml files, and consistent with each other (step schemas, default job templates)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from buildsys.schema import checking_schema
from tests.conftest import CORPUS

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

SCHEMAS = files("buildsys.schemas")
STEP_NAMES = (
    "build_docker_image",
    "git_clone",
    "pip_install_requirements",
    "pull_from_gcs",
    "pull_from_s3",
    "push_docker_image",
    "push_to_gcs",
    "push_to_s3",
    "run_shell_script",
    "set_working_directory",
)
POOL_TYPES = ("process", "docker", "kubernetes")
PLACEHOLDER = re.compile(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}")
RESERVED_INPUTS = {"id", "requires", "needs", "inputs"}


def load(*parts: str) -> dict[str, Any]:
    node: Traversable = SCHEMAS
    for part in parts:
        node = node / part
    data: dict[str, Any] = json.loads(node.read_text(encoding="utf-8"))
    return data


def project_validator() -> Draft202012Validator:
    """The project schema as the loader uses it (unknown keys found, to be reported as warnings; the
    shipped schema allows them: see test_schema_agreement)."""
    return Draft202012Validator(checking_schema())


def step_schema(name: str) -> dict[str, Any]:
    return load("steps", f"{name}.json")


# --- findings: what the loader makes of the validation errors ------------------------------------


@dataclass(frozen=True)
class Findings:
    """Validation errors split the way the loader splits them: unknown keys are warnings unless the
    object schema says ``x-unknown-keys: error``; everything else is an error."""

    errors: list[str] = field(default_factory=list)  # "path: validator"
    unknown: list[str] = field(default_factory=list)  # "path/key" of each unknown key (warnings)


def _path(error: ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path)


def _unknown_keys(error: ValidationError) -> list[str]:
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    known = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    return [
        str(key) for key in instance if key not in known and not any(re.search(p, str(key)) for p in patterns)
    ]


def findings(validator: Draft202012Validator, doc: object) -> Findings:
    errors: list[str] = []
    unknown: list[str] = []
    for error in validator.iter_errors(doc):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        if error.validator == "additionalProperties" and schema.get("x-unknown-keys") != "error":
            prefix = _path(error)
            unknown.extend(f"{prefix}/{key}".lstrip("/") for key in _unknown_keys(error))
        else:
            errors.append(f"{_path(error)}: {error.validator}")
    return Findings(sorted(errors), sorted(unknown))


def x_message(validator: Draft202012Validator, doc: object) -> list[tuple[str, str, str | None]]:
    """(path, validator, x-message of the failing subschema) for every error."""
    result = []
    for error in validator.iter_errors(doc):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        result.append((_path(error), str(error.validator), schema.get("x-message")))
    return sorted(result, key=lambda item: (item[0], item[1]))


# --- every schema is a valid Draft 2020-12 schema --------------------------------------------------


def _all_json(node: Traversable, prefix: str = "") -> Iterator[str]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            yield from _all_json(child, f"{prefix}{child.name}/")
        elif child.name.endswith(".json"):
            yield f"{prefix}{child.name}"


OWN_SCHEMAS = ["project.schema.json", "base-job-template.schema.json"] + [
    f"steps/{n}.json" for n in STEP_NAMES
]


@pytest.mark.parametrize("rel", OWN_SCHEMAS)
def test_schema_is_valid_draft_2020_12(rel: str) -> None:
    schema = load(*rel.split("/"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _declared_schemas() -> list[str]:
    """Every shipped JSON file that says it is a JSON Schema (others, e.g. openapi.json, are not)."""
    return [rel for rel in _all_json(SCHEMAS) if "$schema" in load(*rel.split("/"))]


@pytest.mark.parametrize("rel", _declared_schemas())
def test_every_shipped_schema_is_valid_draft_2020_12(rel: str) -> None:
    Draft202012Validator.check_schema(load(*rel.split("/")))


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_template_variables_are_valid_draft_2020_12(pool_type: str) -> None:
    Draft202012Validator.check_schema(load("job-templates", f"{pool_type}.json")["variables"])


def _undescribed(schema: Mapping[str, Any], defs: Mapping[str, Any], where: str) -> Iterator[str]:
    """Properties without a description (directly or on the $defs entry they reference)."""
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, Mapping):
            continue
        target = sub
        ref = sub.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = defs[ref.removeprefix("#/$defs/")]
        if "description" not in sub and "description" not in target:
            yield f"{where}.{name}"
        yield from _undescribed(sub, defs, f"{where}.{name}")
    for key in ("items", "additionalProperties", "then"):
        sub = schema.get(key)
        if isinstance(sub, Mapping):
            yield from _undescribed(sub, defs, f"{where}[{key}]")


@pytest.mark.parametrize("rel", OWN_SCHEMAS)
def test_every_property_has_a_description(rel: str) -> None:
    schema = load(*rel.split("/"))
    defs = schema.get("$defs", {})
    missing = list(_undescribed(schema, defs, "$"))
    for name, sub in defs.items():
        missing.extend(_undescribed(sub, defs, f"$defs.{name}"))
    assert missing == []


def test_project_schema_has_the_stable_defs() -> None:
    defs = load("project.schema.json")["$defs"]
    assert {"step", "section", "deployment", "schedule", "pool"} <= set(defs)
    assert defs["schedule"]["x-unknown-keys"] == "error"


# --- the corpus of real prefect.yaml files -----------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    errors: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


YAML_ERROR = "yaml"  # rejected by the YAML parser, before any schema sees it


def _each(count: int, *keys: str) -> list[str]:
    return [f"deployments/{i}/{key}" for i in range(count) for key in keys]


# Files not listed here validate with no finding at all.
CORPUS_EXPECTED: dict[str, Expect | str] = {
# Prefect 2 keys (is_schedule_active, infra_overrides, work_queue_name, a deployment-level
# job_variables) are known to the schema: the loader maps them to their meaning, with a warning.
    "002-AhmadSaeedZaidi-pleiades.yaml": Expect(
        unknown=_each(4, "working_dir")
        + [k for i in range(4, 9) for k in (f"deployments/{i}/env", f"deployments/{i}/working_dir")]
    ),
    # invalid: `schedule` and `schedules` together (Prefect: "Both 'schedule' and 'schedules' keys...")
    "003-Alex170817blue-github_data_platform.yaml": Expect(errors=["deployments/0/schedules: not"]),
    # invalid: `deployments` is a mapping, not a list
    "005-BayoAdejare-lightning-containers.yaml": Expect(errors=["deployments: type"]),
    # invalid: unresolved git merge conflict markers
    "006-Ben-Epstein-prefect-modal.yaml": YAML_ERROR,
    "014-CLDC-OU-ExampleMessagerFlow.yaml": Expect(unknown=["deployments/0/environment"]),
    "015-DIIDRao-wa-flows.yaml": Expect(unknown=["version"]),
    "016-domoench-prefect-df.yaml": Expect(unknown=["deployments/0/work_pool/image"]),
    # invalid: a duplicate `entrypoint` key; PyYAML keeps the last one, the loader rejects it
    "034-kyletaylored-gadget-grove-demo.yaml": Expect(unknown=["version"]),
    "037-llassingan-prefect_etl.yaml": Expect(unknown=["deployments/0/logging"]),
    # invalid: a fragment (starts indented) with undefined aliases
    "047-PrefectHQ-prefect-demos.yaml": YAML_ERROR,
    "056-titabo2k-prefect-docker-compose.yaml": Expect(unknown=["env"]),
    # invalid: `schedule` is a cron string instead of a mapping
    "057-tomdncenter-automate.yaml": Expect(
        errors=["deployments/0/schedule: type"], unknown=["deployments/0/time_zone"]
    ),
}
# Tagged invalid in INDEX.tsv but only the loader can tell (PyYAML silently accepts duplicate keys).
LOADER_ONLY_INVALID = {"026-hyperrealist-srx-workflows.yaml"}


def _corpus_files() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.yaml")) if CORPUS.is_dir() else []


def _invalid_tagged(corpus_dir: Path) -> set[str]:
    rows = (corpus_dir / "INDEX.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return {row.split("\t")[0] for row in rows if "invalid" in row.split("\t")[-1].split(",")}


@pytest.mark.parametrize("name", _corpus_files())
def test_corpus_file(name: str, corpus_dir: Path) -> None:
    expected = CORPUS_EXPECTED.get(name, Expect())
    text = (corpus_dir / name).read_text(encoding="utf-8")
    if expected == YAML_ERROR:
        with pytest.raises(yaml.YAMLError):
            yaml.safe_load(text)
        return
    doc = yaml.safe_load(text)
    got = findings(project_validator(), doc)
    assert isinstance(expected, Expect)
    assert got == Findings(errors=sorted(expected.errors), unknown=sorted(expected.unknown))


def test_corpus_invalid_tags_match_what_the_schema_rejects(corpus_dir: Path) -> None:
    rejected = {
        name
        for name, exp in CORPUS_EXPECTED.items()
        if exp == YAML_ERROR or (isinstance(exp, Expect) and exp.errors)
    }
    assert _invalid_tagged(corpus_dir) == rejected | LOADER_ONLY_INVALID
    assert set(_corpus_files()) >= set(CORPUS_EXPECTED)


def _steps_of(doc: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    sections: list[Any] = [doc.get(k) for k in ("build", "push", "pull")]
    for dep in doc.get("deployments") or []:
        sections.extend(dep.get(k) for k in ("build", "push", "pull"))
    for section in sections:
        steps = [section] if isinstance(section, dict) and section else section or []
        for item in steps:
            yield from item.items()


def _step_by_alias() -> dict[str, str]:
    table = {}
    for name in STEP_NAMES:
        table[name] = name
        for alias in step_schema(name)["x-aliases"]:
            table[alias] = name
    return table


def test_corpus_step_inputs_match_the_step_schemas(corpus_dir: Path) -> None:
    aliases = _step_by_alias()
    problems: list[str] = []
    custom: list[str] = []
    for path in sorted(corpus_dir.glob("*.yaml")):
        expected = CORPUS_EXPECTED.get(path.name)
        if expected == YAML_ERROR or (isinstance(expected, Expect) and expected.errors):
            continue
        for step_name, inputs in _steps_of(yaml.safe_load(path.read_text(encoding="utf-8"))):
            if step_name not in aliases:
                custom.append(f"{path.name}: {step_name}")
                continue
            validator = Draft202012Validator(step_schema(aliases[step_name]))
            problems.extend(f"{path.name}: {step_name}: {e.message}" for e in validator.iter_errors(inputs))
    assert custom == ["048-PrefectHQ-prefect-recipes.yaml: retrieve_secrets.main"]
    assert problems == []


def test_invalid_corpus_step_inputs_are_reported(corpus_dir: Path) -> None:
    doc = yaml.safe_load((corpus_dir / "057-tomdncenter-automate.yaml").read_text(encoding="utf-8"))
    inputs = doc["build"][0]["prefect.deployments.steps.git_clone"]
    got = findings(Draft202012Validator(step_schema("git_clone")), inputs)
    assert got == Findings(unknown=["directory"])


# --- the project schema on hand-written documents ----------------------------------------------------


def check(doc: object) -> Findings:
    return findings(project_validator(), doc)


def test_full_buildsys_project_validates() -> None:
    doc = yaml.safe_load(
        """
prefect-version: "3.9.1"
name: demo
x-shared: &pool {name: local}
buildsys:
  project: github.com/acme/demo
  recipe: {source: local, name: local, commit: null, subdir: null, fields: {name: demo}}
work_pools:
  - name: local
    type: process
    description: flows on this machine
    concurrency_limit: 4
    paused: false
    job_variables: {env: {LOG_LEVEL: INFO}}
    queues:
      - {name: urgent, priority: 1, concurrency_limit: 2, description: now, paused: false}
  - name: k8s
    type: kubernetes
    concurrency_limit: null
    base_job_template: {}
variables:
  region: eu-west-1
  limits: {cpu: 2}
  flag-2: true
build:
  - prefect.deployments.steps.run_shell_script:
      id: sha
      script: git rev-parse --short HEAD
      stream_output: false
      inputs: ["src/**/*.py"]
  - build_docker_image:
      id: img
      requires: [prefect-docker>=0.7]
      needs: [sha]
      image_name: registry.example.com/flows
      tag: "{{ sha.stdout }}"
push:
  push_docker_image: {image_name: "{{ img.image_name }}"}
pull: {}
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    version: "{{ sha.stdout }}"
    version_type: vcs:git
    tags: "{{ sha.stdout }}"
    paused: true
    enforce_parameter_schema: false
    concurrency_limit: {limit: 2, collision_strategy: CANCEL_NEW, grace_period_seconds: 600}
    parameters: {day: today}
    schedules:
      - {cron: "0 2 * * *", timezone: Europe/Paris, day_or: false, active: "{{ $ACTIVE }}", slug: nightly}
      - {interval: PT10M, anchor_date: "2026-01-01T00:00:00Z"}
      - {interval: "01:30:00"}
      - {rrule: "FREQ=DAILY", parameters: {day: yesterday}, replaces: old}
    work_pool: {<<: *pool, work_queue_name: urgent, job_variables: {env.FOO: "1"}}
    triggers:
      - type: compound
        require: all
        within: 60
        triggers:
          - {type: event, expect: [prefect.flow-run.Completed], match: {prefect.resource.id: x}}
          - {type: metric, metric: {name: lateness, threshold: 1, operator: ">", range: 60}}
      - {enabled: "{{ prefect.variables.on }}", parameters: {x: "{{ event.payload.x }}"}}
    sla: []
    pull: []
"""
    )
    assert check(doc) == Findings()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # Prefect rejects a float version (the whole file is skipped): a string is required.
        ({"prefect-version": 3.1}, ["prefect-version: type"]),
        ({"deployments": [{"name": "a", "version": 1.0}]}, ["deployments/0/version: type"]),
        ({"deployments": [{"name": "a", "tags": [2024]}]}, ["deployments/0/tags/0: type"]),
        ({"deployments": [{"name": 7}]}, ["deployments/0/name: type"]),
        ({"deployments": [{"name": "a", "paused": "yes"}]}, ["deployments/0/paused: type"]),
        (
            {"deployments": [{"name": "a", "concurrency_limit": 0}]},
            ["deployments/0/concurrency_limit: minimum"],
        ),
        (
            {"deployments": [{"name": "a", "concurrency_limit": {"limit": 2}}]},
            ["deployments/0/concurrency_limit: required"],
        ),
        (
            {"deployments": [{"name": "a", "concurrency_limit": {"limit": 1, "collision_strategy": "DROP"}}]},
            ["deployments/0/concurrency_limit/collision_strategy: enum"],
        ),
        (
            {
                "deployments": [
                    {
                        "name": "a",
                        "concurrency_limit": {
                            "limit": 1,
                            "collision_strategy": "ENQUEUE",
                            "grace_period_seconds": 30,
                        },
                    }
                ]
            },
            ["deployments/0/concurrency_limit/grace_period_seconds: minimum"],
        ),
        ({"deployments": {"name": "a"}}, ["deployments: type"]),
        ({"build": "echo hi"}, ["build: type"]),
        ({"work_pools": [{"name": "p", "type": ""}]}, ["work_pools/0/type: minLength"]),  # which types: the registry
        ({"work_pools": [{"name": "p"}]}, ["work_pools/0: required"]),
        (
            {"work_pools": [{"name": "p", "type": "process", "concurrency_limit": -1}]},
            ["work_pools/0/concurrency_limit: minimum"],
        ),
        (
            {"work_pools": [{"name": "p", "type": "process", "queues": [{"name": "q", "priority": 0}]}]},
            ["work_pools/0/queues/0/priority: minimum"],
        ),
        (
            {"work_pools": [{"name": "p", "type": "docker", "base_job_template": {"job_configuration": {}}}]},
            ["work_pools/0/base_job_template: required"],
        ),
        ({"buildsys": {"recipe": {"name": "x"}}}, ["buildsys/recipe: required"]),
        ({"buildsys": {"project": 3}}, ["buildsys/project: type"]),
        ({"pull": [{"git_clone": {"id": 3}}]}, ["pull/0/git_clone/id: type"]),
        ({"pull": [{"git_clone": {"needs": "clone"}}]}, ["pull/0/git_clone/needs: type"]),
        ({"pull": [{"git_clone": {"inputs": [1]}}]}, ["pull/0/git_clone/inputs/0: type"]),
        ({"pull": [{"git_clone": {"requires": 2}}]}, ["pull/0/git_clone/requires: type"]),
        ({"pull": [{}]}, ["pull/0: minProperties"]),
        ({"deployments": [{"name": "a", "schedules": [{}]}]}, ["deployments/0/schedules/0: anyOf"]),
        (
            {"deployments": [{"name": "a", "schedules": [{"interval": 0}]}]},
            ["deployments/0/schedules/0/interval: exclusiveMinimum"],
        ),
        (
            {"deployments": [{"name": "a", "schedules": [{"interval": "10 minutes"}]}]},
            ["deployments/0/schedules/0/interval: pattern"],
        ),
        ({"deployments": [{"name": "a", "triggers": {"type": "event"}}]}, ["deployments/0/triggers: type"]),
        (
            {"deployments": [{"name": "a", "triggers": [{"type": "compound"}]}]},
            ["deployments/0/triggers/0: required"],
        ),
        (
            {"deployments": [{"name": "a", "triggers": [{"type": "timer"}]}]},
            ["deployments/0/triggers/0/type: enum"],
        ),
    ],
)
def test_project_schema_errors(doc: object, expected: list[str]) -> None:
    assert check(doc).errors == expected


def test_sections_accept_every_shape_prefect_accepts() -> None:
    step = {"prefect.deployments.steps.set_working_directory": {"directory": "/opt"}}
    shapes: list[object] = [None, [], {}, [step], step, [{"my.module.fn": {}}]]
    for section in shapes:
        doc = {
            "build": section,
            "push": section,
            "pull": section,
            "deployments": [{"name": "a", "pull": section}],
        }
        assert check(doc) == Findings(), section


def test_top_level_extras_prefect_ignores_are_accepted() -> None:
    doc = {"definitions": {"a": 1}, "x-anchors": [1], "description": "recipe", "required_inputs": {"k": "v"}}
    assert check(doc) == Findings()


def test_unknown_keys_are_warnings_except_in_schedules() -> None:
    doc = {
        "nmae": "p",
        "deployments": [
            {
                "name": "a",
                "work_poll": {"name": "x"},
                "work_pool": {"name": "x", "queue": "q"},
                "schedules": [{"cron": "* * * * *", "max_scheduled_runs": 3}],
            }
        ],
        "work_pools": [{"name": "p", "type": "process", "queues": [{"name": "q", "prio": 1}]}],
        "buildsys": {"recipe": {"source": "local", "field": {}}, "projct": "x"},
    }
    assert check(doc) == Findings(
        errors=["deployments/0/schedules/0: additionalProperties"],
        unknown=[
            "buildsys/projct",
            "buildsys/recipe/field",
            "deployments/0/work_poll",
            "deployments/0/work_pool/queue",
            "nmae",
            "work_pools/0/queues/0/prio",
        ],
    )


def test_legacy_schedule_fields_are_accepted() -> None:
    item = {
        "cron": "0 0 * * *",
        "timezone": None,
        "day_or": True,
        "active": True,
        "max_active_runs": None,
        "catchup": False,
    }
    assert check({"deployments": [{"name": "a", "schedules": [item]}]}) == Findings()


def test_messages_for_the_loader() -> None:
    """Where a raw jsonschema message would puzzle people, the failing subschema carries x-message."""
    v = project_validator()
    assert x_message(v, {"pull": [{"git_clone": None}]}) == [
        (
            "pull/0/git_clone",
            "type",
            "a step's value must be a mapping of inputs; write `step.name: {}` for a step without inputs",
        )
    ]
    # the classic mistake: inputs not indented under the step name
    assert x_message(v, {"pull": [{"git_clone": None, "repository": "x"}]}) == [
        (
            "pull/0",
            "maxProperties",
            "a step is a mapping with exactly one key, the step name, whose value holds the inputs "
            "(indent the inputs under the name)",
        ),
        (
            "pull/0/git_clone",
            "type",
            "a step's value must be a mapping of inputs; write `step.name: {}` for a step without inputs",
        ),
        (
            "pull/0/repository",
            "type",
            "a step's value must be a mapping of inputs; write `step.name: {}` for a step without inputs",
        ),
    ]
    assert x_message(v, {"deployments": [{"schedule": {"cron": "* * * * *"}, "schedules": []}]}) == [
        (
            "deployments/0/schedules",
            "not",
            "both `schedule` and `schedules` are set; move the schedule into the `schedules` list "
            "(Prefect refuses this deployment)",
        )
    ]
    assert x_message(v, {"deployments": [{"schedules": [{"cron": "* * * * *", "rrule": "FREQ=DAILY"}]}]}) == [
        (
            "deployments/0/schedules/0/rrule",
            "type",
            "a schedule has exactly one of cron, interval or rrule; this one already has cron",
        )
    ]
    assert x_message(v, {"deployments": [{"schedules": [{"timezone": "UTC"}]}]}) == [
        ("deployments/0/schedules/0", "anyOf", "a schedule needs one of cron, interval or rrule")
    ]
    assert x_message(v, {"work_pools": [{"name": "Prefect-pool", "type": "process"}]}) == [
        ("work_pools/0/name", "pattern", 'pool names starting with "prefect" are reserved')
    ]
    assert x_message(v, {"variables": {"Bad Name": 1}}) == [
        (
            "variables",
            "pattern",
            "variable names are at most 255 characters: lowercase letters, digits, - and _",
        )
    ]


def test_null_schedule_kinds_do_not_count() -> None:
    item = {"cron": None, "interval": 60, "rrule": None}
    assert check({"deployments": [{"name": "a", "schedules": [item]}]}) == Findings()
    assert check({"deployments": [{"name": "a", "schedule": {}, "schedules": [item]}]}) == Findings()


# --- step schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STEP_NAMES)
def test_step_schema_accepts_its_example(name: str) -> None:
    schema = step_schema(name)
    assert len(schema["examples"]) == 1
    assert findings(Draft202012Validator(schema), schema["examples"][0]) == Findings()


@pytest.mark.parametrize("name", STEP_NAMES)
def test_step_schema_rejects_a_misspelt_input(name: str) -> None:
    schema = step_schema(name)
    example = dict(schema["examples"][0])
    key = next(k for k in example if k not in RESERVED_INPUTS)
    example[key[:-1]] = example.pop(key)
    errors = list(Draft202012Validator(schema).iter_errors(example))
    unknown = [e for e in errors if e.validator == "additionalProperties"]
    assert [_unknown_keys(e) for e in unknown] == [[key[:-1]]]


@pytest.mark.parametrize("name", STEP_NAMES)
def test_step_schema_annotations(name: str) -> None:
    schema = step_schema(name)
    assert schema["title"] == name
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= RESERVED_INPUTS
    assert all(schema["properties"][k]["x-reserved"] is True for k in RESERVED_INPUTS)
    assert schema["x-outputs"], "every step has outputs"
    for spec in schema["x-outputs"].values():
        assert set(spec) == {"type", "description"}
    assert schema["x-aliases"] and all("." in a for a in schema["x-aliases"])


def test_step_aliases_are_unique_and_cover_prefect_names() -> None:
    aliases = [a for n in STEP_NAMES for a in step_schema(n)["x-aliases"]]
    assert len(aliases) == len(set(aliases))
    assert {
        "prefect.deployments.steps.git_clone",
        "prefect.projects.steps.git_clone_project",
        "prefect.deployments.steps.run_shell_script",
        "prefect.deployments.steps.set_working_directory",
        "prefect.deployments.steps.pip_install_requirements",
        "prefect_docker.deployments.steps.build_docker_image",
        "prefect_docker.projects.steps.build_docker_image",
        "prefect_docker.deployments.steps.push_docker_image",
        "prefect_aws.deployments.steps.push_to_s3",
        "prefect_aws.deployments.steps.pull_from_s3",
        "prefect_gcp.deployments.steps.push_to_gcs",
        "prefect_gcp.deployments.steps.pull_from_gcs",
    } <= set(aliases)


@pytest.mark.parametrize(
    ("name", "inputs", "errors"),
    [
        ("run_shell_script", {"script": "x", "stream_output": "{{ flag.value }}"}, []),
        ("run_shell_script", {"script": "x", "stream_output": "yes"}, ["stream_output: pattern"]),
        ("run_shell_script", {"script": "x", "env": "{{ prefect.blocks.json.env }}"}, []),
        ("run_shell_script", {"script": "x", "env": {"PORT": 8080}}, ["env/PORT: type"]),
        ("run_shell_script", {"stream_output": False}, [": required"]),
        ("git_clone", {"repository": "r", "commit_sha": "abc1234"}, []),
        ("git_clone", {"repository": "r", "commit_sha": "{{ sha.stdout }}"}, []),
        ("git_clone", {"repository": "r", "commit_sha": "main"}, ["commit_sha: pattern"]),
        ("git_clone", {"repository": "r", "commit_sha": "abc1234", "branch": "main"}, ["branch: type"]),
        (
            "git_clone",
            {"repository": "r", "access_token": "t", "credentials": {"token": "t"}},
            ["access_token: type"],
        ),
        ("git_clone", {"repository": "r", "include_submodules": "{{ x }}", "directories": ["a"]}, []),
        (
            "build_docker_image",
            {"image_name": "i", "dockerfile": "auto", "build_backend": "kaniko"},
            ["build_backend: enum"],
        ),
        (
            "build_docker_image",
            {
                "image_name": "i",
                "buildargs": {"A": "1"},
                "pull": False,
                "nocache": True,
                "additional_tags": "{{ t.tags }}",
            },
            [],
        ),
        (
            "push_docker_image",
            {"image_name": "i", "credentials": {"username": "u", "password": "p", "registry_url": "r"}},
            [],
        ),
        ("pip_install_requirements", {}, []),
        ("push_to_s3", {"bucket": "b"}, [": required"]),
        (
            "pull_from_gcs",
            {
                "bucket": "b",
                "folder": "f",
                "project": "p",
                "credentials": "{{ prefect.blocks.gcp-credentials.x }}",
            },
            [],
        ),
    ],
)
def test_step_input_validation(name: str, inputs: dict[str, Any], errors: list[str]) -> None:
    assert findings(Draft202012Validator(step_schema(name)), inputs).errors == errors


def test_build_docker_image_declares_prefects_inputs() -> None:
    props = set(step_schema("build_docker_image")["properties"])
    assert {
        "image_name", "tag", "dockerfile", "path", "buildargs", "platform", "additional_tags", "labels",
        "ignore_cache", "persist_dockerfile", "dockerfile_output_path", "build_backend", "pull", "nocache",
        "target", "network_mode",
    } <= props  # fmt: skip
    assert step_schema("build_docker_image")["properties"]["dockerfile"]["default"] == "Dockerfile"


# --- default job templates ----------------------------------------------------------------------------


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_template_matches_the_base_job_template_schema(pool_type: str) -> None:
    validator = Draft202012Validator(load("base-job-template.schema.json"))
    assert list(validator.iter_errors(load("job-templates", f"{pool_type}.json"))) == []


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_template_placeholders_are_declared_variables(pool_type: str) -> None:
    template = load("job-templates", f"{pool_type}.json")
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used == declared  # every placeholder declared, and every variable used


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_template_defaults_are_valid(pool_type: str) -> None:
    variables = load("job-templates", f"{pool_type}.json")["variables"]
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    assert list(Draft202012Validator(variables).iter_errors(defaults)) == []


EXPECTED_DEFAULTS = {
    "process": {"name": None, "command": None, "stream_output": True, "working_dir": None},
    "docker": {
        "command": None, "env": {}, "labels": {}, "name": None, "registry_credentials": None,
        "image_pull_policy": None, "networks": [], "network_mode": None, "auto_remove": False, "volumes": [],
        "stream_output": True, "mem_limit": None, "memswap_limit": None, "privileged": False,
        "container_create_kwargs": None,
    },
    "kubernetes": {
        "name": None, "env": {}, "labels": {}, "command": None, "annotations": {}, "namespace": "default",
        "image": None, "service_account_name": None, "image_pull_policy": "IfNotPresent", "backoff_limit": 0,
        "finished_job_ttl": None, "job_watch_timeout_seconds": None, "pod_watch_timeout_seconds": 60,
        "stream_output": True, "cluster_config": None, "cpu_request": None, "cpu_limit": None,
        "memory_request": None, "memory_limit": None,
    },
}  # fmt: skip
EXPECTED_VARIABLES = {
    "process": ["name", "env", "labels", "command", "stream_output", "working_dir"],
    "docker": [
        "command", "env", "labels", "name", "image", "registry_credentials", "image_pull_policy", "networks",
        "network_mode", "auto_remove", "volumes", "stream_output", "mem_limit", "memswap_limit", "privileged",
        "container_create_kwargs",
    ],
    "kubernetes": [
        "name", "env", "labels", "command", "annotations", "namespace", "image", "service_account_name",
        "image_pull_policy", "backoff_limit", "finished_job_ttl", "job_watch_timeout_seconds",
        "pod_watch_timeout_seconds", "stream_output", "cluster_config", "cpu_request", "cpu_limit",
        "memory_request", "memory_limit",
    ],
}  # fmt: skip


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_template_variables_and_defaults(pool_type: str) -> None:
    properties = load("job-templates", f"{pool_type}.json")["variables"]["properties"]
    assert list(properties) == EXPECTED_VARIABLES[pool_type]
    assert {k: v["default"] for k, v in properties.items() if "default" in v} == EXPECTED_DEFAULTS[pool_type]
    assert all(
        isinstance(v.get("title"), str) and isinstance(v.get("description"), str) for v in properties.values()
    )


@pytest.mark.parametrize("pool_type", ["process", "docker"])
def test_flat_job_configuration(pool_type: str) -> None:
    template = load("job-templates", f"{pool_type}.json")
    names = EXPECTED_VARIABLES[pool_type]
    expected_order = sorted(names) if pool_type == "process" else names
    assert template["job_configuration"] == {k: "{{ " + k + " }}" for k in expected_order}


def test_kubernetes_job_configuration() -> None:
    conf = load("job-templates", "kubernetes.json")["job_configuration"]
    flat = ["command", "env", "labels", "name", "annotations", "namespace"]
    tail = ["cluster_config", "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output"]
    assert list(conf) == [*flat, "job_manifest", *tail]
    assert all(conf[k] == "{{ " + k + " }}" for k in flat + tail)
    assert conf["job_manifest"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "annotations": "{{ annotations }}",
            "labels": "{{ labels }}",
            "namespace": "{{ namespace }}",
            "generateName": "{{ name }}-",
        },
        "spec": {
            "backoffLimit": "{{ backoff_limit }}",
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {
                "spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    "containers": [
                        {
                            "name": "prefect-job",
                            "env": "{{ env }}",
                            "image": "{{ image }}",
                            "imagePullPolicy": "{{ image_pull_policy }}",
                            "args": "{{ command }}",
                            "resources": {
                                "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}"},
                                "requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"},
                            },
                        }
                    ],
                }
            },
        },
    }


@pytest.mark.parametrize(
    ("template", "errors"),
    [
        ({}, []),
        (
            {
                "job_configuration": {"a": "{{ a }}"},
                "variables": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
            [],
        ),
        ({"job_configuration": {}}, [": required"]),
        ({"job_configuration": {}, "variables": {"type": "object"}}, ["variables: required"]),
        (
            {"job_configuration": {}, "variables": {"type": "array", "properties": {}}},
            ["variables/type: const"],
        ),
        (
            {"job_configuration": {}, "variables": {"properties": {"a": {"type": "nope"}}}},
            ["variables/properties/a/type: anyOf"],
        ),
        ({"job_configuration": [], "variables": {"properties": {}}}, ["job_configuration: type"]),
    ],
)
def test_base_job_template_schema(template: dict[str, Any], errors: list[str]) -> None:
    got = findings(Draft202012Validator(load("base-job-template.schema.json")), template)
    assert got == Findings(errors=errors)


def test_base_job_template_unknown_top_level_key() -> None:
    template: dict[str, Any] = {"job_configuration": {}, "variables": {"properties": {}}, "job_config": {}}
    got = findings(Draft202012Validator(load("base-job-template.schema.json")), template)
    assert got == Findings(unknown=["job_config"])
