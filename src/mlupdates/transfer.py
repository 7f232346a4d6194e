"""Transfer learning on scikit-learn's digits: one small CNN, three ways to reuse it.

A network trained on one task has already learned features (edges, strokes, loops) that
another task can use. Yosinski et al. (2014, arXiv:1411.1792) measured how transferable the
features of each layer are: the first layers are general, the last ones specific to the
task they were trained on. That gives three ways to reuse a pre-trained network for a new
set of classes, each with a fresh output layer (:func:`reuse`):

``"features"``
    Feature extraction: every pre-trained layer is frozen and only the new head is
    trained. This is transfer learning *without* fine-tuning.
``"partial"``
    Partial fine-tuning: the convolutional layers (the general features) stay frozen, the
    fully connected hidden layer and the head are trained.
``"full"``
    Full fine-tuning: every weight starts from its pre-trained value and is trained.

The data are the 1,797 8x8 images of handwritten digits that ship inside scikit-learn
(:func:`sklearn.datasets.load_digits`), so nothing is downloaded; :func:`digits_arrays`
reads the same file without importing scikit-learn, which takes seconds. :func:`fit_classifier`
trains any of these models, optionally against a teacher's soft targets
(:mod:`mlupdates.distill`), which is how the knowledge-distillation experiment reuses it.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from mlupdates import runtime
from mlupdates.distill import distillation_loss

Mode = Literal["features", "partial", "full"]
MODES: tuple[str, ...] = ("features", "partial", "full")


@cache
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits as ``(images (1797, 8, 8) with values 0..16, labels)``.

    Read from the ``digits.csv.gz`` that scikit-learn installs (64 pixels and the label per
    row), the file :func:`sklearn.datasets.load_digits` parses; the tests check that both
    give identical arrays. Locating the package does not import it.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed; its digits data set is needed")
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)  # (1797, 65)
    images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    images.setflags(write=False)  # cached: callers share these arrays
    labels.setflags(write=False)
    return images, labels


@dataclass(frozen=True)
class DigitsSplit:
    """Images ``(N, 1, 8, 8)`` scaled to [0, 1] and labels renumbered ``0..k-1``.

    ``classes[i]`` is the digit that label ``i`` stands for.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...]

    def to(self, device: str | torch.device) -> DigitsSplit:
        """The same split with its four tensors on ``device``."""
        return DigitsSplit(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.classes,
        )


def load_digits_split(
    classes: Sequence[int] = tuple(range(10)),
    n_train_per_class: int | None = None,
    test_fraction: float = 0.3,
    seed: int | None = None,
) -> DigitsSplit:
    """A deterministic train/test split of the scikit-learn digits of ``classes``.

    Each class is shuffled with ``seed`` (default: stream 0 of the running chapter's seed,
    :func:`mlupdates.runtime.resolve_seed`) and its first ``test_fraction`` goes to the test
    set, so the test set does not depend on ``n_train_per_class``: asking for fewer training
    images (the first ``n_train_per_class`` of the rest) leaves the test set unchanged and
    runs with different amounts of data stay comparable.
    """
    classes = tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
        raise ValueError(f"classes={classes} must be distinct digits in 0..9")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    if n_train_per_class is not None and n_train_per_class < 1:
        raise ValueError(f"n_train_per_class={n_train_per_class} must be at least 1 (or None)")
    pixels, labels = digits_arrays()
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    targets = torch.tensor(labels)
    g = torch.Generator().manual_seed(runtime.resolve_seed(seed, 0))
    train_idx: list[Tensor] = []
    test_idx: list[Tensor] = []
    for c in classes:
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = round(test_fraction * idx.numel())
        rest = idx[n_test:]
        if n_train_per_class is not None:
            if n_train_per_class > rest.numel():
                raise ValueError(
                    f"n_train_per_class={n_train_per_class} exceeds the {rest.numel()} "
                    f"training images of digit {c}"
                )
            rest = rest[:n_train_per_class]
        test_idx.append(idx[:n_test])
        train_idx.append(rest)
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    return DigitsSplit(images[tr], relabel[targets[tr]], images[te], relabel[targets[te]], classes)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and a max-pool (features), a hidden layer, an output head.

    ``(B, 1, 8, 8)`` -> conv -> ReLU -> conv -> ReLU -> 2x2 max-pool ``(B, c2, 4, 4)`` ->
    flatten -> ``hidden`` units -> ReLU -> ``n_classes`` logits.
    """

    def __init__(
        self, n_classes: int = 10, channels: tuple[int, int] = (16, 32), hidden: int = 64
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes} must be at least 2")
        if len(channels) != 2 or min(channels) < 1 or hidden < 1:
            raise ValueError(f"channels={channels} (two) and hidden={hidden} must be positive")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(self.features(x)))  # (B, n_classes)


def reuse(model: DigitsCNN, mode: Mode, n_classes: int) -> DigitsCNN:
    """A copy of the pre-trained ``model`` with a fresh ``n_classes`` head, frozen per ``mode``.

    See the module docstring for the three modes. The original model is left untouched.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}")
    if n_classes < 2:
        raise ValueError(f"n_classes={n_classes} must be at least 2")
    new = copy.deepcopy(model)
    device = next(model.parameters()).device
    new.head = nn.Linear(model.head.in_features, n_classes).to(device)  # drawn on the CPU
    new.requires_grad_(True)
    frozen = {"features": (new.features, new.hidden), "partial": (new.features,), "full": ()}
    for part in frozen[mode]:
        part.requires_grad_(False)
    return new


