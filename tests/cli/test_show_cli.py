"""`buildsys show PLAN`: a saved plan rendered exactly as `plan` printed it, as JSON too, and refused
when edited — without touching the state store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = """\
work_pools:
  - {name: local, type: process}
deployments:
  - {name: a, entrypoint: flows.py:main, work_pool: {name: local}}
"""


def bs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "BUILDSYS_STATE": str(cwd / "state.db")}, timeout=120)


def test_show_renders_a_saved_plan_as_plan_printed_it(isolated: Path) -> None:
    (isolated / "prefect.yaml").write_text(PROJECT)
    (isolated / "flows.py").write_text("def main():\n    pass\n")
    planned = bs("plan", "-o", "plan.json", cwd=isolated)
    assert planned.returncode == 0, planned.stderr
    shown = bs("show", "plan.json", cwd=isolated)
    assert shown.returncode == 0, shown.stderr
    assert planned.stdout == shown.stdout + "Saved the plan to plan.json. Apply exactly this plan with: buildsys apply plan.json\n"
    as_json = bs("--json", "show", "plan.json", cwd=isolated)
    assert json.loads(as_json.stdout) == json.loads((isolated / "plan.json").read_text())
    (isolated / "plan.json").write_text((isolated / "plan.json").read_text().replace('"local"', '"other"'))
    edited = bs("show", "plan.json", cwd=isolated)
    assert edited.returncode == 1
    assert "error: the plan file was modified after it was made" in edited.stderr
