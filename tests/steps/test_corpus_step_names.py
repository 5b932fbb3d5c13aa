"""Every Prefect step name used by the real-world prefect.yaml corpus resolves to a built-in step.

(Names outside Prefect's packages, like ``retrieve_secrets.main``, are modules of those projects.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from buildsys import registry


def step_names(document: object) -> Iterator[str]:
    """Names of the steps in the build/push/pull sections, top level and per deployment."""
    if not isinstance(document, dict):
        return
    sections = [document] + [d for d in document.get("deployments") or [] if isinstance(d, dict)]
    for owner in sections:
        for key in ("build", "push", "pull"):
            steps = owner.get(key)
            steps = [steps] if isinstance(steps, dict) else steps
            for item in steps or []:
                if isinstance(item, dict) and len(item) == 1:
                    yield next(iter(item))


def test_every_corpus_step_name_resolves(corpus_dir: Path) -> None:
    names: set[str] = set()
    for path in sorted(corpus_dir.glob("*.yaml")):
        try:
            names.update(step_names(yaml.safe_load(path.read_text())))
        except yaml.YAMLError:
            continue  # unparsable files are the loader's business, not the registry's
    prefect_names = sorted(n for n in names if n.startswith(("prefect.", "prefect_")))
    resolved = {name: registry.resolve(name, corpus_dir).name for name in prefect_names}
    assert resolved == {
        "prefect.deployments.steps.git_clone": "git_clone",
        "prefect.deployments.steps.pip_install_requirements": "pip_install_requirements",
        "prefect.deployments.steps.run_shell_script": "run_shell_script",
        "prefect.deployments.steps.set_working_directory": "set_working_directory",
        "prefect.projects.steps.git_clone": "git_clone",
        "prefect.projects.steps.git_clone_project": "git_clone",
        "prefect.projects.steps.pip_install_requirements": "pip_install_requirements",
        "prefect.projects.steps.set_working_directory": "set_working_directory",
        "prefect_aws.deployments.steps.pull_from_s3": "pull_from_s3",
        "prefect_aws.deployments.steps.push_to_s3": "push_to_s3",
        "prefect_docker.deployments.steps.build_docker_image": "build_docker_image",
        "prefect_docker.deployments.steps.push_docker_image": "push_docker_image",
        "prefect_docker.projects.steps.build_docker_image": "build_docker_image",
        "prefect_gcp.deployments.steps.pull_from_gcs": "pull_from_gcs",
        "prefect_gcp.deployments.steps.push_to_gcs": "push_to_gcs",
    }
