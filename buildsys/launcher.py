"""The console entry point: answer a provable no-op build before importing anything heavy."""

from __future__ import annotations

import sys


def main() -> None:
    from buildsys.noop import try_fast

    code = try_fast(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from buildsys.cli import main as cli_main

    cli_main()
