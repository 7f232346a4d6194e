"""A mixture-of-experts feed-forward layer with top-k routing, in a few lines.

Shazeer et al. (2017, arXiv:1701.06538) replace one feed-forward network by ``E`` experts
and a router that sends each token to the ``k`` experts with the highest scores; Switch
Transformers (Fedus et al. 2021, arXiv:2101.03961) use ``k = 1`` and add a load-balancing
loss so the router does not send everything to one expert. Parameters grow with ``E`` while
the computation per token grows only with ``k``: the point of the design.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MoEFeedForward(nn.Module):
    """``E`` two-layer MLP experts, a linear router, top-``k`` gating per token."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int = 1) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_ff", d_ff), ("n_experts", n_experts)):
            if value < 1:
                raise ValueError(f"{name}={value} must be positive")
        if not 1 <= k <= n_experts:
            raise ValueError(f"k={k} must be between 1 and n_experts={n_experts}")
        self.k, self.n_experts = k, n_experts
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
            for _ in range(n_experts)
        )

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router probabilities ``(N, E)``, chosen experts ``(N, k)`` and their gates ``(N, k)``.

        The gates are the chosen experts' probabilities renormalised to sum to one.
        """
        probs = self.router(x).softmax(dim=-1)
        gate, idx = probs.topk(self.k, dim=-1)
        return probs, idx, gate / gate.sum(dim=-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """Apply to ``x`` ``(..., d_model)``; each token runs through its ``k`` experts only."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        _, idx, gate = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (idx == e).nonzero(as_tuple=True)  # tokens routed to expert e
            if token.numel():
                out.index_add_(0, token, gate[token, slot, None] * expert(flat[token]))
        return out.view(shape)

    def load_balancing_loss(self, x: Tensor) -> Tensor:
        """Switch Transformer auxiliary loss ``E * sum_e f_e * P_e``; equals 1 when balanced.

        ``f_e`` is the fraction of tokens whose first choice is expert ``e`` and ``P_e`` the
        mean router probability for ``e``.
        """
        probs, idx, _ = self.route(x.reshape(-1, x.shape[-1]))
        f = torch.bincount(idx[:, 0], minlength=self.n_experts).to(probs.dtype) / probs.shape[0]
        return self.n_experts * (f * probs.mean(dim=0)).sum()

    def parameter_counts(self) -> tuple[int, int]:
        """(total parameters, parameters a single token actually uses)."""
        expert = sum(p.numel() for p in self.experts[0].parameters())
        router = sum(p.numel() for p in self.router.parameters())
        return router + self.n_experts * expert, router + self.k * expert
