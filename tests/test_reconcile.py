"""Applying plans to a real SQLite store: all or nothing, guarded by the serial; corpus round trips."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from buildsys.desired import BuildOutputs, DesiredResource, DesiredState, read_desired
from buildsys.errors import ConflictError, ProjectError
from buildsys.plan import known_specs, plan
from buildsys.reconcile import ApplyError, apply_plan, snapshot, to_changes
from buildsys.store.base import Change, Resource
from buildsys.store.sql import SqlStore
from buildsys.templating import UNKNOWN
from tests.conftest import CORPUS, REPO

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`

SOURCE = {"commit": None, "ref": None, "file": "prefect.yaml", "dirty": False}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore.sqlite(tmp_path / "state.db")
    yield s
    s.close()


def res(kind: str, name: str, **spec: Any) -> DesiredResource:
    return DesiredResource(kind, name, spec, frozenset(spec))


def desired(*resources: DesiredResource, owner: str = "demo") -> DesiredState:
    return DesiredState(owner, SOURCE, resources)


def test_apply_writes_everything_with_owner_and_source(store: SqlStore) -> None:
    want = desired(res("pool", "p", type="process"), res("deployment", "f/d", work_pool_name="p", tags=["a"]))
    result = apply_plan(store, plan(want, [], serial=store.serial()))
    assert (result.serial, result.applied) == (1, 2)
    stored = {(r.kind, r.name): r for r in store.list_resources()}
    assert stored[("deployment", "f/d")].spec == {"work_pool_name": "p", "tags": ["a"]}
    assert (stored[("pool", "p")].owner, stored[("pool", "p")].source) == ("demo", SOURCE)
    assert not plan(want, store.list_resources(), serial=store.serial()).has_changes


def test_nothing_is_written_when_one_change_is_invalid(store: SqlStore) -> None:
    want = desired(res("variable", "ok", value=1), res("deployment", "f/d", version=UNKNOWN, tags=[UNKNOWN]))
    with pytest.raises(ApplyError) as err:
        apply_plan(store, plan(want, [], serial=0))
    assert err.value.render() == (
        "error: deployment f/d: tags, version depend on build outputs that are not known yet\n"
        "  hint: run `buildsys build` (or `buildsys push`) first, or use `buildsys deploy`"
    )
    assert (store.serial(), store.list_resources()) == (0, [])


def test_two_plans_made_at_the_same_serial_second_is_refused(store: SqlStore) -> None:
    first = plan(desired(res("variable", "a", value=1)), [], serial=0)
    second = plan(desired(res("variable", "b", value=2), owner="other"), [], serial=0)
    apply_plan(store, first)
    with pytest.raises(ConflictError) as err:
        apply_plan(store, second)
    assert err.value.message == (
        "the state store changed since this plan was made (plan serial 0, store serial 1); nothing was applied"
    )
    assert [r.name for r in store.list_resources()] == ["a"]


def test_a_write_racing_between_check_and_apply_is_refused_by_the_store(store: SqlStore) -> None:
    class Racing:
        """The real store, with another writer slipping in just before our apply."""

        def __init__(self, inner: SqlStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def apply(self, changes: Any, *, expected_serial: int | None) -> int:
            self.inner.apply([Change("create", "variable", "sneaky", {"value": 0})], expected_serial=None)
            return self.inner.apply(changes, expected_serial=expected_serial)

    with pytest.raises(ConflictError, match=r"plan serial 0, store serial 1"):
        apply_plan(Racing(store), plan(desired(res("variable", "a", value=1)), [], serial=0))  # type: ignore[arg-type]
    assert [r.name for r in store.list_resources()] == ["sneaky"]


def test_a_pool_still_used_cannot_be_pruned(store: SqlStore) -> None:
    store.apply(
        [
            Change("create", "pool", "old", {"type": "process"}, "demo"),
            Change("create", "deployment", "f/other-project", {"work_pool_name": "old"}, "other"),
        ],
        expected_serial=0,
    )
    p = plan(desired(), store.list_resources(), serial=store.serial(), prune=True)
    assert [c.address for c in p.changes] == ["pool old"]
    with pytest.raises(
        ApplyError, match=r"pool old cannot be deleted: deployments still use it \(f/other-project\)"
    ):
        apply_plan(store, p)
    assert store.serial() == 1


def test_changes_keep_plan_order_deletions_last(store: SqlStore) -> None:
    store.apply([Change("create", "deployment", "f/gone", {}, "demo")], expected_serial=0)
    p = plan(
        desired(res("deployment", "f/new"), res("pool", "p", type="process")),
        store.list_resources(),
        serial=1,
        prune=True,
    )
    assert [(c.action, c.kind, c.name) for c in to_changes(p)] == [
        ("create", "pool", "p"),
        ("create", "deployment", "f/new"),
        ("delete", "deployment", "f/gone"),
    ]
    assert snapshot(store)[0] == 1


# --- every valid corpus file and every example: apply, then plan shows nothing -----------------


class _AnyOutputs(Mapping[str, Any]):
    """Build outputs for a project that was "built": every key of every step has a value."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __getitem__(self, key: str) -> Any:
        return f"{self.prefix}{key}"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _built(d: Any) -> BuildOutputs:
    ids = {s.id for s in (*d.build, *d.push) if s.id}
    return BuildOutputs({**{i: _AnyOutputs(f"{i}.") for i in ids}, **{"(any)": _AnyOutputs("flat.")}})


