"""Chapter 2's models, rebuilt on demand: the book's world, tokenizer, base GPT and assistant.

Later chapters start from what chapter 2 trains: chapter 3 fine-tunes the base model,
chapter 4 serves the assistant behind an OpenAI-compatible API, chapters 6 and 7 adapt it
with LoRA. Shipping checkpoints would put binary blobs in the repository and let them drift
from the code, so instead the package *re-trains* them from a fixed recipe. Training is
deterministic on one machine (one thread, seeded data order and initialisation), so every
chapter that calls :func:`base_model` gets bit-identical weights, in about 20 s the first time.

Every random choice of a recipe (the world, the initialisation, the data order) is a stream of
the chapter's seed (:func:`mlupdates.runtime.seed_for`), so a chapter re-run under
``MLUPDATES_SEED=3`` gets a base model of another world, trained from another draw. The
``seed`` arguments below default to the running chapter's seed.

A finished model is kept in two caches so that the cost is paid once: in memory for the
rest of the process, and as a ``.pt`` file under ``<repository>/.cache/recipes/`` (git
ignores it), whose name carries a hash of the recipe, the seed and the platform fingerprint
(:func:`mlupdates.runtime.platform_fingerprint`, which covers the torch version and device),
so a changed recipe, another seed or weights trained under other float kernels are never
loaded. Two processes that need the same model at once build it once (a file lock). Set
``MLUPDATES_NO_CACHE=1`` to always re-train, ``MLUPDATES_CACHE_DIR`` to keep the cache elsewhere.

Chapter 2 trains with exactly these constants (it imports them), so the text of chapter 2 and
the models later chapters use cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from mlupdates import runtime
from mlupdates.chat import pad_batch, sft_example
from mlupdates.gpt import GPT, GPTConfig
from mlupdates.runtime import derive_seed, project_root
from mlupdates.tokenizer import BPETokenizer
from mlupdates.train import History, TrainConfig, row_batches, train
from mlupdates.world import World, make_world

#: The world of chapter 2: 50 people, 10 of them held out. ``seed`` is a stream number: the
#: world of chapter seed ``s`` is ``make_world(seed=derive_seed(s, 0), ...)``.
WORLD_KWARGS = {"seed": 0, "n_people": 50, "heldout_fraction": 0.2}
#: Characters of pre-training text and of validation text (fresh paraphrases).
TRAIN_CHARS, VALID_CHARS = 100_000, 10_000
#: Byte-pair-encoding vocabulary size, special tokens included.
VOCAB = 768
#: The base model: 2 layers of width 64, a 48-token context (0.16 M parameters).
BASE_GPT = {"context": 48, "n_layer": 2, "n_head": 4, "d_model": 64}
#: ``seed`` in these configurations is a stream number too (data order, dropout).
BASE_TRAINING = TrainConfig(
    steps=1000, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=30, eval_every=250, seed=0
)
#: Supervised fine-tuning of the base model on the "train" questions.
SFT_TRAINING = TrainConfig(
    steps=200, batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=10, eval_every=200, seed=0
)
#: Stream of the base model's initialisation.
INIT_SEED = 0
#: Stream of the order in which SFT visits its conversations.
SFT_ORDER_SEED = 0


@dataclass(frozen=True)
class Corpus:
    """The world, its tokenizer and its token streams, as chapter 2 builds them."""

    world: World
    tokenizer: BPETokenizer
    train_docs: list[str]
    valid_docs: list[str]
    train_tokens: torch.Tensor  # 1-D, documents separated by <|endoftext|>
    valid_tokens: torch.Tensor

    @property
    def eot(self) -> int:
        """Id of ``<|endoftext|>``: document separator and padding token."""
        return self.tokenizer.special_tokens["<|endoftext|>"]


def token_stream(tok: BPETokenizer, docs: list[str]) -> torch.Tensor:
    """Every document encoded and followed by ``<|endoftext|>``, as one 1-D tensor."""
    eot = tok.special_tokens["<|endoftext|>"]
    ids: list[int] = []
    for doc in docs:
        ids += [*tok.encode(doc), eot]
    return torch.tensor(ids)


def _seed(seed: int | None) -> int:
    """The chapter seed a recipe is built for: ``seed``, else the running chapter's."""
    return runtime.chapter_seed() if seed is None else seed


def _device(device: str | torch.device | None) -> torch.device:
    """Where returned models live: ``device``, else the device :func:`setup` chose, else CPU."""
    if device is not None:
        return torch.device(device)
    try:
        return runtime.current().device
    except RuntimeError:  # no setup() call: a unit test, a script
        return torch.device("cpu")


def world_kwargs(seed: int | None = None) -> dict:
    """The arguments of :func:`make_world` for chapter seed ``seed``."""
    return {**WORLD_KWARGS, "seed": derive_seed(_seed(seed), WORLD_KWARGS["seed"])}


