"""The encoder-decoder transformer of Vaswani et al. (2017), small enough for a CPU.

One file, nanoGPT-style: a config dataclass, an encoder layer, a decoder layer and the
model. It follows the paper's layout: sinusoidal position encodings added to scaled token
embeddings, multi-head attention and a two-layer feed-forward network in every layer, each
sub-layer wrapped as ``LayerNorm(x + sublayer(x))`` (post-norm, as in the paper), and a
decoder whose self-attention is causal and whose cross-attention reads the encoder output.
Attention comes from :mod:`mlupdates.attention`, the from-scratch layer the chapter checks
against ``torch.nn.MultiheadAttention``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlupdates.attention import MultiHeadAttention, causal_mask


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """``(length, d_model)`` table ``PE[p, 2i] = sin(p / 10000^(2i/d))``, cosine at ``2i+1``.

    Attention is blind to order; these fixed waves tell each position where it is, and a
    shift by ``k`` positions is a linear map of the table, which makes relative offsets
    easy for a layer to read (Vaswani et al. 2017, Sec. 3.5).
    """
    if length < 1:
        raise ValueError(f"length={length} must be positive")
    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model={d_model} must be a positive even number")
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2) / d_model)
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a :class:`Seq2SeqTransformer`; the defaults train in seconds on a CPU."""

    vocab_size: int = 11
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    n_encoder_layers: int = 1
    n_decoder_layers: int = 1
    max_len: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_encoder_layers < 1 or self.n_decoder_layers < 1:
            raise ValueError("n_encoder_layers and n_decoder_layers must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class FeedForward(nn.Sequential):
    """Position-wise ``Linear -> ReLU -> Linear``: the per-token computation of a layer."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with a residual connection and LayerNorm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))
        return self.norm2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, y: Tensor, memory: Tensor) -> Tensor:
        mask = causal_mask(y.shape[1], y.device)
        y = self.norms[0](y + self.drop(self.self_attn(y, mask=mask)))
        y = self.norms[1](y + self.drop(self.cross_attn(y, memory)))
        return self.norms[2](y + self.drop(self.ff(y)))


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder transformer for token-to-token tasks (translation, copy, reverse)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.register_buffer("pe", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        # Embeddings are multiplied by sqrt(d_model) below, so start them at 1/sqrt(d_model):
        # scaled, they then match the unit amplitude of the position encodings.
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)

    def _embed(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds max_len={self.cfg.max_len}"
            )
        return self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.pe[: tokens.shape[1]]

    def encode(self, src: Tensor) -> Tensor:
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x)
        return x  # (B, Ls, d)

    def decode(self, tgt_in: Tensor, memory: Tensor) -> Tensor:
        y = self._embed(tgt_in)
        for layer in self.decoder:
            y = layer(y, memory)
        return self.head(y)  # (B, Lt, vocab)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src))

    @torch.no_grad()
    def generate(self, src: Tensor, length: int, bos: int = 0) -> Tensor:
        """Greedy decoding of ``length`` tokens, each step fed the tokens chosen so far."""
        if length < 1:
            raise ValueError(f"length={length} must be positive")
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        for _ in range(length):
            nxt = self.decode(out, memory)[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
        return out[:, 1:]