def _valid_corpus() -> list[str]:
    index = CORPUS / "INDEX.tsv"
    if not index.is_file():
        return []
    rows = csv.DictReader(index.open(), delimiter="\t")
    return [r["file"] for r in rows if "invalid" not in r["features"].split(",")]


# Files with Prefect's silent-typo bug (#17204): an output reference to a step id (or a flat output)
# that does not exist. Prefect drops the value; buildsys refuses with the error `validate` gives, at
# the placeholder (inside the anchor it came from, for 062).
TYPOS = {
    "009-carlosdmv7-job-market-intelligence.yaml": (
        "22:19", "{{ clone-output }} does not match any step id or output before it (Prefect would silently drop the value)"),
    "031-kevingrismore-cicd-example.yaml": (
        "27:17", "{{ build-image.image }} refers to step 'build-image', which does not exist here (Prefect would silently drop the value)"),
    "062-zzstoatzz-prefect-monorepo.yaml": (
        "25:25", "{{ build_image.image }} refers to step 'build_image', which does not exist here (Prefect would silently drop the value)"),
}


@pytest.mark.parametrize("name", _valid_corpus())
def test_corpus_apply_then_plan_shows_no_changes(name: str, tmp_path: Path) -> None:
    if name in TYPOS:
        with pytest.raises(ProjectError) as err:
            _round_trip(CORPUS / name, tmp_path)
        at, message = TYPOS[name]
        assert (str(err.value.location).split(":", 1)[1], err.value.message) == (at, message)
        return
    _round_trip(CORPUS / name, tmp_path)


