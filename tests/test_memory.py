import pytest

from mlupdates.memory import (
    GB,
    MODELS,
    activation_bytes,
    inference_bytes,
    kv_cache_bytes,
    training_bytes,
    weight_bytes,
)


def test_weights_scale_with_bytes_per_parameter():
    n = 7e9
    assert weight_bytes(n, "fp32") == 28 * GB
    assert weight_bytes(n, "bf16") == 14 * GB
    assert weight_bytes(n, "int8") == 7 * GB
    # 4-bit: 0.5 byte payload + one fp32 scale per 64 weights (0.5 bit per weight)
    assert weight_bytes(n, "int4") == pytest.approx(n * 4.5 / 8)
    assert weight_bytes(n, "int4", double_quant=True) == pytest.approx(n * 4.127 / 8, rel=1e-3)


def test_zero_paper_16_bytes_per_parameter():
    # Rajbhandari et al. (arXiv:1910.02054), Fig. 1: a 7.5B model needs 120 GB with
    # mixed-precision Adam (2 + 2 + 12 bytes per parameter).
    parts = training_bytes(7.5e9, "bf16")
    assert sum(parts.values()) == pytest.approx(120 * GB)
    assert parts["optimizer"] == pytest.approx(12 * 7.5e9)
    assert sum(training_bytes(1.5e9, "fp16").values()) == pytest.approx(24 * GB)  # GPT-2


def test_qlora_paper_figures():
    # Dettmers et al. (arXiv:2305.14314): 16-bit fine-tuning of LLaMA-65B needs more than
    # 780 GB; in 4-bit NF4 with double quantization it fits on one 48 GB GPU.
    n = MODELS["LLaMA-65B"].n_params
    full = sum(training_bytes(n, "bf16", master_weights=False).values())
    assert 780 * GB <= full <= 800 * GB
    assert weight_bytes(n, "int4", double_quant=True) < 48 * GB


def test_vllm_paper_kv_cache_of_opt_13b():
    # Kwon et al. (arXiv:2309.06180): 800 KB per token, up to 1.6 GB per 2048-token request.
    opt = MODELS["OPT-13B"]
    assert kv_cache_bytes(opt, 1, dtype="fp16") == 2 * 5120 * 40 * 2 == 800 * 1024
    assert kv_cache_bytes(opt, 2048, dtype="fp16") / 2**30 == pytest.approx(1.5625)


def test_grouped_query_attention_shrinks_the_cache_by_the_head_ratio():
    full = MODELS["LLaMA-65B"]
    gqa = MODELS["Llama-2-70B"]
    assert kv_cache_bytes(full, 4096) == 8 * kv_cache_bytes(gqa, 4096)


def test_activations_and_inference_totals():
    shape = MODELS["LLaMA-7B"]
    fused = activation_bytes(shape, 2048, 1)
    assert fused == 32 * 2048 * 4096 * 34
    assert activation_bytes(shape, 2048, 1, fused_attention=False) > 3 * fused  # 34 + 80 vs 34
    total = inference_bytes(shape, "bf16", seq_len=4096)
    assert total == weight_bytes(shape.n_params, "bf16") + kv_cache_bytes(shape, 4096)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="dtype='fp8' must be one of"):
        weight_bytes(1e9, "fp8")
    with pytest.raises(ValueError, match="optimizer='adam' must be"):
        training_bytes(1e9, optimizer="adam")
    with pytest.raises(ValueError, match="full training needs floating-point"):
        training_bytes(1e9, "int8")
    with pytest.raises(ValueError, match="seq_len=0"):
        activation_bytes(MODELS["LLaMA-7B"], 0, 1)
