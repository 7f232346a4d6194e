"""2-D convolution written out, and a few classic hand-made kernels to apply with it.

A convolutional layer slides each kernel (``C_in x k x k`` weights) over the input and
takes a dot product at every position (LeCun et al. 1998). :func:`conv2d_unfold` spells
that out with ``unfold`` (every receptive field as a column, then one matrix product), so
the chapter can check it against ``torch.nn.functional.conv2d``. :func:`classic_kernels`
returns edge and blur filters whose effect on a photograph shows what "one kernel, one
output channel" means before any learning happens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def conv2d_unfold(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0
) -> Tensor:
    """Convolution (cross-correlation, as in deep learning) of ``x`` ``(B, C, H, W)``.

    ``weight`` is ``(C_out, C, k, k)``. Each output pixel is the dot product of one kernel
    with the ``C x k x k`` receptive field under it; ``unfold`` lists those fields as
    columns so that all of them are computed in one matrix product.
    """
    if x.dim() != 4:
        raise ValueError(
            f"x must have shape (batch, channels, height, width), got {tuple(x.shape)}"
        )
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must have shape (out, in, k, k), got {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input channels but x has {x.shape[1]}")
    if padding < 0:
        raise ValueError(f"padding={padding} must be non-negative")
    B, _, H, W = x.shape
    k = weight.shape[-1]
    out_h, out_w = H + 2 * padding - k + 1, W + 2 * padding - k + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"kernel size {k} is larger than the padded input {H}x{W}")
    cols = F.unfold(x, k, padding=padding)  # (B, C*k*k, out_h*out_w)
    out = weight.flatten(1) @ cols  # (B, C_out, out_h*out_w)
    if bias is not None:
        out = out + bias[:, None]
    return out.view(B, weight.shape[0], out_h, out_w)


def classic_kernels(in_channels: int = 3) -> tuple[list[str], Tensor]:
    """Names and ``(4, in_channels, 3, 3)`` weights: vertical/horizontal edges, blur, sharpen.

    The Sobel filters respond to intensity changes across x and y, the box blur averages a
    neighbourhood, and the sharpen filter adds back the difference from that average. Each
    is applied to the channel mean, so the result does not depend on colour.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be positive")
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    blur = torch.full((3, 3), 1.0 / 9.0)
    sharpen = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])
    names = ["vertical edges", "horizontal edges", "blur", "sharpen"]
    kernels = torch.stack([sobel_x, sobel_x.T, blur, sharpen])  # (4, 3, 3)
    return names, kernels[:, None].expand(-1, in_channels, -1, -1) / in_channels
