"""Dropout masks drawn as 16-bit integers: Bernoulli draws like ``nn.Dropout``'s, cheaper on CPU.

On CPU, ``torch.bernoulli_`` and ``torch.rand`` cost a large share of a small model's training
step (docs/method.md §3.5 puts dropout 0.1 in every FFN and attention). Four uniform 16-bit
integers per 64-bit draw of the generator, compared with a threshold and written as 0/1 bytes
or floats, give the keep probability 1 - p with p rounded to a multiple of 2^-16, at a fraction
of the cost. CUDA keeps PyTorch's fused dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fill_keep_(mask: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``mask`` in place with 1 (kept) or 0 (dropped), from 16 random bits each.

    For the attention probabilities and the FFN dropout: four 16-bit integers per 64-bit
    draw halve the generator's work against 32-bit ones, and ``torch.ge`` writing floats or
    bytes directly is about 4x faster than making a boolean mask, which then costs 4x more to
    apply than a byte one (bool -> float promotion). The keep probability is 1 - round(p * 2^16) / 2^16:
    p rounded to a multiple of 2^-16, off by less than 8e-6 (0.1 becomes 0.100006).

    Each row (along the last dimension) takes whole 64-bit draws, the last one's unused
    16-bit parts skipped, so filling the rows of a mask in pieces, one after the other from
    one generator, gives the values of filling it at once.

    Args:
        mask: floating-point or uint8 tensor to overwrite, (..., s).
        p: drop probability in [0, 1); above 1 - 2^-17 the keep probability stays 2^-16.
        generator: the random generator (default: the global one).

    Returns:
        ``mask``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if mask.numel() == 0:
        return mask
    s = mask.shape[-1]
    padded = -(-s // 4) * 4  # a row's draws, in 16-bit parts
    bits = torch.empty(mask.numel() // s * padded // 4, dtype=torch.int64, device=mask.device)
    bits.random_(-(2**63), None, generator=generator)  # the full 64-bit range: four 16-bit draws
    draws = bits.view(torch.int16).view(*mask.shape[:-1], padded)[..., :s]
    threshold = min(-(2**15) + round(p * 2**16), 2**15 - 1)  # drops round(p * 2^16) of the 2^16 values
    return torch.ge(draws, threshold, out=mask)


class _MaskedScale(torch.autograd.Function):
    """x * mask * r, saving only the 0/1 byte mask for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, r: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.r = r
        return (x * mask).mul_(r)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.r), None, None


class Dropout(nn.Module):
    """``nn.Dropout(p)`` (zero with probability p in training, scale the rest by 1 / (1 - p))."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, training=True)
        # 0/1 bytes: half the cost of a boolean mask, made and applied (p off by < 8e-6)
        mask = fill_keep_(torch.empty(x.shape, dtype=torch.uint8, device=x.device), self.p)
        return _MaskedScale.apply(x, mask, 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
