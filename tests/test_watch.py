"""Watch mode with real file watching: what starts a cycle, what a cycle reruns, and that the loop
survives an invalid project file and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsys.reporter import Event
from buildsys.store import open_store
from buildsys.watch import Cycle, StepRun, Watcher, WatchFilter, output_paths, render_cycle, store_files
from tests.services.waiting import wait_for

BUILDSYS = str(Path(sys.executable).parent / "buildsys")

PROJECT = """\
name: watched
build:
  - run_shell_script:
      id: alpha
      script: cat a.txt
      inputs: [a.txt]
      stream_output: false
  - run_shell_script:
      id: beta
      script: cat b.txt
      inputs: [b.txt]
      stream_output: false
      needs: []
  - run_shell_script:
      id: gen
      script: sh -c "mkdir -p gen && cat src.txt > gen/out.txt"
      inputs: [src.txt]
      stream_output: false
      needs: []
work_pools:
  - name: local
    type: process
deployments:
  - name: hello
    version: '{{ alpha.stdout }}'
    entrypoint: flows/hello.py:hello
    work_pool:
      name: local
"""


def make_project(root: Path) -> Path:
    (root / "flows").mkdir(parents=True, exist_ok=True)
    (root / "flows" / "hello.py").write_text("def hello() -> None:\n    print('hi')\n")
    for name, text in {"a.txt": "1.0\n", "b.txt": "b\n", "src.txt": "s\n", "src/app.py": "A = 1\n"}.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    (root / "prefect.yaml").write_text(PROJECT)
    return root / "prefect.yaml"


class Running:
    """A Watcher looping in a thread; cycles arrive on a queue."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.cycles: queue.Queue[Cycle] = queue.Queue()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            self.watcher.watch(self.cycles.put, stop=self.stop)
        except BaseException as exc:  # reported by next_cycle
            self.error = exc

    def next_cycle(self, timeout: float = 20) -> Cycle:
        try:
            return self.cycles.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no cycle within {timeout}s (watcher error: {self.error!r})") from None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture
def watching(isolated: Path) -> Iterator[Running]:
    make_project(isolated)
    running = Running(Watcher(Path("prefect.yaml"), open_store=lambda: open_store(".buildsys/state.db", root=isolated),
                              apply=True, step_ms=100))  # generous: the tests run on a busy machine
    try:
        first = running.next_cycle()
        assert first.number == 1 and first.changed == () and first.ok, first
        yield running
    finally:
        running.close()


def statuses(cycle: Cycle) -> dict[str, tuple[str, str]]:
    return {s.label: (s.status, s.reason) for s in cycle.steps}


def test_initial_cycle_builds_plans_and_applies(watching: Running) -> None:
    # the fixture consumed cycle 1; run one more to see it all cached and in sync
    (Path.cwd() / "unrelated.txt").write_text("x\n")
    cycle = watching.next_cycle()
    assert (cycle.number, cycle.changed) == (2, ("+ unrelated.txt",))
    assert {k: v[0] for k, v in statuses(cycle).items()} == {"alpha": "cached", "beta": "cached", "gen": "cached"}
    assert (cycle.plan, cycle.applied, cycle.ok) == ("no changes", None, True)


def test_editing_a_file_reruns_only_the_affected_step_and_reapplies(watching: Running) -> None:
    Path("a.txt").write_text("2.0\n")
    cycle = watching.next_cycle()
    assert (cycle.number, cycle.changed) == (2, ("~ a.txt",))
    assert statuses(cycle) == {
        "alpha": ("ran", "input file a.txt changed"),
        "beta": ("cached", "unchanged"),
        "gen": ("cached", "unchanged"),
    }
    assert (cycle.plan, cycle.applied) == ("0 to add, 1 to change, 0 to destroy", 1)
    store = open_store(".buildsys/state.db", root=Path.cwd())
    try:
        assert store.get_resource("deployment", "hello/hello").spec["version"] == "2.0"  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_burst_of_500_files_is_one_cycle(watching: Running) -> None:
    data = Path("flows")  # an existing folder: inotify already watches it, so every file is reported
    for i in range(500):
        (data / f"f{i:03}.py").write_text(f"X = {i}\n")
    cycle = watching.next_cycle()
    assert cycle.number == 2
    assert cycle.changed == tuple(sorted(f"+ flows/f{i:03}.py" for i in range(500)))
    Path("after.txt").write_text("x\n")  # the next cycle is this change alone: nothing was left over
    nxt = watching.next_cycle()
    assert (nxt.number, nxt.changed) == (3, ("+ after.txt",))


