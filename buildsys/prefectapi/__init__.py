"""The part of Prefect's server API that Prefect's engine, its workspace supervisor and its process
worker use, served over buildsys's store: a Prefect flow run IS a buildsys flow run.

from buildsys.prefectapi import create_app, EmbeddedApi
"""

from __future__ import annotations

from buildsys.prefectapi.app import Settings, create_app
from buildsys.prefectapi.embedded import EmbeddedApi

__all__ = ["EmbeddedApi", "Settings", "create_app"]
