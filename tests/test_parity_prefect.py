"""Parity with real Prefect 3.9: the same projects deployed by `prefect deploy --all` (against the
session's Prefect server) and by `buildsys deploy`, every stored deployment field compared.

Any difference fails the test unless it is in DELIBERATE, the written list of differences buildsys
keeps on purpose (each one safer; buildsys/docs/prefect-parity.md says why). The projects are
corpus files (with small generated flow files) chosen to cover templated parameters, environment
values in job variables and pull steps, module-path entrypoints, singular and interval schedules,
concurrency, triggers, plus one written here: deploy-time templates, a flow with a rich
signature with Prefect 2 keys. Each numbered item of issue 12 has its own test below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CORPUS
from tests.parity import (
    ABSENT,
    buildsys,
    buildsys_deployments,
    buildsys_view,
    differences,
    ensure_pools,
    make_project,
    pools_of,
    prefect_deploy_all,
    prefect_deployments,
    prefect_view,
)
from tests.services.prefect import PrefectServer

pytestmark = pytest.mark.timeout(600)

UID = uuid.uuid4().hex[:6]
# Few projects on purpose: each `prefect deploy` costs seconds (the whole module runs in ~2 min).
CORPUS_FILES = (
    "029-jrussell9000-cloudpipe.yaml",  # {{ $ENV }} in parameters and job variables, ./ entrypoints
    "035-Kyytox-russia_ukraine_war_analytics_hub.yaml",  # module-path entrypoint, concurrency, anchors
    "050-PrefectHQ-prefect-recipes.yaml",  # triggers
    "058-uclh-criu-crdm-tools.yaml",  # {{ $PWD }} in a pull step, parameters, singular cron schedule
)
ENV = {
    "CLOUDPIPE_ECR_REGISTRY": "123.dkr.ecr.example",
    "CLOUDPIPE_BUCKET": "bucket-a",
    "CLOUDPIPE_METRICS_BUCKET": "bucket-m",
    "PARITY_STAGE": "staging",
    "PARITY_API_TOKEN": "tok-4f7c2e",
}

RICH_FLOW = '''
import datetime as dt
from enum import Enum
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field
from prefect import flow


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


class Level(Enum):
    LOW = 1
    HIGH = 2


class Inner(BaseModel):
    x: int
    tags: list[str] = []


class Config(BaseModel):
    """How to run."""

    name: str
    size: int = Field(3, description="how many")
    inner: Inner | None = None
    color: Color = Color.RED


@flow(name="rich-UID", version="2.1")
def rich(
    when: dt.date,
    n: int = 1,
    ratio: float = 0.5,
    names: list[str] = ["a"],
    pairs: dict[str, int] | None = None,
    maybe: Optional[str] = None,
    either: Union[int, str] = 1,
    mode: Literal["fast", "slow"] = "fast",
    at: dt.datetime | None = None,
    color: Color = Color.BLUE,
    level: Level = Level.LOW,
    config: Config | None = None,
    point: tuple[int, str] = (1, "a"),
    many: tuple[int, ...] = (),
    anything: Any = None,
    *,
    flag: bool = False,
    **extra: int,
):
    """A flow with a rich signature.

    Args:
        when: the day to process
        n: how many times,
            on two lines
        config: the run's configuration
    """
'''.replace("UID", UID)

TEMPLATES = f"""
name: parity-templates-{UID}
variables:
  parity_region_{UID}: eu-west-1   # buildsys reads it here; Prefect from its API (created by the test)
build:
  - prefect.deployments.steps.run_shell_script:
      id: tag
      script: echo v42
      stream_output: false