def test_git_buildsys_virtualenvs_and_caches_never_start_a_cycle(watching: Running) -> None:
    for rel in [".git/objects/ab/cdef", ".git/index", ".buildsys/cache/x.json", "__pycache__/m.cpython-311.pyc",
                ".venv/lib/site.py", "src/__pycache__/x.pyc", "notes.txt~", "flows/.hello.py.swp"]:
        Path(rel).parent.mkdir(parents=True, exist_ok=True)
        Path(rel).write_text("x\n")
    staged = Path.cwd().parent / "staged-env"  # a virtualenv appears whole (moved in), then grows
    (staged / "bin").mkdir(parents=True)
    (staged / "pyvenv.cfg").write_text("home = /usr/bin\n")
    staged.rename("env")
    Path("env/bin/python").write_text("x\n")
    Path("sentinel.txt").write_text("x\n")
    cycle = watching.next_cycle()
    assert (cycle.number, cycle.changed) == (2, ("+ sentinel.txt",))


def test_files_a_step_writes_never_start_a_cycle(watching: Running) -> None:
    Path("src.txt").write_text("new source\n")
    cycle = watching.next_cycle()
    assert (cycle.number, cycle.changed) == (2, ("~ src.txt",))
    assert statuses(cycle)["gen"] == ("ran", "input file src.txt changed")
    assert Path("gen/out.txt").read_text() == "new source\n"
    Path("sentinel.txt").write_text("x\n")  # gen/out.txt, written by the step, must not come first
    nxt = watching.next_cycle()
    assert (nxt.number, nxt.changed) == (3, ("+ sentinel.txt",))
    Path("gen/out.txt").write_text("edited by hand\n")  # a person's edit of that file does count
    assert watching.next_cycle().changed == ("~ gen/out.txt",)


def test_an_invalid_project_file_is_reported_and_the_loop_goes_on(watching: Running) -> None:
    good = Path("prefect.yaml").read_text()
    Path("prefect.yaml").write_text(good.replace("      id: beta\n", "      id: beta\n      colour: blue\n")
                                    .replace("deployments:", "deployments: [\n"))
    bad = watching.next_cycle()
    assert (bad.number, bad.changed, bad.revalidated, bad.ok) == (2, ("~ prefect.yaml",), True, False)
    assert bad.steps == () and bad.plan is None
    assert bad.problems == (
        "prefect.yaml:26:3: error: not valid YAML: while parsing a flow node: did not find expected node content",
    )
    Path("prefect.yaml").write_text(good.replace("version: '{{ alpha.stdout }}'", "version: fixed"))
    fixed = watching.next_cycle()
    assert (fixed.number, fixed.ok, fixed.plan, fixed.applied) == (3, True, "0 to add, 1 to change, 0 to destroy", 1)


def test_a_failing_step_is_shown_and_the_loop_goes_on(watching: Running) -> None:
    Path("a.txt").unlink()
    failed = watching.next_cycle()
    assert (failed.changed, failed.ok, failed.plan) == (("- a.txt",), False, None)
    assert statuses(failed)["alpha"][0] == "failed"
    assert failed.problems[0].startswith("step alpha failed: ")
    Path("a.txt").write_text("3.0\n")
    back = watching.next_cycle()
    assert (back.ok, statuses(back)["alpha"], back.applied) == (True, ("ran", "input file a.txt changed"), 1)


def test_run_starts_a_flow_run_after_each_successful_cycle(isolated: Path) -> None:
    """With the store file in the project itself: its writes (apply, new runs) never start a cycle."""
    make_project(isolated)
    running = Running(Watcher(Path("prefect.yaml"), open_store=lambda: open_store("state.db", root=isolated),
                              apply=True, run="hello", ignore=store_files("state.db", isolated)))
    try:
        first = running.next_cycle()
        assert first.run is not None and first.run.startswith("started flow run ") and first.run.endswith(" of hello/hello")
        Path("b.txt").write_text("b2\n")
        second = running.next_cycle()
        assert (second.number, second.changed) == (2, ("~ b.txt",))
        assert second.run is not None and second.run != first.run
    finally:
        running.close()
    store = open_store("state.db", root=isolated)
    try:
        runs = store.list_runs()
        assert sorted(r.deployment for r in runs) == ["hello/hello", "hello/hello"]
        assert {r.state for r in runs} == {"SCHEDULED"}
    finally:
        store.close()


