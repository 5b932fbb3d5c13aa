"""``push_to_s3`` / ``pull_from_s3``: the project's files to and from an S3-compatible bucket.

Uploads skip objects whose size and MD5 already match (the ETag of a single-part upload, else the
``buildsys-md5`` metadata every upload carries); nothing is deleted remotely, as in Prefect.
``boto3`` is imported inside the functions (install ``buildsys[s3]``), so the module itself is
stdlib-only and the pull step runs in any image that has boto3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.errors import StepError
from buildsys.step import Context, step

from ._files import (
    as_globs,
    md5_file,
    prefix_of,
    project_files,
    read_patterns,
    replace_atomically,
    safe_destination,
)

PUSH_ALIASES = ("prefect_aws.deployments.steps.push_to_s3", "prefect_aws.projects.steps.push_project_to_s3")
PULL_ALIASES = ("prefect_aws.deployments.steps.pull_from_s3", "prefect_aws.projects.steps.pull_project_from_s3")
MD5_META = "buildsys-md5"

PUSH_EXAMPLE = """\
push:
  - prefect_aws.deployments.steps.push_to_s3:
      id: push_code
      bucket: my-bucket
      folder: my-project
      credentials: "{{ prefect.blocks.aws-credentials.dev }}"
      client_parameters:
        endpoint_url: http://127.0.0.1:9000
"""

PULL_EXAMPLE = """\
pull:
  - prefect_aws.deployments.steps.pull_from_s3:
      bucket: "{{ push_code.bucket }}"
      folder: "{{ push_code.folder }}"
      credentials: "{{ prefect.blocks.aws-credentials.dev }}"
"""

_CLIENT_KEYS = ("api_version", "use_ssl", "verify", "verify_cert_path", "endpoint_url", "config", "region_name")


@dataclass(frozen=True)
class RemoteObject:
    """One object under the folder, as the listing shows it."""

    key: str
    size: int
    etag: str


@step("push_to_s3", aliases=PUSH_ALIASES, version="1", outputs=("bucket", "folder"), example=PUSH_EXAMPLE)
def push_to_s3(
    ctx: Context,
    bucket: str,
    folder: str,
    credentials: Mapping[str, Any] | None = None,
    client_parameters: Mapping[str, Any] | None = None,
    ignore_file: str | None = ".prefectignore",
) -> dict[str, str]:
    """Upload the working directory's files to s3://bucket/folder/, skipping unchanged objects."""
    client = _client(ctx, credentials, client_parameters)
    prefix = prefix_of(folder)
    files = _upload_set(ctx, ignore_file)
    uploaded = 0
    with _s3_errors(ctx, bucket):
        remote = _index(client, bucket, prefix)
        for rel in files:
            local = ctx.cwd / rel
            md5 = md5_file(local)
            if _unchanged(client, bucket, local, md5, remote.get(prefix + rel)):
                continue
            client.upload_file(str(local), bucket, prefix + rel, ExtraArgs={"Metadata": {MD5_META: md5}})
            ctx.log(f"uploaded {rel} to s3://{bucket}/{prefix}{rel}")
            uploaded += 1
    ctx.log(f"s3://{bucket}/{prefix}: {uploaded} uploaded, {len(files) - uploaded} unchanged")
    return {"bucket": bucket, "folder": folder}


@push_to_s3.files
def _pushed_files(inputs: Mapping[str, Any], ctx: Context) -> list[str]:
    ignore_file = inputs.get("ignore_file", ".prefectignore")
    extra = [ignore_file] if isinstance(ignore_file, str) and ctx.path(ignore_file).is_file() else []
    return as_globs([*_upload_set(ctx, ignore_file), *extra])


@push_to_s3.check
def _still_uploaded(outputs: Mapping[str, Any], inputs: Mapping[str, Any], ctx: Context) -> bool:
    """Trust the cached push only while every file is still in the bucket with its size."""
    client = _client(ctx, inputs.get("credentials"), inputs.get("client_parameters"))
    prefix = prefix_of(str(inputs.get("folder", "")))
    bucket = str(inputs.get("bucket"))
    with _s3_errors(ctx, bucket):
        remote = _index(client, bucket, prefix)
    files = _upload_set(ctx, inputs.get("ignore_file", ".prefectignore"))
    return all(
        (obj := remote.get(prefix + rel)) is not None and obj.size == (ctx.cwd / rel).stat().st_size
        for rel in files
    )


