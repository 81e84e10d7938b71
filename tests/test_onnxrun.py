"""The numpy STFT, scale and iSTFT of the onnxruntime backend compute what the model's torch ones do."""

import numpy as np
import pytest
import torch

from mixitcli import build_model
from mixitcli.onnxrun import analyse, synthesise


@pytest.mark.parametrize("length", [1025, 23284, 44100 + 511])
def test_numpy_stft_scale_and_istft_equal_the_models(length):
    model = build_model("tiny")
    x = 0.1 * torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length))
    spec, scale = model.analyse(x)  # (b, c, f, t // hop), (b, c, 1, 1)
    re, im, np_scale = analyse(x.numpy(), 2048, 512)
    peak = spec.abs().max().item()
    assert re.shape == im.shape == tuple(spec.shape) and re.dtype == np.float32
    assert np.abs(re - spec.real.numpy()).max() < 1e-5 * peak and np.abs(im - spec.imag.numpy()).max() < 1e-5 * peak
    np.testing.assert_allclose(np_scale, scale.numpy(), rtol=1e-5)
    masked = spec.unsqueeze(1) * torch.tensor([0.5, -2.0]).view(1, 2, 1, 1, 1)  # (b, n=2, c, f, l)
    wav = model.synthesise(masked, length).numpy()
    ours = synthesise(masked.real.numpy(), masked.imag.numpy(), 2048, 512, length)
    assert ours.shape == wav.shape == (2, 2, 2, length)
    assert np.abs(ours - wav).max() < 1e-5 * np.abs(wav).max()
