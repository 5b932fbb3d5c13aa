"""The loader: YAML features, Prefect's section rules, located errors with hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.errors import ProjectError
from buildsys.project import load_project

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`


def write(tmp: Path, text: str, name: str = "prefect.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def errors_of(path: Path, strict: bool = False) -> list[str]:
    with pytest.raises(ProjectError) as info:
        load_project(path, strict=strict)
    return [d.render() for d in info.value.diagnostics() if d.is_error]


def test_anchors_aliases_and_merge_keys_inside_steps_and_deployments(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
definitions:
  step: &clone
    prefect.deployments.steps.git_clone:
      repository: https://example.com/r.git
      branch: main
  pool: &pool
    name: k8s
    job_variables: {namespace: flows}
pull:
  - *clone
deployments:
  - name: a
    entrypoint: a.py:a
    work_pool:
      <<: *pool
      work_queue_name: low
  - name: b
    entrypoint: b.py:b
    work_pool: *pool
""",
    )
    project = load_project(p)
    a, b = project.deployments
    assert a.work_pool.name == "k8s" and a.work_pool.work_queue_name == "low"
    assert dict(a.work_pool.job_variables) == {"namespace": "flows"}
    assert b.work_pool.work_queue_name is None
    assert [s.name for s in a.pull] == ["prefect.deployments.steps.git_clone"]
    assert a.pull[0].inputs == {"repository": "https://example.com/r.git", "branch": "main"}


def test_crlf_and_single_step_shorthand(tmp_path: Path) -> None:
    p = tmp_path / "prefect.yaml"
    p.write_bytes(b"build:\r\n  run_shell_script:\r\n    script: echo hi\r\ndeployments:\r\n  - name: x\r\n    entrypoint: f.py:f\r\n")
    project = load_project(p)
    assert [s.name for s in project.build] == ["run_shell_script"]
    assert project.deployments[0].build[0].inputs == {"script": "echo hi"}


