"""LoRA: fine-tune a frozen model through a low-rank update of its weight matrices.

Hu et al. (2021, arXiv:2106.09685) observed that the change a fine-tune makes to a
pre-trained weight matrix ``W0`` (``d_out x d_in``) has low "intrinsic rank". So instead of
training ``W0`` they freeze it and learn ``delta W = B A`` with ``A`` (``r x d_in``) and
``B`` (``d_out x r``), ``r << min(d_in, d_out)``:

    h = W0 x + (alpha / r) * B A x

``A`` starts random (Kaiming-uniform, as ``nn.Linear`` initialises its weight) and ``B``
starts at zero, so the adapted model is *exactly* the pre-trained one at step 0 and only
``r (d_in + d_out)`` numbers per matrix are trained. Dividing by ``r`` keeps the size of the
update roughly independent of the rank, so ``alpha`` need not be re-tuned when ``r``
changes. After training, ``B A`` can be added into ``W0`` (:meth:`LoRALinear.merge`): the
model then runs at exactly the base model's cost, unlike adapters (:mod:`mlupdates.adapters`)
that add layers. Subtracting it again (:meth:`LoRALinear.unmerge`) recovers ``W0`` up to
float rounding, which is what lets one frozen base serve many task adapters.

Two later variants are implemented as flags, both with the same switches as Hugging Face
``peft`` (``use_rslora`` / ``use_dora``), against which the tests check outputs:

* rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) scales by ``alpha / sqrt(r)``: with
  ``alpha / r`` the update shrinks as the rank grows and large ranks learn no better.
* DoRA (Liu et al. 2024, arXiv:2402.09353) splits each output row of the weight into a
  magnitude ``m`` (trained) and a direction ``(W0 + s B A) / ||W0 + s B A||`` (updated by
  LoRA); the norm is treated as a constant in the backward pass, as the paper suggests.

The layout mirrors ``peft`` (``lora_A``/``lora_B`` per adapter name, the frozen layer inside)
so that weights copy one-to-one; module names of the wrapped model gain a ``.base``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Targets = Iterable[str] | Callable[[str, nn.Module], bool]
"""Which modules to adapt: name suffixes (``("q_proj", "v_proj")``, matched like ``peft``'s
``target_modules``: the full name or its last dotted parts) or a predicate on (name, module)."""

Init = Literal["kaiming", "gaussian"]

LORA_PARAM_PREFIXES = ("lora_A.", "lora_B.", "lora_magnitude.")


def matches(name: str, module: nn.Module, targets: Targets) -> bool:
    """Whether module ``name`` is selected by ``targets`` (see :data:`Targets`)."""
    if callable(targets):
        return bool(targets(name, module))
    return any(name == t or name.endswith("." + t) for t in targets)


def check_targets(targets: Targets) -> Targets:
    """Validate ``targets``: a bare string (a common slip for ``("q_proj",)``) is refused."""
    if isinstance(targets, str):
        raise TypeError(f"targets={targets!r} must be a collection of names, e.g. ({targets!r},)")
    if callable(targets):
        return targets
    targets = tuple(targets)
    if not targets:
        raise ValueError("targets=() selects nothing; name at least one module")
    return targets


def _is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` or a quantised stand-in (:class:`mlupdates.quant.QuantLinear4bit`)."""
    return isinstance(module, nn.Linear) or hasattr(module, "dequantize_weight")


def lora_parameter_count(d_in: int, d_out: int, r: int, use_dora: bool = False) -> int:
    """Trainable numbers LoRA adds to one ``d_out x d_in`` matrix: ``r (d_in + d_out)``.

    DoRA adds one magnitude per output row, ``d_out`` more.
    """
    for name, value in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    return r * (d_in + d_out) + (d_out if use_dora else 0)


