"""The one secret rule (buildsys/sensitive.py) and every output path that must use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.plan_view import show
from buildsys.sensitive import MASK, is_secret_name, mask_named, mask_url, mask_url_text
from buildsys.step import Context
from buildsys.templating import Scope, render

SECRET = ["DB_PWD", "AUTH_HEADER", "AWS_ACCESS_KEY", "db_password", "api_token", "API_KEY", "apiKey",
          "GITHUB_TOKEN", "client_secret", "Authorization", "PGPASSWORD", "private_key", "sshKey",
          "credentials", "DATABASE_DSN", "x-auth-token", "OAUTH_TOKEN", "passphrase"]
PLAIN = ["PWD", "OLDPWD", "AUTHOR", "GIT_AUTHOR_NAME", "PATH", "KEYRING_BACKEND", "monkey", "region",
         "image", "max_tokens", "tag", "bypass", "HOME", "key", "primary_key_column"]


@pytest.mark.parametrize("name", SECRET)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", PLAIN)
def test_plain_names(name: str) -> None:
    assert not is_secret_name(name)


def test_templating_plan_and_step_logs_agree(tmp_path: Path) -> None:
    env = {name: f"value-of-{name}" for name in ["DB_PWD", "AUTH_HEADER", "AWS_ACCESS_KEY", "REGION"]}
    scope = Scope(env=env)
    render({k: f"{{{{ ${k} }}}}" for k in env}, scope)
    assert scope.secrets == {env["DB_PWD"], env["AUTH_HEADER"], env["AWS_ACCESS_KEY"]}
    for name in ["DB_PWD", "AUTH_HEADER", "AWS_ACCESS_KEY"]:
        assert show("literal", f"job_variables.env.{name}") == "(sensitive value)"
    assert show("eu-west-1", "job_variables.env.REGION") == '"eu-west-1"'
    # an environment value a plan already named keeps its name under a secret-looking key
    assert show("(sensitive: $DB_PWD)", "job_variables.env.DB_PWD") == "(sensitive: $DB_PWD)"
    lines: list[str] = []
    ctx = Context(root=tmp_path, cwd=tmp_path, emit=lines.append, secrets=set(scope.secrets))
    ctx.log(f"using {env['DB_PWD']} at https://ci:{env['AUTH_HEADER']}@git.example/r.git")
    assert lines == [f"using {MASK} at https://ci:{MASK}@git.example/r.git"]


def test_urls_and_structures() -> None:
    assert mask_url("http://user:pass@127.0.0.1:4300/x") == f"http://user:{MASK}@127.0.0.1:4300/x"
    assert mask_url("https://TOKEN@h.example/r.git") == f"https://{MASK}@h.example/r.git"
    assert mask_url("https://h.example/r.git") == "https://h.example/r.git"
    assert mask_url_text("cannot reach postgresql://app:pw@db/x now") == f"cannot reach postgresql://app:{MASK}@db/x now"
    assert mask_named({"env": {"DB_PWD": "x", "LEVEL": "INFO"}, "credentials": {"user": "u", "token": "t"}}) == {
        "env": {"DB_PWD": MASK, "LEVEL": "INFO"}, "credentials": {"user": MASK, "token": MASK}}


PROJECT = """\
name: p
work_pools:
  - name: local
    type: process
    job_variables:
      env: {DB_PWD: pool-pwd-1, AUTH_HEADER: "Bearer pool-auth-2", AWS_ACCESS_KEY: AKIA-pool-3}
variables:
  db_password: var-secret-4
  api_token: var-token-5
  region: eu-west-1
deployments:
  - name: d
    entrypoint: flow.py:f
    work_pool: {name: local, job_variables: {env: {DB_PASSWORD: dep-literal-6}}}
"""
LITERALS = ["pool-pwd-1", "pool-auth-2", "AKIA-pool-3", "var-secret-4", "var-token-5", "dep-literal-6"]


def buildsys(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env=dict(os.environ))


def test_plan_apply_and_pool_preview_print_no_literal_secret(tmp_path: Path) -> None:
    (tmp_path / "prefect.yaml").write_text(PROJECT)
    (tmp_path / "flow.py").write_text("def f():\n    pass\n")
    outputs = []
    for args in (["plan"], ["apply", "--auto-approve"], ["pool", "preview", "d"]):
        done = buildsys(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    shown = "\n".join(outputs)
    assert [s for s in LITERALS if s in shown] == []
    assert "eu-west-1" in shown  # what is not secret still shows
    assert "DB_PWD: '****'" in outputs[2] and "region" in outputs[0]


def test_a_password_in_the_state_url_is_never_printed(tmp_path: Path) -> None:
    (tmp_path / "prefect.yaml").write_text(PROJECT)
    done = buildsys(tmp_path, "--state", "http://user:hunter2-pass@127.0.0.1:1/", "plan")
    assert done.returncode == 1
    assert "hunter2-pass" not in done.stdout + done.stderr
    assert f"http://user:{MASK}@127.0.0.1:1" in done.stderr


def test_pull_steps_mask_secrets_as_build_steps_do(isolated: Path) -> None:
    from buildsys.runtime import RuntimeFailure, run_pull_steps

    env = {"PATH": os.environ["PATH"], "DB_PASSWORD": "hunter2-db", "PLAIN": "visible"}
    lines: list[str] = []
    steps = [
        {"run_shell_script": {"script": "echo db={{ $DB_PASSWORD }} plain={{ $PLAIN }}"}},
        {"run_shell_script": {"script": "echo token=$API_TOKEN", "expand_env_vars": True,
                              "env": {"API_TOKEN": "literal-s3cret"}}},  # a literal under a secret name
    ]
    run_pull_steps(steps, root=isolated, env=env, variables={}, emit=lines.append)
    assert [line for line in lines if not line.startswith("Running pull step")] == [
        f"db={MASK} plain=visible", f"token={MASK}",
    ]
    with pytest.raises(RuntimeFailure) as err:
        run_pull_steps([{"run_shell_script": {"script": "no-such-command-{{ $DB_PASSWORD }}"}}],
                       root=isolated, env=env, variables={}, emit=lines.append)
    assert "hunter2-db" not in str(err.value) and MASK in str(err.value)


@pytest.mark.unit
def test_a_credentials_mapping_keeps_only_its_secrets_out_of_outputs() -> None:
    """An image pushed with registry `credentials` names its registry: the password is scrubbed
    from what the step prints and stores, the registry and user name are not (as Prefect's
    DockerRegistryCredentials keeps only the password secret); a plan still masks the whole mapping."""
    from buildsys.sensitive import secret_values

    inputs = {
        "image_name": "127.0.0.1:5000/flows",
        "credentials": {"registry_url": "127.0.0.1:5000", "username": "ci", "password": "s3cret-pw", "reauth": True},
        "access_token": "tok-123",
        "env": {"API_TOKEN": "tok-456", "REGION": "eu"},
    }
    assert secret_values(inputs) == {"s3cret-pw", "tok-123", "tok-456"}
    assert mask_named(inputs)["credentials"] == {"registry_url": MASK, "username": MASK, "password": MASK, "reauth": MASK}
