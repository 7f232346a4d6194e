"""Preference optimisation: direct preference optimisation (DPO) for the book's assistant.

RLHF as in InstructGPT (Ouyang et al., arXiv:2203.02155) needs three models beside the
policy (a reward model, a value model and a frozen reference) and on-line sampling with
PPO. Rafailov et al. (arXiv:2305.18290) showed that the KL-regularised reward objective
behind it has a closed-form optimum, which turns it into a classification loss on pairs of
replies to the same prompt, one preferred (``chosen``, :math:`y_w`) and one not
(``rejected``, :math:`y_l`):

.. math::

    \\mathcal{L} = -\\log \\sigma\\Big(\\beta \\big[\\log \\tfrac{\\pi_\\theta(y_w|x)}{\\pi_{ref}(y_w|x)}
    - \\log \\tfrac{\\pi_\\theta(y_l|x)}{\\pi_{ref}(y_l|x)}\\big]\\Big)

Only two models are needed, the policy being trained and a frozen copy of where it started,
and the only sampling is whatever produced the pairs. This module computes the per-reply log
probabilities, the loss, and a small training loop for models with the book's GPT interface
(``model(ids) -> (logits, loss)``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlupdates.chat import IGNORE, pad_batch
from mlupdates.runtime import resolve_seed
from mlupdates.train import make_optimizer


def reply_logprob(model: nn.Module, ids: Tensor, labels: Tensor) -> Tensor:
    """Sum of log p(label_t | ids_<=t) over the positions whose label is not ``-100``.

    ``ids`` and ``labels`` are ``(batch, time)`` and aligned as :func:`mlupdates.chat.
    sft_example` lays them out (``labels[t]`` is the token that follows ``ids[t]``), so the
    result is the log probability of each whole reply given its prompt, one value per row.

    A model with :meth:`mlupdates.gpt.GPT.logits_at` computes its output layer at the reply
    positions only (a DPO batch's replies are a few tokens of each row); any other model
    ``model(ids) -> (logits, loss)`` is scored at every position and masked. Both give the
    same sums up to float32 rounding.
    """
    if ids.shape != labels.shape:
        raise ValueError(f"ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must match")
    mask = labels != IGNORE
    if hasattr(model, "logits_at"):
        logits = model.logits_at(ids, mask)  # (N, V) at the N reply positions
        token_logp = torch.gather(
            F.log_softmax(logits.float(), dim=-1), 1, labels[mask].unsqueeze(-1)
        ).squeeze(-1)  # (N,)
        # Back into (B, T), zeros elsewhere, and summed as below: no atomic accumulation.
        return token_logp.new_zeros(mask.shape).masked_scatter(mask, token_logp).sum(dim=1)
    logits, _ = model(ids)  # (B, T, V)
    token_logp = torch.gather(
        F.log_softmax(logits.float(), dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)
    ).squeeze(-1)  # (B, T)
    return (token_logp * mask).sum(dim=1)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """The DPO loss (mean over pairs) and each pair's implicit reward margin.

    Inputs are summed reply log probabilities (:func:`reply_logprob`). The margin
    ``beta * (log-ratio of chosen - log-ratio of rejected)`` is the difference between the
    rewards the policy implicitly assigns the two replies; the loss is
    ``-log sigmoid(margin)``, which is ``log 2`` while the policy equals the reference.
    """
    if not beta > 0:
        raise ValueError(f"beta={beta} must be positive")
    shapes = {
        tuple(t.shape)
        for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    }
    if len(shapes) != 1:
        raise ValueError(f"all four log-probability tensors must have one shape, got {shapes}")
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach()


@dataclass(frozen=True)
class PreferencePairs:
    """Padded chosen and rejected conversations for the same prompts, row by row."""

    chosen_ids: Tensor
    chosen_labels: Tensor
    rejected_ids: Tensor
    rejected_labels: Tensor

    def __len__(self) -> int:
        return self.chosen_ids.shape[0]


def make_pairs(
    chosen: Sequence[tuple[list[int], list[int]]],
    rejected: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
) -> PreferencePairs:
    """Pad ``(ids, labels)`` examples (e.g. from :func:`mlupdates.chat.sft_example`) into pairs.

    Chosen and rejected replies are padded to one common width (on the right, which a
    causal model never reads from earlier positions).
    """
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(
            f"need as many chosen as rejected replies, at least one: {len(chosen)} vs {len(rejected)}"
        )
    # One width for both sides, so that a pair's two replies can share a forward pass.
    x, y = pad_batch([*chosen, *rejected], pad_id)
    n = len(chosen)
    cx, cy, rx, ry = x[:n], y[:n], x[n:], y[n:]
    return PreferencePairs(cx, cy, rx, ry)


@dataclass
class DPOHistory:
    """Per-step loss and the share of pairs whose implicit reward prefers the chosen reply."""

    losses: list[float] = field(default_factory=list)
    reward_accuracy: list[float] = field(default_factory=list)


def train_dpo(
    policy: nn.Module,
    pairs: PreferencePairs,
    *,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    beta: float = 0.1,
    nll_weight: float = 0.0,
    seed: int | None = None,
) -> DPOHistory:
    """Optimise ``policy`` in place with DPO against a frozen copy of its current weights.

    Constant learning rate, AdamW without weight decay (DPO's own recipe uses a small
    constant rate after a short warm-up); batches are drawn with a generator seeded by ``seed``
    (default: stream 0 of the running chapter's seed).
    ``nll_weight`` adds that multiple of the chosen reply's per-token negative
    log-likelihood to the loss, as in Pang et al.'s DPO+NLL (arXiv:2404.19733): plain DPO
    only widens the gap between the two replies, which it may do by making *both* less
    likely, and cannot raise a chosen reply that starts out nearly impossible.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must be at least 1")
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = make_optimizer(policy, lr, 0.0, (0.9, 0.999))
    gen = torch.Generator().manual_seed(resolve_seed(seed, 0))
    device = next(policy.parameters()).device
    # Chosen rows first, then rejected: each step scores a batch's two sides in one pass.
    ids = torch.cat([pairs.chosen_ids, pairs.rejected_ids]).to(device)
    labels = torch.cat([pairs.chosen_labels, pairs.rejected_labels]).to(device)
    n = len(pairs)
    with torch.no_grad():
        ref = reply_logprob(reference, ids, labels)
    ref_c, ref_r = ref[:n], ref[n:]
    history = DPOHistory()
    policy.train()
    for _ in range(steps):
        rows = torch.randperm(n, generator=gen)[:batch_size].to(device)
        both = torch.cat([rows, rows + n])
        logp = reply_logprob(policy, ids[both], labels[both])
        pc, pr = logp[: len(rows)], logp[len(rows) :]
        loss, margin = dpo_loss(pc, pr, ref_c[rows], ref_r[rows], beta)
        if nll_weight:
            n_tokens = (labels[rows] != IGNORE).sum(dim=1)
            loss = loss + nll_weight * (-pc / n_tokens).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.losses.append(loss.item())
        history.reward_accuracy.append((margin > 0).float().mean().item())
    policy.eval()
    return history
