"""conv2d via unfold equals torch.nn.functional.conv2d."""

import pytest
import torch
import torch.nn.functional as F

from mlupdates.convolution import classic_kernels, conv2d_unfold


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_matches_conv2d(padding):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 9, 7), torch.randn(5, 3, 3, 3), torch.randn(5)
    ours = conv2d_unfold(x, w, b, padding=padding)
    assert (ours - F.conv2d(x, w, b, padding=padding)).abs().max() < 1e-5


def test_classic_kernels_do_what_they_say():
    names, k = classic_kernels(3)
    assert k.shape == (4, 3, 3, 3) and names[0] == "vertical edges"
    flat = torch.ones(1, 3, 6, 6)
    out = conv2d_unfold(flat, k)
    assert torch.allclose(out[0, 0], torch.zeros(4, 4))  # no edges in a flat image
    assert torch.allclose(out[0, 2], torch.ones(4, 4))  # blur preserves a constant
    step = torch.zeros(1, 3, 6, 6)
    step[..., 3:] = 1.0  # a vertical edge
    assert conv2d_unfold(step, k)[0, 0].abs().max() > 1


def test_errors():
    with pytest.raises(ValueError, match="expects 3 input channels but x has 1"):
        conv2d_unfold(torch.randn(1, 1, 5, 5), torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        conv2d_unfold(torch.randn(5, 5), torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d_unfold(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3))
    with pytest.raises(ValueError, match="in_channels=0"):
        classic_kernels(0)
