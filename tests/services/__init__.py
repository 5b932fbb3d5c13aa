"""Real services for the tests (Docker engine and registry, PostgreSQL, git servers, S3)."""