def test_output_paths_are_the_existing_paths_steps_return(tmp_path: Path) -> None:
    (tmp_path / "clone" / "sub").mkdir(parents=True)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "app.ini").write_text("x")
    outputs = [{"directory": "clone", "stdout": "clone"}, {"path": "build/app.ini", "sha256": "ab"},
               {"directory": str(tmp_path)}, {"directory": "/etc"}, {"files": ["clone/sub", "missing"]}]
    assert output_paths(outputs, tmp_path) == {"clone", "build/app.ini", "clone/sub"}


def test_filter_reasons(tmp_path: Path) -> None:
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("")
    f = WatchFilter(tmp_path, ignore=store_files("sqlite:///state.db", tmp_path))
    f.build_finished({"clone"})
    cases = {
        ".git/HEAD": "ignored folder", ".buildsys/state.db": "ignored folder", "a/__pycache__/x.py": "ignored folder",
        "venv/lib/x.py": "virtualenv", "venv": "virtualenv", "x.pyc": "editor or bytecode file",
        "clone/README": "a step's output", "src/app.py": None,
        "state.db": "the state store", "state.db-wal": "the state store",
    }
    f.forget_window()
    assert {rel: f.reason(tmp_path / rel) for rel in cases} == cases
    assert f.reason(Path("/somewhere/else")) == "outside the project"
    assert store_files("https://buildsys.example.com", tmp_path) == ()
    assert store_files("/abs/state.db", tmp_path) == (Path("/abs/state.db"),)


def test_render_cycle() -> None:
    cycle = Cycle(4, ("~ a.txt", "~ prefect.yaml"), True, (), (
        StepRun("alpha", "ran", "input file a.txt changed", 0.123), StepRun("beta", "cached", "unchanged", 0.0),
    ), "0 to add, 1 to change, 0 to destroy", 1, None, 0.0456)
    assert render_cycle(cycle, apply=True) == (
        "── cycle 4: 2 change(s) (prefect.yaml re-validated)\n"
        "   ~ a.txt\n"
        "   ~ prefect.yaml\n"
        "   ran alpha: input file a.txt changed (0.12s)\n"
        "   1 step(s) cached\n"
        "   plan: 0 to add, 1 to change, 0 to destroy\n"
        "   applied 1 change(s)\n"
        "   ok in 46 ms"
    )


