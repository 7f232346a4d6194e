"""Knowledge distillation: train a small student on a large teacher's soft targets.

Hinton, Vinyals & Dean (2015, arXiv:1503.02531) noticed that a trained network's wrong
answers carry information: a "2" that the teacher finds slightly like a "3" tells the
student something that the one-hot label does not. Softening the teacher's distribution
with a temperature ``T > 1``, ``softmax(z / T)``, brings these small probabilities up, and
the student is trained to match it:

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

with student logits ``s``, teacher logits ``t`` and labels ``y``. The gradient of the soft
term with respect to ``s`` is ``(softmax(s/T) - softmax(t/T)) / T``, and for large ``T``
that difference itself shrinks like ``1/T``; multiplying by ``T^2`` keeps the soft term's
gradients the same size whatever the temperature, so ``alpha`` keeps its meaning when
``T`` changes (the paper's section 2).

For language models the same loss applies per token over the vocabulary; the cheaper
*sequence-level* alternative (Kim & Rush 2016, arXiv:1606.07947) just trains the student
with cross-entropy on text the teacher generated, as Stanford Alpaca did with
``text-davinci-003``'s outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mlupdates.chat import chat_prompt
from mlupdates.evaluate import generate_answers
from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import QA

IGNORE_INDEX = -100
"""Label that contributes nothing to the loss (PyTorch's and Hugging Face's choice)."""


def soft_targets(logits: Tensor, T: float) -> Tensor:
    """``softmax(logits / T)`` over the last dimension: the teacher's softened distribution."""
    if not T > 0:
        raise ValueError(f"temperature T={T} must be positive")
    return F.softmax(logits / T, dim=-1)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    T: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Hinton et al.'s loss: ``alpha T^2 KL(p_t || p_s) + (1 - alpha) CE(s, labels)``.

    Logits are ``(..., n_classes)`` (a batch, or batch x sequence for a language model) and
    ``labels`` the matching ``(...)`` class indices; positions labelled ``ignore_index`` count
    in neither term. Both terms are means over the counted positions. The teacher is
    detached: no gradient flows into it. ``labels`` may be ``None`` only when ``alpha=1``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if student_logits.dim() < 2:
        raise ValueError(f"logits must be (..., n_classes), got {tuple(student_logits.shape)}")
    if not T > 0:
        raise ValueError(f"temperature T={T} must be positive")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    n_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, n_classes)
    t = teacher_logits.detach().reshape(-1, n_classes)
    if labels is None:
        if alpha != 1.0:
            raise ValueError(f"labels=None needs alpha=1 (pure distillation), got alpha={alpha}")
        keep = None
    else:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"labels {tuple(labels.shape)} must match logits without the class "
                f"dimension {tuple(student_logits.shape[:-1])}"
            )
        labels = labels.reshape(-1)
        keep = labels != ignore_index
        if not bool(keep.any()):
            raise ValueError(f"every label is ignore_index={ignore_index}; nothing to learn")
    log_p_s = F.log_softmax(s / T, dim=-1)
    log_p_t = F.log_softmax(t / T, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # KL(p_t || p_s) per position
    soft = (kl if keep is None else kl[keep]).mean() * T**2
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(s, labels, ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard


def sequence_distillation_data(
    teacher: nn.Module, tok: BPETokenizer, questions: Sequence[QA], max_new_tokens: int = 6
) -> list[QA]:
    """The ``questions`` answered by ``teacher``: training data for sequence-level KD.

    Kim & Rush (2016, arXiv:1606.07947) train the student on the teacher's most likely
    output sequence instead of matching its distribution token by token; they approximate
    that sequence with beam search, here it is greedy decoding (``temperature=0``) of the
    chat reply. Each returned :class:`~mlupdates.world.QA` is the input one with its
    ``answer`` replaced by the teacher's, right or wrong, so the student learns whatever
    the teacher says, as Alpaca learned from ``text-davinci-003``'s answers.
    """
    if not questions:
        raise ValueError("questions is empty: nothing for the teacher to answer")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    prompts = [chat_prompt(q.question) for q in questions]
    replies = generate_answers(teacher, tok, prompts, max_new_tokens=max_new_tokens)
    return [dataclasses.replace(q, answer=r[0]) for q, r in zip(questions, replies, strict=True)]
