"""A small GPT: the decoder-only language model of chapter 2, small enough for a CPU.

One readable file in the spirit of nanoGPT's ``model.py``: a config dataclass, causal
self-attention, an MLP, a pre-norm block and the model. It follows GPT-2 (Radford et al.
2019): learned position embeddings, LayerNorm *before* each sub-layer and once more at the
end (pre-norm trains stably without warm-up tricks at depth), GELU in the MLP, the LM head
sharing its weight matrix with the token embedding (weight tying, Press & Wolf 2017,
arXiv:1608.05859), and GPT-2's initialisation, which shrinks the residual projections by
``1/sqrt(2 * n_layer)`` so the residual stream does not grow with depth.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`, the fused
kernel PyTorch picks per device. Generation keeps a KV cache: the keys and values of past
positions are stored, so each new token costs one position's work instead of re-running
the whole prefix. The module names (``transformer.h.0.attn.c_attn`` ...) match Hugging
Face's ``GPT2LMHeadModel``, so :func:`load_gpt2_state_dict` can copy its weights and the
tests check that both produce the same logits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100
"""Target value that contributes nothing to the loss (PyTorch's and Hugging Face's choice)."""


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a :class:`GPT`; the defaults train in seconds on a CPU.

    ``activation="gelu"`` is the exact (erf) GELU that nanoGPT uses; ``"gelu_tanh"`` is the
    tanh approximation that GPT-2 shipped with (Hugging Face's ``"gelu_new"``).
    """

    vocab_size: int = 256
    context: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    dropout: float = 0.0
    bias: bool = True
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"activation={self.activation!r} must be 'gelu' or 'gelu_tanh'")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)``.

    Positions whose target is ``IGNORE_INDEX`` (-100) add nothing, which is how supervised
    fine-tuning trains on answer tokens only; the mean is over the remaining positions, and
    a batch with none left has loss 0 rather than NaN. Shared by every language model in
    the book (GPT here, LLaMA in :mod:`mlupdates.llama`).
    """
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(logits.shape[:2])}"
        )
    total = F.cross_entropy(
        logits.view(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


class KVCache:
    """Keys and values of the positions seen so far, preallocated for the whole context.

    One ``(B, n_head, context, head_dim)`` buffer per layer for keys and one for values;
    ``length`` counts the positions already written. Memory: ``2 * n_layer * B * context *
    d_model`` numbers, the quantity chapter 2's memory calculator scales up.
    """

    def __init__(
        self, config: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        shape = (config.n_layer, batch, config.n_head, config.context, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees only positions ``<= t``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.d_model = config.n_head, config.d_model
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, start: int = 0
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, True
        if cache is not None:  # append this chunk, then attend over everything stored
            cache_k, cache_v = cache  # (B, nh, context, hs)
            cache_k[:, :, start : start + T] = k
            cache_v[:, :, start : start + T] = v
            k, v = cache_k[:, :, : start + T], cache_v[:, :, : start + T]  # (B, nh, S, hs)
            if start > 0:  # queries sit at positions start..start+T-1, keys at 0..start+T-1
                causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise ``Linear(d, 4d) -> GELU -> Linear(4d, d)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) inside


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, start: int = 0
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer language model: tokens in, next-token logits out."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.d_model),
                "wpe": nn.Embedding(config.context, config.d_model),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one (V, C) matrix
        self.apply(self._init_weights)
        # GPT-2: each block adds two projections to the residual stream; scale them down.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (the tied embedding/LM-head matrix counted once).

        ``non_embedding=True`` leaves out the token and position embeddings, the ``N`` of
        Kaplan et al.'s scaling laws (2020, arXiv:2001.08361).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def _check_tokens(self, idx: Tensor, extra: int = 0) -> None:
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(
                f"idx must be a (batch, time) LongTensor, got {tuple(idx.shape)} {idx.dtype}"
            )
        if idx.size(1) < 1:
            raise ValueError("idx must hold at least one token per row")
        if idx.size(1) + extra > self.config.context:
            what = f"{idx.size(1)} tokens" + (f" + max_new_tokens={extra}" if extra else "")
            raise ValueError(f"{what} exceed the model's context={self.config.context}")

    def _hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final hidden states ``(B, T, C)``; with a cache, ``idx`` continues what it holds."""
        start = cache.length if cache is not None else 0
        T = idx.size(1)
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.drop(
            self.transformer.wte(idx) + self.transformer.wpe(pos)
        )  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = block(x, layer_cache, start)
        if cache is not None:
            cache.length = start + T
        return self.transformer.ln_f(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, T, vocab_size)`` and, given ``targets`` ``(B, T)``, the mean loss.

        ``targets[b, t]`` is the token that should follow ``idx[b, :t+1]``; positions whose
        target is ``IGNORE_INDEX`` (-100) add nothing to the loss, which is how supervised
        fine-tuning trains on answer tokens only. A batch with no target left has loss 0
        (not NaN), so it contributes a zero gradient.
        """
        self._check_tokens(idx)
        logits = self.lm_head(self._hidden(idx))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, next_token_loss(logits, targets)

    def logits_at(self, idx: Tensor, keep: Tensor) -> Tensor:
        """Logits ``(N, vocab_size)`` at the ``N`` positions where ``keep`` ``(B, T)`` is True,
        in row-major order: ``self(idx)[0][keep]`` without the output layer's work elsewhere.

        Fine-tuning and preference losses read the model's prediction only at the few reply
        tokens of each chat row; the output layer, whose ``vocab_size`` columns dominate a
        small model's cost, then runs at those positions only. Equal to the full forward
        pass up to float32 rounding.
        """
        self._check_tokens(idx)
        if keep.shape != idx.shape or keep.dtype != torch.bool:
            raise ValueError(
                f"keep must be a bool tensor of idx's shape {tuple(idx.shape)}, got "
                f"{tuple(keep.shape)} {keep.dtype}"
            )
        return self.lm_head(self._hidden(idx)[keep])

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue each row of ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens.

        ``temperature=0`` decodes greedily (arg-max); otherwise the logits are divided by
        ``temperature`` and filtered by ``top_k`` and ``top_p`` before sampling with
        ``generator`` (a ``torch.Generator`` on the model's device). With ``use_cache`` the prompt is encoded once and each step feeds
        only the newest token through the model, reusing stored keys and values; the
        tokens are the same as without the cache. The model runs in eval mode (no dropout)
        and is put back in its previous mode afterwards. The prompt plus the new tokens
        must fit in the context: learned position embeddings stop at ``context``.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be non-negative")
        self._check_tokens(idx, extra=max_new_tokens)
        _check_sampling(temperature, top_k, top_p, self.config.vocab_size)
        was_training = self.training
        self.eval()
        try:
            cache = None
            if use_cache:
                dtype = self.transformer.wte.weight.dtype
                cache = KVCache(self.config, idx.size(0), idx.device, dtype)
            step_input = idx
            for _ in range(max_new_tokens):
                if cache is None:
                    step_input = idx  # no cache: re-read the whole sequence
                h = self._hidden(step_input, cache)  # (B, T or 1, C)
                logits = self.lm_head(h[:, -1, :])  # (B, V): only the last position matters
                next_token = sample_next_token(logits, temperature, top_k, top_p, generator)
                idx = torch.cat([idx, next_token], dim=1)  # (B, T + 1)
                step_input = next_token  # with a cache, only the new token goes in
        finally:
            self.train(was_training)
        return idx


# --- decoding: small pure functions on a (B, V) matrix of logits ------------------------


class TargetLoss(nn.Module):
    """A :class:`GPT` seen by :func:`mlupdates.train.train` with a cheaper, equal loss.

    ``forward(idx, targets)`` returns ``(None, loss)`` where ``loss`` is
    :func:`next_token_loss` of the wrapped model, but the output layer runs only at the
    positions whose target is counted (not ``IGNORE_INDEX``). In supervised fine-tuning on
    chat rows those are the few reply tokens, so the ``(positions, vocab_size)`` logits,
    their softmax and their gradients shrink to a fraction; the loss and its gradient are
    the same up to float32 rounding. The wrapper owns no parameters of its own: training
    it trains ``model`` (``model.train()``, the optimiser and gradient clipping all reach
    the wrapped module).
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, idx: Tensor, targets: Tensor) -> tuple[None, Tensor]:
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}"
            )
        keep = targets != IGNORE_INDEX  # (B, T)
        logits = self.model.logits_at(idx, keep)  # (counted positions, V)
        total = F.cross_entropy(logits, targets[keep], reduction="sum")
        return None, total / keep.sum().clamp(min=1)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k} must be in [1, vocab_size={vocab}]")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide logits by ``temperature``: below 1 sharpens the distribution, above 1 flattens it."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be positive")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (exactly ``k``, ties broken by index); -inf elsewhere."""
    if not 1 <= k <= logits.size(-1):
        raise ValueError(f"k={k} must be in [1, {logits.size(-1)}]")
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020, arXiv:1904.09751): keep the smallest set of
    most likely tokens whose total probability is at least ``p``; -inf elsewhere."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p={p} must be in (0, 1]")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the set was already complete without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row ``(B, 1)`` from logits ``(B, V)``: greedy if ``temperature == 0``,
    else temperature, then top-k, then top-p, then a draw from the remaining distribution."""
    _check_sampling(temperature, top_k, top_p, logits.size(-1))
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@dataclass(frozen=True)
class GenerationTiming:
    """Wall-clock of greedy generation with and without the KV cache (a measurement)."""

    new_tokens: int
    seconds_cache: float
    seconds_no_cache: float
    same_tokens: bool

    @property
    def speedup(self) -> float:
        return self.seconds_no_cache / self.seconds_cache


def time_generation(
    model: GPT, prompt: Tensor, max_new_tokens: int, repeats: int = 3
) -> GenerationTiming:
    """Time greedy generation with and without the cache (best of ``repeats``) and check
    both paths produce the same tokens. For benchmarks and ``NBVAL_IGNORE_OUTPUT`` cells."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")

    def run(use_cache: bool) -> tuple[float, Tensor]:
        best, out = math.inf, prompt
        for _ in range(repeats):
            if prompt.is_cuda:
                torch.cuda.synchronize(prompt.device)
            t0 = time.perf_counter()
            out = model.generate(prompt, max_new_tokens, temperature=0.0, use_cache=use_cache)
            if prompt.is_cuda:
                torch.cuda.synchronize(prompt.device)
            best = min(best, time.perf_counter() - t0)
        return best, out

    seconds_cache, with_cache = run(True)
    seconds_no_cache, without = run(False)
    return GenerationTiming(
        max_new_tokens, seconds_cache, seconds_no_cache, torch.equal(with_cache, without)
    )


