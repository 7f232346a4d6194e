"""How much memory a transformer needs: a back-of-the-envelope calculator.

Memory, more than arithmetic, decides where a model can run. This module adds up the
four things a device must hold, each as a plain formula so the chapter can show it:

*weights*
    parameters times bytes per parameter (:data:`BYTES_PER_PARAM`); 4-bit formats also
    store one scaling constant per block of weights (QLoRA's NF4 uses blocks of 64 with an
    fp32 constant, 0.5 extra bits per weight, or 0.127 with double quantization:
    Dettmers et al., arXiv:2305.14314).
*gradients and optimiser state* (training only)
    one gradient per trainable weight, and for Adam/AdamW two running averages per weight,
    plus an fp32 master copy of the weights in mixed precision. Rajbhandari et al.'s ZeRO
    paper (arXiv:1910.02054) counts 2 + 2 + 12 = 16 bytes per parameter for
    mixed-precision Adam.
*activations* (training only, rough)
    what the backward pass needs from the forward pass. Korthikanti et al.
    (arXiv:2205.05198) give ``s * b * h * (34 + 5 * a * s / h)`` bytes per layer in 16-bit
    without recomputation (sequence ``s``, batch ``b``, width ``h``, ``a`` heads); a fused
    attention kernel that never stores the ``s x s`` scores removes the second term.
*KV cache* (inference)
    ``2 (keys and values) * layers * kv_heads * head_dim * bytes`` per token, as in the
    vLLM paper (Kwon et al., arXiv:2309.06180), times tokens and batch.

All results are in bytes; :data:`GB` is 10**9 bytes, the unit papers and vendors use.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9

#: Bytes per stored number. "int4" is the payload of a 4-bit format (NF4, GPTQ, ...);
#: :func:`weight_bytes` adds the block constants.
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "int8": 1.0,
    "int4": 0.5,
}


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a decoder-only transformer that fix its memory."""

    name: str
    n_params: float
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


#: Published shapes (LLaMA: arXiv:2302.13971, Table 2; Llama 2 70B uses grouped-query
#: attention with 8 key/value heads: arXiv:2307.09288; OPT-13B: arXiv:2205.01068).
#: Parameter counts are the exact ones of the released checkpoints.
MODELS: dict[str, ModelShape] = {
    "LLaMA-7B": ModelShape("LLaMA-7B", 6.74e9, 32, 4096, 32, 32),
    "LLaMA-13B": ModelShape("LLaMA-13B", 13.0e9, 40, 5120, 40, 40),
    "LLaMA-65B": ModelShape("LLaMA-65B", 65.2e9, 80, 8192, 64, 64),
    "Llama-2-70B": ModelShape("Llama-2-70B", 69.0e9, 80, 8192, 64, 8),
    "OPT-13B": ModelShape("OPT-13B", 12.9e9, 40, 5120, 40, 40),
}


def _bytes_per(dtype: str) -> float:
    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"dtype={dtype!r} must be one of {tuple(BYTES_PER_PARAM)}")
    return BYTES_PER_PARAM[dtype]


def weight_bytes(
    n_params: float, dtype: str, block_size: int = 64, double_quant: bool = False
) -> float:
    """Bytes of the weights in ``dtype``; 4-bit adds one fp32 scale per ``block_size``.

    With ``double_quant`` the scales are themselves stored in 8 bits with one fp32 constant
    per 256 scales (QLoRA), which brings the overhead from 32/64 = 0.5 bits to
    8/64 + 32/(64*256) = 0.127 bits per weight.
    """
    if n_params < 0:
        raise ValueError(f"n_params={n_params} must be non-negative")
    payload = n_params * _bytes_per(dtype)
    if dtype != "int4":
        return payload
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be at least 1")
    overhead_bits = 8 / block_size + 32 / (block_size * 256) if double_quant else 32 / block_size
    return payload + n_params * overhead_bits / 8


def training_bytes(
    n_params: float, dtype: str = "bf16", optimizer: str = "adamw", master_weights: bool = True
) -> dict[str, float]:
    """Weights, gradients and optimiser state for full training, in bytes.

    ``dtype`` is the precision of weights and gradients. AdamW keeps two fp32 moments per
    weight; ``"sgd"`` keeps none. In mixed precision (``dtype`` other than fp32) with
    ``master_weights`` the optimiser also holds an fp32 copy of the weights, which gives
    the 16 bytes per parameter of ZeRO (arXiv:1910.02054).
    """
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer={optimizer!r} must be 'adamw' or 'sgd'")
    if dtype == "int4" or dtype == "int8":
        raise ValueError(f"dtype={dtype!r}: full training needs floating-point weights")
    width = _bytes_per(dtype)
    states = 8.0 if optimizer == "adamw" else 0.0
    if master_weights and dtype != "fp32":
        states += 4.0
    return {
        "weights": n_params * width,
        "gradients": n_params * width,
        "optimizer": n_params * states,
    }


def activation_bytes(
    shape: ModelShape, seq_len: int, batch: int, fused_attention: bool = True
) -> float:
    """Rough 16-bit activation memory of one training step without recomputation.

    Korthikanti et al. (arXiv:2205.05198), eq. 1: ``s*b*h*(34 + 5*a*s/h)`` bytes per
    layer; ``fused_attention`` (FlashAttention-style kernels) drops the ``5*a*s/h`` term
    that stores the attention matrix. An estimate, good to a factor of about 2.
    """
    if seq_len < 1 or batch < 1:
        raise ValueError(f"seq_len={seq_len} and batch={batch} must be at least 1")
    s, b, h, a = seq_len, batch, shape.d_model, shape.n_heads
    per_layer = s * b * h * (34 + (0 if fused_attention else 5 * a * s / h))
    return shape.n_layers * per_layer


def kv_cache_bytes(shape: ModelShape, seq_len: int, batch: int = 1, dtype: str = "bf16") -> float:
    """Bytes of the key/value cache for ``batch`` sequences of ``seq_len`` tokens."""
    if seq_len < 0 or batch < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 0 and batch={batch} >= 1")
    per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * _bytes_per(dtype)
    return per_token * seq_len * batch


def inference_bytes(
    shape: ModelShape, dtype: str, seq_len: int, batch: int = 1, kv_dtype: str = "bf16"
) -> float:
    """Weights in ``dtype`` plus the KV cache: the floor for serving a model."""
    return weight_bytes(shape.n_params, dtype) + kv_cache_bytes(shape, seq_len, batch, kv_dtype)
