"""Examples per second per worker for the two training samplers, from local disk.

Target (issue #3): one worker feeds at least 50 six-second stereo examples per second.

    python bench/dataloader.py [--examples 400]

Prepares a small FMA-like folder (generated MP3s through `prepare-fma`) and a MUSDB18-HQ-like
tree (generated WAVs through `prepare-musdb`), then times
- ``ds[i]`` in this process (one worker's work, nothing else), and
- a DataLoader with ``num_workers=1`` and batch 32 (adds collation and inter-process transfer),
  next to the same DataLoader over a dataset of zeros of the same shape: the ceiling that
  torch's shared-memory transfer of these large float32 batches sets on this machine.
Files are read through the page cache after the first pass: this is the warm-disk rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixitcli.data import fma  # noqa: E402
from mixitcli.data.musdb import prepare_musdb  # noqa: E402
from mixitcli.data.samplers import DynamicMixing, IndexSampler, MixtureOfMixtures  # noqa: E402

SR = 44100


def noise(seconds: float, seed: int, amp: float = 0.05) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal((int(seconds * SR), 2))).astype(np.float32)


def make_fma(root: Path) -> Path:
    for k in range(24):
        folder = root / "fma" / f"{k // 10:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / f"{k:06d}.mp3"), noise(30, k), SR, format="MP3")
    out = root / "fma_prep"
    fma.prepare_fma(fma.locate_audio_dir(root / "fma"), fma.PrepareConfig(out=out, workers=0, progress=False))
    return out


def make_musdb(root: Path) -> Path:
    for k in range(6):
        folder = root / "musdb" / "train" / f"Artist {k} - Song {k}"
        folder.mkdir(parents=True)
        stems = {s: noise(60, 10 * k + j, 0.02 * (j + 1)) for j, s in enumerate(("vocals", "drums", "bass", "other"))}
        for s, x in stems.items():
            sf.write(str(folder / f"{s}.wav"), x, SR)
        sf.write(str(folder / "mixture.wav"), sum(stems.values()), SR)
    test = root / "musdb" / "test" / "T - T"
    test.mkdir(parents=True)
    for s in ("mixture", "vocals", "drums", "bass", "other"):
        sf.write(str(test / f"{s}.wav"), noise(10, 99), SR)
    out = root / "musdb_prep"
    prepare_musdb(root / "musdb", out, workers=0, progress=False)
    return out


class Zeros(torch.utils.data.Dataset):
    """Costs nothing to make: measures what the DataLoader's transfer alone allows."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(self.shape)


def loader_rate(ds, n: int) -> tuple[float, tuple]:
    """Examples/s through DataLoader(num_workers=1, batch 32), after the first batch."""
    loader = DataLoader(ds, batch_size=32, sampler=IndexSampler(n, seed=1), num_workers=1)
    counted = 0
    for k, batch in enumerate(loader):
        if k == 0:  # exclude the worker's start-up
            start = time.perf_counter()
        else:
            counted += batch.shape[0]
    return counted / (time.perf_counter() - start), tuple(batch.shape[1:])


def time_dataset(name: str, ds, n: int) -> None:
    ds[0]  # warm the page cache and lazy imports
    start = time.perf_counter()
    for i in range(n):
        ds[i + 1]
    in_process = n / (time.perf_counter() - start)
    loaded, shape = loader_rate(ds, n)
    ceiling, _ = loader_rate(Zeros(shape), n)
    print(
        f"{name:<18} example {shape}: {in_process:5.0f} examples/s in one process; "
        f"{loaded:4.0f} examples/s through DataLoader(num_workers=1), where a dataset of zeros gets {ceiling:4.0f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=400)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fma_prep, musdb_prep = make_fma(root), make_musdb(root)
        time_dataset("MixtureOfMixtures", MixtureOfMixtures(fma_prep), args.examples)
        time_dataset("DynamicMixing", DynamicMixing(musdb_prep), args.examples)


if __name__ == "__main__":
    main()
