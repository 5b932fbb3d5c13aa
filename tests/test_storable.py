"""Names the store could not hold or address, and values it could not hold as written, are
refused where they are written: `validate` and `plan` with a location, the store and the API
with the name of the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.errors import ProjectError, StateError
from buildsys.project import load_project
from buildsys.storable import name_problem, value_problems
from buildsys.store.base import Change
from buildsys.store.sql import SqlStore

HOSTILE = """\
name: proj
work_pools:
  - name: "evil\\e]0;pwned\\apool"
    type: process
    queues: [{name: "q\\u2028"}]
deployments:
  - name: "rev\\u202Eabc"
    entrypoint: flow.py:main
    work_pool: {name: "a%2Fb", work_queue_name: "<q>"}
  - name: "../../etc"
    entrypoint: flow.py:main
  - name: ".."
    entrypoint: flow.py:main
    flow_name: "x/y"
  - name: "ok name"
    entrypoint: flow.py:main
    build:
      - run_shell_script: {id: "s\\e[8m", script: "true"}
"""


def errors_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "prefect.yaml").write_text(text)
    (tmp_path / "flow.py").write_text("def main(x: int = 1):\n    pass\n")
    with pytest.raises(ProjectError) as err:
        load_project(tmp_path / "prefect.yaml")
    return [d.render().replace(str(tmp_path / "prefect.yaml"), "F") for d in err.value.problems if d.is_error]


def test_validate_refuses_names_that_cannot_be_stored_addressed_or_printed(tmp_path: Path) -> None:
    found = [e.split("\n")[0] for e in errors_of(tmp_path, HOSTILE)]
    assert found == [
        "F:3:5: error: work pool name 'evil\\x1b]0;pwned\\x07pool' holds control or invisible characters (\\x1b, \\x07)",
        "F:5:15: error: work queue name 'q\\u2028' holds control or invisible characters (\\u2028)",
        "F:7:5: error: deployment name 'rev\\u202eabc' holds control or invisible characters (\\u202e)",
        "F:9:17: error: work pool name 'a%2Fb' holds '%' (names may not hold any of / % & < >)",
        "F:9:32: error: work queue name '<q>' holds '<' '>' (names may not hold any of / % & < >)",
        "F:10:5: error: deployment name '../../etc' holds '/' (names may not hold any of / % & < >)",
        "F:12:5: error: deployment name '..' is a path segment (`.` or `..`) that a URL cannot address",
        "F:14:5: error: flow name 'x/y' holds '/' (names may not hold any of / % & < >)",
        "F:18:28: error: step id 's\\x1b[8m' holds control or invisible characters (\\x1b)",
    ]


def test_values_the_store_cannot_hold_are_located_errors(tmp_path: Path) -> None:
    text = (
        "deployments:\n  - name: big\n    entrypoint: flow.py:main\n"
        "    parameters: {x: 100000000000000000000000, y: .nan, z: \"a\\0b\"}\n"  # YAML refuses lone surrogates
        "    job_variables: {env: {\"K\\0\": v}, n: -9223372036854775809}\n"
    )
    range_hint = "\n  hint: quote it to keep it as text, or use a value in range"
    assert errors_of(tmp_path, text) == [
        "F:4:18: error: the integer 100000000000000000000000 is out of range (stored integers are 64-bit: "
        "at most 2**63-1 in size)\n  at deployments[big].parameters.x" + range_hint,
        "F:4:47: error: the number nan cannot be stored (JSON has no NaN or infinity)\n  at deployments[big].parameters.y",
        "F:4:56: error: the text holds a NUL character (\\x00), which databases cannot store\n"
        "  at deployments[big].parameters.z",
        "F:5:21: error: the key 'K\\x00': the text holds a NUL character (\\x00), which databases cannot store\n"
        "  at deployments[big].job_variables.env",
        "F:5:38: error: the integer -9223372036854775809 is out of range (stored integers are 64-bit: at most "
        "2**63-1 in size)\n  at deployments[big].job_variables.n" + range_hint,
    ]


def test_the_rules_accept_what_people_write() -> None:
    for name in ("nightly", "ETL nightly v2.1", "café-東京", "my_flow", "a.b", "x-1"):
        assert name_problem(name) is None, name
    assert list(value_problems({"n": [2**63 - 1, -(2**63), 1.5, "東京", True]})) == []


def test_the_store_refuses_unaddressable_names_and_unstorable_values(tmp_path: Path) -> None:
    with SqlStore.sqlite(tmp_path / "s.db") as store:
        with pytest.raises(StateError) as err:
            store.apply([Change("create", "deployment", "etl/a/b", {"flow_name": "etl"}, "p")], expected_serial=0)
        assert err.value.message == (
            "deployment 'etl/a/b': the name its deployment name 'a/b' holds '/' (names may not hold any of / % & < >)"
        )
        with pytest.raises(StateError) as err:
            store.apply([Change("create", "pool", "p", {"type": "process", "concurrency_limit": 2**64}, "p")],
                        expected_serial=0)
        assert err.value.message == (
            "the spec of pool 'p' cannot be stored: concurrency_limit: the integer 18446744073709551616 is out of "
            "range (stored integers are 64-bit: at most 2**63-1 in size)"
        )
        assert store.serial() == 0


def test_each_problem_has_its_full_path_in_document_order() -> None:
    value = {"a": [1, {"b\x00": "ok", "c": ["x", float("inf")]}], "d": "\ud800", "e": {"f": [[2**64]]}}
    assert [(at, problem.split(",")[0]) for at, problem in value_problems(value, ("top",))] == [
        (("top", "a", 1), "the key 'b\\x00': the text holds a NUL character (\\x00)"),
        (("top", "a", 1, "c", 1), "the number inf cannot be stored (JSON has no NaN or infinity)"),
        (("top", "d"), "the text holds a lone surrogate (\\ud800-\\udfff)"),
        (("top", "e", "f", 0, 0), "the integer 18446744073709551616 is out of range (stored integers are 64-bit: at most 2**63-1 in size)"),
    ]
