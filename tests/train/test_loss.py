"""The training step's loss: MixIT through the outputs' spectra equals MixIT of their waveforms."""

from __future__ import annotations

import pytest
import torch

from mixitcli import build_model
from mixitcli.losses import mixit_loss
from mixitcli.train.config import PretrainConfig
from mixitcli.train.loop import compute_loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", n_outputs=12, dropout=0.0).train()  # no dropout: two passes agree


def batch(seed: int = 0) -> torch.Tensor:
    """(b, m, c, t) two mixtures per item, 0.5 s stereo."""
    return torch.randn(2, 2, 2, 22050, generator=torch.Generator().manual_seed(seed)) * 0.1


def waveform_mixit(model, batch, solver):
    """The loss as computed before the spectral remix: every output synthesised, then remixed."""
    mixture = batch.sum(1)
    scale = model.input_scale(mixture)
    return mixit_loss(model(mixture / scale), batch / scale.unsqueeze(1), solver=solver)[0]


@pytest.mark.parametrize("solver", ["efficient", "exact"])
def test_mixit_step_equals_the_waveform_loss(model, solver):
    config = PretrainConfig(data="-", out="-", size="tiny", mixit_solver=solver, bf16=False)
    params = list(model.parameters())
    x = batch()
    loss = compute_loss(model, model, x, config)
    grads = torch.autograd.grad(loss, params)
    ref = waveform_mixit(model, x, solver)
    ref_grads = torch.autograd.grad(ref, params)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def test_mixit_step_runs_under_bf16_autocast(model):
    fp32 = PretrainConfig(data="-", out="-", size="tiny", bf16=False)
    bf16 = PretrainConfig(data="-", out="-", size="tiny", bf16=True)
    x = batch(1)
    loss = compute_loss(model, model, x, bf16)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert loss.item() == pytest.approx(compute_loss(model, model, x, fp32).item(), abs=0.5)  # dB
