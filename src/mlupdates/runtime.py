"""One setup call that makes a chapter reproducible.

Every notebook starts with :func:`setup`. It exists so that a chapter run twice on the
same machine prints the same numbers and draws the same pixels, and so that the same
chapter runs unchanged on a laptop CPU, an Apple GPU or an NVIDIA GPU.

Environment overrides (all optional):

``MLUPDATES_DEVICE``
    ``cpu``, ``cuda``, ``cuda:1``, ``mps``... instead of the automatic choice.
``MLUPDATES_THREADS``
    Number of intra-op CPU threads (default: 1). One thread makes every printed number
    independent of the machine's core count (more threads can change the order of
    floating-point sums), and lets the test run execute two notebooks side by side on a
    2-core machine without the threads of one stalling the other. The book's models are
    small enough that one thread costs little; set more for speed, at the price of
    outputs that may differ from the stored ones in the last digits.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_SEED = 0
DEFAULT_THREADS = 1


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
    :func:`mlupdates.plots.show` are written under ``figures/<notebook>/``.
    """
    global _current
    if not notebook or "/" in notebook or notebook.endswith(".ipynb"):
        raise ValueError(f"notebook={notebook!r} must be a file stem like '01-transformer'")
    threads = threads or int(os.environ.get("MLUPDATES_THREADS", DEFAULT_THREADS))
    if threads < 1:
        raise ValueError(f"threads={threads} must be at least 1")
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
