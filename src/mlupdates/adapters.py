"""Bottleneck adapters: small trainable layers inserted into a frozen network.

Houlsby et al. (2019, arXiv:1902.00751) fine-tuned BERT on 26 tasks while training about
3.6 % of its parameters per task: after a sub-layer's output ``h`` (``d_model`` wide) they
insert

    adapter(h) = h + W_up f(W_down h)

with ``W_down`` projecting to a ``bottleneck`` of ``m << d_model`` units and ``W_up``
projecting back, ``2 m d + m + d`` parameters. Both matrices start near zero (Gaussian,
standard deviation 1e-2, truncated at two standard deviations, as in the paper), so with
the residual connection each adapter starts close to the identity and training begins
from the pre-trained model's behaviour.

The price is paid at inference: the adapter layers run *in sequence* after the layers they
follow and cannot be folded into existing weights, so they add latency that is most
visible at batch size 1, where a GPU is latency-bound. A merged LoRA update
(:mod:`mlupdates.lora`) adds none; :func:`latency` measures the difference.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from mlupdates.lora import Targets, check_targets, matches


def adapter_parameter_count(d_model: int, bottleneck: int) -> int:
    """Parameters of one :class:`Adapter`: ``2 m d`` weights plus ``m + d`` biases."""
    if d_model < 1 or bottleneck < 1:
        raise ValueError(f"d_model={d_model} and bottleneck={bottleneck} must be at least 1")
    return 2 * d_model * bottleneck + bottleneck + d_model


class Adapter(nn.Module):
    """``h + up(act(down(h)))``: Houlsby's bottleneck adapter with a residual connection."""

    def __init__(self, d_model: int, bottleneck: int, init_std: float = 1e-2) -> None:
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model={d_model} must be at least 1")
        if not 1 <= bottleneck <= d_model:
            raise ValueError(f"bottleneck={bottleneck} must be in [1, d_model={d_model}]")
        if not init_std >= 0:
            raise ValueError(f"init_std={init_std} must be non-negative")
        self.down = nn.Linear(d_model, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, d_model)
        for layer in (self.down, self.up):  # near-identity start (Houlsby et al., section 2.1)
            if init_std > 0:
                nn.init.trunc_normal_(layer.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            else:  # exactly the identity (and B = 0 stalls the down projection's gradient)
                nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.act(self.down(h)))  # (..., m) in the middle


class WithAdapter(nn.Module):
    """A frozen sub-layer followed by an :class:`Adapter` on its (tensor) output."""

    def __init__(self, module: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.module = module
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.module(*args, **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"adapter needs a tensor output, got {type(out).__name__}")
        return self.adapter(out)


def insert_adapters(
    model: nn.Module,
    targets: Targets,
    bottleneck: int,
    d_model: int | None = None,
    *,
    train_layer_norms: bool = False,
    init_std: float = 1e-2,
) -> list[str]:
    """Put an :class:`Adapter` after each targeted sub-layer and freeze everything else.

    In a transformer block the targets are the attention and MLP sub-layers (``("attn",
    "mlp")`` in :class:`mlupdates.gpt.GPT`), so each adapter sits before the residual add,
    where Houlsby et al. put theirs. ``d_model`` is the width of the sub-layer's output; it
    may be omitted when the targets are ``nn.Linear``. Houlsby et al. also trained the layer
    norms (``train_layer_norms=True``). Returns the names of the wrapped modules.
    """
    targets = check_targets(targets)
    chosen = [
        name
        for name, module in model.named_modules()
        if name
        and not isinstance(module, (WithAdapter, Adapter))
        and matches(name, module, targets)
    ]
    chosen = [n for n in chosen if not any(n.startswith(c + ".") for c in chosen)]  # outermost
    if not chosen:
        raise ValueError(f"targets={targets!r} matched no module of the model")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        module = model.get_submodule(name)
        width = d_model
        if width is None:
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"d_model=None but {name} is a {type(module).__name__}; pass d_model"
                )
            width = module.out_features
        adapter = Adapter(width, bottleneck, init_std)
        adapter.to(next(module.parameters(), torch.empty(0)).device)
        model.set_submodule(name, WithAdapter(module, adapter))
    if train_layer_norms:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
    return chosen


@torch.inference_mode()
def latency(model: nn.Module, *inputs: Any, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall-clock seconds of one ``model(*inputs)`` call (inference mode).

    A measurement for benchmarks and notebook cells marked ``NBVAL_IGNORE_OUTPUT``, never a
    test assertion. CUDA work is synchronised before each clock read.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    was_training = model.training
    model.eval()

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    try:
        for _ in range(warmup):
            model(*inputs)
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            model(*inputs)
            sync()
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)
