"""git_clone against real repositories: file://, git:// (git daemon), http:// (git http-backend with
token auth) and ssh (git's ssh transport through a local stand-in for the ssh client)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from buildsys.steps.git import git_clone

from buildsys.errors import StepError
from buildsys.step import Context
from tests.services.git import GitDaemon, GitHttpServer, GitRedirect, GitRepos


def make_ctx(cwd: Path, **env: str) -> tuple[Context, list[str]]:
    lines: list[str] = []
    ctx = Context(root=cwd, cwd=cwd, emit=lines.append, step_name="git_clone")
    ctx.env.update(env)
    return ctx, lines


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def files_containing(root: Path, needles: list[str]) -> list[str]:
    """Every file under ``root`` (``.git`` included) whose bytes contain one of ``needles``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(n.encode() in data for n in needles):
                found.append(str(path.relative_to(root)))
    return found


def token_forms(token: str) -> list[str]:
    return [token, base64.b64encode(f"{token}:".encode()).decode()]


def test_file_url_clone_names_the_directory_after_the_repository(git_repos: GitRepos, tmp_path: Path) -> None:
    sha = git_repos.create("flows", {"flow.py": "print('v1')\n"})
    ctx, _ = make_ctx(tmp_path)

    out = git_clone(ctx, repository=f"file://{git_repos.bare('flows')}")

    assert out == {"directory": "flows"}
    assert (tmp_path / "flows" / "flow.py").read_text() == "print('v1')\n"
    assert git("rev-parse", "HEAD", cwd=tmp_path / "flows") == sha
    assert git_clone.check_hook is not None
    assert git_clone.check_hook(out, {}, ctx) is True
    subprocess.run(["rm", "-rf", str(tmp_path / "flows")], check=True)
    assert git_clone.check_hook(out, {}, ctx) is False


