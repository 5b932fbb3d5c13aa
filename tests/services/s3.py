"""A real S3-compatible server on 127.0.0.1 (moto's threaded server), one per test session.

- ``s3_server``: an :class:`S3Server` (endpoint, credentials, a boto3 client for assertions).
- ``s3_bucket``: a fresh, empty bucket for one test; emptied and deleted afterwards.
- ``s3_strict_endpoint``: the URL of a second moto server (own process) that checks credentials
  (``INITIAL_NO_AUTH_ACTION_COUNT=0``), so unknown access keys are refused as by AWS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.services.net import free_port, port_open
from tests.services.require import unavailable
from tests.services.waiting import wait_for

__all__ = ["S3Server", "s3_bucket", "s3_server", "s3_strict_endpoint"]


@dataclass(frozen=True)
class S3Server:
    """Where the server listens and the credentials to use with it."""

    endpoint_url: str
    access_key: str = "buildsys-test-key"
    secret_key: str = "buildsys-test-secret-0123456789"
    region: str = "us-east-1"

    @property
    def credentials(self) -> dict[str, str]:
        """Prefect-shaped ``credentials`` input for the S3 steps."""
        return {
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    @property
    def client_parameters(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket``: key -> content."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, for the whole session."""
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"the S3 test server needs boto3 and moto[server] ({exc})")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 15, "the moto S3 server to listen")
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A new empty bucket; deleted with its objects after the test."""
    name = f"buildsys-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for key in s3_server.objects(name):
            client.delete_object(Bucket=name, Key=key)
        client.delete_bucket(Bucket=name)


@pytest.fixture
def s3_strict_endpoint() -> Iterator[str]:
    """A moto S3 server in its own process that refuses unknown credentials."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        unavailable(f"the S3 test server needs moto[server] ({exc})")
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: proc.poll() is not None or port_open("127.0.0.1", port), 30,
                 "the strict moto server to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with status {proc.returncode}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
