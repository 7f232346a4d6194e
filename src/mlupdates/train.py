"""A small, reusable training loop for the book's language models.

Chapters 2 and 3 train several GPTs (a base model, an assistant, a ladder of sizes for a
scaling law), and they should all be trained the same way, so the loop lives here once:
AdamW with weight decay on matrices only, linear warm-up then cosine decay to a floor
(the recipe of GPT-3 and nanoGPT), gradient clipping, and a validation loss every few
steps. It returns a :class:`History` to plot instead of printing logs.

The model is anything whose ``forward(idx, targets)`` returns ``(logits, loss)``, such as
:class:`mlupdates.gpt.GPT`. Targets equal to ``-100`` are ignored by the loss, which is how
supervised fine-tuning trains on the answer tokens only (``loss_mask`` in :func:`batches`,
or pre-built rows with :func:`row_batches`).

Runs are deterministic: batches come from generators seeded by ``TrainConfig.seed`` and
dropout draws from a forked global RNG seeded the same way, so the caller's random state is
left untouched and the same call gives the same history (with
:func:`mlupdates.runtime.setup` fixing threads and kernels). Left at ``None``, the seed is
stream 0 of the chapter's seed (:func:`mlupdates.runtime.seed_for`), so ``MLUPDATES_SEED``
reaches every run; the validation windows use stream 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mlupdates import runtime
from mlupdates.gpt import IGNORE_INDEX

Batch = tuple[Tensor, Tensor]
"""``(inputs, targets)``, both ``(batch, time)`` LongTensors."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`; the defaults suit a tiny GPT on a CPU."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 3e-4  # the floor cosine decay ends at
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # max global gradient norm; None turns clipping off
    eval_every: int = 50
    eval_batches: int = 4
    seed: int | None = None  # None: the chapter's stream 0 (validation windows: stream 1)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps})")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr} must be in [0, lr={self.lr}]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be non-negative")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas} must lie in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be positive or None")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed={self.seed} must be non-negative")


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, cosine decay.

    Warm-up climbs as ``lr * (step + 1) / (warmup_steps + 1)``, so the first step already
    moves, and reaches ``lr`` at ``step == warmup_steps``; cosine decay then falls to
    ``min_lr`` at ``step == total_steps`` and stays there (Loshchilov & Hutter 2017,
    arXiv:1608.03983; the schedule of GPT-3 and nanoGPT).
    """
    if step < 0:
        raise ValueError(f"step={step} must be non-negative")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")
    if not 0 <= min_lr <= lr:
        raise ValueError(f"min_lr={min_lr} must be in [0, lr={lr}]")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101) decaying only tensors with >= 2 dims.

    Weight matrices and embeddings are decayed; biases and LayerNorm gains are not, since
    shrinking them towards zero only fights the normalisation (nanoGPT's rule).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def batches(
    tokens: Tensor,
    batch_size: int,
    context: int,
    generator: torch.Generator,
    loss_mask: Tensor | None = None,
) -> Iterator[Batch]:
    """Endless random windows of a token stream for next-token prediction.

    Each batch holds ``batch_size`` windows of ``context + 1`` consecutive tokens starting
    at uniformly random offsets; the inputs are the first ``context`` tokens and the targets
    the same window shifted by one. ``loss_mask`` (bool, same length as ``tokens``) marks
    the tokens worth predicting: targets where it is False become -100 and add no loss.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if batch_size < 1 or context < 1:
        raise ValueError(f"batch_size={batch_size} and context={context} must be positive")
    if tokens.numel() < context + 1:
        raise ValueError(
            f"{tokens.numel()} tokens cannot fill one window of context+1={context + 1}"
        )
    if loss_mask is not None and (loss_mask.shape != tokens.shape or loss_mask.dtype != torch.bool):
        raise ValueError("loss_mask must be a bool tensor with the same shape as tokens")
    offsets = torch.arange(context + 1)  # (context + 1,)
    while True:
        starts = torch.randint(tokens.numel() - context, (batch_size,), generator=generator)
        index = (starts[:, None] + offsets).to(tokens.device)  # (B, context + 1)
        window = tokens[index]  # (B, context + 1)
        x, y = window[:, :-1], window[:, 1:].clone()  # (B, context) each
        if loss_mask is not None:
            y[~loss_mask[index[:, 1:]]] = IGNORE_INDEX
        yield x, y


