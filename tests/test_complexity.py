"""The cost probes: exact flop counts, saved-activation bytes, log-log slopes."""

import pytest
import torch
import torch.nn.functional as F

from mlupdates.attention import scaled_dot_product_attention
from mlupdates.complexity import (
    VASWANI_TABLE1,
    count_flops,
    cpu_seconds,
    loglog_slope,
    median_seconds,
    saved_activation_bytes,
)


def test_count_flops_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_attention_flops_are_quadratic():
    def flops(n):
        q, k, v = torch.randn(3, 1, n, 16).unbind(0)
        return count_flops(lambda: scaled_dot_product_attention(q, k, v))

    assert flops(64) == 4 * 64 * 64 * 16 and flops(128) == 4 * flops(64)


def test_saved_bytes_see_the_score_matrix():
    n = 512  # head size 64: eligible for PyTorch's fused (flash) CPU kernel
    q, k, v = torch.randn(3, 1, 1, n, 64).unbind(0)  # (batch, heads, n, d)
    q.requires_grad_()
    naive = saved_activation_bytes(lambda: scaled_dot_product_attention(q, k, v))
    assert naive >= n * n * 4  # the n x n softmax output is kept for backward
    fused = saved_activation_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert fused < n * n * 4
    with torch.no_grad():
        assert saved_activation_bytes(lambda: scaled_dot_product_attention(q, k, v)) == 0


def test_loglog_slope():
    x = [1, 2, 4, 8]
    assert loglog_slope(x, [3 * v**2 for v in x]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same length"):
        loglog_slope([1, 2], [1])
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([0, 1], [1, 2])


def test_median_seconds_and_table():
    assert median_seconds(lambda: None, repeats=3) >= 0
    with pytest.raises(ValueError, match="repeats=0"):
        median_seconds(lambda: None, repeats=0)
    assert [row[0] for row in VASWANI_TABLE1][:2] == ["Self-attention", "Recurrent"]
    assert VASWANI_TABLE1[1][2] == "$O(n)$"  # recurrence: n sequential operations


def test_cpu_seconds_counts_computing_not_waiting():
    import time

    def busy(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    # sleeping (as when another program holds the processor) costs no processor time
    assert cpu_seconds(lambda: time.sleep(0.02), repeats=2, warmup=0) < 0.01
    assert cpu_seconds(lambda: busy(0.02), repeats=2, warmup=0) >= 0.02
    assert median_seconds(lambda: time.sleep(0.02), repeats=2) >= 0.02  # wall time does
    with pytest.raises(ValueError, match="repeats=0"):
        cpu_seconds(lambda: None, repeats=0)
