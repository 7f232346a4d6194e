"""Power laws for scaling experiments: ``L(N) = a * N ** (-alpha)``.

Kaplan et al. (arXiv:2001.08361) found that the test loss of language models falls as a
power law in the number of non-embedding parameters ``N`` (and in data and compute), which
is a straight line in log-log axes. :func:`fit_power_law` fits that line by least squares
on ``log L = log a - alpha log N`` and reports how straight the points are (``r2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLaw:
    """``L(N) = a * N ** (-alpha)``; ``r2`` is the fit's R² in log-log space."""

    a: float
    alpha: float
    r2: float

    def __call__(self, n: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.asarray(n, dtype=float) ** (-self.alpha)


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """Least-squares fit of ``log loss`` against ``log n``; needs 2+ positive points."""
    x, y = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"need two 1-D sequences of equal length >= 2, got {x.shape}, {y.shape}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power law needs positive sizes and losses")
    if np.unique(x).size < 2:
        raise ValueError("need at least two different sizes to fit a slope")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (intercept + slope * lx)
    spread = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / spread) if spread > 0 else 1.0
    return PowerLaw(a=float(np.exp(intercept)), alpha=float(-slope), r2=r2)
