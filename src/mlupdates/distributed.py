"""Data-parallel training with ``torch.distributed``: the same step on 1 or N processes.

Data parallelism (Li et al., "PyTorch Distributed", arXiv:2006.15704) gives every process
a full copy of the model and a different slice of each batch; after the backward pass,
``DistributedDataParallel`` (DDP) averages the gradients across processes with an
all-reduce, so every copy takes the same optimiser step. With equal slices, the mean of
the per-process mean losses is the mean loss of the whole batch, and so is the gradient:
N processes with B/N rows each must follow the loss curve of one process with B rows, up
to floating-point rounding. This script checks exactly that.

Run it as a script, once plainly and once under ``torchrun``::

    python -m mlupdates.distributed --out single.json
    torchrun --standalone --nproc_per_node=2 -m mlupdates.distributed --out ddp.json

or, from Python, :func:`launch` starts the worker processes itself with
``torch.multiprocessing``, as PyTorch's DDP tutorial does with ``mp.spawn``. ``torchrun``
costs a few seconds that have nothing to do with DDP: its own agent process and a fresh
interpreter per worker that imports PyTorch again. Where it is safe (Linux, CPU), ``launch``
forks the workers from the calling process instead, so they start with everything imported;
elsewhere it spawns fresh ones. Either way each worker joins the same ``gloo`` group and runs
the same :func:`run`.

Both train the same tiny causal language model (PyTorch's own pre-norm
``TransformerEncoderLayer`` with a causal mask, tied input and output embeddings) on the
book's corpus (:mod:`mlupdates.world`) with the same global batch, and rank 0 writes the
per-step losses as JSON. The ``gloo`` backend runs on CPU, so no GPU is needed.

The caller chooses the seed and the device (``--seed``, ``--device``): the corpus, the initial
weights and the batches are streams 0, 0 and 1 of the seed
(:func:`mlupdates.runtime.derive_seed`), and without ``--seed`` the seed is the chapter's,
read from ``MLUPDATES_SEED`` as every child process of a chapter does. ``gloo`` all-reduces
CPU and CUDA tensors alike, so several processes may share one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mlupdates.parallel import can_fork
from mlupdates.runtime import chapter_seed, derive_seed
from mlupdates.tokenizer import BPETokenizer
from mlupdates.world import make_world

#: Streams of the seed: the corpus's world, the initial weights, the order of the batches.
CORPUS_STREAM, INIT_STREAM, DATA_STREAM = 0, 0, 1


def _seed(seed: int | None) -> int:
    """The chapter seed to draw from: ``seed``, else the running chapter's (``MLUPDATES_SEED``)."""
    if seed is not None and seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    return chapter_seed() if seed is None else seed


class TinyCausalLM(nn.Module):
    """Embedding, ``n_layers`` pre-norm transformer layers (causal), tied output layer."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, context: int = 32):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        for emb in (self.tok, self.pos):  # GPT-2's small init keeps tied logits near 0
            nn.init.normal_(emb.weight, std=0.02)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        x = self.blocks(x, mask=self.mask[:t, :t], is_causal=True)
        return self.norm(x) @ self.tok.weight.T


def corpus_tokens(vocab_size: int = 512, seed: int | None = None) -> torch.Tensor:
    """The book's corpus for ``seed`` (default: the chapter's), tokenized: one stream of ids."""
    world = make_world(seed=derive_seed(_seed(seed), CORPUS_STREAM), n_people=60)
    docs = world.corpus(60_000)
    tok = BPETokenizer.train(docs, vocab_size)
    eot = tok.special_tokens["<|endoftext|>"]
    ids: list[int] = []
    for doc in docs:
        ids += [*tok.encode(doc), eot]
    return torch.tensor(ids)


def run(
    steps: int,
    global_batch: int,
    context: int,
    lr: float,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train on this process's slice of each global batch; return the global mean losses.

    ``seed`` (default: the chapter's, see :func:`mlupdates.runtime.chapter_seed`) fixes the
    corpus, the initial weights and the batches; the model trains on ``device``. Called in a
    plain process (a chapter's kernel), this is the one-process baseline of the DDP run.
    """
    seed, device = _seed(seed), torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if global_batch % world:
        raise ValueError(f"global_batch={global_batch} must be divisible by {world} processes")
    tokens = corpus_tokens(seed=seed)
    # Same initial weights everywhere (DDP also broadcasts rank 0's), built on the CPU so that
    # every device starts from them; the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, INIT_STREAM))
        model = TinyCausalLM(int(tokens.max()) + 1, context=context).to(device)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    # Every process draws the same global batches (on the CPU, then moves its slice).
    data = torch.Generator().manual_seed(derive_seed(seed, DATA_STREAM))
    losses = []
    for _ in range(steps):
        starts = torch.randint(len(tokens) - context - 1, (global_batch,), generator=data)
        rows = starts[rank::world]  # this process's slice of the global batch
        x = torch.stack([tokens[s : s + context] for s in rows]).to(device)
        y = torch.stack([tokens[s + 1 : s + context + 1] for s in rows]).to(device)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        mean = loss.detach().clone()
        if distributed:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
    return losses


def _launched_worker(rank: int, world: int, store: str, out: str, args: tuple, device: str) -> None:
    """One process of :func:`launch`: join the group through the file store, train, report."""
    torch.set_num_threads(1)  # one core per process
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        losses = run(*args, device=device)
        if rank == 0:
            Path(out).write_text(json.dumps(_record(losses, args[-1])))
    finally:
        dist.destroy_process_group()


def _record(losses: list[float], seed: int) -> dict:
    """What rank 0 reports: the group's size, the seed and the per-step global losses."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {"world_size": world, "seed": seed, "losses": losses}


def launch(
    nprocs: int,
    steps: int,
    global_batch: int,
    context: int,
    lr: float,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """:func:`run` on ``nprocs`` worker processes joined by ``gloo``; rank 0's report.

    The report is what the script writes with ``--out``: ``world_size``, ``seed`` and the
    per-step global mean ``losses``.

    Forks the workers where that is safe (Linux, CPU device, CUDA not initialised), so they
    inherit this process's imports; otherwise spawns fresh interpreters. The seed is resolved
    here (default: the chapter's), so every worker draws the same corpus, weights and batches.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs={nprocs} must be at least 1")
    if global_batch % nprocs:
        raise ValueError(f"global_batch={global_batch} must be divisible by {nprocs} processes")
    device = torch.device(device)
    fork = device.type == "cpu" and can_fork()  # the same rule as map_processes
    args = (steps, global_batch, context, lr, _seed(seed))
    with tempfile.TemporaryDirectory(prefix="mlupdates-ddp-") as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "losses.json")
        mp.start_processes(
            _launched_worker, args=(nprocs, store, out, args, str(device)), nprocs=nprocs,
            start_method="fork" if fork else "spawn",
        )  # fmt: skip
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=None, help="default: MLUPDATES_SEED, else 0")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (gloo on either)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core per process: two processes on a 2-core machine
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        losses = run(args.steps, args.global_batch, args.context, args.lr, args.seed, args.device)
        if not distributed or dist.get_rank() == 0:
            args.out.write_text(json.dumps(_record(losses, _seed(args.seed))))
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
