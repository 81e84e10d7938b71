"""Scaled dot-product attention, with a memory-lean dropout path for CPU training.

Attention dropout (docs/method.md §3.5: 0.1) makes PyTorch fall back to its "math" kernel on CPU,
which stores the whole (N, h, s, s) probability matrix, its dropout mask and the dropped
copy for the backward pass: about 1.5 GB per time path of the medium model on 6 s of audio.
:class:`_DropoutAttention` computes the same function (each attention probability dropped
with probability p, the rest scaled by 1 / (1 - p)) in chunks and saves only q, k, v, the
output and, when it is small, the dropout mask (one byte per score); larger masks are drawn
again from a seed in the backward pass, as flash attention does. On CUDA, SDPA's fused
kernels support dropout themselves and are used directly.

The (n, R, s) scores of a chunk (n whole sequences, or R query rows of one sequence) dominate
the training time of the small presets on CPU, so the chunk loop is written for few, cheap
passes over them:

- chunks of at most :data:`CHUNK_ELEMENTS` scores, in buffers reused from chunk to chunk;
- the scale and 1 / (1 - p) folded into the (s, dh) operands, the fused softmax in place;
- the mask drawn as 16-bit integers and written as 0/1 bytes (:func:`fill_keep_`), kept for
  the backward pass up to :data:`SAVED_MASK_BYTES`;
- for dh < :data:`NARROW_DH`, every product with a (s, dh) result computed transposed:
  MKL's sgemm makes (dh, s) = (dh, s') (s', s) about 4x faster than (s, s') (s', dh) at dh = 8,
  so those operands are kept as (dh, s) matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixitcli.model.dropout import fill_keep_

CHUNK_ELEMENTS = 1 << 19
"""Attention scores per chunk (512 Ki floats = 2 MB per buffer, a whole time-path sequence of 6 s).

