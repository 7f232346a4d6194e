"""The small GPT: config checks, causality, init, decoding filters, KV cache, GPT-2 parity."""

import math

import pytest
import torch

from mlupdates.gpt import (
    GPT,
    GPTConfig,
    TargetLoss,
    apply_temperature,
    gpt2_config_kwargs,
    load_gpt2_state_dict,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

from .conftest import FLOAT32_EPS, assert_close_f32, scramble

TINY = GPTConfig(vocab_size=23, context=16, n_layer=2, n_head=2, d_model=16)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**TINY.__dict__, **overrides})
    return GPT(cfg).eval()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30, "n_head": 4}, "d_model=30 must be divisible by n_head=4"),
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"context": -1}, "context=-1"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ({"activation": "relu"}, "activation='relu'"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps=0.0"),
    ],
)
def test_config_rejects_bad_sizes(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY.__dict__, **overrides})


def test_forward_shapes_and_context_overflow():
    model = tiny_model()
    idx = torch.randint(0, 23, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 23) and loss is None
    with pytest.raises(ValueError, match="17 tokens exceed the model's context=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="LongTensor"):
        model(idx.float())
    with pytest.raises(ValueError, match="targets shape"):
        model(idx, idx[:, :-1])


def test_weight_tying_init_and_parameter_count():
    cfg = GPTConfig(vocab_size=50, context=8, n_layer=4, n_head=2, d_model=32)
    torch.manual_seed(0)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    d, L, V, T = 32, 4, 50, 8
    per_block = (
        2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    )
    expected = V * d + T * d + L * per_block + 2 * d  # tied head adds nothing
    assert model.num_parameters() == expected
    assert model.num_parameters(non_embedding=True) == expected - V * d - T * d
    # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)
    # An untrained model is close to uniform: loss near log(V).
    idx = torch.randint(0, V, (4, T))
    assert model(idx, torch.randint(0, V, (4, T)))[1].item() == pytest.approx(math.log(V), abs=0.1)


def test_no_bias_variant_has_no_bias_parameters():
    model = tiny_model(bias=False)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    with pytest.raises(ValueError, match="bias=False"):
        gpt2_config_kwargs(model.config)


def test_model_is_causal():
    model = tiny_model()
    scramble(model)
    idx = torch.randint(0, 23, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 23
    a, b = model(idx)[0], model(changed)[0]
    assert_close_f32(a[:, :7], b[:, :7])  # the past cannot see the future
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 0.1 * a.abs().max()


def test_ignored_targets_do_not_count():
    model = tiny_model()
    scramble(model)
    idx = torch.randint(0, 23, (2, 10))
    targets = torch.randint(0, 23, (2, 10))
    masked = targets.clone()
    masked[:, :6] = -100
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 6:].reshape(-1, 23), targets[:, 6:].reshape(-1)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=64 * FLOAT32_EPS)
    _, none_left = model(idx, torch.full_like(targets, -100))
    assert none_left.item() == 0.0  # not NaN


# --- decoding helpers -------------------------------------------------------------------


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[2.0, 4.0, 8.0]]))
    with pytest.raises(ValueError, match="temperature=0"):
        apply_temperature(logits, 0)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5], [5.0, 5.0, 5.0, 1.0, 0.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).sum(dim=1).tolist() == [2, 2]  # ties do not let more through
    assert torch.isfinite(out[0]).tolist() == [False, True, False, False, True]
    assert out[0, 1] == 3.0  # kept logits are unchanged
    assert torch.isfinite(top_k_filter(logits, 5)).all()
    with pytest.raises(ValueError, match=r"k=6 must be in \[1, 5\]"):
        top_k_filter(logits, 6)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.51) == [False, True, False, True]  # 0.5 + 0.25
    assert kept(0.75) == [False, True, False, True]  # exactly reached: no third token
    assert kept(0.76) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [False, True, False, False]  # the top token always survives
    with pytest.raises(ValueError, match=r"p=0 must be in \(0, 1\]"):
        top_p_filter(logits, 0)


