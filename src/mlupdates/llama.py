"""LLaMA: the decoder-only transformer of Touvron et al. (2023, arXiv:2302.13971), small.

One readable file in the style of nanoGPT's ``model.py`` and of Meta's reference
``llama/model.py``, whose module names (``tok_embeddings``, ``layers.0.attention.wq``,
``feed_forward.w1`` ...) and rotary convention it keeps. LLaMA changes the original
Transformer block (Vaswani et al. 2017) in three ways, each a switch of :class:`LlamaConfig`
so that the chapter can ablate them one at a time:

* **pre-normalisation with RMSNorm** (``prenorm=True``, ``norm="rms"``): the input of each
  sub-layer is normalised, not the output of the residual sum, and the normaliser only
  rescales by the root mean square (Zhang & Sennrich 2019, arXiv:1910.07467), with no
  mean subtraction and no bias;
* **SwiGLU** (``mlp="swiglu"``): the feed-forward layer ``w2(silu(w1 x) * w3 x)``
  (Shazeer 2020, arXiv:2002.05202) replaces ``Linear -> ReLU -> Linear``; its hidden size is
  two thirds of ``4 d`` so that its three matrices hold as many numbers as the two of the
  ReLU layer, rounded up to a multiple of ``multiple_of`` (256 in the released models);
* **rotary position embeddings** (``positions="rope"``, :mod:`mlupdates.rope`; Su et al.
  2021, arXiv:2104.09864) rotate queries and keys by their position instead of adding an
  absolute position vector to the token embedding (``positions="learned"``: a learned
  table as in GPT-2; Vaswani et al. found learned and sinusoidal tables equally good).

There are no biases anywhere and the output head is a separate matrix, not tied to the
token embedding. :func:`llama_config` builds the four published sizes; on PyTorch's
``meta`` device (shapes, no storage) their parameter counts are computed in milliseconds
(:func:`count_parameters`). :func:`hf_state_dict` converts the weights to the layout of
``transformers``' ``LlamaForCausalLM``, which the tests use to check that both compute the
same logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlupdates.gpt import next_token_loss
from mlupdates.rope import rope_angles

Norm = Literal["rms", "layer"]
MLPKind = Literal["swiglu", "relu", "gelu"]
Positions = Literal["rope", "learned"]


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes and architecture switches of a :class:`Llama`; defaults are LLaMA's choices.

    ``context`` is the longest sequence the model is used with (2,048 for LLaMA); with
    rotary positions nothing in the weights depends on it. ``ffn_hidden``
    overrides LLaMA's hidden-size rule (:attr:`hidden_dim`). The switches ``prenorm``,
    ``norm``, ``mlp`` and ``positions`` turn the block back into the original Transformer's
    (``False``, ``"layer"``, ``"relu"``, ``"learned"``) for ablations.
    """

    vocab_size: int = 256
    context: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    multiple_of: int = 256
    ffn_hidden: int | None = None
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    prenorm: bool = True
    norm: Norm = "rms"
    mlp: MLPKind = "swiglu"
    positions: Positions = "rope"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.ffn_hidden is not None and (
            not isinstance(self.ffn_hidden, int) or self.ffn_hidden < 1
        ):
            raise ValueError(f"ffn_hidden={self.ffn_hidden!r} must be a positive integer or None")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be positive")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base={self.rope_base} must be greater than 1")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm={self.norm!r} must be 'rms' or 'layer'")
        if self.mlp not in ("swiglu", "relu", "gelu"):
            raise ValueError(f"mlp={self.mlp!r} must be 'swiglu', 'relu' or 'gelu'")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"positions={self.positions!r} must be 'rope' or 'learned'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def hidden_dim(self) -> int:
        """Width of the feed-forward layer.

        SwiGLU: LLaMA's rule, ``2/3 * 4 d`` rounded up to a multiple of ``multiple_of``
        (4096 -> 11008 for the 7B model); the ReLU/GELU layer of the original block: ``4 d``.
        """
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.mlp != "swiglu":
            return 4 * self.d_model
        hidden = int(2 * (4 * self.d_model) / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


# --- the four published sizes -------------------------------------------------------------

#: LLaMA's published shapes and training hyper-parameters (the paper's Table 2). ``params``
#: is the size the paper reports, kept only to compare with the count computed from the shapes.
LLAMA_SIZES: dict[str, dict[str, float | int]] = {
    "7B": {"d_model": 4096, "n_head": 32, "n_layer": 32, "lr": 3.0e-4, "tokens": 1.0e12, "params": 6.7e9},
    "13B": {"d_model": 5120, "n_head": 40, "n_layer": 40, "lr": 3.0e-4, "tokens": 1.0e12, "params": 13.0e9},
    "33B": {"d_model": 6656, "n_head": 52, "n_layer": 60, "lr": 1.5e-4, "tokens": 1.4e12, "params": 32.5e9},
    "65B": {"d_model": 8192, "n_head": 64, "n_layer": 80, "lr": 1.5e-4, "tokens": 1.4e12, "params": 65.2e9},
}  # fmt: skip
#: Every model was trained with batches of 4M tokens, on a 32,000-token SentencePiece
#: vocabulary, with a 2,048-token context.
LLAMA_BATCH_TOKENS = 4_000_000
LLAMA_VOCAB = 32_000
LLAMA_CONTEXT = 2048


#: The pre-training mixture (the paper's Table 1): share of the sampled tokens, passes over
#: the source ("epochs") during the 1.4T-token run, and the source's size on disk in bytes.
LLAMA_DATA: dict[str, dict[str, float]] = {
    "CommonCrawl": {"proportion": 0.670, "epochs": 1.10, "disk_bytes": 3.3e12},
    "C4": {"proportion": 0.150, "epochs": 1.06, "disk_bytes": 783e9},
    "GitHub": {"proportion": 0.045, "epochs": 0.64, "disk_bytes": 328e9},
    "Wikipedia": {"proportion": 0.045, "epochs": 2.45, "disk_bytes": 83e9},
    "Books": {"proportion": 0.045, "epochs": 2.23, "disk_bytes": 85e9},
    "ArXiv": {"proportion": 0.025, "epochs": 1.06, "disk_bytes": 92e9},
    "StackExchange": {"proportion": 0.020, "epochs": 1.03, "disk_bytes": 78e9},
}
LLAMA_TOTAL_TOKENS = 1.4e12
#: GPU-hours on A100-80GB GPUs and the energy (MWh) and emissions (tCO2eq) the paper
#: derives from them (its Table 15; see :mod:`mlupdates.footprint` for the formula).
LLAMA_TRAINING: dict[str, dict[str, int]] = {
    "7B": {"gpu_hours": 82_432, "mwh": 36, "tco2": 14},
    "13B": {"gpu_hours": 135_168, "mwh": 59, "tco2": 23},
    "33B": {"gpu_hours": 530_432, "mwh": 233, "tco2": 90},
    "65B": {"gpu_hours": 1_022_362, "mwh": 449, "tco2": 173},
}


def llama_config(size: str, **overrides) -> LlamaConfig:
    """The architecture of a published LLaMA (``"7B"``, ``"13B"``, ``"33B"`` or ``"65B"``)."""
    if size not in LLAMA_SIZES:
        raise ValueError(f"size={size!r} must be one of {tuple(LLAMA_SIZES)}")
    shape = {k: int(LLAMA_SIZES[size][k]) for k in ("d_model", "n_head", "n_layer")}
    base = LlamaConfig(vocab_size=LLAMA_VOCAB, context=LLAMA_CONTEXT, multiple_of=256, **shape)
    return replace(base, **overrides)


def count_parameters(config: LlamaConfig) -> int:
    """Parameters of ``Llama(config)``, counted on the ``meta`` device.

    Tensors on ``meta`` carry a shape and a dtype but no storage, so even the 65B model
    (260 GB in float32) is built in milliseconds with no memory: the count comes from the
    modules themselves, not from a formula that could drift from them.
    """
    with torch.device("meta"):
        model = Llama(config)
    return sum(p.numel() for p in model.parameters())


# --- layers -------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``: LayerNorm without the mean and the bias.

    Zhang & Sennrich found the re-centring of LayerNorm unnecessary and the rescaling
    alone enough; it is also cheaper. Computed in float32 as Meta's and Hugging Face's
    code do, so half-precision inputs do not lose the small mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def make_norm(config: LlamaConfig) -> nn.Module:
    if config.norm == "rms":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the feature pairs ``(2i, 2i+1)`` of ``x`` ``(..., T, hs)`` by precomputed angles.

    ``cos`` and ``sin`` are ``(T, hs/2)``, from :func:`mlupdates.rope.rope_angles`; the result
    equals :func:`mlupdates.rope.apply_rope` (tested), but the tables are buffers of the model
    that move with it to the GPU and are computed once rather than at every call.
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, hs/2) each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Causal multi-head self-attention; rotary embeddings act on queries and keys only."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        d = config.d_model
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.wv(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:  # rotate pairs (2i, 2i+1) of each head by position * base^(-2i/hs)
            q, k = rotate(q, *rope), rotate(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """SwiGLU ``w2(silu(w1 x) * w3 x)``, or the original ``w2(relu(w1 x))`` (or GELU)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        d, h = config.d_model, config.hidden_dim
        self.w1 = nn.Linear(d, h, bias=False)  # gate (SwiGLU) or the only input projection
        self.w2 = nn.Linear(h, d, bias=False)  # output projection
        self.w3 = nn.Linear(d, h, bias=False) if self.kind == "swiglu" else None  # "up"

    def forward(self, x: Tensor) -> Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, h) inside
        act = F.relu if self.kind == "relu" else F.gelu
        return self.w2(act(self.w1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm ``x + f(norm(x))`` (LLaMA) or post-norm ``norm(x + f(x))`` (Vaswani et al.)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.prenorm = config.prenorm
        self.attention_norm = make_norm(config)
        self.attention = Attention(config)
        self.ffn_norm = make_norm(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.prenorm:
            h = x + self.attention(self.attention_norm(x), rope)
            return h + self.feed_forward(self.ffn_norm(h))
        h = self.attention_norm(x + self.attention(x, rope))
        return self.ffn_norm(h + self.feed_forward(h))


class Llama(nn.Module):
    """Decoder-only language model: tokens in, next-token logits out.

    ``forward(idx, targets)`` has the interface of :class:`mlupdates.gpt.GPT`, so
    :func:`mlupdates.train.train` trains either.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.pos_embeddings = nn.Embedding(config.context, config.d_model)
        else:  # rotary: cos and sin of every (position, pair) angle, (context, hs/2) each
            angles = rope_angles(config.context, config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = make_norm(config) if config.prenorm else nn.Identity()
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)  # not tied
        if self.output.weight.is_meta:  # shapes only (count_parameters): nothing to draw
            return
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual projections, as in GPT-2
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, T, vocab_size)`` and, given ``targets`` ``(B, T)``, the mean loss.

        Targets equal to ``-100`` add nothing to the loss (as in :class:`~mlupdates.gpt.GPT`).
        """
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(
                f"idx must be a (batch, time) LongTensor, got {tuple(idx.shape)} {idx.dtype}"
            )
        T = idx.size(1)
        if not 1 <= T <= self.config.context:
            raise ValueError(f"{T} tokens must be in [1, context={self.config.context}]")
        x = self.tok_embeddings(idx)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.pos_embeddings(torch.arange(T, device=idx.device))
        rope = None
        if self.config.positions == "rope":
            rope = (self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype))
        for layer in self.layers:
            x = layer(x, rope)
        logits = self.output(self.norm(x))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, next_token_loss(logits, targets)


# --- Hugging Face layout ------------------------------------------------------------------


def _interleaved_to_half(w: Tensor, n_head: int) -> Tensor:
    """Reorder the output rows of ``wq``/``wk`` from Meta's rotary layout to Hugging Face's.

    Meta rotates the feature pairs ``(2i, 2i+1)`` of each head; ``transformers`` rotates
    ``(i, i + hs/2)`` ("rotate_half"). Moving the even rows of each head to its first half
    and the odd rows to its second half makes the two compute the same attention scores:
    this is the permutation of Hugging Face's ``convert_llama_weights_to_hf.py``.
    """
    d_out, d_in = w.shape
    hs = d_out // n_head
    return w.view(n_head, hs // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def hf_config_kwargs(config: LlamaConfig) -> dict:
    """Keyword arguments of ``transformers.LlamaConfig`` for the same architecture."""
    if (config.prenorm, config.norm, config.mlp, config.positions) != (
        True,
        "rms",
        "swiglu",
        "rope",
    ):
        raise ValueError(
            "only the LLaMA block (prenorm, rms, swiglu, rope) has a LlamaForCausalLM "
            f"equivalent, got {asdict(config)}"
        )
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "max_position_embeddings": config.context,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }


def hf_state_dict(model: Llama) -> dict[str, Tensor]:
    """``model``'s weights renamed (and ``wq``/``wk`` permuted) for ``LlamaForCausalLM``."""
    names = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w2": "mlp.down_proj",
        "feed_forward.w3": "mlp.up_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    hf_config_kwargs(model.config)  # refuses ablation variants
    out = {
        "model.embed_tokens.weight": model.tok_embeddings.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.output.weight,
    }
    for i, layer in enumerate(model.layers):
        for name, tensor in layer.state_dict().items():
            ours, _, kind = name.rpartition(".")
            if ours in ("attention.wq", "attention.wk"):
                tensor = _interleaved_to_half(tensor, model.config.n_head)
            out[f"model.layers.{i}.{names[ours]}.{kind}"] = tensor
    return {k: v.detach().clone() for k, v in out.items()}
