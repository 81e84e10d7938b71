"""BS-Locoformer (mixitcli/model/bslocoformer.py): sizes, shapes, any length and batch, dropout,
checkpointing, bf16; the batched mask decoder computes what the per-band heads compute (their
masks times the spectrum), values and gradients; the FFN pads as the authors' code."""

import pytest
import torch
import torch.nn.functional as F

from mixitcli import build_model
from mixitcli.model.bslocoformer import BSLocoformer, ConvSwiGLU
from mixitcli.model.config import preset
from tests.builders import rel_err

# docs/method.md §3: separator and whole-model parameter counts (4 and 12 outputs).
EXPECTED = {
    "small": (5_021_440, 29_544_552, 54_800_552),
    "medium": (14_959_104, 52_721_960, 86_374_760),
    "large": (45_157_248, 117_018_152, 167_464_552),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts_match_the_paper(name):
    separator, total4, total12 = EXPECTED[name]
    with torch.device("meta"):  # shapes only, no memory
        m4 = BSLocoformer(preset(name, n_outputs=4))
        m12 = BSLocoformer(preset(name, n_outputs=12))
    assert n_params(m4.separator) == separator
    assert n_params(m4) == total4
    assert n_params(m12) == total12


@pytest.mark.parametrize("length", [1025, 4096, 22050 + 17])
def test_any_length_gives_same_length_out(tiny, length):
    wav = torch.randn(2, 2, length) * 0.1
    with torch.no_grad():
        out = tiny(wav)
    assert out.shape == (2, 3, 2, length)
    assert torch.isfinite(out).all()


def test_batch_items_are_independent(tiny):
    wav = torch.randn(3, 2, 8000) * torch.tensor([0.01, 1.0, 0.3]).view(3, 1, 1)
    with torch.no_grad():
        batched = tiny(wav)
        for i in range(3):
            assert rel_err(batched[i], tiny(wav[i : i + 1])[0]) < 1e-5


def test_output_scales_with_input(tiny):
    """Per-channel input scaling makes the model scale-equivariant."""
    wav = torch.randn(1, 2, 8000)
    with torch.no_grad():
        assert rel_err(tiny(wav * 1e-3), tiny(wav) * 1e-3) < 1e-4


def test_spectrum_output_synthesises_to_the_waveforms(tiny):
    wav = torch.randn(2, 2, 8000) * 0.1
    with torch.no_grad():
        spec = tiny(wav, spectrum=True)
        assert spec.shape == (2, 3, 2, 1025, 8000 // 512) and spec.dtype == torch.complex64
        assert torch.equal(tiny.synthesise(spec, 8000), tiny(wav))


def test_silent_input_gives_silent_finite_output(tiny):
    with torch.no_grad():
        out = tiny(torch.zeros(1, 2, 4096))
    assert torch.equal(out, torch.zeros_like(out))


def test_bad_input_shapes_are_rejected(tiny):
    with pytest.raises(ValueError, match=r"\(batch, 2 channels, samples\)"):
        tiny(torch.zeros(1, 1, 4096))
    with pytest.raises(ValueError, match="too short"):
        tiny(torch.zeros(1, 2, 1000))


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_model("tiny", n_outputs=2)
    wav = torch.randn(1, 2, 4096)
    model.train()
    a, b = model(wav), model(wav)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(wav), model(wav))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model("tiny", n_outputs=2).train()  # dropout on: the RNG state is replayed
    wav = torch.randn(1, 2, 6000)

    def grads(checkpointing: bool):
        model.zero_grad()
        model.set_activation_checkpointing(checkpointing)
        torch.manual_seed(1)
        model(wav).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain, recomputed = grads(False), grads(True)
    for g0, g1 in zip(plain, recomputed):
        assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-8)
    assert all(g.abs().sum() > 0 for g in plain)  # every parameter takes part


def test_bf16_autocast_stays_close_to_float32(tiny):
    wav = torch.randn(1, 2, 8000) * 0.1
    with torch.no_grad():
        ref = tiny(wav)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny(wav)
    assert low.dtype == torch.float32
    snr = 10 * torch.log10(ref.square().sum() / (ref - low).square().sum())
    assert snr > 20


# ----------------------------------------------------------------------------- the mask decoder


def per_band_masks(decoder, x):
    """The reference: each band's head on its own, concatenated over bins -> (b, n, c, f, l)."""
    y = torch.cat([head(x[:, :, i]) for i, head in enumerate(decoder.heads)], dim=-1)  # (n, b, l, 2, c, f)
    return torch.complex(y[:, :, :, 0], y[:, :, :, 1]).permute(1, 0, 3, 4, 2)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return build_model("tiny", n_outputs=3).decoder


def test_batched_decoder_equals_per_band_heads(decoder):
    b, l, k, d = 2, 5, 62, 16
    x = torch.randn(b, k, l, d).transpose(1, 2)  # (b, l, k, d) laid out as the separator leaves it
    spec = torch.randn(b, 2, 1025, l, dtype=torch.complex64)
    with torch.no_grad():
        masks = per_band_masks(decoder, x)
        ours, ref = decoder(x, spec), masks * spec.unsqueeze(1)
        ones = decoder(x, torch.ones_like(spec))  # a spectrum of ones gives the masks themselves
    assert ours.shape == ref.shape == ones.shape == (b, 3, 2, 1025, l)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert ((ones - masks).abs().max() / masks.abs().max()).item() < 1e-5


def test_batched_decoder_gradients_equal_per_band_heads(decoder):
    x = torch.randn(1, 2, 62, 16, requires_grad=True)
    spec = torch.randn(1, 2, 1025, 2, dtype=torch.complex64)
    weights = torch.randn(1, 3, 2, 1025, 2, dtype=torch.complex64)
    params = [
        decoder.heads[i].get_parameter(name)
        for i in (0, 40, 61)
        for name in (
            "norm.weight",
            "norm.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias",
        )
    ]
    grads = []
    for fn in (lambda x: decoder(x, spec), lambda x: per_band_masks(decoder, x) * spec.unsqueeze(1)):
        loss = (fn(x) * weights).real.sum()
        grads.append(torch.autograd.grad(loss, [x, *params]))
    for ours, ref in zip(*grads):
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


# ----------------------------------------------------------------------------- the feed-forward module


def test_ffn_padding_equals_the_official_pad_and_crop():
    torch.manual_seed(0)
    ffn = ConvSwiGLU(6, 5, kernel_size=8, stride=1, dropout=0.0)
    x = torch.randn(3, 11, 6)
    # official: zero-pad by 7 on both sides, valid convolutions, crop [7, 7 + s)
    y = F.pad(x.transpose(1, 2), (7, 7))
    y = F.conv1d(y, ffn.conv.weight, ffn.conv.bias)
    y = y[:, :5] * F.silu(y[:, 5:])
    y = F.conv_transpose1d(y, ffn.deconv.weight, ffn.deconv.bias)[:, :, 7 : 7 + 11].transpose(1, 2)
    assert torch.allclose(ffn(x), y, atol=1e-6)
