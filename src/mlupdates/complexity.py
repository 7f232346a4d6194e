"""Measuring how self-attention and recurrence scale with sequence length.

Table 1 of Vaswani et al. (2017) states that a self-attention layer costs O(n^2 d)
operations with O(1) sequential steps, while a recurrent layer costs O(n d^2) with O(n)
sequential steps. This module measures the three quantities the chapter uses to test the
claim: floating-point operations (counted by PyTorch's ``FlopCounterMode``), the bytes of
activations autograd keeps for the backward pass (captured with saved-tensor hooks; both
are deterministic), and wall-clock time (median of repeats; noisy, so shown not compared).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

#: Table 1 of Vaswani et al. (2017): n = sequence length, d = width, k = kernel size,
#: r = neighbourhood size of restricted attention.
VASWANI_TABLE1: list[tuple[str, str, str, str]] = [
    ("Self-attention", "$O(n^2 \\cdot d)$", "$O(1)$", "$O(1)$"),
    ("Recurrent", "$O(n \\cdot d^2)$", "$O(n)$", "$O(n)$"),
    ("Convolutional", "$O(k \\cdot n \\cdot d^2)$", "$O(1)$", "$O(\\log_k(n))$"),
    ("Self-attention (restricted)", "$O(r \\cdot n \\cdot d)$", "$O(1)$", "$O(n/r)$"),
]


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations PyTorch's flop counter records while ``fn()`` runs.

    Matrix products dominate both layers, and the counter tallies exactly those (a
    multiply-add counts as two), so the count does not depend on the machine.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def saved_activation_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``fn()`` runs.

    Training memory is dominated by these saved activations; for naive attention they
    include the full ``n x n`` weight matrix. Storage shared by several saved tensors is
    counted once.
    """
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _timings(
    fn: Callable[[], object], repeats: int, warmup: int, clock: Callable[[], float]
) -> list[float]:
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be positive")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = clock()
        fn()
        _synchronize()  # GPU kernels run asynchronously: wait for them before reading the clock
        times.append(clock() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return statistics.median(_timings(fn, repeats, warmup, time.perf_counter))


def cpu_seconds(fn: Callable[[], object], repeats: int = 9, warmup: int = 2) -> float:
    """Shortest processor time of ``fn()`` on the CPU over ``repeats`` runs after ``warmup``.

    Wall time on a shared machine grows with whatever else runs there; processor time
    (:func:`time.process_time`) counts only the time this process spent computing, and the
    fastest of several runs is the one least slowed by caches that other programs evicted.
    Only for work done on the CPU: a GPU's time is not processor time of this process.
    """
    return min(_timings(fn, repeats, warmup, time.process_time))


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if torch.backends.mps.is_available():
        torch.mps.synchronize()


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the exponent ``p`` in ``y ~ x^p``."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y need the same length >= 2, got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("x and y must be positive to take logarithms")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])
