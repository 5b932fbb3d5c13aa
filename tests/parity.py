"""Running real Prefect and buildsys on the same project and reading back what each stored.

A project is a copy of a corpus file (as prefect.yaml) plus small generated flow files for the
entrypoints it names: each flow takes the parameters its deployments give it, typed from their
values, so the parameter schemas have something to describe. `prefect deploy --all` runs against
the session's Prefect server (pools created first, as Prefect requires); `buildsys apply` writes to
a SQLite store; both run in the same directory, so default pull steps name the same path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.services.prefect import PrefectServer, prefect_env

BUILDSYS = [sys.executable, "-m", "buildsys"]
TIMEOUT_S = 180.0


def flow_source(functions: Mapping[str, Mapping[str, Any]], suffix: str = "") -> str:
    """A flow module defining each function with the given parameters (name → example value);
    flow names get `suffix`, so that what a test creates on a shared server is its own."""
    lines = ["from prefect import flow", ""]
    for func, params in functions.items():
        args = []
        for name, value in params.items():
            kind = _annotation(value)
            args.append(f"{name}: {kind} = {value!r}" if _literal(value) else f"{name}: {kind} | None = None")
        decorator = f'@flow(name="{func.replace("_", "-")}{suffix}")' if suffix else "@flow"
        lines += ["", decorator, f"def {func}({', '.join(args)}):", f'    """The {func} flow.', ""]
        if params:
            lines.append("    Args:")
            lines += [f"        {name}: the {name} parameter" for name in params]
        lines += ['    """', "    return None", ""]
    return "\n".join(lines)


