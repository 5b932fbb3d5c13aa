"""One deployment selector: build, graph, plan and pull pick the same deployments for a pattern."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.compiled import graph_for
from buildsys.desired import read_desired
from buildsys.project import load_project
from buildsys.selector import SelectionError, select_deployments

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

PROJECT = """\
build:
  - run_shell_script: {id: shared, script: echo}
deployments:
  - {name: nightly, entrypoint: flows/etl.py:run_etl}
  - {name: hourly, entrypoint: flows/etl.py:run_etl}
  - {name: nightly-report, entrypoint: flows/report.py:report}
"""


@pytest.fixture
def project_file(isolated: Path) -> Path:
    (isolated / "flows").mkdir()
    (isolated / "flows" / "etl.py").write_text("def run_etl():\n    pass\n")
    (isolated / "flows" / "report.py").write_text("def report():\n    pass\n")
    (isolated / "prefect.yaml").write_text(PROJECT)
    return isolated / "prefect.yaml"


@pytest.mark.parametrize(
    ("patterns", "names"),
    [
        (["nightly"], ["nightly"]),
        (["run-etl/nightly"], ["nightly"]),
        (["run-etl/*"], ["nightly", "hourly"]),
        (["nightly*"], ["nightly", "nightly-report"]),
        (["report/*", "hourly"], ["hourly", "nightly-report"]),  # file order, whatever the flags' order
    ],
)
def test_build_and_plan_select_the_same_deployments(project_file: Path, patterns: list[str], names: list[str]) -> None:
    project = load_project(project_file)
    assert [d.name for d in select_deployments(project, patterns)] == names
    assert list(graph_for(project, deployments=patterns).chains) == names
    _, desired = read_desired(project_file, select=patterns)
    assert [r.spec["name"] for r in desired.resources if r.kind == "deployment"] == names


@pytest.mark.parametrize("pattern", ["wrongflow/nightly", "nightlly", "report/hourly"])
def test_a_pattern_that_matches_nothing_fails_everywhere(project_file: Path, pattern: str) -> None:
    project = load_project(project_file)
    with pytest.raises(SelectionError) as built:
        graph_for(project, deployments=[pattern])
    with pytest.raises(SelectionError) as planned:
        read_desired(project_file, select=[pattern])
    assert built.value.render() == planned.value.render()
    assert built.value.message == f"no deployment matches {pattern!r}"


NAMES = ["d1", "d2", "d10", "ab", "x", "a[1]", "x*"]


@pytest.mark.parametrize("pattern", ["d1", "d10", "flow-x/d2", "flow-a/ab", "ab", "d[12]", "x*", "flow-x/x*", "[x]",
                                     "d?", "d1*", "*/x", "flow-[a-d]/d1", "a[1]", "a[[]1]", "D1", "d1 ", "flow-d1/d2",
                                     "[!d]*"])
def test_a_name_is_looked_up_and_a_glob_matched_with_one_answer(pattern: str) -> None:
    """A pattern without glob characters selects by equality (no pattern compiled, no scan: a plan
    passes every deployment's name); any other is fnmatch's. Both give what fnmatch gives."""
    from fnmatch import fnmatchcase

    from buildsys.project import parse_project
    from buildsys.selector import matches

    text = "deployments:\n" + "".join(f"  - {{name: '{n}', entrypoint: 'flows/f.py:flow_{n[0]}'}}\n" for n in NAMES)
    project = parse_project(text, file="prefect.yaml", root=Path("."))
    expected = [n for n in NAMES if fnmatchcase(n, pattern) or fnmatchcase(f"flow-{n[0]}/{n}", pattern)]
    assert [n for n in NAMES if matches(pattern, n, f"flow-{n[0]}")] == expected
    if expected:
        assert [d.name for d in select_deployments(project, [pattern])] == expected
    else:
        with pytest.raises(SelectionError):
            select_deployments(project, [pattern])
