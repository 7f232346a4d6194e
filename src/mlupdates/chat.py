"""Turning a base model into an assistant: chat template, SFT examples, answer checks.

A base model continues text; an assistant answers requests. Supervised fine-tuning (SFT)
bridges the two by training on conversations laid out in a *chat template*, a fixed
text format with special tokens that mark whose turn it is::

    <|user|>Where does Kalin Delvora live?<|end|><|assistant|> Norholm<|end|>

The loss is counted only on the reply (the tokens after ``<|assistant|>``, its closing
``<|end|>`` included): the model should learn to answer, not to imitate the user, as in
InstructGPT (Ouyang et al., arXiv:2203.02155). Positions that do not count get the label
``-100``, the ``ignore_index`` of :func:`torch.nn.functional.cross_entropy`.

The reply starts with a space so that its tokens are the ones the pre-training text uses
(" Norholm" after "lives in"), and the fine-tuning only has to teach *when* to say it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import QA, TEMPLATES, Fact

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
IGNORE = -100


def chat_prompt(question: str) -> str:
    """The text a chat model is given: the user turn, then the opened assistant turn."""
    return f"{USER}{question}{END}{ASSISTANT}"


def chat_text(question: str, answer: str) -> str:
    """A whole one-turn conversation, as SFT trains on it."""
    return f"{chat_prompt(question)} {answer}{END}"


def cloze_prompt(fact: Fact) -> str:
    """The first paraphrase of ``fact`` cut before its value: how a base model is asked.

    ``"Kalin Delvora lives in"``; the base model's continuation should be the value.
    """
    template = TEMPLATES[fact.attribute][0]
    cut = min(i for i in (template.find("{value}"), template.find("{a_value}")) if i >= 0)
    return template[:cut].rstrip().format(name=fact.person)


def sft_example(tok: BPETokenizer, qa: QA) -> tuple[list[int], list[int]]:
    """Input ids and next-token labels for one conversation, prompt labels masked.

    ``inputs[t]`` is trained to predict ``labels[t]``; labels are ``-100`` wherever the
    next token still belongs to the prompt.
    """
    prompt = tok.encode(chat_prompt(qa.question))
    reply = tok.encode(f" {qa.answer}{END}")
    ids = prompt + reply
    labels = [IGNORE] * (len(prompt) - 1) + reply
    return ids[:-1], labels


def pad_batch(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad examples to one length: inputs with ``pad_id``, labels with ``-100``."""
    if not examples:
        raise ValueError("examples is empty: nothing to batch")
    width = max(len(x) for x, _ in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (ids, labels) in enumerate(examples):
        if len(ids) != len(labels):
            raise ValueError(f"examples[{row}]: {len(ids)} inputs but {len(labels)} labels")
        x[row, : len(ids)] = torch.tensor(ids)
        y[row, : len(labels)] = torch.tensor(labels)
    return x, y


def extract_answer(continuation: str) -> str:
    """The answer in a generated continuation: up to ``<|end|>``, a special token, a full
    stop or a line break; surrounding spaces and a leading article removed."""
    text = continuation
    for stop in (END, "<|", ".", "\n"):
        text = text.split(stop, 1)[0]
    text = text.strip()
    for article in ("a ", "an "):
        if text.startswith(article):
            text = text[len(article) :]
    return text


def is_correct(continuation: str, answer: str) -> bool:
    """Whether the answer extracted from ``continuation`` is exactly ``answer``."""
    return extract_answer(continuation).lower() == answer.lower()
