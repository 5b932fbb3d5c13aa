"""Reading files that users name (project files, plan files, flow entrypoints) without trusting them.

Regular files only and a size limit, checked on the open descriptor: a symlink to /dev/zero, a FIFO
or a device is a clear error instead of a hang or a MemoryError, so `plan` is safe on an untrusted
pull request.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from buildsys.errors import BuildsysError

MiB = 1024 * 1024
PROJECT_FILE_LIMIT = 64 * MiB
PLAN_FILE_LIMIT = 512 * MiB
ENTRYPOINT_FILE_LIMIT = 4 * MiB


class UnreadableFile(BuildsysError):
    """A file that is not a regular file, or is larger than its limit."""


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: Path | str, *, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file (symlinks followed) of at most `limit` bytes.

    FileNotFoundError is left to the caller (each says what a missing file means); anything that is
    not a regular file, or is too large, raises UnreadableFile. Opening never blocks (O_NONBLOCK),
    so a FIFO is refused instead of waiting for a writer."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise UnreadableFile(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise UnreadableFile(f"{what} {path} cannot be read (permission denied)") from None
    except FileNotFoundError:
        raise
    except OSError as exc:  # a symlink loop, a socket (ENXIO), a file used as a directory, a name too long…
        raise UnreadableFile(
            f"{what} {path} cannot be opened: {exc.strerror or exc}",
            hint="point at a regular file (buildsys never reads devices, pipes or sockets)",
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(
                f"{what} {path} is {kind_of(info.st_mode)}, not a regular file",
                hint="point at a regular file (buildsys never reads devices, pipes or sockets)",
            )
        if info.st_size > limit:
            raise UnreadableFile(f"{what} {path} is {info.st_size:,} bytes; the limit is {limit:,}")
        chunks: list[bytes] = []
        size = 0
        while True:  # the file may grow after fstat: read at most limit + 1 bytes
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise UnreadableFile(f"{what} {path} is larger than the limit of {limit:,} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_source(path: Path) -> tuple[bytes, str]:
    """A project file's bytes and text; a missing, unreadable or non-UTF-8 file is a ProjectError.
    (Here rather than in buildsys.project: a cached build reads the file without importing the
    loader, YAML and the schemas.)"""
    from buildsys.errors import Diagnostic, Location, ProjectError

    shown = str(path)
    try:  # regular files only, with a size limit: `-f /dev/zero` is an error, not a MemoryError
        raw = read_regular(path, limit=PROJECT_FILE_LIMIT, what="project file")
    except UnreadableFile as exc:
        raise ProjectError([Diagnostic("error", exc.message, hint=exc.hint)]) from None
    except FileNotFoundError:
        raise ProjectError(
            [Diagnostic("error", f"no project file at {shown}", hint="run `buildsys init` to create one, or pass -f PATH")]
        ) from None
    except IsADirectoryError:
        raise ProjectError([Diagnostic("error", f"{shown} is a directory, not a project file")]) from None
    except OSError as exc:
        raise ProjectError([Diagnostic("error", f"cannot read {shown}: {exc.strerror or exc}")]) from None
    try:
        return raw, raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProjectError([Diagnostic("error", f"{shown} is not UTF-8 text", Location(shown, 1, 1))]) from None
