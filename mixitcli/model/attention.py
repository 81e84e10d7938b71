"""Scaled dot-product attention, with a memory-lean dropout path for CPU training.

Attention dropout (docs/method.md §3.5: 0.1) makes PyTorch fall back to its "math" kernel on CPU,
which stores the whole (N, h, s, s) probability matrix, its dropout mask and the dropped
copy for the backward pass: about 1.5 GB per time path of the medium model on 6 s of audio.
:class:`_DropoutAttention` computes the same function (each attention probability dropped
with probability p, the rest scaled by 1 / (1 - p)) in chunks of sequences, saves only q, k,
v, the output and the row log-sum-exps, and regenerates each chunk's dropout mask from a
seed in the backward pass, as flash attention does. On CUDA, SDPA's fused kernels support
dropout themselves and are used directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 22
"""Attention scores per chunk (4 Mi floats = 16 MB): bounds the temporary memory."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v with attention dropout ``dropout_p``.

    Args:
        q, k, v: (N, h, s, dh).
        dropout_p: probability of dropping an attention weight (0 in eval mode).

    Returns:
        (N, h, s, dh).
    """
    if dropout_p == 0.0 or q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # drawn from the global RNG: reproducible runs
    return _DropoutAttention.apply(q, k, v, dropout_p, seed)


def _chunks(q: torch.Tensor) -> list[tuple[int, int]]:
    n, h, s, _ = q.shape
    step = max(1, CHUNK_ELEMENTS // (h * s * s))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _keep_scaled(shape: torch.Size, p: float, seed: int, chunk: int, like: torch.Tensor) -> torch.Tensor:
    """The dropout mask of one chunk, as 0 or 1 / (1 - p); the same every time it is asked for."""
    generator = torch.Generator(device=like.device)
    generator.manual_seed((seed + 7919 * chunk) % (2**63))
    keep = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) >= p
    return keep.to(like.dtype) / (1.0 - p)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int):
        scale = q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1])  # (N, h, s) row log-sum-exp of the scores
        for i, (a, b) in enumerate(_chunks(q)):
            scores = (q[a:b] @ k[a:b].transpose(-1, -2)) * scale  # (n, h, s, s)
            lse[a:b] = torch.logsumexp(scores, dim=-1)
            probs = torch.exp_(scores.sub_(lse[a:b].unsqueeze(-1)))
            probs.mul_(_keep_scaled(probs.shape, p, seed, i, probs))
            out[a:b] = probs @ v[a:b]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.p, ctx.seed, ctx.scale = p, seed, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        rowdot = (grad_out * out).sum(-1, keepdim=True)  # (N, h, s, 1) = rowsum(P * dP)
        for i, (a, b) in enumerate(_chunks(q)):
            scores = (q[a:b] @ k[a:b].transpose(-1, -2)) * ctx.scale
            probs = torch.exp_(scores.sub_(lse[a:b].unsqueeze(-1)))  # P, recomputed
            keep = _keep_scaled(probs.shape, ctx.p, ctx.seed, i, probs)
            dv[a:b] = (probs * keep).transpose(-1, -2) @ grad_out[a:b]
            dprobs = (grad_out[a:b] @ v[a:b].transpose(-1, -2)).mul_(keep)  # dL/dP
            dscores = probs.mul_(dprobs.sub_(rowdot[a:b])).mul_(ctx.scale)  # softmax backward
            dq[a:b] = dscores @ k[a:b]
            dk[a:b] = dscores.transpose(-1, -2) @ q[a:b]
        return dq, dk, dv, None, None
