"""Scaled dot-product attention, with a memory-lean dropout path for CPU training.

Attention dropout (docs/method.md §3.5: 0.1) makes PyTorch fall back to its "math" kernel on CPU,
which stores the whole (N, h, s, s) probability matrix, its dropout mask and the dropped
copy for the backward pass: about 1.5 GB per time path of the medium model on 6 s of audio.
:class:`_DropoutAttention` computes the same function (each attention probability dropped
with probability p, the rest scaled by 1 / (1 - p)) in chunks and saves only q, k and v (laid
out for the products), the output and, within :data:`SAVED_MASK_BYTES`, the dropout masks as
bytes or bits; masks over that are drawn again from a seed in the backward pass, as flash
attention does. On CUDA, SDPA's fused kernels support dropout themselves and are used directly.

The (n, R, s) scores of a chunk (n whole sequences, or R query rows of one sequence) dominate
the training time of the small presets on CPU, so the chunk loop is written for few, cheap
passes over them:

- chunks of :data:`CHUNK_ELEMENTS` scores per thread, in buffers reused from chunk to chunk;
- the scale and 1 / (1 - p) folded into the (s, dh) operands, the fused softmax in place;
- the mask drawn as 16-bit integers and written as 0/1 bytes (:func:`fill_keep_`), which
  multiply the probabilities 4x faster than booleans;
- for dh < :data:`NARROW_DH`, every product with a (s, dh) result computed transposed:
  MKL's sgemm makes (dh, s) = (dh, s') (s', s) about 4x faster than (s, s') (s', dh) at dh = 8,
  so those operands are kept as (dh, s) matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixitcli.model.dropout import fill_keep_

CHUNK_ELEMENTS = 1 << 19
"""Attention scores per chunk and thread (512 Ki floats = 2 MB per buffer and thread; a whole
time-path sequence of 6 s), up to :data:`MAX_CHUNK_ELEMENTS` a chunk.