def test_sample_next_token_greedy_and_filtered():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]]).repeat(500, 1)
    assert sample_next_token(logits, temperature=0.0).unique().tolist() == [2]
    g = torch.Generator().manual_seed(0)
    drawn = sample_next_token(logits, temperature=1.0, top_k=2, generator=g)
    assert set(drawn.unique().tolist()) == {2, 3}
    drawn = sample_next_token(logits, temperature=5.0, generator=g)
    assert set(drawn.unique().tolist()) == {0, 1, 2, 3}  # a hot temperature reaches everything
    with pytest.raises(ValueError, match=r"top_p=1\.5"):
        sample_next_token(logits, top_p=1.5)


# --- generation and the KV cache -------------------------------------------------------


def test_generate_validates_arguments():
    model = tiny_model()
    prompt = torch.zeros(1, 10, dtype=torch.long)
    with pytest.raises(
        ValueError, match="10 tokens \\+ max_new_tokens=7 exceed the model's context=16"
    ):
        model.generate(prompt, 7)
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        model.generate(prompt, -1)
    with pytest.raises(ValueError, match="temperature=-1"):
        model.generate(prompt, 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k=24"):
        model.generate(prompt, 2, top_k=24)
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_kv_cache_greedy_equals_no_cache():
    model = tiny_model()
    scramble(model)  # decisive logits: a wrong cache changes the tokens
    prompt = torch.randint(0, 23, (3, 4))
    with_cache = model.generate(prompt, 12, temperature=0.0, use_cache=True)
    without = model.generate(prompt, 12, temperature=0.0, use_cache=False)
    assert with_cache.shape == (3, 16)
    assert torch.equal(with_cache[:, :4], prompt)
    assert torch.equal(with_cache, without)
    # greedy decoding is the arg-max of the full forward pass at every step
    logits, _ = model(with_cache[:, :-1])
    assert torch.equal(logits[:, 3:].argmax(-1), with_cache[:, 4:])


def test_kv_cache_seeded_sampling_equals_no_cache_and_restores_mode():
    model = tiny_model(dropout=0.1).train()
    scramble(model)
    prompt = torch.randint(0, 23, (4, 3))
    kwargs = {"temperature": 0.8, "top_k": 10, "top_p": 0.9}
    a = model.generate(
        prompt, 13, use_cache=True, generator=torch.Generator().manual_seed(7), **kwargs
    )
    b = model.generate(
        prompt, 13, use_cache=False, generator=torch.Generator().manual_seed(7), **kwargs
    )
    c = model.generate(
        prompt, 13, use_cache=True, generator=torch.Generator().manual_seed(8), **kwargs
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the generator really drives the sampling
    assert model.training  # generate ran in eval mode and put the mode back


def test_cached_chunk_after_prefix_matches_full_forward():
    """A multi-token chunk appended to a filled cache needs an offset causal mask."""
    from mlupdates.gpt import KVCache

    model = tiny_model()
    scramble(model)
    idx = torch.randint(0, 23, (2, 14))
    cache = KVCache(model.config, 2, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        model._hidden(idx[:, :5], cache)
        chunk = model._hidden(idx[:, 5:], cache)
        full = model._hidden(idx)
    assert cache.length == 14
    assert_close_f32(chunk, full[:, 5:])


# --- parity with Hugging Face transformers' GPT-2 --------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_logits_and_loss_match_transformers_gpt2(activation):
    transformers = pytest.importorskip("transformers")
    cfg = GPTConfig(
        vocab_size=61, context=24, n_layer=2, n_head=4, d_model=32, activation=activation
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2_config_kwargs(cfg))).eval()
    scramble(hf)
    model = GPT(cfg).eval()
    load_gpt2_state_dict(model, hf.state_dict())
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, 61, (3, 24))
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)  # HF shifts labels itself
    with torch.no_grad():
        theirs = hf(input_ids=idx, labels=idx)
        logits, loss = model(idx, targets)
    assert theirs.logits.abs().max() > 1.0  # scrambled weights: a real test, not near-zero logits
    assert_close_f32(logits, theirs.logits)
    assert loss.item() == pytest.approx(theirs.loss.item(), rel=64 * FLOAT32_EPS)


