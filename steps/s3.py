"""``push_to_s3`` / ``pull_from_s3``: the project's files to and from an S3-compatible bucket.

Uploads skip objects whose size and MD5 already match (the ETag of a single-part upload, else the
``buildsys-md5`` metadata every upload carries); nothing is deleted remotely, as in Prefect.
``boto3`` is imported inside the functions (install ``buildsys[s3]``), so the module itself is
stdlib-only and the pull step runs in any image that has boto3.
"""

from __future__ import annotations

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


@dataclass
class S3Store:
    """An S3 bucket through a boto3 client (see :class:`ObjectStore`)."""

    client: Any
    bucket: str
    scheme: str = "s3"

    def index(self, prefix: str) -> dict[str, RemoteObject]:
        found: dict[str, RemoteObject] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key, etag = item["Key"], str(item.get("ETag", "")).strip('"')
                if not key.endswith("/"):
                    # A single-part upload's ETag is its MD5; a multipart one's is not ("…-N").
                    found[key] = RemoteObject(key, int(item["Size"]), None if "-" in etag else etag)
        return found

    def stored_md5(self, obj: RemoteObject) -> str | None:
        head = self.client.head_object(Bucket=self.bucket, Key=obj.key)
        value = head.get("Metadata", {}).get(MD5_META)
        return str(value) if value else None

    def upload(self, local: Path, key: str, md5: str) -> None:
        self.client.upload_file(str(local), self.bucket, key, ExtraArgs={"Metadata": {MD5_META: md5}})

    def download(self, key: str, dest: Path) -> None:
        self.client.download_file(self.bucket, key, str(dest))

    def errors(self, ctx: Context) -> AbstractContextManager[None]:
        return _s3_errors(ctx, self.bucket)


@step("push_to_s3", aliases=PUSH_ALIASES, version="1", outputs=("bucket", "folder"), example=PUSH_EXAMPLE)
def push_to_s3(
    ctx: Context,
    bucket: str,
    folder: str,
    credentials: Mapping[str, Any] | None = None,
    client_parameters: Mapping[str, Any] | None = None,
    ignore_file: str | None = DEFAULT_IGNORE_FILE,
) -> dict[str, str]:
    """Upload the working directory's files to s3://bucket/folder/, skipping unchanged objects."""
    return push(ctx, S3Store(_client(ctx, credentials, client_parameters), bucket), folder, ignore_file)


push_to_s3.files(pushed_files)


def _open(inputs: Mapping[str, Any], ctx: Context) -> S3Store:
    return S3Store(_client(ctx, inputs.get("credentials"), inputs.get("client_parameters")), str(inputs.get("bucket")))


_still_uploaded = still_uploaded(_open)
push_to_s3.check(_still_uploaded)
push_to_s3.shared(_still_uploaded)  # the bucket is where every runner finds it


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
    return pull(ctx, S3Store(_client(ctx, credentials, client_parameters), bucket), folder, pushed_by="push_to_s3")


# --- client ------------------------------------------------------------------------------------


def _client(ctx: Context, credentials: object, client_parameters: object) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StepError(
            "the S3 steps need boto3, which is not installed", hint="pip install 'buildsys[s3]'"
        ) from None
    creds = mapping_input("credentials", credentials)
    params = {**mapping_input("credentials.aws_client_parameters", creds.get("aws_client_parameters")),
              **mapping_input("client_parameters", client_parameters)}
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
        client_args["config"] = Config(**mapping_input("client_parameters.config", params["config"]))
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
