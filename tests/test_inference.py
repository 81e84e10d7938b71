"""Separation precision (issue 23): fp32 is the model as it was, bit for bit; bf16 on the CPU is a
prepared copy within 35 dB of float32; auto picks bf16 only where the CPU computes it natively."""

import pytest
import soundfile as sf
import torch
from torch import nn
from typer.testing import CliRunner

from mixitcli import build_model, inference
from mixitcli.cli import app
from mixitcli.demo.synth import synthesize_song
from mixitcli.inference import CpuBfloat16, cpu_flags, prepare, resolve_precision, transposed_as_conv
from mixitcli.model import model_to_dict
from mixitcli.separate import ChunkedSeparator, ChunkOptions
from tests.builders import css_reference

runner = CliRunner()
SR = 44100
CHUNKING = ["--chunk", "1", "--hop", "0.5"]  # 1.6 s: three overlapping chunks, the last one padded


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset with seeded weights, and its checkpoint file."""
    torch.manual_seed(23)
    model = build_model("tiny").eval()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(model_to_dict(model), path)
    return model, path


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """1.6 s of a demo song (drums, bass, a sung-like lead, chords) as a float WAV, and its samples (2, t)."""
    x = synthesize_song(3, 1.6).mixture
    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, x.T, SR, subtype="FLOAT")
    return path, torch.from_numpy(x)


def separate(tmp_path, song, model_path, *extra):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "separate",
            str(song),
            "-o",
            str(out),
            "-m",
            str(model_path),
            "--device",
            "cpu",
            "--bits",
            "float",
            "--filename",
            "{stem}.{ext}",
            *CHUNKING,
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    stems = {p.stem: torch.from_numpy(sf.read(p, dtype="float32", always_2d=True)[0].T) for p in out.glob("*.wav")}
    return result.output, stems


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    return (10 * torch.log10(ref.square().sum() / (est - ref).square().sum())).item()


def test_fp32_writes_the_models_own_output_bit_for_bit(tmp_path, tiny, song):
    """`--precision fp32`: every stem sample equals the chunked composition of the unchanged
    `model(chunk)` (the authors' stitching, written out in tests/builders.py)."""
    (model, model_path), (path, x) = tiny, song
    output, stems = separate(tmp_path, path, model_path, "--precision", "fp32")
    assert "(cpu, float32, torch)" in output  # the summary line says how the model ran
    with torch.no_grad():
        expected = css_reference(model, x, SR, SR // 2)  # (n, c, t)
    for i, stem in enumerate(model.stems):
        assert torch.equal(stems[stem], expected[i]), stem


def test_auto_on_a_bf16_cpu_runs_a_prepared_copy_within_35_db(tmp_path, tiny, song, monkeypatch):
    (model, model_path), (path, x) = tiny, song
    monkeypatch.setattr(inference, "native_bf16", lambda: True)  # this machine's CPU, or one like it
    output, stems = separate(tmp_path, path, model_path)  # --precision auto
    assert "(cpu, bfloat16, torch)" in output
    with torch.no_grad():
        expected = css_reference(model, x, SR, SR // 2)
    for i, stem in enumerate(model.stems):
        assert 35 <= snr_db(expected[i], stems[stem]) < 80, stem  # close to float32, and not float32 itself
    # the copy is prepared once: bfloat16 weights, the same tensors after every chunk; the model is left as it was
    network = prepare(model, precision="bf16")
    assert isinstance(network, CpuBfloat16)
    conv = network.model.separator[0].time.ffn_pre.conv
    before = conv.weight.data_ptr()
    stream = ChunkedSeparator(network, options=ChunkOptions(chunk_s=1.0, hop_s=0.5))
    stream.push(x), stream.finish()
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.data_ptr() == before
    ffn = model.separator[0].time.ffn_pre
    assert isinstance(ffn.deconv, nn.ConvTranspose1d) and ffn.conv.weight.dtype == torch.float32


def test_bf16_alias_and_contradictions(tmp_path, tiny, song):
    (_, model_path), (path, _) = tiny, song
    base = ["separate", str(path), "-m", str(model_path), "-o", str(tmp_path / "out")]
    result = runner.invoke(app, base + ["--bf16", "--precision", "fp32"])
    assert result.exit_code == 1 and "--bf16 means --precision bf16" in result.output, result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, base + ["--bf16", "--device", "cpu"])
    assert result.exit_code == 0 and "(cpu, bfloat16, torch)" in result.output, result.output


def test_auto_means_bf16_only_on_a_cpu_with_native_bfloat16(tmp_path, monkeypatch):
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    assert cpu_flags(x86) >= {"avx512f", "avx512_bf16"} and cpu_flags("processor : 0\n") == set()
    # without torch's query, /proc/cpuinfo decides; without either, float32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    for text, native in ((x86, True), (x86.replace("avx512_bf16", ""), False), ("flags : amx_bf16 amx_tile\n", True)):
        (tmp_path / "cpuinfo").write_text(text)
        monkeypatch.setattr(inference, "CPUINFO", tmp_path / "cpuinfo")
        assert inference.native_bf16() is native
        assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    monkeypatch.setattr(inference, "CPUINFO", tmp_path / "missing")
    assert inference.native_bf16() is False
    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    assert resolve_precision("auto", "cuda") == "fp32" and resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


def test_a_transposed_convolution_as_a_convolution():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 40)
    for padding in (7, 0):  # the FFN's (kernel - 1), and none
        layer = nn.ConvTranspose1d(6, 5, 8, padding=padding)
        with torch.no_grad():
            torch.testing.assert_close(transposed_as_conv(layer)(x), layer(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stride-1"):
        transposed_as_conv(nn.ConvTranspose1d(6, 5, 8, stride=2))
