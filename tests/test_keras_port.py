"""The PyTorch twin of a Keras model computes the same function and trains the same way."""

import os

os.environ["KERAS_BACKEND"] = "torch"  # before the first `import keras` anywhere

import keras
import pytest
import torch
from torch import nn

from mlupdates.keras_port import max_output_gap, torch_twin


def small_model(seed: int = 0, activation: str = "relu") -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation=activation),
            keras.layers.Dense(5, use_bias=False),
            keras.layers.Activation("tanh"),
            keras.layers.ReLU(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def test_backend_is_torch():
    assert keras.backend.backend() == "torch"


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "linear"])
def test_twin_matches_keras(activation):
    model = small_model(activation=activation)
    twin = torch_twin(model)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    assert max_output_gap(model, twin, x) < 1e-6
    assert sum(p.numel() for p in twin.parameters()) == model.count_params()
    kernel_device = model.layers[0].kernel.value.device
    assert all(p.device == kernel_device for p in twin.parameters())
    # The layouts really differ: Keras' kernel is (in, out), torch's weight is (out, in).
    assert tuple(model.layers[0].kernel.shape) == (6, 8) and twin[0].weight.shape == (8, 6)


def test_twin_copies_rather_than_shares():
    model = small_model()
    twin = torch_twin(model)
    x = torch.randn(4, 6)
    before = model(x).detach().clone()
    with torch.no_grad():
        twin[0].weight.add_(1.0)
    assert torch.equal(model(x).detach(), before)
    assert max_output_gap(model, twin, x) > 1e-3


def test_one_sgd_step_leaves_identical_weights():
    """Keras' own SGD on the Keras model and torch.optim.SGD on the twin agree."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    twin = torch_twin(model)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
        keras_loss = model.train_on_batch(x.numpy(), y.numpy())
        loss = nn.functional.cross_entropy(twin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert abs(keras_loss - loss.item()) < 1e-5
    for k_layer, t_layer in zip(model.layers, (twin[0], twin[2]), strict=True):
        assert torch.allclose(k_layer.kernel.value.detach().T, t_layer.weight, atol=1e-6)
        assert torch.allclose(k_layer.bias.value.detach(), t_layer.bias, atol=1e-6)


def test_flatten_is_ported():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2, 3)), keras.layers.Flatten(), keras.layers.Dense(4, activation="tanh")]
    )
    twin = torch_twin(model)
    assert max_output_gap(model, twin, torch.randn(5, 2, 3)) < 1e-6


def test_unsupported_layers_and_models_are_refused():
    keras.utils.set_random_seed(0)
    with_dropout = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.5, name="drop")]
    )
    with pytest.raises(ValueError, match="'drop' \\(Dropout\\) cannot be ported"):
        torch_twin(with_dropout)
    odd_activation = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "selu")])
    with pytest.raises(ValueError, match="activation 'selu' is not supported"):
        torch_twin(odd_activation)
    leaky = keras.Sequential([keras.Input((4,)), keras.layers.ReLU(negative_slope=0.1)])
    with pytest.raises(ValueError, match="only the plain ReLU"):
        torch_twin(leaky)
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match=r"must be a keras\.Sequential"):
        torch_twin(functional)
    with pytest.raises(ValueError, match="is not built"):
        torch_twin(keras.Sequential([keras.layers.Dense(2)]))


def test_max_output_gap_rejects_bad_batches():
    model = small_model()
    twin = torch_twin(model)
    with pytest.raises(ValueError, match="non-empty batch"):
        max_output_gap(model, twin, torch.randn(6))
    with pytest.raises(ValueError, match="non-empty batch"):
        max_output_gap(model, twin, torch.randn(0, 6))
