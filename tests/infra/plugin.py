"""Pytest plugin that exposes the fixtures of tests/infra/ (one module per service)."""
