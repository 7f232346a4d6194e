"""The training loop: schedule, batching, loss masking, optimiser groups, learning, determinism."""

import itertools
import math

import pytest
import torch

from mlupdates.gpt import GPT, GPTConfig
from mlupdates.train import (
    History,
    TrainConfig,
    batches,
    evaluate,
    lr_at,
    make_optimizer,
    row_batches,
    train,
)

PATTERN = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]  # "1" and "5" need context to predict
VOCAB = 12


def pattern_tokens(n: int = 1200) -> torch.Tensor:
    return torch.tensor(PATTERN * (n // len(PATTERN)))


def tiny_gpt(seed: int = 0, dropout: float = 0.0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=VOCAB, context=16, n_layer=1, n_head=2, d_model=32, dropout=dropout)
    return GPT(cfg)


# --- learning-rate schedule ---------------------------------------------------------------

SCHEDULE = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 110}


def test_lr_schedule_endpoints():
    assert lr_at(0, **SCHEDULE) == pytest.approx(1e-3 / 11)  # the first step already moves
    assert lr_at(9, **SCHEDULE) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, **SCHEDULE) == pytest.approx(1e-3)  # peak at the end of warm-up
    assert lr_at(60, **SCHEDULE) == pytest.approx(5.5e-4)  # cosine half-way: the mean
    assert lr_at(110, **SCHEDULE) == pytest.approx(1e-4)  # the floor
    assert lr_at(500, **SCHEDULE) == pytest.approx(1e-4)  # and it stays there
    assert lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=4) == 1.0  # no warm-up


def test_lr_schedule_segments_are_monotonic():
    values = [lr_at(s, **SCHEDULE) for s in range(120)]
    warmup, decay = values[:11], values[10:111]
    assert all(a < b for a, b in itertools.pairwise(warmup))
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert max(values) == pytest.approx(1e-3) and min(decay) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": -1}, "step=-1 must be non-negative"),
        ({"warmup_steps": 110}, r"warmup_steps=110 must be in \[0, total_steps=110\)"),
        ({"min_lr": 2e-3}, r"min_lr=0.002 must be in \[0, lr=0.001\]"),
    ],
)
def test_lr_schedule_rejects_bad_arguments(change, message):
    args = {"step": 0, **SCHEDULE, **change}
    with pytest.raises(ValueError, match=message):
        lr_at(args.pop("step"), **args)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps=0 must be at least 1"),
        ({"warmup_steps": 200}, r"warmup_steps=200 must be in \[0, steps=200\)"),
        ({"min_lr": 1.0}, "min_lr=1.0"),
        ({"grad_clip": 0.0}, "grad_clip=0.0"),
        ({"betas": (0.9, 1.0)}, "betas"),
    ],
)
def test_train_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


# --- batching ---------------------------------------------------------------------------


def test_batches_are_windows_shifted_by_one():
    tokens = torch.arange(50)
    gen = torch.Generator().manual_seed(0)
    seen_starts = set()
    for x, y in itertools.islice(batches(tokens, 8, 10, gen), 40):
        assert x.shape == y.shape == (8, 10)
        assert torch.equal(y, x + 1)  # the target is the next token
        assert torch.equal(x, x[:, :1] + torch.arange(10))  # consecutive tokens
        seen_starts.update(x[:, 0].tolist())
    assert seen_starts == set(range(40))  # every window fits, the last one included
    a = next(batches(tokens, 4, 10, torch.Generator().manual_seed(3)))
    b = next(batches(tokens, 4, 10, torch.Generator().manual_seed(3)))
    assert torch.equal(a[0], b[0])  # the generator alone decides the batches


def test_batches_loss_mask_turns_targets_into_ignore_index():
    tokens = torch.arange(40)
    mask = tokens % 3 == 0  # only multiples of three are worth predicting
    x, y = next(batches(tokens, 6, 8, torch.Generator().manual_seed(0), loss_mask=mask))
    expected = torch.where((x + 1) % 3 == 0, x + 1, torch.full_like(x, -100))
    assert torch.equal(y, expected)
    with pytest.raises(ValueError, match="loss_mask"):
        next(batches(tokens, 2, 8, torch.Generator(), loss_mask=mask[:-1]))
    with pytest.raises(ValueError, match="cannot fill one window"):
        next(batches(tokens[:8], 2, 8, torch.Generator()))


def test_row_batches_visit_every_row_once_per_epoch():
    inputs = torch.arange(12).repeat_interleave(3).view(12, 3)
    gen = torch.Generator().manual_seed(0)
    rows = [x[:, 0] for x, _ in itertools.islice(row_batches(inputs, inputs, 4, gen), 3)]
    assert sorted(torch.cat(rows).tolist()) == list(range(12))
    with pytest.raises(ValueError, match=r"batch_size=13 must be in \[1, N=12\]"):
        next(row_batches(inputs, inputs, 13, gen))


