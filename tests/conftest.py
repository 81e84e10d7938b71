"""Fixtures for every test file: the authors' tiny model rebuilt from tests/fixtures/official/, a
MUSDB18-HQ tree of your own music. Plain helpers are in tests/builders.py."""

import os
from pathlib import Path

import pytest
import torch

from mixitcli.allocator import keep_freed_memory
from tests.builders import OWN, noise, write
from tests.official import OfficialModels

# two test processes (pytest-xdist, `make test`) share the machine's cores; alone, use two threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # and so does every process a test starts (the CLI, torchrun's ranks, scoring workers): with
    # a thread per core each, beside the other worker they would oversubscribe the cores
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
keep_freed_memory()  # as the mixit command does: large tensors reuse freed memory

# The large original fixtures (97 MB, outside the repository) add one more comparison when
# MIXIT_OFFICIAL_FIXTURES=DIR names them; the compact fixtures in the repository are the proof.
collect_ignore = [] if os.environ.get("MIXIT_OFFICIAL_FIXTURES") else ["model/test_official_large.py"]


@pytest.fixture(scope="session")
def official(tmp_path_factory) -> OfficialModels:
    return OfficialModels(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def own_stems(tmp_path_factory) -> Path:
    """A MUSDB18-HQ-layout tree of 5 training songs, none named like a standard validation track."""
    root = tmp_path_factory.mktemp("own")
    for k, name in enumerate(OWN + ["Own Band - Test"]):
        folder = root / ("test" if name.endswith("Test") else "train") / name
        stems = {s: noise(9, amp=0.05, seed=10 * k + j) for j, s in enumerate(("vocals", "drums", "bass", "other"))}
        for s, x in stems.items():
            write(folder / f"{s}.wav", x)
        write(folder / "mixture.wav", sum(stems.values()))
    return root