def test_section_rules_follow_prefect(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
build:
  - run_shell_script: {id: top, script: echo top}
pull:
  - set_working_directory: {directory: /srv}
deployments:
  - name: inherits
    entrypoint: f.py:f
  - name: own-build
    entrypoint: f.py:f
    build:
      - run_shell_script: {id: mine, script: echo mine}
  - name: null-build
    entrypoint: f.py:f
    build: null
  - name: no-pull
    entrypoint: f.py:f
    pull: []
  - name: null-pull
    entrypoint: f.py:f
    pull: null
""",
    )
    deps = {d.name: d for d in load_project(p).deployments}
    assert [s.id for s in deps["inherits"].build] == ["top"]
    assert [s.id for s in deps["own-build"].build] == ["mine"]
    assert deps["null-build"].build == ()
    assert deps["no-pull"].pull == () and not deps["no-pull"].pull_is_default
    assert deps["null-pull"].pull[0].inputs == {"directory": "/srv"}
    assert deps["inherits"].pull[0].inputs == {"directory": "/srv"}


def test_default_pull_step_is_generated(tmp_path: Path) -> None:
    p = write(tmp_path, "deployments:\n  - name: x\n    entrypoint: f.py:f\n")
    (dep,) = load_project(p).deployments
    assert dep.pull_is_default
    assert dep.pull[0].inputs == {"directory": str(tmp_path.resolve())}


def test_duplicate_key_is_an_error_with_location(tmp_path: Path) -> None:
    p = write(tmp_path, "deployments:\n  - name: a\n    entrypoint: a.py:a\n    entrypoint: b.py:b\n")
    assert errors_of(p) == [
        f"{p}:4:5: error: duplicate key 'entrypoint': YAML keeps only the last one, so the first would be silently lost"
        "\n  hint: remove or rename one of the two entries"
    ]


def test_unknown_key_is_a_warning_with_did_you_mean_and_error_when_strict(tmp_path: Path) -> None:
    p = write(tmp_path, "deployments:\n  - name: a\n    entrypoint: a.py:a\n    work_poll: {name: x}\n")
    project = load_project(p)
    (w,) = [d for d in project.warnings if "work_poll" in d.message]
    assert w.render() == (
        f"{p}:4:5: warning: unknown key 'work_poll' (ignored)\n  at deployments[a].work_poll\n  hint: did you mean 'work_pool'?"
    )
    (err,) = errors_of(p, strict=True)
    assert err.startswith(f"{p}:4:5: error: unknown key 'work_poll'")


def test_number_where_string_expected_says_quote_it(tmp_path: Path) -> None:
    p = write(tmp_path, "prefect-version: 3.1\ndeployments: []\n")
    (err,) = errors_of(p)
    assert err == (
        f"{p}:1:1: error: expected string or null, got number 3.1\n  at prefect-version\n"
        '  hint: quote it: "3.1" (YAML reads 3.1 as a number)'
    )


def test_not_yaml_and_not_a_prefect_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "build: [unclosed\n", "bad.yaml")
    (err,) = errors_of(bad)
    assert err.startswith(f"{bad}:1:8: error: not valid YAML: while parsing a flow sequence")
    compose = write(tmp_path, "services:\n  web:\n    image: nginx\n", "compose.yaml")
    assert errors_of(compose) == [
        f"{compose}:1:1: error: {compose} looks like a docker-compose file (it has `services:`), not a prefect.yaml"
        "\n  hint: point -f at the project's prefect.yaml"
    ]
    k8s = write(tmp_path, "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "pod.yaml")
    assert errors_of(k8s)[0].startswith(f"{k8s}:1:1: error: {k8s} looks like a Kubernetes manifest (kind: Pod)")
    listy = write(tmp_path, "- a\n- b\n", "list.yaml")
    assert errors_of(listy)[0] == f"{listy}:1:1: error: {listy} is a list, not a prefect.yaml project (a mapping of keys)"


def test_step_with_null_inputs_and_multi_key_step(tmp_path: Path) -> None:
    p = write(tmp_path, "build:\n  - run_shell_script:\n  - {a.b: {}, c.d: {}}\n")
    errs = errors_of(p)
    assert any("has no inputs mapping" in e and "- run_shell_script: {}" in e for e in errs)
    assert any("exactly one key" in e for e in errs)


def test_schedules_and_conflicting_schedule_keys(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "deployments:\n  - name: a\n    entrypoint: a.py:a\n    schedules:\n      - interval: PT10M\n      - cron: '0 2 * * *'\n        timezone: Europe/Paris\n",
    )
    (dep,) = load_project(p).deployments
    assert [(s.kind, s.value, s.timezone) for s in dep.schedules] == [
        ("interval", 600.0, None),
        ("cron", "0 2 * * *", "Europe/Paris"),
    ]
    both = write(tmp_path, "deployments:\n  - name: a\n    entrypoint: a.py:a\n    schedule: {cron: '* * * * *'}\n    schedules: [{cron: '* * * * *'}]\n", "b.yaml")
    assert any("both `schedule` and `schedules` are set" in e for e in errors_of(both))


def test_missing_file_and_nameless_deployment(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.yaml") == [
        f"error: no project file at {tmp_path / 'nope.yaml'}\n  hint: run `buildsys init` to create one, or pass -f PATH"
    ]
    p = write(tmp_path, "deployments:\n  - name:\n    entrypoint:\n  - name: real\n    entrypoint: f.py:f\n")
    project = load_project(p)
    assert [d.name for d in project.deployments] == ["real"]
    assert any("without a `name` is skipped" in w.message for w in project.warnings)


def test_buildsys_keys_pools_and_variables(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
work_pools:
  - name: local
    type: process
    concurrency_limit: 4
    job_variables: {env: {LOG_LEVEL: INFO}}
    queues: [{name: urgent, priority: 1, concurrency_limit: 2}]
variables:
  region: eu-west-1
deployments:
  - name: a
    entrypoint: a.py:a
    work_pool: {name: local}
""",
    )
    project = load_project(p)
    (pool,) = project.work_pools
    assert (pool.name, pool.type, pool.concurrency_limit) == ("local", "process", 4)
    assert pool.queues[0].name == "urgent" and pool.queues[0].priority == 1
    assert [(v.name, v.value) for v in project.variables] == [("region", "eu-west-1")]


def test_a_multi_document_kubernetes_manifest_is_named_as_one(tmp_path: Path) -> None:
    p = write(tmp_path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Secret\n")
    assert errors_of(p) == [
        f"{p}:1:1: error: {p} looks like a Kubernetes manifest (kind: ConfigMap), not a prefect.yaml\n"
        "  hint: point -f at the project's prefect.yaml"
    ]
    two = write(tmp_path, "deployments: []\n---\ndeployments: []\n", "two.yaml")
    assert errors_of(two) == [
        f"{two}:2:1: error: not valid YAML: expected a single document in the stream: but found another document\n"
        "  hint: a prefect.yaml is one YAML document: remove the second `---`, or split the file"
    ]


def test_an_unknown_pool_type_is_a_located_error_naming_the_registered_ones(tmp_path: Path) -> None:
    p = write(tmp_path, "work_pools:\n  - name: p\n    type: dokcer\n")
    assert errors_of(p) == [
        f"{p}:3:5: error: unknown work pool type 'dokcer'\n  at work_pools[p].type\n"
        "  hint: use one of: docker, kubernetes, process; did you mean 'docker'?"
    ]


def test_loading_leaves_the_cyclic_collector_as_it_was(tmp_path: Path) -> None:
    """Loading pauses the collector (collector.gc_paused) and restores it, after an error too, and
    leaves it off when the caller had turned it off."""
    import gc

    from buildsys.project import parse_project

    assert gc.isenabled()
    parse_project("name: x\n", file="f.yaml", root=tmp_path)
    assert gc.isenabled()
    with pytest.raises(ProjectError):
        parse_project("deployments: [\n", file="f.yaml", root=tmp_path)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_project("name: x\n", file="f.yaml", root=tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()
