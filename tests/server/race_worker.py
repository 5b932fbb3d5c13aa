"""One racing worker for test_race: claims runs of pool "race" through a server until none are
left, then writes the ids it got to a JSON file.

Run as: python -m tests.server.race_worker URL NAME OUT GATE WORKERS. The workers meet twice in the
folder GATE: before their first claim, and after it (each holds a first batch before any claims on),
so on a slow machine one worker cannot drain every run before the others have started."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from buildsys.store.http import HttpStore


def meet(gate: Path, name: str, stage: str, workers: int, deadline_s: float = 60.0) -> None:
    """Mark this worker at `stage`, then wait (with a deadline) until all `workers` are."""
    (gate / f"{stage}-{name}").touch()
    deadline = time.monotonic() + deadline_s
    while len(list(gate.glob(f"{stage}-*"))) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: not every worker reached {stage} within {deadline_s:g} s")
        time.sleep(0.01)


def main(url: str, name: str, out: str, gate: str, workers: str) -> None:
    claimed: list[str] = []
    with HttpStore(url) as store:
        meet(Path(gate), name, "ready", int(workers))
        first = True
        while True:
            runs = store.claim_runs("race", name, limit=5, lease_seconds=600, wait=0.5)
            claimed.extend(r.id for r in runs)
            if first:
                meet(Path(gate), name, "first", int(workers))
                first = False
            if not runs:
                break
    Path(out).write_text(json.dumps(claimed))


if __name__ == "__main__":
    main(*sys.argv[1:6])
