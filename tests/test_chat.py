import pytest
import torch

from mlupdates.chat import (
    IGNORE,
    chat_prompt,
    chat_text,
    cloze_prompt,
    extract_answer,
    is_correct,
    pad_batch,
    sft_example,
)
from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import Fact, make_world


@pytest.fixture(scope="module")
def world_and_tok():
    world = make_world(seed=0, n_people=40)
    return world, BPETokenizer.train(world.corpus(20_000), 400)


def test_template_marks_turns_with_special_tokens(world_and_tok):
    _, tok = world_and_tok
    text = chat_text("Where does A B live?", "Norholm")
    assert text == "<|user|>Where does A B live?<|end|><|assistant|> Norholm<|end|>"
    ids = tok.encode(text)
    for special in ("<|user|>", "<|end|>", "<|assistant|>"):
        assert tok.special_tokens[special] in ids
    assert chat_prompt("Q?") + " x<|end|>" == chat_text("Q?", "x")


def test_loss_is_masked_to_the_answer_tokens(world_and_tok):
    world, tok = world_and_tok
    qa = world.qa("train")[0]
    x, y = sft_example(tok, qa)
    assert len(x) == len(y)
    counted = [t for t in y if t != IGNORE]
    assert tok.decode(counted) == f" {qa.answer}<|end|>"
    # every counted label is the next input token (or the final <|end|>)
    full = tok.encode(chat_text(qa.question, qa.answer))
    assert x == full[:-1]
    assert all(label in (IGNORE, full[t + 1]) for t, label in enumerate(y))
    assert y[-1] == tok.special_tokens["<|end|>"]


def test_padding_is_ignored_by_the_loss(world_and_tok):
    world, tok = world_and_tok
    examples = [sft_example(tok, qa) for qa in world.qa("train")[:3]]
    x, y = pad_batch(examples, pad_id=0)
    assert x.shape == y.shape and x.shape[0] == 3
    for row, (ids, labels) in enumerate(examples):
        assert (y[row, len(labels) :] == IGNORE).all()
        assert x[row, : len(ids)].tolist() == ids
    logits = torch.randn(*x.shape, tok.vocab_size)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="examples is empty"):
        pad_batch([], 0)


def test_cloze_prompts_stop_before_the_value():
    assert cloze_prompt(Fact("Ka Lin", "city", "Norholm")) == "Ka Lin lives in"
    assert cloze_prompt(Fact("Ka Lin", "job", "baker")) == "Ka Lin works as"
    assert cloze_prompt(Fact("Ka Lin", "pet", "owl")) == "Ka Lin has a pet"


def test_answers_are_extracted_and_compared():
    assert extract_answer(" Norholm<|end|> junk") == "Norholm"
    assert extract_answer(" an owl. Ka Lin was") == "owl"
    assert extract_answer(" 1987<|endoftext|>") == "1987"
    assert is_correct(" Blue<|end|>", "blue")
    assert not is_correct(" Norholmia<|end|>", "Norholm")
    assert not is_correct("", "owl")
