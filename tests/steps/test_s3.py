"""push_to_s3 / pull_from_s3 against a real S3-compatible server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from buildsys.steps.s3 import pull_from_s3, push_to_s3

from buildsys.errors import StepError
from buildsys.step import Context
from tests.services.s3 import S3Server


def make_ctx(cwd: Path) -> tuple[Context, list[str]]:
    lines: list[str] = []
    return Context(root=cwd, cwd=cwd, emit=lines.append, step_name="s3"), lines


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root, {
        "flows/etl.py": "def etl(): ...\n",
        "requirements.txt": "requests\n",
        ".prefectignore": "__pycache__/\n*.pyc\n.prefectignore\nsecret.env\n",
        "flows/__pycache__/etl.cpython-311.pyc": "bytecode",
        "secret.env": "TOKEN=x\n",
        ".buildsys/cache/entry.json": "{}",
    })
    return root


def test_push_uploads_the_project_minus_ignored_files(s3_server: S3Server, s3_bucket: str,
                                                      project: Path) -> None:
    ctx, lines = make_ctx(project)

    out = push_to_s3(ctx, bucket=s3_bucket, folder="my-project", credentials=s3_server.credentials,
                     client_parameters=s3_server.client_parameters)

    assert out == {"bucket": s3_bucket, "folder": "my-project"}
    assert s3_server.objects(s3_bucket) == {
        "my-project/flows/etl.py": b"def etl(): ...\n",
        "my-project/requirements.txt": b"requests\n",
    }
    assert lines == [
        f"uploaded flows/etl.py to s3://{s3_bucket}/my-project/flows/etl.py",
        f"uploaded requirements.txt to s3://{s3_bucket}/my-project/requirements.txt",
        f"s3://{s3_bucket}/my-project/: 2 uploaded, 0 unchanged",
    ]
    assert s3_server.secret_key in ctx.secrets


def test_push_skips_unchanged_objects(s3_server: S3Server, s3_bucket: str, project: Path) -> None:
    kwargs = {"bucket": s3_bucket, "folder": "p", "credentials": s3_server.credentials,
              "client_parameters": s3_server.client_parameters}
    push_to_s3(make_ctx(project)[0], **kwargs)
    (project / "requirements.txt").write_text("requests\nboto3\n")

    ctx, lines = make_ctx(project)
    push_to_s3(ctx, **kwargs)

    assert lines == [
        f"uploaded requirements.txt to s3://{s3_bucket}/p/requirements.txt",
        f"s3://{s3_bucket}/p/: 1 uploaded, 1 unchanged",
    ]
    assert s3_server.objects(s3_bucket)["p/requirements.txt"] == b"requests\nboto3\n"


def test_multipart_objects_are_compared_through_their_stored_md5(s3_server: S3Server, s3_bucket: str,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"\x01" * (9 * 1024 * 1024))  # above boto3's multipart threshold
    kwargs = {"bucket": s3_bucket, "folder": "big", "credentials": s3_server.credentials,
              "client_parameters": s3_server.client_parameters}
    push_to_s3(make_ctx(tmp_path)[0], **kwargs)
    etag = s3_server.client().head_object(Bucket=s3_bucket, Key="big/big.bin")["ETag"]
    assert "-" in etag

    ctx, lines = make_ctx(tmp_path)
    push_to_s3(ctx, **kwargs)
    assert lines == [f"s3://{s3_bucket}/big/: 0 uploaded, 1 unchanged"]

    ctx, lines = make_ctx(tmp_path)  # the file is already there: a pull downloads nothing
    pull_from_s3(ctx, **kwargs)
    assert lines == [f"s3://{s3_bucket}/big/: 0 downloaded, 1 already present"]


def test_files_and_check_hooks(s3_server: S3Server, s3_bucket: str, project: Path) -> None:
    ctx, _ = make_ctx(project)
    inputs = {"bucket": s3_bucket, "folder": "p", "credentials": s3_server.credentials,
              "client_parameters": s3_server.client_parameters}
    assert push_to_s3.files_hook is not None and push_to_s3.check_hook is not None

    assert push_to_s3.files_hook(inputs, ctx) == ["flows/etl.py", "requirements.txt", ".prefectignore"]
    out = push_to_s3(ctx, **inputs)
    assert push_to_s3.check_hook(out, inputs, ctx) is True
    s3_server.client().delete_object(Bucket=s3_bucket, Key="p/flows/etl.py")
    assert push_to_s3.check_hook(out, inputs, ctx) is False


def test_pull_downloads_the_folder_into_the_working_directory(s3_server: S3Server, s3_bucket: str,
                                                              project: Path, tmp_path: Path) -> None:
    push_to_s3(make_ctx(project)[0], bucket=s3_bucket, folder="app", credentials=s3_server.credentials,
               client_parameters=s3_server.client_parameters)
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="app/empty-dir/", Body=b"")
    client.put_object(Bucket=s3_bucket, Key="app2/other.txt", Body=b"not mine")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx, lines = make_ctx(run_dir)

    out = pull_from_s3(ctx, bucket=s3_bucket, folder="app", credentials=s3_server.credentials,
                       client_parameters=s3_server.client_parameters)

    assert out == {"bucket": s3_bucket, "folder": "app", "directory": str(run_dir)}
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()) == [
        "flows/etl.py", "requirements.txt",
    ]
    assert (run_dir / "flows" / "etl.py").read_text() == "def etl(): ...\n"
    assert lines == [f"s3://{s3_bucket}/app/: 2 downloaded, 0 already present"]

    (run_dir / "requirements.txt").write_text("edited locally\n")
    ctx, lines = make_ctx(run_dir)
    pull_from_s3(ctx, bucket=s3_bucket, folder="/app/", credentials=s3_server.credentials,
                 client_parameters=s3_server.client_parameters)
    assert lines == [f"s3://{s3_bucket}/app/: 1 downloaded, 1 already present"]
    assert (run_dir / "requirements.txt").read_text() == "requests\n"


def test_pull_of_an_empty_folder_fails_clearly(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StepError) as err:
        pull_from_s3(make_ctx(tmp_path)[0], bucket=s3_bucket, folder="nothing-here",
                     credentials=s3_server.credentials, client_parameters=s3_server.client_parameters)
    assert err.value.message == f"nothing to pull: s3://{s3_bucket}/nothing-here/ holds no objects"
    assert err.value.hint == "check bucket and folder (push_to_s3 writes to <folder>/<path>)"


def test_missing_bucket_fails_clearly(s3_server: S3Server, project: Path) -> None:
    with pytest.raises(StepError) as err:
        push_to_s3(make_ctx(project)[0], bucket="no-such-bucket-here", folder="p",
                   credentials={"minio_root_user": s3_server.access_key,
                                "minio_root_password": s3_server.secret_key},
                   client_parameters=s3_server.client_parameters)
    assert err.value.message == "bucket 'no-such-bucket-here' does not exist"
    assert s3_server.secret_key not in str(err.value.hint)


def test_unknown_client_parameter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StepError) as err:
        push_to_s3(make_ctx(tmp_path)[0], bucket="b", folder="f", client_parameters={"endpoint": "x"})
    assert err.value.message == "unknown client_parameters key 'endpoint'"
    assert err.value.hint == (
        "allowed: api_version, use_ssl, verify, verify_cert_path, endpoint_url, config, region_name"
    )


def test_unreachable_endpoint_fails_clearly(project: Path) -> None:
    with pytest.raises(StepError) as err:
        push_to_s3(make_ctx(project)[0], bucket="b", folder="f",
                   credentials={"aws_access_key_id": "k", "aws_secret_access_key": "very-secret-value"},
                   client_parameters={"endpoint_url": "http://127.0.0.1:9",
                                      "config": {"retries": {"max_attempts": 1}, "connect_timeout": 2}})
    assert err.value.message == (
        'S3 request failed: Could not connect to the endpoint URL: "http://127.0.0.1:9/b?list-type=2'
        '&prefix=f%2F&encoding-type=url"'
    )
    assert err.value.hint == "check client_parameters.endpoint_url and the network"


def test_push_and_pull_through_the_cli(s3_server: S3Server, s3_bucket: str, project: Path, tmp_path: Path) -> None:
    (project / "prefect.yaml").write_text(
        "name: s3-demo\n"
        "push:\n"
        "  - prefect_aws.deployments.steps.push_to_s3:\n"
        "      id: push_code\n"
        f"      bucket: {s3_bucket}\n"
        "      folder: s3-demo\n"
        "      credentials:\n"
        "        aws_access_key_id: '{{ $S3_KEY }}'\n"
        "        aws_secret_access_key: '{{ $S3_SECRET }}'\n"
        f"      client_parameters: {{endpoint_url: '{s3_server.endpoint_url}'}}\n"
        "pull:\n"
        "  - prefect_aws.deployments.steps.pull_from_s3:\n"
        f"      bucket: {s3_bucket}\n"
        "      folder: s3-demo\n"
        "      credentials:\n"
        "        aws_access_key_id: '{{ $S3_KEY }}'\n"
        "        aws_secret_access_key: '{{ $S3_SECRET }}'\n"
        f"      client_parameters: {{endpoint_url: '{s3_server.endpoint_url}'}}\n"
        "deployments:\n"
        "  - name: d\n"
        "    entrypoint: flows/etl.py:etl\n"
    )
    env = {**os.environ, "S3_KEY": s3_server.access_key, "S3_SECRET": s3_server.secret_key}

    def bs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                              env=env, timeout=120, check=False)

    pushed = bs("push", cwd=project)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert sorted(s3_server.objects(s3_bucket)) == [
        "s3-demo/flows/etl.py", "s3-demo/prefect.yaml", "s3-demo/requirements.txt",
    ]
    again = bs("push", cwd=project)
    assert (again.stdout + again.stderr).strip().splitlines()[-1] == "build ok: 0 ran, 1 cached, 0 failed, 0 not run"

    # a fresh machine: only the project file, as a worker would have it
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prefect.yaml").write_text((project / "prefect.yaml").read_text())
    pulled = bs("pull", "-d", "d", cwd=run_dir)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (run_dir / "flows" / "etl.py").read_text() == "def etl(): ...\n"
    assert s3_server.secret_key not in pulled.stdout + pulled.stderr + again.stdout + again.stderr


def test_refused_credentials_fail_clearly_without_showing_the_secret(s3_strict_endpoint: str,
                                                                     project: Path) -> None:
    ctx, lines = make_ctx(project)
    with pytest.raises(StepError) as err:
        push_to_s3(ctx, bucket="any", folder="f",
                   credentials={"aws_access_key_id": "AKIAUNKNOWN000000000", "aws_secret_access_key": "s3cr3t-value"},
                   client_parameters={"endpoint_url": s3_strict_endpoint})
    assert err.value.message == "S3 refused access to bucket 'any' (InvalidAccessKeyId)"
    assert err.value.hint == "check credentials and the bucket policy"
    assert lines == []
    assert "s3cr3t-value" in ctx.secrets
