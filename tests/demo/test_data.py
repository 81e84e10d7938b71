"""`mixit make-demo-data` (mixitcli/demo/data.py): the two generators and the command. The
synthesiser of the songs is in tests/demo/test_synth.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from mixitcli import audio
from mixitcli.cli import app
from mixitcli.data import fma
from mixitcli.data.musdb import SOURCES, VALIDATION_TRACKS, scan_musdb, validate_musdb
from mixitcli.demo.data import (
    MARKER,
    DemoDataError,
    exact_sum_int16,
    make_demo_data,
    make_musdb,
    make_unlabeled,
)
from mixitcli.stems import STEMS

runner = CliRunner()
SR = audio.SAMPLE_RATE


@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("musdb")
    make_musdb(root, n_train=3, n_test=1, seconds=10.0, seed=7, n_valid=2)
    return root


@pytest.fixture(scope="module")
def unlabeled_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unlabeled")
    make_unlabeled(folder, n_songs=5, seconds=4.0, seed=3)
    return folder


# --------------------------------------------------------------------------- int16 stems


def test_exact_sum_int16_never_clips_and_sums_exactly():
    rng = np.random.default_rng(0)
    stems = rng.uniform(-0.9, 0.9, (4, 2, 1000))  # the sum reaches ~2.5: needs a common gain
    stems[:, :, 0] = 0.9  # a full-scale peak that adds up
    q, mixture = exact_sum_int16(stems)
    assert q.dtype == mixture.dtype == np.int16
    np.testing.assert_array_equal(mixture.astype(np.int32), q.astype(np.int32).sum(axis=0))
    assert np.abs(mixture.astype(np.int32)).max() <= 32767
    ratio = q.astype(np.float64) / np.where(stems == 0, 1, stems)
    assert np.allclose(ratio[np.abs(stems) > 0.1], ratio[0, 0, 0], rtol=1e-3)  # one gain for all
    quiet, _ = exact_sum_int16(stems * 0.01)  # quiet input keeps its level
    assert abs(np.abs(quiet).max() - round(0.009 * 32767)) <= 1


def test_musdb_mixture_is_the_exact_sum_of_the_stems(musdb_root):
    for folder in sorted(musdb_root.glob("*/*")):
        data = {
            s: sf.read(str(folder / f"{s}.wav"), dtype="int16", always_2d=True)[0].astype(np.int32) for s in SOURCES
        }
        np.testing.assert_array_equal(data["mixture"], sum(data[s] for s in STEMS))
        assert np.abs(data["mixture"]).max() > 3000  # not silent


def test_musdb_layout_is_accepted(musdb_root):
    validate_musdb(musdb_root)  # raises LayoutError listing any problem
    train, valid, test = (scan_musdb(musdb_root, s) for s in ("train", "valid", "test"))
    assert [t.name for t in valid] == sorted(VALIDATION_TRACKS[:2])
    assert len(train) == 1 and len(test) == 1
    assert all(" - " in t.name for t in train + test)
    for track in train + valid + test:
        assert sorted(p.name for p in track.folder.iterdir()) == sorted(f"{s}.wav" for s in SOURCES)
        for source in SOURCES:
            info = sf.info(str(track.path(source)))
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 2, "PCM_16", 10 * SR)


def test_musdb_stems_have_silence_and_activity(musdb_root):
    """On the written files: each stem is silent in some quarter second and active in most."""
    window = SR // 4
    for track in scan_musdb(musdb_root, "train") + scan_musdb(musdb_root, "valid"):
        for stem in STEMS:
            x = track.load(stem)
            power = np.mean(x[:, : x.shape[1] // window * window].reshape(2, -1, window) ** 2, axis=(0, 2))
            assert power.min() < 1e-6 * power.max(), (track.name, stem)
            assert (power > 1e-3 * power.max()).mean() >= 0.5, (track.name, stem)


# --------------------------------------------------------------------------- unlabeled


def test_unlabeled_mixes_formats_and_rates(unlabeled_dir):
    files = sorted(p for p in unlabeled_dir.rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".flac", ".mp3", ".wav", ".ogg"}
    infos = [audio.info(p) for p in files]
    assert {i.sample_rate for i in infos} == {44100, 48000}
    assert all(i.channels == 2 for i in infos)
    for p, i in zip(files, infos):
        assert abs(i.seconds - 4.0) < 0.05, p
    found = fma.scan(fma.locate_audio_dir(unlabeled_dir))  # what prepare-fma --audio-dir lists
    assert len(found.files) == 5 and found.other_files == 0


def test_unlabeled_songs_differ(unlabeled_dir):
    mixtures = [audio.read(p, sample_rate=SR)[0][0, : 3 * SR] for p in sorted(unlabeled_dir.rglob("*.*"))]
    corr = np.corrcoef(np.stack(mixtures))
    assert np.abs(corr[~np.eye(len(mixtures), dtype=bool)]).max() < 0.3


def test_same_seed_same_files(tmp_path):
    for name in ("a", "b"):
        make_unlabeled(tmp_path / name / "u", 4, 2.0, seed=11)
        make_musdb(tmp_path / name / "m", 1, 1, 2.0, seed=11, n_valid=0)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 + 2 * 5
    for rel in files:
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        if rel.suffix == ".ogg":  # Ogg streams carry a random serial number: compare the audio
            np.testing.assert_array_equal(audio.read(a)[0], audio.read(b)[0])
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def test_generators_report_every_bad_argument():
    with pytest.raises(DemoDataError) as info:
        make_musdb("/nonexistent", n_train=-1, n_test=-2, seconds=0.0, seed=0, n_valid=0)
    assert len(info.value.problems) == 4  # n_train, n_test, seconds, n_valid > n_train
    with pytest.raises(DemoDataError, match="seconds"):
        make_unlabeled("/nonexistent", 1, float("nan"), 0)


# --------------------------------------------------------------------------- the command


def test_cli_writes_both_sets(tmp_path):
    out = tmp_path / "demo"
    args = [
        "make-demo-data",
        str(out),
        "--songs",
        "2",
        "--musdb-train",
        "2",
        "--musdb-test",
        "1",
        "--seconds",
        "3",
        "--seed",
        "5",
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / MARKER).read_text())
    tracks = summary["musdb"]["tracks"]  # by default half the train songs, at most 3, get validation names
    assert summary["complete"] and tracks["valid"] == [VALIDATION_TRACKS[0]] and len(tracks["train"]) == 1
    assert len(list((out / "unlabeled").rglob("*.*"))) == 2
    assert len(list((out / "musdb" / "train").iterdir())) == 2 and len(list((out / "musdb" / "test").iterdir())) == 1
    # a second run refuses to mix old and new files, unless told to replace them
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "--overwrite" in again.output
    (out / "unlabeled" / "stale.wav").write_bytes(b"")
    replaced = runner.invoke(app, [*args, "--overwrite", "--songs", "1"])
    assert replaced.exit_code == 0, replaced.output
    assert len(list((out / "unlabeled").rglob("*.*"))) == 1


def test_overwrite_never_deletes_what_it_did_not_make(tmp_path):
    (tmp_path / "musdb").mkdir()
    (tmp_path / "musdb" / "precious.wav").write_bytes(b"x")
    with pytest.raises(DemoDataError, match="not made by make-demo-data"):
        make_demo_data(
            tmp_path, songs=1, musdb_train=1, musdb_test=0, musdb_valid=0, seconds=1.0, overwrite=True, progress=False
        )
    assert (tmp_path / "musdb" / "precious.wav").exists()


@pytest.mark.parametrize(
    "bad, named",
    [
        (["--songs", "-1"], "--songs"),
        (["--musdb-train", "-3"], "--musdb-train"),
        (["--musdb-test", "-1"], "--musdb-test"),
        (["--seconds", "0"], "--seconds"),
        (["--seconds", "-5"], "--seconds"),
        (["--seed", "-1"], "--seed"),
        (["--musdb-valid", "15"], "--musdb-valid"),
        (["--musdb-train", "2", "--musdb-valid", "3"], "--musdb-valid"),
    ],
)
def test_cli_rejects_bad_arguments_before_writing(tmp_path, bad, named):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["make-demo-data", str(out), "--no-progress", *bad])
    assert result.exit_code != 0
    assert named in result.output
    assert not out.exists()


def test_cli_help_explains_every_option():
    result = runner.invoke(app, ["make-demo-data", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in (
        "--songs",
        "--musdb-train",
        "--musdb-valid",
        "--musdb-test",
        "--seconds",
        "--seed",
        "--overwrite",
        "--progress",
    ):
        assert option in result.output, option
