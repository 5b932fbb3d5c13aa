"""The console entry point: answer a provable no-op build before importing anything heavy."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from buildsys.noop import try_fast

    code = try_fast(sys.argv[1:])
    if code is not None:
        # Answered from the manifest: nothing was imported that needs shutting down, so skip the
        # interpreter's teardown (a few ms of a ~40 ms command).
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a closed pipe: the answer had nowhere to go, like any failed write
            code = code or 1
        os._exit(code)
    from buildsys.cli import main as cli_main

    cli_main()
