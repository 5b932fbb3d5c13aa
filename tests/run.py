"""The test command: set everything up in .venv, then lint, type-check and run the whole suite.

Usage (from the repository root, with only Python 3.11+):  python3 tests/run.py [pytest args]

The suite runs on two pytest-xdist workers, each test module whole on one of them (`--dist
loadfile`: a module's fixtures are made once); most tests wait on servers, engines and child
processes, so two workers on a 2-core CI machine take about half the serial time. Give `-n 0` to run
serially; the 30 slowest tests are listed at the end either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


def main() -> int:
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = str(BIN / "python")
    sh(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[test]")
    sh(py, "-m", "ruff", "check", "buildsys", "steps", "tests", "examples")
    sh(py, "-m", "mypy")
    args = sys.argv[1:]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        args = ["-n", "2", "--dist", "loadfile", *args]
    if not any(a.startswith("--durations") for a in args):
        args = ["--durations=30", *args]
    result = subprocess.run([py, "-m", "pytest", *args], cwd=ROOT)
    return result.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode or 1)
