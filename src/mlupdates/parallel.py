"""Independent experiments on every CPU core, with the same results as a plain loop.

The chapters run PyTorch on one thread (see :mod:`mlupdates.runtime`): it keeps the printed
numbers independent of the core count, and the book's models are so small that a second
thread barely helps one of them. A laptop has several cores, though, and a chapter often
trains a few independent models in a row (the sizes of a scaling law, the ranks of a LoRA
sweep). :func:`map_processes` runs such a loop in forked worker processes, one per core, each
on one thread, and returns exactly what the loop would have returned: every item runs the same
single-threaded kernels on the same inputs, so the results are bit-identical, and whatever
an item prints is replayed in order.

Forking is only safe where nothing in the process needs re-initialising in a child: this is
the case for PyTorch on the CPU under Linux (the way ``DataLoader`` workers are started), but
not once CUDA is initialised, and not on macOS, whose system libraries do not support fork
without exec. Everywhere else, and with one worker, the loop runs in this process. To keep the
two paths equivalent, each item runs as if in a fresh copy of the process in both: its use of
the global random number generators (Python, NumPy, PyTorch) is undone afterwards, so only
its return value carries over, and items must seed their own randomness.

``MLUPDATES_WORKERS`` sets the number of worker processes (default: the CPU cores this
process may use); ``MLUPDATES_WORKERS=1`` runs every loop in-process.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """``MLUPDATES_WORKERS``, else the number of CPU cores this process may run on."""
    value = os.environ.get("MLUPDATES_WORKERS")
    if value is not None:
        workers = int(value)
        if workers < 1:
            raise ValueError(f"MLUPDATES_WORKERS={value} must be at least 1")
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def can_fork() -> bool:
    """Whether worker processes may be forked: Linux, and CUDA not initialised."""
    return sys.platform == "linux" and not torch.cuda.is_initialized()


@contextlib.contextmanager
def _fresh_random_state() -> Iterator[None]:
    """Undo, on exit, whatever the block did to the global random generators."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():  # the CPU generator and every initialised CUDA one
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _run_item(fn: Callable[[T], R], item: T) -> tuple[str, str, R]:
    """``fn(item)`` with its printed output captured (stdout, stderr) and its RNG use undone."""
    out, err = io.StringIO(), io.StringIO()
    with _fresh_random_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = fn(item)
    return out.getvalue(), err.getvalue(), result


def _replay(printed: str, errors: str) -> None:
    sys.stdout.write(printed)
    sys.stderr.write(errors)


def _child(fn: Callable[[T], R], items: Sequence[T], indices: list[int], path: Path) -> None:
    """Worker body: run this worker's items, pickle ``(index, outcome)`` pairs to ``path``."""
    results = []
    for i in indices:
        try:
            results.append((i, True, _run_item(fn, items[i])))
        except BaseException:  # reported to the parent, which re-raises
            results.append((i, False, traceback.format_exc()))
            break
    with open(path, "wb") as f:
        pickle.dump(results, f)


def map_processes(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, spread over ``workers`` forked processes.

    Results come back in the order of ``items`` (they must be picklable: numbers, tensors,
    modules); so does what each item printed. Falls back to an in-process loop where forking
    is unsafe (see the module docstring) or ``workers`` is 1. An exception in an item
    propagates; from a worker process it arrives as a :class:`RuntimeError` carrying the
    worker's traceback.
    """
    items = list(items)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    workers = min(workers, len(items))
    if workers <= 1 or not can_fork():
        results = []
        for item in items:
            printed, errors, result = _run_item(fn, item)
            _replay(printed, errors)
            results.append(result)
        return results
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryDirectory(prefix="mlupdates-parallel-") as tmp:
        children = []
        # Contiguous shares, the larger ones first: a sweep listed from cheap to costly
        # (widths 16, 32, 64) puts its costliest item alone on the last worker.
        bounds = np.cumsum([0] + [len(items) // workers + (w < len(items) % workers)
                                  for w in range(workers)])  # fmt: skip
        for w in range(workers):
            path = Path(tmp, f"worker-{w}.pickle")
            pid = os.fork()
            if pid == 0:  # the child: never returns into the caller's code
                code = 1
                try:
                    _child(fn, items, list(range(bounds[w], bounds[w + 1])), path)
                    code = 0
                finally:
                    os._exit(code)
            children.append((pid, path))
        outcomes: dict[int, tuple[bool, object]] = {}
        for pid, path in children:
            _, status = os.waitpid(pid, 0)
            if not path.is_file():
                raise RuntimeError(f"worker process {pid} died (wait status {status})")
            with open(path, "rb") as f:
                for i, ok, value in pickle.load(f):
                    outcomes[i] = (ok, value)
    results = []
    for i in range(len(items)):
        if i not in outcomes:  # a worker stopped at an earlier failing item
            continue
        ok, value = outcomes[i]
        if not ok:
            raise RuntimeError(f"item {i} of {len(items)} failed in a worker process:\n{value}")
        printed, errors, result = value  # type: ignore[misc]
        _replay(printed, errors)
        results.append(result)
    return results
