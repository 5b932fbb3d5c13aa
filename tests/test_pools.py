"""Base job templates and job configuration (pure: no store, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.errors import Diagnostic
from buildsys.pools import (
    JobVariableError,
    base_job_template,
    default_job_template,
    expand_dotted,
    job_configuration,
    merge_job_variables,
    parse_job_variable,
    render_job_template,
    validate_template,
)
from tests.services.distributions import installed_distribution

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

MISSING = object()


def lookup_from(values: dict[str, object]):  # type: ignore[no-untyped-def]
    from buildsys import pools

    return lambda name: values.get(name, pools._MISSING)


def test_default_templates_declare_every_placeholder() -> None:
    for pool_type in ("process", "docker", "kubernetes"):
        template = default_job_template(pool_type)
        validate_template(template)  # raises if a placeholder is undeclared or a default invalid


def test_unknown_pool_type_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(JobVariableError) as info:
        default_job_template("dokcer")
    assert info.value.message == "unknown work pool type 'dokcer'"
    assert info.value.hint == "use one of: docker, kubernetes, process; did you mean 'docker'?"


def test_process_job_configuration_with_defaults_only() -> None:
    config = job_configuration(default_job_template("process"), None, None, env={})
    # null defaults are not variables: their whole-string placeholders remove the key (Prefect §6.6)
    assert config == {"stream_output": True}


def test_env_merges_key_by_key_pool_then_deployment_then_run() -> None:
    template = base_job_template("process", {"env": {"A": "pool", "B": "pool", "C": "pool"}})
    config = job_configuration(
        template,
        {"env": {"B": "deployment", "C": "deployment"}, "working_dir": "/srv"},
        {"env": {"C": "run"}, "stream_output": False},
        env={},
    )
    assert config == {
        "env": {"A": "pool", "B": "deployment", "C": "run"},
        "stream_output": False,
        "working_dir": "/srv",
    }


def test_run_overrides_other_variables_wholesale() -> None:
    template = base_job_template("docker", {"volumes": ["/a:/a"], "labels": {"team": "x"}})
    config = job_configuration(template, {"volumes": ["/b:/b"]}, {"labels": {"run": "1"}, "image": "img:1"}, env={})
    assert config["volumes"] == ["/b:/b"]
    assert config["labels"] == {"run": "1"}
    assert config["image"] == "img:1"


def test_dotted_keys_expand_and_nested_form_wins() -> None:
    assert expand_dotted({"env.FOO": "1", "env.BAR": "2", "env": {"FOO": "nested"}}) == {
        "env": {"FOO": "nested", "BAR": "2"}
    }
    assert merge_job_variables({"env": {"A": "1"}, "image": "x"}, {"env.B": "2", "image": "y"}) == {
        "env": {"A": "1", "B": "2"},
        "image": "y",
    }


def test_unknown_job_variable_is_a_warning_with_did_you_mean() -> None:
    warnings: list[Diagnostic] = []
    config = job_configuration(default_job_template("docker"), {"imgae": "x:1"}, None, env={}, warnings=warnings)
    assert "imgae" not in config
    assert [w.render() for w in warnings] == [
        "warning: unknown job variable 'imgae': the pool's template does not use it\n"
        "  at job_variables.imgae\n"
        "  hint: did you mean 'image'?"
    ]


def test_wrong_type_is_an_error_naming_the_variable() -> None:
    with pytest.raises(JobVariableError) as info:
        job_configuration(default_job_template("docker"), {"auto_remove": "yes"}, None, env={})
    assert info.value.render() == (
        "error: job variable 'auto_remove': 'yes' is not of type 'boolean'\n"
        "  at job_variables.auto_remove\n"
        "  hint: expected boolean (Remove the container when it finishes.)"
    )
    assert info.value.message == "job variable 'auto_remove': 'yes' is not of type 'boolean'"
    assert info.value.path == "job_variables.auto_remove"


def test_wrong_type_inside_env_names_the_key() -> None:
    with pytest.raises(JobVariableError) as info:
        job_configuration(default_job_template("process"), {"env": {"PORT": {"x": 1}}}, None, env={})
    assert info.value.path == "job_variables.env.PORT"
    assert info.value.message.startswith("job variable 'env' at PORT: {'x': 1} is not valid under any of the given schemas")


def test_enum_error_lists_the_allowed_values() -> None:
    with pytest.raises(JobVariableError) as info:
        job_configuration(default_job_template("kubernetes"), {"image_pull_policy": "Sometimes"}, None, env={})
    assert info.value.hint is not None and info.value.hint.startswith("expected one of IfNotPresent, Always, Never")


def test_pool_job_variables_become_defaults_and_are_checked() -> None:
    warnings: list[Diagnostic] = []
    template = base_job_template("process", {"stream_output": False, "wroking_dir": "/x"}, warnings=warnings)
    assert template["variables"]["properties"]["stream_output"]["default"] is False
    assert [(w.severity, w.message, w.hint) for w in warnings] == [
        ("warning", "unknown job variable 'wroking_dir': the pool's template does not use it", "did you mean 'working_dir'?")
    ]
    assert job_configuration(template, None, None, env={}) == {"stream_output": False}


def test_pool_may_add_its_own_variables() -> None:
    template = default_job_template("process")
    template["variables"]["properties"]["region"] = {
        "type": "string",
        "default": "eu-west-1",
        "description": "cloud region",
    }
    template["job_configuration"]["env"] = {"REGION": "{{ region }}", "FIXED": "1"}
    pool_template = base_job_template("process", None, template)
    assert job_configuration(pool_template, None, None, env={})["env"] == {"REGION": "eu-west-1", "FIXED": "1"}
    config = job_configuration(pool_template, {"region": "us-east-2", "env": {"X": "y"}}, None, env={})
    assert config["env"] == {"REGION": "us-east-2", "FIXED": "1", "X": "y"}
    with pytest.raises(JobVariableError) as info:
        job_configuration(pool_template, {"region": 3}, None, env={})
    assert info.value.message == "job variable 'region': 3 is not of type 'string'"
    assert info.value.hint == "expected string (cloud region)"


def test_override_template_is_validated() -> None:
    with pytest.raises(JobVariableError) as info:
        base_job_template("process", None, {"job_configuration": {"command": "{{ cmd }}"}, "variables": {"properties": {}}})
    assert info.value.message == "base job template uses undeclared variable(s): cmd"
    with pytest.raises(JobVariableError) as info:
        base_job_template("process", None, {"job_configuration": {}})
    assert info.value.message == "base job template is missing 'variables'"
    with pytest.raises(JobVariableError) as info:
        base_job_template(
            "process",
            None,
            {"job_configuration": {"n": "{{ n }}"}, "variables": {"properties": {"n": {"type": "integer", "default": "x"}}}},
        )
    assert info.value.message == "job variable 'n': 'x' is not of type 'integer'"


def test_prefect_rendering_rules() -> None:
    values = {"n": 5, "obj": {"a": 1}, "none": None}
    lookup = lookup_from(values)
    assert render_job_template({"a": "{{ n }}", "b": "pre-{{ n }}", "c": "{{ missing }}", "d": "x-{{ missing }}"}, lookup) == {
        "a": 5,
        "b": "pre-5",
        "d": "x-",
    }
    assert render_job_template(["{{ missing }}", 1, "{{ obj }}"], lookup) == [1, {"a": 1}]
    assert render_job_template({"k": "{{ none }}"}, lookup) == {"k": None}
    assert render_job_template({"ctx": "{{ ctx.flow_run.name }}", "env": "{{ $HOME }}"}, lookup) == {
        "ctx": "{{ ctx.flow_run.name }}",
        "env": "{{ $HOME }}",
    }


def test_env_and_prefect_variables_resolve_after_rendering() -> None:
    config = job_configuration(
        default_job_template("process"),
        {
            "env": {"TOKEN": "{{ $TOKEN }}", "UNSET": "{{ $NOPE }}", "REGION": "r-{{ prefect.variables.region }}"},
            "name": "{{ ctx.flow_run.name }}",
            "working_dir": "{{ prefect.variables.workdir }}",
        },
        None,
        env={"TOKEN": "s3cret"},
        variables={"region": "eu", "workdir": "/srv/app"},
    )
    assert config == {
        "env": {"TOKEN": "s3cret", "UNSET": "", "REGION": "r-eu"},
        "name": "{{ ctx.flow_run.name }}",
        "stream_output": True,
        "working_dir": "/srv/app",
    }


def test_kubernetes_manifest_omits_missing_resources_and_keeps_defaults() -> None:
    config = job_configuration(
        default_job_template("kubernetes"), {"image": "img:1", "memory_limit": "128Mi"}, None, env={}
    )
    manifest = config["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "img:1"
    assert container["resources"] == {"limits": {"memory": "128Mi"}, "requests": {}}
    assert manifest["metadata"]["namespace"] == "default"
    assert manifest["metadata"]["generateName"] == "-"
    assert manifest["spec"]["backoffLimit"] == 0


def test_parse_job_variable_values_are_json_when_they_parse() -> None:
    assert parse_job_variable("stream_output=false") == ("stream_output", False)
    assert parse_job_variable("env.X=hello world") == ("env.X", "hello world")
    assert parse_job_variable('volumes=["/a:/b"]') == ("volumes", ["/a:/b"])
    with pytest.raises(JobVariableError) as info:
        parse_job_variable("novalue")
    assert info.value.hint == "write KEY=VALUE, e.g. env.LOG_LEVEL=DEBUG"


# --- pool types register through entry points ---------------------------------------------------

ACME = """\
class ShellPool:
    type = "acme-shell"

    def __init__(self, **options):
        self.options = options

    @staticmethod
    def default_job_template():
        return {
            "job_configuration": {"command": "{{ command }}"},
            "variables": {"type": "object", "properties": {"command": {"type": "string", "default": "true"}}},
        }

    def start(self, job, sink):
        raise RuntimeError("not started in this test")
