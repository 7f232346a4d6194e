"""Chapter 2's models, rebuilt on demand: the book's world, tokenizer, base GPT and assistant.

Later chapters start from what chapter 2 trains: chapter 3 fine-tunes the base model,
chapter 4 serves the assistant behind an OpenAI-compatible API, chapters 6 and 7 adapt it
with LoRA. Shipping checkpoints would put binary blobs in the repository and let them drift
from the code, so instead the package *re-trains* them from a fixed recipe. Training is
deterministic on the CPU (one thread, seeded data order and initialisation), so every chapter
that calls :func:`base_model` gets bit-identical weights, in about 15 s the first time.

A finished model is kept in two caches so that the cost is paid once: in memory for the
rest of the process, and as a ``.pt`` file under ``<repository>/.cache/recipes/`` (git
ignores it), whose name carries a hash of the recipe and of the torch version, so a changed
recipe never loads a stale file. Set ``MLUPDATES_NO_CACHE=1`` to always re-train.

Chapter 2 trains with exactly these constants (it imports them), so the text of chapter 2 and
the models later chapters use cannot drift apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from mlupdates.chat import pad_batch, sft_example
from mlupdates.gpt import GPT, GPTConfig
from mlupdates.runtime import project_root
from mlupdates.tokenizer import BPETokenizer
from mlupdates.train import History, TrainConfig, row_batches, train
from mlupdates.world import World, make_world

#: The world of chapter 2: 50 people, 10 of them held out.
WORLD_KWARGS = {"seed": 0, "n_people": 50, "heldout_fraction": 0.2}
#: Characters of pre-training text and of validation text (fresh paraphrases).
TRAIN_CHARS, VALID_CHARS = 100_000, 10_000
#: Byte-pair-encoding vocabulary size, special tokens included.
VOCAB = 768
#: The base model: 2 layers of width 64, a 48-token context (0.16 M parameters).
BASE_GPT = {"context": 48, "n_layer": 2, "n_head": 4, "d_model": 64}
BASE_TRAINING = TrainConfig(
    steps=1000, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=30, eval_every=250
)
#: Supervised fine-tuning of the base model on the "train" questions.
SFT_TRAINING = TrainConfig(
    steps=200, batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=10, eval_every=200
)
#: Seed of the base model's initialisation.
INIT_SEED = 0


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


@cache
def corpus() -> Corpus:
    """Chapter 2's world, BPE tokenizer and token streams (about 2 s; cached per process)."""
    world = make_world(**WORLD_KWARGS)
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


def _recipe_key(name: str) -> str:
    recipe = {
        "name": name,
        "world": WORLD_KWARGS,
        "chars": [TRAIN_CHARS, VALID_CHARS],
        "vocab": VOCAB,
        "gpt": BASE_GPT,
        "base": asdict(BASE_TRAINING),
        "sft": asdict(SFT_TRAINING) if name == "assistant" else None,
        "init_seed": INIT_SEED,
        "torch": torch.__version__,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def cache_dir() -> Path:
    """Where trained recipe weights are kept: ``<repository>/.cache/recipes``."""
    return project_root() / ".cache" / "recipes"


def _cached(name: str, build) -> GPT:
    """Load the weights of recipe ``name`` from disk, or build and store them."""
    cfg = base_config(corpus().tokenizer.vocab_size)
    use_disk = os.environ.get("MLUPDATES_NO_CACHE", "") in ("", "0")
    path = cache_dir() / f"{_recipe_key(name)}.pt"
    if use_disk and path.exists():
        model = GPT(cfg)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    model = build(cfg)
    if use_disk:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)  # atomic: two processes building at once never see half a file
    return model.eval()


def train_base(cfg: GPTConfig, **train_kwargs) -> tuple[GPT, History]:
    """Initialise and pre-train the base model; returns the model and its History.

    Chapter 2 calls this directly (with an ``on_eval`` callback to sample text at each
    checkpoint); :func:`base_model` calls it through the cache.
    """
    data = corpus()
    torch.manual_seed(INIT_SEED)
    model = GPT(cfg)
    history = train(model, data.train_tokens, BASE_TRAINING, data.valid_tokens, **train_kwargs)
    return model, history


def sft_batches(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Padded SFT inputs and masked labels for every question of ``split``."""
    data = corpus()
    return pad_batch([sft_example(data.tokenizer, q) for q in data.world.qa(split)], data.eot)


def train_assistant(base: GPT) -> tuple[GPT, History]:
    """Supervised fine-tuning of a copy of ``base`` on the "train" questions."""
    x, y = sft_batches("train")
    model = copy.deepcopy(base)
    history = train(
        model,
        row_batches(x, y, SFT_TRAINING.batch_size, torch.Generator().manual_seed(0)),
        SFT_TRAINING,
    )
    return model, history


@cache
def _base() -> GPT:
    return _cached("base", lambda cfg: train_base(cfg)[0])


@cache
def _assistant() -> GPT:
    return _cached("assistant", lambda cfg: train_assistant(_base())[0])


def base_model() -> GPT:
    """Chapter 2's pre-trained base model (a fresh copy: callers may fine-tune it freely)."""
    return copy.deepcopy(_base())


def assistant_model() -> GPT:
    """Chapter 2's assistant: the base model after SFT (a fresh copy)."""
    return copy.deepcopy(_assistant())
