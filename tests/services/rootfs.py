"""Make the test base image from this machine's own files, with no registry and no network.

The image is a minimal root filesystem assembled from the host and loaded with ``docker import``:

* the Python that runs the tests (``sys.base_prefix``, e.g. pyenv's 3.11 build): its interpreter
  goes to ``/usr/local/bin/python3.X`` (also ``python3`` and ``python``), its standard library to
  ``/usr/local/lib/python3.X`` (complete, minus the 120 MB ``test`` package; ``site-packages`` is
  left empty, so there is no pip) and ``libpython`` next to libc, where the loader finds it;
* ``/bin/sh`` (dash), bash and the command-line tools of the Debian packages in `TOOL_PACKAGES`
  (coreutils, grep, sed, awk, find, which, tar, gzip, ...), found with ``dpkg-query -L``;
* every shared library that ``ldd`` says the interpreter, its extension modules and those tools
  load (libc, libssl, libsqlite3, libffi, ...), at their host paths, plus the dynamic loader, and
  all of glibc, libgcc_s and libstdc++ (what manylinux wheels link against), so the test venv's
  site-packages can be bind-mounted and put on ``PYTHONPATH`` inside a container;
* a small ``/etc`` (passwd, group, nsswitch.conf), ``/tmp`` and ``/root``; the usr-merge
  symlinks (``/bin -> usr/bin`` ...) as on the host.

The result is ~50 MB compressed and imports in a few seconds. It carries the labels
``buildsys.test=1`` and ``buildsys.test.base-content=<key>``; the key hashes this module's source,
the interpreter and the host package database, so a later session reuses the image as long as
nothing it was made from changed. Images built ``FROM`` it inherit ``buildsys.test=1``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CONTENT_LABEL", "TOOL_PACKAGES", "RootfsError", "content_key", "image_config", "write_rootfs_tar"]

CONTENT_LABEL = "buildsys.test.base-content"
BUILDER_VERSION = "2"
TOOL_PACKAGES = (
    "dash",
    "bash",
    "coreutils",
    "grep",
    "sed",
    "mawk",
    "findutils",
    "debianutils",
    "tar",
    "gzip",
)
# Whole runtime libraries that manylinux wheels expect (libpthread.so.0, libdl.so.2, libstdc++ ...),
# so C extensions from the test venv work when its site-packages is bind-mounted.
LIBRARY_PACKAGES = ("libc6", "libgcc-s1", "libstdc++6")
# Commands that Debian provides through symlinks outside the packages' file lists (alternatives).
EXTRA_COMMANDS = (Path("/bin/sh"), Path("/usr/bin/which"), Path("/usr/bin/awk"))
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
DPKG_STATUS = Path("/var/lib/dpkg/status")

_LDD_LIB = re.compile(r"=>\s+(/\S+)\s+\(0x")
_SHARED_OBJECT = re.compile(r"[^/]+\.so(\.[0-9]+)*")
_LDD_LOADER = re.compile(r"^\s*(/\S+)\s+\(0x")

ETC_FILES: dict[str, bytes] = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
}


class RootfsError(RuntimeError):
    """The host lacks something the base image is made from."""


@dataclass(frozen=True)
class Entry:
    """One path in the image: a host file copied in, a directory, a symlink or literal bytes."""

    kind: str  # "file" | "dir" | "symlink" | "data"
    source: Path | None = None
    target: str = ""
    mode: int = 0o755
    data: bytes = b""


@dataclass(frozen=True)
class HostPython:
    """The interpreter installation being copied."""

    version: str  # "3.11"
    prefix: Path
    executable: Path
    stdlib: Path
    libpython: Path | None

    @property
    def target_prefix(self) -> PurePosixPath:
        return PurePosixPath("/usr") if self.prefix == Path("/usr") else PurePosixPath("/usr/local")


def host_python() -> HostPython:
    """Locate the base installation of the Python running the tests (not the venv)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    prefix = Path(sys.base_prefix)
    executable = prefix / "bin" / f"python{version}"
    stdlib = prefix / "lib" / f"python{version}"
    if not executable.is_file() or not (stdlib / "os.py").is_file():
        raise RootfsError(
            f"no Python {version} installation at {prefix} (expected {executable} and {stdlib})"
        )
    libpython = prefix / "lib" / f"libpython{version}.so.1.0"
    return HostPython(version, prefix, executable, stdlib, libpython if libpython.is_file() else None)