Measured on the tiny time path (AMD EPYC, 1 MB L2). 1 thread: 1 << 16 (buffers that fit in
L2) takes 30 % longer, as every chunk costs about 17 operator calls of Python overhead,
1 << 22 takes 45 % longer, out of cache. 2 threads: chunks of 1 << 20 take 0.14 s of wall
time, of 1 << 19 0.17 s, as every operator call also costs a fork and a join of the threads.
"""

MAX_CHUNK_ELEMENTS = 1 << 23
"""At most this many scores per chunk (32 MB per buffer), whatever the number of threads."""

SAVED_MASK_BYTES = 64 << 20
"""The memory that may keep a call's masks from the forward pass for the backward one: as
bytes if they fit (33 MB for a time path of the tiny preset on 6 s of audio), else as bits
(17 MB for the medium preset's), else they are drawn again. Forward and backward, 1 thread:
tiny time path 0.25 s drawing again, 0.23 s with bits, 0.22 s with bytes; medium time path
1.52 s drawing again, 1.36 s with bits."""

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
    if dropout_p == 0.0 or q.is_cuda or q.numel() == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    seed = int(torch.randint(0, 2**62, (1,)).item())  # drawn from the global RNG: reproducible runs
    return _DropoutAttention.apply(q, k, v, dropout_p, seed)


def _chunk_elements() -> int:
    """Scores per chunk: :data:`CHUNK_ELEMENTS` per thread, at most :data:`MAX_CHUNK_ELEMENTS`."""
    return min(CHUNK_ELEMENTS * torch.get_num_threads(), MAX_CHUNK_ELEMENTS)


def _chunks(n: int, s: int, elements: int) -> list[tuple[int, int, int, int]]:
    """The chunks (first sequence, end, first query row, end) of n sequences of length s.

    Whole sequences while one fits in ``elements`` scores, else rows of one sequence;
    either way in the element order of the (n, s, s) scores, so the masks drawn chunk after
    chunk from one generator are the mask of all the scores drawn at once (:func:`fill_keep_`),
    whatever the chunk size.
    """
    if s * s <= elements:
        step = elements // (s * s)
        return [(a, min(a + step, n), 0, s) for a in range(0, n, step)]
    parts = -(-s // max(1, elements // s))
    rows = -(-s // parts)  # at most elements // s, as even as the parts can be
    return [(a, a + 1, r, min(r + rows, s)) for a in range(n) for r in range(0, s, rows)]


def _buffers(
    like: torch.Tensor, chunks: list[tuple[int, int, int, int]], s: int, count: int, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """``count`` flat buffers, each large enough for the scores of the largest chunk, reused by every chunk."""
    size = max((b - a) * (r1 - r0) for a, b, r0, r1 in chunks) * s
    return [like.new_empty(size, dtype=dtype) for _ in range(count)]


def _saved_masks(like: torch.Tensor, chunks: list[tuple[int, int, int, int]], s: int) -> torch.Tensor | None:
    """Room to keep the masks within :data:`SAVED_MASK_BYTES`: (n, s, s) bytes, or the chunks'
    masks one after the other as bits (:func:`_pack_bits`), flat, or None."""
    n = chunks[-1][1]
    if n * s * s <= SAVED_MASK_BYTES:
        return like.new_empty(n, s, s, dtype=torch.uint8)
    size = sum(-(-(b - a) * (r1 - r0) * s // 8) for a, b, r0, r1 in chunks)
    return like.new_empty(size, dtype=torch.uint8) if size <= SAVED_MASK_BYTES else None


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

    A chunk is (sequences, query rows) of the (n, s, s) scores, and ``rows`` selects the
    chunk's rows of an operand. The products are written for the (s, dh) layout and computed
    transposed in the narrow one.
    """

    def __init__(self, narrow: bool):
        self.narrow = narrow

    def rows(self, x: torch.Tensor, seqs: slice, rows: slice) -> torch.Tensor:
        return x[seqs, :, rows] if self.narrow else x[seqs, rows]

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


# Bit packing, 8 mask bytes (each 0 or 1) per int64 word. Packing multiplies the word, byte j
# worth 2^(8 j), by sum_i 2^(9 i): the terms byte_j * 2^(8 j + 9 i) fall on distinct bits, so
# nothing carries, and those with i + j = 7 make the top byte, byte j as its bit 7 - j.
# Unpacking copies the byte into all 8 of a word (times sum_j 2^(8 j)) and keeps bit 7 - j in
# byte j. The products overflow int64 and wrap around, as integer tensor arithmetic does.
_GATHER = sum(1 << (9 * i) for i in range(8)) - (1 << 64)  # 0x8040201008040201, as a signed int64
_SPREAD = sum(1 << (8 * j) for j in range(8))  # 0x0101010101010101
_SELECT = sum(1 << (8 * j + 7 - j) for j in range(8))  # 0x0102040810204080


def _pack_bits(keep: torch.Tensor, out: torch.Tensor) -> None:
    """(c,) uint8 0/1 -> ``out`` (ceil(c / 8),) uint8, 8 elements per byte, the last padded with 0."""
    if keep.numel() % 8:
        keep = F.pad(keep, (0, -keep.numel() % 8))
    words = keep.view(torch.int64) * _GATHER
    out.copy_(words.bitwise_right_shift_(56))  # the top bytes (shifting into uint8 directly is slower)


def _unpack_bits(packed: torch.Tensor, out: torch.Tensor) -> None:
    """The inverse of :func:`_pack_bits`: (ceil(c / 8),) uint8 -> ``out`` (c,) uint8 0/1."""
    words = packed.to(torch.int64).mul_(_SPREAD).bitwise_and_(_SELECT)
    torch.ne(words.view(torch.uint8)[: out.numel()], 0, out=out)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int):
        # out = r (P * m) v with P = softmax(q k^T * scale), m the keep mask, r = 1 / (1 - p)
        n, h, s, dh = q.shape
        scale, r = dh**-0.5, 1.0 / (1.0 - p)
        mm = _Products(dh < NARROW_DH)
        qs, kk, vr = _operand(q, scale, mm.narrow), _operand(k, 1.0, mm.narrow), _operand(v, r, mm.narrow)
        out = torch.empty_like(qs)
        chunks = _chunks(n * h, s, _chunk_elements())
        probs_buffer, keep_buffer = _buffers(q, chunks, s, 1) + _buffers(q, chunks, s, 1, torch.uint8)
        saved, at = _saved_masks(q, chunks, s), 0
        as_bytes = saved is not None and saved.dim() == 3
        generator = torch.Generator(device=q.device).manual_seed(seed)
        for a, b, r0, r1 in chunks:
            seqs, rows, shape = slice(a, b), slice(r0, r1), (b - a, r1 - r0, s)
            size = shape[0] * shape[1] * s
            keep = saved[seqs, rows] if as_bytes else keep_buffer[:size].view(shape)
            fill_keep_(keep, p, generator=generator)  # m
            if saved is not None and not as_bytes:
                _pack_bits(keep.view(-1), out=saved[at : at + -(-size // 8)])
                at += -(-size // 8)
            probs = mm.scores(mm.rows(qs, seqs, rows), kk[seqs], out=probs_buffer[:size].view(shape))
            torch.softmax(probs, dim=-1, out=probs)  # in place: P
            mm.times(probs.mul_(keep), vr[seqs], out=mm.rows(out, seqs, rows))
        out = _unoperand(out, 1.0, q.shape, mm.narrow)
        # the operands instead of q, k, v: as much memory (q, k and v are views of one tensor), less work
        ctx.save_for_backward(qs, kk, vr, out, saved)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # With g the output gradient: dv = r (P * m)^T g, and
        # dS = P * (m * (g (r v)^T) - rowsum(g * out)), since rowsum(P * m * (g (r v)^T)) = rowsum(g * out);
        # dq = scale dS k, dk = dS^T (scale q).
        qs, kk, vr, out, saved = ctx.saved_tensors
        p, seed = ctx.p, ctx.seed
        n, h, s, dh = out.shape
        scale, r = dh**-0.5, 1.0 / (1.0 - p)
        mm = _Products(dh < NARROW_DH)
        grad = _operand(grad_out, 1.0, mm.narrow)
        rowdot = torch.linalg.vecdot(grad_out, out).view(n * h, s, 1)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(kk), torch.zeros_like(vr)
        chunks = _chunks(n * h, s, _chunk_elements())
        probs_buffer, weights_buffer, grad_buffer = _buffers(out, chunks, s, 3)
        (keep_buffer,) = _buffers(out, chunks, s, 1, torch.uint8)
        generator, at = torch.Generator(device=out.device).manual_seed(seed), 0
        for a, b, r0, r1 in chunks:  # the forward's chunks and draws, in the same order
            seqs, rows, shape = slice(a, b), slice(r0, r1), (b - a, r1 - r0, s)
            size = shape[0] * shape[1] * s
            keep = keep_buffer[:size].view(shape)
            if saved is None:
                fill_keep_(keep, p, generator=generator)  # m
            elif saved.dim() == 3:  # bytes
                keep = saved[seqs, rows]
            else:
                _unpack_bits(saved[at : at + -(-size // 8)], out=keep.view(-1))
                at += -(-size // 8)
            probs = mm.scores(mm.rows(qs, seqs, rows), kk[seqs], out=probs_buffer[:size].view(shape))
            torch.softmax(probs, dim=-1, out=probs)  # in place: P
            weights = torch.mul(probs, keep, out=weights_buffer[:size].view(shape))  # P * m
            g = mm.rows(grad, seqs, rows)
            mm.add_transposed_times(weights, g, out=dv[seqs])
            dscores = mm.scores(g, vr[seqs], out=grad_buffer[:size].view(shape))  # g (r v)^T
            dscores.mul_(weights).addcmul_(probs, rowdot[seqs, rows], value=-1.0)  # dS
            mm.times(dscores, kk[seqs], out=mm.rows(dq, seqs, rows))
            mm.add_transposed_times(dscores, mm.rows(qs, seqs, rows), out=dk[seqs])
        return (
            _unoperand(dq, scale, out.shape, mm.narrow),
            _unoperand(dk, 1.0, out.shape, mm.narrow),
            _unoperand(dv, r, out.shape, mm.narrow),
            None,
            None,
        )
