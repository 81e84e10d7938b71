"""Dynamic mixing's stem normalisation: "rms" (the paper) vs "mean_abs" (the authors' code).

A constructed answer: white noise has RMS / mean|x| = sqrt(pi / 2); the same noise switched on
for a fraction p of the time has sqrt(pi / (2 p)). Dividing by mean|x| instead of the RMS
therefore leaves a stem that plays half of the time (drum hits, a vocal line with pauses)
10 log10(2) = 3.01 dB louder relative to a stem that never stops (bass, pads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixitcli.data.musdb import prepare_musdb
from mixitcli.data.samplers import DynamicMixing, MixPlan, stem_level

from .conftest import SR, noise, write


def gated(seconds: float, period: float, duty: float, seed: int) -> np.ndarray:
    """(t, c) noise that sounds for the first ``duty`` of every ``period`` seconds."""
    x = noise(seconds, seed=seed)
    phase = (np.arange(len(x)) % int(period * SR)) / (period * SR)
    return x * (phase < duty)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def sparse_dense(tmp_path_factory) -> Path:
    """One training track: drums and vocals play half of the time, bass and other always."""
    root = tmp_path_factory.mktemp("norm_musdb")
    stems = {"drums": gated(12, 0.5, 0.5, seed=1), "vocals": gated(12, 2.0, 0.5, seed=2),
             "bass": noise(12, amp=0.3, seed=3), "other": noise(12, amp=0.05, seed=4)}
    for name, split in (("S - Sparse", "train"), ("T - Test", "test")):
        for stem, x in stems.items():
            write(root / split / name / f"{stem}.wav", x)
        write(root / split / name / "mixture.wav", sum(stems.values()))
    out = root / "prep"
    prepare_musdb(root, out, workers=0, progress=False)
    return out


def levels_db(prep: Path, norm: str) -> dict[str, float]:
    """Per stem, the level (dB, mean power over channels and samples) of a 6 s crop at 0 dB gain."""
    ds = DynamicMixing(prep, segment_seconds=6.0, stem_norm=norm)
    plan = MixPlan(picks=(0,) * 4, dropped=(False,) * 4, offset=0, gain_db=(0.0,) * 4)
    stems = ds.render(plan).numpy().astype(np.float64)  # (n, c, t)
    return {s: 10 * np.log10(np.mean(stems[j] ** 2)) for j, s in enumerate(ds.stems)}


def test_mean_abs_makes_sparse_stems_louder_by_three_db(sparse_dense):
    rms, mean_abs = levels_db(sparse_dense, "rms"), levels_db(sparse_dense, "mean_abs")
    assert all(abs(v) < 1e-4 for v in rms.values()), rms  # RMS-normalised: every stem at 0 dB
    for dense in ("bass", "other"):
        assert mean_abs[dense] == pytest.approx(10 * np.log10(np.pi / 2), abs=0.05)  # 1.96 dB
    for sparse in ("drums", "vocals"):
        for dense in ("bass", "other"):
            shift = (mean_abs[sparse] - mean_abs[dense]) - (rms[sparse] - rms[dense])
            assert 2.0 < shift < 4.0
            assert shift == pytest.approx(10 * np.log10(2), abs=0.1), (sparse, dense, shift)


def test_silent_and_dropped_stems_stay_zero(sparse_dense):
    assert stem_level(np.zeros((2, 100), np.float32), "mean_abs") == 0.0
    x = np.array([[3.0, -4.0], [0.0, 0.0]], np.float32)
    assert stem_level(x, "mean_abs") == pytest.approx(7 / 4) and stem_level(x, "rms") == pytest.approx(np.sqrt(25 / 4))
    ds = DynamicMixing(sparse_dense, segment_seconds=6.0, stem_norm="mean_abs")
    stems = ds.render(MixPlan(picks=(0,) * 4, dropped=(True, False, False, True), offset=0, gain_db=(0.0,) * 4))
    assert not stems[0].any() and not stems[3].any() and stems[1].abs().sum() > 0
    with pytest.raises(ValueError, match="stem_norm must be one of"):
        DynamicMixing(sparse_dense, stem_norm="peak")