def corpus(seed: int | None = None) -> Corpus:
    """Chapter 2's world, BPE tokenizer and token streams (about 2 s; cached per process)."""
    return _corpus(_seed(seed))


@cache
def _corpus(seed: int) -> Corpus:
    world = make_world(**world_kwargs(seed))
    train_docs = world.corpus(TRAIN_CHARS)
    valid_docs = world.corpus(VALID_CHARS, part="valid")
    tok = BPETokenizer.train(train_docs, VOCAB)
    return Corpus(
        world,
        tok,
        train_docs,
        valid_docs,
        token_stream(tok, train_docs),
        token_stream(tok, valid_docs),
    )


def base_config(vocab_size: int) -> GPTConfig:
    """The base model's architecture for a tokenizer of ``vocab_size`` tokens."""
    return GPTConfig(vocab_size=vocab_size, **BASE_GPT)


def _recipe_key(name: str, seed: int = 0, fingerprint: str | None = None) -> str:
    """File stem of a cached recipe: its name and a hash of everything that shapes it."""
    recipe = {
        "name": name,
        "seed": seed,
        "fingerprint": fingerprint or runtime.platform_fingerprint(),
        "world": WORLD_KWARGS,
        "chars": [TRAIN_CHARS, VALID_CHARS],
        "vocab": VOCAB,
        "gpt": BASE_GPT,
        "base": asdict(BASE_TRAINING),
        "sft": asdict(SFT_TRAINING) if name == "assistant" else None,
        "init_seed": INIT_SEED,
        "sft_order_seed": SFT_ORDER_SEED,
        "probe_tokens": PROBE_TOKENS,
        "torch": torch.__version__,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def cache_dir() -> Path:
    """Where trained recipe weights are kept: ``MLUPDATES_CACHE_DIR``, else
    ``<repository>/.cache/recipes`` (``make bench`` points it at an empty folder)."""
    override = os.environ.get("MLUPDATES_CACHE_DIR")
    return Path(override) if override else project_root() / ".cache" / "recipes"


@contextmanager
def _build_lock(path: Path):
    """Hold an exclusive lock next to ``path`` while one process builds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Trained:
    """A recipe's result: the model, its training :class:`History` and, for the base model,
    the probe's greedy continuation at every evaluation (``{step: text}``)."""

    model: GPT
    history: History
    samples: dict[int, str]


def _save(trained: Trained, path: Path) -> None:
    h = trained.history
    payload = {
        "state": trained.model.state_dict(),
        "history": {
            "records": h.records,
            "step_losses": h.step_losses,
            "tokens": h.tokens,
            "seconds": h.seconds,
        },
        "samples": trained.samples,
    }
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file


def _load(path: Path, cfg: GPTConfig) -> Trained:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(cfg)
    model.load_state_dict(payload["state"])
    return Trained(model.eval(), History(**payload["history"]), dict(payload["samples"]))


def _cached(
    name: str, seed: int, device: torch.device, build: Callable[[GPTConfig], Trained]
) -> Trained:
    """Load recipe ``name`` for ``seed`` from disk, or build and store it (model on the CPU)."""
    cfg = base_config(corpus(seed).tokenizer.vocab_size)
    use_disk = os.environ.get("MLUPDATES_NO_CACHE", "") in ("", "0")
    if not use_disk:
        built = build(cfg)
        return Trained(built.model.cpu().eval(), built.history, built.samples)
    fingerprint = runtime.platform_fingerprint(device)  # weights depend on how it rounds
    path = cache_dir() / f"{_recipe_key(name, seed, fingerprint)}.pt"
    with _build_lock(path):  # a second process waits, then loads what the first built
        if not path.exists():
            built = build(cfg)
            _save(Trained(built.model.cpu(), built.history, built.samples), path)
        return _load(path, cfg)


def _streams(cfg: TrainConfig, seed: int) -> TrainConfig:
    """``cfg`` with its stream number turned into chapter seed ``seed``'s seed."""
    return dataclasses.replace(cfg, seed=derive_seed(seed, cfg.seed or 0))


def train_base(
    cfg: GPTConfig,
    seed: int | None = None,
    device: str | torch.device | None = None,
    **train_kwargs,
) -> tuple[GPT, History]:
    """Initialise and pre-train the base model; returns the model and its History.

    Chapter 2 calls this directly (with an ``on_eval`` callback to sample text at each
    checkpoint); :func:`base_model` calls it through the cache. The model is initialised on
    the CPU (the same weights on every device) and trained on ``device`` (default: the
    chapter's).
    """
    return _train_gpt(cfg, BASE_TRAINING, seed, device, **train_kwargs)


def train_width(
    d_model: int,
    steps: int,
    eval_every: int,
    seed: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[GPT, History]:
    """The base recipe at width ``d_model``, trained for ``steps`` steps; not cached.

    Chapter 2's scaling sweep: everything else as in :func:`train_base` (architecture,
    corpus, initialisation and data streams, learning rates, with the cosine schedule
    ending at ``steps``), evaluated every ``eval_every`` steps on the same validation windows.
    """
    if d_model < 1 or d_model % BASE_GPT["n_head"]:
        raise ValueError(f"d_model={d_model} must be a positive multiple of {BASE_GPT['n_head']}")
    cfg = dataclasses.replace(base_config(corpus(seed).tokenizer.vocab_size), d_model=d_model)
    training = dataclasses.replace(BASE_TRAINING, steps=steps, eval_every=eval_every)
    return _train_gpt(cfg, training, seed, device)


def _train_gpt(
    cfg: GPTConfig,
    training: TrainConfig,
    seed: int | None,
    device: str | torch.device | None,
    **train_kwargs,
) -> tuple[GPT, History]:
    seed = _seed(seed)
    data = corpus(seed)
    torch.manual_seed(derive_seed(seed, INIT_SEED))
    model = GPT(cfg).to(_device(device))
    history = train(
        model, data.train_tokens, _streams(training, seed), data.valid_tokens, **train_kwargs
    )
    return model, history


def sft_batches(split: str = "train", seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded SFT inputs and masked labels for every question of ``split`` (on the CPU)."""
    data = corpus(seed)
    return pad_batch([sft_example(data.tokenizer, q) for q in data.world.qa(split)], data.eot)


def train_assistant(base: GPT, seed: int | None = None) -> tuple[GPT, History]:
    """Supervised fine-tuning of a copy of ``base`` on the "train" questions (on its device)."""
    seed = _seed(seed)
    x, y = sft_batches("train", seed)
    model = copy.deepcopy(base)
    order = torch.Generator().manual_seed(derive_seed(seed, SFT_ORDER_SEED))
    history = train(
        model,
        row_batches(x, y, SFT_TRAINING.batch_size, order),
        _streams(SFT_TRAINING, seed),
    )
    return model, history


#: Tokens of the probe's greedy continuation recorded at each evaluation of the base model.
PROBE_TOKENS = 30


def probe_text(seed: int | None = None) -> str:
    """The prompt chapter 2 watches during pre-training: the first seen person's name."""
    return corpus(seed).world.seen[0].name


def _pretrain(seed: int, device: torch.device, cfg: GPTConfig) -> Trained:
    tok = corpus(seed).tokenizer
    probe = torch.tensor([tok.encode(probe_text(seed))], device=device)
    samples: dict[int, str] = {}

    def watch(model: GPT, step: int) -> None:
        samples[step] = tok.decode(model.generate(probe, PROBE_TOKENS, temperature=0)[0].tolist())

    model, history = train_base(cfg, seed, device, on_eval=watch)
    return Trained(model, history, samples)


@cache
def _base(seed: int, device: torch.device) -> Trained:
    return _cached("base", seed, device, lambda cfg: _pretrain(seed, device, cfg))


@cache
def _assistant(seed: int, device: torch.device) -> Trained:
    def build(cfg: GPTConfig) -> Trained:
        base = copy.deepcopy(_base(seed, device).model).to(device)
        model, history = train_assistant(base, seed)
        return Trained(model, history, {})

    return _cached("assistant", seed, device, build)


def _copy(trained: Trained, device: torch.device) -> Trained:
    return Trained(
        copy.deepcopy(trained.model).to(device),
        copy.deepcopy(trained.history),
        dict(trained.samples),
    )


def base_run(seed: int | None = None, device: str | torch.device | None = None) -> Trained:
    """Chapter 2's pre-training: the base model (on ``device``), its History and the probe's
    continuation at each evaluation. Cached: chapter 2 pays for it once, later chapters load it."""
    device = _device(device)
    return _copy(_base(_seed(seed), device), device)


def assistant_run(seed: int | None = None, device: str | torch.device | None = None) -> Trained:
    """Chapter 2's supervised fine-tuning: the assistant (on ``device``) and its History."""
    device = _device(device)
    return _copy(_assistant(_seed(seed), device), device)


def base_model(seed: int | None = None, device: str | torch.device | None = None) -> GPT:
    """Chapter 2's pre-trained base model, on ``device`` (default: the chapter's).

    A fresh copy: callers may fine-tune it freely.
    """
    return base_run(seed, device).model


def assistant_model(seed: int | None = None, device: str | torch.device | None = None) -> GPT:
    """Chapter 2's assistant: the base model after SFT (a fresh copy, on ``device``)."""
    return assistant_run(seed, device).model