@step(
    "pull_from_s3",
    aliases=PULL_ALIASES,
    version="1",
    outputs=("bucket", "folder", "directory"),
    example=PULL_EXAMPLE,
    cacheable=False,
)
def pull_from_s3(
    ctx: Context,
    bucket: str,
    folder: str,
    credentials: Mapping[str, Any] | None = None,
    client_parameters: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Download every object under s3://bucket/folder/ into the working directory."""
    client = _client(ctx, credentials, client_parameters)
    prefix = prefix_of(folder)
    downloaded = 0
    with _s3_errors(ctx, bucket):
        remote = _index(client, bucket, prefix)
        if not remote:
            raise StepError(
                f"nothing to pull: s3://{bucket}/{prefix} holds no objects",
                hint="check bucket and folder (push_to_s3 writes to <folder>/<path>)",
            )
        for key, obj in sorted(remote.items()):
            rel = key[len(prefix) :]
            dest = safe_destination(ctx.cwd, rel)
            if dest is None:
                raise StepError(f"refusing to write object {key!r} outside the working directory")
            if dest.is_file() and dest.stat().st_size == obj.size and md5_file(dest) == obj.etag:
                continue
            replace_atomically(dest, _downloader(client, bucket, key))
            downloaded += 1
    ctx.log(f"s3://{bucket}/{prefix}: {downloaded} downloaded, {len(remote) - downloaded} already present")
    return {"bucket": bucket, "folder": folder, "directory": str(ctx.cwd)}


# --- helpers -----------------------------------------------------------------------------------


def _upload_set(ctx: Context, ignore_file: object) -> list[str]:
    patterns = read_patterns(ctx.path(ignore_file)) if isinstance(ignore_file, str) and ignore_file else []
    return project_files(ctx.cwd, patterns)


def _downloader(client: Any, bucket: str, key: str) -> Callable[[Path], None]:
    def download(tmp: Path) -> None:
        client.download_file(bucket, key, str(tmp))

    return download


def _index(client: Any, bucket: str, prefix: str) -> dict[str, RemoteObject]:
    """Every object under ``prefix`` except "directory" placeholders (keys ending in ``/``)."""
    found: dict[str, RemoteObject] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith("/"):
                found[key] = RemoteObject(key, int(item["Size"]), str(item.get("ETag", "")).strip('"'))
    return found


def _unchanged(client: Any, bucket: str, local: Path, md5: str, remote: RemoteObject | None) -> bool:
    if remote is None or remote.size != local.stat().st_size:
        return False
    if "-" not in remote.etag:  # single-part upload: the ETag is the content's MD5
        return remote.etag == md5
    head = client.head_object(Bucket=bucket, Key=remote.key)
    return bool(head.get("Metadata", {}).get(MD5_META) == md5)


def _client(ctx: Context, credentials: object, client_parameters: object) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StepError(
            "the S3 steps need boto3, which is not installed", hint="pip install 'buildsys[s3]'"
        ) from None
    creds = _mapping("credentials", credentials)
    params = {**_mapping("credentials.aws_client_parameters", creds.get("aws_client_parameters")),
              **_mapping("client_parameters", client_parameters)}
    unknown = sorted(set(params) - set(_CLIENT_KEYS))
    if unknown:
        raise StepError(
            f"unknown client_parameters key {unknown[0]!r}",
            hint="allowed: " + ", ".join(_CLIENT_KEYS),
        )
    session_args = _session_args(ctx, creds)
    client_args = {k: v for k, v in params.items() if v is not None and k not in ("verify_cert_path", "config")}
    if params.get("verify_cert_path"):
        client_args["verify"] = params["verify_cert_path"]
    if params.get("config"):
        client_args["config"] = Config(**_mapping("client_parameters.config", params["config"]))
    endpoint = ctx.env.get("AWS_ENDPOINT_URL_S3") or ctx.env.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in client_args:
        client_args["endpoint_url"] = endpoint
    session = boto3.session.Session(**session_args)
    return session.client("s3", **client_args)


def _session_args(ctx: Context, creds: Mapping[str, Any]) -> dict[str, Any]:
    """boto3 session arguments from Prefect's AWS or MinIO credentials, else this step's env."""
    key_id = creds.get("aws_access_key_id") or creds.get("minio_root_user")
    secret = creds.get("aws_secret_access_key") or creds.get("minio_root_password")
    token = creds.get("aws_session_token")
    if not creds:
        key_id = ctx.env.get("AWS_ACCESS_KEY_ID")
        secret = ctx.env.get("AWS_SECRET_ACCESS_KEY")
        token = ctx.env.get("AWS_SESSION_TOKEN")
    region = creds.get("region_name") or ctx.env.get("AWS_REGION") or ctx.env.get("AWS_DEFAULT_REGION")
    for value in (secret, token):
        if value:
            ctx.secrets.add(str(value))
    args = {
        "aws_access_key_id": key_id,
        "aws_secret_access_key": secret,
        "aws_session_token": token,
        "region_name": region,
        "profile_name": creds.get("profile_name"),
    }
    return {k: str(v) for k, v in args.items() if v}


def _mapping(name: str, value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StepError(f"`{name}` must be a mapping, got {type(value).__name__}")
    return value


_REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"}


@contextmanager
def _s3_errors(ctx: Context, bucket: str) -> Iterator[None]:
    """Turn botocore's exceptions into one clear StepError (secrets masked)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise StepError(
            "no AWS credentials found",
            hint="set `credentials` (aws_access_key_id / aws_secret_access_key) or AWS_* variables",
        ) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        text = ctx.mask(str(exc))
        if code in ("NoSuchBucket", "404"):
            raise StepError(f"bucket {bucket!r} does not exist", hint=text) from None
        if code in _REFUSED:
            raise StepError(f"S3 refused access to bucket {bucket!r} ({code})",
                            hint="check credentials and the bucket policy") from None
        raise StepError(f"S3 request failed: {text}") from None
    except BotoCoreError as exc:
        raise StepError(f"S3 request failed: {ctx.mask(str(exc))}",
                        hint="check client_parameters.endpoint_url and the network") from None
