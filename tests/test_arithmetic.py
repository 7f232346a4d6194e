"""Addition data, masking and scoring for the arithmetic probe."""

import pytest
import torch

from mlupdates import arithmetic as ar
from mlupdates.chat import IGNORE


def test_encode_round_trip_and_bad_characters():
    assert ar.decode(ar.encode("47+38=85;")) == "47+38=85;"
    with pytest.raises(ValueError, match="not in the alphabet"):
        ar.encode("4*3")


def test_problems_are_distinct_sized_and_exclusive():
    train = ar.problems(2, 200, 0)
    test = ar.problems(2, 100, 1, exclude=set(train))
    assert len(set(train)) == 200 and not set(train) & set(test)
    assert all(10 <= p.a <= 99 and 10 <= p.b <= 99 for p in train + test)
    assert ar.problems(2, 200, 0) == train  # deterministic
    with pytest.raises(ValueError, match="count"):
        ar.problems(1, 82, 0)
    with pytest.raises(ValueError, match="n_digits"):
        ar.problems(0, 1, 0)


def test_training_rows_mask_the_prompt():
    p = ar.Problem(47, 38)
    x, y = ar.training_rows([p])
    targets = [t for t in y[0].tolist() if t != IGNORE]
    assert ar.decode(targets) == "85;"
    # the first target is predicted from the "=" sign
    first = y[0].tolist().index(targets[0])
    assert ar.decode([x[0, first].item()]) == "="


class Oracle(torch.nn.Module):
    """Generates the true sum (or a wrong one): exact_match must tell them apart."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.wrong = wrong

    def generate(self, idx, n, temperature=0):
        rows = []
        for row in idx.tolist():
            a, b = ar.decode(row)[:-1].split("+")
            out = ar.encode(f"{int(a) + int(b) + self.wrong};" + ";" * n)[:n]
            rows.append(row + out)
        return torch.tensor(rows)


def test_exact_match_scores_right_and_wrong_generators():
    items = ar.problems(2, 20, 0) + ar.problems(3, 5, 0)
    assert ar.exact_match(Oracle(), items) == 1.0
    assert ar.exact_match(Oracle(wrong=True), items) == 0.0


def test_default_seed_is_the_chapters(monkeypatch):
    from mlupdates import runtime

    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.delenv("MLUPDATES_SEED", raising=False)
    assert ar.problems(2, 50) == ar.problems(2, 50, 0)  # seed 0 keeps the old draws
    monkeypatch.setenv("MLUPDATES_SEED", "2")
    assert ar.problems(2, 50) == ar.problems(2, 50, runtime.derive_seed(2, 0))
    assert ar.problems(2, 50) != ar.problems(2, 50, 0)
    assert ar.problems(2, 50, 0) == ar.problems(2, 50, 0)  # an explicit seed is literal
