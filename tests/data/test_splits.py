"""Validation splits that exist for your own music (mixitcli/data/splits.py; issue 10, items 1
and 2), through the real CLI: prepare-musdb holds out tracks when the standard validation names
are absent, and --valid-tracks is refused where they exist. prepare-fma's minimum of 2 held-out
tracks is in tests/data/test_fma.py, finetune refusing an empty validation split in
tests/train/test_loop.py."""

from __future__ import annotations

import json

from mixitcli.data.musdb import scan_musdb
from mixitcli.data.splits import held_out_tracks
from tests.builders import OWN, flat
from tests.builders import prepare_musdb_cli as prepare


def test_held_out_tracks_are_deterministic_by_name():
    names = [f"Artist {k} - Title" for k in range(40)]
    chosen = held_out_tracks(names)
    assert len(chosen) == 4  # 10 % of 40
    assert held_out_tracks(list(reversed(names))) == chosen  # the order given does not matter
    assert (
        len(held_out_tracks(names[:5])) == 2 and len(held_out_tracks(names[:2])) == 1
    )  # at least 2, one kept for training
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
