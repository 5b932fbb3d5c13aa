"""Upload a project to an object store and download it back: what the S3 and GCS steps share.

A backend only lists, uploads and downloads (:class:`ObjectStore`); deciding what is unchanged,
where files go and what to log lives here. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from buildsys.errors import StepError
from buildsys.step import CheckHook, Context

from ._files import (
    as_globs,
    md5_file,
    prefix_of,
    project_files,
    read_patterns,
    replace_atomically,
    safe_destination,
)

DEFAULT_IGNORE_FILE = ".prefectignore"


@dataclass(frozen=True)
class RemoteObject:
    """One object under the folder, as the listing shows it."""

    key: str
    size: int
    md5: str | None  # lowercase hex; None when the listing cannot tell (S3 multipart uploads)


class ObjectStore(Protocol):
    """One bucket of one backend."""

    scheme: str  # "s3" | "gs", for messages
    bucket: str

    def index(self, prefix: str) -> dict[str, RemoteObject]:
        """Every object under ``prefix``, "directory" placeholders (keys ending in ``/``) left out."""
        ...

    def stored_md5(self, obj: RemoteObject) -> str | None:
        """The MD5 recorded with an object whose listing had none."""
        ...

    def upload(self, local: Path, key: str, md5: str) -> None: ...

    def download(self, key: str, dest: Path) -> None: ...

    def errors(self, ctx: Context) -> AbstractContextManager[None]:
        """Turns the backend's exceptions into one clear StepError (secrets masked)."""
        ...


def mapping_input(name: str, value: object) -> Mapping[str, Any]:
    """A step input that must be a mapping (credentials, client parameters); None is empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StepError(f"`{name}` must be a mapping, got {type(value).__name__}")
    return value


def upload_set(ctx: Context, ignore_file: object) -> list[str]:
    """The files a push sends: the working directory minus the ignore file's patterns."""
    patterns = read_patterns(ctx.path(ignore_file)) if isinstance(ignore_file, str) and ignore_file else []
    return project_files(ctx.cwd, patterns)


def pushed_files(inputs: Mapping[str, Any], ctx: Context) -> list[str]:
    """The ``files`` hook of a push step: everything it uploads, plus the ignore file itself."""
    ignore_file = inputs.get("ignore_file", DEFAULT_IGNORE_FILE)
    extra = [ignore_file] if isinstance(ignore_file, str) and ctx.path(ignore_file).is_file() else []
    return as_globs([*upload_set(ctx, ignore_file), *extra])


def push(ctx: Context, store: ObjectStore, folder: str, ignore_file: object) -> dict[str, str]:
    """A push step: upload the working directory's files (but what the ignore file names) under
    ``folder/``, skipping unchanged objects; its outputs."""
    files = upload_set(ctx, ignore_file)
    with store.errors(ctx):
        _push_tree(ctx, store, folder, files)
    return {"bucket": store.bucket, "folder": folder}


def still_uploaded(open_store: Callable[[Mapping[str, Any], Context], ObjectStore]) -> CheckHook:
    """The ``check`` (and ``shared``) hook of a push step whose bucket ``open_store`` opens from the
    step's inputs: trust the cached push only while every file is still in the bucket with its size."""

    def check(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
        store = open_store(inputs, ctx)
        files = upload_set(ctx, inputs.get("ignore_file", DEFAULT_IGNORE_FILE))
        with store.errors(ctx):
            return _still_pushed(ctx, store, str(inputs.get("folder", "")), files)

    return check


def pull(ctx: Context, store: ObjectStore, folder: str, pushed_by: str) -> dict[str, str]:
    """A pull step: download every object under ``folder/`` into the working directory; its outputs."""
    with store.errors(ctx):
        _pull_tree(ctx, store, folder, pushed_by)
    return {"bucket": store.bucket, "folder": folder, "directory": str(ctx.cwd)}


def _push_tree(ctx: Context, store: ObjectStore, folder: str, files: list[str]) -> None:
    """Upload ``files`` (relative to the cwd) under ``folder/``, skipping unchanged objects."""
    prefix = prefix_of(folder)
    remote = store.index(prefix)
    uploaded = 0
    for rel in files:
        local = ctx.cwd / rel
        md5 = md5_file(local)
        if _unchanged(store, local, md5, remote.get(prefix + rel)):
            continue
        store.upload(local, prefix + rel, md5)
        ctx.log(f"uploaded {rel} to {store.scheme}://{store.bucket}/{prefix}{rel}")
        uploaded += 1
    ctx.log(f"{store.scheme}://{store.bucket}/{prefix}: {uploaded} uploaded, {len(files) - uploaded} unchanged")


def _pull_tree(ctx: Context, store: ObjectStore, folder: str, pushed_by: str) -> None:
    """Download every object under ``folder/`` into the cwd, skipping files that already match."""
    prefix = prefix_of(folder)
    remote = store.index(prefix)
    where = f"{store.scheme}://{store.bucket}/{prefix}"
    if not remote:
        raise StepError(f"nothing to pull: {where} holds no objects",
                        hint=f"check bucket and folder ({pushed_by} writes to <folder>/<path>)")
    downloaded = 0
    for key, obj in sorted(remote.items()):
        dest = safe_destination(ctx.cwd, key[len(prefix) :])
        if dest is None:
            raise StepError(f"refusing to write object {key!r} outside the working directory")
        if dest.is_file() and _unchanged(store, dest, md5_file(dest), obj):
            continue
        replace_atomically(dest, _downloader(store, key))
        downloaded += 1
    ctx.log(f"{where}: {downloaded} downloaded, {len(remote) - downloaded} already present")


def _still_pushed(ctx: Context, store: ObjectStore, folder: str, files: list[str]) -> bool:
    """Whether every file is still in the bucket with its size (the ``check`` of a cached push)."""
    prefix = prefix_of(folder)
    remote = store.index(prefix)
    return all(
        (obj := remote.get(prefix + rel)) is not None and obj.size == (ctx.cwd / rel).stat().st_size
        for rel in files
    )


def _unchanged(store: ObjectStore, local: Path, md5: str, remote: RemoteObject | None) -> bool:
    if remote is None or remote.size != local.stat().st_size:
        return False
    known = remote.md5 if remote.md5 is not None else store.stored_md5(remote)
    return known == md5


def _downloader(store: ObjectStore, key: str) -> Any:
    def download(tmp: Path) -> None:
        store.download(key, tmp)

    return download
