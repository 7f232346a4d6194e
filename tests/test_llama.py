"""LLaMA: config checks, the published sizes, parity with transformers, ablation switches."""

import math

import pytest
import torch

from mlupdates.llama import (
    LLAMA_DATA,
    LLAMA_SIZES,
    LLAMA_TOTAL_TOKENS,
    Llama,
    LlamaConfig,
    RMSNorm,
    count_parameters,
    hf_config_kwargs,
    hf_state_dict,
    llama_config,
    rotate,
)
from mlupdates.rope import apply_rope, rope_angles
from mlupdates.train import TrainConfig, train

from .conftest import scramble

TINY = LlamaConfig(vocab_size=37, context=16, n_layer=2, n_head=4, d_model=32, multiple_of=16)
VARIANTS = {
    "llama": {},
    "original": {"prenorm": False, "norm": "layer", "mlp": "relu", "positions": "learned"},
    "gelu": {"mlp": "gelu"},
}


def tiny_model(seed: int = 0, **overrides) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{**TINY.__dict__, **overrides})).eval()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30, "n_head": 4}, "d_model=30 must be divisible by n_head=4"),
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"multiple_of": 0}, "multiple_of=0"),
        ({"d_model": 12, "n_head": 4}, "head_dim=3 must be even"),
        ({"ffn_hidden": 0}, "ffn_hidden=0"),
        ({"norm_eps": 0.0}, "norm_eps=0.0 must be positive"),
        ({"rope_base": 1.0}, "rope_base=1.0"),
        ({"norm": "batch"}, "norm='batch'"),
        ({"mlp": "tanh"}, "mlp='tanh'"),
        ({"positions": "alibi"}, "positions='alibi'"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**{**TINY.__dict__, **overrides})


def test_forward_rejects_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"17 tokens must be in \[1, context=16\]"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="size='70B'"):
        llama_config("70B")


def test_hidden_size_rule_gives_the_released_widths():
    # 2/3 * 4d rounded up to a multiple of 256: the widths of the released checkpoints.
    widths = {s: llama_config(s).hidden_dim for s in LLAMA_SIZES}
    assert widths == {"7B": 11008, "13B": 13824, "33B": 17920, "65B": 22016}
    assert LlamaConfig(d_model=64, multiple_of=1).hidden_dim == 170
    assert LlamaConfig(d_model=64, mlp="relu").hidden_dim == 256
    assert LlamaConfig(d_model=64, ffn_hidden=100).hidden_dim == 100


def test_published_sizes_counted_on_meta_device():
    for size, row in LLAMA_SIZES.items():
        cfg = llama_config(size)
        n = count_parameters(cfg)
        d, L, h, V = cfg.d_model, cfg.n_layer, cfg.hidden_dim, cfg.vocab_size
        assert n == 2 * V * d + L * (4 * d * d + 3 * d * h + 2 * d) + d  # untied head, no biases
        # The paper's sizes are these counts cut (not rounded) to one decimal in billions.
        assert math.floor(n / 1e8) / 10 == pytest.approx(row["params"] / 1e9)
    with torch.device("meta"):
        model = Llama(llama_config("65B"))
    assert all(p.is_meta for p in model.parameters())


def test_logits_match_transformers_llama():
    transformers = pytest.importorskip("transformers")
    model = tiny_model()
    scramble(model)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_kwargs(model.config)))
    hf.load_state_dict(hf_state_dict(model), strict=True)
    hf.eval()
    idx = torch.randint(
        0, TINY.vocab_size, (3, TINY.context), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ours, loss = model(idx[:, :-1], idx[:, 1:])
        theirs = hf(idx, labels=idx)
    assert ours.abs().max() > 1.0  # scrambled weights: a real test, not near-zero logits
    torch.testing.assert_close(ours, theirs.logits[:, :-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, theirs.loss, atol=1e-5, rtol=1e-5)


def test_without_the_permutation_transformers_disagrees():
    transformers = pytest.importorskip("transformers")
    model = tiny_model()
    scramble(model)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_kwargs(model.config)))
    state = hf_state_dict(model)
    state["model.layers.0.self_attn.q_proj.weight"] = model.layers[0].attention.wq.weight
    state["model.layers.0.self_attn.k_proj.weight"] = model.layers[0].attention.wk.weight
    hf.load_state_dict(state)
    idx = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx)[0] - hf.eval()(idx).logits).abs().max() > 1e-2


def test_hf_export_refuses_ablation_variants():
    with pytest.raises(ValueError, match="only the LLaMA block"):
        hf_config_kwargs(LlamaConfig(**{**TINY.__dict__, **VARIANTS["original"]}))


def test_rmsnorm_matches_torch():
    x = torch.randn(4, 7, 32) * 3 + 1
    ours = RMSNorm(32, eps=1e-6)
    ref = torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x))
    assert not torch.allclose(ours(x), torch.nn.functional.layer_norm(x, (32,)) * ours.weight)


def test_rotate_matches_rope_module():
    x = torch.randn(2, 3, 10, 8)
    angles = rope_angles(10, 8)
    torch.testing.assert_close(
        rotate(x, angles.cos(), angles.sin()), apply_rope(x), atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_causal(variant):
    model = tiny_model(**VARIANTS[variant])
    scramble(model)
    idx = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3


def test_swiglu_keeps_the_parameter_count_of_the_relu_layer():
    swiglu = tiny_model(multiple_of=1)
    relu = tiny_model(multiple_of=1, mlp="relu")
    assert swiglu.config.hidden_dim == 85  # int(2/3 * 128)
    assert abs(swiglu.num_parameters() - relu.num_parameters()) / relu.num_parameters() < 0.01
    assert swiglu.layers[0].feed_forward.w3 is not None and relu.layers[0].feed_forward.w3 is None
    assert not any(n.endswith("bias") for n, _ in swiglu.named_parameters())
    assert swiglu.output.weight is not swiglu.tok_embeddings.weight


def test_trains_on_a_repeated_sequence():
    model = tiny_model()
    model.train()
    stream = torch.arange(200) % 11
    history = train(
        model, stream, TrainConfig(steps=60, batch_size=8, warmup_steps=5, eval_every=60)
    )
    assert history.step_losses[-1] < 0.3 * history.step_losses[0]


def test_data_mixture_columns_agree_with_each_other():
    # Proportions cover the whole run; sampled tokens / epochs = tokens in one pass, and the
    # disk size per such token must be a plausible 2.5-4.5 bytes for every source.
    assert sum(d["proportion"] for d in LLAMA_DATA.values()) == pytest.approx(1.0)
    for source, d in LLAMA_DATA.items():
        per_pass = d["proportion"] * LLAMA_TOTAL_TOKENS / d["epochs"]
        assert 2.5 < d["disk_bytes"] / per_pass < 4.5, source


@pytest.mark.parametrize("variant", ["rope", "learned"])
def test_meta_count_equals_a_real_model_and_real_models_are_initialised(variant):
    cfg = LlamaConfig(**{**TINY.__dict__, "positions": variant})
    model = tiny_model(positions=variant)
    assert count_parameters(cfg) == model.num_parameters()
    # the meta shortcut must not leak into real models: weights drawn with std 0.02
    std = model.layers[0].attention.wq.weight.std().item()
    assert 0.01 < std < 0.03
