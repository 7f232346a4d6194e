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

:func:`start` is the same idea for one call that the chapter needs later rather than now: it
forks a process that runs the call while the chapter goes on, and :meth:`Job.result` collects
it (a future). Chapter 2 starts its scaling sweep this way before pre-training, so that the
sweep's small models train on a second core during the twenty seconds the base model takes.

``MLUPDATES_WORKERS`` sets the number of worker processes (default: the CPU cores this
process may use); ``MLUPDATES_WORKERS=1`` runs every loop in-process, and every job as soon as
it is started.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import random
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Generic, TypeVar

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


def _attempt(fn: Callable[[T], R], item: T) -> tuple[bool, object]:
    """In a worker: ``(True, _run_item(fn, item))``, or ``(False, traceback)`` if it raised."""
    try:
        return True, _run_item(fn, item)
    except BaseException:  # reported to the parent, which re-raises
        return False, traceback.format_exc()


def _fork(body: Callable[[], object], path: Path) -> int:
    """Fork a worker that pickles ``body()`` to ``path`` and exits; return its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            value = body()
            with open(path, "wb") as f:
                pickle.dump(value, f)
            code = 0
        finally:
            os._exit(code)
    return pid


def _share(fn: Callable[[T], R], items: Sequence[T], indices: list[int]) -> list:
    """Worker body of :func:`map_processes`: ``(index, ok, outcome)`` per item, up to a failure."""
    results = []
    for i in indices:
        ok, outcome = _attempt(fn, items[i])
        results.append((i, ok, outcome))
        if not ok:
            break
    return results


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
            share = list(range(bounds[w], bounds[w + 1]))
            body = functools.partial(_share, fn, items, share)  # runs now, in the child
            children.append((_fork(body, path), path))
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


class Job(Generic[R]):
    """A call started by :func:`start`; :meth:`result` waits for it and returns its value.

    ``in_process`` is True when the call already ran in this process, at :func:`start`.
    """

    def __init__(
        self,
        pid: int | None = None,
        folder: tempfile.TemporaryDirectory | None = None,
        outcome: tuple[bool, object] | None = None,  # (ok, (printed, errors, value) or error)
    ) -> None:
        self._pid, self._folder, self._outcome = pid, folder, outcome
        self.in_process = pid is None
        self._collected = False

    def result(self) -> R:
        """The call's return value, with what it printed replayed here (once, on first call).

        Waits for the worker process if it is still running. An exception in the call is
        raised here: as itself when it ran in-process, as a :class:`RuntimeError` carrying
        the worker's traceback otherwise.
        """
        if self._outcome is None:
            assert self._pid is not None and self._folder is not None
            _, status = os.waitpid(self._pid, 0)
            self._pid = None
            path = Path(self._folder.name, "job.pickle")
            try:
                if not path.is_file():
                    raise RuntimeError(f"job process died (wait status {status})")
                with open(path, "rb") as f:
                    self._outcome = pickle.load(f)
            finally:
                self._folder.cleanup()
        ok, value = self._outcome
        if not ok:
            if isinstance(value, BaseException):
                raise value
            raise RuntimeError(f"a job failed in its worker process:\n{value}")
        printed, errors, result = value  # type: ignore[misc]
        if not self._collected:
            _replay(printed, errors)
            self._collected = True
        return result

    def __del__(self) -> None:
        # A job nobody collects must not outlive its handle as a running or zombie process.
        if getattr(self, "_pid", None) is not None:
            try:
                os.kill(self._pid, 9)
                os.waitpid(self._pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._folder.cleanup()


def start(fn: Callable[..., R], *args: object, **kwargs: object) -> Job[R]:
    """Begin ``fn(*args, **kwargs)`` in a forked process and return at once; see :class:`Job`.

    The worker runs on one thread, like the chapter, so its result is bit-identical to
    calling ``fn`` here; its use of the global random generators stays in the worker. Where
    forking is unsafe (see the module docstring) or only one worker is allowed, the call runs
    here and now, with its random-generator use undone, and :meth:`Job.result` hands back
    what it returned and replays what it printed, so both paths read alike. The result must
    be picklable.
    """

    def call(_: None) -> R:
        return fn(*args, **kwargs)

    if default_workers() <= 1 or not can_fork():
        try:
            return Job(outcome=(True, _run_item(call, None)))
        except Exception as exc:  # raised at result(), where the forked path raises too
            return Job(outcome=(False, exc))
    sys.stdout.flush()
    sys.stderr.flush()
    folder = tempfile.TemporaryDirectory(prefix="mlupdates-job-")
    pid = _fork(lambda: _attempt(call, None), Path(folder.name, "job.pickle"))
    return Job(pid, folder)
