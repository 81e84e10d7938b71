"""bench/roofline.py (issue 23): the chunk count of a song is the one `mixit separate` runs, and
the FLOPs it counts are the network's, checked against the closed form of the architecture."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from mixitcli.model.config import preset
from mixitcli.separate import ChunkedSeparator
from tests.builders import REPO
from tests.fakes import GainModel


@pytest.fixture(scope="module")
def roofline():
    spec = importlib.util.spec_from_file_location("roofline", REPO / "bench" / "roofline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["roofline"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seconds", [0.5, 11.9, 12.0, 13.0, 30.0, 181.3])
def test_chunks_of_a_song_are_the_separators(roofline, seconds):
    model = GainModel()
    separator = ChunkedSeparator(model)
    n = int(round(seconds * 44100))
    for start in range(0, n, 6 * 44100):  # blocks of 6 s, as a decoder delivers them
        separator.push(torch.ones(2, min(6 * 44100, n - start)))
    separator.finish()
    assert roofline.chunks_of(seconds) == model.calls


def closed_form_gflop(cfg, frames: int) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of the bf16 network's products on one chunk of ``frames`` frames."""
    k, l, d, a, h2, kk = len(cfg.bands), frames, cfg.d_model, cfg.attention_dim, cfg.ffn_hidden[0], cfg.kernel_size
    bins = sum(cfg.bands)

    def ffn(n: int, s: int) -> int:  # conv d -> 2H over s + K - 1 outputs, then the deconv as a conv H -> d
        return 2 * n * (s + kk - 1) * d * 2 * h2 * kk + 2 * n * s * h2 * d * kk

    convs = cfg.n_blocks * 2 * (ffn(l, k) + ffn(k, l))  # 2 FFNs per path
    attention = cfg.n_blocks * 4 * a * (k * l * l + l * k * k)  # q k^T and weights x v, both paths
    qkv_out = cfg.n_blocks * 2 * 2 * k * l * d * 4 * a  # both paths: d -> 3a, a -> d
    encoder = 2 * l * 2 * cfg.n_channels * bins * d  # per band 2cw -> d, over all bands
    decoder = 2 * k * l * d * 4 * d + 2 * l * 4 * d * cfg.n_outputs * 2 * 2 * cfg.n_channels * bins
    return {
        "convolutions": convs / 1e9,
        "attention": attention / 1e9,
        "other products": (qkv_out + encoder + decoder) / 1e9,
    }


@pytest.fixture
def keep_threads():
    """main() sets torch's thread count for its process: give this test process its own back."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_bf16_figures(roofline, capsys, keep_threads):
    (r,) = roofline.main(
        ["--presets", "tiny", "--precision", "bf16", "--threads", str(keep_threads), "--seconds", "24"]
        + ["--reps", "1", "--peak-size", "256"]
    )
    cfg = preset("tiny")
    expected = closed_form_gflop(cfg, int(12 * cfg.sample_rate) // cfg.hop_length)
    assert r["gflop"] == pytest.approx(expected, rel=1e-9)
    assert r["chunk_gflop"] == pytest.approx(sum(expected.values()), rel=1e-9)
    assert r["network"] == "cpu, bfloat16, torch" and r["threads"] == keep_threads
    assert r["chunks"] == 3
    assert all(r["seconds"][kind] > 0 for kind in roofline.KINDS)
    assert sum(r["seconds"].values()) <= r["profiled_s"]  # kernels of the profiled call: a part of it
    assert r["peak_gflops"] >= r["square_gflops"] > 0
    assert r["rtf"] == pytest.approx(3 * r["chunk_s"] / 24)
    assert 0 < r["rtf_floor"] < r["rtf"]
    out = capsys.readouterr().out
    assert "convolutions" in out and "floor" in out and "29 chunks" not in out
