"""Scaled dot-product and multi-head attention, written out so the maths is visible.

Vaswani et al. (2017, arXiv:1706.03762) define attention as
``softmax(Q K^T / sqrt(d_k) + mask) V``. PyTorch ships a fused version
(:func:`torch.nn.functional.scaled_dot_product_attention`) and a layer
(:class:`torch.nn.MultiheadAttention`); this module re-implements both in a few readable
lines so that a chapter can show every step, and its tests check the results against those
production implementations. It also holds the variants the chapter discusses as research
trends: causal and sliding-window masks, grouped-query attention (Ainslie et al. 2023,
arXiv:2305.13245) and the KV-cache arithmetic that motivates it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive integer")


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(length, length)`` mask, True where query ``i`` may see key ``j <= i``.

    A decoder must not look at the tokens it is asked to predict; this is the mask that
    enforces it (True = keep, the convention of ``scaled_dot_product_attention``).
    """
    _check_positive("length", length)
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def sliding_window_mask(length: int, window: int, device: torch.device | None = None) -> Tensor:
    """Causal mask that also hides keys more than ``window - 1`` positions back.

    Local attention (Child et al. 2019; Beltagy et al. 2020) keeps each query's cost at
    ``window`` keys instead of ``length``, so a layer costs O(length * window).
    """
    _check_positive("length", length)
    _check_positive("window", window)
    i = torch.arange(length, device=device)
    offset = i[:, None] - i[None, :]
    return (offset >= 0) & (offset < window)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``softmax(q k^T / sqrt(d)) v`` with an optional boolean mask (True = attend).

    Shapes: ``q`` is ``(..., Lq, d)``, ``k`` is ``(..., Lk, d)``, ``v`` is ``(..., Lk, dv)``;
    the mask broadcasts to ``(..., Lq, Lk)``. The scores are divided by ``sqrt(d)`` so that
    their variance stays near one whatever the head size, which keeps the softmax out of
    its flat, gradient-free regions. This is the naive algorithm: it materialises the whole
    ``Lq x Lk`` score matrix, which is exactly the quadratic memory the chapter measures.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has head size {q.shape[-1]} but k has {k.shape[-1]}; they must match")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k has {k.shape[-2]} positions but v has {v.shape[-2]}; they must match")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = weights @ v
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query/key/value/output projections.

    ``h`` heads of size ``d_model / h`` attend in parallel to different subspaces and their
    outputs are concatenated and projected back (Vaswani et al. 2017, Sec. 3.2.2). With
    ``n_kv_heads < n_heads`` it becomes grouped-query attention (one key/value head shared
    by ``n_heads / n_kv_heads`` query heads), and ``n_kv_heads = 1`` is multi-query
    attention (Shazeer 2019). ``fused=True`` runs the same maths through PyTorch's fused
    kernel, which is faster; ``fused=False`` uses :func:`scaled_dot_product_attention`
    above and can return the attention weights for plotting.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        fused: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("d_model", d_model)
        _check_positive("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _check_positive("n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.fused = fused
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.last_weights: Tensor | None = None  # (B, h, Lq, Lk) when fused=False

    def _split(self, x: Tensor, heads: int) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, heads, self.head_dim).transpose(1, 2)  # (B, heads, L, hd)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` ``(B, Lq, d)`` to ``key``/``value`` ``(B, Lk, d)``.

        ``key`` and ``value`` default to ``query`` (self-attention). ``mask`` is boolean,
        True where attention is allowed, broadcastable to ``(B, heads, Lq, Lk)``.
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query must have shape (batch, length, {self.d_model}), got {tuple(query.shape)}"
            )
        key = query if key is None else key
        value = key if value is None else value
        q = self._split(self.q_proj(query), self.n_heads)
        k = self._split(self.k_proj(key), self.n_kv_heads)
        v = self._split(self.v_proj(value), self.n_kv_heads)
        if self.n_kv_heads != self.n_heads:  # each key/value head serves a group of queries
            group = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            self.last_weights = None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
            self.last_weights = weights.detach()
        B, _, Lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, self.d_model))

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (batch_first) into this layer.

        PyTorch stores the three input projections stacked in one ``in_proj_weight``; the
        copy splits it so that both layers compute the same function, which the tests and
        the chapter check to within float32 rounding.
        """
        if mha.embed_dim != self.d_model or mha.num_heads != self.n_heads:
            raise ValueError(
                f"mha has embed_dim={mha.embed_dim}, num_heads={mha.num_heads}; this layer "
                f"has d_model={self.d_model}, n_heads={self.n_heads}"
            )
        if self.n_kv_heads != self.n_heads:
            raise ValueError("only full multi-head attention (n_kv_heads == n_heads) matches mha")
        if mha.in_proj_weight is None:
            raise ValueError("mha must use a packed in_proj_weight (kdim == vdim == embed_dim)")
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        for proj, w in zip((self.q_proj, self.k_proj, self.v_proj), (wq, wk, wv), strict=True):
            proj.weight.copy_(w)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.in_proj_bias is not None and self.q_proj.bias is not None:
            bq, bk, bv = mha.in_proj_bias.chunk(3)
            for proj, b in zip((self.q_proj, self.k_proj, self.v_proj), (bq, bk, bv), strict=True):
                proj.bias.copy_(b)
            self.out_proj.bias.copy_(mha.out_proj.bias)
        return self


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    context: int,
    batch: int = 1,
    bytes_per_value: int = 2,
) -> int:
    """Bytes a decoder keeps for its key/value cache: ``2 * layers * kv_heads * hd * ctx``.

    During generation every past token's keys and values are kept so they are not
    recomputed; this cache, not the weights, often bounds the batch size a server can run.
    Multi-query and grouped-query attention shrink it by sharing key/value heads.
    ``bytes_per_value`` is 2 for 16-bit floats.
    """
    for name, value in (
        ("n_layers", n_layers),
        ("n_kv_heads", n_kv_heads),
        ("head_dim", head_dim),
        ("context", context),
        ("batch", batch),
        ("bytes_per_value", bytes_per_value),
    ):
        _check_positive(name, value)
    return 2 * n_layers * n_kv_heads * head_dim * context * batch * bytes_per_value
