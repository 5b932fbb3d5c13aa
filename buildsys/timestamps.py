"""Prefect's timestamps (ISO 8601 text) read one way, by the Prefect store and the Prefect API alike."""

from __future__ import annotations

from datetime import UTC, datetime


def parse(value: object) -> datetime | None:
    """ISO 8601 text (a trailing `Z` is UTC) as a datetime, naive when the text names no zone;
    None when absent, empty or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def epoch(value: object) -> float | None:
    """A Prefect timestamp in epoch seconds (no zone means UTC, as Prefect writes them); None if
    absent or unreadable."""
    parsed = parse(value)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
