import math

import pytest
import torch
from torch import nn

from mlupdates.lora import LoRALinear, inject_lora, llama_lora_parameter_count
from mlupdates.memory import GB, MODELS, weight_bytes
from mlupdates.quant import (
    NF4_OFFSET,
    QuantLinear4bit,
    codebook,
    constant_bits_per_param,
    dequantize_blockwise,
    double_quantize,
    dynamic_map_8bit,
    finetune_memory_gb,
    fp4_codebook,
    int4_codebook,
    nearest_code,
    nf4_codebook,
    pack_4bit,
    quantization_error,
    quantize,
    quantize_blockwise,
    quantize_linears,
    unpack_4bit,
)

torch.set_num_threads(1)

# NF4 as printed in QLoRA (arXiv:2305.14314), appendix E, and hard-coded in bitsandbytes.
PAPER_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes.functional")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_nf4_codebook_matches_the_paper_table():
    cb = nf4_codebook()
    assert cb.shape == (16,) and cb.dtype == torch.float32
    assert torch.allclose(cb, torch.tensor(PAPER_NF4), atol=1e-6, rtol=0)
    assert pytest.approx(0.9677083, abs=1e-7) == NF4_OFFSET


def test_nf4_codebook_shape_of_the_construction():
    cb = nf4_codebook()
    assert cb[0] == -1 and cb[-1] == 1 and (cb == 0).sum() == 1
    assert (cb > 0).sum() == 8 and (cb < 0).sum() == 7  # asymmetric: exact zero costs a code
    assert bool((cb[1:] > cb[:-1]).all())
    # 8 positive quantiles are packed more densely than the 7 negative ones
    assert cb[8] < -cb[6]


def test_codebooks_match_bitsandbytes(bnb):
    assert torch.allclose(nf4_codebook(), bnb.get_4bit_type("nf4", device="cpu"), atol=1e-6)
    fp4 = bnb.get_4bit_type("fp4", device="cpu").unique().sort().values  # +0 and -0 merge
    assert torch.equal(fp4_codebook(), fp4)
    # (bitsandbytes' own "int4" table fails to build: it divides an integer tensor in place)
    assert torch.equal(dynamic_map_8bit(), bnb.create_dynamic_map().sort().values)


def test_codebook_names_and_errors():
    assert torch.equal(codebook("int4"), int4_codebook())
    assert torch.equal(int4_codebook(), torch.arange(-7, 8) / 7)
    assert len(codebook("fp4")) == 15
    with pytest.raises(ValueError, match="kind='nf3' must be one of"):
        codebook("nf3")
    with pytest.raises(ValueError, match=r"offset=1.2 must be in \(0.5, 1\)"):
        nf4_codebook(1.2)
    with pytest.raises(ValueError, match="sorted"):
        quantize_blockwise(torch.ones(4), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="block_size=0 must be at least 1"):
        quantize_blockwise(torch.ones(4), nf4_codebook(), 0)
    with pytest.raises(ValueError, match="empty"):
        quantize_blockwise(torch.ones(0), nf4_codebook())


def test_nearest_code_rounds_to_the_closest_value():
    cb = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    values = torch.tensor([-0.9, -0.4, 0.2, 0.3, 0.74, 0.76, 1.0])
    assert nearest_code(values, cb).tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_blockwise_roundtrip_is_exact_on_code_values_and_per_block():
    cb = nf4_codebook()
    # every element is a code value times its block's absmax: quantisation is lossless
    scales = torch.tensor([3.0, 0.5, 7.0])
    codes = torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(0))
    codes[:, 0] = 15  # each block reaches its absmax
    x = cb[codes] * scales[:, None]
    state = quantize_blockwise(x, cb, 64)
    assert torch.equal(state.absmax, scales)
    assert torch.equal(state.codes.long(), codes)
    assert torch.equal(dequantize_blockwise(state), x)


def test_blockwise_handles_a_partial_block_and_zeros():
    x = randn(5, 30)  # 150 = 2 blocks of 64 + 22
    state = quantize(x, "nf4", 64)
    assert state.codes.shape == (3, 64) and state.absmax.shape == (3,)
    assert state.absmax[2] == x.reshape(-1)[128:].abs().max()
    y = dequantize_blockwise(state)
    assert y.shape == x.shape
    assert (y - x).abs().max() <= 0.5 * state.absmax.max()
    assert torch.equal(dequantize_blockwise(quantize(torch.zeros(70), "nf4")), torch.zeros(70))


