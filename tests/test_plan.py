"""Plans are pure: desired resources + stored resources → field-level changes, JSON and text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from buildsys.desired import DesiredResource, DesiredState
from buildsys.plan import ABSENT, FieldChange, Plan, PlanError, plan
from buildsys.plan_view import render_plan, show
from buildsys.store.base import Resource
from buildsys.templating import UNKNOWN

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

SOURCE = {"commit": "c0ffee" * 6 + "abcd", "ref": None, "file": "prefect.yaml", "dirty": False}
MANAGED = frozenset({"flow_name", "name", "tags", "parameters", "job_variables", "description"})


def dep(name: str = "etl/nightly", managed: frozenset[str] = MANAGED, **spec: Any) -> DesiredResource:
    base = {"flow_name": "etl", "name": name.split("/")[1], "tags": [], "parameters": {}, "job_variables": {}}
    base["work_pool_name"] = "local"
    base["description"] = None
    return DesiredResource("deployment", name, {**base, **spec, "paused": spec.get("paused", False)}, managed)


def state(*resources: DesiredResource, partial: bool = False) -> DesiredState:
    return DesiredState("demo", SOURCE, resources, partial=partial)


POOL = Resource("pool", "local", {"type": "process"}, owner="platform")  # another project's pool


def stored(r: DesiredResource, owner: str | None = "demo", **changes: Any) -> Resource:
    return Resource(r.kind, r.name, {**json.loads(json.dumps(r.spec)), **changes}, owner=owner)


def test_create_lists_non_default_managed_fields() -> None:
    p = plan(state(dep(tags=["a"])), [], serial=0)
    (c,) = p.changes
    assert (c.action, c.address, c.owner, c.source) == ("create", "deployment etl/nightly", "demo", SOURCE)
    assert c.fields == (
        FieldChange("flow_name", ABSENT, "etl"),
        FieldChange("name", ABSENT, "nightly"),
        FieldChange("tags", ABSENT, ["a"]),
    )
    assert c.spec == {
        "flow_name": "etl",
        "name": "nightly",
        "tags": ["a"],
        "parameters": {},
        "job_variables": {},
        "description": None,
        "work_pool_name": "local",
        "paused": False,
    }
    assert p.summary == {"add": 1, "change": 0, "destroy": 0}


def test_applied_state_plans_no_changes_and_normalises_defaults() -> None:
    want = dep(tags=["a"], parameters={"n": 1})
    assert not plan(state(want), [stored(want)], serial=3).has_changes
    # None stored where the project means "empty" is not a change; "" description equals None
    assert not plan(
        state(want), [stored(want, parameters={"n": 1}, job_variables=None, description="")], serial=3
    ).has_changes


def test_update_shows_only_the_edited_fields_and_keeps_unmanaged_keys() -> None:
    want = dep(tags=["a", "b"], job_variables={"image": "x:2", "env": {"A": "1"}})
    have = stored(
        want, tags=["a"], job_variables={"image": "x:1", "env": {"A": "1", "B": "2"}}, paused=True, extra=7
    )
    (c,) = plan(state(want), [have], serial=5).changes
    assert c.action == "update"
    assert c.fields == (
        FieldChange("tags", ["a"], ["a", "b"]),
        FieldChange("job_variables.image", "x:1", "x:2"),
        FieldChange("job_variables.env.B", "2", ABSENT),
    )
    assert c.spec is not None
    assert (c.spec["paused"], c.spec["extra"]) == (True, 7)  # not declared → left as stored


def test_paused_and_schedules_only_compared_when_declared() -> None:
    undeclared = dep()
    assert not plan(
        state(undeclared), [stored(undeclared, paused=True, schedules=[{"cron": "* * * * *"}])], serial=1
    ).has_changes
    declared = dep(managed=MANAGED | {"paused"})
    (c,) = plan(state(declared), [stored(declared, paused=True)], serial=1).changes
    assert c.fields == (FieldChange("paused", True, False),)


def test_types_matter_true_is_not_one() -> None:
    want = dep(parameters={"flag": True})
    (c,) = plan(state(want), [stored(want, parameters={"flag": 1})], serial=1).changes
    assert c.fields == (FieldChange("parameters.flag", 1, True),)


def test_unknown_values_always_show_as_changes() -> None:
    want = dep(tags=[UNKNOWN])
    (c,) = plan(state(want), [stored(dep(tags=["v1"]))], serial=1).changes
    assert c.fields == (FieldChange("tags", ["v1"], [UNKNOWN]),)


def test_lists_of_named_items_diff_by_name() -> None:
    want = DesiredResource(
        "pool",
        "p",
        {"type": "process", "queues": [{"name": "a", "priority": 3}, {"name": "b", "priority": 2}]},
        frozenset({"type", "queues"}),
    )
    have = Resource(
        "pool",
        "p",
        {"type": "process", "queues": [{"name": "a", "priority": 1}, {"name": "b", "priority": 2}]},
        owner="demo",
    )
    (c,) = plan(state(want), [have], serial=1).changes
    assert c.fields == (FieldChange("queues[a].priority", 1, 3),)


def test_prune_deletes_only_this_projects_resources_deployments_first() -> None:
    keep = dep("etl/keep")
    actual = [
        stored(keep),
        stored(dep("etl/gone")),
        Resource("pool", "old-pool", {"type": "process"}, owner="demo"),
        stored(dep("etl/theirs"), owner="other"),
        stored(dep("etl/unowned"), owner=None),
    ]
    without = plan(state(keep), actual, serial=9)
    assert (without.changes, without.orphans) == ((), ("deployment etl/gone", "pool old-pool"))
    pruned = plan(state(keep), actual, serial=9, prune=True)
    assert [(c.action, c.address) for c in pruned.changes] == [
        ("delete", "deployment etl/gone"),
        ("delete", "pool old-pool"),
    ]
    assert pruned.orphans == ()


def test_prune_of_a_partial_selection_is_refused() -> None:
    with pytest.raises(PlanError, match="--prune needs the whole project"):
        plan(state(dep(), partial=True), [], serial=0, prune=True)
    # and a partial plan never calls unselected deployments orphans
    assert plan(state(dep(), partial=True), [stored(dep("etl/other"))], serial=0).orphans == ()


def test_taking_over_a_resource_of_another_project_is_shown() -> None:
    want = dep()
    p = plan(state(want), [stored(want, owner="other"), POOL], serial=2)
    (c,) = p.changes
    assert (c.action, c.fields, c.previous_owner) == ("update", (), "other")
    assert p.warnings == (
        "warning: deployment etl/nightly is owned by project 'other'; applying makes 'demo' its owner",
    )


def test_order_is_variables_pools_deployments_then_deletions() -> None:
    resources = (
        dep("f/b"),
        DesiredResource("pool", "p", {"type": "process"}, frozenset({"type"})),
        DesiredResource("variable", "v", {"value": 1}, frozenset({"value"})),
        dep("f/a"),
    )
    p = plan(
        state(*resources), [Resource("variable", "old", {"value": 0}, owner="demo")], serial=0, prune=True
    )
    assert [(c.action, c.address) for c in p.changes] == [
        ("create", "variable v"),
        ("create", "pool p"),
        ("create", "deployment f/a"),
        ("create", "deployment f/b"),
        ("delete", "variable old"),
    ]


def test_json_round_trip_keeps_unknowns_and_detects_edits() -> None:
    p = plan(state(dep(tags=[UNKNOWN])), [stored(dep("etl/gone"))], serial=4, prune=True, store="s.db")
    data = json.loads(p.to_json())
    assert (
        data["hash"] == p.hash
        and data["serial"] == 4
        and data["summary"] == {"add": 1, "change": 0, "destroy": 1}
    )
    assert data["changes"][0]["after"]["tags"] == [{"$unknown": "(known after build)"}]
    back = Plan.from_dict(data)
    assert back == p
    data["changes"][0]["after"]["tags"] = ["sneaky"]
    with pytest.raises(PlanError, match="modified after it was made"):
        Plan.from_dict(data)
    with pytest.raises(PlanError, match="format_version None, expected 1"):
        Plan.from_dict({"serial": 1})


def test_text_rendering_whole_output() -> None:
    want = dep(
        tags=["a", "b"],
        parameters={"n": 2},
        job_variables={
            "env": {"T": "{{ $TOKEN }}", "password": "hunter2", "A": "x-{{ prefect.blocks.secret.k }}"}
        },
    )
    have = stored(dep(tags=["a"], parameters={"n": 1}))
    new = DesiredResource("variable", "region", {"value": "eu"}, frozenset({"value"}))
    p = plan(state(want, new), [have, stored(dep("etl/gone")), POOL], serial=7, prune=True)
    assert render_plan(p) == (
        "Planned from prefect.yaml at c0ffeec0ffee\n"
        "\n"
        "+ create variable region\n"
        '    value: "eu"\n'
        "\n"
        "~ update deployment etl/nightly\n"
        '    tags: ["a"] → ["a", "b"]\n'
        "    parameters.n: 1 → 2\n"
        '    job_variables: {} → {"env": {"T": (sensitive: $TOKEN), "password": (sensitive value), '
        '"A": "x-(sensitive: prefect.blocks.secret.k)"}}\n'
        "\n"
        "- delete deployment etl/gone\n"
        "\n"
        "Plan: 1 to add, 1 to change, 1 to destroy.\n"
    )


def test_deployments_whose_pool_nobody_declares_are_warned_about() -> None:
    lost = dep("etl/lost", work_pool_name="nowhere")
    p = plan(state(dep(), dep("etl/none", work_pool_name=None), lost), [POOL], serial=0)
    assert p.warnings == (
        "warning: deployment etl/none has no work pool (work_pool.name); no worker will run it",
        "warning: deployment etl/lost uses work pool 'nowhere', which is neither in the store nor declared here; "
        "runs wait until the pool exists",
    )
    # one warning per missing pool, however many deployments use it
    more = [dep(f"etl/lost-{i}", work_pool_name="nowhere") for i in range(7)]
    assert plan(state(*more), [POOL], serial=0).warnings == (
        "warning: 7 deployments use work pool 'nowhere' (etl/lost-0, etl/lost-1, etl/lost-2, etl/lost-3, "
        "etl/lost-4, …), which is neither in the store nor declared here; runs wait until the pool exists",
    )


def test_text_rendering_no_changes_orphans_and_colour() -> None:
    want = dep()
    p = plan(state(want), [stored(want), stored(dep("etl/gone")), POOL], serial=3)
    assert render_plan(p) == (
        "Planned from prefect.yaml at c0ffeec0ffee\n"
        "\n"
        "note: 1 resource(s) owned by 'demo' are no longer declared (plan with --prune to delete them):\n"
        "    deployment etl/gone\n"
        "\n"
        "No changes. The store matches the project (serial 3).\n"
    )
    coloured = render_plan(plan(state(dep()), [], serial=0), color=True)
    assert "\x1b[32m+ create deployment etl/nightly\x1b[0m" in coloured


def test_show_values() -> None:
    assert show(UNKNOWN) == "(known after build)"
    assert show({"image": UNKNOWN}) == '{"image": (known after build)}'
    assert show("{{ prefect.blocks.secret.gh }}") == "(sensitive: prefect.blocks.secret.gh)"
    assert show("{{ prefect.variables.region }}") == '"{{ prefect.variables.region }}"'
    assert show("x" * 300).endswith("… (302 chars; see --full or --json)")
    assert show("x" * 300, full=True) == json.dumps("x" * 300)


def test_plan_json_follows_its_schema() -> None:
    from importlib.resources import files

    from jsonschema import Draft202012Validator

    schema = json.loads((files("buildsys.schemas") / "plan.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    want = dep(tags=[UNKNOWN])
    plans = [
        plan(state(want), [], serial=0),
        plan(
            state(want),
            [stored(dep(tags=["x"]), owner="other"), stored(dep("etl/gone"))],
            serial=2,
            prune=True,
        ),
        plan(state(), [], serial=0),
    ]
    for p in plans:
        errors = [e.message for e in validator.iter_errors(json.loads(p.to_json()))]
        assert errors == []
    broken = {**json.loads(plans[0].to_json()), "serial": -1}
    assert [e.message for e in validator.iter_errors(broken)] == ["-1 is less than the minimum of 0"]


def test_new_pool_template_is_summarised_against_the_type_default() -> None:
    from buildsys.pools import base_job_template, default_job_template

    default = DesiredResource(
        "pool",
        "a",
        {"type": "process", "base_job_template": default_job_template("process")},
        frozenset({"type", "base_job_template"}),
    )
    tuned = DesiredResource(
        "pool",
        "b",
        {"type": "docker", "base_job_template": base_job_template("docker", {"image": "python:3.12"})},
        frozenset({"type", "base_job_template"}),
    )
    assert render_plan(plan(DesiredState("demo", {}, (default, tuned)), [], serial=0)) == (
        "+ create pool a\n"
        '    type: "process"\n'
        "    base_job_template: (the process default)\n"
        "\n"
        "+ create pool b\n"
        '    type: "docker"\n'
        "    base_job_template: (the docker default, changed: variables.properties.image.default)\n"
        "\n"
        "Plan: 2 to add, 0 to change, 0 to destroy.\n"
    )


def test_job_variables_are_checked_against_the_pool_template() -> None:
    from buildsys.errors import ProjectError
    from buildsys.pools import default_job_template

    pool = DesiredResource(
        "pool",
        "local",
        {"type": "process", "base_job_template": default_job_template("process")},
        frozenset({"type"}),
    )
    typo = dep(job_variables={"stream_outptu": True, "env": {"A": "{{ $A }}"}, "working_dir": "{{ $DIR }}"})
    p = plan(state(pool, typo), [], serial=0)
    assert p.warnings == (
        "warning: deployment etl/nightly: unknown job variable 'stream_outptu': the pool's template does not use it\n"
        "  at .work_pool.job_variables.stream_outptu\n"
        "  hint: did you mean 'stream_output'?",
    )
    wrong = dep(job_variables={"stream_output": "yes"})
    with pytest.raises(ProjectError) as err:
        plan(state(pool, wrong), [], serial=0)
    assert [d.message for d in err.value.problems] == [
        "deployment etl/nightly: job variable 'stream_output': 'yes' is not of type 'boolean'"
    ]


def test_parameters_are_checked_against_the_flow_signature() -> None:
    from buildsys.errors import ProjectError

    schema = {
        "title": "Parameters",
        "type": "object",
        "properties": {"day": {"title": "day", "position": 0, "type": "string"}},
    }
    typo = dep(parameter_schema=schema, parameters={"dya": "x", "day": "{{ prefect.variables.day }}"})
    assert plan(state(typo), [POOL], serial=0).warnings == (
        "warning: deployment etl/nightly: Validation failed for field 'dya'. Failure reason: the flow has no "
        "parameter 'dya'\n"
        "  at .parameters.dya\n"
        "  hint: did you mean 'day'?",
    )
    wrong = dep(parameter_schema=schema, parameters={"day": 3})
    with pytest.raises(ProjectError) as err:
        plan(state(wrong), [POOL], serial=0)
    assert [(d.message, d.hint) for d in err.value.problems] == [
        (
            "deployment etl/nightly: Validation failed for field 'day'. Failure reason: 3 is not valid under any of the given schemas",
            "fix the value, or set `enforce_parameter_schema: false` on the deployment",
        )
    ]
    relaxed = dep(parameter_schema=schema, parameters={"day": 3}, enforce_parameter_schema=False)
    assert plan(state(relaxed), [POOL], serial=0).warnings == ()


def test_yaml_dates_are_planned_as_iso_text() -> None:
    import datetime

    want = dep(parameters={"start": datetime.date(2024, 1, 31), "at": datetime.datetime(2024, 1, 31, 2, 30)})
    (c,) = plan(state(want), [POOL], serial=0).changes
    assert c.spec is not None and c.spec["parameters"] == {"start": "2024-01-31", "at": "2024-01-31T02:30:00"}
    applied = Resource("deployment", "etl/nightly", c.spec, owner="demo")
    assert not plan(state(want), [applied, POOL], serial=1).has_changes
