"""The prefect+http transport's client without a server: the API key, error wording, retries."""

from __future__ import annotations

import httpx
import pytest

from buildsys.errors import NotFoundError, StateError
from buildsys.store import open_store
from buildsys.store.prefect import PrefectStore
from buildsys.store.prefect_api import PrefectRefusedError


def recording(responses: list[httpx.Response]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0) if len(responses) > 1 else responses[0]

    return httpx.MockTransport(handle), seen


def test_url_and_api_key_from_prefect_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    transport, seen = recording([httpx.Response(200, json=[])])
    store = PrefectStore("prefect+https://prefect.example/api", transport=transport)
    assert store.list_resources("variable") == []
    assert str(seen[0].url) == "https://prefect.example/api/variables/filter"
    assert seen[0].headers["authorization"] == "Bearer pnu_secret"


def test_state_key_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    monkeypatch.setenv("TEAM_PREFECT_KEY", "k2")
    transport, seen = recording([httpx.Response(200, json=[])])
    PrefectStore("prefect+http://127.0.0.1:9/api", key_env="TEAM_PREFECT_KEY", transport=transport).list_resources("variable")
    assert seen[0].headers["authorization"] == "Bearer k2"
    with pytest.raises(StateError, match="--state-key-env names NOPE_KEY, which is not set"):
        open_store("prefect+http://127.0.0.1:9/api", key_env="NOPE_KEY")


def test_no_key_sends_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    transport, seen = recording([httpx.Response(200, json=[])])
    PrefectStore("prefect+http://127.0.0.1:9/api", transport=transport).list_resources("variable")
    assert "authorization" not in seen[0].headers


def test_refusals_name_the_request_and_prefect_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    body = {"exception_detail": [{"loc": ["body", "value"], "msg": "String should have at most 5000 characters"}]}
    transport, _ = recording([httpx.Response(422, json=body)])
    store = PrefectStore("prefect+http://127.0.0.1:9/api", transport=transport)
    with pytest.raises(PrefectRefusedError) as info:
        store.api.write("POST", "/variables/", {"name": "x", "value": "y"})
    assert info.value.message == "Prefect refused POST /variables/ (422): value: String should have at most 5000 characters"
    transport, _ = recording([httpx.Response(401, json={"detail": "Unauthorized"})])
    with pytest.raises(PrefectRefusedError) as info:
        PrefectStore("prefect+http://127.0.0.1:9/api", transport=transport).list_resources("variable")
    assert "PREFECT_API_KEY" in (info.value.hint or "")
    transport, _ = recording([httpx.Response(404, json={"detail": "Deployment not found."})])
    with pytest.raises(NotFoundError, match="Deployment not found"):
        PrefectStore("prefect+http://127.0.0.1:9/api", transport=transport).api.get("/deployments/x")


def test_writes_are_retried_only_when_prefect_did_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    monkeypatch.setattr("buildsys.store.prefect_api.BACKOFF", 0.0)
    transport, seen = recording([httpx.Response(503, json={}), httpx.Response(201, json={"id": "1"})])
    store = PrefectStore("prefect+http://127.0.0.1:9/api", transport=transport)
    assert store.api.write("POST", "/variables/", {}) == {"id": "1"}
    assert len(seen) == 2 and store.api.written == ["POST /variables/"]
    transport, seen = recording([httpx.Response(500, json={}), httpx.Response(201, json={"id": "1"})])
    store = PrefectStore("prefect+http://127.0.0.1:9/api", transport=transport)
    with pytest.raises(StateError, match=r"failed on POST /variables/ \(500\)"):
        store.api.write("POST", "/variables/", {})
    assert len(seen) == 1 and store.api.written == []


def test_the_store_is_named_without_its_secret() -> None:
    from buildsys.store import describe_store

    assert describe_store("prefect+https://u:tok@prefect.example/api/") == "Prefect server https://u:****@prefect.example/api"
