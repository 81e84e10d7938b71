"""The integer-threshold dropout (mixitcli/model/dropout.py) behaves as nn.Dropout; its keep mask
follows the probability and the generator, drawn at once or in row pieces."""

import pytest
import torch

from mixitcli.model.dropout import Dropout, fill_keep_


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
