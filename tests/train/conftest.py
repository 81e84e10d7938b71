"""Small prepared data folders for training tests: an FMA-like folder and a MUSDB18-HQ tree; a
tiny pre-training run through the CLI; the training loop replaced by a recorder.

The audio is structured noise (bands, tones and gates), 44.1 kHz stereo, a few seconds
long: enough for 1 s training crops and for the 8 s SAD segments of prepare-musdb.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mixitcli.data.fma import PrepareConfig, locate_audio_dir, prepare_fma, split_of
from mixitcli.data.musdb import VALIDATION_TRACKS, prepare_musdb
from mixitcli.train import loop

SR = 44100
VALID_FRACTION = 0.3


def instrument(kind: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """(2, t) float32: a gated tone or noise band, panned."""
    t = np.arange(int(seconds * SR)) / SR
    if kind == 0:  # low tone
        x = np.sin(2 * np.pi * rng.uniform(50, 120) * t)
    elif kind == 1:  # noise bursts
        x = rng.standard_normal(t.size) * (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0.5)
    elif kind == 2:  # vibrato tone
        x = np.sin(2 * np.pi * rng.uniform(300, 600) * t + 3 * np.sin(2 * np.pi * 5 * t))
    else:  # chord
        x = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 1200, 3)) / 3
    gate = np.repeat(rng.random(int(seconds) + 1) > 0.2, SR)[: t.size]
    pan = rng.uniform(0.2, 0.8)
    return (np.stack([pan * x, (1 - pan) * x]) * gate * rng.uniform(0.05, 0.2)).astype(np.float32)


@pytest.fixture(scope="session")
def fma_prep(tmp_path_factory) -> Path:
    """A prepare-fma folder of 8 tracks (at least 2 in each split), 11 s each."""
    root = tmp_path_factory.mktemp("fma")
    audio = root / "music"
    candidates = [f"song{i:03d}" for i in range(200)]
    valid = [n for n in candidates if split_of(n, VALID_FRACTION) == "valid"][:2]
    names = valid + [n for n in candidates if split_of(n, VALID_FRACTION) == "train"][:6]
    rng = np.random.default_rng(0)
    for name in names:
        mix = sum(instrument(k, 11, rng) for k in rng.choice(4, 2, replace=False))
        audio.mkdir(parents=True, exist_ok=True)
        sf.write(audio / f"{name}.wav", mix.T, SR)
    out = root / "prep"
    prepare_fma(
        locate_audio_dir(audio), PrepareConfig(out=out, workers=0, valid_fraction=VALID_FRACTION, progress=False)
    )
    return out


def write_musdb_track(folder: Path, rng: np.random.Generator, seconds: float = 9.0) -> None:
    folder.mkdir(parents=True)
    stems = {name: instrument(k, seconds, rng) for name, k in (("bass", 0), ("drums", 1), ("vocals", 2), ("other", 3))}
    for name, x in stems.items():
        sf.write(folder / f"{name}.wav", x.T, SR, subtype="FLOAT")
    sf.write(folder / "mixture.wav", sum(stems.values()).T, SR, subtype="FLOAT")


@pytest.fixture(scope="session")
def musdb_root(tmp_path_factory) -> Path:
    """A MUSDB18-HQ tree: 3 training tracks, 2 validation tracks, 2 test tracks of 9 s."""
    root = tmp_path_factory.mktemp("musdb") / "musdb18hq"
    rng = np.random.default_rng(1)
    for name in ("Artist A - Song One", "Artist B - Song Two", "Artist C - Song Three", *VALIDATION_TRACKS[:2]):
        write_musdb_track(root / "train" / name, rng)
    for name in ("Test Artist - First", "Test Artist - Second"):
        write_musdb_track(root / "test" / name, rng)
    return root


@pytest.fixture(scope="session")
def musdb_prep(musdb_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("musdb-prep")
    prepare_musdb(musdb_root, out, workers=1, progress=False)
    return out


# ----------------------------------------------------------------------------- runs through the CLI

FAST = [
    "--size",
    "tiny",
    "--segment-seconds",
    "0.5",
    "--warmup-steps",
    "1",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-checkpointing",
    "--batch-size",
    "2",
    "--valid-size",
    "4",
    "--log-every",
    "1",
]
"""A tiny pre-training run of `mixit pretrain` on ``fma_prep``."""
REPRO = ["--max-steps", "3", "--steps-per-epoch", "2", "--valid-every", "1", "--save-every", "3"]
"""Issue 11's repro: 3 steps, validations at steps 2 (epoch end) and 3 (the last step, inside
an epoch and on a --save-every multiple)."""


def cli_pretrain(data, run, *extra):
    """`mixit pretrain` with FAST and REPRO (``extra`` comes last and wins), in this process."""
    from typer.testing import CliRunner

    from mixitcli.cli import app

    return CliRunner().invoke(
        app, ["pretrain", "--data", str(data), "--out", str(run), *FAST, *REPRO, *map(str, extra)]
    )


@pytest.fixture(scope="session")
def pretrain_reference(fma_prep, tmp_path_factory) -> Path:
    """The uninterrupted REPRO run: validations at steps 2 and 3, both among the best."""
    import json

    run = tmp_path_factory.mktemp("reference") / "run"
    result = cli_pretrain(fma_prep, run)
    assert result.exit_code == 0, result.output
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert sorted(e["step"] for e in best) == [2, 3]
    return run


@pytest.fixture(scope="module")
def reference(pretrain_reference):
    """``pretrain_reference``, the run that runs interrupted by faults must equal."""
    return pretrain_reference


# ----------------------------------------------------------------------------- the loop replaced


@pytest.fixture
def trained(monkeypatch):
    """Replace the training loop by a recorder of (config, resume)."""
    calls = []
    monkeypatch.setattr(loop, "train", lambda config, *, resume=False, console=None: calls.append((config, resume)))
    return calls
