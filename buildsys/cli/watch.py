"""`buildsys watch`: rebuild (and re-plan, re-apply, re-run) on every change, until Ctrl-C."""

from __future__ import annotations

import click

from buildsys.cli.app import App, common_options, pass_app


@click.command("watch")
@click.option("--apply", "apply_", is_flag=True, help="Apply each cycle's plan to the state store.")
@click.option("--run", "run_", metavar="DEPLOYMENT", help="Start a run of DEPLOYMENT after each successful cycle.")
@click.option("--debounce", type=click.IntRange(min=1), default=1600, show_default=True, metavar="MS",
              help="Longest burst of changes grouped into one cycle.")
@click.option("--step", "step_ms", type=click.IntRange(min=1), default=30, show_default=True, metavar="MS",
              help="Quiet time that ends a burst.")
@common_options
@pass_app
def watch(app: App, apply_: bool, run_: str | None, debounce: int, step_ms: int) -> None:
    """Rebuild what a change affects (the cache decides), re-validate and re-plan; Ctrl-C stops."""
    from buildsys.reporter import make_reporter
    from buildsys.watch import Cycle, Watcher, redirected_outputs, render_cycle, render_head, store_files

    if not app.project_file.is_file():
        from buildsys.errors import BuildsysError

        raise BuildsysError(f"no project file at {app.project_file}", hint="run `buildsys init` to start one")
    reporter = make_reporter(json=app.json, color=app.use_color, verbosity=app.verbosity)
    app.json_lines = app.json  # build events and one object per cycle, one per line
    watcher = Watcher(app.project_file, open_store=app.open_store, apply=apply_, run=run_, reporter=reporter,
                      debounce_ms=debounce, step_ms=step_ms, own_files=frozenset(redirected_outputs()),
                      ignore=store_files(app.state, app.project_file.resolve().parent),
                      on_start=None if app.json else lambda *head: app.echo(render_head(*head)))

    def show(cycle: Cycle) -> None:
        if app.json:
            from dataclasses import asdict

            app.emit_json({**asdict(cycle), "ok": cycle.ok})
        else:
            app.echo(render_cycle(cycle, apply=apply_, head=False))

    from buildsys.interrupts import stop_on_signals

    try:
        stop_on_signals()  # Ctrl-C and `kill` stop watching, even if SIGINT was inherited ignored
        app.echo(f"Watching {watcher.root} (Ctrl-C to stop).", err=True)
        watcher.watch(show)
    except KeyboardInterrupt:
        pass
    finally:
        reporter.close()
    app.echo("Stopped watching.", err=True)
