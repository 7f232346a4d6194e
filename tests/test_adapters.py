import pytest
import torch
from torch import nn

from mlupdates.adapters import (
    Adapter,
    WithAdapter,
    adapter_parameter_count,
    insert_adapters,
    latency,
)
from mlupdates.gpt import GPT, GPTConfig
from mlupdates.lora import trainable_parameters

torch.set_num_threads(1)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, context=16, n_layer=2, n_head=2, d_model=32))


def test_adapter_starts_near_identity():
    torch.manual_seed(0)
    adapter = Adapter(64, 8)
    h = randn(4, 10, 64)
    change = (adapter(h) - h).abs().max().item()
    assert 0 < change < 1e-2  # near, not exactly, the identity: both matrices are small
    assert adapter.down.weight.abs().max() <= 2e-2 and adapter.up.weight.abs().max() <= 2e-2
    assert torch.count_nonzero(adapter.down.bias) == 0
    zero = Adapter(64, 8, init_std=0.0)
    assert torch.equal(zero(h), h)


def test_adapter_learns_a_residual_change():
    torch.manual_seed(0)
    adapter = Adapter(16, 4)
    with torch.no_grad():
        adapter.up.bias.fill_(1.0)
    h = randn(3, 16)
    assert torch.allclose(adapter(h) - h, adapter.up(adapter.act(adapter.down(h))))
    assert torch.allclose(adapter(h) - h, torch.ones(3, 16), atol=0.05)


@pytest.mark.parametrize(("d", "m"), [(16, 1), (64, 8), (128, 32)])
def test_adapter_parameter_count_formula(d, m):
    assert sum(p.numel() for p in Adapter(d, m).parameters()) == adapter_parameter_count(d, m)
    assert adapter_parameter_count(d, m) == 2 * d * m + d + m


def test_insert_adapters_in_gpt_freezes_the_rest():
    model = tiny_gpt()
    idx = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))
    ref, _ = model(idx)
    names = insert_adapters(model, ("attn", "mlp"), bottleneck=4, d_model=32)
    assert names == [f"transformer.h.{i}.{s}" for i in range(2) for s in ("attn", "mlp")]
    assert isinstance(model.transformer.h[0].attn, WithAdapter)
    logits, _ = model(idx)
    assert (logits - ref).abs().max() < 0.05  # near-identity start
    assert trainable_parameters(model) == 4 * adapter_parameter_count(32, 4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".adapter." in n for n in trainable)
    # generation with the KV cache passes its extra arguments through the wrapper
    out = model.generate(idx[:1, :4], max_new_tokens=3, temperature=0)
    assert out.shape == (1, 7)


def test_insert_adapters_after_linear_infers_width_and_trains_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.LayerNorm(12), nn.Linear(12, 4))
    names = insert_adapters(model, ("0",), bottleneck=3, train_layer_norms=True)
    assert names == ["0"]
    assert model[0].adapter.down.in_features == 12
    expected = adapter_parameter_count(12, 3) + 2 * 12  # + LayerNorm weight and bias
    assert trainable_parameters(model) == expected


def test_insert_adapters_errors():
    with pytest.raises(ValueError, match="matched no module"):
        insert_adapters(tiny_gpt(), ("ffn",), bottleneck=4)
    with pytest.raises(
        ValueError, match=r"d_model=None but transformer\.h\.0\.attn is a CausalSelfAttention"
    ):
        insert_adapters(tiny_gpt(), ("attn",), bottleneck=4)
    with pytest.raises(ValueError, match=r"bottleneck=64 must be in \[1, d_model=32\]"):
        Adapter(32, 64)
    with pytest.raises(ValueError, match="d_model=0 and bottleneck=4"):
        adapter_parameter_count(0, 4)


def test_latency_returns_a_positive_time_and_restores_mode():
    model = nn.Linear(8, 8).train()
    seconds = latency(model, randn(1, 8), repeats=3, warmup=1)
    assert seconds > 0 and model.training
    with pytest.raises(ValueError, match="repeats=0 must be >= 1"):
        latency(model, randn(1, 8), repeats=0)