def llama_lora_parameter_count(
    n_layers: int, d_model: int, d_ff: int, r: int, kv_dim: int | None = None
) -> int:
    """LoRA parameters on *every* linear layer of a LLaMA-style model, as QLoRA trains.

    Each block has the attention projections q, k, v, o (``kv_dim`` is the width of k and v,
    smaller than ``d_model`` with grouped-query attention) and the SwiGLU MLP's gate, up and
    down projections. LLaMA-65B (80 layers, d_model 8192, d_ff 22016) at r = 64 gives
    0.80 B parameters, 1.2 % of the model.
    """
    kv_dim = d_model if kv_dim is None else kv_dim
    shapes = [
        (d_model, d_model),  # q
        (d_model, kv_dim),  # k
        (d_model, kv_dim),  # v
        (d_model, d_model),  # o
        (d_model, d_ff),  # gate
        (d_model, d_ff),  # up
        (d_ff, d_model),  # down
    ]
    if n_layers < 1:
        raise ValueError(f"n_layers={n_layers} must be at least 1")
    return n_layers * sum(lora_parameter_count(i, o, r) for i, o in shapes)


class LoRALinear(nn.Module):
    """A frozen linear layer plus one or more named low-rank updates, one active at a time.

    ``base`` is an ``nn.Linear`` (or a :class:`~mlupdates.quant.QuantLinear4bit`, which makes
    this QLoRA). The constructor adds the first adapter, named ``adapter``; more can be
    added with :meth:`add_adapter` and chosen with :meth:`set_adapter`.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        adapter: str = "default",
        init: Init = "kaiming",
        use_rslora: bool = False,
        use_dora: bool = False,
    ) -> None:
        super().__init__()
        if not _is_linear_like(base):
            raise TypeError(f"base must be nn.Linear or QuantLinear4bit, got {type(base).__name__}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        self.lora_A = nn.ParameterDict()  # name -> (r, d_in)
        self.lora_B = nn.ParameterDict()  # name -> (d_out, r)
        self.lora_magnitude = nn.ParameterDict()  # name -> (d_out,), DoRA adapters only
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        self._merged_norm: Tensor | None = None  # DoRA: the row norms used when merging
        self.add_adapter(
            adapter, r, alpha, dropout, init=init, use_rslora=use_rslora, use_dora=use_dora
        )
        self.set_adapter(adapter)

    # -- adapters ------------------------------------------------------------------------
    def add_adapter(
        self,
        name: str,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        init: Init = "kaiming",
        use_rslora: bool = False,
        use_dora: bool = False,
    ) -> None:
        """Add a fresh adapter (``B = 0``, so it changes nothing yet); it is not activated."""
        if not name.isidentifier():
            raise ValueError(f"adapter name={name!r} must be a Python identifier")
        if name in self.lora_A:
            raise ValueError(f"adapter name={name!r} already exists; have {list(self.lora_A)}")
        limit = min(self.in_features, self.out_features)
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"rank r={r!r} must be a positive integer")
        if r > limit:
            raise ValueError(f"rank r={r} exceeds min(d_in, d_out)={limit}")
        if not alpha > 0:
            raise ValueError(f"alpha={alpha} must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if init not in ("kaiming", "gaussian"):
            raise ValueError(f"init={init!r} must be 'kaiming' or 'gaussian'")
        device = self.base_weight().device
        A = torch.empty(r, self.in_features, device=device)
        if init == "kaiming":  # what nn.Linear (and peft's default) use for A
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:  # peft's init_lora_weights="gaussian"
            nn.init.normal_(A, std=1.0 / r)
        self.lora_A[name] = nn.Parameter(A)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, device=device))
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r[name], self.alpha[name] = r, float(alpha)
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        if use_dora:  # magnitude starts at the row norms, so the layer is unchanged
            with torch.no_grad():
                self.lora_magnitude[name] = nn.Parameter(self._row_norm(name))

    def set_adapter(self, name: str | None) -> None:
        """Make ``name`` the active (and only trainable) adapter; ``None`` runs the bare base."""
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is merged; unmerge() before switching to {name!r}"
            )
        if name is not None and name not in self.lora_A:
            raise ValueError(f"adapter name={name!r} unknown; have {list(self.lora_A)}")
        self.active_adapter = name
        for group in (self.lora_A, self.lora_B, self.lora_magnitude):
            for key, p in group.items():
                p.requires_grad_(key == name)

    @property
    def adapters(self) -> list[str]:
        return list(self.lora_A)

    # -- weights -------------------------------------------------------------------------
    def base_weight(self) -> Tensor:
        """``W0`` (or, after :meth:`merge`, the merged weight); dequantised for a 4-bit base."""
        if isinstance(self.base, nn.Linear):
            return self.base.weight
        return self.base.dequantize_weight()

    def delta_weight(self, name: str | None = None) -> Tensor:
        """The scaled update ``(alpha / r) B A`` (``d_out x d_in``) of adapter ``name``."""
        name = self._name(name)
        return (self.lora_B[name] @ self.lora_A[name]) * self.scaling[name]

    def _row_norm(self, name: str) -> Tensor:
        """DoRA's ``||W0 + s B A||`` per output row, detached (a constant for backprop)."""
        weight = self.base_weight() + self.delta_weight(name).detach()
        return torch.linalg.norm(weight, dim=1).detach()

    def _name(self, name: str | None) -> str:
        name = self.active_adapter if name is None else name
        if name is None:
            raise RuntimeError("no active adapter; call set_adapter(name) first")
        if name not in self.lora_A:
            raise ValueError(f"adapter name={name!r} unknown; have {list(self.lora_A)}")
        return name

    # -- forward, merge ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)  # frozen path: W0 x + b (or the merged weight)
        name = self.active_adapter
        if name is None or self.merged_adapter is not None:
            return y
        A, B, s = self.lora_A[name], self.lora_B[name], self.scaling[name]
        dropout = self.lora_dropout[name]
        if name not in self.lora_magnitude:
            return y + F.linear(F.linear(dropout(x), A), B) * s  # (..., r) in the middle
        # DoRA: y' = m / ||W0 + sBA|| * (W0 x + s B A x) + b
        scale = self.lora_magnitude[name] / self._row_norm(name)  # (d_out,)
        if isinstance(dropout, nn.Identity) or not self.training:
            base_out = y if self.base.bias is None else y - self.base.bias
        else:  # with dropout both paths see the dropped input, as in peft
            x = dropout(x)
            base_out = F.linear(x, self.base_weight())
        lora_out = F.linear(F.linear(x, A), B)
        return y + (scale - 1) * base_out + scale * lora_out * s

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapter into the base weight: ``W = W0 + (alpha/r) B A``.

        Afterwards the layer costs exactly one matrix multiply, as the base did.
        """
        if self.merged_adapter is not None:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is already merged")
        if not isinstance(self.base, nn.Linear):
            raise TypeError(
                f"cannot merge into a {type(self.base).__name__}: the sum would have to be "
                "re-quantised; dequantise the base first"
            )
        name = self._name(None)
        weight = self.base.weight
        delta = self.delta_weight(name)
        if name in self.lora_magnitude:
            norm = torch.linalg.norm(weight + delta, dim=1)
            self._merged_norm = norm
            weight.copy_((self.lora_magnitude[name] / norm)[:, None] * (weight + delta))
        else:
            weight.add_(delta)
        self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: subtract the update and recover ``W0`` up to float rounding."""
        name = self.merged_adapter
        if name is None:
            raise RuntimeError("no adapter is merged")
        weight = self.base.weight
        delta = self.delta_weight(name)
        if name in self.lora_magnitude:
            factor = (self.lora_magnitude[name] / self._merged_norm)[:, None]
            weight.copy_(weight / factor - delta)
            self._merged_norm = None
        else:
            weight.sub_(delta)
        self.merged_adapter = None

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}, out_features={self.out_features}"]
        for name in self.lora_A:
            kind = "dora" if name in self.lora_magnitude else "lora"
            parts.append(f"{name}: {kind} r={self.r[name]} alpha={self.alpha[name]:g}")
        parts.append(f"active={self.active_adapter!r}, merged={self.merged_adapter is not None}")
        return ", ".join(parts)


