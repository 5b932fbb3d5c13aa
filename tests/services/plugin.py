"""Pytest plugin that exposes the fixtures of tests/services/ (one module per service).

Registered by tests/conftest.py (``pytest_plugins``). Each service module is imported by exactly
one line below; add yours as one more line at the end (its fixtures must be listed in its
``__all__``). Import order is left as appended, so the lines need no sorting.
"""

# ruff: noqa: I001

from tests.services.docker import *  # noqa: F403
from tests.services.postgres import *  # noqa: F403
from tests.services.registry import *  # noqa: F403
from tests.services.git import *  # noqa: F403
from tests.services.s3 import *  # noqa: F403
from tests.services.k8s import *  # noqa: F403
from tests.services.workers import *  # noqa: F403
from tests.services.prefect import *  # noqa: F403
from tests.services.wheel import *  # noqa: F403
