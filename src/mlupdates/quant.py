"""4-bit weights for QLoRA: the NF4 data type, block-wise absmax, double quantisation.

Dettmers et al. (2023, "QLoRA", arXiv:2305.14314) fine-tune a 65B-parameter model on one
48 GB GPU by storing the frozen base in 4 bits and training LoRA adapters
(:mod:`mlupdates.lora`) in 16 bits on top of it. Three ideas make 4 bits good enough:

*NormalFloat (NF4)*
    Pre-trained weights are close to normally distributed, so the 16 code values are
    quantiles of N(0, 1): each code then covers an equal share of the weights, the
    information-theoretically best choice for that distribution. To also represent 0
    exactly, the code is built from 8 positive and 7 negative quantiles plus a zero,
    normalised to [-1, 1] (:func:`nf4_codebook`).
*Block-wise absmax*
    Each block of 64 weights is divided by its largest magnitude, so that one outlier
    only spoils its own block, and the fp32 constant is kept to scale back.
*Double quantisation*
    Those constants cost 32/64 = 0.5 bit per weight. Quantising them in turn to 8 bits in
    blocks of 256 (after subtracting their mean) brings this to 8/64 + 32/(64 * 256) =
    0.127 bit (:func:`constant_bits_per_param`).

The implementation follows ``bitsandbytes``, QLoRA's library, closely enough that the tests
compare codes and dequantised values with its CPU path, and compares NF4 with the FP4 and
INT4 alternatives on normally distributed weights (:func:`quantization_error`). The memory
arithmetic behind the paper's 780 GB and 48 GB figures is :func:`finetune_memory_gb`, built
on :mod:`mlupdates.memory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlupdates import runtime
from mlupdates.lora import Targets, check_targets, matches
from mlupdates.memory import GB, training_bytes, weight_bytes

Kind = Literal["nf4", "fp4", "int4"]
KINDS: tuple[str, ...] = ("nf4", "fp4", "int4")

NF4_OFFSET = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
"""Probability of the outermost NF4 quantile, 0.9677083: the mean of ``1 - 1/(2*15)`` and
``1 - 1/(2*16)``, the value ``bitsandbytes`` uses (the quantile at probability 1 is
infinite, so the end points are pulled in by half a bin)."""


# -- code books ---------------------------------------------------------------------------
def nf4_codebook(offset: float = NF4_OFFSET) -> Tensor:
    """The 16 NF4 values: normal quantiles, 8 positive, 7 negative and an exact zero.

    Positive half: quantiles of N(0, 1) at 8 probabilities evenly spaced from 1/2
    (exclusive) to ``offset``; negative half: 7 such quantiles, mirrored. Dividing by the
    largest gives values in [-1, 1] with both ends at exactly +-1. Asymmetry is the price
    of an exact zero: a symmetric set of 16 quantiles has no zero.
    """
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset={offset} must be in (0.5, 1)")
    # bitsandbytes takes the probabilities in float32 and the quantiles in float64
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 values > 0
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 values < 0
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (values / values.max()).float()


def fp4_codebook() -> Tensor:
    """FP4 as in ``bitsandbytes``: 1 sign, 2 exponent (bias 2) and 1 mantissa bit.

    The magnitudes are 0, 0.0625 (subnormal), 2, 3, 4, 6, 8, 12, normalised by 12; +0 and
    -0 are two codes for one value, so 15 distinct values are returned, sorted.
    """
    mags = torch.tensor([0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]) / 12.0
    return torch.cat([-mags.flip(0), torch.zeros(1), mags])


def int4_codebook() -> Tensor:
    """Symmetric INT4 with absmax scaling: ``k / 7`` for ``k = -7..7``.

    The 16th integer (-8) is left unused so that the grid is symmetric about zero.
    """
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def codebook(kind: Kind) -> Tensor:
    """The sorted code values of ``kind`` ("nf4", "fp4" or "int4")."""
    if kind == "nf4":
        return nf4_codebook()
    if kind == "fp4":
        return fp4_codebook()
    if kind == "int4":
        return int4_codebook()
    raise ValueError(f"kind={kind!r} must be one of {KINDS}")


def dynamic_map_8bit() -> Tensor:
    """``bitsandbytes``' signed 8-bit dynamic-tree code (Dettmers 2015, arXiv:1511.04561).

    A floating-point-like code for values in [-1, 1]: a decimal exponent from 10^-6 to 1
    and as many linearly spaced fractions as the remaining bits allow. QLoRA uses it for
    the second (double) quantisation of the block constants.
    """
    data: list[float] = [0.0, 1.0]
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10 ** (-6 + i) * means).tolist() + (-(10 ** (-6 + i)) * means).tolist()
    return torch.tensor(data, dtype=torch.float32).sort().values  # 256 values


# -- block-wise quantisation --------------------------------------------------------------
@dataclass(frozen=True)
class QuantState:
    """A quantised tensor: one code per element plus one scale per block.

    ``absmax`` holds the fp32 scales, or, with double quantisation, another
    :class:`QuantState` of the scales minus ``offset``.
    """

    codes: Tensor  # (n_blocks, block_size) uint8 indices into codebook
    absmax: Tensor | QuantState  # (n_blocks,)
    codebook: Tensor
    shape: tuple[int, ...]
    block_size: int
    offset: float = 0.0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def code_bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.codebook))))

    def scales(self) -> Tensor:
        """The per-block absmax constants in fp32 (dequantised if double-quantised)."""
        if isinstance(self.absmax, Tensor):
            return self.absmax
        return dequantize_blockwise(self.absmax) + self.offset

    def storage_bits(self) -> int:
        """Bits stored: codes, plus constants (fp32, or codes + fp32 + the fp32 offset)."""
        bits = self.numel * self.code_bits
        if isinstance(self.absmax, Tensor):
            return bits + 32 * self.absmax.numel()
        return bits + self.absmax.storage_bits() + 32

    def bits_per_param(self) -> float:
        return self.storage_bits() / self.numel


def nearest_code(values: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest entry of the sorted ``codebook`` (ties go to the lower one).

    The boundaries are the midpoints between neighbouring codes, as in ``bitsandbytes``.
    """
    midpoints = (codebook[:-1] + codebook[1:]) / 2
    return torch.bucketize(values, midpoints)


