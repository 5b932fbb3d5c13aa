"""buildsys's default base job templates against Prefect 3.9's own (the worker metadata Prefect
ships and its server hands `prefect work-pool create --type T` when the collection registry is not
reachable). Every difference is one of those listed in docs/prefect-parity.md ("Work pool
templates"); the normalisation below undoes exactly those, and anything else fails."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from buildsys.pools import default_job_template

IGNORED = {"title", "description", "example"}  # prose: written in buildsys's own words
NULL = {"type": "null"}

# variables buildsys's pool types have and Prefect 3.9's do not, and the reverse
BUILDSYS_ONLY = {"docker": {"container_create_kwargs"}, "kubernetes": {"annotations", "backoff_limit"}, "process": set()}
PREFECT_ONLY = {"docker": {"container_wait_timeout"}, "kubernetes": set(), "process": set()}


def prefect_template(pool_type: str) -> dict[str, Any]:
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.submodule_search_locations, "prefect (a test dependency) is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    views = json.loads((root / "server/api/collections_data/views/aggregate-worker-metadata.json").read_text())
    for workers in views.values():
        for worker in workers.values():
            if isinstance(worker, dict) and worker.get("type") == pool_type:
                template: dict[str, Any] = worker["default_base_job_configuration"]
                return template
    raise AssertionError(f"Prefect ships no {pool_type} worker template")


def _prose_free(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prose_free(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_prose_free(v) for v in value]
    return value


def _as_prefect_optional(prop: dict[str, Any]) -> dict[str, Any]:
    """buildsys writes an optional value as anyOf [T, null] with default null; Prefect as T with
    no default (a model reference as allOf [ref])."""
    any_of = prop.get("anyOf")
    if prop.get("default", ...) is None and isinstance(any_of, list) and len(any_of) == 2 and any_of[1] == NULL:
        rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
        inner = any_of[0]
        return {**rest, "allOf": [inner]} if "$ref" in inner else {**rest, **inner}
    return prop


def normalised(pool_type: str) -> dict[str, Any]:
    """buildsys's template with the documented deliberate differences undone."""
    template = _prose_free(copy.deepcopy(default_job_template(pool_type)))
    variables = template["variables"]
    props: dict[str, Any] = variables["properties"]
    for name in BUILDSYS_ONLY[pool_type]:
        del props[name]
        template["job_configuration"].pop(name, None)
    for name, prop in list(props.items()):
        prop = _as_prefect_optional(prop)
        if prop.get("default") in ({}, []):  # the empty value an unset variable takes, stated
            del prop["default"]
        env_values = (prop.get("additionalProperties") or {}).get("anyOf")
        if name == "env" and env_values == [{"type": "string"}, NULL]:  # null removes a pool's variable
            prop["additionalProperties"] = {"type": "string"}
        if name == "env" and "anyOf" in prop:  # kubernetes: Kubernetes' own [{name, value}] list too
            mapping = prop.pop("anyOf")[0]
            prop.update(type=mapping["type"], additionalProperties={"type": "string"})
        props[name] = prop
    if "$defs" in variables:  # JSON Schema 2020-12's keyword; Prefect's models still say definitions
        variables["definitions"] = variables.pop("$defs")
        text = json.dumps(template).replace('"#/$defs/', '"#/definitions/')
        template = json.loads(text)
    if pool_type == "kubernetes":
        manifest = template["job_configuration"]["job_manifest"]
        manifest["metadata"].pop("annotations")
        manifest["spec"]["backoffLimit"] = 0  # Prefect's fixed value; buildsys's backoff_limit default
    return template


def prefect_normalised(pool_type: str) -> dict[str, Any]:
    template = _prose_free(copy.deepcopy(prefect_template(pool_type)))
    for name in PREFECT_ONLY[pool_type]:
        del template["variables"]["properties"][name]
        template["job_configuration"].pop(name, None)
    return template


@pytest.mark.parametrize("pool_type", ["process", "docker", "kubernetes"])
def test_default_templates_differ_from_prefects_only_as_documented(pool_type: str) -> None:
    assert normalised(pool_type) == prefect_normalised(pool_type)


def test_the_differences_are_real_and_documented() -> None:
    """The normalisation is not a no-op: each listed difference exists, and the parity topic names
    each variable that one side lacks."""
    docker, kubernetes = default_job_template("docker"), default_job_template("kubernetes")
    image = docker["variables"]["properties"]["image_pull_policy"]
    assert image["default"] is None and image["anyOf"][1] == NULL
    assert "type" in prefect_template("docker")["variables"]["properties"]["image_pull_policy"]
    assert kubernetes["variables"]["properties"]["env"]["default"] == {}
    assert "default" not in prefect_template("kubernetes")["variables"]["properties"]["env"]
    create = docker["variables"]["properties"]["container_create_kwargs"]
    assert create["anyOf"][0] == {"type": "object"}  # any keys: what docker-py's create() takes
    topic = (Path(__file__).parents[1] / "buildsys/docs/prefect-parity.md").read_text()
    for names in (*BUILDSYS_ONLY.values(), *PREFECT_ONLY.values()):
        for name in names:
            assert f"`{name}`" in topic
