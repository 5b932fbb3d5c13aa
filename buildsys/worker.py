"""The bundled worker: claims a pool's runs under a lease and supervises each on its infrastructure.

One claim loop (long-polling ``store.claim_runs``), one housekeeping thread (heartbeats that renew
leases and bring back cancellation requests, expiry of dead workers' leases, schedules), one log
shipper (batched ``append_logs``) and one supervising thread per run. A run goes PENDING (claim)
→ RUNNING (the runtime says the flow starts) → COMPLETED / FAILED / CRASHED / CANCELLED, with a
message saying why; retries are the store's business (``set_run_state`` reschedules).

A Prefect flow is run by Prefect's engine inside the run's process: the engine sets RUNNING and the
final state through the Prefect-compatible API (``buildsys.engineapi``), and the worker only steps
in when the process ends without one (CRASHED) or was stopped on request (CANCELLED).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from buildsys.engineapi import EngineApi
from buildsys.errors import BuildsysError, ConflictError, NotFoundError, StateError
from buildsys.infra import Execution, Infrastructure, Job, Outcome, get_infrastructure
from buildsys.pools import default_job_template, job_configuration, placeholders, pool_template
from buildsys.prefectengine import API_MARK, RUN_ID_ENV, installed_version, version_problem
from buildsys.runtime import CONTROL_PREFIX, EXIT_FLOW_FAILED, EXIT_MEANINGS, RunContext, control_event
from buildsys.shutdown import join_within
from buildsys.store.base import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    CRASHED,
    FAILED,
    RUNNING,
    SCHEDULED,
    Change,
    FlowRun,
    StateStore,
)
from buildsys.templating import PLACEHOLDER

if TYPE_CHECKING:
    from buildsys.schedules import FailureReports

__all__ = ["Worker", "WorkerOptions", "default_worker_name", "ensure_pool"]

Notify = Callable[[str], None]
STORE_RUNNING_LEASE = 30.0  # the lease the store grants on the move to RUNNING
STOP_SECONDS = 30.0  # how long shutdown waits for a helper thread (the HTTP store's own timeout)


@dataclass(frozen=True)
class WorkerOptions:
    pool: str
    name: str = ""
    pool_type: str | None = None  # create the pool with this type's defaults when it is missing
    queues: tuple[str, ...] = ()
    limit: int | None = None  # runs this worker handles at once (None: no local limit)
    lease_seconds: float = 30.0
    heartbeat_seconds: float | None = None  # default: a third of the lease, at most 2 s
    poll_seconds: float = 1.0  # long-poll wait of one claim
    cancel_grace_seconds: float = 10.0  # SIGTERM → SIGKILL
    once: bool = False  # claim what is due, run it, exit
    schedule_seconds: float = 5.0  # how often to create runs of scheduled deployments
    stream_output: bool = True  # also pass flow output to `notify`
    infra_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or min(2.0, self.lease_seconds / 3)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def ensure_pool(store: StateStore, name: str, pool_type: str | None) -> tuple[str, bool]:
    """The pool's type; creates the pool with the type's defaults when it is missing and a type is
    given (returns whether it did)."""
    pool = store.get_resource("pool", name)
    if pool is not None:
        found = str(pool.spec.get("type") or "process")
        if pool_type and pool_type != found:
            raise StateError(
                f"work pool {name!r} has type {found!r}, not {pool_type!r}",
                hint=f"drop --type, or use a pool of type {pool_type}",
            )
        return found, False
    if not pool_type:
        raise NotFoundError(
            f"work pool {name!r} does not exist",
            hint=f"create it with `buildsys worker start --pool {name} --type process` or declare it in "
            "work_pools: and run `buildsys apply`",
        )
    spec: dict[str, Any] = {
        "type": pool_type,
        "description": f"created by `buildsys worker start --type {pool_type}`",
        "base_job_template": default_job_template(pool_type),
        "concurrency_limit": None,
        "paused": False,
        "queues": [],
    }
    try:
        store.apply([Change("create", "pool", name, spec=spec)], expected_serial=None)
    except ConflictError:  # another worker created it first
        return ensure_pool(store, name, pool_type)[0], False
    return pool_type, True


class _LogShipper:
    """Ships output lines per run to the store as they come: a line wakes the shipping thread,
    which waits `linger` for the rest of a burst and appends what it holds in one batch per run.
    Lines that arrive while a batch is on its way go in the next one, so a slow store gets fewer,
    larger batches and a quiet flow's line is stored within `linger` of being read."""

    def __init__(self, store: StateStore, linger: float = 0.02) -> None:
        self.store = store
        self.linger = linger
        self._buffer: dict[str, list[tuple[float, str, str]]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._pending = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="log-shipper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, run_id: str, stream: str, message: str) -> None:
        with self._lock:
            self._buffer.setdefault(run_id, []).append((time.time(), stream, message))
        self._pending.set()

    def flush(self, run_id: str | None = None) -> None:
        with self._flush_lock:
            with self._lock:
                if run_id is None:
                    batches, self._buffer = self._buffer, {}
                else:
                    batches = {run_id: self._buffer.pop(run_id, [])}
            for rid, lines in batches.items():
                if lines:
                    with contextlib.suppress(BuildsysError):
                        self.store.append_logs(rid, lines)

    def _loop(self) -> None:
        # `stop` is checked after each flush, not only on waking: stop() may come while the loop
        # lingers, and the clear below then erases its wake-up (the worker hung on exit that way)
        while not self._stop.is_set():
            self._pending.wait()
            self._stop.wait(self.linger)  # the rest of a burst joins this batch
            self._pending.clear()  # before taking the buffer: a line added from here on wakes us again
            self.flush()

    def stop(self, timeout: float) -> bool:
        """Ship what is left and end the thread; False when it did not end within `timeout` (a
        store call that does not return): the lines it holds are then not stored."""
        self._stop.set()
        self._pending.set()
        if join_within([self._thread], timeout):
            return False
        self.flush()
        return True


@dataclass
class _Active:
    run: FlowRun
    cancel: threading.Event = field(default_factory=threading.Event)
    execution: Execution | None = None


class Worker:
    """Serve one pool until stopped. Library code: messages go to ``notify``, never to stdout."""

    def __init__(
        self,
        store: StateStore,
        options: WorkerOptions,
        *,
        notify: Notify | None = None,
        infrastructure: Infrastructure | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.name = options.name or default_worker_name()
        self.notify: Notify = notify or (lambda _message: None)
        self._infrastructure = infrastructure
        self._infra_cache: dict[str, Infrastructure] = {}
        self._active: dict[str, _Active] = {}
        self._active_lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._logs = _LogShipper(store)
        self._threads: list[threading.Thread] = []
        self.pool_type = options.pool_type or "process"
        self.completed = 0
        self.unsuccessful: list[FlowRun] = []  # runs that ended other than Completed (`--once` exits 1)
        self._registered: dict[str, str] | None = None
        self._api = EngineApi(store)
        self._api_failed = False
        self._schedule_reports: FailureReports | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> None:
        """Claim and supervise runs until :meth:`stop` (or, with ``once``, until nothing is due)."""
        self.pool_type, created = ensure_pool(self.store, self.options.pool, self.options.pool_type)
        if created:
            self.notify(f"Created work pool {self.options.pool!r} of type {self.pool_type!r} with the type's defaults.")
        prefect = self._check_prefect()
        self._warn_if_paused()
        self.notify(f"Worker {self.name!r} started on pool {self.options.pool!r} ({self.pool_type}).")
        if prefect:
            self.notify(prefect)
        self._logs.start()
        self._warm_up()
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        try:
            self._claim_loop()
        finally:
            self._shut_down(housekeeping)
            self.notify(f"Worker {self.name!r} stopped.")

    def _shut_down(self, housekeeping: threading.Thread) -> None:
        """After the claim loop: wait for the runs in hand, then stop the helpers, each within
        STOP_SECONDS (a helper that will not stop is named and left behind: they are daemon threads)."""
        self._drain()
        self._stopping.set()
        if join_within([housekeeping], STOP_SECONDS):
            self.notify(f"The housekeeping thread did not stop within {STOP_SECONDS:g} s (a heartbeat to the store "
                        "does not return); not waiting for it.")
        if not self._logs.stop(STOP_SECONDS):
            self.notify(f"Shipping the last log lines did not finish within {STOP_SECONDS:g} s (the store does not "
                        "answer); the lines not yet stored are lost.")
        if not self._api.close(STOP_SECONDS):
            self.notify(f"The worker's Prefect API did not stop within {STOP_SECONDS:g} s; not waiting for it.")
        for infra in self._infra_cache.values():
            close = getattr(infra, "close", None)
            if callable(close):
                close()

    def stop(self) -> None:
        """Graceful: stop claiming and let the runs in hand finish."""
        self._stopping.set()
        self._slot_freed.set()

    def abort(self) -> None:
        """Stop now: terminate the runs in hand; runs that had not started go back to the queue."""
        self._aborting.set()
        self.stop()
        for active in self._snapshot():
            active.cancel.set()

    def _check_prefect(self) -> str | None:
        """Refuse a process worker whose Python has a Prefect we cannot start (images are checked by
        the runtime at run start); returns what to tell about the Prefect that runs Prefect flows."""
        if self.pool_type != "process" or self._infrastructure is not None:
            return None
        python = str(self.options.infra_options.get("process", {}).get("python") or sys.executable)
        version = installed_version(python)
        if version is None:
            return f"Prefect is not installed in {python}: plain Python flows run, Prefect flows cannot."
        problem = version_problem(version)
        if problem:
            raise StateError(
                f"{problem}; found in {python}",
                hint="install Prefect 3 there (`pip install 'prefect>=3,<4'`), or start the worker from a Python "
                "without Prefect if no flow uses it",
            )
        return f"Prefect flows run through the engine of Prefect {version} in {python}."

    def _warm_up(self) -> None:
        """Let the pool type prepare the first run's process now (the process pool's standby runtime)."""
        try:
            warm_up = getattr(self._infra(self.pool_type), "warm_up", None)
        except BuildsysError:
            return
        if callable(warm_up):
            warm_up()

    def _warn_if_paused(self) -> None:
        pool = self.store.get_resource("pool", self.options.pool)
        if pool is not None and pool.spec.get("paused"):
            self.notify(f"Work pool {self.options.pool!r} is paused: no runs will be handed out until it is resumed.")

    def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.wait(0.5)
                self._slot_freed.clear()
                continue
            try:
                runs = self.store.claim_runs(
                    self.options.pool,
                    self.name,
                    queues=list(self.options.queues) or None,
                    limit=free,
                    lease_seconds=self.options.lease_seconds,
                    wait=0.0 if self.options.once else self.options.poll_seconds,
                )
            except BuildsysError as exc:  # the store is unreachable or refused: back off, keep serving
                failures += 1
                delay = min(10.0, 0.5 * 2 ** min(failures, 5))
                self.notify(f"Claiming runs failed ({exc.message}); retrying in {delay:g} s.")
                self._stopping.wait(delay)
                continue
            failures = 0
            if self._stopping.is_set():  # the signal came during the long poll: give them back
                for run in runs:
                    self._release(run, "the worker is shutting down")
                return
            for run in runs:
                self._start_supervisor(run)
            if self.options.once and not runs:
                return

    def _free_slots(self) -> int:
        with self._active_lock:
            busy = len(self._active)
        if self.options.limit is None:
            return 16
        return self.options.limit - busy

    def _start_supervisor(self, run: FlowRun) -> None:
        active = _Active(run)
        with self._active_lock:
            self._active[run.id] = active
        thread = threading.Thread(target=self._supervise, args=(active,), name=f"run-{run.id[:8]}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _drain(self) -> None:
        """Wait for the supervisors as long as their runs go on (a graceful stop lets them finish);
        once the runs were told to stop (abort), at most the SIGTERM grace and STOP_SECONDS more."""
        threads = list(self._threads)
        while threads:
            if self._aborting.is_set():
                limit = self.options.cancel_grace_seconds + STOP_SECONDS
                for thread in join_within(threads, limit):
                    self.notify(f"The supervisor of a run ({thread.name}) did not stop within {limit:g} s of the "
                                "request to stop; not waiting for it.")
                return
            threads[0].join(0.5)
            threads = [t for t in threads if t.is_alive()]

    def _snapshot(self) -> list[_Active]:
        with self._active_lock:
            return list(self._active.values())

    # --- housekeeping: heartbeats, cancellation, dead workers, schedules ------------------------

    def _housekeeping(self) -> None:
        last_schedule = 0.0
        while True:
            stopping = self._stopping.is_set() and not self._snapshot()
            self._heartbeat()
            if stopping:
                return
            with contextlib.suppress(BuildsysError):
                for run in self.store.expire_leases():
                    self.notify(f"Run {run.name} ({run.id[:8]}) lost its worker: now {run.state} {run.state_name}.")
            now = time.time()
            if now - last_schedule >= self.options.schedule_seconds:
                last_schedule = now
                self._schedule(now)
            self._stopping.wait(self.options.heartbeat_interval)

    def _heartbeat(self) -> None:
        active = {a.run.id: a for a in self._snapshot()}
        try:
            cancels = self.store.heartbeat(
                self.options.pool, self.name, list(active), lease_seconds=self.options.lease_seconds
            )
        except BuildsysError as exc:
            self.notify(f"Heartbeat failed: {exc.message}")
            return
        for run_id in cancels:
            if run_id in active and not active[run_id].cancel.is_set():
                self.notify(f"Cancellation requested for run {active[run_id].run.name} ({run_id[:8]}).")
                active[run_id].cancel.set()

    def _schedule(self, now: float) -> None:
        """Scheduled deployments → runs, when no server does it; each deployment's failure is said
        once, not every round."""
        if self._api.remote or getattr(self.store, "schedules_itself", False):
            # `buildsys server` turns schedules into runs itself (its housekeeping), and so does a
            # Prefect server; a pass lists every deployment, so a fleet of workers repeating it over
            # HTTP every few seconds would load the server with work that changes nothing
            # (tests/bench/README.md, "Server at scale": 111 s per pass at 100,000 deployments),
            # and a worker's token may not create runs anyway
            return
        from buildsys.schedules import FailureReports, schedule_round

        self._schedule_reports = self._schedule_reports or FailureReports()
        try:
            round_ = schedule_round(self.store, now)
        except BuildsysError as exc:
            self.notify(f"Scheduling runs failed: {exc.message}")
            return
        for _failed, line in self._schedule_reports.news(round_):
            self.notify(line)

    # --- one run ----------------------------------------------------------------------------

    def _supervise(self, active: _Active) -> None:
        run = active.run
        try:
            self._execute(active)
        except Exception as exc:  # a bug must not leave the run PENDING forever
            self._finish(run, CRASHED, f"The worker failed while supervising the run: {type(exc).__name__}: {exc}")
        finally:
            self._api.release(run.id)
            with self._active_lock:
                self._active.pop(run.id, None)
            self._slot_freed.set()

    def _execute(self, active: _Active) -> None:
        run = active.run
        try:
            job, infra = self._prepare(run)
        except BuildsysError as exc:
            if isinstance(exc, NotFoundError) and "deployment" in exc.message:
                self._finish(run, CANCELLED, exc.message)
            else:
                self._finish(run, CRASHED, f"Failed to submit flow run to infrastructure: {exc.message}")
            return
        control: queue.Queue[tuple[str, str]] = queue.Queue()
        tail = _Tail()

        held: list[tuple[str, str]] | None = []  # output before the "Submitted" line is written
        order = threading.Lock()

        def sink(stream: str, line: str) -> None:
            with order:
                if held is not None:
                    held.append((stream, line))
                else:
                    take(stream, line)

        def take(stream: str, line: str) -> None:
            if line.startswith(CONTROL_PREFIX):
                control.put((stream, line[len(CONTROL_PREFIX) :]))
                return
            if line.startswith(API_MARK):  # the engine sent this record to the API: echo it only
                if self.options.stream_output:
                    self.notify(f"{run.name} | {line[len(API_MARK) :]}")
                return
            tail.add(stream, line)
            self._logs.add(run.id, stream, line)
            if self.options.stream_output:
                self.notify(f"{run.name} | {line}")

        try:
            execution = infra.start(job, sink)
        except BuildsysError as exc:
            self._finish(run, CRASHED, f"Failed to submit flow run to infrastructure: {exc.message}")
            return
        active.execution = execution
        with order:
            self._worker_log(run, f"Submitted to {infra.type} infrastructure ({execution.identifier}).")
            for stream, line in held or ():
                take(stream, line)
            held = None
        command = job.configuration.get("command")
        custom_command = bool(command)
        state = _RunState(running=False, engine=_is_prefect_command(command))
        if custom_command and not state.engine:
            self._set_running(run, execution, state)
        elif state.engine:
            self._note_infrastructure(run, execution)
        outcome = self._watch(active, execution, control, state)
        self._logs.flush(run.id)
        self._conclude(active, outcome, state, tail, custom_command)

    def _watch(
        self, active: _Active, execution: Execution, control: queue.Queue[tuple[str, str]], state: _RunState
    ) -> Outcome:
        run = active.run
        term_sent: float | None = None
        while True:
            try:
                _stream, payload = control.get(timeout=0.05)
                self._on_control(run, execution, state, payload)
                continue
            except queue.Empty:
                pass
            outcome = execution.wait(0)
            if outcome is not None:
                while not control.empty():
                    _stream, payload = control.get_nowait()
                    self._on_control(run, execution, state, payload)
                return outcome
            if active.cancel.is_set():
                if term_sent is None:
                    self._worker_log(run, "Stopping the run (SIGTERM).")
                    execution.terminate()
                    term_sent = time.monotonic()
                elif time.monotonic() - term_sent > self.options.cancel_grace_seconds:
                    self._worker_log(run, f"Still running {self.options.cancel_grace_seconds:g} s after SIGTERM: SIGKILL.")
                    execution.kill()
                    term_sent = float("inf")

    def _on_control(self, run: FlowRun, execution: Execution, state: _RunState, payload: str) -> None:
        event = control_event(payload)
        if event == "engine":  # Prefect's engine takes over: it sets RUNNING and the end state itself
            state.engine = state.running = True
            self._worker_log(run, "Handed the flow to Prefect's engine.")
            self._note_infrastructure(run, execution)
        elif event == "running" and not state.running:
            self._set_running(run, execution, state)

    def _note_infrastructure(self, run: FlowRun, execution: Execution) -> None:
        try:
            self._api.note_infrastructure(run.id, execution.identifier)
        except BuildsysError as exc:  # the run goes on; only `runs show` lacks the infrastructure
            self._worker_log(run, f"Could not record the run's infrastructure ({execution.identifier}): {exc.message}")

    def _set_running(self, run: FlowRun, execution: Execution, state: _RunState) -> None:
        state.running = True
        # a ConflictError means it was cancelled meanwhile: the cancellation decides the end state
        with contextlib.suppress(ConflictError):
            self.store.set_run_state(run.id, RUNNING, worker=self.name, infrastructure_pid=execution.identifier)
            if self.options.lease_seconds < STORE_RUNNING_LEASE:
                # the store's RUNNING transition grants its default lease; shorten it back to ours
                self.store.heartbeat(self.options.pool, self.name, [run.id], lease_seconds=self.options.lease_seconds)

    def _conclude(self, active: _Active, outcome: Outcome, state: _RunState, tail: _Tail, custom: bool) -> None:
        run = active.run
        code = outcome.exit_code
        if active.cancel.is_set():
            if self._aborting.is_set() and not self._cancel_requested(run):
                self._hand_back(run, state)
                return
            self._finish(run, CANCELLED, "Cancelled on request: the flow-run infrastructure was stopped.", code)
        elif state.engine:
            self._conclude_engine(run, outcome, tail)
        elif code == 0:
            self._finish(run, COMPLETED, None, code)
        elif code == EXIT_FLOW_FAILED and (state.running or custom):
            self._finish(run, FAILED, "Flow run failed" + (f": {tail.error}" if tail.error else "."), code)
        else:
            self._finish(run, CRASHED, _crash_message(code, outcome.message, tail.runtime_error), code)

    def _conclude_engine(self, run: FlowRun, outcome: Outcome, tail: _Tail) -> None:
        """Prefect's engine set the end state (and its message, the exception's) through the API;
        a process that ended without one crashed."""
        try:
            current = self.store.get_run(run.id)
        except BuildsysError as exc:
            self.notify(f"Could not read run {run.name} after its process ended: {exc.message}")
            return
        if current.is_terminal or current.state == SCHEDULED:
            self._logs.flush(run.id)
            self.completed += 1
            message = f": {current.state_message}" if current.state_message else ""
            self.notify(f"Run {run.name} ({run.id[:8]}) → {current.state}{message}")
            return
        code = outcome.exit_code
        if code == 0:
            why = "the Prefect engine exited without reporting a final state"
        else:
            why = _crash_message(code, outcome.message, tail.runtime_error, meanings={}).rstrip(".")
        self._finish(run, CRASHED, f"{why} (the run was {current.state}).", code)

    def _cancel_requested(self, run: FlowRun) -> bool:
        with contextlib.suppress(BuildsysError):
            return self.store.get_run(run.id).state == CANCELLING
        return False

    def _hand_back(self, run: FlowRun, state: _RunState) -> None:
        if state.running:
            self._finish(run, CRASHED, f"Worker {self.name!r} shut down while the flow was running.")
            return
        self._release(run, "the worker shut down before the flow started")

    def _release(self, run: FlowRun, why: str) -> None:
        """Give a claimed run back to the pool (PENDING → SCHEDULED) for another worker."""
        try:
            self.store.set_run_state(
                run.id, SCHEDULED, name="Scheduled", message=f"handed back by worker {self.name!r}: {why}", worker=self.name
            )
        except BuildsysError as exc:
            self.notify(f"Could not hand back run {run.name}: {exc.message}")

    def _finish(self, run: FlowRun, state: str, message: str | None, exit_code: int | None = None) -> None:
        self._logs.flush(run.id)
        try:
            after = self.store.set_run_state(run.id, state, message=message, worker=self.name, exit_code=exit_code)
        except ConflictError:
            current = self.store.get_run(run.id)
            if current.state == CANCELLING:
                after = self.store.set_run_state(run.id, CANCELLED, message="Cancelled on request.", worker=self.name)
            else:
                self.notify(f"Run {run.name} ({run.id[:8]}) is already {current.state}; not marking it {state}.")
                return
        self.completed += 1
        if after.state != COMPLETED and after.is_terminal:
            self.unsuccessful.append(after)
        text = f"Run {run.name} ({run.id[:8]}) → {state}" + (f": {message}" if message else "")
        if after.state == SCHEDULED and state != SCHEDULED:
            text += f" — retrying (attempt {after.attempt} of {after.max_retries + 1})"
        self.notify(text)

    def _worker_log(self, run: FlowRun, message: str) -> None:
        self._logs.add(run.id, "worker", message)

    # --- preparing a job ----------------------------------------------------------------------

    def _prepare(self, run: FlowRun) -> tuple[Job, Infrastructure]:
        deployment = self.store.get_resource("deployment", run.deployment)
        if deployment is None:
            raise NotFoundError(f"deployment {run.deployment} no longer exists")
        pool = self.store.get_resource("pool", run.pool)
        if pool is None:
            raise NotFoundError(f"work pool {run.pool!r} no longer exists")
        pool_type = str(pool.spec.get("type") or self.pool_type)
        template = pool_template(pool.spec, default_type=pool_type)
        spec = deployment.spec
        pull_steps = list(spec.get("pull_steps") or [])
        variables = self._variables(pull_steps, spec.get("job_variables"), run.job_variables, template)
        warnings: list[Any] = []
        config = job_configuration(
            template, spec.get("job_variables"), run.job_variables, env=os.environ, variables=variables, warnings=warnings
        )
        for w in warnings:
            self._worker_log(run, f"warning: {w.message}" + (f" ({w.hint})" if w.hint else ""))
        if isinstance(config.get("name"), str):
            config["name"] = _render_ctx(config["name"], run)
        context = RunContext(
            entrypoint=str(spec.get("entrypoint") or ""),
            run_id=run.id,
            run_name=run.name,
            deployment=run.deployment,
            flow_name=run.flow_name,
            attempt=run.attempt,
            parameters={**(spec.get("parameters") or {}), **run.parameters},
            pull_steps=pull_steps,
            variables={k: v for k, v in variables.items() if _used(k, pull_steps)},
            step_targets=self._step_targets(pull_steps),
        )
        try:
            owned = self._api.environment(run.id)
        except Exception as exc:  # plain flows still run; a Prefect flow's runtime says it has no API
            if not self._api_failed:
                self._api_failed = True
                self.notify(f"Cannot serve the Prefect API for runs ({type(exc).__name__}: {exc}): Prefect flows cannot run.")
            owned = {RUN_ID_ENV: run.id}
        configured_env = config.get("env") or {}
        for name in sorted(set(owned) & {str(k) for k in configured_env}):
            self._worker_log(run, f"warning: the job's env sets {name}; the run's Prefect engine uses buildsys's own value")
        job = Job(
            run_id=run.id,
            run_name=run.name,
            flow_name=run.flow_name,
            deployment=run.deployment,
            pool=run.pool,
            worker=self.name,
            configuration=config,
            context=context.to_dict(),
            env=self._attribution(run),
            store_url=self.store.url,
            owned_env=owned,
        )
        return job, self._infra(pool_type)

    def _variables(self, *values: Any) -> dict[str, Any]:
        names = {n[len("prefect.variables.") :] for n in placeholders(list(values)) if n.startswith("prefect.variables.")}
        found = {}
        for name in names:
            resource = self.store.get_resource("variable", name)
            if resource is not None:
                found[name] = resource.spec.get("value")
        return found

    def _step_targets(self, pull_steps: list[Any]) -> dict[str, str]:
        if self._registered is None:
            from buildsys.registry import available, conflicts

            clashing = {name for name, _ in conflicts()}
            self._registered = {
                n: info.value for info in available() for n in (info.name, *info.aliases) if n not in clashing
            }
        names = {str(next(iter(step))) for step in pull_steps if isinstance(step, Mapping) and len(step) == 1}
        return {n: self._registered[n] for n in sorted(names) if n in self._registered}

    def _attribution(self, run: FlowRun) -> dict[str, str]:
        return {
            "BUILDSYS_RUN_ID": run.id,
            "BUILDSYS_RUN_NAME": run.name,
            "BUILDSYS_FLOW_NAME": run.flow_name,
            "BUILDSYS_DEPLOYMENT": run.deployment,
            "BUILDSYS_POOL": run.pool,
            "BUILDSYS_WORKER": self.name,
            "BUILDSYS_ATTEMPT": str(run.attempt),
        }

    def _infra(self, pool_type: str) -> Infrastructure:
        if self._infrastructure is not None:
            return self._infrastructure
        if pool_type not in self._infra_cache:
            options = dict(self.options.infra_options.get(pool_type, {}))
            if pool_type in ("docker",):
                options.setdefault("store_url", self.store.url)
            if pool_type == "process":
                options.setdefault("standby", True)
            self._infra_cache[pool_type] = get_infrastructure(pool_type, **options)
        return self._infra_cache[pool_type]


@dataclass
class _RunState:
    running: bool
    engine: bool = False  # Prefect's engine runs the flow and reports its states through the API


def _is_prefect_command(command: Any) -> bool:
    """A job command that starts Prefect itself (`prefect flow-run execute`, `uv run prefect ...`,
    `python -m prefect.engine`): its engine sets the run's states, as under Prefect's worker."""
    if not isinstance(command, str):
        return False
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return any(w == "prefect" or w.endswith("/prefect") or w.startswith("prefect.") for w in words)


class _Tail:
    """Remembers the lines that explain a failure: the flow's exception, the runtime's complaint."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.runtime_error: str | None = None
        self._report_stream = "stderr"

    def add(self, stream: str, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("buildsys runtime: "):
            self.runtime_error = line[len("buildsys runtime: ") :]
        elif line.startswith("Flow run ") and line.endswith(" failed:"):
            self._report_stream = stream  # the runtime's report follows (merged into stdout on k8s)
        elif stream == self._report_stream and not line.startswith((" ", "\t", "Traceback")):
            self.error = line.strip()


def _crash_message(
    code: int, infra_message: str | None, runtime_error: str | None, meanings: Mapping[int, str] = EXIT_MEANINGS
) -> str:
    if code < 0 and infra_message:
        return f"Flow run infrastructure failed: {infra_message.rstrip('.')}."
    text = f"Flow run infrastructure exited with non-zero status code {code}"
    meaning = infra_message or meanings.get(code)
    if code == 137 and not infra_message:
        meaning = "killed (SIGKILL), often the out-of-memory killer"
    if meaning:
        text += f" ({meaning})"
    if runtime_error:
        text += f": {runtime_error}"
    return text + "."


def _render_ctx(text: str, run: FlowRun) -> str:
    """`{{ ctx.flow_run.name }}` and the like (ctx.flow_run, ctx.flow, ctx.deployment) filled in;
    any other placeholder stays as written."""
    values: dict[str, dict[str, Any]] = {
        "flow_run": {"id": run.id, "name": run.name, "attempt": run.attempt},
        "flow": {"name": run.flow_name},
        "deployment": {"name": run.deployment.split("/", 1)[-1], "id": run.deployment_id},
    }

    def one(match: re.Match[str]) -> str:
        parts = match.group(1).split(".")
        if len(parts) == 3 and parts[0] == "ctx" and parts[1] in values and re.fullmatch(r"\w+", parts[2]):
            return str(values[parts[1]].get(parts[2], ""))
        return match.group(0)

    return PLACEHOLDER.sub(one, text)


def _used(name: str, pull_steps: Any) -> bool:
    return any(p == f"prefect.variables.{name}" or p.startswith(f"prefect.variables.{name}.") for p in placeholders(pull_steps))

