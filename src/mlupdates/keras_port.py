"""Port a Keras model to an equivalent plain-PyTorch module, weights included.

Chapter 5 trains one network twice, through the Keras API and as a hand-written PyTorch
loop, and compares the two runs. A fair comparison needs the same starting point, so the
PyTorch network must begin with exactly the weights Keras initialised. Keras and PyTorch
store a dense layer differently: a Keras ``Dense`` keeps a ``kernel`` of shape
``(in, out)`` and computes ``x @ kernel + bias``; ``torch.nn.Linear`` keeps a ``weight``
of shape ``(out, in)`` and computes ``x @ weight.T + bias``. :func:`torch_twin` builds the
``nn.Sequential`` that computes the same function as a ``keras.Sequential`` of dense and
activation layers, copying (not sharing) each kernel transposed, so the two can then be
trained independently.

Keras 3 must run on its PyTorch backend (``KERAS_BACKEND=torch`` set before the first
``import keras``); the functions check this and say so when it is not the case.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Keras activation names and the ``torch.nn`` modules that compute the same function.
#: Keras' ``gelu`` defaults to the exact (erf) form, as does ``nn.GELU()``.
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "linear": None,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "softmax": nn.Softmax,
}


def _keras() -> Any:
    """Import Keras lazily and insist on the PyTorch backend."""
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(
            f"Keras runs on the {keras.backend.backend()!r} backend; set the environment "
            "variable KERAS_BACKEND=torch before the first `import keras`"
        )
    return keras


def _activation(name: str, where: str) -> list[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{where}: activation {name!r} is not supported; use one of {sorted(ACTIVATIONS)}"
        )
    module = ACTIVATIONS[name]
    if module is None:
        return []
    return [module(dim=-1)] if module is nn.Softmax else [module()]


def _activation_name(layer: Any) -> str:
    config = layer.get_config()["activation"]
    return config if isinstance(config, str) else str(config.get("config", config))


def torch_twin(model: Any) -> nn.Sequential:
    """An ``nn.Sequential`` that computes what the Keras ``model`` computes, same weights.

    ``model`` must be a built ``keras.Sequential`` made of ``Dense`` (any supported
    activation, with or without bias), ``Activation``, plain ``ReLU`` and ``Flatten``
    layers. Each ``Dense`` becomes an ``nn.Linear`` whose ``weight`` is a copy of the
    transposed Keras kernel, on the device where Keras keeps that kernel. Anything else (convolutions, dropout, normalisation, a
    functional model with branches) raises ``ValueError`` naming the layer, because a
    silent partial port would make every later comparison meaningless.
    """
    keras = _keras()
    if not isinstance(model, keras.Sequential):
        raise ValueError(
            f"model must be a keras.Sequential of dense and activation layers, "
            f"got {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built; give it a keras.Input first")
    modules: list[nn.Module] = []
    for layer in model.layers:
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        if isinstance(layer, keras.layers.Dense):
            kernel = layer.kernel.value.detach()  # (in, out)
            linear = nn.Linear(
                kernel.shape[0], kernel.shape[1], bias=layer.use_bias, device=kernel.device
            )
            with torch.no_grad():
                linear.weight.copy_(kernel.T)  # (out, in)
                if layer.use_bias:
                    linear.bias.copy_(layer.bias.value.detach())
            modules.append(linear)
            modules += _activation(_activation_name(layer), where)
        elif isinstance(layer, keras.layers.ReLU):
            cfg = layer.get_config()
            if (
                cfg.get("max_value") is not None
                or cfg.get("negative_slope", 0.0) != 0.0
                or (cfg.get("threshold", 0.0) != 0.0)
            ):
                raise ValueError(f"{where}: only the plain ReLU (no max_value, slope, threshold)")
            modules.append(nn.ReLU())
        elif isinstance(layer, keras.layers.Activation):
            modules += _activation(_activation_name(layer), where)
        elif isinstance(layer, keras.layers.Flatten):
            modules.append(nn.Flatten())
        else:
            raise ValueError(
                f"{where} cannot be ported; supported layers are Dense, Activation, ReLU, Flatten"
            )
    return nn.Sequential(*modules)


def max_output_gap(model: Any, twin: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the two models' outputs on the batch ``x``.

    Both run in inference mode on the same float32 input (Keras moves it to its own device,
    the twin gets it on the device of its first parameter) and are compared on the CPU; a
    gap at the level of float32 rounding (about ``1e-6`` for unit-scale outputs) means the
    port is exact.
    """
    _keras()
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (batch, features...), got {tuple(x.shape)}")
    device = next(twin.parameters()).device
    with torch.no_grad():
        keras_out = model(x, training=False).detach().cpu()
        return float((keras_out - twin(x.to(device)).cpu()).abs().max())
