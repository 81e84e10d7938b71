"""Typed errors of the data stage; the CLI maps each to a clear message and exit code 1."""

from __future__ import annotations


class DataError(Exception):
    """Base class: preparing or reading a dataset failed for a reason the user can fix."""


class LayoutError(DataError):
    """A dataset folder is missing, empty or not laid out as expected.

    Attributes:
        problems: every problem found, so they can all be reported at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems[:50])
            more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
            message = f"{message}\n{shown}{more}"
        super().__init__(message)


class MetadataError(DataError):
    """FMA metadata (tracks.csv) is missing, malformed or does not know the subset asked for."""


class PrepareError(DataError):
    """A preparation run cannot start or resume (options changed, folder locked, shards incomplete)."""


class PreparedDataError(DataError):
    """A prepared folder (manifest, index, SAD lists) is missing or inconsistent for a reader."""