def test_ctrl_c_stops_cleanly_and_a_redirected_log_does_not_loop(isolated: Path) -> None:
    make_project(isolated)
    log = isolated / "watch.log"  # inside the watched folder, on purpose
    with open(log, "w") as out:
        proc = subprocess.Popen([BUILDSYS, "watch"], cwd=isolated, stdout=out, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_for(lambda: "ok in" in log.read_text(), 30, "the initial cycle")
        Path(isolated / "b.txt").write_text("again\n")
        wait_for(lambda: log.read_text().count("ok in") == 2, 30, "the cycle for b.txt")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.splitlines()[0] == f"Watching {isolated.resolve()} (Ctrl-C to stop)."
    assert err.splitlines()[-1] == "Stopped watching."
    text = log.read_text()
    assert text.count("── cycle") == 2, text  # the log's own writes never started a cycle
    assert "── cycle 2: 1 change(s)\n   ~ b.txt\n   ran beta: input file b.txt changed" in text


def test_a_save_right_after_a_cycle_is_never_taken_for_a_steps_write(isolated: Path) -> None:
    """File mtimes come from a coarser clock than time.time_ns(): a save in the same few ms as the
    end of a build must still start the next cycle (no store here, so a cycle ends with its build)."""
    make_project(isolated)
    running = Running(Watcher(Path("prefect.yaml")))
    try:
        assert running.next_cycle().ok
        for n in range(20):
            Path("a.txt").write_text(f"{n}\n")
            cycle = running.next_cycle(timeout=10)
            assert (cycle.number, cycle.changed, statuses(cycle)["alpha"]) == (
                n + 2, ("~ a.txt",), ("ran", "input file a.txt changed"))
    finally:
        running.close()


class StartSignal:
    """A reporter that signals when a given step starts."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = threading.Event()

    def event(self, event: Event) -> None:
        if event.kind == "start" and event.label == self.label:
            self.started.set()

    def close(self) -> None:
        pass


def test_a_save_during_a_build_starts_the_next_cycle(isolated: Path) -> None:
    """Files saved while steps run may be the steps' own writes, unless the build reads them:
    an input saved during a build is the user's and gets its own cycle."""
    make_project(isolated)
    slow = PROJECT.replace("      script: cat b.txt\n", "      script: sh -c \"cat b.txt && sleep 1\"\n")
    Path("prefect.yaml").write_text(slow)
    signal_ = StartSignal("beta")
    running = Running(Watcher(Path("prefect.yaml"), reporter=signal_))
    try:
        assert running.next_cycle().ok
        signal_.started.clear()
        Path("b.txt").write_text("b2\n")
        assert signal_.started.wait(20)
        Path("a.txt").write_text("during\n")  # beta is still running (it sleeps 1 s)
        during = running.next_cycle()
        assert (during.number, during.changed) == (2, ("~ b.txt",))
        after = running.next_cycle()
        assert (after.number, after.changed, statuses(after)["alpha"]) == (
            3, ("~ a.txt",), ("ran", "input file a.txt changed"))
    finally:
        running.close()


def test_watch_output_header_first_warnings_shown_and_sed_temp_files_not_reported(isolated: Path) -> None:
    """As a person sees it in a terminal (stdout and stderr in one stream): each cycle's header comes
    before the build's output, validation warnings are shown (not a bare "ok"), and `sed -i`'s
    temporary file is not reported as a change."""
    make_project(isolated)
    text = PROJECT.replace(
        "      id: alpha\n      script: cat a.txt\n      inputs: [a.txt]\n      stream_output: false",
        "      id: alpha\n      script: cat a.txt\n      inputs: [a.txt]")
    (isolated / "prefect.yaml").write_text(text.replace("    work_pool:\n      name: local", "    work_poll: x\n    work_pool:\n      name: local"))
    log = isolated.parent / "watch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([BUILDSYS, "watch"], cwd=isolated, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_for(lambda: "ok in" in log.read_text(), 30, "the initial cycle")
        subprocess.run(["sed", "-i", "s/^1.0$/2.0/", "a.txt"], cwd=isolated, check=True)
        wait_for(lambda: log.read_text().count("ok in") == 2, 30, "the cycle for a.txt")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text().splitlines()
    first = lines.index("── cycle 1: initial build")
    assert lines.index("  alpha │ 1.0") > first  # the build's output comes under its cycle's header
    warned = lines.index("   prefect.yaml:26:5: warning: unknown key 'work_poll' (ignored)")
    assert lines[warned + 1:warned + 3] == ["     at deployments[hello].work_poll", "     hint: did you mean 'work_pool'?"]
    assert sum("warning:" in line for line in lines) == 1  # said once, not again by the plan or cycle 2
    second = lines.index("── cycle 2: 1 change(s)")
    assert lines[second + 1] == "   + a.txt"  # sed -i replaced the file; its temporary file is not listed
    assert lines.index("  alpha │ 2.0") > second
    assert not [line for line in lines if "sed" in line]


def _ignore_and_block_stop_signals() -> None:
    """What a background job of a non-interactive shell (or a careless parent) hands down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_watch_stops_whatever_signal_disposition_it_inherits(isolated: Path, signum: int) -> None:
    make_project(isolated)
    log = isolated.parent / f"watch-{signum}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([BUILDSYS, "watch"], cwd=isolated, stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "NO_COLOR": "1"}, preexec_fn=_ignore_and_block_stop_signals)
    try:
        wait_for(lambda: "ok in" in log.read_text(), 30, "the initial cycle")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.splitlines()[-1] == "Stopped watching."


@pytest.mark.parametrize(
    ("command", "signum", "started"),
    [
        (["worker", "start", "--pool", "p", "--type", "process"], signal.SIGINT, "started on pool 'p'"),
        (["server", "start", "--port", "0"], signal.SIGTERM, "buildsys server on http://127.0.0.1:"),
    ],
    ids=["worker-SIGINT", "server-SIGTERM"],
)
def test_worker_and_server_stop_whatever_signal_disposition_they_inherit(
    isolated: Path, command: list[str], signum: int, started: str
) -> None:
    """As watch: started with both stop signals ignored and blocked, one signal still stops them."""
    log = isolated.parent / "long-running.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([BUILDSYS, "--state", str(isolated / "s.db"), *command], cwd=isolated, stdout=out,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_and_block_stop_signals)
    try:
        wait_for(lambda: started in log.read_text(), 30, f"{command[0]} to start")
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
