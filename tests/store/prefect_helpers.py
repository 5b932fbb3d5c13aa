"""Helpers for the tests of the prefect+http store: a counting / fault-injecting HTTP transport,
projects written to temp dirs, and plan/apply through the same library calls the CLI makes."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from buildsys.desired import BuildOutputs, DesiredState, read_desired
from buildsys.model import Deployment, Project
from buildsys.plan import Plan, plan
from buildsys.reconcile import ApplyResult, apply_plan, stepwise
from buildsys.store.prefect import PrefectStore

WRITES = ("POST", "PATCH", "PUT", "DELETE")


@dataclass
class Counting(httpx.BaseTransport):
    """Counts requests (reads are Prefect's POST .../filter too) and can fail chosen writes."""

    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: Callable[[str, str], bool] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        if self.fail is not None and self.fail(method, path):
            return httpx.Response(500, json={"detail": "injected failure"}, request=request)
        return self.inner.handle_request(request)

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in WRITES and not p.endswith(("/filter", "/count"))
                and "/related-to/" not in p]

    def close(self) -> None:
        self.inner.close()


def open_store(api_url: str, transport: httpx.BaseTransport | None = None) -> PrefectStore:
    return PrefectStore(f"prefect+{api_url}", transport=transport)


def write_project(root: Path, text: str, flows: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "prefect.yaml").write_text(textwrap.dedent(text))
    for rel, source in (flows or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(source))
    return root / "prefect.yaml"


def flow_source(func: str, flow_name: str, params: Sequence[str] = ()) -> str:
    args = ", ".join(f"{p}=None" for p in params)
    return f'from prefect import flow\n\n\n@flow(name="{flow_name}")\ndef {func}({args}):\n    """{func}."""\n    print("ran {flow_name}")\n'


REF = re.compile(r"\{\{\s*([\w-]+)\.([\w-]+)[^}]*\}\}")
FLAT_REF = re.compile(r"\{\{\s*([\w-]+)\s*\}\}")


def built_outputs(project: Project) -> Callable[[Deployment], BuildOutputs | None]:
    """Stand-in outputs for build/push steps (no image is built here): every `{{ id.key }}` the
    file names gets the value `built-<id>-<key>`, every `{{ key }}` (the flat namespace) `built-<key>`."""
    text = project.file.read_text()
    refs: dict[str, dict[str, Any]] = {}
    for sid, key in REF.findall(text):
        refs.setdefault(sid, {})[key] = f"built-{sid}-{key}"

    def outputs(d: Deployment) -> BuildOutputs | None:
        ids = {s.id for s in (*d.build, *d.push) if s.id}
        flat = {key: f"built-{key}" for key in FLAT_REF.findall(text) if key not in ids}
        return BuildOutputs({**flat, **{sid: refs.get(sid, {}) for sid in ids}})

    return outputs


def desired(project_file: Path, *, outputs: bool = False) -> DesiredState:
    return read_desired(project_file, outputs=built_outputs if outputs else None)[1]


def make_plan(store: PrefectStore, state: DesiredState, *, prune: bool = False, owner: str | None = None) -> Plan:
    """As `plan_project` makes it: against what the project can touch (`plan_resources`)."""
    names = [r.name for r in state.resources if r.kind == "deployment"]
    actual = store.plan_resources(owner or state.owner, names)
    return plan(state, actual, serial=store.serial(), prune=prune, owner=owner, stepwise=stepwise(store))


def apply(store: PrefectStore, made: Plan) -> ApplyResult:
    return apply_plan(store, made)


def changed_fields(made: Plan) -> dict[str, list[str]]:
    return {c.address: [f.path for f in c.fields] for c in made.changes}
