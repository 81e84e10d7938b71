"""`mixit separate` (mixitcli/batch.py): inputs, output naming, skipping, failures, through the
library and the CLI; one writer per stem file, stop signals and leftovers of killed runs;
--two-stems (issue 21)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli.batch import PlanError, find_inputs, plan
from mixitcli.cli import app
from mixitcli.inference import native_bf16
from mixitcli.lock import Holder
from mixitcli.model import model_to_dict
from mixitcli.model.official import load_official
from tests.builders import REPO
from tests.builders import tone as _tone

runner = CliRunner()
STEMS = ("bass", "drums", "vocals", "other")
SR = 44100


def noise(path: Path, seconds: float = 1.0, rate: int = 44100, channels: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(len(str(path))).standard_normal((int(seconds * rate), channels))
    sf.write(path, x.astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(official, tmp_path_factory) -> Path:
    model = load_official(official.weights("tiny4"), official.config("tiny4"))
    path = tmp_path_factory.mktemp("model") / "tiny4.pt"
    torch.save(model_to_dict(model), path)
    return path


def test_folders_are_walked_and_the_output_folder_left_out(tmp_path):
    noise(tmp_path / "music" / "a.wav")
    noise(tmp_path / "music" / "album" / "b.flac")
    noise(tmp_path / "music" / "stems" / "a" / "vocals.wav")  # a previous run's output
    (tmp_path / "music" / "notes.txt").write_text("not audio")
    found = find_inputs([tmp_path / "music"], exclude=tmp_path / "music" / "stems")
    assert [p.relative_to(tmp_path / "music").as_posix() for p, _ in found] == ["a.wav", "album/b.flac"]
    with pytest.raises(PlanError, match="no such file") as info:
        find_inputs([tmp_path / "missing.wav", tmp_path / "empty"])
    assert len(info.value.problems) == 2  # every problem at once


def test_output_names_and_template_fields(tmp_path):
    root = tmp_path / "in"
    found = [(root / "x" / "song.mp3", root), (tmp_path / "solo.wav", None)]
    jobs = plan(
        found, tmp_path / "out", stems=["vocals"], template="{folder}/{parent}-{track}.{stem}.{ext}", ext="flac"
    )
    assert jobs[0].outputs["vocals"] == tmp_path / "out" / "x" / "x-song.vocals.flac"
    assert jobs[1].outputs["vocals"] == tmp_path / "out" / f"{tmp_path.name}-solo.vocals.flac"


def test_colliding_names_and_input_overwrites_are_refused(tmp_path):
    found = [(tmp_path / "a" / "mixture.wav", tmp_path), (tmp_path / "b" / "mixture.wav", tmp_path)]
    with pytest.raises(PlanError, match=r"\{folder\}") as info:
        plan(found, tmp_path / "out", stems=STEMS)  # both would be out/mixture/<stem>.wav
    assert len(info.value.problems) == 4
    assert len(plan(found, tmp_path / "out", stems=STEMS, template="{parent}/{stem}.{ext}")) == 2
    with pytest.raises(PlanError, match="overwrite an input"):
        plan([(tmp_path / "a" / "mixture.wav", None)], tmp_path, stems=["vocals"], template="a/mixture.wav")
    with pytest.raises(PlanError, match="unknown field"):
        plan(found, tmp_path, stems=STEMS, template="{song}/{stem}.{ext}")


def test_cli_one_bad_file_among_good_ones(tmp_path, tiny_checkpoint):
    noise(tmp_path / "in" / "one.wav")
    noise(tmp_path / "in" / "sub" / "two.flac", rate=22050, channels=1)
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["separate", str(tmp_path / "in"), "--out", str(out), "-m", str(tiny_checkpoint), "--device", "cpu"]
    )
    assert result.exit_code == 1
    assert "broken.wav" in result.output and "1 file(s) failed" in result.output
    dtype = "bfloat16" if native_bf16() else "float32"  # --precision auto
    assert (
        f"cpu, {dtype}, torch" in result.output and "RTF" in result.output
    )  # device, dtype, backend, real-time factor
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == sorted(
        f"{t}/{s}.wav" for t in ("one", "two") for s in STEMS
    )
    two = sf.info(out / "two" / "vocals.wav")
    assert (two.samplerate, two.channels, two.frames) == (22050, 1, 22050)  # mono in, mono out, input rate
    assert not list(out.rglob(".*partial"))


def test_cli_stems_format_and_skip_existing(tmp_path, tiny_checkpoint):
    song = noise(tmp_path / "song.wav")
    out = tmp_path / "out"
    args = [
        "separate",
        str(song),
        "--out",
        str(out),
        "-m",
        str(tiny_checkpoint),
        "--stems",
        "vocals,drums",
        "--format",
        "flac",
        "--bits",
        "16",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "song").iterdir()) == ["drums.flac", "vocals.flac"]
    assert sf.info(out / "song" / "vocals.flac").subtype == "PCM_16"
    stamp = (out / "song" / "vocals.flac").stat().st_mtime_ns
    result = runner.invoke(app, args + ["--skip-existing"])
    assert result.exit_code == 0 and "skipped 1" in result.output
    assert (out / "song" / "vocals.flac").stat().st_mtime_ns == stamp


def test_cli_reports_bad_options_before_work(tmp_path, tiny_checkpoint):
    song = noise(tmp_path / "song.wav")
    base = ["separate", str(song), "--out", str(tmp_path / "out"), "-m", str(tiny_checkpoint)]
    for extra, message in (
        (["--stems", "voice"], "unknown stem"),
        (["--format", "mp3", "--bits", "float"], "--bits float needs --format wav"),
        (["--hop", "20"], "hop must be in"),
        (["--filename", "{nope}.{ext}"], "unknown field"),
    ):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 1 and message in result.output, (extra, result.output)
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["separate", str(song), "--out", str(tmp_path / "o"), "-m", "no-such-model"])
    assert result.exit_code == 1 and "Published models" in result.output


def test_cli_output_folder_is_the_input_folder(tmp_path, tiny_checkpoint):
    """Issue 11: `mixit separate DIR --out DIR` separates DIR's songs; a rerun does not take
    the stems it wrote for songs."""
    songs = tmp_path / "songs"
    noise(songs / "album" / "a.wav", seconds=0.5)
    args = ["separate", str(songs), "--out", str(songs), "-m", str(tiny_checkpoint), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(songs).as_posix() for p in songs.rglob("*.wav")) == sorted(
        ["album/a.wav"] + [f"a/{s}.wav" for s in STEMS]
    )
    result = runner.invoke(app, args + ["--skip-existing"])
    assert result.exit_code == 0 and "separated 0 file(s)" in result.output and "skipped 1" in result.output


def test_cli_full_output_disk_stops_with_one_message(tmp_path, tiny_checkpoint, monkeypatch):
    """Issue 11: libsndfile says only "System error"; a full disk is named as such, the batch
    stops (every other file would fail too) and no partial stem is left."""
    import shutil

    for name in ("one", "two"):
        noise(tmp_path / "in" / f"{name}.wav")
    out = tmp_path / "out"
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_disk_usage(p)._replace(free=4096))

    def full(self, data):
        raise RuntimeError("Error writing: System error.")  # what soundfile raises on ENOSPC

    monkeypatch.setattr("soundfile.SoundFile.write", full)
    result = runner.invoke(
        app, ["separate", str(tmp_path / "in"), "--out", str(out), "-m", str(tiny_checkpoint), "--device", "cpu"]
    )
    flat = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "no space left on the device of" in flat and "--skip-existing" in flat and "System error" not in flat
    assert "Stopped after 0 separated file(s)" in flat and "two.wav" not in flat  # not tried: same disk
    assert not [p for p in out.rglob("*") if p.is_file()]


# -- one writer per stem file, stop signals, leftovers of killed runs (issue 20) ------------------


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> list[Path]:
    """The files matching ``pattern`` under ``folder`` once there are some (the process still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.rglob(pattern)) if folder.is_dir() else []
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the separate process ended ({proc.returncode}) before writing: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"no {pattern} under {folder} after {timeout} s")


