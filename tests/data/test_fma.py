"""prepare-fma: the per-file rules, the outputs, the split, shards, and resuming after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mixitcli import audio
from mixitcli.data import fma
from mixitcli.data.clips import ClipRules, segment_starts
from mixitcli.data.errors import LayoutError, MetadataError, PrepareError
from mixitcli.data.manifest import SegmentIndex, read_jsonl

from .conftest import FMA_FILES, SR, noise, write

REPO = Path(__file__).resolve().parents[2]
L = 10 * SR


def rows_by_track(prep: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in read_jsonl(prep / "manifest.jsonl"):
        out.setdefault(r["track"], []).append(r)
    return out


def without_store(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "store"} for r in rows]


@pytest.mark.parametrize(
    "frames, expected",
    [
        (L - 1, []),
        (L, [0]),
        (L + 1, [0, 1]),  # the end clip, one sample later
        (20 * SR, [0, 5 * SR, 10 * SR]),  # the hops land on the end: no extra clip
        (17 * SR, [0, 5 * SR, 7 * SR]),
    ],
)
def test_segment_starts(frames, expected):
    assert segment_starts(frames, L, 5 * SR) == expected


def test_fma_tree_outcomes(fma_prepared):
    """Each generated file ends up exactly as its rule says; clip starts are exact."""
    kept = {tid: starts for tid, (_, outcome, starts) in FMA_FILES.items() if outcome == "kept"}
    rows = rows_by_track(fma_prepared)
    assert {t: [r["offset"] for r in rs] for t, rs in rows.items()} == {t: [s * SR for s in ss] for t, ss in kept.items()}
    assert all(r["length"] == L for rs in rows.values() for r in rs)
    rejected = {r["track"]: r["reason"] for r in read_jsonl(fma_prepared / "rejected.jsonl")}
    assert rejected == {tid: outcome for tid, (_, outcome, _) in FMA_FILES.items() if outcome not in ("kept", "not_in_subset")}
    summary = json.loads((fma_prepared / "summary.json").read_text())
    assert summary["files_seen"] == 10
    assert summary["files_kept"] == 3
    assert summary["files_rejected"] == {r: 1 for r in ("empty", "low_sample_rate", "mono", "silent", "too_short", "truncated", "undecodable")}
    assert summary["files_not_in_subset"] == 1
    assert summary["metadata_tracks_without_file"] == 1
    assert summary["other_files"] == 1
    assert summary["segments_kept"] == 8
    assert sum(summary["segments_per_split"].values()) == 8
    assert summary["hours_kept"] == pytest.approx((20 + 17 + 12) / 3600, abs=1e-4)


def test_store_holds_the_decoded_audio_once(fma_prepared, fma_root):
    index = SegmentIndex.load(fma_prepared)
    rows = read_jsonl(fma_prepared / "manifest.jsonl")
    store_bytes = sum((fma_prepared / s).stat().st_size for s in index.stores)
    kept_frames = (20 + 17 + 12) * SR  # union of the kept clips of each file
    assert store_bytes == kept_frames * 2 * 2  # exactly 16-bit stereo PCM of the kept audio
    for k, r in enumerate(rows):
        ref, _ = audio.read(r["source"], sample_rate=SR)  # (c, t), whole-file soxr for the 48 kHz one
        got = index.read(k, 0, L)
        np.testing.assert_allclose(got, ref[:, r["offset"] : r["offset"] + L], atol=2e-4)
        crop = index.read(k, 123, 6 * SR)  # a 6 s crop is a slice of the clip
        np.testing.assert_array_equal(crop, got[:, 123 : 123 + 6 * SR])


def test_split_is_by_track_and_deterministic(fma_prepared):
    rows = read_jsonl(fma_prepared / "manifest.jsonl")
    for r in rows:
        assert r["split"] == fma.split_of(r["track"], 0.5)
    assert fma.split_of("000002", 0.0) == "train"
    fractions = [fma.split_of(f"{k:06d}", 0.1) == "valid" for k in range(20000)]
    assert np.mean(fractions) == pytest.approx(0.1, abs=0.01)


def _prepare_dir(src: Path, out: Path, **rules) -> dict:
    config = fma.PrepareConfig(out=out, rules=ClipRules(**rules), workers=0, progress=False, valid_fraction=0.0)
    return fma.prepare_fma(fma.locate_audio_dir(src), config)


@pytest.fixture(scope="module")
def gap_dir(tmp_path_factory) -> Path:
    """A 40 s track with exact silence in [12 s, 28 s), and one with -70 dBFS noise there."""
    src = tmp_path_factory.mktemp("gap")
    x = noise(40, seed=1)
    x[12 * SR : 28 * SR] = 0.0
    write(src / "zeros.wav", x)
    y = noise(40, seed=2)
    y[12 * SR : 28 * SR] = noise(16, amp=10 ** (-70 / 20), seed=3)
    write(src / "quiet.flac", y)
    return src


def test_clip_silence_rule(gap_dir, tmp_path):
    """Paper rule: clips at 10, 15, 20 s have 8, 10, 8 silent 1 s intervals (> 5): dropped."""
    summary = _prepare_dir(gap_dir, tmp_path / "p")
    rows = rows_by_track(tmp_path / "p")
    assert [r["offset"] for r in rows["zeros"]] == [0, 5 * SR, 25 * SR, 30 * SR]
    # runs [0, 15) and [25, 40) are stored once each, back to back
    assert [r["store_offset"] for r in rows["zeros"]] == [0, 5 * SR, 15 * SR, 20 * SR]
    assert [r["offset"] for r in rows["quiet"]] == [k * 5 * SR for k in range(7)]  # not exactly zero: kept
    assert summary["segments_dropped"] == {"silent": 3, "nonfinite": 0}
    x, _ = sf.read(str(gap_dir / "zeros.wav"), dtype="float32")
    index = SegmentIndex.load(tmp_path / "p")
    k = next(i for i, r in enumerate(read_jsonl(tmp_path / "p" / "manifest.jsonl")) if r["track"] == "zeros" and r["offset"] == 25 * SR)
    np.testing.assert_array_equal(index.read(k, 0, L), x[25 * SR : 35 * SR].T)  # PCM_16 in, PCM_16 out: exact


def test_silence_db_threshold(gap_dir, tmp_path):
    _prepare_dir(gap_dir, tmp_path / "p", silence_db=-60.0)
    rows = rows_by_track(tmp_path / "p")
    assert [r["offset"] for r in rows["quiet"]] == [0, 5 * SR, 25 * SR, 30 * SR]


def test_official_track_rule(gap_dir, tmp_path):
    summary = _prepare_dir(gap_dir, tmp_path / "p", silence_rule="track")
    assert summary["files_rejected"] == {"silent": 1}
    assert list(rows_by_track(tmp_path / "p")) == ["quiet"]


def test_official_rule_checks_the_partial_end_windows(tmp_path):
    """32 s ending in 2 s of zeros: the official script's window at 30 s is all zero and drops
    the track; the paper rule keeps 6 clips, the last one ending at 32 s."""
    x = noise(32, seed=4)
    x[30 * SR :] = 0.0
    write(tmp_path / "src" / "fade.wav", x)
    assert _prepare_dir(tmp_path / "src", tmp_path / "track", silence_rule="track")["files_rejected"] == {"silent": 1}
    _prepare_dir(tmp_path / "src", tmp_path / "clip")
    assert [r["offset"] for r in rows_by_track(tmp_path / "clip")["fade"]] == [0, 5 * SR, 10 * SR, 15 * SR, 20 * SR, 22 * SR]


def test_keep_mono(fma_root, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(fma_root / "fma_small" / "001" / "001002.mp3", src / "mono.mp3")
    _prepare_dir(src, tmp_path / "p", keep_mono=True)
    index = SegmentIndex.load(tmp_path / "p")
    clip = index.read(0, 0, L)
    np.testing.assert_array_equal(clip[0], clip[1])


def test_subsets_from_metadata(fma_root):
    small = fma.scan(fma.locate_fma(fma_root, "small"))
    medium = fma.scan(fma.locate_fma(fma_root / "fma_small", "medium", metadata=fma_root / "fma_metadata"))
    assert {f.track for f in medium.files} - {f.track for f in small.files} == {"003001"}
    assert (small.not_in_subset, medium.not_in_subset) == (1, 0)
    assert fma.locate_fma(fma_root / "fma_small", "small").metadata == fma_root / "fma_metadata" / "tracks.csv"
    with pytest.raises(MetadataError, match="does not know the subset 'large'"):
        fma.scan(fma.locate_fma(fma_root / "fma_small", "large"))


def test_clear_errors(tmp_path, fma_root):
    with pytest.raises(LayoutError, match="no such folder"):
        fma.locate_fma(tmp_path / "missing", "small")
    with pytest.raises(MetadataError, match="unknown subset 'huge'"):
        fma.locate_fma(fma_root, "huge")
    (tmp_path / "empty" / "fma_small").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no audio files"):
        fma.scan(fma.locate_fma(tmp_path / "empty", "small"))
    (tmp_path / "music").mkdir()
    with pytest.raises(LayoutError, match="--audio-dir"):
        fma.locate_fma(tmp_path / "music", "small")
    with pytest.raises(MetadataError, match="no tracks.csv"):
        fma.locate_fma(fma_root, "small", metadata=tmp_path)


def test_changed_rules_refuse_to_resume(gap_dir, tmp_path):
    _prepare_dir(gap_dir, tmp_path / "p")
    with pytest.raises(PrepareError, match="other rules"):
        _prepare_dir(gap_dir, tmp_path / "p", silence_rule="track")


def test_shards_merge_to_the_single_run(fma_root, fma_prepared, tmp_path):
    source = fma.locate_fma(fma_root, "small")
    config = lambda out, i: fma.PrepareConfig(out=out, workers=0, progress=False, valid_fraction=0.5, shard=(i, 2))  # noqa: E731
    assert fma.prepare_fma(source, config(tmp_path / "a", 0)) is None  # waits for shard 1
    with pytest.raises(PrepareError, match="1/2 not finished"):
        fma.merge_shards(tmp_path / "a")
    fma.prepare_fma(source, config(tmp_path / "b", 1))  # another machine, another disk
    shutil.copytree(tmp_path / "b" / "shards" / "1-of-2", tmp_path / "a" / "shards" / "1-of-2")
    summary = fma.merge_shards(tmp_path / "a", valid_fraction=0.5)
    single = json.loads((fma_prepared / "summary.json").read_text())
    assert summary["segments_kept"] == single["segments_kept"] and summary["files_rejected"] == single["files_rejected"]
    key = lambda r: (r["track"], r["offset"])  # noqa: E731
    assert sorted(without_store(read_jsonl(tmp_path / "a" / "manifest.jsonl")), key=key) == sorted(
        without_store(read_jsonl(fma_prepared / "manifest.jsonl")), key=key
    )
    with pytest.raises(PrepareError, match="2-way sharded run"):
        fma.prepare_fma(source, fma.PrepareConfig(out=tmp_path / "a", workers=0, progress=False))


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "mixitcli", *args], env=env, cwd=REPO, **kw)


def test_resume_after_kill_9(tmp_path):
    """kill -9 the whole run mid-way; re-running finishes it, decodes no journaled file again,
    and the manifest equals an uninterrupted run's: every clip exactly once."""
    src = tmp_path / "src"
    one = write(tmp_path / "one.mp3", noise(12, seed=7)).read_bytes()
    for k in range(40):
        (src / f"{k // 10:03d}").mkdir(parents=True, exist_ok=True)
        (src / f"{k // 10:03d}" / f"{k:06d}.mp3").write_bytes(one)
    out = tmp_path / "out"
    args = ["prepare-fma", "--audio-dir", str(src), "--out", str(out), "--workers", "1", "--no-progress"]
    journal = out / "shards" / "0-of-1" / "journal.jsonl"
    proc = _cli(*args, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 5:
            os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, at once
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = {json.loads(line)["file"] for line in journal.read_text().splitlines()}
    assert 5 <= len(done_before) < 40
    stores = out / "shards" / "0-of-1" / "audio"
    mtimes = {f: (stores / f"{f}.s16").stat().st_mtime_ns for f in done_before}
    assert _cli(*args, stderr=subprocess.DEVNULL).wait() == 0
    done = json.loads((out / "shards" / "0-of-1" / "done.json").read_text())
    assert (done["resumed"], done["processed"]) == (len(done_before), 40 - len(done_before))
    assert {f: (stores / f"{f}.s16").stat().st_mtime_ns for f in done_before} == mtimes  # not rewritten
    assert not list(stores.rglob("*.partial"))
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == len({(r["track"], r["offset"]) for r in rows}) == 40 * 2
    assert _cli(*[a if a != str(out) else str(tmp_path / "ref") for a in args], stderr=subprocess.DEVNULL).wait() == 0
    assert read_jsonl(tmp_path / "ref" / "manifest.jsonl") == rows


def test_file_names_that_are_not_utf8_are_prepared_like_any_other(tmp_path):
    """Issue 20: one file name that is not UTF-8 stopped all of prepare-fma (the manifest, the
    hashes and JSON cannot hold its surrogate escapes). It is prepared under a printable name
    (its odd bytes as \\xNN) and the others go on; a rerun resumes it."""
    from typer.testing import CliRunner

    from mixitcli.cli import app

    music = tmp_path / "music"
    write(music / "good.wav", noise(10.5, seed=1))
    try:
        os.replace(write(music / "x.wav", noise(10.5, seed=2)), music / os.fsdecode(b"caf\xe9 \xff.wav"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "prep"
    args = ["prepare-fma", "--audio-dir", str(music), "--out", str(out), "--workers", "0", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["files_kept"] == 2
    text = (out / "manifest.jsonl").read_bytes().decode("utf-8")  # strict: valid UTF-8 for any reader
    assert "\\ud" not in text  # no surrogate escapes in the JSON
    rows = rows_by_track(out)
    assert sorted(rows) == ["caf\\xe9 \\xff", "good"] and len(rows["caf\\xe9 \\xff"]) == 2
    assert (out / rows["caf\\xe9 \\xff"][0]["store"]).stat().st_size == (10 * SR + SR // 2) * 4  # the whole 10.5 s, 16-bit stereo
    index = SegmentIndex.load(out)
    assert index.read(0, 0, 100).shape == (2, 100)
    journal = (out / "shards" / "0-of-1" / "journal.jsonl").read_bytes()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and (out / "shards" / "0-of-1" / "journal.jsonl").read_bytes() == journal  # nothing decoded again
