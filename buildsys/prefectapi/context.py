"""What the Prefect API's handlers share: the store, the threads that call it, who checks tokens,
and one request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from starlette.requests import Request

from buildsys.errors import StateError
from buildsys.server.inbound import BlockingCalls
from buildsys.store.base import EngineRecords, StateStore

T = TypeVar("T")


class TokenLike(Protocol):
    @property
    def scope(self) -> str: ...

    def allows(self, needed: str) -> bool: ...


class TokenChecker(Protocol):
    """buildsys.server.auth.Authenticator, or the worker's per-run keys."""

    def check(self, header: str | None) -> TokenLike | None: ...


class DatabaseStore(StateStore, EngineRecords, Protocol):
    """A store the Prefect API can write to (the SQL store)."""


def database_store(store: StateStore) -> DatabaseStore:
    if not isinstance(store, EngineRecords):
        raise StateError(
            f"the Prefect-compatible API needs a database store, not {store!r}",
            hint="serve it where the database is: `buildsys server`, or the worker on a file store",
        )
    return cast(DatabaseStore, store)


class ApiError(Exception):
    """An HTTP error; rendered as Prefect's {"detail": message}."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Services(BlockingCalls):
    store_: StateStore
    executor: ThreadPoolExecutor
    authenticator: TokenChecker | None = None
    poll_seconds: float = 0.5
    known_flows: set[str] = field(default_factory=set)  # flow names already in the flows table

    def __post_init__(self) -> None:
        self.store: DatabaseStore = database_store(self.store_)


@dataclass
class Call:
    request: Request
    services: Services
    body: Any
    path: Mapping[str, str]
    run_key: str | None = None  # the flow run a per-run key (the worker's EmbeddedApi) is bound to

    @property
    def store(self) -> DatabaseStore:
        return self.services.store

    async def sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.services.run(fn, *args, **kwargs)
