"""Toy tasks produce the right targets; scoring and training reject bad arguments."""

import pytest
import torch

from mlupdates.tasks import (
    BOS,
    SequenceTask,
    TrainSummary,
    count_parameters,
    exact_match_by_length,
    teacher_forcing_input,
    train_seq2seq,
)


def test_copy_and_reverse_targets():
    gen = torch.Generator().manual_seed(0)
    src, tgt = SequenceTask("copy").batch(4, 6, gen)
    assert torch.equal(src, tgt) and src.min() >= 1 and src.max() <= 10
    src, tgt = SequenceTask("reverse").batch(4, 6, gen)
    assert torch.equal(src.flip(1), tgt)
    assert SequenceTask(n_symbols=10).vocab_size == 11


def test_teacher_forcing_input_shifts_right():
    tgt = torch.tensor([[5, 6, 7]])
    assert teacher_forcing_input(tgt).tolist() == [[BOS, 5, 6]]


class _Oracle(torch.nn.Module):
    """Copies perfectly except at one length, to check the scorer."""

    def generate(self, src, length, bos=0):
        out = src.clone()
        if length == 3:
            out[:, 0] = (out[:, 0] % 10) + 1
        return out


def test_exact_match_counts_whole_sequences():
    scores = exact_match_by_length(_Oracle(), SequenceTask("copy"), [2, 3], n=20)
    assert scores == {2: 1.0, 3: 0.0}


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="kind='sort'"):
        SequenceTask("sort")
    with pytest.raises(ValueError, match="min_len=5, max_len=3"):
        SequenceTask(min_len=5, max_len=3)
    with pytest.raises(ValueError, match="size=0"):
        SequenceTask().batch(0, 3, torch.Generator())
    with pytest.raises(ValueError, match="steps=0"):
        train_seq2seq(torch.nn.Linear(1, 1), SequenceTask(), steps=0)
    with pytest.raises(ValueError, match="lengths"):
        exact_match_by_length(_Oracle(), SequenceTask(), [])


def test_summary_and_parameter_count():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8
    assert "1,234 parameters, 5 steps" in str(TrainSummary(5, 0.5, 1.0, 1234))
