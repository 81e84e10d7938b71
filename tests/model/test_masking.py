"""MaskedSpectrum (the decoder's last layer, GLU and masking in one operation) computes what the
plain autograd composition computes: values, and gradients for every input, in float64 by
gradcheck and in float32 and bfloat16 autocast against the composition."""

import pytest
import torch
import torch.nn.functional as F

from mixitcli.model.masking import (
    equal_width_runs,
    masked_planes,
    masked_spectrum,
    per_output_affine,
    stacked_last_layers,
)


def composed(hidden, spec, weights, biases, c):
    """The reference: per band fc3 -> GLU -> complex mask, concatenated over bins, times spec."""
    b, _, f, l = spec.shape
    masks = []
    for h, weight, bias in zip(hidden.unbind(0), weights, biases):
        n, w = weight.shape[0], weight.shape[1] // (4 * c)
        y = F.glu(per_output_affine(h, weight, bias), dim=-1).view(n, b, l, 2, c, w).to(spec.real.dtype)
        masks.append(torch.complex(y[:, :, :, 0], y[:, :, :, 1]))  # (n, b, l, c, w)
    mask = torch.cat(masks, dim=-1).permute(1, 0, 3, 4, 2)  # (b, n, c, f, l)
    return mask * spec.unsqueeze(1)


def inputs(*, widths=(1, 2, 3), b=2, c=2, l=3, n=3, d=4, dtype=torch.float64, seed=0):
    """hidden (k, b*l, d), spec (b, c, f, l), and per band weight (n, 4cw, d) and bias (n, 4cw)."""
    g = torch.Generator().manual_seed(seed)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    hidden = torch.randn(len(widths), b * l, d, generator=g, dtype=dtype)
    spec = torch.randn(b, c, sum(widths), l, generator=g, dtype=complex_dtype)
    weights = [torch.randn(n, 4 * c * w, d, generator=g, dtype=dtype) for w in widths]
    biases = [torch.randn(n, 4 * c * w, generator=g, dtype=dtype) for w in widths]
    return hidden, spec, weights, biases


def test_gradcheck_float64():
    hidden, spec, weights, biases = inputs()
    k = len(weights)
    leaves = [t.requires_grad_() for t in (hidden, spec, *weights, *biases)]

    def fn(hidden, spec, *params):
        return masked_spectrum(hidden, spec, params[:k], params[k:], n_channels=2)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("frames_inside", [False, True], ids=["grad-bins-inside", "grad-frames-inside"])
def test_float32_equals_composition(frames_inside):
    """Values and gradients, with the incoming gradient laid out either way (the two spectrum layouts)."""
    hidden, spec, weights, biases = inputs(widths=(2, 4, 12, 7), b=2, l=9, n=5, d=8, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (hidden, spec, *weights, *biases)]
    probe = torch.randn(2, 5, 2, 9, 25, dtype=torch.complex64)  # (b, n, c, l, f)
    probe = probe.transpose(-1, -2) if frames_inside else probe.transpose(-1, -2).contiguous()
    results = []
    for fn in (
        lambda: masked_spectrum(hidden, spec, weights, biases, n_channels=2),
        lambda: composed(hidden, spec, weights, biases, 2),
    ):
        y = fn()
        results.append((y.detach(), torch.autograd.grad((y * probe).real.sum(), leaves)))
    (ours, ours_grads), (ref, ref_grads) = results
    assert ours.shape == (2, 5, 2, 25, 9)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    for a, r in zip(ours_grads, ref_grads):
        assert a.shape == r.shape and a.dtype == r.dtype
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_bf16_autocast_equals_composition():
    """Under autocast the last layer and GLU run in bfloat16, as the composition's ops do (the
    masks are equal bit for bit); the product with the spectrum and the result stay float32."""
    hidden, spec, weights, biases = inputs(widths=(2, 4, 12), b=1, l=16, n=4, d=32, dtype=torch.float32)
    hidden = hidden.bfloat16().requires_grad_()
    params = [t.requires_grad_() for t in (*weights, *biases)]
    probe = torch.randn(1, 4, 2, 18, 16, dtype=torch.complex64)
    results = []
    for fn in (masked_spectrum, lambda h, s, w, b, n_channels: composed(h, s, w, b, n_channels)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(hidden, spec, weights, biases, n_channels=2)
            masks = fn(hidden.detach(), torch.ones_like(spec), weights, biases, n_channels=2)
        assert y.dtype == masks.dtype == torch.complex64
        results.append((y.detach(), masks.detach(), torch.autograd.grad((y * probe).real.sum(), [hidden, *params])))
    (ours, ours_masks, ours_grads), (ref, ref_masks, ref_grads) = results
    assert torch.equal(ours_masks, ref_masks)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    for a, r in zip(ours_grads, ref_grads):
        assert a.dtype == r.dtype
        assert ((a.float() - r.float()).norm() / r.float().norm()).item() < 2e-2  # bfloat16 rounding


def test_no_gradient_wanted_gives_the_same_values():
    hidden, spec, weights, biases = inputs(dtype=torch.float32)
    with torch.no_grad():
        plain = masked_spectrum(hidden, spec, weights, biases, n_channels=2)
    hidden.requires_grad_()
    assert torch.equal(masked_spectrum(hidden, spec, weights, biases, n_channels=2).detach(), plain)


def test_real_planes_composition_equals_the_function():
    """masked_planes, the exporters' form (no autograd Function, no complex tensors), computes
    masked_spectrum's values."""
    hidden, spec, weights, biases = inputs(widths=(2, 2, 4, 12, 12, 7), b=2, l=9, n=5, d=8, dtype=torch.float32)
    ref = masked_spectrum(hidden, spec, weights, biases, n_channels=2)
    assert equal_width_runs([2, 2, 4, 12, 12, 12, 7]) == [(0, 2), (2, 1), (3, 3), (6, 1)]
    layers = stacked_last_layers(weights, biases)
    re, im = masked_planes(hidden, spec.real.contiguous(), spec.imag.contiguous(), layers, n_channels=2)
    assert re.shape == im.shape == (2, 5, 2, 39, 9)
    torch.testing.assert_close(torch.complex(re, im), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
