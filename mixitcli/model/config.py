"""Model hyper-parameters: one dataclass, the paper's presets, and the band layout.

docs/method.md §3 gives the presets; the band widths are those of BS-RoFormer at 44.1 kHz with a
2048-point FFT (62 bands, 1025 bins).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mixitcli.stems import STEMS

# 62 bands: 24 of 2 bins, 12 of 4, 8 of 12, 8 of 24, 8 of 48, then 128 and 129 (docs/method.md §3.3).
BANDS: tuple[int, ...] = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a BS-Locoformer's function and parameter shapes.

    Groups: outputs; STFT; TF-Locoformer separator; regularisation.
    """

    # Outputs
    n_outputs: int = 4
    n_channels: int = 2
    # STFT (samples at 44.1 kHz)
    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 512
    bands: tuple[int, ...] = BANDS
    # Separator
    n_blocks: int = 6
    d_model: int = 128
    attention_dim: int = 128
    n_heads: int = 8
    n_groups: int = 8
    ffn_hidden: tuple[int, int] = (192, 192)
    kernel_size: int = 8
    stride: int = 1
    eps: float = 1e-5
    # Regularisation
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
        object.__setattr__(self, "ffn_hidden", tuple(int(h) for h in self.ffn_hidden))
        n_bins = self.n_fft // 2 + 1
        problems = []
        if sum(self.bands) != n_bins:
            problems.append(f"bands sum to {sum(self.bands)} bins but n_fft={self.n_fft} gives {n_bins}")
        if self.attention_dim % self.n_heads:
            problems.append(f"attention_dim={self.attention_dim} is not divisible by n_heads={self.n_heads}")
        if self.d_model % self.n_groups:
            problems.append(f"d_model={self.d_model} is not divisible by n_groups={self.n_groups}")
        if len(self.ffn_hidden) != 2:
            problems.append(f"ffn_hidden needs two sizes (macaron FFNs), got {self.ffn_hidden}")
        if self.n_outputs < 1 or self.n_channels < 1 or self.n_blocks < 1:
            problems.append(
                f"n_outputs, n_channels and n_blocks must be >= 1 "
                f"(got {self.n_outputs}, {self.n_channels}, {self.n_blocks})"
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid model configuration: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bands"] = list(self.bands)
        d["ffn_hidden"] = list(self.ffn_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # Ours, for CPU tests and demos: the configuration of the official-code fixtures in tests/fixtures/official/.
    "tiny": ModelConfig(n_blocks=2, d_model=16, attention_dim=16, n_heads=2, n_groups=2, ffn_hidden=(24, 24)),
    "small": ModelConfig(n_blocks=4, d_model=96, attention_dim=96, n_heads=4, n_groups=4, ffn_hidden=(128, 128)),
    "medium": ModelConfig(n_blocks=6, d_model=128, attention_dim=128, n_heads=8, n_groups=8, ffn_hidden=(192, 192)),
    "large": ModelConfig(n_blocks=9, d_model=192, attention_dim=192, n_heads=8, n_groups=8, ffn_hidden=(256, 256)),
}


def preset(name: str, *, n_outputs: int = 4, **overrides) -> ModelConfig:
    """The configuration of a named preset with ``n_outputs`` outputs.

    Raises:
        ValueError: unknown preset name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(n_outputs=n_outputs, **overrides)


def default_stems(n_outputs: int) -> tuple[str, ...]:
    """Names of the outputs: the four stems for 4 outputs, MixIT heads ``out0``... otherwise."""
    if n_outputs == len(STEMS):
        return STEMS
    return tuple(f"out{i}" for i in range(n_outputs))
