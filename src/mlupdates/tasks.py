"""Toy sequence-to-sequence tasks with a known answer, and how to train and score on them.

The copy task (reproduce the input sequence) is the smallest task with a long-range
dependency: the first output token depends on an input token a whole sequence away, so
a model that must squeeze the sequence through a fixed-size state (a recurrent encoder)
loses accuracy as sequences grow, while one that can look back at the input (attention)
need not. Reversal is included because it flips which end of the sequence is hard.

Models trained here expose ``forward(src, tgt_in) -> logits`` and
``generate(src, length, bos) -> tokens``; both :class:`mlupdates.transformer.Seq2SeqTransformer`
and :class:`mlupdates.rnn.LSTMSeq2Seq` do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlupdates import runtime

BOS = 0  #: start-of-sequence token fed to the decoder at its first step


class Seq2SeqModel(Protocol):
    def __call__(self, src: Tensor, tgt_in: Tensor) -> Tensor: ...
    def generate(self, src: Tensor, length: int, bos: int = BOS) -> Tensor: ...


@dataclass(frozen=True)
class SequenceTask:
    """Random sequences of ``n_symbols`` symbols with lengths in ``[min_len, max_len]``.

    ``kind`` is ``"copy"`` (target = input) or ``"reverse"`` (target = input reversed).
    Symbols are tokens ``1 .. n_symbols``; token 0 is :data:`BOS`, so the vocabulary has
    ``n_symbols + 1`` entries. Every batch has a single length, so no padding is needed.
    """

    kind: str = "copy"
    n_symbols: int = 10
    min_len: int = 2
    max_len: int = 16

    def __post_init__(self) -> None:
        if self.kind not in {"copy", "reverse"}:
            raise ValueError(f"kind={self.kind!r} must be 'copy' or 'reverse'")
        if self.n_symbols < 2:
            raise ValueError(f"n_symbols={self.n_symbols} must be at least 2")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"min_len={self.min_len}, max_len={self.max_len}: need 1 <= min_len <= max_len"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    def batch(self, size: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``size`` source sequences of ``length`` tokens and their targets, both ``(B, L)``."""
        if size < 1:
            raise ValueError(f"size={size} must be positive")
        if length < 1:
            raise ValueError(f"length={length} must be positive")
        src = torch.randint(1, self.n_symbols + 1, (size, length), generator=generator)
        tgt = src if self.kind == "copy" else src.flip(1)
        return src, tgt.clone()


def model_device(model: object) -> torch.device:
    """Device of the model's first parameter; the CPU for a model without parameters."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


def teacher_forcing_input(tgt: Tensor, bos: int = BOS) -> Tensor:
    """The decoder's input during training: the target shifted right behind ``bos``."""
    return torch.cat([torch.full_like(tgt[:, :1], bos), tgt[:, :-1]], dim=1)


@dataclass(frozen=True)
class TrainSummary:
    """What a training run prints: steps, last smoothed loss, wall time, parameter count."""

    steps: int
    final_loss: float
    seconds: float
    parameters: int

    def __str__(self) -> str:
        return (
            f"{self.parameters:,} parameters, {self.steps} steps, "
            f"final loss {self.final_loss:.4f}, {self.seconds:.1f} s"
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars, the size measure the chapter uses to match models."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_seq2seq(
    model: nn.Module,
    task: SequenceTask,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int | None = None,
    clip: float = 1.0,
) -> TrainSummary:
    """Train ``model`` with teacher forcing and Adam, one random length per step.

    The learning rate warms up linearly over the first 10 % of steps and then decays on
    a cosine to zero: the usual recipe for transformers, applied unchanged to the
    recurrent baseline so that the comparison is about the architecture, not the recipe.
    Batches are drawn on the CPU from ``seed`` (default: stream 0 of the chapter's seed),
    so every device sees the same data, and moved to the device of the model's parameters.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be positive")
    if lr <= 0:
        raise ValueError(f"lr={lr} must be positive")
    gen = torch.Generator().manual_seed(runtime.resolve_seed(seed, 0))
    device = model_device(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * 0.5
            * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
        ),
    )
    model.train()
    start, smoothed = time.perf_counter(), None
    for _ in range(steps):
        length = int(torch.randint(task.min_len, task.max_len + 1, (1,), generator=gen))
        src, tgt = task.batch(batch_size, length, gen)
        src, tgt = src.to(device), tgt.to(device)
        logits = model(src, teacher_forcing_input(tgt))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        smoothed = loss.item() if smoothed is None else 0.9 * smoothed + 0.1 * loss.item()
    model.eval()
    return TrainSummary(
        steps, float(smoothed), time.perf_counter() - start, count_parameters(model)
    )


@torch.no_grad()
def exact_match_by_length(
    model: Seq2SeqModel,
    task: SequenceTask,
    lengths: list[int],
    n: int = 200,
    seed: int | None = None,
) -> dict[int, float]:
    """Fraction of ``n`` held-out sequences per length that the model outputs exactly.

    Outputs come from greedy decoding (each generated token is fed back), not teacher
    forcing, so one early mistake counts the whole sequence wrong. The held-out
    sequences come from their own generator ``seed`` (default: stream 12345 of the
    chapter's seed), separate from training, drawn on the CPU and moved to the model's
    device.
    """
    if not lengths:
        raise ValueError("lengths must name at least one sequence length")
    gen = torch.Generator().manual_seed(runtime.resolve_seed(seed, 12345))
    device = model_device(model)
    scores = {}
    for length in lengths:
        src, tgt = task.batch(n, length, gen)
        src, tgt = src.to(device), tgt.to(device)
        out = model.generate(src, length)
        scores[length] = (out == tgt).all(dim=1).float().mean().item()
    return scores