def image_config(python_version: str, key: str) -> list[str]:
    """The Dockerfile-style changes ``docker import`` applies to the rootfs."""
    return [
        f"ENV PATH={IMAGE_PATH}",
        "ENV LANG=C.UTF-8",
        "WORKDIR /",
        'CMD ["python3"]',
        "LABEL buildsys.test=1",
        f"LABEL {CONTENT_LABEL}={key}",
        f"LABEL buildsys.test.python={python_version}",
    ]


def content_key(python: HostPython) -> str:
    """A cheap fingerprint of everything the image is made from (no ldd, no file walk)."""
    digest = hashlib.sha256()
    digest.update(BUILDER_VERSION.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(sys.version.encode())
    watched: list[Path] = [python.executable, python.stdlib, python.stdlib / "lib-dynload", DPKG_STATUS]
    if python.libpython is not None:
        watched.append(python.libpython)
    for path in watched:
        try:
            st = path.stat()
        except FileNotFoundError:
            digest.update(f"{path}:missing".encode())
            continue
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
    return digest.hexdigest()[:24]


class Rootfs:
    """The set of paths that make up the image, keyed by their absolute path in the image."""

    def __init__(self) -> None:
        self.entries: dict[PurePosixPath, Entry] = {}

    def put(self, dest: PurePosixPath, entry: Entry) -> None:
        self.entries.setdefault(dest, entry)

    def copy_host_path(self, path: Path) -> None:
        """Copy a host file to the same path, following symlink chains (each link kept as a link)."""
        path = Path(os.path.normpath(path))
        parent = Path(os.path.realpath(path.parent))
        real = parent / path.name
        dest = PurePosixPath(real)
        if dest in self.entries:
            return
        if real.is_symlink():
            target = os.readlink(real)
            self.put(dest, Entry("symlink", target=target))
            self.copy_host_path(Path(target) if os.path.isabs(target) else parent / target)
        elif real.is_file():
            self.put(dest, Entry("file", source=real, mode=stat.S_IMODE(real.stat().st_mode)))

    def copy_tree(self, source: Path, dest: PurePosixPath, skip: Iterable[str] = ()) -> None:
        """Copy a host directory tree to ``dest``; ``skip`` names top-level entries left out."""
        skipped = set(skip)
        for root, dirs, files in os.walk(source):
            rel = Path(root).relative_to(source)
            if rel == Path("."):
                dirs[:] = [d for d in dirs if d not in skipped]
                files = [f for f in files if f not in skipped]
            target_dir = dest / PurePosixPath(rel.as_posix()) if rel != Path(".") else dest
            self.put(target_dir, Entry("dir", mode=stat.S_IMODE(Path(root).stat().st_mode)))
            for name in dirs + files:
                host = Path(root) / name
                if host.is_symlink():
                    self.put(target_dir / name, Entry("symlink", target=os.readlink(host)))
                    if name in dirs:
                        dirs.remove(name)
                elif host.is_file():
                    self.put(
                        target_dir / name, Entry("file", source=host, mode=stat.S_IMODE(host.stat().st_mode))
                    )

    def with_parents(self) -> dict[PurePosixPath, Entry]:
        """All entries plus a directory entry for every missing ancestor, sorted parents first."""
        full = dict(self.entries)
        for dest in list(self.entries):
            for parent in dest.parents:
                if parent != PurePosixPath("/"):
                    full.setdefault(parent, Entry("dir"))
        return dict(sorted(full.items(), key=lambda item: item[0].parts))


def shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    """Every library (and the loader) that ``ldd`` reports for ``binaries``; fails on a missing one."""
    files = [str(b) for b in binaries]
    result = subprocess.run(["ldd", *files], capture_output=True, text=True, check=False)
    found: set[Path] = set()
    missing: list[str] = []
    current = ""
    for line in result.stdout.splitlines():
        if line.endswith(":") and not line.startswith(("\t", " ")):
            current = line[:-1]
            continue
        if "=> not found" in line:
            missing.append(f"{current}: {line.strip()}")
            continue
        match = _LDD_LIB.search(line) or _LDD_LOADER.match(line)
        if match:
            found.add(Path(match.group(1)))
    if missing:
        # A module the host itself cannot load is left out of the image the same way (it fails on
        # import in both places); anything the interpreter or a tool needs is an error.
        core = [m for m in missing if "lib-dynload" not in m]
        if core:
            raise RootfsError("shared libraries not found on the host: " + "; ".join(core))
    return found


def package_files(packages: Iterable[str]) -> list[Path]:
    """Every path that the given Debian packages installed (``dpkg-query -L``)."""
    names = list(packages)
    result = subprocess.run(["dpkg-query", "-L", *names], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RootfsError(f"dpkg-query -L {' '.join(names)} failed: {result.stderr.strip()}")
    return [Path(line.strip()) for line in result.stdout.splitlines() if line.strip()]


def package_binaries(packages: Iterable[str]) -> list[Path]:
    """The executables (under bin/ or sbin/) that the given Debian packages installed."""
    return [
        path
        for path in package_files(packages)
        if path.parent.name in {"bin", "sbin"} and (path.is_file() or path.is_symlink())
    ]


def package_libraries(packages: Iterable[str]) -> list[Path]:
    """The shared objects directly in a lib directory (not plugins in subdirs) of the packages."""
    return [
        path
        for path in package_files(packages)
        if _SHARED_OBJECT.fullmatch(path.name)
        and (path.parent.name in {"lib", "lib64"} or path.parent.name.endswith("-linux-gnu"))
        and path.is_file()
    ]


def is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def assemble(python: HostPython) -> Rootfs:
    """Decide every path of the image."""
    fs = Rootfs()
    for top in MERGED_USR:
        host = Path("/") / top
        if host.is_symlink():
            fs.put(PurePosixPath("/") / top, Entry("symlink", target=os.readlink(host)))
    for name, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("home", 0o755)):
        fs.put(PurePosixPath("/") / name, Entry("dir", mode=mode))
    for name, data in ETC_FILES.items():
        fs.put(PurePosixPath("/") / name, Entry("data", data=data, mode=0o644))

    prefix = python.target_prefix
    exe_name = f"python{python.version}"
    fs.put(prefix / "bin" / exe_name, Entry("file", source=python.executable, mode=0o755))
    fs.put(prefix / "bin" / "python3", Entry("symlink", target=exe_name))
    fs.put(prefix / "bin" / "python", Entry("symlink", target=exe_name))
    stdlib_dest = prefix / "lib" / f"python{python.version}"
    fs.copy_tree(python.stdlib, stdlib_dest, skip=("site-packages", "dist-packages", "test"))
    fs.put(stdlib_dest / "site-packages", Entry("dir"))

    tools = package_binaries(TOOL_PACKAGES)
    for tool in [*tools, *(c for c in EXTRA_COMMANDS if c.is_symlink() or c.exists())]:
        fs.copy_host_path(tool)

    elf: list[Path] = [python.executable]
    elf += sorted((python.stdlib / "lib-dynload").glob("*.so"))
    elf += [t for t in tools if t.is_file() and not t.is_symlink() and is_elf(t)]
    if python.libpython is not None:
        elf.append(python.libpython)
    libraries = shared_libraries(elf) | set(package_libraries(LIBRARY_PACKAGES))
    libc = next((lib for lib in libraries if lib.name == "libc.so.6"), None)
    if libc is None:
        raise RootfsError("ldd did not report libc.so.6 for the Python interpreter")
    for lib in libraries:
        if python.libpython is not None and lib.resolve() == python.libpython.resolve():
            continue
        fs.copy_host_path(lib)
    if python.libpython is not None:
        # The interpreter's RUNPATH points into the host prefix; the loader's default
        # directories (where libc lives) are searched next, so libpython goes there.
        lib_dir = PurePosixPath(os.path.realpath(libc.parent))
        fs.put(lib_dir / python.libpython.name, Entry("file", source=python.libpython, mode=0o755))
    return fs


def _tarinfo(dest: PurePosixPath, entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(str(dest).lstrip("/"))
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = entry.mode
    info.mtime = 0
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
    elif entry.kind == "data":
        info.size = len(entry.data)
    else:
        assert entry.source is not None
        info.size = entry.source.stat().st_size
        info.mtime = int(entry.source.stat().st_mtime)
    return info


def write_rootfs_tar(directory: Path) -> tuple[Path, HostPython]:
    """Write the image's root filesystem as an uncompressed tar in ``directory``."""
    python = host_python()
    fs = assemble(python)
    fd, name = tempfile.mkstemp(prefix="rootfs-", suffix=".tar", dir=directory)
    os.close(fd)
    path = Path(name)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dest, entry in fs.with_parents().items():
            info = _tarinfo(dest, entry)
            if entry.kind == "file":
                assert entry.source is not None
                with entry.source.open("rb") as handle:
                    tar.addfile(info, handle)
            elif entry.kind == "data":
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return path, python
