"""The step API's build scope (buildsys.step.BuildScope): what the hooks of one build share."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from buildsys.compiled import compile_project
from buildsys.engine import build
from buildsys.project import load_project
from buildsys.step import BuildScope, Context


def test_once_computes_once_and_concurrent_callers_get_that_answer() -> None:
    scope = BuildScope()
    calls: list[int] = []
    started, release = threading.Event(), threading.Event()

    def compute() -> str:
        calls.append(1)
        started.set()
        release.wait(30)
        return "answer"

    got: list[str] = []
    first = threading.Thread(target=lambda: got.append(scope.once(("k", 1), compute)))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: got.append(scope.once(("k", 1), compute)))
    second.start()  # finds the first call pending: waits for it rather than asking again
    release.set()
    first.join(30)
    second.join(30)
    assert got == ["answer", "answer"]
    assert calls == [1]
    assert scope.once(("k", 2), lambda: "other") == "other"  # another key, another answer


def test_an_error_is_not_kept_and_forget_asks_again() -> None:
    scope = BuildScope()

    def fails() -> str:
        raise OSError("unreachable")

    with pytest.raises(OSError):
        scope.once("k", fails)
    assert scope.once("k", lambda: "then") == "then"
    assert scope.once("k", lambda: "not asked") == "then"
    scope.forget("k")
    assert scope.once("k", lambda: "again") == "again"


def test_an_answer_forgotten_while_it_was_computed_is_not_kept() -> None:
    scope = BuildScope()

    def compute() -> str:
        scope.forget("tag")  # e.g. the tag was pushed while its manifest was being asked for
        return "before the push"

    assert scope.once("tag", compute) == "before the push"  # the caller gets what it asked for
    assert scope.once("tag", lambda: "after the push") == "after the push"


def test_a_context_made_outside_a_build_has_its_own_scope(tmp_path: Path) -> None:
    one, two = Context(root=tmp_path, cwd=tmp_path), Context(root=tmp_path, cwd=tmp_path)
    assert one.build is not two.build


STEPS = '''
import itertools

from buildsys.step import step

BUILDS = itertools.count()

@step("build_number")
def build_number(ctx, *, name):
    return {"number": ctx.build.once("number", lambda: next(BUILDS))}
'''


def test_the_steps_of_one_build_share_a_scope_and_the_next_build_gets_a_new_one(isolated: Path) -> None:
    (isolated / "scoped.py").write_text(STEPS)
    (isolated / "prefect.yaml").write_text(
        "build:\n"
        "  - scoped.build_number: {id: a, name: a}\n"
        "  - scoped.build_number: {id: b, name: b, needs: [a]}\n"
        "deployments:\n  - {name: one, entrypoint: f.py:f}\n"
    )
    compiled = compile_project(load_project(isolated / "prefect.yaml"))
    for number in range(2):  # without the cache both steps run each time
        result = build(compiled.project, compiled.graph, compiled.steps, use_cache=False)
        assert result.ok
        assert [r.outputs["number"] for r in result.results.values()] == [number, number]


def test_a_step_logger_sends_masked_records_to_its_own_context_only(tmp_path: Path) -> None:
    """`ctx.logger` (its handler made when first asked for): records reach the context's log,
    masked; a later context of the same step takes the logger over."""
    first: list[str] = []
    later: list[str] = []
    ctx = Context(root=tmp_path, cwd=tmp_path, step_id="logs", secrets={"hunter22"}, emit=first.append)
    ctx.logger.info("token hunter22 used")
    ctx.logger.debug("detail")
    again = Context(root=tmp_path, cwd=tmp_path, step_id="logs", emit=later.append)
    again.logger.warning("second run")
    assert first == ["token **** used", "detail"]
    assert later == ["second run"]
    assert len(again.logger.handlers) == 1
