"""RoPE equals the complex-number form of the LLaMA reference code; scores are relative."""

import pytest
import torch

from mlupdates.rope import apply_rope, rope_angles


def _rope_complex(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    # As in Meta's LLaMA model.py: precompute_freqs_cis + apply_rotary_emb.
    L, d = x.shape[-2:]
    freqs = 1.0 / (base ** (torch.arange(0, d, 2)[: d // 2].double() / d))
    freqs_cis = torch.polar(
        torch.ones(L, d // 2, dtype=torch.float64), torch.outer(torch.arange(L).double(), freqs)
    )
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(-2).to(x.dtype)


def test_matches_complex_reference():
    x = torch.randn(2, 3, 20, 16)
    assert (apply_rope(x) - _rope_complex(x)).abs().max() < 1e-5


def test_scores_depend_on_offset_only():
    q, k = torch.randn(2, 1, 32, dtype=torch.float64).unbind(0)

    def score(m, n):
        return (apply_rope(q, torch.tensor([m])) * apply_rope(k, torch.tensor([n]))).sum()

    assert torch.isclose(score(4, 1), score(504, 501))
    assert not torch.isclose(score(4, 1), score(4, 2))


def test_rotation_preserves_norm_and_position_zero_is_identity():
    x = torch.randn(5, 8)
    y = apply_rope(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[0], x[0])
    assert rope_angles(5, 8).shape == (5, 4)


def test_errors():
    with pytest.raises(ValueError, match="even head size"):
        apply_rope(torch.randn(3, 5))
    with pytest.raises(ValueError, match="positions must have shape"):
        apply_rope(torch.randn(3, 4), torch.arange(4))
    with pytest.raises(ValueError, match="head_dim=3"):
        rope_angles(4, 3)


def test_apply_rope_keeps_the_device_and_dtype_of_its_input():
    x = torch.randn(2, 5, 8).to("meta")  # the meta device stands in for a GPU: no CPU mixing
    y = apply_rope(x, torch.arange(5))
    assert y.device.type == "meta" and y.dtype == x.dtype and y.shape == x.shape
