"""The authors' tiny BS-Locoformer, rebuilt from the compact fixtures in tests/fixtures/official/.

The authors' model code was run once on weights that follow a fixed rule, and its outputs were
kept (`compact_io.pt`). The weights themselves are not stored: `official_state_dict` rebuilds
the exact official state dict from the key layout (`layout.json`), so a test can write a
`model.pth` in the official folder layout and compare our model with their outputs.
"""

import functools
import json
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"
WINDOWS = ("model.stft.0.window", "model.istft.window", "stft.0.window")
N_FFT = 2048


def rule(name: str, n: int) -> torch.Tensor:
    """u(name, n): n deterministic values in [-0.5, 0.5), float32.

    u_i = ((i * 2654435761 + crc32(name)) mod 2^32) / 2^32 - 0.5 (int64 arithmetic, then float64).
    """
    i = torch.arange(n, dtype=torch.int64)
    v = (i * 2654435761 + zlib.crc32(name.encode("utf-8"))) % (1 << 32)
    return (v.to(torch.float64) / float(1 << 32) - 0.5).to(torch.float32)


def rule_tensor(key: str, shape: list[int]) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    u = rule(key, n).reshape(shape)
    if len(shape) >= 2:
        return u * (12.0 / (n / shape[0])) ** 0.5  # fan-in scaling: unit variance per output row
    if key.endswith("bias"):
        return 0.2 * u
    return 1.0 + 0.2 * u  # norm weights and gammas


@functools.cache
def official_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The official `model.pth` state dict of "tiny4" or "tiny12", windows included (shared: do not modify)."""
    layout = json.loads((FIXTURES / "layout.json").read_text())[name]
    state = {key: rule_tensor(key, shape) for key, shape in layout.items()}
    for key in WINDOWS:
        state[key] = torch.hann_window(N_FFT, periodic=True)
    return state


def mixture() -> torch.Tensor:
    """The 0.53 s input of the reference outputs: (1, 2, 23284), channel-major."""
    return (0.2 * rule("mixture", 2 * 23284)).view(1, 2, 23284)


def long_mixture() -> torch.Tensor:
    """The 19 s input of the chunked-inference reference: (1, 2, 838677)."""
    return (0.2 * rule("long_mixture", 2 * 838677)).view(1, 2, 838677)


def write_official_folder(folder: Path, name: str) -> Path:
    """Lay out `folder` as a published official model: checkpoints/model.pth + merged_config.yaml."""
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(name), folder / "checkpoints" / "model.pth")
    (folder / "merged_config.yaml").write_text((FIXTURES / f"{name}_merged_config.yaml").read_text())
    return folder


def reference_outputs() -> dict[str, torch.Tensor]:
    """The authors' outputs (see tests/fixtures/official/README.md for every key)."""
    return torch.load(FIXTURES / "compact_io.pt", map_location="cpu", weights_only=True)


class OfficialModels:
    """The tiny 4- and 12-output official models written once per test session under `root`."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("tiny4", "tiny12"):
            write_official_folder(root / name, name)
        self.io = reference_outputs()

    def folder(self, name: str) -> Path:
        return self.root / name

    def weights(self, name: str) -> Path:
        return self.root / name / "checkpoints" / "model.pth"

    def config(self, name: str) -> Path:
        return self.root / name / "merged_config.yaml"
