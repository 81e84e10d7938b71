"""Shared test fixtures: the authors' tiny model rebuilt from tests/fixtures/official/, small helpers."""

import os
from pathlib import Path

import pytest
import torch

from mixitcli.allocator import keep_freed_memory
from tests.official import OfficialModels

REPO = Path(__file__).resolve().parents[1]

# two test processes (pytest-xdist, `make test`) share the machine's cores; alone, use two threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
keep_freed_memory()  # as the mixit command does: large tensors reuse freed memory

# The large original fixtures (97 MB, outside the repository) add one more comparison when
# MIXIT_OFFICIAL_FIXTURES=DIR names them; the compact fixtures in the repository are the proof.
collect_ignore = [] if os.environ.get("MIXIT_OFFICIAL_FIXTURES") else ["model/test_official_large.py"]


@pytest.fixture(scope="session")
def official(tmp_path_factory) -> OfficialModels:
    return OfficialModels(tmp_path_factory.mktemp("official"))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()
