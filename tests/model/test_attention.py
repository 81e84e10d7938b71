"""The memory-lean dropout attention computes attention with dropout, and its gradients."""

import pytest
import torch
import torch.nn.functional as F

from mixitcli.model import attention as attn_module
from mixitcli.model.attention import _DropoutAttention, attention
from mixitcli.model.bslocoformer import ConvSwiGLU


@pytest.fixture
def qkv():
    torch.manual_seed(0)
    shape = (5, 2, 7, 4)  # (N, h, s, dh)
    return [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3)]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(attn_module, "CHUNK_ELEMENTS", 2 * 7 * 7 * 2)  # 2 sequences per chunk: 3 chunks


def test_without_dropout_equals_sdpa(qkv, small_chunks):
    q, k, v = qkv
    ours = _DropoutAttention.apply(q, k, v, 0.0, 123)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(ours, ref, atol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_dropout_gradients_are_exact(qkv, small_chunks):
    q, k, v = qkv
    assert torch.autograd.gradcheck(lambda q, k, v: _DropoutAttention.apply(q, k, v, 0.3, 42), (q, k, v))


def test_dropout_equals_explicit_masked_attention(qkv, small_chunks):
    q, k, v = qkv
    out = _DropoutAttention.apply(q, k, v, 0.5, 7)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    chunks = attn_module._chunks(q)
    keep = torch.cat([attn_module._keep(probs[a:b].shape, 0.5, 7, i, probs.device) for i, (a, b) in enumerate(chunks)])
    assert keep.dtype == torch.bool and 0 < keep.sum() < keep.numel()
    assert torch.allclose(out, (probs * keep) @ v * 2.0, atol=1e-12)


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


def test_ffn_padding_equals_the_official_pad_and_crop():
    torch.manual_seed(0)
    ffn = ConvSwiGLU(6, 5, kernel_size=8, stride=1, dropout=0.0)
    x = torch.randn(3, 11, 6)
    # official: zero-pad by 7 on both sides, valid convolutions, crop [7, 7 + s)
    y = F.pad(x.transpose(1, 2), (7, 7))
    y = F.conv1d(y, ffn.conv.weight, ffn.conv.bias)
    y = y[:, :5] * F.silu(y[:, 5:])
    y = F.conv_transpose1d(y, ffn.deconv.weight, ffn.deconv.bias)[:, :, 7 : 7 + 11].transpose(1, 2)
    assert torch.allclose(ffn(x), y, atol=1e-6)