Measured on the tiny time path (1 thread, AMD EPYC, 1 MB L2): 1 << 16 (buffers that fit in
L2) takes 30 % longer, as every chunk costs about 17 operator calls of Python overhead;
1 << 22 takes 45 % longer, out of cache.
"""

SAVED_MASK_BYTES = 64 << 20
"""Masks of at most this many scores (one byte each) are kept from the forward pass for the
backward one; larger ones are drawn again. Measured on the tiny time path (1 thread, 33 MB of
mask, 4 MB on the frequency path): the backward pass takes 0.11 s instead of 0.15 s, the
forward pass 0.01 s longer (the mask goes to memory instead of staying in cache)."""

NARROW_DH = 16
"""Head dimensions below this are "narrow": the (s, dh) operands are stored transposed, as (dh, s)."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v with attention dropout ``dropout_p``.

    Args:
        q, k, v: (N, h, s, dh).
        dropout_p: probability of dropping an attention weight (0 in eval mode). On CPU it
            is rounded to a multiple of 2^-16 (:func:`fill_keep_`).

    Returns:
        (N, h, s, dh).
    """
    if dropout_p == 0.0 or q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # drawn from the global RNG: reproducible runs
    return _DropoutAttention.apply(q, k, v, dropout_p, seed)


def _chunks(n: int, s: int) -> list[tuple[int, int, int, int]]:
    """The chunks (first sequence, end, first query row, end) of n sequences of length s.

    Whole sequences while one fits in :data:`CHUNK_ELEMENTS` scores, else rows of one
    sequence; either way in the element order of the (n, s, s) scores, so the masks drawn
    chunk after chunk from one generator are the mask of all the scores drawn at once
    (:func:`fill_keep_`), whatever the chunk size.
    """
    if s * s <= CHUNK_ELEMENTS:
        step = CHUNK_ELEMENTS // (s * s)
        return [(a, min(a + step, n), 0, s) for a in range(0, n, step)]
    parts = -(-s // max(1, CHUNK_ELEMENTS // s))
    rows = -(-s // parts)  # at most CHUNK_ELEMENTS // s, as even as the parts can be
    return [(a, a + 1, r, min(r + rows, s)) for a in range(n) for r in range(0, s, rows)]


def _buffers(like: torch.Tensor, chunks: list[tuple[int, int, int, int]], s: int, count: int) -> list[torch.Tensor]:
    """``count`` flat buffers, each large enough for the scores of the largest chunk, reused by every chunk."""
    size = max((b - a) * (r1 - r0) for a, b, r0, r1 in chunks) * s
    return [like.new_empty(size) for _ in range(count)]


def _operand(x: torch.Tensor, factor: float, narrow: bool) -> torch.Tensor:
    """(N, h, s, dh) -> factor * x as (N*h, s, dh), or as (N*h, dh, s) when ``narrow``, contiguous."""
    n, h, s, dh = x.shape
    if narrow:
        out = torch.empty(n * h, dh, s, dtype=x.dtype, device=x.device)
        torch.mul(x.transpose(-1, -2), factor, out=out.view(n, h, dh, s))
    else:
        out = torch.empty(n * h, s, dh, dtype=x.dtype, device=x.device)
        torch.mul(x, factor, out=out.view(n, h, s, dh))
    return out


def _unoperand(x: torch.Tensor, factor: float, shape: torch.Size, narrow: bool) -> torch.Tensor:
    """The inverse of :func:`_operand`: factor * x as a contiguous tensor of ``shape`` (N, h, s, dh)."""
    n, h, s, dh = shape
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    source = x.view(n, h, dh, s).transpose(-1, -2) if narrow else x.view(shape)
    return torch.mul(source, factor, out=out)


class _Products:
    """The chunk products, on operands laid out by :func:`_operand`.

    A chunk is (b, a) = (sequences, query rows) of the (n, s, s) scores. ``rows(x, b, a)``
    selects an operand's (s, dh) rows of the chunk; the products are written for the
    (s, dh) layout and computed transposed in the narrow one.
    """

    def __init__(self, narrow: bool):
        self.narrow = narrow

    def rows(self, x: torch.Tensor, b: slice, a: slice) -> torch.Tensor:
        return x[b, :, a] if self.narrow else x[b, a]

    def scores(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = x y^T: (c, R, dh), (c, s, dh) -> (c, R, s)."""
        return torch.bmm(x.transpose(1, 2), y, out=out) if self.narrow else torch.bmm(x, y.transpose(1, 2), out=out)

    def times(self, w: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        """out = w y: (c, R, s), (c, s, dh) -> (c, R, dh); narrow: out^T = y^T w^T."""
        if self.narrow:
            torch.bmm(y, w.transpose(1, 2), out=out)
        else:
            torch.bmm(w, y, out=out)

    def add_transposed_times(self, w: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """out += w^T x: (c, R, s), (c, R, dh) -> (c, s, dh); narrow: out^T += x^T w."""
        if self.narrow:
            out.baddbmm_(x, w)
        else:
            out.baddbmm_(w.transpose(1, 2), x)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int):
        # out = r (P * m) v with P = softmax(q k^T * scale), m the keep mask, r = 1 / (1 - p)
        n, h, s, dh = q.shape
        scale, r = dh**-0.5, 1.0 / (1.0 - p)
        mm = _Products(dh < NARROW_DH)
        qs, kk, vr = _operand(q, scale, mm.narrow), _operand(k, 1.0, mm.narrow), _operand(v, r, mm.narrow)
        out = torch.empty_like(qs)
        chunks = _chunks(n * h, s)
        (probs_buffer,) = _buffers(q, chunks, s, 1)
        saved = n * h * s * s <= SAVED_MASK_BYTES
        keep_all = q.new_empty((n * h, s, s) if saved else probs_buffer.shape, dtype=torch.uint8)
        generator = torch.Generator(device=q.device).manual_seed(seed)
        for a, b, r0, r1 in chunks:
            seqs, rows, shape = slice(a, b), slice(r0, r1), (b - a, r1 - r0, s)
            keep = keep_all[seqs, rows] if saved else keep_all[: shape[0] * shape[1] * s].view(shape)
            fill_keep_(keep, p, generator=generator)  # m
            probs = mm.scores(mm.rows(qs, seqs, rows), kk[seqs], out=probs_buffer[: keep.numel()].view(shape))
            torch.softmax(probs, dim=-1, out=probs)  # in place: P
            mm.times(probs.mul_(keep), vr[seqs], out=mm.rows(out, seqs, rows))
        out = _unoperand(out, 1.0, q.shape, mm.narrow)
        ctx.save_for_backward(q, k, v, out, keep_all if saved else None)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # With g the output gradient and g' = r g: dv = (P * m)^T g', and
        # dS = P * (m * (g' v^T) - rowsum(g * out)), since rowsum(P * m * (g' v^T)) = rowsum(g * out);
        # dq = scale dS k, dk = dS^T (scale q).
        q, k, v, out, saved = ctx.saved_tensors
        p, seed = ctx.p, ctx.seed
        n, h, s, dh = q.shape
        scale, r = dh**-0.5, 1.0 / (1.0 - p)
        mm = _Products(dh < NARROW_DH)
        qs, kk, vv, gr = (_operand(x, f, mm.narrow) for x, f in ((q, scale), (k, 1.0), (v, 1.0), (grad_out, r)))
        rowdot = torch.linalg.vecdot(grad_out, out).view(n * h, s, 1)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(kk), torch.zeros_like(vv)
        chunks = _chunks(n * h, s)
        probs_buffer, weights_buffer, grad_buffer = _buffers(q, chunks, s, 3)
        keep_buffer = probs_buffer.new_empty(probs_buffer.shape, dtype=torch.uint8)
        generator = torch.Generator(device=q.device).manual_seed(seed)
        for a, b, r0, r1 in chunks:  # the forward's chunks and draws, in the same order
            seqs, rows, shape = slice(a, b), slice(r0, r1), (b - a, r1 - r0, s)
            size = shape[0] * shape[1] * s
            if saved is None:
                keep = fill_keep_(keep_buffer[:size].view(shape), p, generator=generator)  # m
            else:
                keep = saved[seqs, rows]
            probs = mm.scores(mm.rows(qs, seqs, rows), kk[seqs], out=probs_buffer[:size].view(shape))
            torch.softmax(probs, dim=-1, out=probs)  # in place: P
            weights = torch.mul(probs, keep, out=weights_buffer[:size].view(shape))  # P * m
            g = mm.rows(gr, seqs, rows)
            mm.add_transposed_times(weights, g, out=dv[seqs])
            dscores = mm.scores(g, vv[seqs], out=grad_buffer[:size].view(shape))  # g' v^T
            dscores.mul_(weights).addcmul_(probs, rowdot[seqs, rows], value=-1.0)  # dS
            mm.times(dscores, kk[seqs], out=mm.rows(dq, seqs, rows))
            mm.add_transposed_times(dscores, mm.rows(qs, seqs, rows), out=dk[seqs])
        return (_unoperand(dq, scale, q.shape, mm.narrow), _unoperand(dk, 1.0, q.shape, mm.narrow),
                _unoperand(dv, 1.0, q.shape, mm.narrow), None, None)
