"""buildsys.records.Record behaves as the frozen dataclass it replaces (compared, hashed, shown,
refused assignment, pickled and copied the same), and every Record's `__init__` takes its fields in
`__match_args__` order, which pickling relies on."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from pathlib import Path
from typing import Any

import pytest

from buildsys.desired import DesiredResource
from buildsys.entrypoints import Entrypoint, FlowInfo
from buildsys.errors import Diagnostic, Location
from buildsys.graph import StepNode
from buildsys.infra import Job, Outcome
from buildsys.model import (
    Deployment,
    PoolSpec,
    Project,
    QueueSpec,
    ScheduleSpec,
    StepSpec,
    VariableSpec,
    WorkPoolRef,
)
from buildsys.plan import FieldChange, ResourceChange
from buildsys.project import load_project
from buildsys.records import Record
from buildsys.registry import StepInfo
from buildsys.reporter import Event
from buildsys.store.base import (
    AppliedChanges,
    Change,
    ConcurrencyLimit,
    Decision,
    LogLine,
    Proposal,
    Resource,
    RunState,
    WorkerInfo,
)

RECORDS: list[type[Record]] = [Location, Diagnostic, StepSpec, ScheduleSpec, WorkPoolRef, Deployment, QueueSpec,
                               PoolSpec, VariableSpec, Job, Outcome, StepNode, StepInfo, Event, Entrypoint, FlowInfo,
                               Resource, Change, AppliedChanges, RunState, Proposal, Decision, LogLine, ConcurrencyLimit,
                               WorkerInfo, DesiredResource, FieldChange, ResourceChange, Project]


@dataclasses.dataclass(frozen=True, slots=True)
class AsDataclass:
    severity: str
    message: str
    location: Location | None = None
    path: str | None = None
    hint: str | None = None


def test_a_record_behaves_as_a_frozen_dataclass() -> None:
    where = Location("prefect.yaml", 3, 5)
    record, twin = Diagnostic("error", "bad", where, hint="fix"), AsDataclass("error", "bad", where, hint="fix")
    assert repr(record) == repr(twin).replace("AsDataclass", "Diagnostic")
    assert record == Diagnostic("error", "bad", Location("prefect.yaml", 3, 5), None, "fix")
    assert record != Diagnostic("error", "bad", where) and record != twin and record != ("error", "bad", where, None, "fix")
    assert hash(record) == hash(twin) == hash(("error", "bad", where, None, "fix"))
    assert len({record, Diagnostic("error", "bad", where, hint="fix")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'message'"):
        record.message = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'hint'"):
        del record.hint
    for again in (pickle.loads(pickle.dumps(record)), copy.copy(record), copy.deepcopy(record)):
        assert again == record and type(again) is Diagnostic
    match record:
        case Diagnostic(severity, message, Location(file, line, col)):
            assert (severity, message, file, line, col) == ("error", "bad", "prefect.yaml", 3, 5)
        case _:
            pytest.fail("no match")
    assert not hasattr(record, "__dict__")


def test_defaults_that_are_mappings_are_new_for_each_record() -> None:
    a, b = Deployment("a", 0, None, "deployments[a]"), Deployment("b", 1, None, "deployments[b]")
    assert a.parameters == {} and a.parameters is not b.parameters and a.raw is not b.raw
    assert a.work_pool == WorkPoolRef() and a.work_pool is not b.work_pool
    assert a.work_pool.job_variables is not b.work_pool.job_variables
    assert isinstance(a.parameters, dict)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_init_takes_the_fields_in_match_args_order(cls: type[Record]) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params] == list(cls.__match_args__)
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
    assert cls.__slots__ == cls.__match_args__
    # built with every field given, the record round-trips through pickle as a call of the class
    values: dict[str, Any] = {p.name: ({"k": p.name} if "Mapping" in str(p.annotation) else p.name) for p in params}
    record = cls(**values)
    assert pickle.loads(pickle.dumps(record)) == record
    assert all(getattr(record, k) == v for k, v in values.items())


def test_a_store_record_round_trips_through_json_as_the_dataclass_did() -> None:
    change = Change("update", "deployment", "etl/nightly", {"tags": ("a", "b"), "n": [1, {"x": 2}]}, "me")
    plain = change.to_dict()
    assert plain == {"action": "update", "kind": "deployment", "name": "etl/nightly",
                     "spec": {"tags": ("a", "b"), "n": [1, {"x": 2}]}, "owner": "me", "source": None}
    assert plain["spec"] is not change.spec and plain["spec"]["n"][1] is not change.spec["n"][1]  # type: ignore[index]
    assert Change.from_dict({**plain, "unknown": 1}) == change
    applied = AppliedChanges.from_dict({"serial": 3, "applied_at": 1.5, "changes": [{"action": "create"}]})
    assert applied.changes == ({"action": "create"},) and isinstance(applied.changes, tuple)


def test_a_project_with_another_root_is_the_same_project_but_its_root(tmp_path: Path) -> None:
    (tmp_path / "prefect.yaml").write_text("name: shop\ndeployments:\n  - name: d\n    entrypoint: f.py:f\n")
    project = load_project(tmp_path / "prefect.yaml")
    moved = project.with_root(tmp_path / "elsewhere")
    assert moved.root == tmp_path / "elsewhere" and moved.with_root(project.root) == project
    assert [getattr(moved, n) for n in Project.__match_args__ if n != "root"] == [
        getattr(project, n) for n in Project.__match_args__ if n != "root"]


def test_a_record_must_name_its_fields() -> None:
    with pytest.raises(TypeError, match="__match_args__"):
        class Loose(Record):
            __slots__ = ("a", "b")


def test_the_model_and_errors_stay_free_of_generated_dataclasses() -> None:
    """Every process imports these modules: a frozen dataclass there costs every start-up ~1 ms
    of generated methods."""
    import buildsys.cli.app
    import buildsys.errors
    import buildsys.infra
    import buildsys.model

    modules = (buildsys.model, buildsys.errors, buildsys.infra, buildsys.cli.app)
    made = {f"{m.__name__}.{name}" for m in modules for name, value in vars(m).items()
            if isinstance(value, type) and value.__module__ == m.__name__ and dataclasses.is_dataclass(value)}
    assert made == set()