@dataclass
class FitResult:
    """Mean training loss of every epoch, and the wall-clock and CPU seconds of training.

    ``cpu_seconds`` is the process's CPU time: with one thread it barely changes when other
    programs compete for the machine, so it compares training costs more fairly than
    ``seconds``.
    """

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def _teacher_logits(teacher: nn.Module | None, x: Tensor) -> Tensor | None:
    """The teacher's logits on all of ``x``, once and in eval mode (None without a teacher)."""
    if teacher is None:
        return None
    teacher.eval()
    with torch.no_grad():
        return teacher(x)


def _check_training_inputs(
    x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float
) -> None:
    """The argument checks :func:`fit_classifier` and :func:`fit_classifiers` share."""
    if x.size(0) != y.size(0) or x.size(0) == 0:
        raise ValueError(f"x has {x.size(0)} rows and y {y.size(0)}; need the same, > 0")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be at least 1")
    if not lr > 0:
        raise ValueError(f"lr={lr} must be positive")


def fit_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int | None = None,
    teacher: nn.Module | None = None,
    T: float = 4.0,
    alpha: float = 0.9,
) -> FitResult:
    """Train the trainable parameters of ``model`` with Adam on ``(x, y)``; deterministic.

    Without a ``teacher`` the loss is cross-entropy on the labels. With one, it is Hinton
    et al.'s :func:`~mlupdates.distill.distillation_loss` with temperature ``T`` and weight
    ``alpha`` on the soft targets; the teacher's logits are computed once, in eval mode.
    The order of the mini-batches depends only on ``seed`` (default: stream 0 of the running
    chapter's seed); it is drawn on the CPU, so it is the same on every device.
    """
    _check_training_inputs(x, y, epochs, batch_size, lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameter")
    teacher_logits = _teacher_logits(teacher, x)  # (N, n_classes), or None
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(runtime.resolve_seed(seed, 0))
    result = FitResult()
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        order = torch.randperm(x.size(0), generator=g)
        total = 0.0
        for i in range(0, x.size(0), batch_size):
            rows = order[i : i + batch_size].to(x.device)
            logits = model(x[rows])
            if teacher_logits is None:
                loss = nn.functional.cross_entropy(logits, y[rows])
            else:
                loss = distillation_loss(logits, teacher_logits[rows], y[rows], T, alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * rows.numel()
        result.losses.append(total / x.size(0))
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    model.eval()
    return result


@torch.no_grad()
def classifier_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` whose arg-max logit is the label ``y`` (model put in eval mode)."""
    if x.size(0) != y.size(0) or x.size(0) == 0:
        raise ValueError(f"x has {x.size(0)} rows and y {y.size(0)}; need the same, > 0")
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def fit_classifiers(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    seeds: Sequence[int | None],
    teacher: nn.Module | None = None,
    temperatures: Sequence[float | None] | None = None,
    alpha: float = 0.9,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
) -> list[FitResult]:
    """Train several same-shaped classifiers at once, each as :func:`fit_classifier` would.

    Model ``k`` gets the mini-batch order of ``seeds[k]`` and, if ``temperatures[k]`` is a
    number, the distillation loss against ``teacher`` at that temperature (weight
    ``alpha``); ``None`` (the default for every model) means cross-entropy on the labels.
    The models' parameters are stacked (:func:`torch.func.stack_module_state`) and one
    vectorised forward pass (:func:`torch.func.vmap`) serves them all; Adam is elementwise,
    so one optimiser over the stacked tensors updates each model exactly as its own would.
    The result matches separate :func:`fit_classifier` runs up to float32 rounding (the
    batched convolutions add in another order), at a fraction of the time for small models.
    Every parameter must be trainable; the trained values are copied back into ``models``.
    Each result's times are those of the whole joint run.
    """
    from torch.func import functional_call, stack_module_state, vmap

    models = list(models)
    k = len(models)
    if k == 0:
        raise ValueError("models is empty")
    if len(seeds) != k:
        raise ValueError(f"{len(seeds)} seeds for {k} models")
    temperatures = [None] * k if temperatures is None else list(temperatures)
    if len(temperatures) != k:
        raise ValueError(f"{len(temperatures)} temperatures for {k} models")
    if any(t is not None for t in temperatures) and teacher is None:
        raise ValueError("a temperature needs a teacher")
    if not all(t is None or t > 0 for t in temperatures) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"temperatures must be positive and alpha={alpha} in [0, 1]")
    _check_training_inputs(x, y, epochs, batch_size, lr)
    shapes = [[(n, p.shape) for n, p in m.named_parameters()] for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("every model must have the same parameter names and shapes")
    if not all(p.requires_grad for m in models for p in m.parameters()):
        raise ValueError("every parameter must be trainable; use fit_classifier to freeze some")
    teacher_logits = _teacher_logits(teacher, x)  # (N, n_classes), or None
    for m in models:
        m.train()
    params, buffers = stack_module_state(models)  # name -> (k, ...) leaves
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(skeleton, (p, b), (xb,))

    soft_weight = temp = None
    if teacher_logits is not None:  # label-only models: weight 0 on the soft term, T = 1
        soft_weight = torch.tensor([0.0 if t is None else alpha for t in temperatures])
        temp = torch.tensor([1.0 if t is None else float(t) for t in temperatures])
        soft_weight, temp = soft_weight.to(x.device), temp.to(x.device).view(k, 1, 1)
    batched = vmap(forward)  # (k, B, ...) inputs -> (k, B, n_classes) logits
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay)
    gens = [torch.Generator().manual_seed(runtime.resolve_seed(s, 0)) for s in seeds]
    results = [FitResult() for _ in models]
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(x.size(0), generator=g) for g in gens])  # (k, N)
        totals = torch.zeros(k)
        for i in range(0, x.size(0), batch_size):
            rows = orders[:, i : i + batch_size].to(x.device)  # (k, B)
            logits = batched(params, buffers, x[rows])
            targets = y[rows]  # (k, B)
            # (k,) losses; each depends on its own model's weights only
            loss = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            loss = loss.mean(dim=1)
            if soft_weight is not None:
                log_p_s = nn.functional.log_softmax(logits / temp, dim=-1)
                log_p_t = nn.functional.log_softmax(teacher_logits[rows] / temp, dim=-1)
                kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean(dim=1)
                loss = soft_weight * kl * temp.flatten() ** 2 + (1 - soft_weight) * loss
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            totals += loss.detach().cpu() * rows.size(1)
        for j, r in enumerate(results):
            r.losses.append(totals[j].item() / x.size(0))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    with torch.no_grad():
        for j, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][j])
            m.eval()
    for r in results:
        r.seconds, r.cpu_seconds = seconds, cpu_seconds
    return results
