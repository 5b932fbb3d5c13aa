"""The test command: set everything up in .venv, then lint, type-check and run the whole suite.

Usage (from the repository root, with only Python 3.11+):  python3 tests/run.py [pytest args]
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
    result = subprocess.run([py, "-m", "pytest", *sys.argv[1:]], cwd=ROOT)
    return result.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode or 1)
