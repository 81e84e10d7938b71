"""prepare-fma (mixitcli/data/fma.py): the per-file rules, the outputs, the split (by hash, or
FMA's own from tracks.csv, with at least 2 validation tracks), shards, resuming after kill -9,
the command's messages and errors, a full disk, the shard lock held through the merge, and
clips with non-finite samples."""

from __future__ import annotations

import errno
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
from typer.testing import CliRunner

from mixitcli import audio
from mixitcli.cli import app
from mixitcli.data import clips, fma
from mixitcli.data import manifest as mf
from mixitcli.data.clips import ClipRules
from mixitcli.data.errors import LayoutError, MetadataError, PrepareError
from mixitcli.data.fma import split_of
from mixitcli.data.manifest import Journal, SegmentIndex, read_jsonl
from tests.builders import REPO, flat, float_wav, noise, write

from .conftest import FMA_FILES, SR

runner = CliRunner()
L = 10 * SR


def rows_by_track(prep: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in read_jsonl(prep / "manifest.jsonl"):
        out.setdefault(r["track"], []).append(r)
    return out


def without_store(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "store"} for r in rows]


def test_fma_tree_outcomes(fma_prepared):
    """Each generated file ends up exactly as its rule says; clip starts are exact."""
    kept = {tid: starts for tid, (_, outcome, starts) in FMA_FILES.items() if outcome == "kept"}
    rows = rows_by_track(fma_prepared)
    assert {t: [r["offset"] for r in rs] for t, rs in rows.items()} == {
        t: [s * SR for s in ss] for t, ss in kept.items()
    }
    assert all(r["length"] == L for rs in rows.values() for r in rs)
    rejected = {r["track"]: r["reason"] for r in read_jsonl(fma_prepared / "rejected.jsonl")}
    assert rejected == {
        tid: outcome for tid, (_, outcome, _) in FMA_FILES.items() if outcome not in ("kept", "not_in_subset")
    }
    summary = json.loads((fma_prepared / "summary.json").read_text())
    assert summary["files_seen"] == 10
    assert summary["files_kept"] == 3
    assert summary["files_rejected"] == {
        r: 1 for r in ("empty", "low_sample_rate", "mono", "silent", "too_short", "truncated", "undecodable")
    }
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
    k = next(
        i
        for i, r in enumerate(read_jsonl(tmp_path / "p" / "manifest.jsonl"))
        if r["track"] == "zeros" and r["offset"] == 25 * SR
    )
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
    assert [r["offset"] for r in rows_by_track(tmp_path / "clip")["fade"]] == [
        0,
        5 * SR,
        10 * SR,
        15 * SR,
        20 * SR,
        22 * SR,
    ]


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
    assert (out / rows["caf\\xe9 \\xff"][0]["store"]).stat().st_size == (
        10 * SR + SR // 2
    ) * 4  # the whole 10.5 s, 16-bit stereo
    index = SegmentIndex.load(out)
    assert index.read(0, 0, 100).shape == (2, 100)
    journal = (out / "shards" / "0-of-1" / "journal.jsonl").read_bytes()
    result = CliRunner().invoke(app, args)
    assert (
        result.exit_code == 0 and (out / "shards" / "0-of-1" / "journal.jsonl").read_bytes() == journal
    )  # nothing decoded again


# ----------------------------------------------------------------------------- the command