@pytest.mark.parametrize("example", sorted(p.parent.name for p in (REPO / "examples").glob("*/prefect.yaml")))
def test_example_apply_then_plan_shows_no_changes(example: str, tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples" / example, tmp_path / example)
    _round_trip(tmp_path / example / "prefect.yaml", tmp_path, copy=False)


def _round_trip(source: Path, tmp_path: Path, *, copy: bool = True) -> None:
    file = tmp_path / "prefect.yaml" if copy else source
    if copy:
        shutil.copy(source, file)
    with SqlStore.sqlite(tmp_path / "state.db") as s:
        _, want = read_desired(file, outputs=lambda project: _built)
        first = plan(want, s.list_resources(), serial=s.serial())
        apply_plan(s, first)
        again = plan(want, s.list_resources(), serial=s.serial())
        assert [c.address for c in again.changes] == []
        reread = read_desired(file, outputs=lambda project: _built)[1]
        assert not plan(reread, s.list_resources(), serial=s.serial()).has_changes
        serial, known = snapshot(s, known=known_specs(reread))  # as plan_project reads the store
        assert known == s.list_resources() and not plan(reread, known, serial=serial).has_changes
        assert sorted(r.name for r in s.list_resources()) == sorted(r.name for r in want.resources)
        assert all(r.owner == want.owner for r in s.list_resources())


def test_a_listing_given_the_desired_specs_plans_as_one_that_decodes_them(store: SqlStore) -> None:
    """`known_specs`: a stored spec whose text is a desired one's is handed back as that value, not
    decoded; a spec edited out of band, a number stored for a boolean and another owner still show."""
    want = desired(
        res("pool", "p", type="process"),
        res("deployment", "f/same", tags=["a"], retries=1, paused=False),
        res("deployment", "f/drift", tags=["b"]),
        res("deployment", "f/later", tags=["c"], version=UNKNOWN),
        res("variable", "flag", value=True),
    )
    first = (*want.resources[:2], res("deployment", "f/later", tags=["c"], version="1"), want.resources[4])
    apply_plan(store, plan(desired(*first), [], serial=0))
    store.apply(
        [
            Change("create", "deployment", "f/drift", {"tags": ["edited"]}, "demo", SOURCE),
            Change("update", "variable", "flag", {"value": 1}, "demo", SOURCE),
            Change("update", "pool", "p", {"type": "process"}, "another", SOURCE),
        ],
        expected_serial=None,
    )
    known = known_specs(want)
    assert len(known) == 4  # not the spec holding a value known only after the build
    serial, listed = snapshot(store, known=known)
    decoded = store.list_resources()
    assert listed == decoded
    shared = {r.name for r in listed if any(r.spec is w.spec for w in want.resources)}
    assert shared == {"p", "f/same"}
    fast, slow = plan(want, listed, serial=serial), plan(want, decoded, serial=serial)
    assert fast.to_dict() == slow.to_dict()
    assert sorted((c.action, c.name, [f.path for f in c.fields], c.previous_owner) for c in fast.changes) == [
        ("update", "f/drift", ["tags"], None),
        ("update", "f/later", ["version"], None),
        ("update", "flag", ["value"], None),
        ("update", "p", [], "another"),
    ]


def test_stored_resource_records_round_trip() -> None:
    r = Resource("deployment", "f/d", {"tags": ["a"]}, owner="o", source=SOURCE)
    assert Resource.from_dict(r.to_dict()) == r


@pytest.mark.parametrize("named", [True, False], ids=["names-in-the-query", "rows-filtered"])
def test_a_partial_plan_reads_only_its_own_deployments(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    """A plan of some deployments lists every pool and variable but only those deployments: the
    same plan as from the whole listing; another deployment's record is not even decoded."""
    import sqlite3

    import buildsys.store.sql

    if not named:  # more names than a query holds: every row read, the others left undecoded
        monkeypatch.setattr(buildsys.store.sql, "_LISTED_NAMES", 0)
    apply_plan(store, plan(desired(
        res("pool", "p", type="process"), res("pool", "old", type="process"), res("variable", "v", value=1),
        *(res("deployment", f"f/{n}", work_pool_name="p", tags=[n]) for n in "abcd"),
    ), [], serial=0))
    with sqlite3.connect(tmp_path / "state.db") as db:  # damaged out of band: only a full listing decodes it
        db.execute("UPDATE resources SET spec = 'not json' WHERE name = 'f/a'")
    db.close()
    want = DesiredState("demo", SOURCE, (
        res("pool", "p", type="process"), res("deployment", "f/b", work_pool_name="p", tags=["b", "new"]),
        res("deployment", "f/new", work_pool_name="gone", tags=[]),
    ), partial=True)
    serial, listed = snapshot(store, known=known_specs(want), deployments=["f/b", "f/new"])
    assert [(r.kind, r.name) for r in listed] == [("deployment", "f/b"), ("pool", "old"), ("pool", "p"), ("variable", "v")]
    with pytest.raises(Exception, match="damaged"):
        store.list_resources()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("""UPDATE resources SET spec = '{"tags":["a"],"work_pool_name":"p"}' WHERE name = 'f/a'""")
    db.close()
    whole = plan(want, store.list_resources(), serial=serial)
    assert plan(want, listed, serial=serial).to_dict() == whole.to_dict()
    assert [(c.action, c.name) for c in whole.changes] == [("update", "f/b"), ("create", "f/new")]
    assert whole.orphans == ("pool old", "variable v") and whole.warnings  # no deployment: the plan is partial