def test_nf4_beats_fp4_and_int4_on_normal_weights():
    errors = {kind: quantization_error(kind, n=2**16) for kind in ("nf4", "fp4", "int4")}
    for metric in ("mean_abs", "rms"):
        assert errors["nf4"][metric] < errors["fp4"][metric]
        assert errors["nf4"][metric] < errors["int4"][metric]
    assert 0.06 < errors["nf4"]["mean_abs"] < 0.085  # about 0.073 for N(0, 1), blocks of 64
    assert quantization_error("nf4", n=4096) == quantization_error("nf4", n=4096)  # seeded


def test_blockwise_parity_with_bitsandbytes_nf4(bnb):
    x = randn(96, 128, seed=1)  # even last dimension: bitsandbytes' native CPU kernel
    packed, bnb_state = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")
    state = quantize(x, "nf4", 64)
    assert torch.equal(pack_4bit(state.codes), packed.reshape(-1))  # same codes, same layout
    assert torch.equal(state.absmax, bnb_state.absmax)
    theirs = bnb.dequantize_4bit(packed, bnb_state)
    assert (dequantize_blockwise(state) - theirs).abs().max() < 1e-5  # table differs < 4e-7
    # with bitsandbytes' own table the dequantised weights agree bit for bit
    table = bnb.get_4bit_type("nf4", device="cpu")
    exact = dequantize_blockwise(quantize_blockwise(x, table, 64))
    assert torch.equal(exact, theirs)


