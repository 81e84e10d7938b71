"""MUSDB18-HQ (mixitcli/data/musdb.py): the reader, the layout check, prepare-musdb outputs; the
command end to end, its layout errors, and an empty track refused (issue 20). SAD on constructed
signals is in tests/data/test_sad.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data.errors import LayoutError, PreparedDataError
from mixitcli.data.manifest import read_jsonl
from mixitcli.data.musdb import (
    VALIDATION_TRACKS,
    load_prepared_tracks,
    scan_musdb,
    validate_musdb,
)
from mixitcli.stems import STEMS
from tests.builders import flat, noise, write

from .conftest import SR

runner = CliRunner()

SEG = 8 * SR  # SAD segments: 8 s, hop 4 s


def test_scan_subsets_and_loading(musdb_root):
    train, valid, test = (scan_musdb(musdb_root, s) for s in ("train", "valid", "test"))
    assert [t.name for t in train] == ["A - One", "B - Two"]
    assert [t.name for t in valid] == ["Actions - One Minute Smile"]
    assert [t.name for t in test] == ["C - Three", "D - Four"]
    track = train[0]
    assert track.vocals == musdb_root / "train" / "A - One" / "vocals.wav"
    mixture, stems = track.load(), track.load_stems()
    assert mixture.shape == (2, 20 * SR) and mixture.dtype == np.float32
    assert stems.shape == (4, 2, 20 * SR)
    np.testing.assert_allclose(stems.sum(0), mixture, atol=3 / 32768)  # int16 rounding of 5 files
    np.testing.assert_array_equal(track.load("bass", start=SR, frames=100), stems[0][:, SR : SR + 100])
    assert len(VALIDATION_TRACKS) == 14


def test_prepare_outputs(musdb_prepared, musdb_root):
    starts = {s: {} for s in STEMS}
    for stem in STEMS:
        for r in read_jsonl(musdb_prepared / "salient" / f"{stem}.jsonl"):
            starts[stem].setdefault(r["track"], []).append(r["start"])
            assert r["length"] == SEG
    h = SEG // 2
    # A: 20 s -> 4 segments; B: 16 s -> 3. B's vocals are silent; A's bass stops at 10 s, so
    # its segments at 8 and 12 s have 3 and 0 active chunks.
    assert starts["vocals"] == {"A - One": [0, h, 2 * h, 3 * h]}
    assert starts["drums"] == starts["other"] == {"A - One": [0, h, 2 * h, 3 * h], "B - Two": [0, h, 2 * h]}
    assert starts["bass"] == {"A - One": [0, h], "B - Two": [0, h, 2 * h]}
    assert (musdb_prepared / "valid.txt").read_text() == "Actions - One Minute Smile\n"
    assert (musdb_prepared / "test.txt").read_text() == "C - Three\nD - Four\n"
    summary = json.loads((musdb_prepared / "summary.json").read_text())
    assert summary["tracks"] == {"train": 2, "valid": 1, "test": 2}
    assert summary["segments"] == {"bass": 5, "drums": 7, "vocals": 4, "other": 7}
    assert len(summary["validation_tracks_missing"]) == 13
    assert summary["hours"]["test"] == pytest.approx(19 / 3600, abs=1e-4)
    test = load_prepared_tracks(musdb_prepared, "test")
    assert [t.folder for t in test] == [t.folder for t in scan_musdb(musdb_root, "test")]


def test_layout_problems_reported_together(musdb_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(musdb_root, root)
    (root / "train" / "A - One" / "vocals.wav").unlink()
    write(root / "train" / "B - Two" / "bass.wav", noise(16, rate=48000), rate=48000)
    write(root / "train" / "B - Two" / "other.wav", noise(16, channels=1))
    write(root / "test" / "C - Three" / "drums.wav", noise(9))
    (root / "test" / "D - Four" / "mixture.wav").write_text("not a wav")
    with pytest.raises(LayoutError) as err:
        validate_musdb(root)
    problems = err.value.problems
    assert problems == [
        "train/A - One: missing vocals.wav",
        "train/B - Two/bass.wav: 48000 Hz, expected 44100",
        "train/B - Two/bass.wav: 768000 samples, but mixture.wav has 705600",
        "train/B - Two/other.wav: 1 channel(s), expected 2",
        "test/C - Three/drums.wav: 396900 samples, but mixture.wav has 441000",
        problems[5],
    ]
    assert problems[5].startswith("test/D - Four/mixture.wav: not a readable WAV")
    assert all(p in str(err.value) for p in problems)


def test_missing_and_compressed_musdb(tmp_path):
    with pytest.raises(LayoutError, match="no such folder"):
        validate_musdb(tmp_path / "nothing")
    (tmp_path / "m" / "train").mkdir(parents=True)
    with pytest.raises(LayoutError) as err:
        validate_musdb(tmp_path / "m")
    assert err.value.problems == ["train/ holds no track folders", "missing folder test/"]
    (tmp_path / "m" / "train" / "A - One.stem.mp4").write_bytes(b"\0")
    with pytest.raises(LayoutError, match="MUSDB18-HQ"):
        validate_musdb(tmp_path / "m")
    with pytest.raises(PreparedDataError, match="prepare-musdb"):
        load_prepared_tracks(tmp_path / "m", "valid")


def test_prepare_musdb_end_to_end_and_errors(musdb_root, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["prepare-musdb", str(musdb_root), "--out", str(out), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "2 train, 1 valid, 2 test" in result.output and (out / "salient" / "vocals.jsonl").is_file()
    (tmp_path / "bad" / "train" / "X - Y").mkdir(parents=True)
    result = runner.invoke(app, ["prepare-musdb", str(tmp_path / "bad"), "--out", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    for problem in ("missing mixture.wav", "missing vocals.wav", "missing other.wav", "missing folder test/"):
        assert problem in text


def test_prepare_musdb_refuses_an_empty_track(tmp_path, musdb_root):
    """Issue 20: a 0-sample training track was accepted and gave no segments, silently."""
    root = tmp_path / "musdb"
    shutil.copytree(musdb_root, root)
    for source in ("mixture", "vocals", "drums", "bass", "other"):
        write(root / "train" / "B - Two" / f"{source}.wav", np.zeros((0, 2), np.float32))
    result = runner.invoke(
        app, ["prepare-musdb", str(root), "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "train/B - Two/mixture.wav: no samples (an empty track)" in flat(result.output)
