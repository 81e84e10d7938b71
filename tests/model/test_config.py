"""Model configurations (mixitcli/model/config.py): the band layout, every problem of a
configuration listed at once, the presets."""

import pytest

from mixitcli import build_model
from mixitcli.model import ModelConfig
from mixitcli.model.config import BANDS


def test_band_layout():
    assert len(BANDS) == 62 and sum(BANDS) == 1025


def test_invalid_configuration_lists_every_problem():
    with pytest.raises(ValueError) as e:
        ModelConfig(attention_dim=100, n_heads=8, d_model=100, n_groups=8, bands=(2, 3))
    message = str(e.value)
    assert "bands sum to 5" in message and "n_heads=8" in message and "n_groups=8" in message


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny, small, medium, large"):
        build_model("huge")
