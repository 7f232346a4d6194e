"""The DDPM of chapter 4: schedule math, the forward process, sampling steps against Hugging
Face ``diffusers``' ``DDPMScheduler``, the network, and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from mlupdates.diffusion import (
    Denoiser,
    NoiseSchedule,
    diffusion_loss,
    guided_eps,
    load_digits_data,
    sample,
    timestep_embedding,
    to_pixels,
    train_diffusion,
)

from .conftest import assert_close_f32


def reference(steps: int, kind: str) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=steps,
        beta_schedule={"linear": "linear", "cosine": "squaredcos_cap_v2"}[kind],
        beta_start=1e-4,
        beta_end=0.02,
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
    )


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_match_diffusers(kind):
    ours = getattr(NoiseSchedule, kind)(100)
    theirs = reference(100, kind)
    assert torch.allclose(ours.betas, theirs.betas, atol=1e-6)
    assert torch.allclose(ours.alpha_bars, theirs.alphas_cumprod, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_falls_from_one_towards_zero(kind):
    ab = getattr(NoiseSchedule, kind)(1000).alpha_bars  # DDPM: T = 1000
    assert bool((ab[1:] < ab[:-1]).all())  # strictly decreasing: every step adds noise
    assert ab[0] > 0.99 and ab[-1] < 0.01 and bool((ab > 0).all())


def test_cosine_alpha_bar_follows_its_formula():
    steps, s = 50, 0.008
    ab = NoiseSchedule.cosine(steps).alpha_bars.double()
    f = [math.cos((u / steps + s) / (1 + s) * math.pi / 2) ** 2 for u in range(steps + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(steps - 1)], dtype=torch.float64)
    assert torch.allclose(ab[:-1], expected, rtol=1e-4)  # the last beta is capped at 0.999


def test_q_sample_matches_diffusers_add_noise():
    sched, ref = NoiseSchedule.cosine(100), reference(100, "cosine")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 64, generator=gen), torch.randn(6, 64, generator=gen)
    t = torch.tensor([0, 5, 20, 50, 90, 99])
    assert torch.allclose(sched.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), atol=1e-5)


def test_q_sample_has_the_closed_form_mean_and_variance():
    sched = NoiseSchedule.linear(1000)
    t = 300
    ab = sched.alpha_bars[t].item()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000, 1), 0.7)
    x_t = sched.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
    assert abs(x_t.mean().item() - math.sqrt(ab) * 0.7) < 0.01
    assert abs(x_t.var().item() - (1 - ab)) < 0.01
    # at the last step almost nothing of x0 is left: x_T is close to a standard normal
    x_last = sched.q_sample(x0, 999, torch.randn(x0.shape, generator=gen))
    assert abs(x_last.mean().item()) < 0.01 and abs(x_last.std().item() - 1) < 0.01


@pytest.mark.parametrize("t", [0, 1, 37, 99])
def test_reverse_step_matches_diffusers_step(t):
    sched, ref = NoiseSchedule.cosine(100), reference(100, "cosine")
    gen = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(5, 64, generator=gen), torch.randn(5, 64, generator=gen)
    ours = sched.p_step(eps, t, x_t, torch.Generator().manual_seed(9))
    theirs = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(9)).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_predict_x0_inverts_q_sample():
    sched = NoiseSchedule.cosine(100)
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.rand(4, 64, generator=gen) * 2 - 1, torch.randn(4, 64, generator=gen)
    x_t = sched.q_sample(x0, 40, noise)
    assert torch.allclose(sched.predict_x0(x_t, 40, noise), x0, atol=1e-4)
    # with the true x0, the posterior mean lies between x0 and x_t's rescaled signal
    mean, var = sched.posterior(x0, x_t, 40)
    assert mean.shape == x0.shape and 0 < var < sched.betas[40].item()


def test_schedule_rejects_bad_inputs():
    with pytest.raises(ValueError, match="steps"):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.linear(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="betas must lie"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(torch.ones(2, 2) * 0.1)
    sched = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        sched.q_sample(torch.zeros(2, 4), 10, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="noise"):
        sched.q_sample(torch.zeros(2, 4), 1, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="tensor of steps"):
        sched.q_sample(torch.zeros(2, 4), torch.tensor([1, 2, 3]), torch.zeros(2, 4))


def test_timestep_embedding_and_denoiser_shapes():
    emb = timestep_embedding(torch.tensor([0, 1, 50]), 16)
    assert emb.shape == (3, 16) and torch.allclose(emb[0, :8], torch.ones(8))
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 7)
    model = Denoiser(hidden=32, depth=2)
    x, t, c = torch.randn(5, 64), torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 3, 9, 10, 1])
    assert model(x, t, c).shape == (5, 64)  # label 10 is the null class
    assert torch.equal(model(x, t, c), torch.zeros(5, 64))  # zero-initialised output layer
    with pytest.raises(ValueError, match="labels"):
        model(x, t, torch.tensor([0, 1, 2, 3, 11]))
    with pytest.raises(ValueError, match="need x_t"):
        model(x, t[:3], c)
    with pytest.raises(ValueError, match="hidden"):
        Denoiser(hidden=0)


def test_guidance_combines_conditional_and_unconditional_noise():
    torch.manual_seed(0)
    model = Denoiser(hidden=32, depth=1)
    torch.nn.init.normal_(model.out[-1].weight)
    x, t, c = torch.randn(3, 64), torch.tensor([5, 5, 5]), torch.tensor([1, 2, 3])
    cond, uncond = model(x, t, c), model(x, t, torch.full_like(c, 10))
    assert torch.equal(guided_eps(model, x, t, c, 0.0), cond)  # w = 0 is the conditional pass
    # The guided pass batches both halves in one forward, so its rounding may differ from two
    # separate passes by float32 ulps of the largest values (near 10 here), never by more.
    assert cond.abs().max() > 1 and (cond - uncond).abs().max() > 0.1
    assert_close_f32(guided_eps(model, x, t, c, 2.0), 3 * cond - 2 * uncond)
    # the tolerance still separates the formula from near misses: (1 + w) eps_u - w eps_c,
    # w eps_c - (w - 1) eps_u, or a guidance weight off by 5%
    for wrong in (3 * uncond - 2 * cond, 2 * cond - uncond, 3.1 * cond - 2.1 * uncond):
        with pytest.raises(AssertionError):
            assert_close_f32(guided_eps(model, x, t, c, 2.0), wrong)
    with pytest.raises(ValueError, match="guidance"):
        guided_eps(model, x, t, c, -1.0)


def test_digits_data_and_pixel_round_trip():
    x, y = load_digits_data()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.min() == -1 and x.max() == 1 and set(y.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    assert np.allclose(to_pixels(x), load_digits().data, atol=1e-5)


def test_a_few_training_steps_reduce_the_loss_and_sampling_works():
    x, y = load_digits_data()
    sched = NoiseSchedule.cosine(50)
    torch.manual_seed(0)
    model = Denoiser(hidden=64, depth=2)

    def held_loss() -> float:
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return diffusion_loss(model, sched, x[:512], y[:512], generator=gen).item()

    before = held_loss()
    losses = train_diffusion(model, sched, x, y, steps=150, batch_size=128, lr=2e-3)
    after = held_loss()
    assert len(losses) == 150 and after < 0.7 * before
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    out = sample(model, sched, [0, 1, 2], guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 64) and bool(out.abs().le(1.0 + 1e-5).all())
    repeat = sample(
        model, sched, [0, 1, 2], guidance=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out, repeat)
    with pytest.raises(ValueError, match="labels"):
        sample(model, sched, [])
    with pytest.raises(ValueError, match="p_uncond"):
        diffusion_loss(model, sched, x[:4], y[:4], p_uncond=1.5)
    with pytest.raises(ValueError, match="steps"):
        train_diffusion(model, sched, x, y, steps=0)


def test_training_draws_follow_the_chapter_seed(monkeypatch):
    from mlupdates import runtime

    monkeypatch.setattr(runtime, "_current", None)
    x, y = load_digits_data()
    sched = NoiseSchedule.cosine(20)

    def losses(env_seed, **kwargs):
        monkeypatch.setenv("MLUPDATES_SEED", str(env_seed))
        torch.manual_seed(0)
        model = Denoiser(hidden=16, depth=1)
        return train_diffusion(model, sched, x[:64], y[:64], steps=3, batch_size=8, **kwargs)

    seed0 = losses(0)
    assert seed0 == losses(0, seed=0) == losses(2, seed=0)  # seed 0 keeps the old draws
    assert losses(2) != seed0
