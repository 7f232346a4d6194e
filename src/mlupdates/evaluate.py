"""Asking a small GPT many short questions at once, and scoring its answers.

Helpers for the measurements of the LLM chapter: batched answer generation under any
decoding setting, the model's confidence in its first answer token, accuracy, the number
of distinct answers among samples (diversity), and the majority vote of self-consistency
(Wang et al., arXiv:2203.11171).

The book's GPT has no attention mask, so prompts of different lengths cannot share a
left-padded batch. :func:`generate_continuations` therefore groups the prompts by token length
and generates one batch per group; :func:`first_token_confidence` pads on the right, which
a causal model never looks at from earlier positions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from mlupdates.chat import extract_answer, is_correct
from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import QA


def _by_length(encoded: Sequence[list[int]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    return groups


@torch.no_grad()
def generate_continuations(
    model: torch.nn.Module,
    tok: BPETokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 6,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> list[list[list[int]]]:
    """The new token ids of ``num_samples`` continuations per prompt, in prompt order.

    Prompts are grouped by token length (shortest first) and each group, every prompt
    repeated ``num_samples`` times, is generated as one batch. ``temperature=0`` is
    greedy, so every sample is the same.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    encoded = [tok.encode(p) for p in prompts]
    device = next(model.parameters()).device
    out: list[list[list[int]]] = [[] for _ in prompts]
    for length, rows in sorted(_by_length(encoded).items()):
        idx = torch.tensor([encoded[i] for i in rows], device=device)  # (n, length)
        idx = idx.repeat_interleave(num_samples, dim=0)  # (n * num_samples, length)
        sequences = model.generate(
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )
        for j, row in enumerate(sequences[:, length:].tolist()):
            out[rows[j // num_samples]].append(row)
    return out


def generate_answers(
    model: torch.nn.Module,
    tok: BPETokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 6,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """``num_samples`` extracted answers per prompt, decoded with the given settings.

    Returns one list of answers (see :func:`mlupdates.chat.extract_answer`) per prompt, in
    the order of ``prompts``; the continuations come from :func:`generate_continuations`.
    """
    continuations = generate_continuations(
        model,
        tok,
        prompts,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
    return [[extract_answer(tok.decode(row)) for row in rows] for rows in continuations]


@torch.no_grad()
def first_token_confidence(
    model: torch.nn.Module, tok: BPETokenizer, prompts: Sequence[str]
) -> torch.Tensor:
    """The largest next-token probability after each prompt, shape ``(len(prompts),)``.

    How sure the model is of the first token of its answer, whatever that token is.
    """
    encoded = [tok.encode(p) for p in prompts]
    if not encoded:
        raise ValueError("prompts is empty")
    device = next(model.parameters()).device
    width = max(map(len, encoded))
    idx = torch.zeros(len(encoded), width, dtype=torch.long, device=device)
    for row, ids in enumerate(encoded):
        idx[row, : len(ids)] = torch.tensor(ids)
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx)  # (B, width, V)
    finally:
        model.train(was_training)
    last = torch.tensor([len(ids) - 1 for ids in encoded], device=device)
    probs = logits[torch.arange(len(encoded), device=device), last].softmax(-1)  # (B, V)
    return probs.max(-1).values.cpu()


def accuracy(answers: Sequence[str], truths: Sequence[str]) -> float:
    """Fraction of ``answers`` equal to their ``truths`` (case-insensitive)."""
    if len(answers) != len(truths) or not answers:
        raise ValueError(f"need as many answers ({len(answers)}) as truths ({len(truths)}), > 0")
    return sum(is_correct(a, t) for a, t in zip(answers, truths, strict=True)) / len(answers)


def commonest_answer_accuracy(train_qa: Sequence[QA], questions: Sequence[QA]) -> float:
    """Accuracy of always giving the commonest training answer for the asked attribute.

    The floor a model must beat before its answers show that it read the name in the
    question: a model that only learned which answers are frequent ("Kagordale" for every
    "Where does ... live?") scores this much without knowing anyone. Ties between equally
    common answers go to the one met first in ``train_qa``. Every attribute asked in
    ``questions`` must occur in ``train_qa``.
    """
    if not questions:
        raise ValueError("questions is empty")
    by_attribute: dict[str, Counter[str]] = {}
    for q in train_qa:
        by_attribute.setdefault(q.attribute, Counter())[q.answer] += 1
    missing = sorted({q.attribute for q in questions} - set(by_attribute))
    if missing:
        raise ValueError(f"train_qa has no answers for the attributes {missing}")
    commonest = {a: c.most_common(1)[0][0] for a, c in by_attribute.items()}
    return accuracy([commonest[q.attribute] for q in questions], [q.answer for q in questions])


def majority_vote(samples: Sequence[str]) -> str:
    """The most frequent answer; ties go to the one sampled first."""
    if not samples:
        raise ValueError("samples is empty")
    return Counter(samples).most_common(1)[0][0]


def mean_distinct(samples: Sequence[Sequence[str]]) -> float:
    """Average number of different answers per prompt: 1 means always the same answer."""
    if not samples:
        raise ValueError("samples is empty")
    return sum(len(set(s)) for s in samples) / len(samples)
