"""`buildsys worker start`: the bundled worker (glue; the work is in buildsys.worker)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import click

from buildsys.cli.app import App, common_options, pass_app
from buildsys.printable import printable


@click.group()
def worker() -> None:
    """Run the bundled worker."""


@worker.command("start")
@click.option("--pool", "-p", "pool", required=True, metavar="NAME", help="Work pool to serve.")
@click.option(
    "--type",
    "-t",
    "pool_type",
    metavar="TYPE",
    help="Create the pool with this type's defaults if it does not exist (process, docker, kubernetes, or a plugin's).",
)
@click.option("--name", "-n", metavar="NAME", help="Worker name (default: host-pid-random).")
@click.option("--queue", "queues", multiple=True, metavar="NAME", help="Only these queues (repeatable).")
@click.option("--limit", "-l", type=click.IntRange(min=1), help="Runs this worker handles at once.")
@click.option("--once", is_flag=True, help="Run what is due now, then exit (1 if a run did not complete).")
@click.option("--lease", "lease", type=click.FloatRange(min=1.0), default=30.0, show_default=True, help="Lease seconds.")
@click.option(
    "--cancel-grace", type=click.FloatRange(min=0.0), default=10.0, show_default=True, help="SIGTERM → SIGKILL seconds."
)
@click.option("--no-stream", is_flag=True, help="Do not echo flow output here (it is still in the run's logs).")
@common_options
@pass_app
def start(
    app: App,
    pool: str,
    pool_type: str | None,
    name: str | None,
    queues: tuple[str, ...],
    limit: int | None,
    once: bool,
    lease: float,
    cancel_grace: float,
    no_stream: bool,
) -> None:
    """Claim the pool's runs and run them until stopped (SIGTERM/Ctrl-C: finish what is running;
    a second signal stops the runs and hands unstarted ones back)."""
    from buildsys.worker import Worker, WorkerOptions

    store = app.open_store()
    from buildsys.store.base import StepwiseStore

    if isinstance(store, StepwiseStore):
        store.close()
        from buildsys.errors import BuildsysError

        raise BuildsysError(store.serve_refusal(pool))
    options = WorkerOptions(
        pool=pool,
        name=name or "",
        pool_type=pool_type,
        queues=queues,
        limit=limit,
        lease_seconds=lease,
        cancel_grace_seconds=cancel_grace,
        once=once,
        stream_output=not no_stream and app.verbosity >= 0,
    )
    lock = threading.Lock()

    def notify(message: str) -> None:
        with lock:
            click.echo(printable(message), err=app.json)
            sys.stdout.flush()

    runner = Worker(store, options, notify=notify)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            notify(f"Received {signal.Signals(signum).name}: finishing the runs in hand (signal again to stop them).")
            runner.stop()
        else:
            notify("Stopping the runs in hand.")
            runner.abort()

    from buildsys.interrupts import stop_on_signals

    stop_on_signals(on_signal)  # whatever disposition (ignored, blocked) was inherited
    try:
        runner.run()
    finally:
        store.close()
    if once and runner.unsuccessful:
        from buildsys.errors import BuildsysError

        ended = ", ".join(f"{r.name} ({r.id[:8]}) {r.state}" for r in runner.unsuccessful)
        raise BuildsysError(
            f"{len(runner.unsuccessful)} run(s) did not complete: {ended}",
            hint=f"see the logs: buildsys runs logs {runner.unsuccessful[0].id}",
        )
