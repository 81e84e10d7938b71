"""Chunked separation (mixitcli/separate.py): the official chunked inference, streaming = in
memory, files in and out, non-finite input samples read as 0 (issue 10). `mixit separate`'s
inputs, output names, --two-stems and failures are in tests/test_batch.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli import audio
from mixitcli.cli import app
from mixitcli.model import build_model, model_to_dict
from mixitcli.model.official import load_official
from mixitcli.separate import (
    ChunkedSeparator,
    ChunkOptions,
    SeparationError,
    overlap_window,
    resampled_length,
    separate_array,
    separate_file,
)
from tests import official as rule
from tests.builders import REPO, css_reference, flat, float_wav, noise, rel_err
from tests.builders import tone as _tone
from tests.fakes import ContextModel, GainModel

runner = CliRunner()
SR = 44100
STEMS = ("vocals", "bass", "drums", "other")


@pytest.fixture(scope="module")
def tiny4(official):
    """The authors' tiny model and its 19 s input; the chunked inference itself is compared with
    theirs in tests/model/test_official.py."""
    model = load_official(official.weights("tiny4"), official.config("tiny4"))
    return model, {"long_mixture": rule.long_mixture()}


@pytest.mark.parametrize("hop_fraction", [0.5, 0.75, 1.0])
@pytest.mark.parametrize("length", [5000, SR, SR + 1, SR + SR // 2, 100_000, 5 * SR + 123])
def test_chunking_matches_css_reference(length, hop_fraction):
    torch.manual_seed(length)
    model = ContextModel()
    x = torch.randn(2, length)
    x[:, SR // 2 : SR // 2 + 3000] = 0.0  # a stretch of silence changes nothing
    out = separate_array(model, x, chunk_s=1.0, hop_s=hop_fraction)
    expected = css_reference(model, x, SR, int(round(hop_fraction * SR)))
    assert out.shape == (4, 2, length)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", ["equal", "triangle", "hann"])
@pytest.mark.parametrize("hop_s", [0.3, 0.5, 1.0])
def test_any_window_and_hop_reconstruct_a_linear_model(window, hop_s):
    # Outputs are gains times the input, so a normalised overlap-add must give exactly that.
    model = GainModel()
    x = torch.randn(2, 3 * SR + 777)
    out = separate_array(model, x, chunk_s=1.0, hop_s=hop_s, window=window)
    torch.testing.assert_close(out, model.gains.view(4, 1, 1) * x, rtol=1e-5, atol=1e-6)
    assert (overlap_window(window, 1000) > 0).all()


def test_silent_chunks_skip_the_model():
    model = GainModel()
    x = torch.zeros(2, 4 * SR)
    x[:, : SR // 2] = 1.0  # only the first chunk (0-1 s) holds sound; chunks start every 0.5 s
    out = separate_array(model, x, chunk_s=1.0, hop_s=0.5)
    assert model.calls == 1  # 7 chunks, 6 of them silent
    assert out[..., SR:].abs().max() == 0
    torch.testing.assert_close(out[..., : SR // 2], model.gains.view(4, 1, 1) * x[:, : SR // 2])


@pytest.fixture(scope="module")
def short_song(tiny4):
    model, io = tiny4
    x = io["long_mixture"][0, :, : int(3.3 * SR)]
    return x, separate_array(model, x, chunk_s=1.0, hop_s=0.5)


@pytest.mark.parametrize("block,batch_size", [(997, 1), (SR // 2, 3), (3 * SR, 2)])
def test_streaming_equals_in_memory(tiny4, short_song, block, batch_size):
    model, _ = tiny4
    x, whole = short_song
    stream = ChunkedSeparator(model, options=ChunkOptions(chunk_s=1.0, hop_s=0.5, batch_size=batch_size))
    parts = [stream.push(x[:, i : i + block]) for i in range(0, x.shape[1], block)] + [stream.finish()]
    assert all(p.shape[:2] == (4, 2) for p in parts)
    assert rel_err(torch.cat(parts, dim=-1), whole) < 1e-6


def test_input_shorter_than_the_stft_window():
    out = separate_array(GainModel(), torch.ones(2, 100))
    torch.testing.assert_close(out, GainModel().gains.view(4, 1, 1) * torch.ones(2, 100))


def test_bad_options_are_reported_together():
    with pytest.raises(SeparationError, match="hop.*window.*batch"):
        ChunkOptions(chunk_s=1.0, hop_s=2.0, window="box", batch_size=0)
    with pytest.raises(ValueError, match=r"\(2 channels, samples\)"):
        ChunkedSeparator(GainModel()).push(torch.zeros(3, 10))


@pytest.mark.parametrize("rate,channels,out_rate", [(22050, 1, None), (48000, 2, None), (44100, 1, 32000)])
def test_file_round_trip_rate_and_channels(tmp_path, rate, channels, out_rate):
    x = _tone(2.5, rate, channels)
    src = tmp_path / "song.flac"
    sf.write(src, x.T if channels > 1 else x[0], rate)
    model = GainModel()
    outputs = {s: tmp_path / f"{s}.wav" for s in model.stems}
    result = separate_file(
        model, src, outputs, options=ChunkOptions(chunk_s=1.0, hop_s=0.5), sample_rate=out_rate, bits="float"
    )
    assert result.seconds == pytest.approx(2.5, abs=1e-3)
    expected_rate = out_rate or rate
    for k, stem in enumerate(model.stems):
        y, sr = sf.read(outputs[stem], always_2d=True)
        assert sr == expected_rate and y.shape == (resampled_length(x.shape[1], rate, expected_rate), channels)
        if out_rate is None:  # back at the input's rate: the gain times the input, up to resampling
            err = np.abs(y.T - model.gains[k].item() * x)[:, 2000:-2000].max()
            assert err < 1e-3 * model.gains[k].item()


@pytest.mark.parametrize(
    "suffix,bits,subtype",
    [
        (".wav", "16", "PCM_16"),
        (".wav", "24", "PCM_24"),
        (".wav", "float", "FLOAT"),
        (".flac", "24", "PCM_24"),
        (".mp3", "24", "MPEG_LAYER_III"),
    ],
)
def test_output_formats(tmp_path, suffix, bits, subtype):
    src = tmp_path / "in.wav"
    sf.write(src, _tone(1.5, SR, 2).T, SR)
    out = tmp_path / f"vocals{suffix}"
    separate_file(GainModel(), src, {"vocals": out}, bits=bits)
    info = sf.info(out)
    assert info.subtype == subtype and info.channels == 2 and info.samplerate == SR
    assert abs(info.frames - int(1.5 * SR)) <= (2000 if suffix == ".mp3" else 0)
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_formats_only_ffmpeg_reads_are_streamed_too(tmp_path):
    wav, m4a = tmp_path / "in.wav", tmp_path / "in.m4a"
    sf.write(wav, _tone(2.0, SR, 2).T, SR)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    whole, rate = audio.read(m4a)
    blocks = list(audio.read_blocks(m4a, 10_000))
    assert rate == SR and len(blocks) > 1 and all(b.shape[0] == 2 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    result = separate_file(GainModel(), m4a, {"bass": tmp_path / "bass.wav"}, bits="float")
    assert sf.info(tmp_path / "bass.wav").frames == whole.shape[1] and result.seconds == pytest.approx(
        whole.shape[1] / SR
    )


def test_refuses_to_overwrite_the_input(tmp_path):
    src = tmp_path / "vocals.wav"
    sf.write(src, _tone(1.0, SR, 2).T, SR)
    before = src.read_bytes()
    with pytest.raises(SeparationError, match="overwrite the input"):
        separate_file(GainModel(), src, {"vocals": src})
    assert src.read_bytes() == before


PEAK_SCRIPT = """
import sys
from pathlib import Path
from mixitcli.separate import separate_file
from tests.fakes import GainModel
separate_file(GainModel(), sys.argv[1], {"vocals": Path(sys.argv[2])}, bits="16")
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory from /proc (Linux)")
def test_memory_does_not_grow_with_the_song(tmp_path):
    # glibc raises its mmap threshold as blocks are freed, which lets the heap's high-water
    # mark drift by tens of MB whatever the program does; a fixed threshold measures ours.
    env = dict(os.environ, PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="131072")
    peaks = {}
    for seconds in (24, 360):
        src = tmp_path / f"{seconds}.wav"
        with sf.SoundFile(src, "w", samplerate=SR, channels=2, subtype="PCM_16") as f:
            rng = np.random.default_rng(0)
            for _ in range(seconds // 6):
                f.write((0.1 * rng.standard_normal((6 * SR, 2))).astype(np.float32))
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(src), str(tmp_path / f"out{seconds}.wav")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        peaks[seconds] = int(proc.stdout.split()[-1]) / 1024  # MB
        assert sf.info(tmp_path / f"out{seconds}.wav").frames == seconds * SR
    # Holding the extra 336 s in memory would take about 590 MB (input + 4 stems, float32).
    assert peaks[360] - peaks[24] < 16, peaks


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(model_to_dict(build_model("tiny", n_outputs=4)), path)
    return path


def test_separate_warns_and_separates_the_rest(tmp_path, tiny_checkpoint):
    x = noise(1.0, seed=2)
    x[SR // 2, 0] = np.nan
    song = float_wav(tmp_path / "song.wav", x)
    clean = float_wav(tmp_path / "clean" / "song.wav", np.where(np.isfinite(x), x, 0).astype(np.float32))
    args = ["-m", str(tiny_checkpoint), "--device", "cpu", "--bits", "float"]
    result = runner.invoke(app, ["separate", str(song), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    assert f"warning: {song}: 1 non-finite sample(s) (NaN or infinity) replaced by 0" in flat(result.output)
    assert "1 with non-finite samples replaced by 0" in flat(result.output)
    assert runner.invoke(app, ["separate", str(clean), "--out", str(tmp_path / "ref"), *args]).exit_code == 0
    for stem in STEMS:
        y, _ = sf.read(tmp_path / "out" / "song" / f"{stem}.wav")
        ref, _ = sf.read(tmp_path / "ref" / "song" / f"{stem}.wav")
        assert np.isfinite(y).all() and np.abs(y).max() > 1e-4, stem  # never silently emptied
        np.testing.assert_array_equal(y, ref)  # exactly the song with the NaN read as 0
