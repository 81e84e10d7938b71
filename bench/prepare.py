"""Throughput of `mixit prepare-fma` on generated MP3s: hours of audio per minute per worker.

Target (issue #3): at least 150x real time per worker, i.e. 2.5 h of audio per minute.

    python bench/prepare.py [--files 48] [--seconds 30] [--workers 1]

Runs twice: 44.1 kHz MP3s (decode, clip, silence rule, store) and 48 kHz MP3s (plus soxr HQ
resampling). The MP3s are a few encoded songs copied under different names, so generating
them takes seconds; decoding cost does not depend on that.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixitcli.data import fma  # noqa: E402


def music_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """(t, 2) float32: a few decaying tones over noise, so the encoder has real work to do."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.02 * rng.standard_normal((len(t), 2))
    for _ in range(6):
        f, onset = rng.uniform(80, 2000), rng.uniform(0, 1)
        env = np.exp(-3 * ((t + onset) % 1.0))
        x += 0.08 * np.sin(2 * np.pi * f * t)[:, None] * env[:, None] * rng.uniform(0.3, 1, 2)
    return x.astype(np.float32)


def make_tree(root: Path, files: int, seconds: float, rate: int) -> float:
    """Write ``files`` MP3s under root (FMA-like 3-digit folders); returns total seconds."""
    songs = []
    for k in range(4):
        path = root / f"song{k}.mp3"
        sf.write(str(path), music_like(seconds, rate, k), rate, format="MP3")
        songs.append(path.read_bytes())
    for k in range(files):
        folder = root / "fma" / f"{k // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:06d}.mp3").write_bytes(songs[k % 4])
    return files * seconds


def run(files: int, seconds: float, rate: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio_s = make_tree(root, files, seconds, rate)
        config = fma.PrepareConfig(out=root / "out", workers=workers, progress=False)
        start = time.perf_counter()
        summary = fma.prepare_fma(fma.locate_audio_dir(root / "fma"), config)
        wall = time.perf_counter() - start
        assert summary["files_kept"] == files, summary
        per_worker = audio_s / wall / max(workers, 1)
        print(
            f"{rate / 1000:g} kHz MP3, {files} files x {seconds:g} s = {audio_s / 3600:.2f} h, {workers} worker(s): "
            f"{wall:.2f} s wall -> {per_worker:.0f}x real time per worker = "
            f"{per_worker * 60 / 3600:.2f} h of audio per minute per worker "
            f"(store {summary['store_bytes'] / 2**20:.0f} MiB)"
        )
        shutil.rmtree(root / "out")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=48)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    for rate in (44100, 48000):
        run(args.files, args.seconds, rate, args.workers)


if __name__ == "__main__":
    main()
