"""schemas/state/*.json against the records of buildsys/store/base.py: valid schemas, no drift, and
what the store produces validates."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import jsonschema
import pytest

from buildsys.store.base import Change, FlowRun, LogLine, Resource, WorkerInfo
from buildsys.store.snapshot import SCHEMA_NAMES, schema, validator
from buildsys.store.sql import SqlStore
from tests.store.contract import seed

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "state"
RECORDS = {"resource": Resource, "change": Change, "flow_run": FlowRun, "log_line": LogLine, "worker": WorkerInfo}


def test_every_state_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert sorted(p.stem for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        document = json.loads((SCHEMAS / f"{name}.json").read_text())
        jsonschema.Draft202012Validator.check_schema(document)
        assert document["$id"] == f"https://buildsys.dev/schemas/state/{name}.json"


def record_fields(cls: type) -> dict[str, bool]:
    """A record's fields and whether each is required (no default): a dataclass's, or a
    buildsys.records.Record's from its `__init__`."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                for f in dataclasses.fields(cls)}
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default is p.empty for p in params}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_schema_properties_match_the_record_fields(name: str) -> None:
    fields = record_fields(RECORDS[name])
    assert sorted(schema(name)["properties"]) == sorted(fields)
    assert sorted(schema(name)["required"]) == sorted(n for n, required in fields.items() if required)


def test_what_the_store_produces_validates(tmp_path: Path) -> None:
    with SqlStore.sqlite(tmp_path / "state.db") as store:
        seed(store, nightly={})
        run = store.create_run("etl/nightly", tags=["a"])
        store.claim_runs("local", "w1")
        store.append_logs(run.id, [(1.0, "stdout", "hi")])
        validator("export").validate(store.export())
        for resource in store.list_resources():
            validator("resource").validate(resource.to_dict())
        record = store.get_run(run.id).to_dict()
        record["tags"] = list(record["tags"])
        validator("flow_run").validate(record)
        validator("log_line").validate(store.read_logs(run.id)[0].to_dict())
        validator("worker").validate(store.list_workers()[0].to_dict())


def test_change_schema_requires_a_spec_except_for_deletes() -> None:
    check = validator("change")
    check.validate(Change("delete", "pool", "local").to_dict())
    check.validate(Change("create", "pool", "local", {"type": "process"}).to_dict())
    errors = [e.message for e in check.iter_errors(Change("update", "pool", "local").to_dict())]
    assert errors == ["None is not of type 'object'"]