def _annotation(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "str"


def _literal(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and not (isinstance(value, str) and "{{" in value)


def make_project(
    text: str, root: Path, *, suffix: str = "", extra_files: Mapping[str, str] | None = None
) -> Path:
    """`text` as `root/prefect.yaml`, with generated flow files for the entrypoints it names
    (files given in `extra_files` are written as they are instead)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prefect.yaml").write_text(text, encoding="utf-8")
    data = yaml.safe_load(text) or {}
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for dep in data.get("deployments") or []:
        if not isinstance(dep, dict) or not dep.get("entrypoint"):
            continue
        path, func = _entrypoint_file(str(dep["entrypoint"]))
        if Path(path).is_absolute():  # a file on the worker's machine: never write outside `root`
            continue
        params = files.setdefault(path, {}).setdefault(func, {})
        for source in [dep.get("parameters") or {}] + [
            s.get("parameters") or {} for s in _schedules(dep) if isinstance(s, dict)
        ]:
            for key, value in source.items():
                params.setdefault(str(key), value)
    for path, functions in files.items():
        if path in (extra_files or {}):
            continue
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(flow_source(functions, suffix), encoding="utf-8")
    for rel, text in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _schedules(dep: Mapping[str, Any]) -> list[Any]:
    out = list(dep.get("schedules") or [])
    if isinstance(dep.get("schedule"), dict):
        out.append(dep["schedule"])
    return out


def _entrypoint_file(entrypoint: str) -> tuple[str, str]:
    text = entrypoint.strip()
    while text.startswith("./"):
        text = text[2:]
    if ":" in text:
        path, func = text.rsplit(":", 1)
        return path, func
    module, func = text.rsplit(".", 1)
    return module.replace(".", "/") + ".py", func


def pools_of(project: Path) -> set[str]:
    data = yaml.safe_load((project / "prefect.yaml").read_text(encoding="utf-8")) or {}
    return {
        str(d["work_pool"]["name"])
        for d in data.get("deployments") or []
        if isinstance(d, dict) and isinstance(d.get("work_pool"), dict) and d["work_pool"].get("name")
    }


def ensure_pools(server: PrefectServer, names: Iterable[str]) -> None:
    """Prefect deploys only to pools that exist."""
    with httpx.Client(base_url=server.api_url, timeout=30) as client:
        for name in names:
            r = client.post("/work_pools/", json={"name": name, "type": "process"})
            assert r.status_code in (201, 409), r.text


# `prefect --no-prompt deploy --all` in each project directory, in one process: importing
# Prefect's CLI costs seconds, paid once instead of once per project.
DEPLOY_ALL = """
import json, os, sys
from prefect.cli._app import _run_cli
results = {}
for project in sys.argv[1:]:
    os.chdir(project)
    try:
        _run_cli(["--no-prompt", "deploy", "--all"])
        results[project] = 0
    except SystemExit as exc:
        results[project] = exc.code or 0
print("RESULTS " + json.dumps(results))
"""


def prefect_deploy_all(
    server: PrefectServer, projects: Iterable[Path], env: Mapping[str, str], home: Path
) -> tuple[dict[str, int], str]:
    """Exit code of `prefect deploy --all` per project directory, and the whole output."""
    home.mkdir(parents=True, exist_ok=True)
    ran = subprocess.run(
        [sys.executable, "-c", DEPLOY_ALL, *map(str, projects)],
        env=prefect_env(server.api_url, home, **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * 2,
        stdin=subprocess.DEVNULL,
    )
    output = ran.stdout + ran.stderr
    marker = [line for line in ran.stdout.splitlines() if line.startswith("RESULTS ")]
    assert ran.returncode == 0 and marker, output[-4000:]
    return json.loads(marker[-1].removeprefix("RESULTS ")), output


def buildsys(project: Path, state: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*BUILDSYS, "--state", str(state), *args],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def prefect_deployments(server: PrefectServer, flow_names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Prefect's stored deployments of these flows, by "flow/deployment"."""
    wanted = set(flow_names)
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=server.api_url, timeout=30) as client:
        flows = client.post("/flows/filter", json={"flows": {"name": {"any_": sorted(wanted)}}})
        flows.raise_for_status()
        by_id = {f["id"]: f["name"] for f in flows.json()}
        if not by_id:
            return out
        deps = client.post("/deployments/filter", json={"flows": {"id": {"any_": sorted(by_id)}}})
        deps.raise_for_status()
        for d in deps.json():
            out[f"{by_id[d['flow_id']]}/{d['name']}"] = d
    return out


def buildsys_deployments(state: Path) -> dict[str, dict[str, Any]]:
    from buildsys.store.sql import SqlStore

    with SqlStore.sqlite(state) as store:
        return {r.name: dict(r.spec) for r in store.list_resources("deployment")}


# --- the comparison ---------------------------------------------------------------------------------

FIELDS = (
    "parameters",
    "parameter_schema",
    "job_variables",
    "pull_steps",
    "schedules",
    "version",
    "enforce_parameter_schema",
    "tags",
    "concurrency_limit",
    "concurrency_options",
    "work_pool_name",
    "work_queue_name",
    "paused",
    "description",
    "entrypoint",
)


def prefect_view(d: Mapping[str, Any]) -> dict[str, Any]:
    """Prefect's deployment in the field names buildsys stores."""
    return {
        "parameters": d.get("parameters") or {},
        "parameter_schema": d.get("parameter_openapi_schema"),
        "job_variables": d.get("job_variables") or {},
        "pull_steps": d.get("pull_steps") or [],
        "schedules": _in_order([_prefect_schedule(s) for s in d.get("schedules") or []]),
        "version": d.get("version"),
        "enforce_parameter_schema": d.get("enforce_parameter_schema"),
        "tags": d.get("tags") or [],
        # Prefect 3 keeps a deployment's limit as a global concurrency limit it owns
        "concurrency_limit": (d.get("global_concurrency_limit") or {}).get("limit", d.get("concurrency_limit")),
        "concurrency_options": d.get("concurrency_options"),
        "work_pool_name": d.get("work_pool_name"),
        "work_queue_name": d.get("work_queue_name"),
        "paused": d.get("paused"),
        "description": d.get("description"),
        "entrypoint": d.get("entrypoint"),
    }


def _in_order(schedules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Schedules in one order (Prefect returns them in its own): by kind, then by value."""
    kinds = ("cron", "interval", "rrule")
    def key(s: dict[str, Any]) -> tuple[int, str]:
        kind = next((i for i, k in enumerate(kinds) if k in s), 3)
        return kind, json.dumps([s.get(kinds[kind]) if kind < 3 else None, s.get("timezone"), s.get("parameters")])

    return sorted(schedules, key=key)


def _prefect_schedule(s: Mapping[str, Any]) -> dict[str, Any]:
    inner = dict(s.get("schedule") or {})
    out = {k: v for k, v in inner.items() if v is not None}
    out["active"] = s.get("active")
    out["parameters"] = s.get("parameters") or {}
    if s.get("slug"):
        out["slug"] = s["slug"]
    return out


def buildsys_view(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "parameters": spec.get("parameters") or {},
        "parameter_schema": spec.get("parameter_schema"),
        "job_variables": spec.get("job_variables") or {},
        "pull_steps": spec.get("pull_steps") or [],
        "schedules": _in_order([dict(s) for s in spec.get("schedules") or []]),
        "version": spec.get("version"),
        "enforce_parameter_schema": spec.get("enforce_parameter_schema"),
        "tags": spec.get("tags") or [],
        "concurrency_limit": spec.get("concurrency_limit"),
        "concurrency_options": spec.get("concurrency_options"),
        "work_pool_name": spec.get("work_pool_name"),
        "work_queue_name": spec.get("work_queue_name"),
        "paused": spec.get("paused", False),
        "description": spec.get("description"),
        "entrypoint": spec.get("entrypoint"),
    }


def differences(prefect: Mapping[str, Any], mine: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted path, Prefect's value, buildsys's value) for every leaf that differs."""
    out: list[tuple[str, Any, Any]] = []
    for key in FIELDS:
        _diff(key, prefect.get(key), mine.get(key), out)
    return out


def _diff(path: str, a: Any, b: Any, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff(f"{path}.{k}", a.get(k, ABSENT), b.get(k, ABSENT), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(f"{path}[{i}]", x, y, out)
    elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
        out.append((path, a, b))


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()
