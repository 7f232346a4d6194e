"""Addition written as text: a probe of whether a language model computes or pattern-matches.

Large language models are unreliable at exact arithmetic, and the reason can be watched on
a tiny scale: a GPT trained on sums of two-digit numbers (``"47+38=85"``) learns to add the
pairs it was never shown, yet fails on three-digit numbers, which a carry-propagating
algorithm handles with no extra effort. What it learned is a procedure tied to the lengths
and positions it was trained on, not the algorithm. Length generalisation of this kind is
studied by Anil et al., "Exploring Length Generalization in Large Language Models"
(arXiv:2207.04901), and Lee et al., "Teaching Arithmetic to Small Transformers"
(arXiv:2307.03381).

Text is tokenised one character per token (digits, ``+``, ``=`` and an end marker), so that
tokenisation, another known source of arithmetic errors in real models, is not in the way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlupdates.chat import IGNORE
from mlupdates.runtime import resolve_seed

ALPHABET = "0123456789+=;"
END = ";"
STOI = {c: i for i, c in enumerate(ALPHABET)}


def encode(text: str) -> list[int]:
    """Character ids of ``text``; only digits, ``+``, ``=`` and ``;`` are allowed."""
    bad = sorted(set(text) - set(ALPHABET))
    if bad:
        raise ValueError(f"characters {bad} are not in the alphabet {ALPHABET!r}")
    return [STOI[c] for c in text]


def decode(ids: list[int]) -> str:
    return "".join(ALPHABET[i] for i in ids)


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return f"{self.a + self.b}{END}"


def problems(
    n_digits: int, count: int, seed: int | None = None, exclude: set[Problem] | None = None
) -> list[Problem]:
    """``count`` distinct sums of two ``n_digits``-digit numbers, none of them in ``exclude``.

    A pure function of its arguments; ``seed=None`` is stream 0 of the running chapter's seed.
    """
    seed = resolve_seed(seed, 0)
    if n_digits < 1:
        raise ValueError(f"n_digits={n_digits} must be at least 1")
    lo, hi = 10 ** (n_digits - 1), 10**n_digits - 1
    available = (hi - lo + 1) ** 2 - len(exclude or ())
    if not 0 < count <= available:
        raise ValueError(f"count={count} must be in [1, {available}] for {n_digits}-digit operands")
    rng = random.Random(f"addition-{n_digits}-{seed}")
    chosen: dict[Problem, None] = {}
    while len(chosen) < count:
        p = Problem(rng.randint(lo, hi), rng.randint(lo, hi))
        if not exclude or p not in exclude:
            chosen[p] = None
    return list(chosen)


def training_rows(items: list[Problem]) -> tuple[Tensor, Tensor]:
    """Inputs and next-token labels with the loss on the answer only (prompt masked)."""
    rows = []
    for p in items:
        prompt, answer = encode(p.prompt), encode(p.answer)
        ids = prompt + answer
        labels = [IGNORE] * (len(prompt) - 1) + answer
        rows.append((ids[:-1], labels))
    width = max(len(x) for x, _ in rows)
    x = torch.full((len(rows), width), STOI[END], dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(labels)] = torch.tensor(labels)
    return x, y


@torch.no_grad()
def exact_match(model: nn.Module, items: list[Problem]) -> float:
    """Share of problems whose greedy continuation is exactly the sum and the end marker."""
    if not items:
        raise ValueError("items is empty")
    by_len: dict[int, list[Problem]] = {}
    for p in items:
        by_len.setdefault(len(p.prompt), []).append(p)
    device = next(model.parameters()).device
    right = 0
    for group in by_len.values():
        idx = torch.tensor([encode(p.prompt) for p in group], device=device)
        width = max(len(p.answer) for p in group)
        out = model.generate(idx, width, temperature=0)[:, idx.shape[1] :].tolist()
        for p, row in zip(group, out, strict=True):
            right += decode(row).startswith(p.answer)
    return right / len(items)
