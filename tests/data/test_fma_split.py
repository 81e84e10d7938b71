"""prepare-fma with tracks.csv takes FMA's own split, as the authors' fma_split.py: "training" ->
train, "validation" -> valid, "test" left out (never decoded, counted in the summary);
--valid-fraction re-splits by hash, and --merge can switch between the two without decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data import fma
from mixitcli.data.errors import MetadataError
from mixitcli.data.manifest import read_jsonl

from .conftest import noise, write

# track id -> (FMA subset, FMA split); every file is 11 s of noise, so each kept track gives 2 clips
TRACKS = {
    "000010": ("small", "training"),
    "000011": ("small", "training"),
    "000012": ("small", "validation"),
    "000013": ("small", "validation"),
    "000014": ("small", "test"),
    "000015": ("medium", "training"),  # not in small
}

runner = CliRunner()


def tracks_csv(path: Path, tracks: dict[str, tuple[str, str]]) -> Path:
    lines = [",album,set,set,track", ",title,split,subset,title", "track_id,,,,"]
    lines += [f'{int(tid)},"Album, {tid}",{split},{subset},Song {tid}' for tid, (subset, split) in sorted(tracks.items())]
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
    result = runner.invoke(app, ["prepare-fma", str(split_root), "--subset", "small", "--out", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "FMA's own split" in result.output and "1 files of FMA's test split left out" in result.output
    assert splits_of(out) == {"000010": {"train"}, "000011": {"train"}, "000012": {"valid"}, "000013": {"valid"}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_rule"] == "fma tracks.csv" and summary["valid_fraction"] is None
    assert summary["files_in_fma_test_split"] == 1 and summary["files_seen"] == 4  # the test track is never decoded
    assert summary["files_not_in_subset"] == 1
    assert summary["tracks_per_split"] == {"train": 2, "valid": 2} and summary["segments_per_split"] == {"train": 4, "valid": 4}

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
    assert splits_of(tmp_path / "p") == {tid: {"valid" if tid in raised else fma.split_of(tid, fma.DEFAULT_VALID_FRACTION)} for tid in TRACKS}


def test_unknown_split_value_is_an_error(tmp_path):
    bad = tracks_csv(tmp_path / "tracks.csv", {"000010": ("small", "holdout"), "000011": ("small", "training")})
    with pytest.raises(MetadataError, match="'holdout' in column set/split; expected training, validation, test"):
        fma.read_tracks(bad, "small")
    good = tracks_csv(tmp_path / "ok.csv", {"000010": ("small", "test"), "000011": ("medium", "validation")})
    assert fma.read_tracks(good, "medium") == {10: "test", 11: "validation"}
    assert fma.read_subset_ids(good, "small") == {10}
