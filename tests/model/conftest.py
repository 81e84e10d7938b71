"""Fixtures of the model tests."""

import pytest
import torch

from mixitcli import build_model


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with 3 outputs and seeded weights, in eval mode."""
    torch.manual_seed(0)
    return build_model("tiny", n_outputs=3).eval()