deployments:
  - name: templated
    entrypoint: flows/templated.py:templated
    parameters:
      region: "{{{{ prefect.variables.parity_region_{UID} }}}}"
      stage: "{{{{ $PARITY_STAGE }}}}"
      build_tag: "{{{{ tag.stdout }}}}"
      label: "r-{{{{ prefect.variables.parity_region_{UID} }}}}-{{{{ $PARITY_STAGE }}}}"
      n: 3
    tags: [a, "{{{{ $PARITY_STAGE }}}}"]
    version: "{{{{ tag.stdout }}}}"
    work_pool:
      name: parity-pool-{UID}
      job_variables:
        env: {{STAGE: "{{{{ $PARITY_STAGE }}}}", UPSTREAM: "{{{{ $PARITY_API_TOKEN }}}}"}}
    pull:
      - prefect.deployments.steps.set_working_directory:
          directory: "/srv/{{{{ $PARITY_STAGE }}}}/app"
    schedules:
      - cron: "0 2 * * *"
      - interval: 600
        anchor_date: "2024-01-01T00:00:00+02:00"
        timezone: Europe/Paris
      - rrule: "FREQ=DAILY;BYHOUR=3"
        parameters: {{n: 4}}
      - interval: 3600
    concurrency_limit: {{limit: 2, collision_strategy: CANCEL_NEW}}
  - name: rich
    entrypoint: flows/rich.py:rich
    parameters: {{when: "2024-01-31", config: {{name: x}}}}
    work_pool: {{name: parity-pool-{UID}}}
  - name: rich-by-module
    entrypoint: flows.rich.rich
    enforce_parameter_schema: false
    work_pool: {{name: parity-pool-{UID}}}
  - name: legacy  # Prefect 2 keys
    entrypoint: flows/legacy.py:legacy
    is_schedule_active: false
    schedule: {{cron: "0 3 * * *", timezone: UTC, active: false}}
    work_queue_name: legacy-queue
    work_pool: {{name: parity-pool-{UID}}}
