"""Typed errors of the data stage; the CLI maps each to a clear message and exit code 1."""

from __future__ import annotations


def with_problems(message: str, problems: list[str], *, limit: int = 30) -> str:
    """``message`` followed by one "  - problem" line each (at most ``limit``, then a count)."""
    shown = "".join(f"\n  - {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return message + shown + more


class DataError(Exception):
    """Base class: preparing or reading a dataset failed for a reason the user can fix."""


class LayoutError(DataError):
    """A dataset folder is missing, empty or not laid out as expected.

    Attributes:
        problems: every problem found, so they can all be reported at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(with_problems(message, self.problems, limit=50))


class MetadataError(DataError):
    """FMA metadata (tracks.csv) is missing, malformed or does not know the subset asked for."""


class PrepareError(DataError):
    """A preparation run cannot start or resume (options changed, folder locked, shards incomplete)."""


class PreparedDataError(DataError):
    """A prepared folder (manifest, index, SAD lists) is missing or inconsistent for a reader."""
