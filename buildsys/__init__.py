"""buildsys: a declarative GitOps build tool for Prefect-style Python workflow projects."""

__version__ = "0.1.0"
