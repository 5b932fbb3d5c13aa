"""The shared cache in an S3-compatible bucket: one object per entry, s3://BUCKET/PREFIX/KEY.json.

Credentials and endpoint come from the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION); reading needs s3:GetObject, writing s3:PutObject.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from buildsys.sharedcache.backend import MAX_ENTRY_BYTES, SharedCacheError, Unreachable, WriteRefused

DEFAULT_PREFIX = "buildsys-cache"
_MISSING = ("NoSuchKey", "404", "NotFound")
_DENIED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch")


class S3Backend:
    def __init__(self, url: str, env: Mapping[str, str]) -> None:
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise SharedCacheError(f"no bucket in the shared cache URL {url!r}", hint="s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/") or DEFAULT_PREFIX
        self.where = f"s3://{bucket}/{self.prefix}"
        self.client = _client(env)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}.json"

    def get(self, key: str) -> bytes | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
            if int(reply.get("ContentLength") or 0) > MAX_ENTRY_BYTES:
                raise Unreachable(f"the object for {key} is larger than {MAX_ENTRY_BYTES} bytes")
            data: bytes = reply["Body"].read(MAX_ENTRY_BYTES + 1)
            return data
        except Exception as exc:
            if _code(exc) in _MISSING:
                return None
            raise _unreachable(exc) from None

    def has(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
            return True
        except Exception as exc:
            if _code(exc) in _MISSING:
                return False
            raise _unreachable(exc) from None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data, ContentType="application/json")
        except Exception as exc:
            if _code(exc) in _DENIED:
                raise WriteRefused(f"{self.where} refused the write ({_code(exc)})") from None
            raise _unreachable(exc) from None


def _client(env: Mapping[str, str]) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise SharedCacheError(
            "an s3:// shared cache needs boto3, which is not installed", hint="pip install 'buildsys[s3]'"
        ) from None
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2})
    return session.client("s3", endpoint_url=endpoint, config=config)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _unreachable(exc: Exception) -> Unreachable:
    from buildsys.sensitive import mask_url_text

    code = _code(exc)
    return Unreachable(mask_url_text(f"{code + ': ' if code else ''}{type(exc).__name__}: {exc}")[:300])
