"""``push_to_gcs`` / ``pull_from_gcs``: the project's files to and from a Google Cloud Storage bucket.

Uploads skip objects whose size and MD5 (which GCS lists for every object) already match; nothing is
deleted remotely, as in Prefect. Pulls take the objects under ``<folder>/`` — unlike Prefect, which
uses the bare folder as prefix and so also matches ``<folder>2/…``. ``google-cloud-storage`` is
imported inside the functions (install ``buildsys[gcs]``). ``STORAGE_EMULATOR_HOST`` in the step's
environment points the client at an emulator (anonymous credentials unless some are given).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.errors import StepError
from buildsys.step import Context, step

from ._sync import (
    DEFAULT_IGNORE_FILE,
    RemoteObject,
    mapping_input,
    pull,
    push,
    pushed_files,
    still_uploaded,
)

PUSH_ALIASES = ("prefect_gcp.deployments.steps.push_to_gcs", "prefect_gcp.projects.steps.push_project_to_gcs")
PULL_ALIASES = ("prefect_gcp.deployments.steps.pull_from_gcs", "prefect_gcp.projects.steps.pull_project_from_gcs")

PUSH_EXAMPLE = """\
push:
  - prefect_gcp.deployments.steps.push_to_gcs:
      id: push_code
      bucket: my-bucket
      folder: my-project
      credentials: "{{ prefect.blocks.gcp-credentials.dev }}"
"""

PULL_EXAMPLE = """\
pull:
  - prefect_gcp.deployments.steps.pull_from_gcs:
      bucket: "{{ push_code.bucket }}"
      folder: "{{ push_code.folder }}"
      credentials: "{{ prefect.blocks.gcp-credentials.dev }}"
"""


@dataclass
class GcsStore:
    """A GCS bucket through a google-cloud-storage client (see :class:`ObjectStore`)."""

    client: Any
    bucket: str
    scheme: str = "gs"

    def index(self, prefix: str) -> dict[str, RemoteObject]:
        found: dict[str, RemoteObject] = {}
        for blob in self.client.list_blobs(self.bucket, prefix=prefix):
            if not blob.name.endswith("/"):
                md5 = base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
                found[blob.name] = RemoteObject(blob.name, int(blob.size or 0), md5)
        return found

    def stored_md5(self, obj: RemoteObject) -> str | None:
        return None  # GCS lists an MD5 for every object

    def upload(self, local: Path, key: str, md5: str) -> None:
        self.client.bucket(self.bucket).blob(key).upload_from_filename(str(local))

    def download(self, key: str, dest: Path) -> None:
        self.client.bucket(self.bucket).blob(key).download_to_filename(str(dest))

    def errors(self, ctx: Context) -> AbstractContextManager[None]:
        return _gcs_errors(ctx, self.bucket)


@step("push_to_gcs", aliases=PUSH_ALIASES, version="1", outputs=("bucket", "folder"), example=PUSH_EXAMPLE)
def push_to_gcs(
    ctx: Context,
    bucket: str,
    folder: str,
    project: str | None = None,
    credentials: Mapping[str, Any] | None = None,
    ignore_file: str | None = DEFAULT_IGNORE_FILE,
) -> dict[str, str]:
    """Upload the working directory's files to gs://bucket/folder/, skipping unchanged objects."""
    return push(ctx, GcsStore(_client(ctx, project, credentials), bucket), folder, ignore_file)


push_to_gcs.files(pushed_files)


def _open(inputs: Mapping[str, Any], ctx: Context) -> GcsStore:
    return GcsStore(_client(ctx, inputs.get("project"), inputs.get("credentials")), str(inputs.get("bucket")))


_still_uploaded = still_uploaded(_open)
push_to_gcs.check(_still_uploaded)
push_to_gcs.shared(_still_uploaded)  # the bucket is where every runner finds it


@step(
    "pull_from_gcs",
    aliases=PULL_ALIASES,
    version="1",
    outputs=("bucket", "folder", "directory"),
    example=PULL_EXAMPLE,
    cacheable=False,
)
def pull_from_gcs(
    ctx: Context,
    bucket: str,
    folder: str,
    project: str | None = None,
    credentials: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Download every object under gs://bucket/folder/ into the working directory."""
    return pull(ctx, GcsStore(_client(ctx, project, credentials), bucket), folder, pushed_by="push_to_gcs")


# --- client ------------------------------------------------------------------------------------


def _client(ctx: Context, project: object, credentials: object) -> Any:
    try:
        from google.cloud import storage
    except ImportError:
        raise StepError(
            "the GCS steps need google-cloud-storage, which is not installed",
            hint="pip install 'buildsys[gcs]'",
        ) from None
    creds = mapping_input("credentials", credentials)
    # As in Prefect, a project inside the credentials wins over the step's `project`.
    chosen_project = creds.get("project") or project or ctx.env.get("GOOGLE_CLOUD_PROJECT")
    google_creds = _google_credentials(ctx, creds)
    options: dict[str, Any] = {}
    emulator = ctx.env.get("STORAGE_EMULATOR_HOST")
    if emulator:
        options["client_options"] = {"api_endpoint": emulator}
        if google_creds is None:
            from google.auth.credentials import AnonymousCredentials

            google_creds = AnonymousCredentials()  # type: ignore[no-untyped-call]
        chosen_project = chosen_project or "buildsys-emulator"
    with _gcs_errors(ctx, "?"):
        return storage.Client(project=chosen_project, credentials=google_creds, **options)


def _google_credentials(ctx: Context, creds: Mapping[str, Any]) -> Any:
    info = creds.get("service_account_info")
    path = creds.get("service_account_file")
    if info is None and path is None:
        return None
    from google.oauth2 import service_account

    try:
        if info is not None:
            data = json.loads(info) if isinstance(info, str) else dict(info)
            if data.get("private_key"):
                ctx.secrets.add(str(data["private_key"]))
            return service_account.Credentials.from_service_account_info(data)  # type: ignore[no-untyped-call]
        return service_account.Credentials.from_service_account_file(str(ctx.path(str(path))))  # type: ignore[no-untyped-call]
    except (ValueError, OSError, TypeError) as exc:
        raise StepError(f"unusable GCP service account credentials: {ctx.mask(str(exc))}") from None


@contextmanager
def _gcs_errors(ctx: Context, bucket: str) -> Iterator[None]:
    """Turn the Google client's exceptions into one clear StepError (secrets masked)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    try:
        yield
    except auth.DefaultCredentialsError:
        raise StepError(
            "no Google Cloud credentials found",
            hint="set `credentials` (service_account_info or service_account_file) or "
            "GOOGLE_APPLICATION_CREDENTIALS",
        ) from None
    except api.NotFound as exc:
        raise StepError(f"bucket {bucket!r} does not exist", hint=ctx.mask(str(exc))) from None
    except (api.Forbidden, api.Unauthorized) as exc:
        raise StepError(f"GCS refused access to bucket {bucket!r}", hint=ctx.mask(str(exc))) from None
    except api.GoogleAPICallError as exc:
        raise StepError(f"GCS request failed: {ctx.mask(str(exc))}") from None
    except auth.GoogleAuthError as exc:
        raise StepError(f"Google authentication failed: {ctx.mask(str(exc))}") from None
    except OSError as exc:  # connection refused, DNS, timeouts (requests' errors are OSErrors)
        raise StepError(f"GCS request failed: {ctx.mask(str(exc))}",
                        hint="check that the storage endpoint is reachable") from None
