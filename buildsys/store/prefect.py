"""A real Prefect server as a state store (`--state prefect+http(s)://HOST/api`).

Pools, deployments (with their schedules and trigger automations) and variables are read from
Prefect's REST API and shown as buildsys resources; what buildsys makes carries an ownership mark
(a `buildsys:<project>` tag; pools, which have no tags, an owner variable), so prune only ever
deletes marked resources. Prefect has no transactions: apply writes one change at a time in the
plan's order (`apply_change`), and the reconciler stops at the first failure and says what was
written. Flow runs and logs are Prefect's own; Prefect's workers run them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from buildsys.errors import BuildsysError, NotFoundError, StateError
from buildsys.httpclient import httpx
from buildsys.store import prefect_specs as specs
from buildsys.store.base import Change, Resource, WorkerInfo
from buildsys.store.prefect_api import PrefectApi
from buildsys.store.prefect_runs import PrefectRuns
from buildsys.timestamps import epoch

# the Prefect collections each kind is read from
_READS = {
    "variable": ("variables",),
    "pool": ("variables", "work_pools", "work_queues"),
    "deployment": ("deployments", "flows", "automations"),
}
_COLLECTIONS = ("variables", "work_pools", "work_queues", "deployments", "flows", "automations")
# only automations tagged as a deployment's trigger are read (the others are not buildsys's)
_FILTERS: dict[str, Mapping[str, Any]] = {"automations": {"automations": {"tags": {"all_": [specs.TRIGGER_TAG]}}}}
META = "_prefect"  # spec key holding Prefect's ids and `updated` stamp (never compared, never written)


class PrefectStore(PrefectRuns):
    """StateStore (and StepwiseStore) over a Prefect server's API."""

    schedules_itself = True  # Prefect's own scheduler makes the runs of scheduled deployments

    def __init__(
        self, url: str, *, key_env: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.api = PrefectApi(url, key_env=key_env, transport=transport)

    def close(self) -> None:
        self.api.close()

    def serial(self) -> int:
        """Prefect has no serial; saved plans are checked resource by resource instead."""
        return 0

    # --- reading ---------------------------------------------------------------------------
    def list_resources(self, kind: str | None = None) -> list[Resource]:
        """Everything of the kind(s), read with one listing per Prefect collection, in parallel."""
        if kind is not None and kind not in _READS:
            raise StateError(f"unknown resource kind {kind!r}", hint="one of: variable, pool, deployment")
        wanted = [k for k in _COLLECTIONS if kind is None or k in _READS[kind]]
        return self._resources(kind, self._read({k: _FILTERS.get(k) for k in wanted}))

    def plan_resources(self, owner: str, deployments: Collection[str]) -> list[Resource]:
        """Every pool and variable, and the deployments named `deployments` or carrying `owner`'s
        tag, with their flows and triggers. Prefect filters them (its filters cannot say "tag, or
        flow and name", so the owned ones are read first, with everything else, and the named ones
        that were not among them in a second round): a plan's reads do not grow with the other
        projects on the server, and a project that owns all it declares needs one round."""
        owned = {"deployments": {"tags": {"all_": specs.owner_tags(owner)}}}
        got = self._read({**{k: _FILTERS.get(k) for k in _COLLECTIONS}, "deployments": owned, "flows": owned})
        flows = {f["id"]: f["name"] for f in got["flows"]}
        missing = set(deployments) - {f"{flows.get(d['flow_id'])}/{d['name']}" for d in got["deployments"]}
        if missing:
            by_name = {"name": {"any_": sorted({n.partition("/")[0] for n in missing})}}
            named = {"flows": by_name, "deployments": {"name": {"any_": sorted({n.partition("/")[2] for n in missing})}}}
            more = self._read({"deployments": named, "flows": {"flows": by_name}})
            seen = {d["id"] for d in got["deployments"]}
            got["deployments"] += [d for d in more["deployments"] if d["id"] not in seen]
            got["flows"] += more["flows"]
        wanted = set(deployments)
        return [
            r for r in self._resources(None, got) if r.kind != "deployment" or r.name in wanted or r.owner == owner
        ]

    def _read(self, bodies: Mapping[str, Mapping[str, Any] | None]) -> dict[str, list[Any]]:
        """Each collection's listing (its filter body, or None for all), all at once."""
        with ThreadPoolExecutor(len(bodies)) as pool:
            jobs = {k: pool.submit(self._all, k, body) for k, body in bodies.items()}
            return {k: job.result() for k, job in jobs.items()}

    def _resources(self, kind: str | None, got: Mapping[str, list[Any]]) -> list[Resource]:
        out: list[Resource] = []
        variables = got.get("variables", [])
        if kind in (None, "variable"):
            out += [self._variable(v) for v in variables if not v["name"].startswith(specs.POOL_OWNER_VARIABLE)]
        if kind in (None, "pool"):
            out += self._pools(got["work_pools"], got["work_queues"], variables)
        if kind in (None, "deployment"):
            flows = {f["id"]: f["name"] for f in got["flows"]}
            out += self._deployments(got["deployments"], flows, got["automations"])
        return out

    def _all(self, collection: str, body: Mapping[str, Any] | None = None) -> list[Any]:
        return list(self.api.pages(f"/{collection}/filter", body))

    def get_resource(self, kind: str, name: str) -> Resource | None:
        if kind == "variable":
            found = self.api.read("/variables/filter", {"variables": {"name": {"any_": [name]}}})
            return self._variable(found[0]) if found else None
        if kind == "pool":
            try:
                pool = self.api.get(f"/work_pools/{_seg(name)}")
            except NotFoundError:
                return None
            owners = self.api.read("/variables/filter", {"variables": {"name": {"any_": [specs.pool_owner_variable(name)]}}})
            queues = self.api.read(f"/work_pools/{_seg(name)}/queues/filter")
            return self._pool(pool, queues, owners[0] if owners else None)
        if kind == "deployment":
            flow, _, dep = name.partition("/")
            try:
                data = self.api.get(f"/deployments/name/{_seg(flow)}/{_seg(dep)}")
            except NotFoundError:
                return None
            flows = {data["flow_id"]: flow}
            return self._deployments([data], flows, self._all("automations", _FILTERS["automations"]))[0]
        raise StateError(f"unknown resource kind {kind!r}", hint="one of: variable, pool, deployment")

    def _variable(self, v: Mapping[str, Any]) -> Resource:
        spec = {**specs.variable_spec(v), META: _meta(v, v.get("updated"))}
        return _resource("variable", v["name"], spec, v, specs.owner_of(v.get("tags") or []))

    def _pools(
        self, pools: Sequence[Mapping[str, Any]], queues: Sequence[Mapping[str, Any]], variables: Sequence[Mapping[str, Any]]
    ) -> list[Resource]:
        by_pool: dict[str, list[Mapping[str, Any]]] = {}
        for q in queues:
            by_pool.setdefault(str(q.get("work_pool_id")), []).append(q)
        owners = {v["name"]: v for v in variables if v["name"].startswith(specs.POOL_OWNER_VARIABLE)}
        return [self._pool(p, by_pool.get(p["id"], []), owners.get(specs.pool_owner_variable(p["name"]))) for p in pools]

    def _pool(
        self, p: Mapping[str, Any], queues: Sequence[Mapping[str, Any]], owner: Mapping[str, Any] | None
    ) -> Resource:
        record = owner.get("value") if owner else None
        record = record if isinstance(record, Mapping) else {}
        spec = specs.pool_spec(p, queues)
        stamps = [p.get("updated"), *(q.get("updated") for q in queues), owner.get("updated") if owner else None]
        spec[META] = {**_meta(p, _latest(stamps)), "queues": {q["name"]: q["id"] for q in queues}}
        return _resource("pool", p["name"], spec, p, record.get("owner"), record.get("source"))

    def _deployments(
        self, deployments: Sequence[Mapping[str, Any]], flows: Mapping[str, str], automations: Sequence[Mapping[str, Any]]
    ) -> list[Resource]:
        triggers: dict[str, list[Mapping[str, Any]]] = {}
        for a in automations:
            target = specs.automation_deployment(a)
            if target and specs.TRIGGER_TAG in (a.get("tags") or []):
                triggers.setdefault(target, []).append(a)
        out = []
        for d in deployments:
            mine = triggers.get(str(d["id"]), [])
            spec = specs.deployment_spec(d, flows.get(d["flow_id"], "?"), mine)
            stamps = [d.get("updated"), *(s.get("updated") for s in d.get("schedules") or ()), *(a.get("updated") for a in mine)]
            spec[META] = {
                **_meta(d, _latest(stamps)),
                "schedules": _ids_by(d.get("schedules") or [], specs.schedule_spec),
                "triggers": _ids_by(mine, specs.trigger_spec),
            }
            name = f"{spec['flow_name']}/{d['name']}"
            out.append(_resource("deployment", name, spec, d, specs.owner_of(d.get("tags") or [])))
        return out

    # --- planning (StepwiseStore) ----------------------------------------------------------
    def normalise(self, kind: str, spec: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
        if kind == "pool":
            return specs.normalise_pool(spec, stored)
        if kind == "deployment":
            return specs.normalise_deployment(spec, stored)
        return dict(spec)

    def changed_since(self, before: Mapping[str, Any] | None, current: Resource | None) -> str | None:
        """Why a resource a plan touches is no longer as planned (None: it is). Prefect's `updated`
        stamps also move on bookkeeping (a worker polling a deployment), so a moved stamp is only a
        change when the resource's content moved too."""
        if before is None:
            return None if current is None else f"it was created since (updated {_stamp(current)})"
        if current is None:
            return "it was deleted since"
        planned = before.get(META, {}).get("updated")
        if planned is not None and planned == current.spec.get(META, {}).get("updated"):
            return None
        was = {k: v for k, v in before.items() if k != META}
        now = {k: v for k, v in current.spec.items() if k != META}
        if was == now:
            return None
        fields = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
        return f"{', '.join(fields)} changed since (updated {_stamp(current)})"

    def serve_refusal(self, pool: str) -> str:
        return (
            f"{self.url} is a Prefect server: its runs are served by Prefect's own workers, not by "
            f"`buildsys worker`. Start one with: prefect worker start --pool {pool}"
        )

    # --- writing ---------------------------------------------------------------------------
    def apply(self, changes: Sequence[Change], *, expected_serial: int | None) -> int:
        """Prefect has no transactions: the changes are written one by one, in order, stopping at
        the first failure (the reconciler's stepwise apply says what was written)."""
        for change in changes:
            self.apply_change(change, self.get_resource(change.kind, change.name))
        return 0

    def apply_change(self, change: Change, current: Resource | None) -> None:
        from buildsys.store import prefect_writes as writes

        before = len(self.api.written)
        try:
            writes.apply_change(self.api, change, current)
        except BuildsysError as exc:
            done = self.api.written[before:]
            if not done:
                raise
            raise StateError(
                f"{exc.message} (for this change Prefect had already accepted: {', '.join(done)})", hint=exc.hint
            ) from None

    def export(self) -> dict[str, Any]:
        return {"version": 1, "serial": 0, "resources": [r.to_dict() for r in self.list_resources()], "runs": []}

    def import_(self, data: Mapping[str, Any]) -> None:
        raise StateError(
            "`state import` is not supported by the prefect store",
            hint="declare the resources in the project and apply them, or use `buildsys import deployment NAME`",
        )

    def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        names = [pool] if pool else [p["name"] for p in self.api.pages("/work_pools/filter")]
        out = []
        for name in names:
            for w in self.api.read(f"/work_pools/{_seg(name)}/workers/filter"):
                out.append(
                    WorkerInfo(
                        name=w["name"],
                        pool=name,
                        last_heartbeat=epoch(w.get("last_heartbeat_time")) or 0.0,
                        status=str(w.get("status") or "OFFLINE"),
                    )
                )
        return out

    # the runs half lives in PrefectRuns; these need the resource listing
    def _deployment_names(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        if not ids:
            return {}
        found = self.api.read("/deployments/filter", {"deployments": {"id": {"any_": sorted(set(ids))}}})
        flows = {
            f["id"]: f["name"]
            for f in self.api.read("/flows/filter", {"flows": {"id": {"any_": sorted({d["flow_id"] for d in found})}}})
        }
        return {d["id"]: (flows.get(d["flow_id"], "?"), d["name"]) for d in found}


def _resource(
    kind: str, name: str, spec: dict[str, Any], data: Mapping[str, Any], owner: str | None,
    source: Mapping[str, Any] | None = None,
) -> Resource:
    return Resource(
        kind=kind,
        name=name,
        spec=spec,
        owner=owner,
        source=source,
        id=str(data.get("id") or ""),
        created_at=epoch(data.get("created")) or 0.0,
        updated_at=epoch(spec.get(META, {}).get("updated")) or 0.0,
    )


def _meta(data: Mapping[str, Any], updated: Any) -> dict[str, Any]:
    return {"id": data.get("id"), "updated": updated}


def _ids_by(items: Sequence[Mapping[str, Any]], to_spec: Callable[[Mapping[str, Any]], Any]) -> list[list[str]]:
    """[item key, Prefect id] pairs, so apply can find the object behind an unchanged item."""
    return [[specs.item_key(to_spec(i)), str(i["id"])] for i in items]


def _latest(stamps: Sequence[Any]) -> Any:
    present = [s for s in stamps if isinstance(s, str)]
    return max(present) if present else None


def _stamp(r: Resource) -> str:
    return str(r.spec.get(META, {}).get("updated") or "?")


def _seg(name: str) -> str:
    return quote(name, safe="")

