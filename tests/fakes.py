"""Cheap stand-ins for BS-Locoformer with the interface separation needs (config, stems,
min_samples, forward (b, c, t) -> (b, n, c, t)), whose outputs are known in closed form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FakeConfig:
    sample_rate: int = 44100
    n_outputs: int = 4
    n_channels: int = 2


class GainModel(nn.Module):
    """Output k = gain_k * input: the stems sum back to the mixture, so any chunking and any
    window must return exactly the gains times the input."""

    stems = ("bass", "drums", "vocals", "other")
    min_samples = 1025

    def __init__(self, gains=(0.1, 0.2, 0.3, 0.4), sample_rate: int = 44100):
        super().__init__()
        self.config = FakeConfig(sample_rate=sample_rate)
        self.gains = nn.Parameter(torch.tensor(gains), requires_grad=False)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        return self.gains.view(1, -1, 1, 1) * x.unsqueeze(1)  # (b, c, t) -> (b, n, c, t)


class ContextModel(GainModel):
    """Output k = (k + 1) * x + (mean of the chunk per channel): depends on the whole chunk,
    so where chunks start, how the last one is padded and how overlaps are averaged all show."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        k = torch.arange(1, 5, dtype=x.dtype).view(1, -1, 1, 1)
        return k * x.unsqueeze(1) + x.mean(dim=-1, keepdim=True).unsqueeze(1)
