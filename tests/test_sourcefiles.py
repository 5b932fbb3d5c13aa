"""Hostile files never crash or hang `plan` / `apply`: entrypoints that are symlinks to /dev/zero,
FIFOs or pathologically nested code, and project or plan files that are not regular files, each
get a clear error (exit 1, no traceback) within a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.entrypoints import EntrypointError, parse_source
from buildsys.sourcefiles import UnreadableFile, read_regular

BUILDSYS = [sys.executable, "-m", "buildsys"]
DEADLINE_S = 60.0
PROJECT = "deployments:\n  - name: d\n    entrypoint: flows/f.py:f\n"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUILDSYS, "--state", str(cwd / "s.db"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "prefect.yaml").write_text(PROJECT)
    return tmp_path


def test_an_entrypoint_symlinked_to_dev_zero_is_a_clear_plan_error(project: Path) -> None:
    (project / "flows" / "f.py").symlink_to("/dev/zero")
    ran = cli(project, "plan")
    assert (ran.returncode, ran.stderr) == (
        1,
        "prefect.yaml:2:5: error: deployment 'd': entrypoint flows/f.py:f: entrypoint file "
        f"{project}/flows/f.py is a character device, not a regular file\n"
        "  at deployments[d].entrypoint\n"
        "  hint: point at a regular file (buildsys never reads devices, pipes or sockets)\n",
    )


def test_an_entrypoint_fifo_is_a_clear_plan_error_not_a_hang(project: Path) -> None:
    os.mkfifo(project / "flows" / "f.py")
    ran = cli(project, "plan")
    assert ran.returncode == 1
    assert f"entrypoint file {project}/flows/f.py is a FIFO (named pipe), not a regular file" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_deeply_nested_code_is_a_clear_plan_error_not_a_memory_error(project: Path) -> None:
    (project / "flows" / "f.py").write_text("from prefect import flow\n\n@flow\ndef f(x: int = " + "-" * 100_000 + "1): ...\n")
    ran = cli(project, "plan")
    assert (ran.returncode, ran.stderr) == (
        1,
        "prefect.yaml:2:5: error: deployment 'd': entrypoint flows/f.py:f: flows/f.py is nested too deeply "
        "to be read (more than the parser allows)\n"
        "  at deployments[d].entrypoint\n"
        "  hint: buildsys reads flow files without running them and refuses pathological nesting\n",
    )
    # nesting the parser accepts but that is far beyond real code is refused too
    with pytest.raises(EntrypointError, match="nests expressions or statements more than 100 levels deep"):
        parse_source("x = " + "-" * 150 + "1\n", "f.py")


def test_an_oversized_entrypoint_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.py"
    big.write_bytes(b"#" * 1025)
    with pytest.raises(UnreadableFile, match=r"is 1,025 bytes; the limit is 1,024"):
        read_regular(big, limit=1024, what="entrypoint file")
    assert read_regular(big, limit=2048) == b"#" * 1025


@pytest.mark.parametrize("args", [("-f", "/dev/zero", "plan"), ("-f", "/dev/zero", "validate"), ("apply", "/dev/zero")])
def test_dev_zero_as_a_project_or_plan_file_is_a_clear_error(project: Path, args: tuple[str, ...]) -> None:
    ran = cli(project, *args)
    assert ran.returncode == 1
    what = "plan file" if args[0] == "apply" else "project file"
    assert f"{what} /dev/zero is a character device, not a regular file" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_fifo_as_the_project_file_is_a_clear_error(project: Path) -> None:
    os.mkfifo(project / "fifo.yaml")
    ran = cli(project, "-f", "fifo.yaml", "plan")
    assert ran.returncode == 1
    assert "project file fifo.yaml is a FIFO (named pipe), not a regular file" in ran.stderr


def test_a_symlink_loop_a_socket_or_a_file_used_as_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    """`plan` crashed (exit 3, ELOOP from open) on an entrypoint symlinked to itself."""
    import socket

    loop = tmp_path / "loop.py"
    loop.symlink_to("loop.py")
    with pytest.raises(UnreadableFile, match=r"loop.py cannot be opened: Too many levels of symbolic links"):
        read_regular(loop, limit=1024, what="entrypoint file")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.py"))
        with pytest.raises(UnreadableFile, match=r"s.py cannot be opened: No such device or address"):
            read_regular(tmp_path / "s.py", limit=1024)
    (tmp_path / "file").write_text("")
    with pytest.raises(UnreadableFile, match=r"file/f.py cannot be opened: Not a directory"):
        read_regular(tmp_path / "file" / "f.py", limit=1024)
    with pytest.raises(FileNotFoundError):  # a missing file is the caller's to word
        read_regular(tmp_path / "missing.py", limit=1024)
