"""Pytest plugin that exposes the fixtures of tests/infra/ (one module per service).

Registered by tests/conftest.py (``pytest_plugins``). Each service module is imported by exactly
one line below; add yours as one more line at the end (its fixtures must be listed in its
``__all__``). Import order is left as appended, so the lines need no sorting.
"""

# ruff: noqa: I001

from tests.infra.docker import *  # noqa: F403
from tests.infra.postgres import *  # noqa: F403
from tests.infra.registry import *  # noqa: F403
from tests.infra.git import *  # noqa: F403
from tests.infra.s3 import *  # noqa: F403
from tests.infra.k8s import *  # noqa: F403
from tests.infra.workers import *  # noqa: F403
from tests.infra.prefect import *  # noqa: F403