# --- Hugging Face GPT-2 interop: the production reference the tests compare against ----

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_config_kwargs(config: GPTConfig) -> dict[str, object]:
    """Keyword arguments for ``transformers.GPT2Config`` describing the same architecture.

    Dropout, LayerNorm epsilon and the GELU variant are carried over so that, with the
    weights copied by :func:`load_gpt2_state_dict`, both models compute the same function.
    """
    if not config.bias:
        raise ValueError("bias=False has no GPT-2 equivalent: GPT-2 always has biases")
    return {
        "vocab_size": config.vocab_size,
        "n_positions": config.context,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": 4 * config.d_model,
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "tie_word_embeddings": True,
        "bos_token_id": None,  # GPT-2's 50256 lies outside a small vocabulary
        "eos_token_id": None,
        "loss_type": "ForCausalLM",
    }


@torch.no_grad()
def load_gpt2_state_dict(model: GPT, state_dict: dict[str, Tensor]) -> None:
    """Copy a Hugging Face ``GPT2LMHeadModel`` state dict into ``model``.

    The parameter names already match; GPT-2 stores its projections as ``Conv1D`` layers
    whose weight is the transpose of ``nn.Linear``'s, so those four are transposed.
    """
    ours = model.state_dict()
    theirs = {k: v for k, v in state_dict.items() if not k.endswith((".attn.bias", ".masked_bias"))}
    if set(ours) != set(theirs):
        missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise ValueError(f"state dicts differ: missing {missing[:4]}, unexpected {extra[:4]}")
    for name, value in theirs.items():
        value = value.t() if name.endswith(_CONV1D) else value
        if ours[name].shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(ours[name].shape)}")
        ours[name].copy_(value)