def test_sigterm_second_writer_and_leftovers(tmp_path, tiny_checkpoint):
    """A real SIGTERM to `mixit separate` while it writes the stems (issue 20: it left hidden
    .STEM.wav.partial files that no later run removed): exit 143, nothing left. A second
    separate of the same song meanwhile is refused, naming the first, and leaves its partial
    files alone (issue 20: both printed "done" with one song's audio in the other's stems). A
    rerun with --skip-existing removes what a kill -9 leaves (a partial with a dead pid, one
    without a pid from older versions, a stale lock), says so, and finishes."""
    song = noise(tmp_path / "song.wav", seconds=0.5)
    out = tmp_path / "stems"
    base = ["separate", str(song), "--out", str(out), "-m", str(tiny_checkpoint), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # one core: the other is this test's
    # 0.25 s chunks every 0.0125 s: 40 forward passes, slow enough to be caught writing; the
    # partial files appear after the first one
    first = subprocess.Popen(
        [sys.executable, "-m", "mixitcli", *base, "--chunk", "0.25", "--hop", "0.0125"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        partials = _wait_for(".*.partial", out, first)
        second = runner.invoke(app, base)
        said = " ".join(second.output.split())
        assert (
            second.exit_code == 1 and "being written by another command" in said and f"(process {first.pid} on" in said
        ), said
        assert all(p.exists() for p in partials)  # the second run did not touch the first's files
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped: interrupted by SIGTERM" in stderr and "--skip-existing" in stderr and "Traceback" not in stderr
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # no partial, no lock, no stem

    # what a kill -9 leaves behind
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    leftovers = [out / "song" / f".vocals.wav.{dead}.partial", out / "song" / ".bass.wav.partial"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF half a stem")
    stale = dataclasses.replace(Holder.this_process(), pid=int(dead), command="mixit separate song.wav")
    (out / "song" / ".drums.wav.lock").write_text(json.dumps(dataclasses.asdict(stale)))
    result = runner.invoke(app, base + ["--skip-existing"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"took over the lock left by `mixit separate song.wav` (process {dead} on" in said
    assert sorted(p.name for p in (out / "song").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert all(sf.info(out / "song" / f"{s}.wav").frames == 44100 // 2 for s in STEMS)


def test_non_utf8_name_is_separated_and_a_failed_song_leaves_no_folder(tmp_path, tiny_checkpoint):
    """Issue 20: a file name that is not UTF-8 failed and left an empty OUT/<track>/; so did
    any song that failed after its folder was made (here: a WAV without samples)."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9 \xff.wav")  # Latin-1 bytes: not UTF-8
    try:
        os.replace(noise(folder / "song.wav"), folder / name)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    sf.write(folder / "empty.wav", np.zeros((0, 2), np.float32), 44100)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["separate", str(folder), "--out", str(out), "-m", str(tiny_checkpoint), "--device", "cpu"]
    )
    assert result.exit_code == 1 and "empty.wav" in result.output and "1 file(s) failed" in result.output
    assert sorted(p.name for p in out.iterdir()) == [os.fsdecode(b"caf\xe9 \xff")]  # no empty out/empty/
    assert sorted(p.name for p in (out / os.fsdecode(b"caf\xe9 \xff")).iterdir()) == sorted(f"{s}.wav" for s in STEMS)


def test_two_stems_with_a_published_four_stem_model(official, tmp_path):
    """`mixit separate --two-stems vocals` (issue 21) with the authors' model format: vocals.wav is the
    vocals output, no_vocals.wav the sum of bass, drums and other, as written by a plain run."""
    from typer.testing import CliRunner

    from mixitcli.cli import app

    runner = CliRunner()
    song = tmp_path / "song.wav"
    sf.write(song, _tone(1.0, SR, 2).T, SR)
    model = str(official.folder("tiny4"))
    common = [str(song), "--model", model, "--device", "cpu", "--bits", "float"]
    plain = runner.invoke(app, ["separate", *common, "--out", str(tmp_path / "four")])
    two = runner.invoke(app, ["separate", *common, "--out", str(tmp_path / "two"), "--two-stems", "vocals"])
    assert plain.exit_code == 0 and two.exit_code == 0, plain.output + two.output
    assert sorted(p.name for p in (tmp_path / "two" / "song").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    four = {s: sf.read(tmp_path / "four" / "song" / f"{s}.wav")[0] for s in ("bass", "drums", "vocals", "other")}
    np.testing.assert_array_equal(sf.read(tmp_path / "two" / "song" / "vocals.wav")[0], four["vocals"])
    np.testing.assert_allclose(
        sf.read(tmp_path / "two" / "song" / "no_vocals.wav")[0], four["bass"] + four["drums"] + four["other"], atol=1e-6
    )
    wrong = runner.invoke(app, ["separate", *common, "--out", str(tmp_path / "x"), "--two-stems", "guitar"])
    assert wrong.exit_code == 1 and isinstance(wrong.exception, SystemExit)
    assert "--two-stems guitar: this model outputs bass, drums, vocals, other; name one of them" in " ".join(
        wrong.output.split()
    )
    assert not (tmp_path / "x").exists()
