"""The batched mask decoder computes what the per-band heads compute (their masks times the
spectrum), values and gradients; the integer-threshold dropout behaves as nn.Dropout."""

import pytest
import torch

from mixitcli import build_model
from mixitcli.model.dropout import Dropout, fill_keep_


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
    params = [decoder.heads[i].get_parameter(name) for i in (0, 40, 61)
              for name in ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                           "fc3.weight", "fc3.bias")]
    grads = []
    for fn in (lambda x: decoder(x, spec), lambda x: per_band_masks(decoder, x) * spec.unsqueeze(1)):
        loss = (fn(x) * weights).real.sum()
        grads.append(torch.autograd.grad(loss, [x, *params]))
    for ours, ref in zip(*grads):
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_dropout_keeps_one_minus_p_and_the_mean():
    torch.manual_seed(0)
    drop = Dropout(0.1).train()
    x = torch.ones(400_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.003)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, y.detach())  # the gradient is masked and scaled as the values


def test_dropout_is_identity_in_eval_and_follows_the_seed():
    x = torch.randn(1000)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    torch.manual_seed(3)
    a = Dropout(0.3)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.3)(x), a)


def test_fill_keep_probability_and_values():
    generator = torch.Generator().manual_seed(0)
    mask = fill_keep_(torch.full((1000, 1001), 0.5), 0.25, generator=generator)  # 0.25 is a multiple of 2^-16
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.mean().item() == pytest.approx(0.75, abs=0.002)  # about 5 standard deviations
    assert fill_keep_(torch.empty(3, 5, dtype=torch.float64), 0.0).all()
    assert fill_keep_(torch.empty(1000), 1 - 1e-9, generator=generator).sum() <= 2  # keeps 2^-16
    as_bytes = fill_keep_(torch.empty(30, 7, dtype=torch.uint8), 0.3, generator=torch.Generator().manual_seed(2))
    as_floats = fill_keep_(torch.empty(30, 7), 0.3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(as_bytes.float(), as_floats)


def test_fill_keep_in_row_pieces_equals_at_once():
    whole = fill_keep_(torch.empty(2, 9, 7), 0.5, generator=torch.Generator().manual_seed(1))
    pieces = torch.empty(2, 9, 7)
    generator = torch.Generator().manual_seed(1)
    for seq, rows in ((0, slice(0, 4)), (0, slice(4, 9)), (1, slice(0, 1)), (1, slice(1, 9))):
        fill_keep_(pieces[seq, rows], 0.5, generator=generator)  # odd row counts: 7 is not a multiple of 4
    assert torch.equal(whole, pieces)


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1.0"):
        Dropout(1.0)