def test_prepare_fma_end_to_end(tmp_path):
    src = tmp_path / "music"
    for k in range(3):
        write(src / "album" / f"song{k}.flac", noise(12, seed=k))
    (src / "broken.mp3").write_bytes(b"ID3 garbage")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["prepare-fma", "--audio-dir", str(src), "--out", str(out), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "3 kept" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments_kept"] == 6 and summary["files_rejected"] == {"undecodable": 1}
    again = runner.invoke(app, ["prepare-fma", "--merge", "--out", str(out), "--valid-fraction", "0.5"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["valid_fraction"] == 0.5


def test_prepare_fma_errors(tmp_path, fma_root):
    (tmp_path / "empty").mkdir()
    cases = [
        (["prepare-fma", str(tmp_path / "missing"), "--subset", "small"], "no such folder"),
        (["prepare-fma", "--audio-dir", str(tmp_path / "empty")], "no audio files"),
        (["prepare-fma", str(fma_root), "--subset", "huge"], "unknown subset 'huge'"),
        (["prepare-fma", str(fma_root / "fma_small"), "--subset", "large"], "does not know the subset 'large'"),
        (["prepare-fma", "--audio-dir", str(fma_root), "--shard", "2/2"], "0-based"),
        (["prepare-fma", "--audio-dir", str(fma_root), "--silence-rule", "loud"], "silence_rule"),
        (["prepare-fma", "--merge"], "no shards"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    both = runner.invoke(
        app, ["prepare-fma", str(fma_root), "--audio-dir", str(fma_root), "--out", str(tmp_path / "o")]
    )
    assert both.exit_code == 2 and "either ROOT" in both.output
    mixed = runner.invoke(
        app, ["prepare-fma", "--audio-dir", str(fma_root), "--subset", "small", "--out", str(tmp_path / "o")]
    )
    assert mixed.exit_code == 2 and "go with ROOT" in " ".join(mixed.output.split())


# ----------------------------------------------------------------------------- faults (issue 11)
# The full disk is injected: the store files are opened through a quota that raises ENOSPC
# once a byte budget is spent (as a 20 MB tmpfs does), so the test runs anywhere.

STORE_BYTES = 11 * 44100 * 4  # one 11 s stereo file kept whole, as int16


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """Four good 11 s stereo WAV files."""
    folder = tmp_path_factory.mktemp("songs")
    for k in range(4):
        write(folder / f"song{k}.wav", noise(11, seed=k))
    return folder


class _Quota:
    """open() for the store files with a shared byte budget: a write past it fails with ENOSPC."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _QuotaFile(f, self) if "w" in mode else f


class _QuotaFile:
    def __init__(self, f, quota: _Quota) -> None:
        self.f, self.quota = f, quota

    def write(self, data) -> int:
        self.quota.left -= len(data)
        if self.quota.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _prepare(songs: Path, out: Path):
    return runner.invoke(
        app, ["prepare-fma", "--audio-dir", str(songs), "--out", str(out), "--workers", "0", "--no-progress"]
    )


def test_full_disk_stops_the_run_and_the_rerun_keeps_every_file(songs, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    monkeypatch.setattr(clips, "open", _Quota(int(2.5 * STORE_BYTES)), raising=False)  # room for two files
    result = _prepare(songs, out)
    shard = out / "shards" / "0-of-1"
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "no space left on the device" in text and "needed" in text
    assert str(shard / "audio") in result.output.replace("\n", "")  # the folder, however the console wraps it
    assert "2 of 4 files are finished" in text and "Traceback" not in result.output
    journal = Journal(shard / "journal.jsonl").load()
    assert sorted(journal) == ["song0.wav", "song1.wav"]  # a good file is never rejected for our disk
    assert all(r["status"] == "kept" for r in journal.values())
    assert not list(shard.rglob("*.partial")) and not (out / "manifest.jsonl").exists()

    monkeypatch.undo()  # space was freed
    result = _prepare(songs, out)
    assert result.exit_code == 0, result.output
    assert "4 seen, 4 kept" in result.output
    done = json.loads((shard / "done.json").read_text())
    assert (done["resumed"], done["processed"]) == (2, 2)
    assert _prepare(songs, tmp_path / "ref").exit_code == 0  # the same files on a roomy disk
    assert read_jsonl(out / "manifest.jsonl") == read_jsonl(tmp_path / "ref" / "manifest.jsonl")


def test_the_shard_lock_is_held_through_the_merge(songs, tmp_path, monkeypatch):
    """A second run started while the first merges is refused instead of deleting done.json
    under it (issue 11: FileNotFoundError .../done.json in 3 of 10 racing tries)."""
    out = tmp_path / "prep"
    assert _prepare(songs, out).exit_code == 0
    source = fma.locate_audio_dir(songs)
    real_write_jsonl = mf.write_jsonl
    competitor = []

    def write_jsonl(path, rows):
        if not competitor:  # the first merge write: a second run on the same folder starts now
            competitor.append("started")
            try:
                fma.prepare_fma(source, fma.PrepareConfig(out=out, workers=0, progress=False))
                competitor.append("ran to the end")
            except PrepareError as e:
                competitor.append(str(e))
        return real_write_jsonl(path, rows)

    monkeypatch.setattr(mf, "write_jsonl", write_jsonl)
    result = _prepare(songs, out)  # the finished folder again: nothing to decode, then the merge
    assert result.exit_code == 0, result.output
    assert "being prepared by another running process" in competitor[1]
    assert (out / "shards" / "0-of-1" / "done.json").is_file() and len(read_jsonl(out / "manifest.jsonl")) == 4 * 2


# ----------------------------------------------------------------------------- FMA's own split
# With tracks.csv, prepare-fma takes FMA's own split, as the authors' fma_split.py: "training" ->
# train, "validation" -> valid, "test" left out (never decoded, counted in the summary);
# --valid-fraction re-splits by hash, and --merge can switch between the two without decoding.

# track id -> (FMA subset, FMA split); every file is 11 s of noise, so each kept track gives 2 clips
TRACKS = {
    "000010": ("small", "training"),
    "000011": ("small", "training"),
    "000012": ("small", "validation"),
    "000013": ("small", "validation"),
    "000014": ("small", "test"),
    "000015": ("medium", "training"),  # not in small
}


def tracks_csv(path: Path, tracks: dict[str, tuple[str, str]]) -> Path:
    lines = [",album,set,set,track", ",title,split,subset,title", "track_id,,,,"]
    lines += [
        f'{int(tid)},"Album, {tid}",{split},{subset},Song {tid}' for tid, (subset, split) in sorted(tracks.items())
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def split_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fma_split")
    for k, tid in enumerate(TRACKS):
        write(root / "fma_medium" / tid[:3] / f"{tid}.wav", noise(11, seed=40 + k))  # WAV: fast; the split is the point
    tracks_csv(root / "fma_metadata" / "tracks.csv", TRACKS)
    return root


def splits_of(prep: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in read_jsonl(prep / "manifest.jsonl"):
        out.setdefault(r["track"], set()).add(r["split"])
    return out


def test_split_follows_tracks_csv_and_merge_can_resplit(split_root, tmp_path):
    out = tmp_path / "prep"
    result = runner.invoke(
        app, ["prepare-fma", str(split_root), "--subset", "small", "--out", str(out), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "FMA's own split" in result.output and "1 files of FMA's test split left out" in result.output
    assert splits_of(out) == {"000010": {"train"}, "000011": {"train"}, "000012": {"valid"}, "000013": {"valid"}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_rule"] == "fma tracks.csv" and summary["valid_fraction"] is None
    assert summary["files_in_fma_test_split"] == 1 and summary["files_seen"] == 4  # the test track is never decoded
    assert summary["files_not_in_subset"] == 1
    assert summary["tracks_per_split"] == {"train": 2, "valid": 2} and summary["segments_per_split"] == {
        "train": 4,
        "valid": 4,
    }

    # --merge --valid-fraction: the same clips, split by a hash of the track id instead
    result = runner.invoke(app, ["prepare-fma", "--merge", "--out", str(out), "--valid-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    resplit = splits_of(out)
    assert resplit == {tid: {fma.split_of(tid, 0.5)} for tid in ("000010", "000011", "000012", "000013")}
    assert json.loads((out / "summary.json").read_text())["split_rule"] == "hash"
    # --merge alone goes back to FMA's split (kept in the journals, no tracks.csv needed)
    assert runner.invoke(app, ["prepare-fma", "--merge", "--out", str(out)]).exit_code == 0
    assert splits_of(out)["000012"] == {"valid"} and splits_of(out)["000010"] == {"train"}


def test_valid_fraction_applies_without_metadata(split_root, tmp_path):
    """No tracks.csv (an FMA audio folder alone): every file is used, 1 % held out by hash, raised
    to the minimum of 2 validation tracks (6 tracks kept)."""
    bare = fma.AudioSource(kind="fma", audio_root=split_root / "fma_medium", subset="medium")
    summary = fma.prepare_fma(bare, fma.PrepareConfig(out=tmp_path / "p", workers=0, progress=False))
    assert summary["split_rule"] == "hash" and summary["valid_fraction"] == fma.DEFAULT_VALID_FRACTION
    assert summary["files_seen"] == 6 and summary["files_in_fma_test_split"] == 0
    raised = fma.raised_to_minimum(set(TRACKS), fma.DEFAULT_VALID_FRACTION)
    assert len(raised) == 2 and summary["tracks_per_split"]["valid"] == 2
    assert splits_of(tmp_path / "p") == {
        tid: {"valid" if tid in raised else fma.split_of(tid, fma.DEFAULT_VALID_FRACTION)} for tid in TRACKS
    }


def test_unknown_split_value_is_an_error(tmp_path):
    bad = tracks_csv(tmp_path / "tracks.csv", {"000010": ("small", "holdout"), "000011": ("small", "training")})
    with pytest.raises(MetadataError, match="'holdout' in column set/split; expected training, validation, test"):
        fma.read_tracks(bad, "small")
    good = tracks_csv(tmp_path / "ok.csv", {"000010": ("small", "test"), "000011": ("medium", "validation")})
    assert fma.read_tracks(good, "medium") == {10: "test", 11: "validation"}
    assert fma.read_subset_ids(good, "small") == {10}


# ----------------------------------------------------------------------------- validation tracks of your own music (issue 10)


def tracks_dir(root: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        write(root / f"{name}.wav", noise(10.5, seed=k))
    return root


def test_prepare_fma_holds_out_at_least_two_of_four_or_more_tracks(tmp_path):
    names = [f"song{k}" for k in range(6)]
    assert all(split_of(n, 0.01) == "train" for n in names)  # the fraction alone holds out none
    src = tracks_dir(tmp_path / "music", names)
    result = runner.invoke(
        app, ["prepare-fma", "--audio-dir", str(src), "--out", str(tmp_path / "p"), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["tracks_per_split"] == {"train": 4, "valid": 2} and summary["valid_tracks_raised"] == 2
    assert "validation: 2 of 6 tracks held out (2 added: --valid-fraction 0.01 gave 0" in flat(result.output)
    rows = [json.loads(line) for line in (tmp_path / "p" / "manifest.jsonl").read_text().splitlines()]
    assert len({r["track"] for r in rows if r["split"] == "valid"}) == 2


def test_prepare_fma_with_three_tracks_says_pretrain_needs_more(tmp_path):
    src = tracks_dir(tmp_path / "music", ["a", "b", "c"])
    result = runner.invoke(
        app, ["prepare-fma", "--audio-dir", str(src), "--out", str(tmp_path / "p"), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0 and "pretrain needs at least 2 validation tracks" in flat(result.output)
    result = runner.invoke(
        app,
        [
            "pretrain",
            "--data",
            str(tmp_path / "p"),
            "--out",
            str(tmp_path / "run"),
            "--size",
            "tiny",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    assert "at least two tracks. Hold out more tracks" in flat(result.output)  # a sentence each


# ----------------------------------------------------------------------------- non-finite samples (issue 10, item 3)


def test_prepare_fma_drops_and_counts_clips_with_nonfinite_samples(tmp_path):
    src = tmp_path / "music"
    x = noise(25.0, seed=3)
    x[12 * SR, 1] = np.nan  # inside the clips at 5 and 10 s
    float_wav(src / "one_nan.wav", x)
    y = noise(12.0, seed=4)
    y[::SR] = np.inf  # every clip of this file holds some
    float_wav(src / "all_bad.wav", y)
    float_wav(src / "clean.wav", noise(11.0, seed=5))
    out = tmp_path / "prep"
    result = runner.invoke(
        app, ["prepare-fma", "--audio-dir", str(src), "--out", str(out), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments_dropped"] == {"silent": 0, "nonfinite": 2} and summary["files_with_nonfinite"] == 2
    assert summary["files_rejected"] == {"nonfinite": 1}
    text = flat(result.output)
    assert (
        "2 dropped for non-finite samples (NaN or infinity; 2 file(s) held some)" in text
        and "rejected: nonfinite 1" in text
    )
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["offset"] for r in rows if r["track"] == "one_nan") == [0, 15 * SR]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(Path(r["file"]).name, r["reason"]) for r in rejected] == [("all_bad.wav", "nonfinite")]
    from mixitcli.data.manifest import SegmentIndex

    index = SegmentIndex.load(out)
    for k in range(len(index.length)):  # nothing non-finite, nothing replaced, reaches training
        clip = index.read(k, 0, int(index.length[k]))
        assert np.isfinite(clip).all()
    first = [k for k, r in enumerate(rows) if r["track"] == "one_nan" and r["offset"] == 0][0]
    np.testing.assert_allclose(
        index.read(first, 0, 10 * SR), x[: 10 * SR].T, atol=1 / 32768
    )  # the clean clip as it was
