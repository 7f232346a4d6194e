"""The from-scratch attention must equal PyTorch's production implementations."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlupdates.attention import (
    MultiHeadAttention,
    causal_mask,
    kv_cache_bytes,
    scaled_dot_product_attention,
    sliding_window_mask,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_matches_torch(masked):
    q, k, v = torch.randn(3, 2, 3, 9, 8).unbind(0)
    mask = causal_mask(9) if masked else None
    ours = scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (ours - ref).abs().max() < 1e-5


def test_sdpa_weights_are_a_distribution_and_respect_mask():
    q, k, v = torch.randn(3, 1, 6, 4).unbind(0)
    _, w = scaled_dot_product_attention(q, k, v, causal_mask(6), return_weights=True)
    assert torch.allclose(w.sum(-1), torch.ones(1, 6))
    assert (w.triu(1) == 0).all() and (w.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_sdpa_cross_attention_shapes_and_errors():
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 3)
    assert scaled_dot_product_attention(q, k, v).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="head size"):
        scaled_dot_product_attention(q, torch.randn(2, 7, 4), v)
    with pytest.raises(ValueError, match="positions"):
        scaled_dot_product_attention(q, k, torch.randn(2, 6, 3))
    with pytest.raises(TypeError, match="mask must be a bool"):
        scaled_dot_product_attention(q, k, v, torch.ones(5, 7))


@pytest.mark.parametrize("fused", [True, False])
def test_multihead_matches_nn_multiheadattention(fused):
    torch_mha = nn.MultiheadAttention(32, 4, batch_first=True)
    ours = MultiHeadAttention(32, 4, fused=fused).load_from_torch(torch_mha)
    x, mem = torch.randn(2, 6, 32), torch.randn(2, 9, 32)
    assert (ours(x) - torch_mha(x, x, x, need_weights=False)[0]).abs().max() < 1e-5
    assert (ours(x, mem) - torch_mha(x, mem, mem, need_weights=False)[0]).abs().max() < 1e-5
    mask = causal_mask(6)
    ref = torch_mha(x, x, x, attn_mask=~mask, need_weights=False)[0]  # torch: True = block
    assert (ours(x, mask=mask) - ref).abs().max() < 1e-5


def test_unfused_keeps_weights_for_plotting():
    mha = MultiHeadAttention(16, 2, fused=False)
    mha(torch.randn(1, 5, 16))
    assert mha.last_weights.shape == (1, 2, 5, 5)


def test_grouped_query_attention_equals_repeated_kv_heads():
    gqa = MultiHeadAttention(32, n_heads=4, n_kv_heads=2)
    mha = MultiHeadAttention(32, n_heads=4)
    with torch.no_grad():  # expand each kv head's projection to its two query heads
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32)
            b = getattr(gqa, name).bias.view(2, 8).repeat_interleave(2, 0).reshape(32)
            getattr(mha, name).weight.copy_(w)
            getattr(mha, name).bias.copy_(b)
        for name in ("q_proj", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
    x = torch.randn(2, 7, 32)
    assert torch.allclose(gqa(x), mha(x), atol=1e-6)
    assert gqa.k_proj.weight.shape == (16, 32)


def test_multihead_errors_name_the_argument():
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_heads=4 must be divisible by n_kv_heads=3"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="query must have shape"):
        MultiHeadAttention(32, 4)(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="embed_dim"):
        MultiHeadAttention(32, 4).load_from_torch(nn.MultiheadAttention(16, 4, batch_first=True))


def test_masks():
    assert causal_mask(4).sum() == 10
    w = sliding_window_mask(6, 2)
    assert w.sum() == 11 and w[5, 4] and not w[5, 3] and not w[2, 3]
    assert torch.equal(sliding_window_mask(5, 5), causal_mask(5))
    with pytest.raises(ValueError, match="window=0"):
        sliding_window_mask(5, 0)
    with pytest.raises(ValueError, match="length=0"):
        causal_mask(0)


def test_kv_cache_bytes():
    # LLaMA-65B: 80 layers, 64 heads of 128, 4096 tokens, fp16 -> exactly 10 GiB
    assert kv_cache_bytes(80, 64, 128, 4096) == 10 * 2**30
    assert kv_cache_bytes(80, 8, 128, 4096) * 8 == kv_cache_bytes(80, 64, 128, 4096)
    with pytest.raises(ValueError, match="context=0"):
        kv_cache_bytes(1, 1, 1, 0)
