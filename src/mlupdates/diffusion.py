"""A tiny class-conditional diffusion model (DDPM) for 8x8 digit images.

DALL·E 2 draws its images with diffusion models (Ramesh et al. 2022, arXiv:2204.06125). A
denoising diffusion probabilistic model (DDPM; Ho, Jain and Abbeel 2020, arXiv:2006.11239)
learns to undo a fixed noising process. The forward process adds Gaussian noise in ``T``
small steps with variances ``beta_t``; with ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = alpha_1 ... alpha_t`` it has a closed form for any step,

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),

so a training example is made in one line (:meth:`NoiseSchedule.q_sample`). A network
``eps(x_t, t, c)`` is trained to predict the noise in ``x_t`` (a plain mean squared error),
and sampling runs the process backwards from pure noise, one ancestral step
``x_t -> x_{t-1}`` at a time (:meth:`NoiseSchedule.p_step`): estimate ``x_0`` from the
predicted noise, clip it to the data range, and draw from the Gaussian posterior
``q(x_{t-1} | x_t, x_0)``.

Conditioning on a class ``c`` is done with classifier-free guidance (Ho and Salimans 2022,
arXiv:2207.12598): during training the label is replaced by a "null" label with probability
``p_uncond``, so one network learns both the conditional and the unconditional noise; at
sampling time the two are combined as ``(1 + w) eps(x, c) - w eps(x, null)``, and a guidance
weight ``w > 0`` pushes samples towards what makes them typical of their class.

The schedule and the sampling step follow the conventions of Hugging Face ``diffusers``'
``DDPMScheduler`` (0-based steps, "fixed_small" posterior variance, clipping of the ``x_0``
estimate); ``tests/test_diffusion.py`` checks both against it. Everything is small enough to
train in seconds on a CPU: the data are scikit-learn's 1,797 8x8 handwritten digits, shipped
inside the package, so nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlupdates.runtime import resolve_seed
from mlupdates.train import lr_at

#: Side of the images (scikit-learn's digits are 8x8, with intensities 0..16).
SIDE = 8
PIXEL_MAX = 16.0


# --- the noise schedule ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The variances ``beta_t`` of the forward process, ``t = 0 .. T-1``, and what follows.

    Build one with :meth:`linear` (DDPM's choice) or :meth:`cosine` (Nichol and Dhariwal
    2021, arXiv:2102.09672, which destroys information more evenly over the steps and
    suits few steps and small images).
    """

    betas: Tensor  # (T,) float32, each in (0, 1)

    def __post_init__(self) -> None:
        b = self.betas
        if not isinstance(b, Tensor) or b.dim() != 1 or b.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1); got range [{b.min():.3g}, {b.max():.3g}]")

    @classmethod
    def linear(cls, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """``beta_t`` rising linearly from ``beta_start`` to ``beta_end`` (DDPM: 1e-4 to 0.02
        over 1,000 steps)."""
        _check_steps(steps)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start={beta_start} <= beta_end={beta_end} < 1")
        return cls(torch.linspace(beta_start, beta_end, steps, dtype=torch.float32))

    @classmethod
    def cosine(cls, steps: int, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """``alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2)`` at ``u = t / T``; each
        ``beta_t = 1 - alpha_bar(t+1)/alpha_bar(t)``, capped at ``max_beta`` so the last step
        stays invertible."""
        _check_steps(steps)
        if not s >= 0 or not 0 < max_beta < 1:
            raise ValueError(f"need s={s} >= 0 and 0 < max_beta={max_beta} < 1")

        def alpha_bar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta)
            for i in range(steps)
        ]
        return cls(torch.tensor(betas, dtype=torch.float32))

    @property
    def steps(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> Tensor:
        """``alpha_bar_t``: the share of the signal's variance left after step ``t``."""
        return torch.cumprod(self.alphas, dim=0)

    def _check_t(self, t: Tensor | int, batch: int) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"t must be an int or a ({batch},) tensor of steps, got {tuple(t.shape)}"
            )
        if bool(((t < 0) | (t >= self.steps)).any()):
            raise ValueError(f"steps t must lie in [0, {self.steps - 1}]")
        return t

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """A draw of ``x_t ~ q(x_t | x_0)``: ``sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise``.

        ``x0`` and ``noise`` are ``(B, D)``; ``t`` is one step for all rows or ``(B,)`` steps.
        """
        if x0.shape != noise.shape or x0.dim() != 2:
            raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must be (B, D)")
        t = self._check_t(t, x0.size(0)).to(x0.device)
        ab = self.alpha_bars.to(x0.device)[t].unsqueeze(1)  # (B, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: int, eps: Tensor) -> Tensor:
        """Invert :meth:`q_sample` given the noise: ``(x_t - sqrt(1 - alpha_bar_t) eps) /
        sqrt(alpha_bar_t)``."""
        ab = self.alpha_bars[self._check_t(t, 1)].item()
        return (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)

    def posterior(self, x0: Tensor, x_t: Tensor, t: int) -> tuple[Tensor, float]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)``, a Gaussian (DDPM, eq. 6-7)."""
        self._check_t(t, 1)
        ab = self.alpha_bars
        ab_t, ab_prev = ab[t].item(), ab[t - 1].item() if t > 0 else 1.0
        alpha_t, beta_t = ab_t / ab_prev, 1 - ab_t / ab_prev
        mean = (math.sqrt(ab_prev) * beta_t / (1 - ab_t)) * x0 + (
            math.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t)
        ) * x_t
        variance = max((1 - ab_prev) / (1 - ab_t) * beta_t, 1e-20)
        return mean, variance

    def p_step(
        self,
        eps: Tensor,
        t: int,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        clip: bool = True,
    ) -> Tensor:
        """One reverse step ``x_t -> x_{t-1}`` given the predicted noise ``eps``.

        Estimates ``x_0``, clips it to [-1, 1] (the data range) when ``clip``, and samples
        the posterior; at ``t = 0`` it returns the posterior mean. The noise is drawn as
        ``torch.randn(x_t.shape, generator=generator)``, as ``diffusers`` draws it.
        """
        x0 = self.predict_x0(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean, variance = self.posterior(x0, x_t, t)
        if t == 0:
            return mean
        noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        return mean + math.sqrt(variance) * noise


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")


# --- the noise-prediction network -------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of integer steps ``t`` ``(B,) -> (B, dim)``, as the transformer's
    position encoding: the network can tell nearby steps apart at every scale."""
    if dim < 2 or dim % 2:
        raise ValueError(f"dim={dim} must be an even number >= 2")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float().unsqueeze(1) * freqs.unsqueeze(0)  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class Denoiser(nn.Module):
    """``eps_theta(x_t, t, c)``: a residual MLP that predicts the noise in a flat image.

    The step enters as sinusoidal features and the class through a learned embedding with
    one extra row, index ``n_classes``, for the "null" label of classifier-free guidance.
    Both are added to the hidden state of every block, the way U-Nets inject them into
    every resolution. An MLP is enough for 64-pixel images; DALL·E 2's decoder is a U-Net
    with attention, 3.5 billion parameters in the 64x64 stage (Ramesh et al. 2022).
    """

    def __init__(
        self,
        data_dim: int = SIDE * SIDE,
        n_classes: int = 10,
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (
            ("data_dim", data_dim),
            ("n_classes", n_classes),
            ("hidden", hidden),
            ("depth", depth),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.n_classes, self.emb_dim = n_classes, emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.class_emb = nn.Embedding(n_classes + 1, hidden)
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, data_dim))
        nn.init.zeros_(self.out[-1].weight)  # start by predicting zero noise
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_class(self) -> int:
        """The label that means "no class" (classifier-free guidance's unconditional model)."""
        return self.n_classes

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        if x_t.dim() != 2 or t.shape != (x_t.size(0),) or labels.shape != (x_t.size(0),):
            raise ValueError(
                f"need x_t (B, D), t (B,), labels (B,); got {tuple(x_t.shape)}, "
                f"{tuple(t.shape)}, {tuple(labels.shape)}"
            )
        if bool(((labels < 0) | (labels > self.n_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.n_classes}] ({self.n_classes}: null)")
        cond = self.time_mlp(timestep_embedding(t, self.emb_dim)) + self.class_emb(labels)  # (B, H)
        h = self.inp(x_t)  # (B, H)
        for block in self.blocks:
            h = h + block(h + cond)
        return self.out(h)  # (B, D)


# --- training and sampling --------------------------------------------------------------------


def diffusion_loss(
    model: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    labels: Tensor,
    *,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDPM's simple loss ``E ||eps - eps_theta(x_t, t, c)||^2`` on one batch, with each label
    replaced by the null label with probability ``p_uncond`` (classifier-free guidance)."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond={p_uncond} must be in [0, 1]")
    batch = x0.size(0)
    # drawn on the CPU (a CPU generator gives the same draws on every device), then moved
    t = torch.randint(0, schedule.steps, (batch,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    drop = (torch.rand(batch, generator=generator) < p_uncond).to(x0.device)
    labels = torch.where(drop, torch.full_like(labels, model.null_class), labels)
    x_t = schedule.q_sample(x0, t, noise)
    return F.mse_loss(model(x_t, t, labels), noise)


def train_diffusion(
    model: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    labels: Tensor,
    *,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 2e-3,
    p_uncond: float = 0.1,
    seed: int | None = None,
) -> list[float]:
    """Train ``model`` with AdamW, a short warm-up and a cosine decay; returns each step's loss.

    Batches and noise come from a CPU generator seeded with ``seed`` (default: stream 0 of
    the running chapter's seed), so a run is repeatable; ``x0`` and ``labels`` may live on
    any device, the model's.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps={steps} >= 1, batch_size={batch_size} >= 1, lr={lr} > 0")
    if x0.dim() != 2 or labels.shape != (x0.size(0),):
        raise ValueError(
            f"need x0 (N, D) and labels (N,); got {tuple(x0.shape)}, {tuple(labels.shape)}"
        )
    gen = torch.Generator().manual_seed(resolve_seed(seed, 0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(
                step, lr=lr, min_lr=lr / 10, warmup_steps=min(100, steps // 10), total_steps=steps
            )
        idx = torch.randint(0, x0.size(0), (batch_size,), generator=gen).to(x0.device)
        loss = diffusion_loss(
            model, schedule, x0[idx], labels[idx], p_uncond=p_uncond, generator=gen
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def guided_eps(model: Denoiser, x_t: Tensor, t: Tensor, labels: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance: ``(1 + w) eps(x, c) - w eps(x, null)``; ``w = 0`` is the plain
    conditional model."""
    if guidance < 0:
        raise ValueError(f"guidance={guidance} must be >= 0")
    if guidance == 0:
        return model(x_t, t, labels)
    # one forward pass over both halves: conditional rows, then the same rows unconditioned
    null = torch.full_like(labels, model.null_class)
    eps_c, eps_u = model(x_t.repeat(2, 1), t.repeat(2), torch.cat([labels, null])).chunk(2)
    return (1 + guidance) * eps_c - guidance * eps_u


@torch.no_grad()
def sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    labels: Sequence[int] | Tensor,
    *,
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> Tensor:
    """Generate one image per label by ancestral sampling from pure noise; ``(B, D)`` in
    about [-1, 1], on the model's device (the noise is drawn on the CPU, from ``generator``)."""
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long).to(device)
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError("labels must be a non-empty 1-D sequence of class ids")
    was_training = model.training
    model.eval()
    data_dim = model.inp.in_features
    x = torch.randn((labels.numel(), data_dim), generator=generator).to(device)  # x_T
    for t in reversed(range(schedule.steps)):
        steps = torch.full((labels.numel(),), t, dtype=torch.long, device=device)
        eps = guided_eps(model, x, steps, labels, guidance)
        x = schedule.p_step(eps, t, x, generator, clip=clip)
    model.train(was_training)
    return x


# --- the data ----------------------------------------------------------------------------------


def load_digits_data() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 handwritten digits as ``(N, 64)`` floats in [-1, 1] and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / PIXEL_MAX * 2 - 1
    return x, torch.tensor(digits.target, dtype=torch.long)


def to_pixels(x: Tensor) -> np.ndarray:
    """Model space [-1, 1] back to scikit-learn's intensity scale 0..16, clipped, as NumPy."""
    return ((x.detach().cpu().clamp(-1, 1) + 1) / 2 * PIXEL_MAX).numpy()
