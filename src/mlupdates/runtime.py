"""One setup call that makes a chapter reproducible.

Every notebook starts with :func:`setup`. It exists so that a chapter run twice on the
same machine prints the same numbers and draws the same pixels, and so that the same
chapter runs unchanged on a laptop CPU, an Apple GPU or an NVIDIA GPU.

Environment overrides (all optional):

``MLUPDATES_DEVICE``
    ``cpu``, ``cuda``, ``cuda:1``, ``mps``... instead of the automatic choice.
``MLUPDATES_SEED``
    The chapter's seed (default: 0), overriding the ``seed`` given to :func:`setup`.
    ``make seeds`` re-runs every chapter under seeds 0-4 this way.
``MLUPDATES_THREADS``
    Number of intra-op CPU threads (default: 1). One thread makes every printed number
    independent of the machine's core count (more threads can change the order of
    floating-point sums), and lets the test run execute two notebooks side by side on a
    2-core machine without the threads of one stalling the other. The book's models are
    small enough that one thread costs little; set more for speed, at the price of
    outputs that may differ from the stored ones in the last digits.

One seed knob
-------------
Every random choice in a chapter (a world and its splits, an initialisation, a data order,
a sampled answer) draws from a *stream* of the chapter's seed: :meth:`Runtime.seed_for`
turns a small stream number into a seed, :meth:`Runtime.generator` into a seeded
``torch.Generator``. Stream ``k`` of seed ``s`` is ``k + SEED_STRIDE * s``, so seed 0 gives
back the stream numbers themselves (the numbers the book was written with) and other seeds
give disjoint, reproducible draws. Library functions that take ``seed=None`` use
:func:`seed_for` the same way, so a chapter re-run under ``MLUPDATES_SEED=3`` changes every
draw, including those of the models :mod:`mlupdates.recipes` rebuilds.

Platform fingerprint
--------------------
Trained numbers depend on the float kernels a machine runs (AVX2 or AVX-512, MKL's code
path, CUDA). :func:`platform_fingerprint` hashes the float32 results of a small fixed
computation through the kernels the book uses, with the torch version, device type and
thread count. Two machines with equal fingerprints round alike, so a notebook executed on
one reproduces its stored outputs exactly on the other; elsewhere the test run compares only
the outputs that do not depend on rounding (see ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

DEFAULT_SEED = 0
DEFAULT_THREADS = 1
#: Distance between the streams of consecutive seeds: a prime larger than any stream number
#: a chapter uses, so streams of different seeds never coincide.
SEED_STRIDE = 1_000_003
#: Streams are small non-negative integers, one per independent random choice.
MAX_STREAM = SEED_STRIDE - 1
#: The alternative float kernels: PyTorch's portable ATen kernels and MKL's portable code
#: path. Together they round the way another CPU does; ``make notebooks`` runs every chapter
#: a second time under them to find the outputs that depend on rounding.
ALT_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


@dataclass(frozen=True)
class Runtime:
    """What :func:`setup` decided; printed at the top of every chapter."""

    notebook: str
    device: torch.device
    seed: int
    threads: int
    deterministic: bool

    def __str__(self) -> str:  # shown as the setup cell's output, so keep it stable
        return (
            f"notebook={self.notebook} device={self.device.type} seed={self.seed} "
            f"threads={self.threads} deterministic={self.deterministic}"
        )

    def seed_for(self, stream: int = 0) -> int:
        """The seed of random stream ``stream`` of this chapter (see the module docstring)."""
        return derive_seed(self.seed, stream)

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded for ``stream``.

        CPU generators on purpose: ``torch.randint``/``randperm`` with a CPU generator give
        the same draws on every machine and device, so data order and held-out splits stay
        the same when the model trains on a GPU (move the drawn tensors, not the generator).
        """
        return torch.Generator().manual_seed(self.seed_for(stream))


_current: Runtime | None = None


def pick_device(preference: str | None = None) -> torch.device:
    """Choose CUDA, then Apple MPS, then CPU, unless ``preference`` names one.

    ``preference`` defaults to the ``MLUPDATES_DEVICE`` environment variable. Asking for
    a device that is not present fails loudly instead of silently falling back, so a
    reader who sets ``MLUPDATES_DEVICE=cuda`` knows whether the GPU was really used.
    """
    preference = preference if preference is not None else os.environ.get("MLUPDATES_DEVICE")
    if preference:
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"MLUPDATES_DEVICE={preference!r} but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"MLUPDATES_DEVICE={preference!r} but MPS is not available")
        if device.type not in {"cpu", "cuda", "mps"}:
            raise ValueError(f"device {preference!r} must be cpu, cuda[:N] or mps")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def derive_seed(seed: int, stream: int) -> int:
    """Stream ``stream`` of seed ``seed``: ``stream + SEED_STRIDE * seed``."""
    if seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    if not 0 <= stream <= MAX_STREAM:
        raise ValueError(f"stream={stream} must be in [0, {MAX_STREAM}]")
    return stream + SEED_STRIDE * seed


def env_seed() -> int | None:
    """The seed named by ``MLUPDATES_SEED``, or None when it is unset or empty."""
    raw = os.environ.get("MLUPDATES_SEED", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"MLUPDATES_SEED={raw!r} must be a non-negative integer") from None
    if value < 0:
        raise ValueError(f"MLUPDATES_SEED={raw!r} must be a non-negative integer")
    return value


