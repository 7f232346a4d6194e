"""The MoE layer equals a per-token loop over its chosen experts."""

import pytest
import torch

from mlupdates.moe import MoEFeedForward


@pytest.mark.parametrize("k", [1, 2])
def test_forward_equals_naive_per_token_mixture(k):
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 16, n_experts=4, k=k)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        out = moe(x)
        flat = x.reshape(-1, 8)
        probs = moe.router(flat).softmax(-1)
        expected = []
        for t in range(flat.shape[0]):
            gate, idx = probs[t].topk(k)
            gate = gate / gate.sum()
            expected.append(
                sum(g * moe.experts[int(i)](flat[t]) for g, i in zip(gate, idx, strict=True))
            )
    assert torch.allclose(out.reshape(-1, 8), torch.stack(expected), atol=1e-6)


def test_parameter_counts_and_balance_loss():
    moe = MoEFeedForward(8, 16, n_experts=4, k=1)
    total, active = moe.parameter_counts()
    expert = 8 * 16 + 16 + 16 * 8 + 8
    assert total == 32 + 4 * expert and active == 32 + expert
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 100.0  # every token with x0 > 0 goes to expert 0
    x = torch.randn(64, 8).abs()
    assert moe.load_balancing_loss(x).item() > 3.5  # collapsed routing costs ~E


def test_errors():
    with pytest.raises(ValueError, match="k=3 must be between 1 and n_experts=2"):
        MoEFeedForward(4, 4, n_experts=2, k=3)
    with pytest.raises(ValueError, match="d_ff=0"):
        MoEFeedForward(4, 0, n_experts=2)