# --- optimiser and masking --------------------------------------------------------------


def test_weight_decay_only_on_matrices():
    model = tiny_gpt()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])  # biases and LayerNorm gains
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_parameters()  # every parameter once, the tied matrix included


def test_fully_masked_batch_gives_zero_gradient():
    model = tiny_gpt()
    x = torch.randint(0, VOCAB, (4, 16))
    _, loss = model(x, torch.full_like(x, -100))
    loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.parameters())
    model.zero_grad()
    y = torch.full_like(x, -100)
    y[:, -1] = x[:, 0]  # one counted target per row: now the gradient is not zero
    model(x, y)[1].backward()
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_evaluate_weights_batches_by_counted_tokens():
    model = tiny_gpt().eval()
    x = torch.randint(0, VOCAB, (2, 16))
    y = torch.randint(0, VOCAB, (2, 16))
    y_few = y.clone()
    y_few[:, 4:] = -100
    with torch.no_grad():
        l_all, l_few = model(x, y)[1].item(), model(x, y_few)[1].item()
    expected = (l_all * 32 + l_few * 8) / 40
    assert evaluate(model, [(x, y), (x, y_few)]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="no target tokens"):
        evaluate(model, [(x, torch.full_like(y, -100))])


# --- the loop ---------------------------------------------------------------------------

CFG = TrainConfig(steps=150, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=10, eval_every=50)


def test_training_learns_a_repeating_pattern():
    tokens = pattern_tokens()
    model = tiny_gpt()
    checkpoints = []
    history = train(model, tokens, CFG, val_data=tokens, on_eval=lambda m, s: checkpoints.append(s))
    assert isinstance(history, History)
    assert history.column("step") == [50, 100, 150] == checkpoints
    assert history.records[0]["train_loss"] > history.records[-1]["train_loss"]
    # log(12) = 2.48 for a guess; a model that learned the cycle is nearly certain
    assert history.records[-1]["val_loss"] < 0.1 * math.log(VOCAB)
    assert history.column("lr")[-1] == pytest.approx(
        lr_at(149, lr=1e-2, min_lr=1e-3, warmup_steps=10, total_steps=150)
    )
    assert len(history.step_losses) == 150 and history.tokens == 150 * 8 * 16
    prompt = torch.tensor([PATTERN[:4]])
    out = model.generate(prompt, 8, temperature=0.0)[0].tolist()
    assert out == (PATTERN * 2)[:12]
    assert "val_loss=" in history.summary() and "tokens/s" in history.summary()
    assert "time" not in history.summary(timing=False)


def test_same_seed_same_history_and_caller_rng_untouched():
    tokens = pattern_tokens()
    cfg = TrainConfig(steps=30, batch_size=4, eval_every=10, seed=3)
    model_a, model_b = tiny_gpt(dropout=0.1), tiny_gpt(dropout=0.1)
    torch.manual_seed(123)
    a = train(model_a, tokens, cfg, val_data=tokens)
    after_train = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_train, torch.rand(1))  # train() forked the global RNG
    torch.manual_seed(999)  # a different caller state: dropout is seeded by cfg.seed alone
    b = train(model_b, tokens, cfg, val_data=tokens)
    assert a.step_losses == b.step_losses and a.records == b.records
    other = TrainConfig(steps=30, batch_size=4, eval_every=10, seed=4)
    c = train(tiny_gpt(dropout=0.1), tokens, other)
    assert c.step_losses != a.step_losses
    assert c.column("val_loss") == [None, None, None]


def test_masked_training_learns_only_the_unmasked_positions():
    """Fine-tuning on 'answer' tokens: the loss is measured only where the mask allows."""
    tokens = pattern_tokens()
    answers = (torch.arange(tokens.numel()) % len(PATTERN)) >= 8  # last 4 of each cycle
    gen = torch.Generator().manual_seed(0)
    stream = batches(tokens, 8, 16, gen, loss_mask=answers)
    _, y = next(stream)
    assert (y != -100).float().mean().item() == pytest.approx(4 / 12, abs=0.1)
    cfg = TrainConfig(steps=60, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=5, eval_every=60)
    val = [next(batches(tokens, 8, 16, torch.Generator().manual_seed(9), loss_mask=answers))]
    history = train(tiny_gpt(), stream, cfg, val_data=val)
    assert history.records[-1]["val_loss"] < 0.2 * math.log(VOCAB)
