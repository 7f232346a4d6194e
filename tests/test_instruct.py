"""Self-instruct in miniature: forms from seeds, subjects from samples, teacher labels."""

import pytest
import torch

from mlupdates.chat import chat_prompt
from mlupdates.instruct import NAME, instruction_forms, label, make_instructions, sample_subjects
from mlupdates.world import QA, QUESTIONS, make_world


def seeds():
    world = make_world(seed=0, n_people=10)
    return world, world.qa("train")[:5]


def test_forms_are_read_off_the_seeds():
    _, seed_tasks = seeds()
    assert instruction_forms(seed_tasks) == QUESTIONS
    with pytest.raises(ValueError, match="seeds is empty"):
        instruction_forms([])
    bad = QA("Where does she live?", "X", "Ana Bel", "city", "train")
    with pytest.raises(ValueError, match="does not name 'Ana Bel'"):
        instruction_forms([bad])
    other = QA("Which town is home to Ana Bel?", "X", "Ana Bel", "city", "train")
    with pytest.raises(ValueError, match="two seed forms"):
        instruction_forms([seed_tasks[0], other])


def test_make_instructions_skips_duplicates_and_exclusions():
    forms = {"city": "Where does {name} live?", "pet": "What pet does {name} have?"}
    out = make_instructions(
        forms,
        ["Ana Bel", "Bo Cor", "Ana Bel", "Cy Dan"],
        exclude_subjects={"Cy Dan"},
        exclude_questions={"Where does Bo Cor live?"},
    )
    assert [q.question for q in out] == [
        "Where does Ana Bel live?",
        "What pet does Ana Bel have?",
        "What pet does Bo Cor have?",
    ]
    assert all(q.answer == "" and q.split == "generated" for q in out)
    with pytest.raises(ValueError, match="forms is empty"):
        make_instructions({}, ["Ana Bel"])


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token sequence after any prompt: a stand-in for a trained model."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script = script
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, idx, max_new_tokens, **_):
        tail = torch.tensor(self.script[:max_new_tokens]).repeat(idx.size(0), 1)
        return torch.cat([idx, tail], dim=1)


class FakeTokenizer:
    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab
        self.special_tokens = {"<|endoftext|>": 0}

    def encode(self, text: str) -> list[int]:
        return [1] * len(text.split())

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


def test_sample_subjects_collects_names_once_in_order():
    tok = FakeTokenizer(["", "Ana Bel lives in Kor. ", "Bo Cor keeps a cat. ", "Ana Bel again."])
    model = ScriptedModel([1, 2, 3])
    assert sample_subjects(model, tok, n_samples=3, max_new_tokens=3) == ["Ana Bel", "Bo Cor"]
    with pytest.raises(ValueError, match="n_samples=0"):
        sample_subjects(model, tok, n_samples=0)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        sample_subjects(model, tok, n_samples=1, max_new_tokens=0)
    assert NAME.findall("In 1950, Ana Bel was born. The city of Kor") == ["Ana Bel"]


def test_label_keeps_the_teachers_non_empty_answers():
    tok = FakeTokenizer(["", " Kor", "<|end|>", " "])
    questions = make_instructions({"city": "Where does {name} live?"}, ["Ana Bel", "Bo Cor"])
    labelled = label(ScriptedModel([1, 2]), tok, questions)
    assert [(q.person, q.answer) for q in labelled] == [("Ana Bel", "Kor"), ("Bo Cor", "Kor")]
    assert label(ScriptedModel([3, 2]), tok, questions) == []  # blank answers are dropped
    assert chat_prompt(questions[0].question).startswith("<|user|>Where does Ana Bel")
    with pytest.raises(ValueError, match="instructions is empty"):
        label(ScriptedModel([1]), tok, [])
