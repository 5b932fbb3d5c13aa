"""What a fixture does when the machine lacks a service: skip locally, fail in CI.

A developer's machine may lack Docker or PostgreSQL; the tests that need them then skip with the
reason. `.ci/run` installs everything and sets ``BUILDSYS_TEST_REQUIRE_SERVICES=1``, so there a
missing service is a test failure rather than a silent skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_ENV", "services_required", "unavailable"]

REQUIRE_ENV = "BUILDSYS_TEST_REQUIRE_SERVICES"


def services_required() -> bool:
    """True when a missing service must fail the run (CI), not skip."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the requesting test with ``reason``, or fail it when services are required."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)