# -- whole models -------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's :class:`LoRALinear` modules by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRALinear layers; call inject_lora(model, ...) first")
    return layers


def inject_lora(
    model: nn.Module,
    targets: Targets,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    adapter: str = "default",
    init: Init = "kaiming",
    use_rslora: bool = False,
    use_dora: bool = False,
) -> list[str]:
    """Wrap the targeted linear layers in :class:`LoRALinear` and freeze everything else.

    Returns the names of the replaced modules. Only the new ``lora_*`` parameters are left
    trainable (``requires_grad``); a tied weight (GPT's ``lm_head``) stays shared.
    """
    targets = check_targets(targets)
    existing = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    chosen = [
        name
        for name, module in model.named_modules()
        if name
        and _is_linear_like(module)
        and not isinstance(module, LoRALinear)
        and not any(name.startswith(e + ".") for e in existing)
        and matches(name, module, targets)
    ]
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"targets={targets!r} matched no linear layer; the model has {linears}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        layer = LoRALinear(
            model.get_submodule(name),
            r,
            alpha,
            dropout,
            adapter=adapter,
            init=init,
            use_rslora=use_rslora,
            use_dora=use_dora,
        )
        model.set_submodule(name, layer)
    return chosen


def add_adapter(
    model: nn.Module,
    name: str,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    init: Init = "kaiming",
    use_rslora: bool = False,
    use_dora: bool = False,
) -> None:
    """Add adapter ``name`` to every LoRA layer of ``model`` (inactive until :func:`set_adapter`)."""
    for layer in _require_lora(model).values():
        layer.add_adapter(
            name, r, alpha, dropout, init=init, use_rslora=use_rslora, use_dora=use_dora
        )


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Switch every LoRA layer to adapter ``name`` (``None``: the bare base model)."""
    for layer in _require_lora(model).values():
        layer.set_adapter(name)


def merge_lora(model: nn.Module) -> None:
    """Merge the active adapter of every LoRA layer into its base weight."""
    for layer in _require_lora(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for layer in _require_lora(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> list[str]:
    """Fold the active adapter into every base weight and put the plain layers back.

    What a deployment does once training is over (``peft``'s ``merge_and_unload``): each
    :class:`LoRALinear` is replaced by its base ``nn.Linear`` holding ``W0 + (alpha/r) B A``,
    so the model has exactly the base model's modules, shapes and cost per token, with no
    wrapper left to call. A layer with no active adapter is unwrapped unchanged. The other
    adapters are discarded; keep :func:`lora_state_dict` first if they are still needed.
    Returns the names of the unwrapped layers.
    """
    layers = _require_lora(model)
    for name, layer in layers.items():
        if not isinstance(layer.base, nn.Linear):
            raise TypeError(
                f"{name}: cannot merge into a {type(layer.base).__name__}; dequantise the base first"
            )
    for name, layer in layers.items():
        if layer.active_adapter is not None and layer.merged_adapter is None:
            layer.merge()
        model.set_submodule(name, layer.base)
    return list(layers)


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_state_dict(model: nn.Module, adapter: str | None = None) -> dict[str, Tensor]:
    """Only the adapter weights (all adapters, or just ``adapter``), as a state dict.

    This is what a LoRA checkpoint holds: ``r (d_in + d_out)`` numbers per adapted matrix
    instead of the whole model, so one base can be shipped once and tasks as small files.
    """
    layers = _require_lora(model)
    out: dict[str, Tensor] = {}
    for layer_name, layer in layers.items():
        if adapter is not None and adapter not in layer.lora_A:
            raise ValueError(f"adapter={adapter!r} unknown; have {layer.adapters}")
        for group in ("lora_A", "lora_B", "lora_magnitude"):
            for key, p in getattr(layer, group).items():
                if adapter is None or key == adapter:
                    out[f"{layer_name}.{group}.{key}"] = p.detach().clone()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapter weights saved by :func:`lora_state_dict` into a model with the same adapters.

    The model must already hold adapters of the same names and shapes (run the same
    :func:`inject_lora` / :func:`add_adapter` calls on the base first). Unknown keys and
    shape mismatches fail loudly; a merged layer must be unmerged first.
    """
    layers = _require_lora(model)
    params: dict[str, nn.Parameter] = {}
    for layer_name, layer in layers.items():
        for group in ("lora_A", "lora_B", "lora_magnitude"):
            for key, p in getattr(layer, group).items():
                params[f"{layer_name}.{group}.{key}"] = p
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"state has keys the model lacks: {unknown[:5]}")
    loaded_adapters = {k.rsplit(".", 1)[1] for k in state}
    missing = sorted(k for k in params if k.rsplit(".", 1)[1] in loaded_adapters and k not in state)
    if missing:
        raise KeyError(f"state lacks keys for adapters {sorted(loaded_adapters)}: {missing[:5]}")
    for layer_name, layer in layers.items():
        if layer.merged_adapter in loaded_adapters:
            raise RuntimeError(f"{layer_name}: unmerge() before loading adapter weights")
    for key, value in state.items():
        if params[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(params[key].shape)}")
        params[key].copy_(value)