"""


@dataclass(frozen=True)
class Deliberate:
    """A difference buildsys keeps on purpose (each is explained in buildsys/docs/prefect-parity.md)."""

    name: str
    applies: Callable[[str, str, str, Any, Any], bool]  # (project, deployment, path, prefect, buildsys)


DELIBERATE = (
    Deliberate(
        "entrypoints are stored without a leading ./ (one flow, one spelling: no plan churn)",
        lambda _p, _d, path, theirs, mine: path == "entrypoint" and theirs == f"./{mine}",
    ),
    Deliberate(
        "an interval without anchor_date is anchored at the deployment's creation, not at every deploy",
        lambda _p, _d, path, theirs, mine: re.fullmatch(r"schedules\[\d+\]\.anchor_date", path) is not None
        and mine is ABSENT
        and isinstance(theirs, str),
    ),
    Deliberate(
        "Prefect 2's `is_schedule_active: false` means paused (Prefect 3 ignores the key)",
        lambda _p, dep, path, theirs, mine: dep.endswith("/legacy") and path == "paused" and (theirs, mine) == (False, True),
    ),
    Deliberate(
        "Prefect 2's deployment-level `work_queue_name` is the work queue (Prefect 3 ignores the key)",
        lambda _p, dep, path, theirs, mine: dep.endswith("/legacy")
        and path == "work_queue_name"
        and (theirs, mine) == ("default", "legacy-queue"),
    ),
)


@dataclass
class Deployed:
    prefect: dict[str, dict[str, Any]]  # "flow/deployment" → Prefect's deployment
    mine: dict[str, dict[str, Any]]  # "flow/deployment" → buildsys's stored spec
    projects: dict[str, Path]  # project name → directory
    owner: dict[str, str]  # "flow/deployment" → project name
    outputs: dict[str, str]  # buildsys deploy output per project


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    base = tmp_path_factory.mktemp("parity")
    projects: dict[str, Path] = {}
    for name in CORPUS_FILES:
        text = (CORPUS / name).read_text(encoding="utf-8")
        projects[name[:3]] = make_project(text, base / name[:3], suffix=f"-{UID}")
    projects["templates"] = make_project(
        TEMPLATES, base / "templates", suffix=f"-{UID}", extra_files={"flows/rich.py": RICH_FLOW}
    )
    env = {**ENV, "PWD": str(base)}
    with httpx.Client(base_url=prefect_server.api_url, timeout=30) as client:
        made = client.post("/variables/", json={"name": f"parity_region_{UID}", "value": "eu-west-1"})
        assert made.status_code == 201, made.text
    ensure_pools(prefect_server, set().union(*(pools_of(p) for p in projects.values())))
    codes, output = prefect_deploy_all(prefect_server, projects.values(), env, base / "prefect-home")
    assert set(codes.values()) == {0}, output[-6000:]
    mine: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for name, project in projects.items():
        state = base / f"{name}.db"
        ran = buildsys(project, state, env, "deploy")
        assert ran.returncode == 0, ran.stderr
        outputs[name] = ran.stdout + ran.stderr
        for key, spec in buildsys_deployments(state).items():
            mine[key] = spec
            owner[key] = name
    prefect = prefect_deployments(prefect_server, {k.split("/", 1)[0] for k in mine})
    return Deployed(prefect, mine, projects, owner, outputs)


def _unexplained(deployed: Deployed, key: str) -> list[str]:
    project = deployed.owner[key]
    theirs, mine = prefect_view(deployed.prefect[key]), buildsys_view(deployed.mine[key])
    out = []
    for path, a, b in differences(theirs, mine):
        if not any(d.applies(project, key, path, a, b) for d in DELIBERATE):
            out.append(f"{key} {path}: prefect {json.dumps(a, default=str)} / buildsys {json.dumps(b, default=str)}")
    return out


def test_every_stored_field_matches_prefect_except_the_deliberate_differences(deployed: Deployed) -> None:
    assert sorted(deployed.prefect) == sorted(deployed.mine)
    assert len(deployed.mine) == 14
    problems = [p for key in sorted(deployed.mine) for p in _unexplained(deployed, key)]
    assert problems == []


def test_each_deliberate_difference_is_seen_and_documented(deployed: Deployed) -> None:
    """The list is not dead weight: every entry explains a difference that really occurs, and the
    help topic names it."""
    seen = set()
    for key in deployed.mine:
        theirs, mine = prefect_view(deployed.prefect[key]), buildsys_view(deployed.mine[key])
        for path, a, b in differences(theirs, mine):
            seen |= {d.name for d in DELIBERATE if d.applies(deployed.owner[key], key, path, a, b)}
    assert seen == {d.name for d in DELIBERATE}
    doc = (Path(__file__).parent.parent / "buildsys" / "docs" / "prefect-parity.md").read_text(encoding="utf-8")
    for d in DELIBERATE:
        assert d.name.split(" (")[0] in doc, d.name


# --- item 1: templates in parameters ----------------------------------------------------------------


def _by_deployment(deployed: Deployed, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    key = next(k for k in deployed.mine if k.split("/", 1)[1] == name and deployed.owner[k] == "templates")
    return prefect_view(deployed.prefect[key]), buildsys_view(deployed.mine[key])


def test_item1_parameters_are_rendered_like_prefect(deployed: Deployed) -> None:
    theirs, mine = _by_deployment(deployed, "templated")
    assert mine["parameters"] == theirs["parameters"] == {
        "region": "eu-west-1",
        "stage": "staging",
        "build_tag": "v42",
        "label": "r-eu-west-1-staging",
        "n": 3,
    }
    assert mine["tags"] == theirs["tags"] == ["a", "staging"]
    assert mine["version"] == theirs["version"] == "v42"


def test_item1_an_undefined_variable_in_parameters_is_a_located_error(tmp_path: Path) -> None:
    project = make_project(
        "deployments:\n"
        "  - name: d\n"
        "    entrypoint: f.py:f\n"
        "    parameters: {region: '{{ prefect.variables.nowhere }}'}\n",
        tmp_path / "p",
        extra_files={"f.py": "def f(region: str = 'x'): ...\n"},
    )
    ran = buildsys(project, tmp_path / "s.db", {}, "plan")
    assert (ran.returncode, ran.stderr) == (
        1,
        "prefect.yaml:2:5: error: variable 'nowhere' is not defined (used as {{ prefect.variables.nowhere }})\n"
        "  at deployments[d].parameters\n"
        "  hint: declare it under `variables:` in the project file\n",
    )


# --- item 2: environment values at plan time --------------------------------------------------------


def test_item2_environment_values_are_resolved_when_planning_like_prefect(deployed: Deployed) -> None:
    theirs, mine = _by_deployment(deployed, "templated")
    assert mine["job_variables"] == theirs["job_variables"] == {"env": {"STAGE": "staging", "UPSTREAM": "tok-4f7c2e"}}
    assert mine["pull_steps"] == theirs["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/staging/app"}}
    ]
    for key in deployed.mine:  # 029 (parameters, image names in job variables), 058 ($PWD pull)
        if deployed.owner[key] in ("029", "058"):
            t, m = prefect_view(deployed.prefect[key]), buildsys_view(deployed.mine[key])
            assert (m["job_variables"], m["pull_steps"], m["parameters"]) == (
                t["job_variables"],
                t["pull_steps"],
                t["parameters"],
            ), key
            assert "{{" not in json.dumps([m["job_variables"], m["pull_steps"], m["parameters"]])


def test_item2_a_secret_looking_value_is_stored_with_a_warning_and_masked(deployed: Deployed) -> None:
    out = deployed.outputs["templates"]
    assert "the value of $PARITY_API_TOKEN (a secret, by its name) is resolved now and stored" in out
    assert "`{{ prefect.blocks.secret.parity-api-token }}`" in out
    assert "(sensitive: $PARITY_API_TOKEN)" in out
    assert "tok-4f7c2e" not in out


def test_item2_an_unset_variable_is_a_located_plan_error(tmp_path: Path) -> None:
    project = make_project(
        "deployments:\n"
        "  - name: d\n"
        "    entrypoint: f.py:f\n"
        "    pull:\n"
        "      - prefect.deployments.steps.set_working_directory:\n"
        "          directory: '{{ $PARITY_UNSET_DIR }}'\n",
        tmp_path / "p",
        extra_files={"f.py": "def f(): ...\n"},
    )
    env = {k: v for k, v in os.environ.items() if k != "PARITY_UNSET_DIR"}
    ran = buildsys(project, tmp_path / "s.db", env, "plan")
    assert (ran.returncode, ran.stderr) == (
        1,
        "prefect.yaml:5:9: error: environment variable PARITY_UNSET_DIR is not set (used as {{ $PARITY_UNSET_DIR }})\n"
        "  at deployments[d].pull[0]\n"
        "  hint: export PARITY_UNSET_DIR=… before planning: environment values are resolved at plan time, as "
        "`prefect deploy` resolves them\n",
    )


# --- item 3: enforce_parameter_schema -------------------------------------------------------------


def test_item3_enforcement_defaults_to_true_and_runs_are_refused_with_prefects_message(
    deployed: Deployed, prefect_server: PrefectServer
) -> None:
    key = next(k for k in deployed.mine if k.endswith("/templated"))
    assert deployed.mine[key]["enforce_parameter_schema"] is True
    assert deployed.prefect[key]["enforce_parameter_schema"] is True
    with httpx.Client(base_url=prefect_server.api_url, timeout=30) as client:
        refused = client.post(
            f"/deployments/{deployed.prefect[key]['id']}/create_flow_run", json={"parameters": {"n": "x"}}
        )
    assert refused.status_code == 409
    prefect_message = refused.json()["detail"].removeprefix("Error creating flow run: ")
    project = deployed.projects["templates"]
    state = project.parent / "templates.db"
    ran = buildsys(project, state, {}, "run", "templated", "-p", "n=\"x\"")
    assert ran.returncode == 1
    assert ran.stderr.splitlines()[0] == f"error: deployment {key}: {prefect_message}"
    assert prefect_message == "Validation failed for field 'n'. Failure reason: 'x' is not of type 'integer'"
    unknown = buildsys(project, state, {}, "run", "templated", "-p", "regoin=x")
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines() == [
        f"error: deployment {key}: Validation failed for field 'regoin'. Failure reason: the flow has no parameter 'regoin'",
        "  hint: did you mean 'region'?; the flow takes (region: string | null, stage: string | null, build_tag: string | null, "
        "label: string | null, n: integer)",
    ]
    listed = buildsys(project, state, {}, "--json", "runs", "ls")
    assert json.loads(listed.stdout) == []  # refused before any run was created


# --- item 4: parameter schemas ----------------------------------------------------------------------


def test_item4_parameter_schemas_equal_prefects(deployed: Deployed) -> None:
    for key in deployed.mine:
        assert deployed.mine[key]["parameter_schema"] == deployed.prefect[key]["parameter_openapi_schema"], key
    rich = next(v for k, v in deployed.mine.items() if k.endswith("/rich"))["parameter_schema"]
    assert set(rich["definitions"]) == {"Color", "Level", "Config", "Inner"}
    assert rich["properties"]["names"]["items"] == {"type": "string"}
    assert rich["properties"]["n"]["description"] == "how many times,\non two lines"


# --- item 5: module-path entrypoints -----------------------------------------------------------------


def test_item5_module_path_entrypoints_plan_with_the_right_flow_and_schema(deployed: Deployed) -> None:
    by_module = next(k for k in deployed.mine if k.endswith("/rich-by-module"))
    by_file = next(k for k in deployed.mine if k.endswith("/rich"))
    assert by_module.split("/")[0] == by_file.split("/")[0] == f"rich-{UID}"
    assert deployed.mine[by_module]["parameter_schema"] == deployed.mine[by_file]["parameter_schema"]
    assert deployed.mine[by_module]["entrypoint"] == deployed.prefect[by_module]["entrypoint"] == "flows.rich.rich"
    validated = buildsys(deployed.projects["035"], deployed.projects["035"].parent / "v.db", {}, "validate")
    assert validated.returncode == 0, validated.stderr
    assert "entrypoint" not in validated.stderr


# --- item 6: version -----------------------------------------------------------------------------


def test_item6_version_is_the_flow_files_md5_like_prefect(deployed: Deployed) -> None:
    key = next(k for k in deployed.mine if k.endswith("/omop_es-mock"))
    flow_file = deployed.projects["058"] / "run_omop_es.py"
    expected = hashlib.md5(flow_file.read_bytes()).hexdigest()
    assert deployed.mine[key]["version"] == deployed.prefect[key]["version"] == expected
    rich = next(k for k in deployed.mine if k.endswith("/rich"))
    assert deployed.mine[rich]["version"] == deployed.prefect[rich]["version"] == "2.1"  # @flow(version=)


# --- item 7: triggers -----------------------------------------------------------------------------


def test_item7_triggers_are_said_to_be_stored_and_not_evaluated(deployed: Deployed) -> None:
    out = deployed.outputs["050"]
    assert "trigger(s) are stored with the deployment but buildsys does not evaluate them" in out
    project = deployed.projects["050"]
    validated = buildsys(project, project.parent / "v.db", {}, "validate")
    assert "trigger(s) are stored with the deployment but buildsys does not evaluate them" in validated.stderr
    key = next(k for k in deployed.mine if k.endswith("/triggered-event"))
    assert deployed.mine[key]["triggers"][0]["name"] == "triggered-event__automation_1"


# --- item 8: Prefect 2 keys --------------------------------------------------------------------------


def test_item8_prefect2_keys_mean_what_they_meant(deployed: Deployed) -> None:
    theirs, mine = _by_deployment(deployed, "legacy")
    assert (mine["paused"], theirs["paused"]) == (True, False)  # Prefect 3 drops is_schedule_active
    assert mine["schedules"] == theirs["schedules"]  # singular `schedule:` with `active: false`
    assert mine["schedules"][0]["active"] is False
    assert mine["work_queue_name"] == "legacy-queue"
    out = deployed.outputs["templates"]
    assert "`is_schedule_active` is Prefect 2's key (Prefect 3 ignores it): read as `paused: true`" in out


def test_item8_keys_that_have_no_meaning_now_say_what_to_write(tmp_path: Path) -> None:
    project = make_project(
        "deployments:\n"
        "  - name: d\n"
        "    entrypoint: f.py:f\n"
        "    storage: {block: s3/flows}\n"
        "    retries: 2\n"
        "    retry_delay_seconds: 5\n",
        tmp_path / "p",
        extra_files={"f.py": "def f(): ...\n"},
    )
    ran = buildsys(project, tmp_path / "s.db", {}, "validate")
    assert ran.returncode == 1
    assert (
        "prefect.yaml:4:5: error: `storage` is not a deployment key here\n  at deployments[d].storage\n"
        "  hint: Prefect 2 storage blocks became pull steps: declare a `pull:` section (git_clone, pull_from_s3, ...)"
    ) in ran.stderr
    assert "retries" not in ran.stderr  # a buildsys key, accepted
    (project / "prefect.yaml").write_text(
        (project / "prefect.yaml").read_text().replace("    storage: {block: s3/flows}\n", "")
    )
    planned = buildsys(project, tmp_path / "s.db", {}, "--json", "plan")
    spec = json.loads(planned.stdout)["changes"][0]["after"]
    assert (spec["retries"], spec["retry_delay_seconds"]) == (2, 5)


# --- item 9: small differences ----------------------------------------------------------------------


def test_item9_small_differences_match_prefect(deployed: Deployed) -> None:
    theirs, mine = _by_deployment(deployed, "templated")
    assert mine["work_queue_name"] == theirs["work_queue_name"] == "default"
    cron = next(s for s in mine["schedules"] if "cron" in s)
    paris = next(s for s in mine["schedules"] if s.get("interval") == 600)
    hourly = next(s for s in mine["schedules"] if s.get("interval") == 3600)
    rrule = next(s for s in mine["schedules"] if "rrule" in s)
    assert [cron, paris, rrule] == [s for s in theirs["schedules"] if s.get("interval") != 3600]
    assert cron["day_or"] is True and "timezone" not in cron
    assert paris["anchor_date"] == "2024-01-01T00:00:00+02:00"
    theirs_hourly = next(s for s in theirs["schedules"] if s.get("interval") == 3600)
    assert hourly["timezone"] == "UTC"  # Prefect's default zone, stored
    assert {**hourly, "anchor_date": theirs_hourly["anchor_date"]} == theirs_hourly
    assert mine["concurrency_options"] == theirs["concurrency_options"] == {
        "collision_strategy": "CANCEL_NEW",
        "grace_period_seconds": None,
    }
    assert mine["concurrency_limit"] == theirs["concurrency_limit"] == 2
