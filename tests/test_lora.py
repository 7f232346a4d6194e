import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlupdates.gpt import GPT, GPTConfig
from mlupdates.lora import (
    LoRALinear,
    add_adapter,
    inject_lora,
    llama_lora_parameter_count,
    load_lora_state_dict,
    lora_layers,
    lora_parameter_count,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    set_adapter,
    trainable_parameters,
    unmerge_lora,
)

torch.set_num_threads(1)


class TinyBlock(nn.Module):
    """A single-head attention block with LLaMA-style projection names, plus an MLP."""

    def __init__(self, d: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.up_proj, self.down_proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        att = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1]), dim=-1)  # (B, T, T)
        x = x + self.o_proj(att @ v)
        return x + self.down_proj(F.gelu(self.up_proj(x)))


def make_block(seed: int = 0) -> TinyBlock:
    torch.manual_seed(seed)
    return TinyBlock()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomise_b(model: nn.Module, adapter: str = "default", seed: int = 2) -> None:
    """Give every B a non-zero value so that the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            B = layer.lora_B[adapter]
            B.copy_(torch.randn(B.shape, generator=g) * 0.1)


# -- one layer --------------------------------------------------------------------------
def test_lora_linear_starts_identical_to_its_base():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    x = randn(4, 16)
    ref = base(x)
    layer = LoRALinear(base, r=4, alpha=8)
    assert torch.equal(layer(x), ref)
    assert torch.count_nonzero(layer.lora_B["default"]) == 0
    assert torch.count_nonzero(layer.lora_A["default"]) == 4 * 16
    bound = 1 / math.sqrt(16)  # kaiming_uniform(a=sqrt(5)), nn.Linear's default
    assert layer.lora_A["default"].abs().max() <= bound
    assert not base.weight.requires_grad and layer.lora_A["default"].requires_grad


def test_lora_linear_computes_w0x_plus_scaled_bax():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    layer = LoRALinear(base, r=4, alpha=12)
    randomise_b(layer)
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    x = randn(5, 16)
    expected = x @ base.weight.T + base.bias + (12 / 4) * x @ A.T @ B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert layer.scaling["default"] == 3.0
    assert torch.allclose(layer.delta_weight(), 3.0 * B @ A)


def test_rslora_scales_by_alpha_over_sqrt_r():
    layer = LoRALinear(nn.Linear(32, 32), r=16, alpha=8, use_rslora=True)
    assert layer.scaling["default"] == pytest.approx(8 / 4)


def test_gaussian_init_and_first_step_gradients():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 64), r=8, alpha=8, init="gaussian")
    assert layer.lora_A["default"].std().item() == pytest.approx(1 / 8, rel=0.15)
    layer(randn(3, 64)).pow(2).sum().backward()
    # with B = 0 the first gradient reaches B only; A starts moving from step 2
    assert torch.count_nonzero(layer.lora_A["default"].grad) == 0
    assert torch.count_nonzero(layer.lora_B["default"].grad) > 0
    assert layer.base.weight.grad is None


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_keeps_outputs_and_unmerge_recovers_w0(use_dora):
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8, use_dora=use_dora)
    randomise_b(layer)
    x = randn(6, 32)
    before = layer(x)
    layer.merge()
    assert layer.merged_adapter == "default"
    assert (layer(x) - before).abs().max() < 1e-5
    if not use_dora:
        assert torch.allclose(base.weight, w0 + layer.delta_weight(), atol=1e-7)
    assert (base.weight - w0).abs().max() > 1e-3  # the weight really changed
    layer.unmerge()
    assert (base.weight - w0).abs().max() < 1e-6  # W0 recovered to float rounding
    assert torch.allclose(layer(x), before, atol=1e-5)
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_dora_starts_identical_and_learns_a_magnitude():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    layer = LoRALinear(base, r=2, alpha=4, use_dora=True)
    x = randn(3, 16)
    assert torch.allclose(layer(x), base(x), atol=1e-6)
    m = layer.lora_magnitude["default"]
    assert torch.allclose(m, base.weight.norm(dim=1))
    with torch.no_grad():
        m.mul_(2.0)  # doubling every row's magnitude doubles W0 x
    assert torch.allclose(layer(x), 2 * (base(x) - base.bias) + base.bias, atol=1e-5)
    assert trainable_parameters(layer) == lora_parameter_count(16, 8, 2, use_dora=True)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 32), r=4, alpha=4, dropout=0.5)
    randomise_b(layer)
    x = randn(8, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_lora_linear_errors():
    with pytest.raises(ValueError, match=r"rank r=64 exceeds min\(d_in, d_out\)=32"):
        LoRALinear(nn.Linear(32, 128), r=64)
    with pytest.raises(ValueError, match="rank r=0 must be a positive integer"):
        LoRALinear(nn.Linear(8, 8), r=0)
    with pytest.raises(ValueError, match="alpha=0 must be positive"):
        LoRALinear(nn.Linear(8, 8), r=2, alpha=0)
    with pytest.raises(ValueError, match=r"dropout=1.0 must be in \[0, 1\)"):
        LoRALinear(nn.Linear(8, 8), r=2, dropout=1.0)
    with pytest.raises(ValueError, match="init='orthogonal' must be"):
        LoRALinear(nn.Linear(8, 8), r=2, init="orthogonal")
    with pytest.raises(TypeError, match=r"base must be nn\.Linear"):
        LoRALinear(nn.Conv1d(8, 8, 1))
    layer = LoRALinear(nn.Linear(8, 8), r=2)
    with pytest.raises(ValueError, match="adapter name='default' already exists"):
        layer.add_adapter("default")
    with pytest.raises(ValueError, match="adapter name='task-1' must be a Python identifier"):
        layer.add_adapter("task-1")
    with pytest.raises(ValueError, match="adapter name='nope' unknown"):
        layer.set_adapter("nope")


# -- counting ---------------------------------------------------------------------------
@pytest.mark.parametrize(("d_in", "d_out", "r"), [(16, 8, 1), (32, 96, 4), (64, 64, 8)])
def test_parameter_count_formula_matches_the_module(d_in, d_out, r):
    layer = LoRALinear(nn.Linear(d_in, d_out), r=r)
    assert trainable_parameters(layer) == lora_parameter_count(d_in, d_out, r) == r * (d_in + d_out)


def test_llama_count_and_errors():
    # LLaMA-7B (32 layers, 4096, 11008) at r = 8 on every linear layer: about 0.3 %
    n = llama_lora_parameter_count(32, 4096, 11008, 8)
    assert n == 32 * 8 * (4 * 2 * 4096 + 3 * (4096 + 11008))
    assert 0.002 < n / 6.74e9 < 0.004
    gqa = llama_lora_parameter_count(80, 8192, 28672, 16, kv_dim=1024)
    assert gqa < llama_lora_parameter_count(80, 8192, 28672, 16)
    with pytest.raises(ValueError, match="d_in=0 must be at least 1"):
        lora_parameter_count(0, 8, 2)


# -- whole models -----------------------------------------------------------------------
def test_inject_lora_freezes_the_rest_and_counts_by_formula():
    model = make_block()
    x = randn(2, 5, 32)
    ref = model(x)
    names = inject_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    assert names == ["q_proj", "v_proj"]
    assert torch.equal(model(x), ref)  # B = 0: identical to the base at step 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}.default" for m in names for ab in "AB"}
    assert trainable_parameters(model) == 2 * lora_parameter_count(32, 32, 4)
    # a predicate selects too: every linear layer except the output projection
    model2 = make_block()
    chosen = inject_lora(model2, lambda name, m: name != "o_proj", r=2)
    assert chosen == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    expected = 4 * lora_parameter_count(32, 32, 2) - lora_parameter_count(32, 32, 2)
    expected += lora_parameter_count(32, 48, 2) + lora_parameter_count(48, 32, 2)
    assert trainable_parameters(model2) == expected


def test_inject_lora_errors():
    with pytest.raises(ValueError, match="matched no linear layer"):
        inject_lora(make_block(), ("c_attn",))
    with pytest.raises(TypeError, match="must be a collection of names"):
        inject_lora(make_block(), "q_proj")
    with pytest.raises(ValueError, match="model has no LoRALinear layers"):
        set_adapter(make_block(), "default")


def test_inject_lora_into_gpt_keeps_tied_head():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, context=16, n_layer=2, n_head=2, d_model=32))
    idx = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    ref, _ = model(idx)
    names = inject_lora(model, ("c_attn",), r=4)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    logits, _ = model(idx)
    assert torch.equal(logits, ref)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert trainable_parameters(model) == 2 * lora_parameter_count(32, 96, 4)


def test_adapter_state_dict_holds_only_the_adapter():
    model = make_block()
    inject_lora(model, ("q_proj", "k_proj", "v_proj", "o_proj"), r=2, alpha=4)
    randomise_b(model)
    sd = lora_state_dict(model)
    assert set(sd) == {f"{m}_proj.lora_{ab}.default" for m in "qkvo" for ab in "AB"}
    assert sum(v.numel() for v in sd.values()) == trainable_parameters(model)

    def size(state: dict) -> int:
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.tell()

    full, adapter = size(model.state_dict()), size(sd)
    assert adapter < full / 5  # 512 of ~6,600 numbers, plus per-tensor overhead

    fresh = make_block()  # same base weights, new adapter (B = 0)
    inject_lora(fresh, ("q_proj", "k_proj", "v_proj", "o_proj"), r=2, alpha=4)
    x = randn(2, 5, 32)
    assert not torch.allclose(fresh(x), model(x))
    load_lora_state_dict(fresh, sd)
    assert torch.equal(fresh(x), model(x))


def test_load_lora_state_dict_errors():
    model = make_block()
    inject_lora(model, ("q_proj",), r=2)
    sd = lora_state_dict(model)
    with pytest.raises(KeyError, match="keys the model lacks"):
        load_lora_state_dict(model, {**sd, "k_proj.lora_A.default": sd["q_proj.lora_A.default"]})
    with pytest.raises(KeyError, match="state lacks keys"):
        load_lora_state_dict(model, {"q_proj.lora_A.default": sd["q_proj.lora_A.default"]})
    bad = {**sd, "q_proj.lora_B.default": torch.zeros(32, 3)}
    with pytest.raises(ValueError, match=r"shape \(32, 3\) != \(32, 2\)"):
        load_lora_state_dict(model, bad)
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        load_lora_state_dict(model, sd)


def test_several_adapters_switch_at_run_time():
    model = make_block()
    x = randn(2, 5, 32)
    base_out = model(x)
    inject_lora(model, ("q_proj", "v_proj"), r=2, alpha=4, adapter="sentiment")
    randomise_b(model, "sentiment", seed=3)
    add_adapter(model, "topic", r=4, alpha=4)
    randomise_b(model, "topic", seed=4)
    out_sentiment = model(x)  # still the first adapter until switched
    set_adapter(model, "topic")
    out_topic = model(x)
    assert (out_topic - out_sentiment).abs().max() > 1e-3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(".topic") for n in trainable) and len(trainable) == 4
    set_adapter(model, "sentiment")
    assert torch.equal(model(x), out_sentiment)  # switching back restores outputs exactly
    set_adapter(model, None)
    assert torch.equal(model(x), base_out)
    set_adapter(model, "topic")
    assert torch.equal(model(x), out_topic)
    # merged models switch only after unmerging
    merge_lora(model)
    assert torch.allclose(model(x), out_topic, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge\\(\\) before switching"):
        set_adapter(model, "sentiment")
    unmerge_lora(model)
    set_adapter(model, "sentiment")
    assert torch.allclose(model(x), out_sentiment, atol=1e-5)
    assert set(lora_state_dict(model, "topic")) == {
        f"{m}.lora_{ab}.topic" for m in ("q_proj", "v_proj") for ab in "AB"
    }


# -- parity with Hugging Face peft -----------------------------------------------------------
def peft_and_ours(**flags):
    """The same base and the same A, B (and DoRA magnitude) in peft and in our LoRALinear."""
    peft = pytest.importorskip("peft")
    targets = ["q_proj", "v_proj", "up_proj"]
    ours, theirs = make_block(), make_block()
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        lora_dropout=0.0,
        init_lora_weights=False,  # random B, so the adapters do something
        **flags,
    )
    theirs = peft.get_peft_model(theirs, config)
    inject_lora(ours, targets, r=4, alpha=8, **flags)
    state = {}
    for name, p in theirs.named_parameters():
        if "lora_" in name:  # base_model.model.q_proj.lora_A.default.weight
            module, kind, adapter, _ = name.removeprefix("base_model.model.").rsplit(".", 3)
            kind = "lora_magnitude" if kind == "lora_magnitude_vector" else kind
            state[f"{module}.{kind}.{adapter}"] = p.detach()
    load_lora_state_dict(ours, state)
    assert len(state) == len(lora_state_dict(ours))
    return ours, theirs


@pytest.mark.parametrize(
    "flags", [{}, {"use_rslora": True}, {"use_dora": True}], ids=["lora", "rslora", "dora"]
)
def test_parity_with_peft(flags):
    ours, theirs = peft_and_ours(**flags)
    x = randn(3, 7, 32, seed=5)
    base = make_block()(x)
    out_ours, out_theirs = ours(x), theirs(x)
    assert (out_ours - base).abs().max() > 1e-2  # the adapters change the output...
    assert (out_ours - out_theirs).abs().max() < 1e-6  # ...identically in both
    assert trainable_parameters(ours) == sum(
        p.numel() for p in theirs.parameters() if p.requires_grad
    )
    merge_lora(ours)
    merged_theirs = theirs.merge_and_unload()
    assert (ours(x) - merged_theirs(x)).abs().max() < 1e-5
    for name in ("q_proj", "v_proj", "up_proj"):
        w_ours = ours.get_submodule(name).base.weight
        w_theirs = merged_theirs.get_submodule(name).weight
        assert (w_ours - w_theirs).abs().max() < 1e-6


def test_merge_and_unload_leaves_plain_linears_with_the_same_outputs():
    model = make_block()
    inject_lora(model, ("q_proj", "v_proj"), r=2, alpha=4)
    randomise_b(model)
    x = randn(2, 5, 32)
    adapted = model(x)
    assert merge_and_unload(model) == ["q_proj", "v_proj"]
    assert not lora_layers(model)
    assert type(model.q_proj) is nn.Linear and type(model.v_proj) is nn.Linear
    assert set(model.state_dict()) == set(make_block().state_dict())
    assert (model(x) - adapted).abs().max() < 1e-5
    with pytest.raises(ValueError, match="no LoRALinear"):
        merge_and_unload(model)


def test_merge_and_unload_matches_peft():
    ours, theirs = peft_and_ours()
    x = randn(3, 7, 32, seed=5)
    merge_and_unload(ours)
    plain = theirs.merge_and_unload()
    for name in ("q_proj", "v_proj", "up_proj"):
        assert type(ours.get_submodule(name)) is nn.Linear
        assert (
            ours.get_submodule(name).weight - plain.get_submodule(name).weight
        ).abs().max() < 1e-6
    assert (ours(x) - plain(x)).abs().max() < 1e-5


def test_merge_and_unload_refuses_a_quantised_base():
    from mlupdates.quant import quantize_linears

    model = make_block()
    quantize_linears(model, ("q_proj",))
    inject_lora(model, ("q_proj",), r=2, alpha=4)
    with pytest.raises(TypeError, match="dequantise"):
        merge_and_unload(model)
    assert lora_layers(model)  # nothing was unwrapped
