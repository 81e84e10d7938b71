"""The memory-lean dropout attention computes attention with dropout, and its gradients."""

import pytest
import torch
import torch.nn.functional as F

from mixitcli.model import attention as attn_module
from mixitcli.model.attention import _DropoutAttention, attention
from mixitcli.model.dropout import fill_keep_


@pytest.fixture
def qkv():
    torch.manual_seed(0)
    shape = (5, 2, 7, 4)  # (N, h, s, dh)
    return [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3)]


CHUNKINGS = {
    "one chunk": 1 << 16,
    "sequences": 4 * 7 * 7,  # 4 sequences per chunk: chunks of 4, 4 and 2
    "rows": 28,  # rows 0-3 and 4-6 of each sequence
}


@pytest.fixture(params=list(CHUNKINGS))
def chunking(request, monkeypatch):
    monkeypatch.setattr(attn_module, "MAX_CHUNK_ELEMENTS", CHUNKINGS[request.param])
    return request.param


@pytest.fixture(params=["narrow", "wide"])
def layout(request, monkeypatch):
    """Both layouts of the (s, dh) operands, whatever dh: (dh, s) matrices, or (s, dh)."""
    monkeypatch.setattr(attn_module, "NARROW_DH", 1000 if request.param == "narrow" else 0)
    return request.param


SAVED_MASKS = {"bytes": 1 << 20, "bits": 100, "drawn again": 0}  # 490 scores: bytes, or 63-70 bytes of bits


@pytest.fixture(params=list(SAVED_MASKS))
def masks(request, monkeypatch):
    """The backward pass with the forward's masks kept as bytes or bits, or drawn again from the seed."""
    monkeypatch.setattr(attn_module, "SAVED_MASK_BYTES", SAVED_MASKS[request.param])
    return request.param


@pytest.mark.parametrize(
    "n, s, elements", [(10, 7, 196), (3, 7, 20), (3, 7, 28), (3, 516, 1 << 16), (1032, 62, 1 << 16)]
)
def test_chunks_cover_the_scores_in_order(n, s, elements):
    chunks = attn_module._chunks(n, s, elements)
    order = [(i, r) for a, b, r0, r1 in chunks for i in range(a, b) for r in range(r0, r1)]
    assert order == [(i, r) for i in range(n) for r in range(s)]
    assert max((b - a) * (r1 - r0) * s for a, b, r0, r1 in chunks) <= max(elements, s)


def test_bits_unpack_to_what_was_packed():
    byte = torch.arange(256)
    keep = ((byte[:, None] >> torch.arange(8)) & 1).to(torch.uint8).flatten()  # every byte pattern
    keep = torch.cat([keep, torch.tensor([1, 0, 1], dtype=torch.uint8)])  # and a partial byte
    packed = torch.empty(257, dtype=torch.uint8)
    attn_module._pack_bits(keep, out=packed)
    assert packed[:256].unique().numel() == 256
    unpacked = torch.empty_like(keep)
    attn_module._unpack_bits(packed, out=unpacked)
    assert torch.equal(unpacked, keep)


def test_without_dropout_equals_sdpa(qkv, chunking, layout):
    q, k, v = qkv
    ours = _DropoutAttention.apply(q, k, v, 0.0, 123)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(ours, ref, atol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_dropout_gradients_are_exact(qkv, chunking, layout):
    # with the saved masks; test_chunks_and_saved_masks_... checks that drawing them again changes nothing
    q, k, v = qkv
    assert torch.autograd.gradcheck(lambda q, k, v: _DropoutAttention.apply(q, k, v, 0.3, 42), (q, k, v))


def test_dropout_equals_explicit_masked_attention(qkv, chunking, layout, masks):
    q, k, v = qkv
    out = _DropoutAttention.apply(q, k, v, 0.5, 7)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    # the mask of all the scores drawn at once, whatever the chunks
    keep = fill_keep_(torch.empty_like(probs), 0.5, generator=torch.Generator().manual_seed(7))
    assert 0 < keep.sum() < keep.numel()
    assert torch.allclose(out, (probs * keep) @ v * 2.0, atol=1e-12)


def test_chunks_and_saved_masks_do_not_change_values_or_gradients(qkv, layout, monkeypatch):
    q, k, v = qkv
    g = torch.randn_like(q)
    results = []
    for elements in CHUNKINGS.values():
        for saved_bytes in SAVED_MASKS.values():
            monkeypatch.setattr(attn_module, "MAX_CHUNK_ELEMENTS", elements)
            monkeypatch.setattr(attn_module, "SAVED_MASK_BYTES", saved_bytes)
            out = _DropoutAttention.apply(q, k, v, 0.3, 5)
            results.append((out, *torch.autograd.grad(out, (q, k, v), g)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, atol=1e-12)


def test_non_contiguous_inputs_and_odd_shapes():
    torch.manual_seed(0)
    qkv = torch.randn(3, 9, 3, 2, 5, dtype=torch.float64)  # (N, s, 3, h, dh), as SelfAttention lays it out
    q, k, v = qkv.permute(2, 0, 3, 1, 4).requires_grad_()  # (N, h, s, dh) views
    out = _DropoutAttention.apply(q, k, v, 0.0, 1)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, k, v: _DropoutAttention.apply(q, k, v, 0.2, 3), (q, k, v))


def test_dropout_rate_and_mean():
    torch.manual_seed(0)
    q = torch.zeros(64, 2, 32, 8)  # uniform attention: every weight 1/32
    k = torch.zeros_like(q)
    v = torch.ones_like(q)
    out = attention(q, k, v, dropout_p=0.1)  # each output = (kept weights) * 1/0.9 summed
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    kept = out[..., 0] * 0.9 * 32  # number of kept weights per row
    assert (kept.mean() / 32).item() == pytest.approx(0.9, abs=0.005)


def test_masks_follow_the_global_seed():
    q = torch.randn(3, 2, 16, 4)
    torch.manual_seed(1)
    a = attention(q, q, q, dropout_p=0.2)
    torch.manual_seed(1)
    b = attention(q, q, q, dropout_p=0.2)
    c = attention(q, q, q, dropout_p=0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