def test_branch_and_clone_directory_name_choose_the_destination(git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("flows", {"a.txt": "main\n"})
    git_repos.commit("flows", {"a.txt": "feature\n"}, branch="feature/x")
    url = f"file://{git_repos.bare('flows')}"
    ctx, _ = make_ctx(tmp_path)

    assert git_clone(ctx, repository=url, branch="feature/x") == {"directory": "flows-feature-x"}
    assert (tmp_path / "flows-feature-x" / "a.txt").read_text() == "feature\n"
    assert git_clone(ctx, repository=url, clone_directory_name="src/code") == {"directory": "src/code"}
    assert (tmp_path / "src" / "code" / "a.txt").read_text() == "main\n"


def test_git_daemon_clone_of_a_pinned_commit(git_daemon: GitDaemon, git_repos: GitRepos, tmp_path: Path) -> None:
    first = git_repos.create("flows", {"v.txt": "1\n"})
    git_repos.commit("flows", {"v.txt": "2\n"})
    ctx, _ = make_ctx(tmp_path)

    out = git_clone(ctx, repository=git_daemon.url("flows"), commit_sha=first)

    assert out == {"directory": "flows"}
    assert (tmp_path / "flows" / "v.txt").read_text() == "1\n"
    assert git("rev-parse", "HEAD", cwd=tmp_path / "flows") == first


def test_existing_clone_is_updated_when_the_branch_moves(git_daemon: GitDaemon, git_repos: GitRepos,
                                                         tmp_path: Path) -> None:
    git_repos.create("flows", {"v.txt": "1\n"})
    ctx, _ = make_ctx(tmp_path)
    url = git_daemon.url("flows")
    git_clone(ctx, repository=url, branch="main")
    second = git_repos.commit("flows", {"v.txt": "2\n", "new.txt": "new\n"})

    assert git_clone(ctx, repository=url, branch="main") == {"directory": "flows-main"}

    assert (tmp_path / "flows-main" / "v.txt").read_text() == "2\n"
    assert (tmp_path / "flows-main" / "new.txt").read_text() == "new\n"
    assert git("rev-parse", "HEAD", cwd=tmp_path / "flows-main") == second


def test_existing_clone_moves_to_another_pinned_commit(git_repos: GitRepos, tmp_path: Path) -> None:
    first = git_repos.create("flows", {"v.txt": "1\n"})
    second = git_repos.commit("flows", {"v.txt": "2\n"})
    url = f"file://{git_repos.bare('flows')}"
    ctx, lines = make_ctx(tmp_path)
    git_clone(ctx, repository=url, commit_sha=second)
    git_clone(ctx, repository=url, commit_sha=first)
    assert (tmp_path / "flows" / "v.txt").read_text() == "1\n"
    lines.clear()
    git_clone(ctx, repository=url, commit_sha=first[:10])
    assert lines == [f"flows is already at {first[:10]}"]


def test_existing_directory_with_another_origin_is_refused(git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("flows", {"a": "1"})
    git_repos.create("other", {"b": "2"})
    (tmp_path / "checkout").mkdir()
    ctx, _ = make_ctx(tmp_path)
    git_clone(ctx, repository=f"file://{git_repos.bare('other')}", clone_directory_name="checkout/flows")

    with pytest.raises(StepError) as err:
        git_clone(ctx, repository=f"file://{git_repos.bare('flows')}", clone_directory_name="checkout/flows")

    assert err.value.message == (
        f"checkout/flows already exists and is a clone of file://{git_repos.bare('other')}, "
        f"not file://{git_repos.bare('flows')}"
    )
    assert err.value.hint == "set clone_directory_name to clone elsewhere, or delete the directory"


def test_http_clone_with_access_token_leaves_no_trace_of_it(git_http: GitHttpServer, git_repos: GitRepos,
                                                            tmp_path: Path) -> None:
    git_repos.create("private", {"flow.py": "x = 1\n"})
    ctx, lines = make_ctx(tmp_path)
    url = git_http.url("private")

    out = git_clone(ctx, repository=url, access_token=git_http.token)
    fingerprint = git_clone.fingerprint_hook
    assert fingerprint is not None
    remote = fingerprint({"repository": url, "access_token": git_http.token}, ctx)

    assert out == {"directory": "private"}
    assert (tmp_path / "private" / "flow.py").read_text() == "x = 1\n"
    assert remote == f"{git_repos.head('private')}\tHEAD"
    # the server saw the token as HTTP Basic credentials on every request
    assert git_http.requests and all(r.status == "200" for r in git_http.requests)
    assert {r.authorization for r in git_http.requests} == {f"Basic {token_forms(git_http.token)[1]}"}
    # ... and it is nowhere on disk, in the logs or in the clone's config
    assert files_containing(tmp_path, token_forms(git_http.token)) == []
    assert not any(git_http.token in line or token_forms(git_http.token)[1] in line for line in lines)
    assert git("config", "--get", "remote.origin.url", cwd=tmp_path / "private") == url
    assert "extraheader" not in (tmp_path / "private" / ".git" / "config").read_text().lower()


def test_https_clone_with_access_token(git_https: GitHttpServer, git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("private", {"flow.py": "x = 2\n"})
    ctx, lines = make_ctx(tmp_path, GIT_SSL_CAINFO=str(git_https.ca_file))

    out = git_clone(ctx, repository=git_https.url("private"), access_token=git_https.token, branch="main")

    assert out == {"directory": "private-main"}
    assert (tmp_path / "private-main" / "flow.py").read_text() == "x = 2\n"
    assert {r.authorization for r in git_https.requests} == {f"Basic {token_forms(git_https.token)[1]}"}
    assert files_containing(tmp_path, token_forms(git_https.token)) == []
    assert not any(git_https.token in line for line in lines)


def test_http_clone_with_credentials_mapping_and_token_in_url(git_http: GitHttpServer, git_repos: GitRepos,
                                                              tmp_path: Path) -> None:
    git_repos.create("private", {"a.txt": "a\n"})
    ctx, lines = make_ctx(tmp_path)
    url = git_http.url("private")

    git_clone(ctx, repository=url, credentials={"username": "robot", "password": git_http.token},
              clone_directory_name="by-credentials")
    in_url = url.replace("http://", f"http://robot:{git_http.token}@")
    git_clone(ctx, repository=in_url, clone_directory_name="by-url")

    expected = "Basic " + base64.b64encode(f"robot:{git_http.token}".encode()).decode()
    assert {r.authorization for r in git_http.requests} == {expected}
    assert git("config", "--get", "remote.origin.url", cwd=tmp_path / "by-url") == url
    assert (tmp_path / "by-url" / "a.txt").read_text() == "a\n"
    assert files_containing(tmp_path, [git_http.token, expected[len("Basic "):]]) == []
    assert not any(git_http.token in line for line in lines)


def test_a_flaky_server_is_retried(git_http: GitHttpServer, git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("private", {"a.txt": "a\n"})
    git_http.fail_next = 1
    ctx, lines = make_ctx(tmp_path)

    assert git_clone(ctx, repository=git_http.url("private"), access_token=git_http.token) == {
        "directory": "private",
    }

    assert [r.status for r in git_http.requests][:2] == ["503", "200"]
    assert (
        "attempt 1 of 3 failed (fatal: unable to access '" + git_http.url("private") + "/': "
        "The requested URL returned error: 503); retrying in 0.5 s"
    ) in lines


def test_a_server_that_keeps_failing_gives_up_after_three_attempts(git_http: GitHttpServer, git_repos: GitRepos,
                                                                   tmp_path: Path) -> None:
    git_repos.create("private", {"a.txt": "a\n"})
    git_http.fail_next = 10
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(StepError) as err:
        git_clone(ctx, repository=git_http.url("private"), access_token=git_http.token)
    assert err.value.message.splitlines()[-1] == (
        f"fatal: unable to access '{git_http.url('private')}/': The requested URL returned error: 503"
    )
    assert [r.status for r in git_http.requests] == ["503"] * 3


def test_refused_token_fails_clearly_without_showing_it(git_http: GitHttpServer, git_repos: GitRepos,
                                                        tmp_path: Path) -> None:
    git_repos.create("private", {"a.txt": "a\n"})
    ctx, lines = make_ctx(tmp_path)
    url = git_http.url("private")
    wrong = "wrong-token-123456"

    with pytest.raises(StepError) as err:
        git_clone(ctx, repository=url, access_token=wrong)

    assert err.value.message == (
        f"git_clone: could not clone {url}\n"
        "Cloning into '" + str(tmp_path / "private") + "'...\n"
        f"fatal: could not read Username for 'http://127.0.0.1:{git_http.port}': terminal prompts disabled"
    )
    assert err.value.hint == (
        "the server refused the token: check access_token / credentials and that the token may "
        "read this repository"
    )
    assert all(wrong not in line for line in lines)
    assert files_containing(tmp_path, token_forms(wrong)) == []
    assert [r.status for r in git_http.requests] == ["401"]


def test_missing_token_is_refused_by_the_server(git_http: GitHttpServer, git_repos: GitRepos,
                                                tmp_path: Path) -> None:
    git_repos.create("private", {"a.txt": "a\n"})
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(StepError) as err:
        git_clone(ctx, repository=git_http.url("private"))
    assert err.value.message.splitlines()[-1] == (
        f"fatal: could not read Username for 'http://127.0.0.1:{git_http.port}': terminal prompts disabled"
    )
    assert err.value.hint == "the repository needs credentials: set access_token or credentials"


def test_submodules_on_the_same_host_get_the_token(git_http: GitHttpServer, git_repos: GitRepos,
                                                   tmp_path: Path) -> None:
    git_repos.create("lib", {"lib.py": "LIB = 1\n"})
    git_repos.create("app", {"app.py": "APP = 1\n"})
    git_repos.add_submodule("app", "vendor/lib", "lib", git_http.url("lib"))
    ctx, lines = make_ctx(tmp_path)

    git_clone(ctx, repository=git_http.url("app"), access_token=git_http.token, include_submodules=True)

    assert (tmp_path / "app" / "vendor" / "lib" / "lib.py").read_text() == "LIB = 1\n"
    assert {r.path.split("/")[1] for r in git_http.requests} == {"app.git", "lib.git"}
    assert files_containing(tmp_path, token_forms(git_http.token)) == []
    assert not any(git_http.token in line for line in lines)


def test_sparse_checkout_of_directories(git_daemon: GitDaemon, git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("mono", {"a/x.txt": "a\n", "b/y.txt": "b\n", "top.txt": "t\n"})
    ctx, _ = make_ctx(tmp_path)
    git_clone(ctx, repository=git_daemon.url("mono"), directories=["a"])
    present = sorted(str(p.relative_to(tmp_path / "mono")) for p in (tmp_path / "mono").rglob("*.txt"))
    assert present == ["a/x.txt", "top.txt"]


def test_ssh_url_goes_through_the_ssh_transport(git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("flows", {"f.txt": "ssh\n"})
    fake_ssh = tmp_path / "bin" / "fake-ssh"
    fake_ssh.parent.mkdir()
    calls = tmp_path / "ssh-calls.txt"
    # Stands in for ssh: records the host and runs the remote command locally.
    fake_ssh.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nshift\nexec sh -c "$*"\n')
    fake_ssh.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    ctx, lines = make_ctx(work, GIT_SSH_COMMAND=str(fake_ssh), GIT_SSH_VARIANT="simple")

    out = git_clone(ctx, repository=f"git@build-host:{git_repos.bare('flows')}", access_token="unused-token")

    assert out == {"directory": "flows"}
    assert (work / "flows" / "f.txt").read_text() == "ssh\n"
    assert calls.read_text() == "git@build-host\n"
    assert lines[0] == "note: the access token is not used for ssh URLs (git uses the machine's own setup)"


def test_fingerprint_follows_the_branch_and_pins_commits(git_daemon: GitDaemon, git_repos: GitRepos,
                                                         tmp_path: Path) -> None:
    first = git_repos.create("flows", {"v": "1"})
    ctx, _ = make_ctx(tmp_path)
    hook = git_clone.fingerprint_hook
    assert hook is not None
    inputs = {"repository": git_daemon.url("flows"), "branch": "main"}

    before = hook(inputs, ctx)
    second = git_repos.commit("flows", {"v": "2"})
    after = hook(inputs, ctx)
    git_repos.commit("flows", {"v": "3"}, branch="feature/main")  # not the same branch

    assert before == f"{first}\trefs/heads/main"
    assert after == f"{second}\trefs/heads/main"
    assert hook(inputs, ctx) == after
    assert hook({**inputs, "branch": None, "commit_sha": first}, ctx) == f"commit:{first}"
    with pytest.raises(StepError) as err:
        hook({**inputs, "branch": "nope"}, ctx)
    assert err.value.message == f"branch 'nope' not found in {git_daemon.url('flows')}"


def test_concurrent_clones_into_one_destination_are_serialised(git_repos: GitRepos, tmp_path: Path) -> None:
    git_repos.create("flows", {"v": "1"})
    url = f"file://{git_repos.bare('flows')}"
    results: list[object] = []

    def clone() -> None:
        ctx, _ = make_ctx(tmp_path)
        try:
            results.append(git_clone(ctx, repository=url))
        except StepError as exc:  # pragma: no cover - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=clone) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [{"directory": "flows"}] * 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["flows"]  # no flows.lock


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"branch": "main", "commit_sha": "abcd"}, "give either `branch` or `commit_sha` to git_clone, not both"),
        ({"commit_sha": "xyz"}, "invalid commit_sha 'xyz': expected 4 to 64 hexadecimal characters"),
        ({"branch": "-x"}, "invalid branch name '-x'"),
        ({"access_token": "t", "credentials": {"token": "t"}},
         "give either `access_token` or `credentials` to git_clone, not both"),
        ({"credentials": {"username": "u"}}, "`credentials` has a username but no password or token"),
        ({"clone_directory_name": "../out"}, "clone_directory_name '../out' must stay inside the working directory"),
    ],
)
def test_bad_inputs_are_refused_before_git_runs(inputs: dict[str, object], message: str, tmp_path: Path) -> None:
    ctx, lines = make_ctx(tmp_path)
    with pytest.raises(StepError) as err:
        git_clone(ctx, repository="https://git.example.invalid/org/repo.git", **inputs)
    assert err.value.message == message
    assert lines == []
    assert list(tmp_path.iterdir()) == []


# --- through the engine: `buildsys build` ---------------------------------------------------------


def bs(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False)


def summary(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[-1] if lines else ""


def clone_project(root: Path, step: str) -> Path:
    (root / "prefect.yaml").write_text(
        f"name: clone-demo\nbuild:\n{step}deployments:\n  - name: d\n    entrypoint: flow.py:f\n"
    )
    (root / "flow.py").write_text("def f():\n    pass\n")
    return root


def test_build_reruns_the_clone_only_when_the_branch_moves(git_daemon: GitDaemon, git_repos: GitRepos,
                                                           isolated: Path) -> None:
    git_repos.create("flows", {"v.txt": "1\n"})
    project = clone_project(isolated, (
        "  - prefect.deployments.steps.git_clone:\n"
        "      id: clone\n"
        f"      repository: {git_daemon.url('flows')}\n"
        "      branch: main\n"
    ))

    assert summary(bs("build", cwd=project)) == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    assert summary(bs("build", cwd=project)) == "build ok: 0 ran, 1 cached, 0 failed, 0 not run"
    git_repos.commit("flows", {"v.txt": "2\n"})
    assert summary(bs("build", cwd=project)) == "build ok: 1 ran, 0 cached, 0 failed, 0 not run"
    assert (project / "flows-main" / "v.txt").read_text() == "2\n"


def test_token_from_the_environment_leaves_no_trace_in_cache_or_output(
    git_http: GitHttpServer, git_repos: GitRepos, isolated: Path
) -> None:
    git_repos.create("private", {"flow.py": "x = 1\n"})
    project = clone_project(isolated, (
        "  - git_clone:\n"
        "      id: clone\n"
        f"      repository: {git_http.url('private')}\n"
        '      access_token: "{{ $GIT_TOKEN }}"\n'
    ))

    first = bs("-v", "build", "--explain", cwd=project, GIT_TOKEN=git_http.token)
    second = bs("-v", "--json", "build", "--explain", cwd=project, GIT_TOKEN=git_http.token)

    assert summary(first) == "build ok: 1 ran, 0 cached, 0 failed, 0 not run", first.stderr
    assert (project / "private" / "flow.py").read_text() == "x = 1\n"
    assert (project / ".buildsys").is_dir()
    assert files_containing(project, token_forms(git_http.token)) == []
    for done in (first, second):
        assert not any(t in done.stdout + done.stderr for t in token_forms(git_http.token))


def test_pull_section_clones_as_a_worker_would(git_http: GitHttpServer, git_repos: GitRepos,
                                               isolated: Path) -> None:
    git_repos.create("private", {"flows/etl.py": "def etl():\n    return 'etl'\n"})
    (isolated / "prefect.yaml").write_text(
        "name: pull-demo\n"
        "pull:\n"
        "  - prefect.deployments.steps.git_clone:\n"
        "      id: clone\n"
        f"      repository: {git_http.url('private')}\n"
        "      branch: main\n"
        '      access_token: "{{ $GIT_TOKEN }}"\n'
        "deployments:\n"
        "  - name: d\n"
        "    entrypoint: flows/etl.py:etl\n"
    )

    done = bs("pull", "-d", "d", cwd=isolated, GIT_TOKEN=git_http.token)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "pull steps of d done; directory: private-main"
    assert (isolated / "private-main" / "flows" / "etl.py").is_file()
    assert not any(t in done.stdout + done.stderr for t in token_forms(git_http.token))
    assert files_containing(isolated, token_forms(git_http.token)) == []


def test_runtime_steps_import_only_the_standard_library() -> None:
    """git_clone and the storage pull steps run inside flow-run images: importing them must not need
    any third-party package (boto3 / google-cloud-storage are imported only when a step runs)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import buildsys.steps.git, buildsys.steps.s3, buildsys.steps.gcs\n"
        "roots = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(r for r in roots if r not in sys.stdlib_module_names and not r.startswith('_')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "['buildsys']\n"


def test_credentials_never_follow_a_redirect_to_another_origin(
    git_redirect: GitRedirect, git_repos: GitRepos, tmp_path: Path
) -> None:
    git_repos.create("private", {"flow.py": "x = 1\n"})
    ctx, lines = make_ctx(tmp_path)
    token = "tok-redirected-secret"

    raised: StepError | None = None
    try:
        git_clone(ctx, repository=git_redirect.url("private"), access_token=token)
    except StepError as exc:
        raised = exc

    # the other origin (an open server at `localhost`) never saw the token, in any form
    assert git_redirect.requests, "git never asked the configured host"
    assert [r.authorization for r in git_redirect.target.requests if r.authorization] == []
    assert raised is not None and not (tmp_path / "private" / "flow.py").exists()
    message = raised.message + (raised.hint or "")
    assert "redirect" in message
    assert token not in message + "".join(lines)


def test_without_credentials_a_redirect_is_followed(
    git_redirect: GitRedirect, git_repos: GitRepos, tmp_path: Path
) -> None:
    git_repos.create("public", {"flow.py": "x = 2\n"})
    ctx, _ = make_ctx(tmp_path)

    assert git_clone(ctx, repository=git_redirect.url("public")) == {"directory": "public"}
    assert (tmp_path / "public" / "flow.py").read_text() == "x = 2\n"


@pytest.mark.unit
def test_a_server_error_is_retried_whatever_the_port_number_says() -> None:
    """A 503 from a server on port 40301 was taken for a refusal ("403" in the port) and not retried."""
    from buildsys.steps.git import _transient

    said = ("git_clone: could not clone http://127.0.0.1:40301/private.git\nremote: try again later\n"
            "fatal: unable to access 'http://127.0.0.1:40301/private.git/': The requested URL returned error: 503")
    assert _transient(StepError(said))
    refused = said.replace("error: 503", "error: 403")
    assert not _transient(StepError(refused))
