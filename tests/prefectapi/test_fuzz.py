"""Property-based fuzzing of /prefect/api (hypothesis): whatever JSON a client sends to any route,
with any path values, the answer is never a 5xx; and what it reads back over HTTP is the same
record the store holds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildsys.prefectapi.routes import ENDPOINTS
from buildsys.store.http import HttpStore
from buildsys.store.sql import SqlStore
from tests.prefectapi.engine import claimed_run, deploy
from tests.server.running import threaded_server

API = "/prefect/api"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# bodies shaped like what Prefect sends, with hostile values in the fields the handlers read
field_names = st.sampled_from(
    ["name", "state", "type", "force", "flow_id", "parameters", "names", "slots", "lease_duration", "level",
     "message", "flow_run_id", "task_run_id", "key", "data", "value", "tag", "concurrency_limit", "limit",
     "flow_runs", "any_", "id", "empirical_policy", "retries", "retry_delay", "state_details", "lease_id"]
)  # fmt: skip
shaped = st.recursive(
    scalars, lambda inner: st.dictionaries(field_names, inner, max_size=5) | st.lists(inner, max_size=3), max_leaves=15
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SqlStore, list[str]]]:
    store = SqlStore.sqlite(Path(tmp_path_factory.mktemp("fuzz")) / "server.db")
    deploy(store)
    run = claimed_run(store, "etl")
    with threaded_server(store) as url:
        yield url, store, [run.id, run.deployment_id, "local", "etl", "main", "default"]
    store.close()


ROUTES = [(ep.method, ep.path) for ep in ENDPOINTS]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=st.one_of(json_values, shaped), ids=st.lists(st.one_of(st.text(max_size=40), st.just("")), min_size=3, max_size=3), pick=st.integers(0, 5))
def test_no_route_answers_5xx(
    served: tuple[str, SqlStore, list[str]], method: str, path: str, body: Any, ids: list[str], pick: int
) -> None:
    url, _, known = served
    values = iter([known[pick], *ids])
    concrete = re.sub(r"\{[^}]+\}", lambda _: quote(next(values, "x"), safe="") or "x", path)
    answer = httpx.request(method, f"{url}{API}{concrete}", json=body if method != "GET" else None, timeout=30)
    assert answer.status_code < 500, (method, concrete, body, answer.text)


def test_task_runs_and_artifacts_read_back_over_the_http_store(served: tuple[str, SqlStore, list[str]]) -> None:
    url, store, known = served
    run_id = known[0]
    httpx.post(f"{url}{API}/task_runs/", json={"name": "t", "flow_run_id": run_id, "state": {"type": "RUNNING"}})
    httpx.post(f"{url}{API}/artifacts/", json={"key": "k", "type": "table", "data": [[1]], "flow_run_id": run_id})
    with HttpStore(url) as remote:
        assert remote.list_task_runs(run_id) == store.list_task_runs(run_id)
        assert remote.list_artifacts(flow_run_id=run_id) == store.list_artifacts(flow_run_id=run_id)
        assert remote.set_concurrency_limit("tag:x", 2) == store.list_concurrency_limits()[0]
        assert remote.list_concurrency_limits() == store.list_concurrency_limits()
