"""BS-Locoformer: sizes, shapes, any length and batch, save/load, checkpointing, bf16."""

import pytest
import torch

from mixitcli import build_model, load_model
from mixitcli.model import ModelConfig, ModelLoadError, model_to_dict
from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.config import BANDS, preset
from tests.conftest import rel_err

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


def test_band_layout():
    assert len(BANDS) == 62 and sum(BANDS) == 1025


def test_invalid_configuration_lists_every_problem():
    with pytest.raises(ValueError) as e:
        ModelConfig(attention_dim=100, n_heads=8, d_model=100, n_groups=8, bands=(2, 3))
    message = str(e.value)
    assert "bands sum to 5" in message and "n_heads=8" in message and "n_groups=8" in message


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny, small, medium, large"):
        build_model("huge")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", n_outputs=3).eval()


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


def test_save_and_load_reproduces_outputs(tiny, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(model_to_dict(tiny), path)
    loaded = load_model(path)
    assert loaded.config == tiny.config and loaded.stems == tiny.stems
    wav = torch.randn(1, 2, 5000)
    with torch.no_grad():
        assert torch.equal(loaded(wav), tiny(wav))


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load_model(junk)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="not a mixit checkpoint"):
        load_model(tmp_path / "other.pt")


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
