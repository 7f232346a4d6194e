import pytest
import torch

from mlupdates.chat import chat_prompt
from mlupdates.evaluate import (
    accuracy,
    commonest_answer_accuracy,
    first_token_confidence,
    generate_answers,
    majority_vote,
    mean_distinct,
)
from mlupdates.gpt import GPT, GPTConfig
from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import QA, make_world


@pytest.fixture(scope="module")
def model_and_tok():
    world = make_world(seed=0, n_people=10)
    tok = BPETokenizer.train(world.corpus(3_000), 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context=48, n_layer=1, n_head=2, d_model=16))
    return model, tok, world


def test_generated_answers_match_one_prompt_at_a_time(model_and_tok):
    model, tok, world = model_and_tok
    prompts = [chat_prompt(q.question) for q in world.qa("train")[:7]]  # several lengths
    lengths = {len(tok.encode(p)) for p in prompts}
    assert len(lengths) > 1
    batched = generate_answers(model, tok, prompts)
    single = [generate_answers(model, tok, [p])[0] for p in prompts]
    assert batched == single and all(len(a) == 1 for a in batched)
    sampled = generate_answers(
        model, tok, prompts, num_samples=4, temperature=2.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert all(len(a) == 4 for a in sampled)
    assert mean_distinct(sampled) > 1  # an untrained model at T=2 rarely repeats itself
    with pytest.raises(ValueError, match="num_samples"):
        generate_answers(model, tok, prompts, num_samples=0)


def test_confidence_ignores_right_padding(model_and_tok):
    model, tok, world = model_and_tok
    prompts = [chat_prompt(q.question) for q in world.qa("train")[:5]]
    together = first_token_confidence(model, tok, prompts)
    alone = torch.cat([first_token_confidence(model, tok, [p]) for p in prompts])
    assert torch.allclose(together, alone, atol=1e-6)
    assert ((together > 0) & (together <= 1)).all()


def test_scores_and_votes():
    assert accuracy(["Owl", "cat"], ["owl", "dog"]) == 0.5
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"  # tie: first sampled wins
    assert majority_vote(["x", "y", "y"]) == "y"
    assert mean_distinct([["a", "a"], ["a", "b"]]) == 1.5
    with pytest.raises(ValueError):
        majority_vote([])


def _qa(attribute: str, answer: str) -> QA:
    return QA(f"{attribute}?", answer, "someone", attribute, "train")


def test_commonest_answer_accuracy_guesses_per_attribute():
    train = [_qa("pet", "owl"), _qa("pet", "cat"), _qa("pet", "owl"), _qa("city", "Oslo")]
    train += [_qa("city", "Rome"), _qa("city", "Rome")]
    asked = [_qa("pet", "owl"), _qa("pet", "dog"), _qa("city", "rome"), _qa("city", "Oslo")]
    # owl and Rome are guessed: right on the first and third question (case-insensitive)
    assert commonest_answer_accuracy(train, asked) == 0.5
    # a tie goes to the answer met first: cat before owl
    assert (
        commonest_answer_accuracy([_qa("pet", "cat"), _qa("pet", "owl")], [_qa("pet", "cat")]) == 1
    )
    with pytest.raises(ValueError, match="attributes"):
        commonest_answer_accuracy(train, [_qa("job", "nurse")])
    with pytest.raises(ValueError, match="empty"):
        commonest_answer_accuracy(train, [])


def test_commonest_answer_accuracy_on_a_world_is_below_one():
    world = make_world(seed=0, n_people=10)
    guess = commonest_answer_accuracy(world.qa("train"), world.qa("train"))
    assert 0 < guess < 1  # the train people do not all share one answer per attribute