def test_double_quantisation_parity_with_bitsandbytes(bnb):
    # bitsandbytes' 8-bit CPU kernel finds codes by a binary search that is not always
    # the nearest; where the codes differ, ours is at least as close.
    x = randn(256, 256, seed=2)
    packed, bnb_state = bnb.quantize_4bit(
        x, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    state = quantize(x, "nf4", 64, double_quant=True)
    assert state.offset == pytest.approx(bnb_state.offset.item(), abs=1e-7)
    assert torch.equal(state.absmax.absmax, bnb_state.state2.absmax)
    ours = state.absmax.codes.reshape(-1)[: bnb_state.absmax.numel()]
    agree = (ours == bnb_state.absmax).float().mean().item()
    assert agree >= 0.99
    code = dynamic_map_8bit()
    target = (quantize(x, "nf4").absmax - state.offset) / state.absmax.absmax.repeat_interleave(256)
    err_ours = (code[ours.long()] - target).abs()
    err_theirs = (code[bnb_state.absmax.long()] - target).abs()
    assert bool((err_ours <= err_theirs + 1e-7).all())
    theirs = bnb.dequantize_4bit(packed, bnb_state)
    # a differing constant code (a near tie) rescales its block by about one code step, < 2 %
    assert torch.allclose(dequantize_blockwise(state), theirs, rtol=0.02, atol=1e-5)


def test_double_quantisation_keeps_constants_close_and_saves_bits():
    x = randn(64 * 256 * 4, seed=3)
    single = quantize(x, "nf4")
    double = double_quantize(single)
    rel = (double.scales() - single.scales()).abs() / single.scales()
    assert rel.max() < 0.02
    assert single.bits_per_param() == pytest.approx(4.5)
    # 4 bits + 8/64 + 32/(64*256) + one fp32 offset over 65,536 weights
    assert double.bits_per_param() == pytest.approx(4 + 0.126953125 + 32 / x.numel())
    with pytest.raises(ValueError, match="already double-quantised"):
        double_quantize(double)


def test_constant_bits_per_param_arithmetic():
    assert constant_bits_per_param(64) == 0.5
    assert constant_bits_per_param(64, double_quant=True) == pytest.approx(0.127, abs=5e-4)
    assert constant_bits_per_param(64, double_quant=True) == 8 / 64 + 32 / (64 * 256)
    saved = constant_bits_per_param(64) - constant_bits_per_param(64, double_quant=True)
    assert saved == pytest.approx(0.373, abs=1e-3)  # the paper's "0.373 bits per parameter"
    # agrees with the memory calculator's overhead
    n = 1e9
    for dq in (False, True):
        extra = weight_bytes(n, "int4", 64, dq) - n / 2
        assert extra * 8 / n == pytest.approx(constant_bits_per_param(64, dq))
    with pytest.raises(ValueError, match="block_size=0"):
        constant_bits_per_param(0)


def test_pack_unpack_roundtrip():
    codes = torch.randint(0, 16, (101,), generator=torch.Generator().manual_seed(0))
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 51
    assert torch.equal(unpack_4bit(packed, 101), codes.to(torch.uint8))
    assert pack_4bit(torch.tensor([1, 2])).item() == 0x12  # first code in the high nibble
    with pytest.raises(ValueError, match=r"codes must be in 0\.\.15"):
        pack_4bit(torch.tensor([16]))
    with pytest.raises(ValueError, match="n=200"):
        unpack_4bit(packed, 200)


@pytest.mark.parametrize("double_quant", [False, True])
def test_quant_linear_close_to_fp32_within_quantisation_error(double_quant):
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    q = QuantLinear4bit(linear, "nf4", 64, double_quant)
    w_err = q.dequantize_weight() - linear.weight
    ref_err = dequantize_blockwise(quantize(linear.weight, "nf4", 64, double_quant)) - linear.weight
    assert torch.equal(w_err, ref_err)  # storage (packing, buffers) loses nothing more
    x = randn(8, 128, seed=4)
    expected = x @ (linear.weight + w_err).T + linear.bias
    assert torch.allclose(q(x), expected, atol=1e-5)
    rel = (q(x) - linear(x)).norm() / linear(x).norm()
    assert 0.02 < rel < 0.15  # 4-bit error is visible but small
    assert q.packed.numel() == 128 * 64 // 2
    assert q.weight_bits_per_param() < (4.2 if double_quant else 4.6)
    assert not any(p.requires_grad for p in q.parameters())
    assert set(q.state_dict()) >= {"packed", "codebook", "bias"}


def test_qlora_is_lora_on_a_quantised_base():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q = QuantLinear4bit(linear)
    layer = LoRALinear(q, r=4, alpha=8)
    x = randn(5, 64, seed=5)
    assert torch.equal(layer(x), q(x))  # B = 0: starts as the quantised base
    with torch.no_grad():
        layer.lora_B["default"].normal_()
    delta = layer.delta_weight()
    assert torch.allclose(layer(x), x @ (q.dequantize_weight() + delta).T + linear.bias, atol=1e-5)
    layer(x).sum().backward()
    assert layer.lora_A["default"].grad is not None
    with pytest.raises(TypeError, match="cannot merge into a QuantLinear4bit"):
        layer.merge()


def test_quantize_linears_and_inject_lora_give_a_qlora_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
    names = quantize_linears(model, ("0", "2"))
    assert names == ["0", "2"] and isinstance(model[0], QuantLinear4bit)
    assert inject_lora(model, ("0", "2"), r=2) == ["0", "2"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match=r"matched no nn\.Linear"):
        quantize_linears(nn.Sequential(nn.ReLU()), ("0",))


def test_quantize_linears_refuses_tied_weights():
    model = nn.ModuleDict({"emb": nn.Embedding(10, 8), "head": nn.Linear(8, 10, bias=False)})
    model["head"].weight = model["emb"].weight
    with pytest.raises(ValueError, match=r"head\.weight is tied"):
        quantize_linears(model, ("head",))


def test_qlora_paper_memory_claims():
    n = MODELS["LLaMA-65B"].n_params
    full = finetune_memory_gb(n, "full")
    assert full["total"] > 780  # "more than 780 GB of GPU memory"
    assert full["total"] == pytest.approx(n * 12 / GB)  # 2 + 2 + 8 bytes per parameter
    with_master = finetune_memory_gb(n, "full", master_weights=True)
    assert with_master["total"] == pytest.approx(n * 16 / GB)
    lora_params = llama_lora_parameter_count(80, 8192, 22016, r=64)  # all linear layers
    assert lora_params == 799_539_200
    qlora = finetune_memory_gb(n, "qlora", lora_params)
    assert qlora["total"] < 48  # fits one 48 GB GPU (activations aside)
    assert qlora["base_weights"] == pytest.approx(
        n * (4 + constant_bits_per_param(64, True)) / 8 / GB
    )
    lora = finetune_memory_gb(n, "lora", lora_params)
    assert lora["total"] > 130  # a 16-bit base alone is 130 GB: LoRA needs the 4 bits
    assert math.isclose(
        lora["total"] - qlora["total"], lora["base_weights"] - qlora["base_weights"]
    )


def test_finetune_memory_errors():
    with pytest.raises(ValueError, match="method='adapter' must be"):
        finetune_memory_gb(1e9, "adapter")
    with pytest.raises(ValueError, match=r"lora_params=0.0 must be in \(0, n_params=1e\+09\)"):
        finetune_memory_gb(1e9, "qlora")
    with pytest.raises(ValueError, match="n_params=0 must be positive"):
        finetune_memory_gb(0, "full")


def test_quantization_error_follows_the_chapter_seed(monkeypatch):
    from mlupdates import runtime

    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.setenv("MLUPDATES_SEED", "0")
    assert quantization_error("nf4", n=4096) == quantization_error("nf4", n=4096, seed=0)
    monkeypatch.setenv("MLUPDATES_SEED", "2")
    other = quantization_error("nf4", n=4096)
    assert other == quantization_error("nf4", n=4096, seed=runtime.derive_seed(2, 0))
    assert other != quantization_error("nf4", n=4096, seed=0)
