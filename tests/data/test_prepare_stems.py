"""`mixit prepare-stems` (issue 21) through the real CLI, on small trees of both layouts: the stem
set, --rest, silence for a missing stem, a summed mixture, the residual warning, MoisesDB's
categories and split, and the clear errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data.splits import held_out_tracks
from tests.builders import flat, noise, write

from .conftest import SR

runner = CliRunner()


def prepare(root: Path, out: Path, *options: str):
    return runner.invoke(
        app, ["prepare-stems", str(root), "--out", str(out), "--workers", "0", "--no-progress", *options]
    )


def read(path) -> np.ndarray:
    return sf.read(str(path), dtype="float32", always_2d=True)[0]


# Songs of 9 s (one 8 s SAD segment each); what each song holds in ROOT/train (test: one song).
FOLDER_SONGS = {
    "One": ("guitar", "bass", "keys", "mixture"),
    "Two": ("bass", "keys", "mixture"),  # no guitar: silence, counted
    "Three": ("guitar", "bass", "keys"),  # no mixture: the sum of its stems
    "Four": ("guitar", "bass", "keys", "mixture+"),  # a mixture louder than its stems: a warning
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for k, (name, files) in enumerate({**FOLDER_SONGS, "Test": ("guitar", "bass", "keys", "mixture")}.items()):
        folder = root / ("test" if name == "Test" else "train") / name
        stems = {
            s: noise(9, amp=0.02 * (j + 1), seed=10 * k + j)
            for j, s in enumerate(("guitar", "bass", "keys"))
            if s in files
        }
        for s, x in stems.items():
            write(folder / f"{s}.wav", x)
        if "mixture" in files:
            write(folder / "mixture.wav", sum(stems.values()))
        elif "mixture+" in files:
            write(folder / "mixture.wav", sum(stems.values()) + noise(9, amp=0.01, seed=99))
    return root


def test_folders_layout_rest_silence_summed_mixture_and_residual(folders, tmp_path):
    out = tmp_path / "prep"
    result = prepare(folders, out, "--stems", "guitar", "--rest", "rest", "--valid-tracks", "1")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "stems: guitar, rest (rest = bass + keys)" in text
    assert "silence for a stem a song lacks: guitar in 1 song(s)" in text
    assert "mixture: the sum of the stems in 1 song(s) without mixture.wav" in text
    # Four's mixture adds noise of amplitude 0.01 to stems of 0.02, 0.04, 0.06: powers 1 / (4 + 16 + 36 + 1) = -17.6 dB
    assert "warning: Four: mixture.wav differs from the sum of its stem files by -17.6 dB" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stems"] == ["guitar", "rest"] and summary["rest_of"] == ["bass", "keys"]
    assert summary["silent"] == {"guitar": ["Two"], "rest": []} and summary["mixture_summed"] == ["Three"]
    assert summary["tracks"] == {"train": 3, "valid": 1, "test": 1}
    assert (out / "valid.txt").read_text().split() == held_out_tracks(list(FOLDER_SONGS), 1)
    rows = {r["track"]: r for r in map(json.loads, (out / "tracks.jsonl").read_text().splitlines())}
    assert rows["Two"]["stems"]["guitar"] is None  # silence: no file at all
    assert rows["One"]["stems"]["guitar"] == str(folders / "train" / "One" / "guitar.wav")  # a single file as it is
    song = folders / "train" / "One"
    np.testing.assert_allclose(
        read(rows["One"]["stems"]["rest"]), read(song / "bass.wav") + read(song / "keys.wav"), atol=1e-6
    )
    three = folders / "train" / "Three"
    np.testing.assert_allclose(
        read(rows["Three"]["mixture"]), sum(read(three / f"{s}.wav") for s in ("guitar", "bass", "keys")), atol=1e-6
    )
    segments = [json.loads(line) for line in (out / "salient" / "guitar.jsonl").read_text().splitlines()]
    assert {s["track"] for s in segments} <= set(FOLDER_SONGS) - {"Two"} and all(
        s["length"] == 8 * SR for s in segments
    )

    dropped = prepare(
        folders, tmp_path / "dropped", "--stems", "keys,guitar", "--valid-tracks", "1"
    )  # no --rest: bass is dropped
    assert dropped.exit_code == 0 and "stems: keys, guitar; dropped (no --rest): bass" in flat(dropped.output)
    everything = prepare(
        folders, tmp_path / "all", "--valid-tracks", "1"
    )  # no --stems: every stem found, alphabetically
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["stems"] == ["bass", "guitar", "keys"], (
        everything.output
    )


@pytest.mark.parametrize("case", ["unknown stem", "repeated", "rest listed", "rest alone", "lengths", "rates"])
def test_bad_input_is_one_clear_error_and_nothing_is_written(folders, tmp_path, case):
    root, options = folders, ["--valid-tracks", "1"]
    if case == "unknown stem":
        options += ["--stems", "guitar,piano"]
        expected = "--stems: no song has piano (no file of that name); the songs have: bass, guitar, keys"
    elif case == "repeated":
        options += ["--stems", "guitar,bass,guitar"]
        expected = "--stems guitar,bass,guitar: repeated: guitar (each stem is named once)"
    elif case == "rest listed":
        options += ["--stems", "guitar,bass", "--rest", "bass"]
        expected = "repeated: bass"
    elif case == "rest alone":
        options += ["--rest", "rest"]
        expected = "--rest rest needs --stems"
    else:
        root = tmp_path / "tree"
        shutil.copytree(folders, root)
        if case == "lengths":
            write(root / "train" / "One" / "keys.wav", noise(8, seed=5))
            expected = "train/One/keys.wav: 352800 samples, but mixture.wav has 396900"
        else:
            write(root / "train" / "Two" / "bass.wav", noise(9, rate=48000), rate=48000)
            expected = "train/Two/bass.wav: 48000 Hz, expected 44100"
    result = prepare(root, tmp_path / "out", *options)
    assert result.exit_code == 1 and expected in flat(result.output), result.output
    assert isinstance(result.exception, SystemExit) and not (tmp_path / "out").exists()  # handled: no traceback


def moisesdb_track(root: Path, uuid: str, k: int) -> None:
    """A MoisesDB track: data.json, guitar in two files (one mono, one shorter), vocals, piano and bass."""
    folder = root / "moisesdb_v0.1" / uuid
    stems = []
    for j, (category, n_files) in enumerate((("vocals", 1), ("guitar", 2), ("piano", 1), ("bass", 1))):
        tracks = []
        for f in range(n_files):
            channels, seconds = (1, 9) if f == 1 and category == "guitar" else (2, 8.5 if category == "bass" else 9)
            write(
                folder / category / f"{category}{f}.wav",
                noise(seconds, channels=channels, amp=0.03, seed=100 * k + 10 * j + f),
            )
            tracks.append({"id": f"{category}{f}", "extension": "wav", "trackType": "x", "has_bleed": False})
        stems.append({"stemName": category, "tracks": tracks})
    (folder / "data.json").write_text(
        json.dumps({"artist": f"Artist {k}", "song": f"Song {k}", "genre": "pop", "stems": stems})
    )


def test_moisesdb_layout_sums_categories_into_the_stems_named(tmp_path):
    root = tmp_path / "moisesdb"
    uuids = [f"0c{k}f-uuid" for k in range(4)]
    for k, uuid in enumerate(uuids):
        moisesdb_track(root, uuid, k)
    out = tmp_path / "prep"
    result = prepare(
        root,
        out,
        "--layout",
        "moisesdb",
        "--stems",
        "vocals,guitar",
        "--rest",
        "rest",
        "--test-tracks",
        "1",
        "--valid-tracks",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "tracks: 2 train, 1 valid, 1 test" in flat(result.output)
    assert "test: 1 of 4 tracks (chosen by a hash of the track folder's name" in flat(result.output)
    assert (out / "test.txt").read_text().split() == held_out_tracks(uuids, 1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stems"] == ["vocals", "guitar", "rest"] and summary["rest_of"] == ["bass", "piano"]
    row = json.loads((out / "tracks.jsonl").read_text().splitlines()[0])
    track = root / "moisesdb_v0.1" / row["track"]
    assert (
        row["title"] == f"Artist {uuids.index(row['track'])} - Song {uuids.index(row['track'])}"
        and row["frames"] == 9 * SR
    )
    guitar = read(track / "guitar" / "guitar0.wav") + read(track / "guitar" / "guitar1.wav")  # mono: both channels
    np.testing.assert_allclose(read(row["stems"]["guitar"]), guitar, atol=1e-6)
    bass = np.pad(read(track / "bass" / "bass0.wav"), ((0, SR // 2), (0, 0)))  # 8.5 s: padded with silence
    np.testing.assert_allclose(read(row["stems"]["rest"]), bass + read(track / "piano" / "piano0.wav"), atol=1e-6)
    np.testing.assert_allclose(
        read(row["mixture"]),
        guitar + bass + read(track / "piano" / "piano0.wav") + read(track / "vocals" / "vocals0.wav"),
        atol=1e-5,
    )

    (root / "moisesdb_v0.1" / uuids[0] / "piano" / "piano0.wav").unlink()
    broken = prepare(root, tmp_path / "broken", "--layout", "moisesdb")
    assert (
        broken.exit_code == 1
        and f"moisesdb_v0.1/{uuids[0]}/piano/piano0.wav: listed in data.json but missing" in flat(broken.output)
    )