def _check_codebook(codebook: Tensor) -> None:
    if codebook.dim() != 1 or not 2 <= codebook.numel() <= 256:
        raise ValueError(f"codebook must be 1-D with 2..256 values, got {tuple(codebook.shape)}")
    if not bool((codebook[1:] > codebook[:-1]).all()):
        raise ValueError("codebook must be sorted in increasing order without repeats")


def quantize_blockwise(x: Tensor, codebook: Tensor, block_size: int = 64) -> QuantState:
    """Split ``x`` into blocks, divide each by its absmax, round to the nearest code.

    A last partial block is padded with zeros (which do not change its absmax).
    """
    _check_codebook(codebook)
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be at least 1")
    if x.numel() == 0:
        raise ValueError("cannot quantise an empty tensor")
    flat = x.detach().reshape(-1).float()
    blocks = F.pad(flat, (0, -flat.numel() % block_size)).view(-1, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    # multiply by the reciprocal and clamp exactly as bitsandbytes does
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).view(-1, 1), -1, 1)
    codes = nearest_code(scaled, codebook.to(scaled.device)).to(torch.uint8)
    return QuantState(codes, absmax, codebook, tuple(x.shape), block_size)


def dequantize_blockwise(state: QuantState) -> Tensor:
    """Code values times block scales, reshaped back; fp32."""
    table = state.codebook.to(state.codes.device)
    values = table[state.codes.long()] * state.scales().view(-1, 1)  # (n_blocks, block)
    return values.reshape(-1)[: state.numel].view(state.shape)


def double_quantize(state: QuantState, block_size: int = 256) -> QuantState:
    """Quantise the block constants of ``state`` to 8 bits, blocks of ``block_size``.

    As in QLoRA/``bitsandbytes``: the constants are positive, so their mean is subtracted
    first to use the signed code symmetrically; the mean is kept as one fp32 ``offset``.
    """
    if not isinstance(state.absmax, Tensor):
        raise ValueError("state is already double-quantised")
    offset = state.absmax.mean()
    nested = quantize_blockwise(state.absmax - offset, dynamic_map_8bit(), block_size)
    return replace(state, absmax=nested, offset=float(offset))