"""


def _distribution(site: Path, dist: str, entry_points: str, module: str = "") -> None:
    installed_distribution(site, dist, f"[buildsys.pool_types]\n{entry_points}\n", {dist: module} if module else None)


def test_the_built_in_pool_types_are_registered_like_a_plugins() -> None:
    from buildsys.infra import pool_type, pool_types

    assert pool_types() == ("docker", "kubernetes", "process")
    for name in pool_types():
        assert pool_type(name).type == name
        validate_template(default_job_template(name))


def test_a_plugin_adds_a_pool_type(plugin_site: Path) -> None:
    from buildsys.infra import get_infrastructure, pool_types
    from buildsys.project import load_project

    _distribution(plugin_site, "acme_pools", "acme-shell = acme_pools:ShellPool", ACME)
    assert pool_types() == ("acme-shell", "docker", "kubernetes", "process")
    config = job_configuration(default_job_template("acme-shell"), {"command": "make"}, None, env={})
    assert config == {"command": "make"}
    assert get_infrastructure("acme-shell", python="x").options == {"python": "x"}  # type: ignore[attr-defined]
    project_file = plugin_site / "prefect.yaml"
    project_file.write_text("work_pools:\n  - {name: shell, type: acme-shell}\n")
    assert [p.type for p in load_project(project_file).work_pools] == ["acme-shell"]


def test_a_pool_type_registered_twice_names_both(plugin_site: Path) -> None:
    from buildsys.infra import InfrastructureError, pool_type

    _distribution(plugin_site, "acme_pools", "docker = acme_pools:ShellPool", ACME)
    with pytest.raises(InfrastructureError) as info:
        pool_type("docker")
    assert info.value.message == (
        "work pool type 'docker' is registered twice: acme_pools:ShellPool and buildsys.infra.docker:DockerInfrastructure"
    )
    assert info.value.hint == "uninstall one of the packages that register it"
