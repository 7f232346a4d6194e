"""Training throughput, peak memory and KV-cache speed-up of ``mlupdates.gpt.GPT``.

Chapter 2 claims its GPT trains as fast as the best simple PyTorch GPT of its size. The
reference here is Hugging Face ``transformers``' ``GPT2LMHeadModel`` (SDPA attention) built
with the same architecture: same sizes, same batch, same AdamW with the same parameter
groups, one full training step (forward, backward, optimiser) timed after a warm-up.

Peak memory is measured per run in a fresh subprocess, so one model's freed memory cannot
hide the next one's: on CPU the growth of the peak resident set size over the process's
size just before the model is built (free heap is first returned with glibc's
``malloc_trim`` so it cannot be silently reused; ``/proc/self/clear_refs`` resets the peak;
``tracemalloc`` cannot see PyTorch's allocations), on CUDA ``torch.cuda.max_memory_allocated``.
It covers weights, gradients, AdamW's two moments and the activations of one step.

A measurement, not a test: numbers vary with the machine and its load.

    .venv/bin/python benchmarks/gpt_throughput.py            # about a minute on 2 CPU cores
    .venv/bin/python benchmarks/gpt_throughput.py --threads 1 --sizes tiny
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mlupdates.gpt import GPT, GPTConfig, gpt2_config_kwargs, time_generation  # noqa: E402
from mlupdates.train import make_optimizer  # noqa: E402

BATCH = 16
SIZES = {  # name: (n_layer, n_head, d_model, context); vocabulary 512 for all
    "tiny": (2, 4, 64, 64),
    "small": (4, 4, 128, 128),
    "medium": (6, 6, 192, 128),
}


def config(size: str) -> GPTConfig:
    n_layer, n_head, d_model, context = SIZES[size]
    return GPTConfig(
        vocab_size=512, context=context, n_layer=n_layer, n_head=n_head, d_model=d_model
    )


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def make_step(impl: str, cfg: GPTConfig, dev: torch.device) -> tuple[Callable[[], None], int]:
    """A closure running one full training step of ``impl`` at ``cfg``, and its size."""
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (BATCH, cfg.context), device=dev)
    y = torch.roll(x, -1, dims=1)
    if impl == "transformers":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_config = GPT2Config(**gpt2_config_kwargs(cfg))
        hf_config._attn_implementation = "sdpa"
        model = GPT2LMHeadModel(hf_config).to(dev)

        def loss_fn() -> Tensor:
            return model(input_ids=x, labels=x).loss  # shifts the labels itself
    else:
        model = GPT(cfg).to(dev)

        def loss_fn() -> Tensor:
            return model(x, y)[1]

    model.train()
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)

    def step() -> None:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters())


def measure_training(impl: str, size: str, device: str, min_seconds: float) -> dict:
    """One child process: build ``impl`` at ``size`` and time full training steps."""
    cfg, dev = config(size), torch.device(device)
    # Pay one-off costs (lazy imports, kernel libraries) on a throwaway micro model first,
    # so the memory baseline below holds them for both implementations alike.
    micro = GPTConfig(vocab_size=16, context=8, n_layer=1, n_head=1, d_model=8)
    make_step(impl, micro, dev)[0]()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return free heap so it is not reused unseen
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        base = rss_bytes()
    step, params = make_step(impl, cfg, dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3):  # warm-up: allocator, kernels, AdamW state
        step()
    sync()
    steps, t0 = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - t0 < min_seconds:
        step()
        steps += 1
        sync()
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = peak_rss_bytes() - base
    return {
        "impl": impl,
        "size": size,
        "params": params,
        "tokens_per_s": steps * BATCH * cfg.context / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "peak_mib": peak / 2**20,
    }


def run_child(impl: str, size: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, size, "--device", args.device]
    cmd += ["--threads", str(args.threads), "--min-seconds", str(args.min_seconds)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MLUPDATES_THREADS", 2)))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--min-seconds", type=float, default=1.5, help="timed span per run")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        impl, size = args.child
        print(json.dumps(measure_training(impl, size, args.device, args.min_seconds)))
        return

    start = time.perf_counter()
    print(
        f"device={args.device} threads={args.threads} batch={BATCH} vocab=512 torch={torch.__version__}"
    )
    print("\nTraining step (forward + backward + AdamW), one fresh process per row")
    header = f"{'size':7} {'L/H/d/T':12} {'params':>9} {'impl':13} {'tokens/s':>9} {'ms/step':>8} {'peak MiB':>9}"
    print(header + "  ours/HF")
    print("-" * (len(header) + 9))
    for size in args.sizes:
        rows = {impl: run_child(impl, size, args) for impl in ("mlupdates", "transformers")}
        shape = "/".join(str(v) for v in SIZES[size])
        for impl, r in rows.items():
            ratio = r["tokens_per_s"] / rows["transformers"]["tokens_per_s"]
            print(
                f"{size:7} {shape:12} {r['params']:>9,} {impl:13} {r['tokens_per_s']:>9,.0f} "
                f"{r['ms_per_step']:>8.1f} {r['peak_mib']:>9.1f}"
                + (f"  {ratio:.2f}x" if impl == "mlupdates" else "")
            )

    print("\nGreedy generation, batch 1, 8-token prompt to a full context (best of 2)")
    print(
        f"{'size':7} {'new tokens':>10} {'no cache s':>11} {'cache s':>8} {'speed-up':>9} same tokens"
    )
    dev = torch.device(args.device)
    for size in args.sizes:
        cfg = config(size)
        torch.manual_seed(0)
        model = GPT(cfg).to(dev).eval()
        prompt = torch.randint(0, cfg.vocab_size, (1, 8), device=dev)
        t = time_generation(model, prompt, cfg.context - 8, repeats=2)
        print(
            f"{size:7} {t.new_tokens:>10} {t.seconds_no_cache:>11.3f} {t.seconds_cache:>8.3f} "
            f"{t.speedup:>8.1f}x {t.same_tokens}"
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
