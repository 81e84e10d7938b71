"""Shared test fixtures: paths to the authors' reference outputs, small deterministic audio."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = REPO.parent / "shared" / "fixtures" / "official-tiny"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    if not OFFICIAL_TINY.is_dir():
        pytest.fail(f"the official reference fixtures are missing: {OFFICIAL_TINY}")
    return OFFICIAL_TINY


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()