def chapter_seed() -> int:
    """The seed of the running chapter: the last :func:`setup`'s, else ``MLUPDATES_SEED``, else 0.

    Without a :func:`setup` call (a unit test, a ``torchrun`` worker started by a chapter)
    the environment still decides, so a child process follows its chapter's seed.
    """
    if _current is not None:
        return _current.seed
    from_env = env_seed()
    return DEFAULT_SEED if from_env is None else from_env


def seed_for(stream: int = 0) -> int:
    """Stream ``stream`` of the running chapter's seed (library defaults use this)."""
    return derive_seed(chapter_seed(), stream)


def resolve_seed(seed: int | None, stream: int = 0) -> int:
    """``seed`` when the caller chose one, else stream ``stream`` of the chapter's seed."""
    if seed is None:
        return seed_for(stream)
    if seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    return seed


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and PyTorch (all devices) from one integer."""
    if seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup(
    notebook: str,
    seed: int = DEFAULT_SEED,
    threads: int | None = None,
    device: str | None = None,
    deterministic: bool = True,
) -> Runtime:
    """Prepare a chapter: seeds, threads, deterministic kernels, device and figure style.

    ``notebook`` is the chapter's file stem (``"01-transformer"``); figures drawn through
    :func:`mlupdates.plots.show` are written under ``figures/<notebook>/``. ``seed`` is the
    chapter's one seed knob; ``MLUPDATES_SEED`` overrides it.
    """
    global _current
    if not notebook or "/" in notebook or notebook.endswith(".ipynb"):
        raise ValueError(f"notebook={notebook!r} must be a file stem like '01-transformer'")
    threads = threads or int(os.environ.get("MLUPDATES_THREADS", DEFAULT_THREADS))
    if threads < 1:
        raise ValueError(f"threads={threads} must be at least 1")
    from_env = env_seed()
    seed = from_env if from_env is not None else seed
    torch.set_num_threads(threads)
    seed_everything(seed)
    if deterministic:
        # cuBLAS needs this workspace setting before deterministic matmuls on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    from mlupdates import plots  # local import: plots imports runtime

    plots.use_book_style()
    _current = Runtime(notebook, pick_device(device), seed, threads, deterministic)
    return _current


def current() -> Runtime:
    """The runtime chosen by the last :func:`setup` call."""
    if _current is None:
        raise RuntimeError("call mlupdates.runtime.setup(notebook=...) first")
    return _current


def project_root(start: Path | None = None) -> Path:
    """The book's root: the nearest folder at or above ``start`` holding ``_quarto.yml``.

    Notebooks run with their own folder as working directory (Jupyter, nbval and nbclient
    all do this), so the root is found by walking up rather than assumed.
    """
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_quarto.yml").is_file():
            return folder
    raise FileNotFoundError(f"no _quarto.yml at or above {start}; run from inside the book")


_FINGERPRINT_SEED = 20231125  # fixed: the fingerprint must not depend on the chapter's seed


def _fingerprint_results(device: torch.device) -> list[torch.Tensor]:
    """Float32 results of the kernel families the chapters' numbers flow through.

    Shapes are odd and longer than a vector register so that vectorised main loops, their
    remainders and blocked reductions are all exercised; a few AdamW steps cover the fused
    element-wise optimiser kernels and a backward pass.
    """
    import torch.nn.functional as F
    from torch import nn

    gen = torch.Generator().manual_seed(_FINGERPRINT_SEED)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    out = [
        rand(67, 129) @ rand(129, 61),
        F.layer_norm(rand(8, 96), (96,), rand(96), rand(96)),
        torch.softmax(3 * rand(8, 77), dim=-1),
        F.gelu(rand(8, 100)),
        F.conv2d(rand(2, 3, 17, 17), rand(5, 3, 3, 3)),
    ]
    lstm = nn.LSTM(12, 20, batch_first=True).to(device)
    linear = nn.Linear(33, 7).to(device)
    with torch.no_grad():
        for p in (*lstm.parameters(), *linear.parameters()):
            p.copy_(0.3 * rand(*p.shape))
        out.append(lstm(rand(2, 9, 12))[0])
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-2)
    x, y = rand(40, 33), rand(40, 7)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(linear(x), y).backward()
        optimizer.step()
    out.append(linear.weight.detach())
    return out


@cache
def _fingerprint(device: str, threads: int) -> str:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = _fingerprint_results(torch.device(device))
    finally:
        torch.set_num_threads(before)
    digest = hashlib.sha256(f"torch={torch.__version__} device={device} threads={threads}".encode())
    for tensor in results:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def platform_fingerprint(
    device: str | torch.device | None = None, threads: int | None = None
) -> str:
    """A 12-hex-digit hash saying how this machine rounds float32 (about a second, then cached).

    ``device`` and ``threads`` default to what :func:`setup` chose, or would choose, so the
    test run and the kernels it starts agree. Equal fingerprints mean equal rounding for the
    book's kernels, so stored outputs reproduce exactly; different ones mean the trained
    numbers may differ in their last digits.
    """
    if device is None:
        device = _current.device if _current is not None else pick_device()
    if threads is None:
        threads = (
            _current.threads
            if _current is not None
            else int(os.environ.get("MLUPDATES_THREADS", DEFAULT_THREADS))
        )
    return _fingerprint(torch.device(device).type, threads)
