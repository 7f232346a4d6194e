"""The encoder-decoder transformer: position encodings, causality, decoding, training."""

import math

import pytest
import torch

from mlupdates.tasks import SequenceTask, exact_match_by_length, train_seq2seq
from mlupdates.transformer import Seq2SeqTransformer, TransformerConfig, sinusoidal_positions


def test_sinusoidal_positions_formula():
    pe = sinusoidal_positions(50, 16)
    p, i = 7, 3
    assert math.isclose(pe[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    assert torch.allclose(pe[0, 1::2], torch.ones(8))
    with pytest.raises(ValueError, match="d_model=15"):
        sinusoidal_positions(4, 15)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig(vocab_size=7, d_model=32, n_heads=4)).eval()
    src = torch.randint(1, 7, (2, 6))
    tgt = torch.randint(1, 7, (2, 6))
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] % 6) + 1
    a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)  # earlier outputs cannot see the change
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_generate_agrees_with_teacher_forcing():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig(vocab_size=7, d_model=32, n_heads=4)).eval()
    src = torch.randint(1, 7, (3, 5))
    out = model.generate(src, 5)
    tgt_in = torch.cat([torch.zeros(3, 1, dtype=torch.long), out[:, :-1]], dim=1)
    assert torch.equal(model(src, tgt_in).argmax(-1), out)


def test_trains_on_short_copy():
    # 300 steps, not 150: at 150 the length-4 accuracy sat at 0.74-0.93 over seeds 0-4, so a
    # CPU with other rounding could fall under 0.9; at 300 it is 0.99-1.0 on every seed, with
    # native and portable kernels alike.
    torch.manual_seed(0)
    task = SequenceTask("copy", n_symbols=5, min_len=2, max_len=4)
    model = Seq2SeqTransformer(TransformerConfig(vocab_size=task.vocab_size, d_model=32))
    summary = train_seq2seq(model, task, steps=300, batch_size=32, lr=5e-3)
    acc = exact_match_by_length(model, task, [2, 3, 4], n=100)
    assert summary.final_loss < 0.2 and min(acc.values()) > 0.9


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"dropout=1\.5"):
        TransformerConfig(dropout=1.5)
    model = Seq2SeqTransformer(TransformerConfig(vocab_size=5, d_model=16, n_heads=2, max_len=8))
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        model(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must have shape"):
        model.encode(torch.ones(9, dtype=torch.long))