def row_batches(
    inputs: Tensor, targets: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """Endless mini-batches of pre-built rows ``(N, T)``, reshuffled every epoch.

    For examples that must not be cut, such as padded chat transcripts whose targets are
    already -100 outside the answers. The last incomplete batch of an epoch is dropped.
    """
    if inputs.dim() != 2 or inputs.shape != targets.shape:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must be equal (N, T)"
        )
    if not 1 <= batch_size <= inputs.size(0):
        raise ValueError(f"batch_size={batch_size} must be in [1, N={inputs.size(0)}]")
    while True:
        order = torch.randperm(inputs.size(0), generator=generator).to(inputs.device)
        for i in range(0, inputs.size(0) - batch_size + 1, batch_size):
            rows = order[i : i + batch_size]
            yield inputs[rows], targets[rows]


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[Batch]) -> float:
    """Mean loss per counted target token over ``data``, in eval mode (mode restored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in data:
            _, loss = model(x.to(device), y.to(device))
            n = int((y != IGNORE_INDEX).sum())
            total, count = total + loss.item() * n, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation data has no target tokens (all -100 or empty)")
    return total / count


@dataclass
class History:
    """What :func:`train` measured.

    ``records`` has one dict per evaluation with ``step`` (optimiser steps done),
    ``train_loss`` (mean training loss over the steps since the previous record),
    ``val_loss`` (None without validation data) and ``lr`` (of the last step).
    ``step_losses`` holds every step's training loss. ``seconds`` is the wall-clock time of
    the training steps (evaluations and callbacks excluded), a measurement that differs
    from run to run; everything else is deterministic.
    """

    records: list[dict[str, float | int | None]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    def column(self, name: str) -> list:
        """One field of every record, e.g. ``history.column("val_loss")`` for a plot."""
        if self.records and name not in self.records[0]:
            raise ValueError(f"name={name!r} must be one of {sorted(self.records[0])}")
        return [r[name] for r in self.records]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    def summary(self, timing: bool = True) -> str:
        """One line for a notebook; ``timing=False`` leaves out the wall-clock part."""
        last = self.records[-1] if self.records else {}
        line = f"steps={last.get('step', 0)} train_loss={last.get('train_loss', float('nan')):.4f}"
        if last.get("val_loss") is not None:
            line += f" val_loss={last['val_loss']:.4f}"
        if timing:
            line += f" time={self.seconds:.1f}s ({self.tokens_per_second:,.0f} tokens/s)"
        return line


def train(
    model: nn.Module,
    train_data: Tensor | Iterator[Batch],
    cfg: TrainConfig | None = None,
    val_data: Tensor | Sequence[Batch] | None = None,
    *,
    on_eval: Callable[[nn.Module, int], None] | None = None,
    verbose: bool = False,
) -> History:
    """Train ``model`` for ``cfg.steps`` AdamW steps and return its :class:`History`.

    ``train_data`` is a 1-D token stream (sampled with :func:`batches` at the model's
    ``config.context``) or any iterator of ``(inputs, targets)`` batches, e.g. from
    :func:`batches` with a ``loss_mask`` or :func:`row_batches`. ``val_data`` is a token
    stream (``cfg.eval_batches`` fixed windows are drawn once, so every evaluation sees the
    same text) or a sequence of batches. Every ``cfg.eval_every`` steps and at the end a
    record is added and ``on_eval(model, step)`` is called, e.g. to sample text at that
    checkpoint. ``verbose`` prints the one-line summary at the end.
    """
    cfg = cfg or TrainConfig()
    device = next(model.parameters()).device
    seed = runtime.seed_for(0) if cfg.seed is None else cfg.seed
    val_seed = runtime.seed_for(1) if cfg.seed is None else cfg.seed + 1
    batch_gen = torch.Generator().manual_seed(seed)
    if isinstance(train_data, Tensor):
        train_data = batches(train_data, cfg.batch_size, model.config.context, batch_gen)
    if isinstance(val_data, Tensor):
        val_gen = torch.Generator().manual_seed(val_seed)
        stream = batches(val_data, cfg.batch_size, model.config.context, val_gen)
        val_data = [next(stream) for _ in range(cfg.eval_batches)]
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    history = History()
    since_last: list[float] = []
    fork_devices = [device] if device.type == "cuda" else []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=fork_devices):  # dropout: seeded, caller's RNG untouched
        torch.manual_seed(seed)
        model.train()
        for step in range(cfg.steps):
            lr = lr_at(
                step,
                lr=cfg.lr,
                min_lr=cfg.min_lr,
                warmup_steps=cfg.warmup_steps,
                total_steps=cfg.steps,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = next(train_data)
            x, y = x.to(device), y.to(device)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            history.step_losses.append(loss.item())
            history.tokens += x.numel()
            since_last.append(history.step_losses[-1])
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                pause = time.perf_counter()
                val_loss = evaluate(model, val_data) if val_data is not None else None
                history.records.append(
                    {
                        "step": done,
                        "train_loss": sum(since_last) / len(since_last),
                        "val_loss": val_loss,
                        "lr": lr,
                    }
                )
                since_last = []
                if on_eval is not None:
                    on_eval(model, done)
                t0 += time.perf_counter() - pause  # time evaluations and callbacks apart
    history.seconds = time.perf_counter() - t0
    if verbose:
        print(history.summary())
    return history