def test_load_gpt2_state_dict_rejects_mismatch():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("transformer.ln_f.bias")
    with pytest.raises(ValueError, match="missing"):
        load_gpt2_state_dict(model, state)


def test_float32_tolerance_scales_with_the_values_and_catches_bugs():
    logits = torch.linspace(-13.0, 13.0, 257)
    assert_close_f32(logits.nextafter(torch.full_like(logits, 99.0)), logits)  # one ulp apart
    with pytest.raises(AssertionError):
        assert_close_f32(logits + 1e-3, logits)  # a bug far smaller than the values


def _chat_like_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # Rows of 12 tokens whose targets count only at a few positions near the end, as in SFT.
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, TINY.vocab_size, (5, 12), generator=g)
    targets = torch.full((5, 12), -100)
    for row, start in enumerate((6, 7, 9, 10, 8)):
        targets[row, start : start + 2] = torch.randint(0, TINY.vocab_size, (2,), generator=g)
    return idx, targets


def test_logits_at_equals_the_full_forward_at_the_kept_positions():
    model = tiny_model(6)
    idx, targets = _chat_like_batch(3)
    keep = targets != -100
    full, _ = model(idx)
    assert_close_f32(model.logits_at(idx, keep), full[keep])  # row-major order, (N, V)
    assert model.logits_at(idx, keep).shape == (int(keep.sum()), TINY.vocab_size)
    with pytest.raises(ValueError, match="bool tensor"):
        model.logits_at(idx, keep.long())
    with pytest.raises(ValueError, match="bool tensor"):
        model.logits_at(idx, keep[:, :-1])


def test_target_loss_equals_the_models_loss_and_gradient():
    model = tiny_model(3)
    idx, targets = _chat_like_batch()
    _, expected = model(idx, targets)
    (grad_expected,) = torch.autograd.grad(expected, model.transformer.wte.weight)
    wrapped = TargetLoss(model)
    logits, loss = wrapped(idx, targets)
    (grad,) = torch.autograd.grad(loss, model.transformer.wte.weight)
    assert logits is None and list(wrapped.parameters()) == list(model.parameters())
    assert_close_f32(loss, expected)
    assert_close_f32(grad, grad_expected)
    # a different target at one counted position changes it: the counted positions are used
    targets[0, 6] = (targets[0, 6] + 1) % TINY.vocab_size
    assert abs(wrapped(idx, targets)[1].item() - loss.item()) > 1e-4


def test_target_loss_of_a_batch_without_targets_is_zero_and_shapes_are_checked():
    model = tiny_model(4)
    idx, _ = _chat_like_batch(1)
    loss = TargetLoss(model)(idx, torch.full_like(idx, -100))[1]
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="targets shape"):
        TargetLoss(model)(idx, idx[:, :-1])


def test_training_through_target_loss_follows_plain_training():
    from mlupdates.train import TrainConfig, train

    idx, targets = _chat_like_batch(2)
    cfg = TrainConfig(steps=5, warmup_steps=1, eval_every=5, seed=0)
    plain, fast = tiny_model(5), tiny_model(5)
    train(plain, iter([(idx, targets)] * 5), cfg)
    train(TargetLoss(fast), iter([(idx, targets)] * 5), cfg)
    moved = (plain.lm_head.weight - tiny_model(5).lm_head.weight).abs().max()
    assert moved > 1e-3  # the steps did something, and both runs did the same thing
    assert_close_f32(fast.lm_head.weight, plain.lm_head.weight, ulps=4096)
