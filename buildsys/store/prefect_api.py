"""The HTTP client of a Prefect server's REST API (`prefect+http(s)://HOST/api`), with its errors
turned into buildsys's. Reads are retried on connection errors and 5xx answers; writes only on 503
and 429, which Prefect answers before doing anything (a busy database, rate limits), as its own
client does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from buildsys.errors import ConflictError, NotFoundError, StateError
from buildsys.httpclient import ONE_ORIGIN, httpx

SCHEME = "prefect+"
PAGE = 200  # Prefect's default (and usual maximum) page size
RETRIES = 4
BACKOFF = 0.25
NOT_DONE = (429, 503)  # answers that say the request was not carried out


class PrefectUnreachableError(StateError):
    """The Prefect server did not answer (down, wrong URL, network)."""


class PrefectRefusedError(StateError):
    """The Prefect server refused a request (4xx other than 404/409)."""


def api_url(url: str) -> str:
    """`prefect+http://host/api` -> `http://host/api`."""
    return url[len(SCHEME) :].rstrip("/") if url.startswith(SCHEME) else url.rstrip("/")


class PrefectApi:
    def __init__(
        self,
        url: str,
        *,
        key_env: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = api_url(url)
        key = os.environ.get(key_env or "PREFECT_API_KEY") or None
        if key_env and key is None:
            raise StateError(
                f"--state-key-env names {key_env}, which is not set",
                hint=f"export {key_env}=<your Prefect API key>, or drop --state-key-env",
            )
        headers = {"Accept": "application/json", "User-Agent": "buildsys"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if transport is None and self.base.startswith("http://"):
            # plain HTTP needs no certificates: loading the CA bundle is most of a Client's start-up
            transport = httpx.HTTPTransport(verify=False, limits=ONE_ORIGIN)
        self.client = httpx.Client(
            base_url=self.base, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport,
            limits=ONE_ORIGIN,
        )

        self._flows: dict[str, str] = {}
        self.written: list[str] = []  # the writes Prefect accepted, in order

    def close(self) -> None:
        self.client.close()

    def flow_id(self, name: str) -> str:
        """The id of the flow with this name, made if missing (once per name and client)."""
        if name not in self._flows:
            self._flows[name] = str(self.write("POST", "/flows/", {"name": name})["id"])
        return self._flows[name]

    def get(self, path: str) -> Any:
        return self.call("GET", path, read=True)

    def read(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """A POST that only reads (Prefect's `/filter` endpoints)."""
        return self.call("POST", path, body=dict(body or {}), read=True)

    def pages(self, path: str, body: Mapping[str, Any] | None = None) -> Iterator[Any]:
        offset = 0
        while True:
            items = self.read(path, {**(body or {}), "limit": PAGE, "offset": offset})
            yield from items
            if len(items) < PAGE:
                return
            offset += len(items)

    def write(self, method: str, path: str, body: Any = None) -> Any:
        result = self.call(method, path, body=body, read=False)
        self.written.append(f"{method} {path}")
        return result

    def call(self, method: str, path: str, *, body: Any = None, read: bool) -> Any:
        attempts = RETRIES + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError as exc:
                if last or not read:
                    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
                    raise PrefectUnreachableError(
                        f"the Prefect server at {self.base} {kind}: {exc or type(exc).__name__}",
                        hint="check the URL given to --state (prefect+http(s)://HOST/api) and that the server runs",
                    ) from None
            else:
                status = response.status_code
                if last or (status < 500 and status not in NOT_DONE) or (not read and status not in NOT_DONE):
                    return self._result(method, path, response)
            time.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if 200 <= status < 300:
            return response.json() if response.content else None
        detail = _detail(response)
        what = f"Prefect refused {method} {path} ({status}): {detail}"
        if status in (401, 403):
            hint = "set PREFECT_API_KEY (or name another variable with --state-key-env)" if status == 401 else None
            raise PrefectRefusedError(what, hint=hint)
        if status == 404:
            raise NotFoundError(what)
        if status == 409:
            raise ConflictError(what)
        if status < 500:
            raise PrefectRefusedError(what)
        raise StateError(f"the Prefect server at {self.base} failed on {method} {path} ({status}): {detail}")


def _detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(payload, dict):
        if isinstance(payload.get("exception_detail"), list):
            parts = []
            for d in payload["exception_detail"][:3]:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                    parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
            return "; ".join(parts) or str(payload.get("exception_message"))
        if "detail" in payload:
            return str(payload["detail"])
    return str(payload)[:300]
