"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): whatever the
generated request, the answer is never a 5xx and matches the documented responses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from buildsys.server.auth import Authenticator, TokenStore, database_for
from buildsys.server.openapi import document
from buildsys.server.schemas import MAX_WAIT_SECONDS
from buildsys.store import open_store
from buildsys.store.base import Change
from tests.server.running import threaded_server
from tests.services.postgres import PostgresServer, fresh_database

schema = schemathesis.openapi.from_dict(document())
LONG_POLL_CAP = 0.05  # generated `wait`s would make the run slow, not more thorough


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A server with auth on, over SQLite or PostgreSQL, holding a pool, a deployment and a run."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = str(Path(tmp_path_factory.mktemp("fuzz")) / "server.db")
        else:
            server: PostgresServer = request.getfixturevalue("postgres_server")
            url = stack.enter_context(contextmanager(fresh_database)(server))
        store = open_store(url)
        stack.callback(store.close)
        store.apply(
            [
                Change("create", "pool", "local", {"type": "process"}),
                Change(
                    "create",
                    "deployment",
                    "etl/nightly",
                    {"flow_name": "etl", "name": "nightly", "work_pool_name": "local"},
                ),
            ],
            expected_serial=None,
        )
        store.create_run("etl/nightly")
        _, secret = TokenStore(database_for(url)).create("admin")
        authenticator = Authenticator(TokenStore(database_for(url)))
        yield stack.enter_context(threaded_server(store, authenticator=authenticator)), secret


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_answers_5xx(case: schemathesis.Case, api: tuple[str, str]) -> None:
    url, token = api
    for values in (case.body, case.query):
        if isinstance(values, dict) and _valid_wait(values.get("wait")):
            values["wait"] = min(values["wait"], LONG_POLL_CAP)  # invalid waits stay as generated
    response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    )
    # the store refuses some well-formed requests on their meaning (an unknown kind, a run id that
    # matches nothing, an import whose rows are incomplete): documented 4xx, so that check is off
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])


def _valid_wait(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_WAIT_SECONDS
