"""Self-instruct data generation in miniature: a teacher model labels machine-made instructions.

Stanford Alpaca (Taori et al. 2023) fine-tuned LLaMA-7B on 52K instruction-following
demonstrations that OpenAI's ``text-davinci-003`` wrote, following the self-instruct recipe
of Wang et al. (2022, arXiv:2212.10560): start from a small set of human-written *seed
tasks*, let a model write many new instructions in their style, let the strong model answer
them, filter the pairs, and fine-tune a weaker model on the result. No human labels beyond
the seeds are needed; the student learns from the teacher's outputs, which makes this
sequence-level distillation (:mod:`mlupdates.distill`).

This module runs the same pipeline on the book's world (:mod:`mlupdates.world`):

1. :func:`instruction_forms` reads the question *forms* off the seed tasks (the seed
   question with its person's name replaced by ``{name}``);
2. :func:`sample_subjects` lets a language model write text and collects the person names
   that appear in it: the instructions' subjects come from a model, not from a list, so
   some are people the model invented, as real self-instruct data contains instructions
   about things that do not exist;
3. :func:`make_instructions` crosses forms and subjects, dropping duplicates, the seed
   questions themselves and any excluded subject (the evaluation people);
4. :func:`label` asks the teacher every instruction and keeps the non-empty answers.

The result is a list of :class:`~mlupdates.world.QA` ready for
:func:`mlupdates.chat.sft_example`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Sequence

import torch

from mlupdates.chat import chat_prompt
from mlupdates.evaluate import generate_answers
from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import QA

#: A person's name in the book's world: two capitalised words ("Kalin Delvora").
NAME = re.compile(r"\b([A-Z][a-z]+ [A-Z][a-z]+)\b")


def instruction_forms(seeds: Sequence[QA]) -> dict[str, str]:
    """``{attribute: question form}`` read off the seed tasks, e.g. ``"Where does {name} live?"``.

    Every attribute must appear once with one form; a seed whose question does not contain
    its person's name cannot be turned into a form and is refused.
    """
    if not seeds:
        raise ValueError("seeds is empty: self-instruct needs at least one seed task")
    forms: dict[str, str] = {}
    for seed in seeds:
        if seed.person not in seed.question:
            raise ValueError(f"seed question {seed.question!r} does not name {seed.person!r}")
        form = seed.question.replace(seed.person, "{name}")
        if forms.setdefault(seed.attribute, form) != form:
            raise ValueError(
                f"two seed forms for attribute={seed.attribute!r}: {forms[seed.attribute]!r} "
                f"and {form!r}"
            )
    return forms


@torch.no_grad()
def sample_subjects(
    model: torch.nn.Module,
    tok: BPETokenizer,
    n_samples: int,
    max_new_tokens: int = 12,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Names a language model writes when it starts ``n_samples`` documents, in first-seen order.

    The model continues ``<|endoftext|>`` (the start of a new document) by sampling; every
    match of :data:`NAME` in the continuations is collected once.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} must be at least 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    eot = tok.special_tokens["<|endoftext|>"]
    device = next(model.parameters()).device
    start = torch.full((n_samples, 1), eot, dtype=torch.long, device=device)
    out = model.generate(
        start, max_new_tokens, temperature=temperature, generator=generator
    )  # (n_samples, 1 + max_new_tokens)
    names: dict[str, None] = {}
    for row in out[:, 1:].tolist():
        for name in NAME.findall(tok.decode(row)):
            names[name] = None
    return list(names)


def make_instructions(
    forms: dict[str, str],
    subjects: Sequence[str],
    *,
    exclude_subjects: Collection[str] = (),
    exclude_questions: Collection[str] = (),
) -> list[QA]:
    """Every form applied to every subject, without duplicates or excluded items.

    The answers are left empty for :func:`label` to fill; ``split`` is ``"generated"``.
    """
    if not forms:
        raise ValueError("forms is empty: nothing to instantiate")
    seen: set[str] = set(exclude_questions)
    out: list[QA] = []
    for subject in subjects:
        if subject in exclude_subjects:
            continue
        for attribute, form in forms.items():
            question = form.format(name=subject)
            if question not in seen:
                seen.add(question)
                out.append(QA(question, "", subject, attribute, "generated"))
    return out


def label(
    teacher: torch.nn.Module,
    tok: BPETokenizer,
    instructions: Sequence[QA],
    max_new_tokens: int = 6,
) -> list[QA]:
    """The teacher's greedy answer to every instruction; empty answers are dropped."""
    if not instructions:
        raise ValueError("instructions is empty: nothing to label")
    prompts = [chat_prompt(q.question) for q in instructions]
    answers = generate_answers(teacher, tok, prompts, max_new_tokens=max_new_tokens)
    return [
        dataclasses.replace(q, answer=a[0])
        for q, a in zip(instructions, answers, strict=True)
        if a[0].strip()
    ]
