"""Scaled dot-product attention, with a memory-lean dropout path for CPU training.

Attention dropout (docs/method.md §3.5: 0.1) makes PyTorch fall back to its "math" kernel on CPU,
which stores the whole (N, h, s, s) probability matrix, its dropout mask and the dropped
copy for the backward pass: about 1.5 GB per time path of the medium model on 6 s of audio.
:class:`_DropoutAttention` computes the same function (each attention probability dropped
with probability p, the rest scaled by 1 / (1 - p)) in chunks of sequences, saves only q, k,
v and the output, and regenerates each chunk's dropout mask from a seed in the backward pass,
as flash attention does. On CUDA, SDPA's fused kernels support dropout themselves and are
used directly.

The chunk loop is written for few passes over the (n, h, s, s) scores, which dominate the
training time of the small presets on CPU: the scale is folded into the product, the fused
softmax replaces log-sum-exp and exp, the mask is a boolean drawn as 32-bit integers (half
the cost of uniform floats, with the same or finer resolution of p), and 1 / (1 - p) is
applied to the (n, h, s, dh) results instead of the scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixitcli.model.dropout import keep_mask

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


def _keep(shape: torch.Size, p: float, seed: int, chunk: int, device: torch.device) -> torch.Tensor:
    """The boolean keep mask of one chunk (True with probability 1 - p); the same every time."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed + 7919 * chunk) % (2**63))
    return keep_mask(shape, p, device=device, generator=generator)


def _probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) of one chunk: (n, h, s, dh) -> (n, h, s, s)."""
    n, h, s, dh = q.shape
    scores = torch.bmm(q.reshape(n * h, s, dh), k.reshape(n * h, s, dh).transpose(1, 2)).view(n, h, s, s)
    return torch.softmax(scores.mul_(scale), dim=-1)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # (N, h, s, dh) slices become views
        scale = q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        for i, (a, b) in enumerate(_chunks(q)):
            probs = _probs(q[a:b], k[a:b], scale)  # (n, h, s, s)
            probs.mul_(_keep(probs.shape, p, seed, i, probs.device))
            torch.matmul(probs, v[a:b], out=out[a:b])
        out.mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q, k, v, out)
        ctx.p, ctx.seed, ctx.scale = p, seed, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # With P the probabilities, m the mask and r = 1 / (1 - p): out = r (P * m) v, so
        # dv = r (P * m)^T g, dP = r m * (g v^T), and the softmax backward
        # dS = P * (dP - rowsum(P * dP)) with rowsum(P * dP) = rowsum(g * out).
        q, k, v, out = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        rowdot = (grad_out * out).sum(-1, keepdim=True).mul_(1.0 - p)  # (N, h, s, 1), over r
        for i, (a, b) in enumerate(_chunks(q)):
            probs = _probs(q[a:b], k[a:b], scale)  # P, recomputed
            keep = _keep(probs.shape, p, seed=ctx.seed, chunk=i, device=probs.device)
            torch.matmul((probs * keep).transpose(-1, -2), grad_out[a:b], out=dv[a:b])
            dprobs = torch.matmul(grad_out[a:b], v[a:b].transpose(-1, -2)).mul_(keep)  # dP / r
            dscores = dprobs.sub_(rowdot[a:b]).mul_(probs)  # dS / (r scale)
            torch.matmul(dscores, k[a:b], out=dq[a:b])
            torch.matmul(dscores.transpose(-1, -2), q[a:b], out=dk[a:b])
        r = 1.0 / (1.0 - p)
        return dq.mul_(r * scale), dk.mul_(r * scale), dv.mul_(r), None, None
