"""push_to_gcs / pull_from_gcs with the real google-cloud-storage client against a real HTTP server:
the ``gcp-storage-emulator`` package (an implementation of the GCS JSON API), on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from buildsys.steps.gcs import pull_from_gcs, push_to_gcs

from buildsys.errors import StepError
from buildsys.step import Context
from tests.services.net import free_port, port_open
from tests.services.require import unavailable
from tests.services.waiting import wait_for


@dataclass(frozen=True)
class Emulator:
    endpoint: str

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def objects(self, bucket: str) -> dict[str, bytes]:
        client = self.client()
        return {b.name: b.download_as_bytes() for b in client.list_blobs(bucket)}


@pytest.fixture(scope="module")
def gcs() -> Iterator[Emulator]:
    try:
        import google.cloud.storage  # noqa: F401
        from gcp_storage_emulator.server import create_server
    except ImportError as exc:
        unavailable(f"the GCS tests need google-cloud-storage and gcp-storage-emulator ({exc})")
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 15, "the GCS emulator to listen")
        yield Emulator(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def bucket(gcs: Emulator) -> str:
    name = f"buildsys-{uuid.uuid4().hex[:12]}"
    gcs.client().create_bucket(name)
    return name


def make_ctx(cwd: Path, gcs: Emulator) -> tuple[Context, list[str]]:
    lines: list[str] = []
    ctx = Context(root=cwd, cwd=cwd, emit=lines.append, step_name="gcs")
    ctx.env["STORAGE_EMULATOR_HOST"] = gcs.endpoint
    return ctx, lines


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for rel, text in {
        "flows/etl.py": "def etl(): ...\n",
        "requirements.txt": "requests\n",
        ".prefectignore": ".prefectignore\n*.log\n",
        "debug.log": "noise\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_push_uploads_and_then_skips_unchanged(gcs: Emulator, bucket: str, project: Path) -> None:
    ctx, lines = make_ctx(project, gcs)
    assert push_to_gcs(ctx, bucket=bucket, folder="app") == {"bucket": bucket, "folder": "app"}
    assert gcs.objects(bucket) == {"app/flows/etl.py": b"def etl(): ...\n", "app/requirements.txt": b"requests\n"}
    assert lines == [
        f"uploaded flows/etl.py to gs://{bucket}/app/flows/etl.py",
        f"uploaded requirements.txt to gs://{bucket}/app/requirements.txt",
        f"gs://{bucket}/app/: 2 uploaded, 0 unchanged",
    ]

    (project / "flows" / "etl.py").write_text("def etl(): return 2\n")
    ctx, lines = make_ctx(project, gcs)
    push_to_gcs(ctx, bucket=bucket, folder="app")
    assert lines == [
        f"uploaded flows/etl.py to gs://{bucket}/app/flows/etl.py",
        f"gs://{bucket}/app/: 1 uploaded, 1 unchanged",
    ]


def test_hooks(gcs: Emulator, bucket: str, project: Path) -> None:
    ctx, _ = make_ctx(project, gcs)
    inputs = {"bucket": bucket, "folder": "app"}
    assert push_to_gcs.files_hook is not None and push_to_gcs.check_hook is not None
    assert push_to_gcs.files_hook(inputs, ctx) == ["flows/etl.py", "requirements.txt", ".prefectignore"]
    out = push_to_gcs(ctx, **inputs)
    assert push_to_gcs.check_hook(out, inputs, ctx) is True
    gcs.client().bucket(bucket).blob("app/requirements.txt").delete()
    assert push_to_gcs.check_hook(out, inputs, ctx) is False


def test_pull_downloads_only_the_folder(gcs: Emulator, bucket: str, project: Path, tmp_path: Path) -> None:
    push_to_gcs(make_ctx(project, gcs)[0], bucket=bucket, folder="app")
    gcs.client().bucket(bucket).blob("app2/not-mine.txt").upload_from_string(b"other")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx, lines = make_ctx(run_dir, gcs)

    out = pull_from_gcs(ctx, bucket=bucket, folder="app")

    assert out == {"bucket": bucket, "folder": "app", "directory": str(run_dir)}
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()) == [
        "flows/etl.py", "requirements.txt",
    ]
    assert lines == [f"gs://{bucket}/app/: 2 downloaded, 0 already present"]
    ctx, lines = make_ctx(run_dir, gcs)
    pull_from_gcs(ctx, bucket=bucket, folder="app")
    assert lines == [f"gs://{bucket}/app/: 0 downloaded, 2 already present"]


def test_missing_bucket_and_empty_folder_fail_clearly(gcs: Emulator, bucket: str, project: Path) -> None:
    with pytest.raises(StepError) as err:
        push_to_gcs(make_ctx(project, gcs)[0], bucket="no-such-bucket", folder="app")
    assert err.value.message == "bucket 'no-such-bucket' does not exist"
    with pytest.raises(StepError) as err:
        pull_from_gcs(make_ctx(project, gcs)[0], bucket=bucket, folder="empty")
    assert err.value.message == f"nothing to pull: gs://{bucket}/empty/ holds no objects"


def test_bad_service_account_is_refused_without_showing_the_key(gcs: Emulator, project: Path) -> None:
    key = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"
    info = {"type": "service_account", "client_email": "x@p.iam.gserviceaccount.com", "private_key": key,
            "token_uri": "https://oauth2.googleapis.com/token"}
    with pytest.raises(StepError) as err:
        push_to_gcs(make_ctx(project, gcs)[0], bucket="b", folder="f", credentials={"service_account_info": info})
    assert err.value.message == (
        "unusable GCP service account credentials: Unable to load PEM file. See "
        "https://cryptography.io/en/latest/faq/#why-can-t-i-import-my-pem-file for more details. "
        "InvalidData(Invalid symbol 45, offset 3.)"
    )


def test_push_through_the_cli_is_cached_the_second_time(gcs: Emulator, bucket: str, project: Path) -> None:
    (project / "prefect.yaml").write_text(
        "name: gcs-demo\n"
        "push:\n"
        "  - prefect_gcp.deployments.steps.push_to_gcs:\n"
        "      id: push_code\n"
        f"      bucket: {bucket}\n"
        "      folder: gcs-demo\n"
        "deployments:\n"
        "  - name: d\n"
        "    entrypoint: flows/etl.py:etl\n"
    )

    def push() -> str:
        done = subprocess.run([sys.executable, "-m", "buildsys", "push"], cwd=project, capture_output=True,
                              text=True, timeout=120, check=False,
                              env={**os.environ, "STORAGE_EMULATOR_HOST": gcs.endpoint})
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[-1] if lines else ""

    assert push() == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    assert sorted(gcs.objects(bucket)) == ["gcs-demo/flows/etl.py", "gcs-demo/prefect.yaml", "gcs-demo/requirements.txt"]
    assert push() == "build ok: 0 ran, 1 cached, 0 failed, 0 not run"
