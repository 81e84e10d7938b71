"""The training datasets: determinism, statistics, and splitting across ranks and workers;
dynamic mixing's stem normalisation, "rms" (the paper) or "mean_abs" (the authors' code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from mixitcli.data import fma
from mixitcli.data.errors import PreparedDataError
from mixitcli.data.manifest import SegmentIndex
from mixitcli.data.musdb import prepare_musdb
from mixitcli.data.samplers import (
    DynamicMixing,
    IndexSampler,
    MixPlan,
    MixtureOfMixtures,
    MusdbValidation,
    stem_level,
)
from tests.builders import noise, write

from .conftest import POOL_TRACKS, SR

T = 6 * SR


def power_db(x: torch.Tensor) -> float:
    return 10 * np.log10(np.mean(np.square(x.numpy(), dtype=np.float64)))


# --- mixtures of mixtures ---------------------------------------------------------------------


def test_mom_shape_and_determinism(pool_prepared):
    ds = MixtureOfMixtures(pool_prepared, seed=3)
    refs = ds[5]
    assert refs.shape == (2, 2, T) and refs.dtype == torch.float32
    assert torch.equal(refs, MixtureOfMixtures(pool_prepared, seed=3)[5])  # pure function of (seed, i)
    assert not torch.equal(refs, ds[6])
    assert not torch.equal(refs, MixtureOfMixtures(pool_prepared, seed=4)[5])
    assert ds[10**9].shape == (2, 2, T)  # every index >= 0 exists (fresh epochs)


def test_mom_statistics(pool_prepared):
    """Different tracks in every pair; the level difference is the drawn one, uniform in
    [-5, 5] dB; the second crop is the stored audio, untouched."""
    ds = MixtureOfMixtures(pool_prepared, seed=0)
    index = SegmentIndex.load(pool_prepared)
    levels = []
    for i in range(200):
        refs, info = ds.example(i)
        assert info["tracks"][0] != info["tracks"][1]
        assert power_db(refs[0]) - power_db(refs[1]) == pytest.approx(info["level_db"], abs=1e-3)
        levels.append(info["level_db"])
    np.testing.assert_array_equal(refs[1].numpy(), index.read(info["clips"][1], info["starts"][1], T))
    levels = np.array(levels)
    assert levels.min() >= -5 and levels.max() <= 5
    assert levels.min() < -4.5 and levels.max() > 4.5 and abs(levels.mean()) < 0.6
    assert np.histogram(levels, bins=4, range=(-5, 5))[0].min() > 30  # 50 expected per bin


def test_mom_splits_and_sizes(pool_prepared):
    index = SegmentIndex.load(pool_prepared)
    train, valid = MixtureOfMixtures(pool_prepared), MixtureOfMixtures.validation(pool_prepared, size=7)
    assert len(train) == len(index.in_split("train")) // 2
    assert len(valid) == 7
    valid_tracks = {t for t in POOL_TRACKS if fma.split_of(t, 0.3) == "valid"}
    assert len(valid_tracks) >= 2
    for i in range(20):
        assert set(valid.example(i)[1]["tracks"]) <= valid_tracks
        assert not set(train.example(i)[1]["tracks"]) & valid_tracks


def test_mom_redraws_silent_crops(pool_prepared, monkeypatch):
    """Crops of one training track read as all zeros here: they must never be returned."""
    ds = MixtureOfMixtures(pool_prepared, seed=1)
    mute = next(t for t in POOL_TRACKS if fma.split_of(t, 0.3) == "train")
    silent = {k for k in range(len(ds.index)) if ds.index.tracks[ds.index.track_id[k]] == mute}
    assert silent and silent <= set(ds.clips.tolist())
    read = ds.index.read
    monkeypatch.setattr(ds.index, "read", lambda k, s, n: read(k, s, n) * (k not in silent))
    for i in range(60):
        refs, info = ds.example(i)
        assert mute not in info["tracks"]
        assert refs.abs().amax(dim=(1, 2)).min() > 0


def test_mom_needs_two_tracks(pool_prepared, tmp_path):
    with pytest.raises(PreparedDataError, match="at least two tracks"):
        src = tmp_path / "one"
        src.mkdir()
        from tests.builders import noise, write

        write(src / "only.wav", noise(12))
        out = tmp_path / "p"
        fma.prepare_fma(fma.locate_audio_dir(src), fma.PrepareConfig(out=out, workers=0, progress=False))
        MixtureOfMixtures(out)
    with pytest.raises(PreparedDataError, match="prepare-fma"):
        MixtureOfMixtures(tmp_path / "nothing")


# --- dynamic mixing ---------------------------------------------------------------------------


def test_dm_dropout_statistics(musdb_prepared):
    """Each stem is dropped with p, redrawn while all are dropped: P(dropped) = (p - p^n)/(1 - p^n)."""
    for p, n_draws in ((0.05, 20000), (0.7, 5000)):
        ds = DynamicMixing(musdb_prepared, p_dropout=p)
        dropped = np.array([ds.plan(i).dropped for i in range(n_draws)])
        assert not dropped.all(axis=1).any()
        expected = (p - p**4) / (1 - p**4)
        assert dropped.mean(axis=0) == pytest.approx([expected] * 4, abs=4 * np.sqrt(expected / n_draws))


def test_dm_gains_and_independent_segments(musdb_prepared):
    ds = DynamicMixing(musdb_prepared, seed=2)
    plans = [ds.plan(i) for i in range(4000)]
    gains = np.array([p.gain_db for p in plans])
    assert gains.min() >= -10 and gains.max() <= 10 and gains.min() < -9.9 and gains.max() > 9.9
    assert abs(gains.mean()) < 0.3
    tracks = [{ds.segment_of(p, j)[0].split("/")[-2] for j in range(4)} for p in plans]
    assert np.mean([len(t) > 1 for t in tracks]) > 0.5  # stems usually come from different songs
    offsets = np.array([p.offset for p in plans])
    assert offsets.min() >= 0 and offsets.max() <= 2 * SR and offsets.max() > 1.9 * SR


def test_dm_render(musdb_prepared):
    """Each kept stem is the WAV at segment start + shared offset, scaled to RMS = gain."""
    ds = DynamicMixing(musdb_prepared, seed=5, p_dropout=0.5)
    for i in range(6):
        plan = ds.plan(i)
        stems = ds[i]
        assert stems.shape == (4, 2, T) and stems.dtype == torch.float32
        assert torch.equal(stems, ds.render(plan))
        for j, name in enumerate(ds.stems):
            if plan.dropped[j]:
                assert not stems[j].any()
                continue
            path, start = ds.segment_of(plan, j)
            assert path.endswith(f"/{name}.wav")
            x, _ = sf.read(path, start=start + plan.offset, frames=T, dtype="float32")
            x = x.T
            gain = 10 ** (plan.gain_db[j] / 20)
            np.testing.assert_allclose(
                stems[j].numpy(), x * gain / np.sqrt(np.mean(x.astype(np.float64) ** 2)), rtol=1e-5, atol=1e-7
            )
            assert np.sqrt(np.mean(stems[j].numpy().astype(np.float64) ** 2)) == pytest.approx(gain, rel=1e-5)


def test_dm_stem_order_and_defaults(musdb_prepared):
    ds = DynamicMixing(musdb_prepared, stems=("vocals", "bass"), p_dropout=0.0)
    assert len(DynamicMixing(musdb_prepared)) == 110 * 32
    assert ds[0].shape == (2, 2, T)
    for i in range(50):  # B - Two has no salient vocals
        assert "B - Two" not in ds.segment_of(ds.plan(i), 0)[0]
    with pytest.raises(ValueError, match="stems"):
        DynamicMixing(musdb_prepared, stems=("voice",))
    with pytest.raises(ValueError, match="p_dropout"):
        DynamicMixing(musdb_prepared, p_dropout=1.0)


def test_musdb_validation(musdb_prepared):
    ds = MusdbValidation(musdb_prepared, stems=("vocals", "drums", "bass", "other"))
    assert len(ds) == 1
    name, mixture, stems = ds[0]
    assert name == "Actions - One Minute Smile"
    assert mixture.shape == (2, 12 * SR) and stems.shape == (4, 2, 12 * SR)
    torch.testing.assert_close(stems.sum(0), mixture, atol=3 / 32768, rtol=0)
    assert len(MusdbValidation(musdb_prepared, subset="test")) == 2


# --- the sampler --------------------------------------------------------------------------------


def test_index_sampler_ranks_epochs_resume():
    ranks = [IndexSampler(103, seed=1, epoch=2, rank=r, world_size=2) for r in range(2)]
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == 51  # the odd one out is dropped, so both ranks step together
    assert not set(a) & set(b)
    assert all(2 * 103 <= i < 3 * 103 for i in a + b)  # epoch 2 draws fresh indices
    assert a == list(IndexSampler(103, seed=1, epoch=2, rank=0, world_size=2))  # reproducible
    ranks[0].set_epoch(3)
    assert sorted(list(ranks[0]))[0] >= 3 * 103 and list(ranks[0]) != [i + 103 for i in a]
    assert list(IndexSampler(103, seed=1, epoch=2, rank=0, world_size=2, start=20)) == a[20:]
    plain = IndexSampler(10, shuffle=False, fresh_each_epoch=False, epoch=4)
    assert list(plain) == list(range(10))
    with pytest.raises(ValueError):
        IndexSampler(10, rank=2, world_size=2)


def test_dataloader_workers_and_resume(musdb_prepared):
    """2 workers give the very batches of 0 workers; resuming mid-epoch gives the tail."""
    ds = DynamicMixing(musdb_prepared, epoch_size=16, seed=4)

    def batches(workers: int, start: int = 0) -> list[torch.Tensor]:
        sampler = IndexSampler(len(ds), seed=9, epoch=1, start=start)
        return list(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers))

    two, zero = batches(2), batches(0)
    assert len(two) == 4
    for x, y in zip(two, zero):
        assert torch.equal(x, y)
    flat = torch.cat(two)
    assert len({x.numpy().tobytes() for x in flat}) == 16  # 16 different examples
    for x, y in zip(batches(2, start=8), two[2:]):
        assert torch.equal(x, y)


# --- stem normalisation ------------------------------------------------------------------------
# A constructed answer: white noise has RMS / mean|x| = sqrt(pi / 2); the same noise switched on
# for a fraction p of the time has sqrt(pi / (2 p)). Dividing by mean|x| instead of the RMS
# therefore leaves a stem that plays half of the time (drum hits, a vocal line with pauses)
# 10 log10(2) = 3.01 dB louder relative to a stem that never stops (bass, pads).


def gated(seconds: float, period: float, duty: float, seed: int) -> np.ndarray:
    """(t, c) noise that sounds for the first ``duty`` of every ``period`` seconds."""
    x = noise(seconds, seed=seed)
    phase = (np.arange(len(x)) % int(period * SR)) / (period * SR)
    return x * (phase < duty)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def sparse_dense(tmp_path_factory) -> Path:
    """One training track: drums and vocals play half of the time, bass and other always."""
    root = tmp_path_factory.mktemp("norm_musdb")
    stems = {
        "drums": gated(12, 0.5, 0.5, seed=1),
        "vocals": gated(12, 2.0, 0.5, seed=2),
        "bass": noise(12, amp=0.3, seed=3),
        "other": noise(12, amp=0.05, seed=4),
    }
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
