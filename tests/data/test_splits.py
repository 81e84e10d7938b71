"""Validation splits that exist for your own music (issue 10, items 1 and 2), through the real CLI:
prepare-musdb holds out tracks when the standard validation names are absent, finetune refuses
an empty validation split, prepare-fma holds out at least 2 of 4 or more tracks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data.fma import split_of
from mixitcli.data.musdb import held_out_tracks, scan_musdb

from .conftest import noise, write

runner = CliRunner()
OWN = [f"Own Band - Song {k}" for k in range(5)]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def own_stems(tmp_path_factory) -> Path:
    """A MUSDB18-HQ-layout tree of 5 training songs, none named like a standard validation track."""
    root = tmp_path_factory.mktemp("own")
    for k, name in enumerate(OWN + ["Own Band - Test"]):
        folder = root / ("test" if name.endswith("Test") else "train") / name
        stems = {s: noise(9, amp=0.05, seed=10 * k + j) for j, s in enumerate(("vocals", "drums", "bass", "other"))}
        for s, x in stems.items():
            write(folder / f"{s}.wav", x)
        write(folder / "mixture.wav", sum(stems.values()))
    return root


def prepare(root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["prepare-musdb", str(root), "--out", str(out), "--workers", "0", "--no-progress", *extra])


def test_held_out_tracks_are_deterministic_by_name():
    names = [f"Artist {k} - Title" for k in range(40)]
    chosen = held_out_tracks(names)
    assert len(chosen) == 4  # 10 % of 40
    assert held_out_tracks(list(reversed(names))) == chosen  # the order given does not matter
    assert len(held_out_tracks(names[:5])) == 2 and len(held_out_tracks(names[:2])) == 1  # at least 2, one kept for training
    assert held_out_tracks(names[:1]) == []
    assert set(chosen) <= set(held_out_tracks(names + ["Artist 99 - New"]))  # one more track (5 held out) keeps them


def test_prepare_musdb_holds_out_validation_tracks_of_own_music(own_stems, tmp_path):
    result = prepare(own_stems, tmp_path / "a")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "3 train, 2 valid, 1 test" in text
    assert "none of the standard validation tracks is in train/, so 2 of the 5 training tracks are held out" in text
    valid = (tmp_path / "a" / "valid.txt").read_text().split("\n")[:-1]
    train = (tmp_path / "a" / "train.txt").read_text().split("\n")[:-1]
    assert valid == held_out_tracks(OWN) and sorted(valid + train) == OWN and not set(valid) & set(train)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["validation"] == "held out" and summary["validation_tracks"] == valid
    assert [t.name for t in scan_musdb(own_stems, "valid")] == valid  # eval --subset valid agrees
    # the held-out songs contribute no training segments
    segments = (tmp_path / "a" / "salient" / "vocals.jsonl").read_text()
    assert all(name not in segments for name in valid) and all(name in segments for name in train)

    result = prepare(own_stems, tmp_path / "b", "--valid-tracks", "1")
    assert result.exit_code == 0 and "4 train, 1 valid" in flat(result.output)
    result = prepare(own_stems, tmp_path / "c", "--valid-tracks", "5")
    assert result.exit_code == 1 and "hold out between 1 and 4" in flat(result.output)
    assert not (tmp_path / "c").exists()  # refused before any work


def test_valid_tracks_is_refused_when_the_standard_ones_exist(musdb_root, tmp_path):
    result = prepare(musdb_root, tmp_path / "o", "--valid-tracks", "1")
    assert result.exit_code == 1 and "drop --valid-tracks" in flat(result.output)


def test_finetune_refuses_an_empty_validation_split(own_stems, tmp_path):
    out = tmp_path / "prep"
    assert prepare(own_stems, out).exit_code == 0
    (out / "valid.txt").write_text("")  # as a folder prepared before issue 10 looked
    result = runner.invoke(app, ["finetune", "--data", str(out), "--out", str(tmp_path / "run"), "--size", "tiny", "--device", "cpu"])
    assert result.exit_code == 1
    text = flat(result.output)
    assert "lists no validation songs" in text and "mixit prepare-musdb ROOT --out DIR" in text and "--valid-tracks" in text
    assert not (tmp_path / "run" / "checkpoints").exists()


def tracks_dir(root: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        write(root / f"{name}.wav", noise(10.5, seed=k))
    return root


def test_prepare_fma_holds_out_at_least_two_of_four_or_more_tracks(tmp_path):
    names = [f"song{k}" for k in range(6)]
    assert all(split_of(n, 0.01) == "train" for n in names)  # the fraction alone holds out none
    src = tracks_dir(tmp_path / "music", names)
    result = runner.invoke(app, ["prepare-fma", "--audio-dir", str(src), "--out", str(tmp_path / "p"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["tracks_per_split"] == {"train": 4, "valid": 2} and summary["valid_tracks_raised"] == 2
    assert "validation: 2 of 6 tracks held out (2 added: --valid-fraction 0.01 gave 0" in flat(result.output)
    rows = [json.loads(line) for line in (tmp_path / "p" / "manifest.jsonl").read_text().splitlines()]
    assert len({r["track"] for r in rows if r["split"] == "valid"}) == 2


def test_prepare_fma_with_three_tracks_says_pretrain_needs_more(tmp_path):
    src = tracks_dir(tmp_path / "music", ["a", "b", "c"])
    result = runner.invoke(app, ["prepare-fma", "--audio-dir", str(src), "--out", str(tmp_path / "p"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0 and "pretrain needs at least 2 validation tracks" in flat(result.output)
    result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "run"), "--size", "tiny", "--device", "cpu"])
    assert result.exit_code == 1
    assert "at least two tracks. Hold out more tracks" in flat(result.output)  # a sentence each
