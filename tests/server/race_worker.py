"""One racing worker for test_race: claims runs of pool "race" through a server until none are
left, then writes the ids it got to a JSON file. Run as: python -m tests.server.race_worker URL NAME OUT"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from buildsys.store.http import HttpStore


def main(url: str, name: str, out: str) -> None:
    claimed: list[str] = []
    with HttpStore(url) as store:
        while True:
            runs = store.claim_runs("race", name, limit=5, lease_seconds=600, wait=0.5)
            if not runs:
                break
            claimed.extend(r.id for r in runs)
    Path(out).write_text(json.dumps(claimed))


if __name__ == "__main__":
    main(*sys.argv[1:4])