def quantize(
    x: Tensor, kind: Kind = "nf4", block_size: int = 64, double_quant: bool = False
) -> QuantState:
    """Block-wise absmax quantisation with the ``kind`` code book, optionally double."""
    state = quantize_blockwise(x, codebook(kind), block_size)
    return double_quantize(state) if double_quant else state


def constant_bits_per_param(
    block_size: int = 64, double_quant: bool = False, block_size2: int = 256
) -> float:
    """Extra bits per weight spent on the block constants.

    One fp32 constant per ``block_size`` weights: ``32 / block_size`` (0.5 at 64). With
    double quantisation each constant takes 8 bits and every ``block_size2`` of them share
    one fp32 constant: ``8 / block_size + 32 / (block_size * block_size2)`` (0.127 at
    64 and 256, QLoRA section 3). A per-tensor fp32 offset is ignored.
    """
    if block_size < 1 or block_size2 < 1:
        raise ValueError(f"block_size={block_size} and block_size2={block_size2} must be >= 1")
    if not double_quant:
        return 32 / block_size
    return 8 / block_size + 32 / (block_size * block_size2)


def quantization_error(
    kind: Kind,
    n: int = 2**16,
    block_size: int = 64,
    double_quant: bool = False,
    seed: int | None = None,
) -> dict[str, float]:
    """Mean absolute and RMS error of quantising ``n`` standard-normal weights.

    The setting in which QLoRA argues NF4 is optimal: weights drawn from N(0, 1), blocks
    of 64, absmax scaling. Deterministic for a given ``seed`` (default: stream 0 of the
    running chapter's seed, :func:`mlupdates.runtime.resolve_seed`).
    """
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    g = torch.Generator().manual_seed(runtime.resolve_seed(seed, 0))
    w = torch.randn(n, generator=g)
    err = dequantize_blockwise(quantize(w, kind, block_size, double_quant)) - w
    return {"mean_abs": err.abs().mean().item(), "rms": err.pow(2).mean().sqrt().item()}


# -- packing and a quantised linear layer -------------------------------------------------
def pack_4bit(codes: Tensor) -> Tensor:
    """Two 4-bit codes per byte, the first in the high nibble (``bitsandbytes``' layout)."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() and int(flat.max()) > 15:
        raise ValueError(f"codes must be in 0..15, got max {int(flat.max())}")
    flat = F.pad(flat, (0, flat.numel() % 2))
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_4bit`: the first ``n`` codes."""
    if not 0 <= n <= 2 * packed.numel():
        raise ValueError(f"n={n} must be in [0, {2 * packed.numel()}]")
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return codes[:n]


class QuantLinear4bit(nn.Module):
    """A frozen linear layer stored as packed 4-bit codes plus block constants.

    Built from an ``nn.Linear``; the weight is dequantised to fp32 on every forward call,
    as ``bitsandbytes``' ``Linear4bit`` does, so memory holds about 4.1 bits per weight
    while the arithmetic stays in floating point. Wrapping it in
    :class:`~mlupdates.lora.LoRALinear` gives a QLoRA layer.
    """

    def __init__(
        self,
        linear: nn.Linear,
        kind: Kind = "nf4",
        block_size: int = 64,
        double_quant: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kind, self.block_size, self.double_quant = kind, block_size, double_quant
        state = quantize(linear.weight, kind, block_size, double_quant)
        self.n_blocks = state.codes.shape[0]
        self.register_buffer("packed", pack_4bit(state.codes))
        self.register_buffer("codebook", state.codebook.to(linear.weight.device))
        if isinstance(state.absmax, Tensor):
            self.register_buffer("absmax", state.absmax)
        else:
            nested = state.absmax
            self.block_size2 = nested.block_size
            self.register_buffer("absmax_codes", nested.codes)
            self.register_buffer("absmax2", nested.absmax)
            self.register_buffer("codebook2", nested.codebook.to(linear.weight.device))
            self.register_buffer("offset", torch.tensor(state.offset))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def quant_state(self) -> QuantState:
        """The stored weight as a :class:`QuantState`."""
        codes = unpack_4bit(self.packed, self.n_blocks * self.block_size)
        codes = codes.view(self.n_blocks, self.block_size)
        shape = (self.out_features, self.in_features)
        if not self.double_quant:
            return QuantState(codes, self.absmax, self.codebook, shape, self.block_size)
        nested = QuantState(
            self.absmax_codes, self.absmax2, self.codebook2, (self.n_blocks,), self.block_size2
        )
        return QuantState(codes, nested, self.codebook, shape, self.block_size, float(self.offset))

    def dequantize_weight(self) -> Tensor:
        """The ``(out_features, in_features)`` weight in fp32, rebuilt from the codes."""
        return dequantize_blockwise(self.quant_state())

    def weight_bits_per_param(self) -> float:
        return self.quant_state().bits_per_param()

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kind={self.kind}, block_size={self.block_size}, double_quant={self.double_quant}"
        )


