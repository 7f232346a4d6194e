"""Rotary position embedding (RoPE): position enters attention as a rotation.

Su et al. (2021, arXiv:2104.09864) rotate each consecutive pair of query/key features
``(x[2i], x[2i+1])`` by the angle ``p * theta_i`` with ``theta_i = base^(-2i/d)``. Because
rotations compose, the dot product of a query rotated to position ``m`` with a key rotated
to position ``n`` depends on ``m - n`` only: attention scores see relative position without
any learned table. LLaMA and most open models since use it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_angles(length: int, head_dim: int, base: float = 10000.0) -> Tensor:
    """``(length, head_dim/2)`` rotation angles ``p * base^(-2i/head_dim)``."""
    if length < 1:
        raise ValueError(f"length={length} must be positive")
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim={head_dim} must be a positive even number")
    if base <= 1:
        raise ValueError(f"base={base} must be greater than 1")
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return (torch.arange(length, dtype=torch.float64)[:, None] * theta).float()


def apply_rope(x: Tensor, positions: Tensor | None = None, base: float = 10000.0) -> Tensor:
    """Rotate the feature pairs of ``x`` ``(..., L, d)`` by their positions' angles.

    ``positions`` (length ``L``, default ``0 .. L-1``) lets a caller place tokens anywhere,
    which is how the chapter checks the relative-position property by shifting both.
    Written with real arithmetic; the tests check it against the complex-number form used
    in Meta's LLaMA reference code.
    """
    L, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"last dimension of x is {d}; RoPE needs an even head size")
    if positions is None:
        positions = torch.arange(L)
    if positions.shape != (L,):
        raise ValueError(f"positions must have shape ({L},), got {tuple(positions.shape)}")
    # Angles in float64 on the CPU (MPS has no float64), then to x's device and dtype.
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.cpu().to(torch.float64)[:, None] * theta
    angles = angles.to(device=x.device, dtype=x.dtype)  # (L, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out
