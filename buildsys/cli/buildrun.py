"""The work of `build` and `push` (cached, in parallel), without click: the click commands
(`buildsys.cli.build`) and the launcher's direct path for plain argument lists
(`buildsys.cli.direct`) both run it."""

from __future__ import annotations

from typing import Any

from buildsys.cli.app import App


def open_shared_cache(app: App, opts: dict[str, Any], reporter: Any) -> Any:
    """The shared cache the options name (buildsys.sharedcache), or None; its warnings go to the
    reporter (a cache that is down or unauthenticated never fails the build)."""
    url = opts.get("cache_from") or ""
    if not url:
        if opts.get("cache_write"):
            from buildsys.errors import BuildsysError

            raise BuildsysError("--cache-write needs a shared cache", hint="add --cache-from URL or set BUILDSYS_CACHE")
        return None
    import os

    from buildsys.reporter import Event
    from buildsys.sharedcache import open_shared

    def warn(text: str) -> None:
        reporter.event(Event("message", text=f"warning: {text}"))

    return open_shared(url, write=bool(opts.get("cache_write")), env=os.environ, warn=warn)


def shared_summary(shared: Any) -> str:
    if shared is None:
        return ""
    counts = shared.counts
    text = f"; shared cache: {counts['hits']} restored, {counts['written']} written"
    return text + (f", {counts['refused']} refused" if counts["refused"] else "")


def run_sections(app: App, sections: tuple[str, ...], **opts: Any) -> None:
    from buildsys.caches import compiled_build
    from buildsys.engine import build as run_build
    from buildsys.reporter import Event, make_reporter

    # JSON Lines ending with the summary (or, on an error, the error) object; a dry run is one document
    app.json_lines = app.json and not opts["dry_run"]
    if opts.get("affected_base") is not None and not _narrow_to_affected(app, opts):
        return
    compiled = compiled_build(
        app.project_file, sections=sections, deployments=opts["deployments"], install_missing=opts["install_requires"]
    )
    if opts["dry_run"]:
        dry_run(app, compiled)
        return
    reporter = make_reporter(json=app.json, color=app.use_color, verbosity=app.verbosity, explain=opts["explain"])
    try:
        shared = open_shared_cache(app, opts, reporter)
        result = run_build(
            compiled.project,
            compiled.graph,
            compiled.steps,
            jobs=opts["jobs"],
            use_cache=not opts["no_cache"],
            keep_going=opts["keep_going"],
            reporter=reporter,
            shared=shared,
            previous=None if shared is not None else _previous(app, sections, opts),
        )
        counts = {s: sum(1 for r in result.results.values() if r.status == s) for s in ("ran", "cached", "failed", "skipped")}
        text = f"{counts['ran']} ran, {counts['cached']} cached, {counts['failed']} failed, {counts['skipped']} not run"
        extra = {"shared": dict(shared.counts)} if shared is not None else {}
        reporter.event(Event("summary", text=("build ok: " if result.ok else "build failed: ") + text
                             + shared_summary(shared), data={"ok": result.ok, **counts, **extra}))
    finally:
        reporter.close()
    _remember_noop(app, sections, opts, result)
    if not result.ok:
        raise SystemExit(1)


def _narrow_to_affected(app: App, opts: dict[str, Any]) -> bool:
    """`--affected`: select the affected deployments; False when nothing is affected (then the
    summary says so and nothing runs)."""
    from buildsys.cli.affectedrun import as_patterns, select_affected
    from buildsys.reporter import Event, make_reporter

    result, names = select_affected(app, app.load_project(), opts["affected_base"], opts["deployments"])
    if names:
        opts["deployments"] = as_patterns(names)
        return True
    if names is None and result.steps:  # no deployments: the top-level build is one whole
        return True
    reporter = make_reporter(json=app.json, color=app.use_color, verbosity=app.verbosity, explain=False)
    try:
        reporter.event(Event("summary", text=f"build ok: nothing affected since {result.said}; nothing was run",
                             data={"ok": True, "ran": 0, "cached": 0, "failed": 0, "skipped": 0}))
    finally:
        reporter.close()
    return False


_MARK = {"cached": "=", "run": "▶", "blocked": "·", "error": "✗"}
_SAYS = {"cached": "cached", "run": "would run", "blocked": "waits", "error": "error"}


def dry_run(app: App, compiled: Any) -> None:
    """`build -n`: every step's decision (the rule a build uses), computed without running anything."""
    from buildsys.engine import Engine

    engine = Engine(compiled.project, compiled.graph, compiled.steps, dry_run=True)
    try:
        decisions = engine.foresee()
    finally:
        engine.cache.close()
    steps = [(compiled.graph.nodes[k].label, decisions[k]) for k in compiled.graph.order()]
    counts = {state: sum(1 for _, d in steps if d.state == state) for state in _MARK}
    if app.json:
        app.emit_json({"dry_run": True, "ok": not counts["error"],
                       "steps": [{"step": label, "decision": d.state, "reason": d.reason} for label, d in steps],
                       "counts": counts})
    else:
        for label, d in steps:
            app.echo(f"{_MARK[d.state]} {label}  {_SAYS[d.state]} ({d.reason})")
        app.echo(f"dry run: {counts['run']} would run, {counts['cached']} cached, {counts['blocked']} after a step "
                 f"that would run, {counts['error']} error(s); nothing was run")
    if counts["error"]:
        raise SystemExit(1)


def _previous(app: App, sections: tuple[str, ...], opts: dict[str, Any]) -> Any:
    """The last identical build's manifest, checked: which steps' own inputs moved since."""
    from buildsys import noop

    if opts["no_cache"]:
        return None
    return noop.previous_build(noop.manifest_path(str(app.project_file), sections, opts["deployments"]))


def _remember_noop(app: App, sections: tuple[str, ...], opts: dict[str, Any], result: Any) -> None:
    """Write (or drop) the manifest that lets the next identical build answer without the engine."""
    import os

    from buildsys import caches, noop

    path = noop.manifest_path(str(app.project_file), sections, opts["deployments"])
    deps = result.dependencies
    if not (result.ok and deps.provable):
        noop.remove(path)
        return
    root = os.path.dirname(os.path.abspath(app.project_file))
    deps.loose.add(os.path.abspath(app.project_file))
    noop.write_manifest(
        path,
        files=deps.files,
        directories=deps.directories,
        env=deps.env,
        labels=[result.graph.nodes[k].label for k in result.graph.order()],
        cache=os.path.join(root, caches.DIRECTORY, caches.STEP_RESULTS),
        known=deps.stats,
        nodes=_node_records(result),
        previous=deps.previous,
        loose=deps.loose,
        kept=deps.kept,
    )


def _node_records(result: Any) -> list[tuple[str, str, list[str], list[str]]]:
    """Each step's label, key and what its key read, for the next build's `noop.previous_build`
    (none at all when a step's inputs are not known: then the next build computes every key)."""
    out = []
    kept = set(result.dependencies.kept)  # (the previous manifest's: noop.write_manifest)
    for key in result.graph.order():
        res = result.results[key]
        if res.label in kept:
            continue
        seen = result.dependencies.nodes.get(res.label)
        if seen is None or not res.cache_key:
            return []
        out.append((res.label, res.cache_key, *seen))
    return out