def quantize_linears(
    model: nn.Module,
    targets: Targets,
    kind: Kind = "nf4",
    block_size: int = 64,
    double_quant: bool = True,
) -> list[str]:
    """Replace the targeted ``nn.Linear`` layers by :class:`QuantLinear4bit`; return names.

    A weight tied to another parameter (GPT's ``lm_head`` shares the token embedding) is
    refused, since quantising it would silently untie the two.
    """
    targets = check_targets(targets)
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    chosen = [
        name
        for name, module in model.named_modules()
        if name and type(module) is nn.Linear and matches(name, module, targets)
    ]
    if not chosen:
        raise ValueError(f"targets={targets!r} matched no nn.Linear of the model")
    for name in chosen:
        tied = owners[id(model.get_submodule(name).weight)]
        if len(tied) > 1:
            raise ValueError(f"{name}.weight is tied to {tied}; leave it out of targets")
    for name in chosen:
        model.set_submodule(
            name, QuantLinear4bit(model.get_submodule(name), kind, block_size, double_quant)
        )
    return chosen


# -- memory arithmetic --------------------------------------------------------------------
Method = Literal["full", "lora", "qlora"]


def finetune_memory_gb(
    n_params: float,
    method: Method,
    lora_params: float = 0.0,
    master_weights: bool = False,
    block_size: int = 64,
    double_quant: bool = True,
) -> dict[str, float]:
    """GB (10^9 bytes) of weights, gradients and Adam state to fine-tune ``n_params``.

    Assumptions (activations, which depend on batch and sequence, are left out):

    * ``"full"``: every weight trained in 16 bits: 2 bytes of weight, 2 of gradient and
      8 of Adam state (fp32 first and second moments) = 12 bytes per parameter. This is
      the count behind QLoRA's "more than 780 GB" for LLaMA-65B; ``master_weights`` adds
      the 4-byte fp32 copy of mixed-precision training (16 bytes, ZeRO's count).
    * ``"lora"``: a frozen 16-bit base (2 bytes per weight, no gradient, no state) plus
      ``lora_params`` adapter weights trained like the full model above.
    * ``"qlora"``: the same with the base in NF4 (4 bits + the block constants, double
      quantised by default: :func:`constant_bits_per_param`).

    The accounting is :func:`mlupdates.memory.training_bytes` and
    :func:`~mlupdates.memory.weight_bytes`.
    """
    if n_params <= 0:
        raise ValueError(f"n_params={n_params} must be positive")
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method={method!r} must be 'full', 'lora' or 'qlora'")
    if method == "full":
        if lora_params:
            raise ValueError(f"lora_params={lora_params} makes no sense with method='full'")
        parts = training_bytes(n_params, "bf16", "adamw", master_weights)
        out = {"base_weights": parts["weights"], "adapter_weights": 0.0}
    else:
        if not 0 < lora_params < n_params:
            raise ValueError(f"lora_params={lora_params} must be in (0, n_params={n_params:g})")
        parts = training_bytes(lora_params, "bf16", "adamw", master_weights)
        if method == "lora":
            base = weight_bytes(n_params, "bf16")
        else:
            base = weight_bytes(n_params, "int4", block_size, double_quant)
        out = {"base_weights": base, "adapter_weights": parts["weights"]}
    out |= {"gradients": parts["gradients"], "optimizer": parts["optimizer"]}
    out = {k: v / GB for k, v in out.items()}
    out["total"] = sum(out.values())
    return out
