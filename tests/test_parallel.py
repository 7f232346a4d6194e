import itertools
import os
import random

import numpy as np
import pytest
import torch

from mlupdates import parallel
from mlupdates.parallel import map_processes


def _noisy_square(x: int) -> tuple[int, float, int]:
    """Prints, draws from the global generators, and says which process ran it."""
    print(f"item {x}")
    torch.manual_seed(x)
    random.random()
    np.random.rand()
    return x * x, torch.rand(1).item(), os.getpid()


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_and_printed_output_come_back_in_order(workers, capsys):
    items = [4, 1, 3, 2, 5]
    expected = [
        (x * x, torch.rand(1, generator=torch.Generator().manual_seed(x)).item()) for x in items
    ]
    results = map_processes(_noisy_square, items, workers=workers)
    assert [r[:2] for r in results] == expected
    assert capsys.readouterr().out == "".join(f"item {x}\n" for x in items)
    pids = {r[2] for r in results}
    if workers == 1:
        assert pids == {os.getpid()}
    else:  # really other processes, as many as asked for, each with a contiguous share
        assert os.getpid() not in pids and len(pids) == workers
        runs = [r[2] for r in results]
        assert sum(a != b for a, b in itertools.pairwise(runs)) == workers - 1


def test_without_fork_the_loop_runs_here(monkeypatch):
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    results = map_processes(_noisy_square, [1, 2, 3], workers=2)
    assert {r[2] for r in results} == {os.getpid()}


@pytest.mark.parametrize("workers", [1, 2])
def test_items_leave_the_global_generators_alone(workers):
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    map_processes(_noisy_square, [1, 2], workers=workers)
    after = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert after == (torch.rand(1).item(), random.random(), np.random.rand())


def test_a_failing_item_raises_with_its_traceback():
    with pytest.raises(ValueError, match="three"):
        map_processes(_fails_on_three, [1, 3], workers=1)
    with pytest.raises(RuntimeError, match=r"(?s)item 1 of 4.*three is not allowed"):
        map_processes(_fails_on_three, [1, 3, 2, 4], workers=2)


def test_worker_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLUPDATES_WORKERS", "3")
    assert parallel.default_workers() == 3
    monkeypatch.setenv("MLUPDATES_WORKERS", "0")
    with pytest.raises(ValueError, match="at least 1"):
        parallel.default_workers()
    assert map_processes(_fails_on_three, [], workers=2) == []
    with pytest.raises(ValueError, match="at least 1"):
        map_processes(_fails_on_three, [1], workers=0)


def _wait_for(path: str) -> bool:
    """True once ``path`` exists: it is created by the caller only after start() returned."""
    import time

    for _ in range(500):
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


def test_a_started_job_runs_while_the_caller_goes_on(tmp_path, capsys):
    flag = tmp_path / "flag"
    job = parallel.start(_wait_for, str(flag))
    flag.touch()  # had start() run the call here, it would have waited for this in vain
    assert not job.in_process and job.result() is True
    noisy = parallel.start(_noisy_square, 6)
    assert capsys.readouterr().out == ""  # nothing printed yet: it is replayed at result()
    value, draw, pid = noisy.result()
    assert (value, draw) == (36, torch.rand(1, generator=torch.Generator().manual_seed(6)).item())
    assert pid != os.getpid() and capsys.readouterr().out == "item 6\n"
    assert noisy.result()[0] == 36 and capsys.readouterr().out == ""  # replayed once


@pytest.mark.parametrize("reason", ["no fork", "one worker"])
def test_without_fork_a_job_runs_at_once_here_and_reads_alike(reason, monkeypatch, capsys):
    if reason == "no fork":
        monkeypatch.setattr(parallel, "can_fork", lambda: False)
    else:
        monkeypatch.setenv("MLUPDATES_WORKERS", "1")
    torch.manual_seed(7)
    job = parallel.start(_noisy_square, 6)
    after = torch.rand(1).item()
    torch.manual_seed(7)
    assert after == torch.rand(1).item()  # the job's draws were undone
    assert job.in_process and capsys.readouterr().out == ""
    assert job.result()[0::2] == (36, os.getpid()) and capsys.readouterr().out == "item 6\n"


def test_a_failing_job_raises_at_result(monkeypatch):
    job = parallel.start(_fails_on_three, 3)
    with pytest.raises(RuntimeError, match=r"(?s)worker process.*three is not allowed"):
        job.result()
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    job = parallel.start(_fails_on_three, 3)  # no exception yet
    with pytest.raises(ValueError, match="three"):
        job.result()


def _touch_later(path: str) -> None:
    import time

    time.sleep(1.0)
    open(path, "w").close()


def test_a_job_nobody_collects_does_not_outlive_its_handle(tmp_path):
    import gc

    done = tmp_path / "finished"
    job = parallel.start(_touch_later, str(done))
    pid = job._pid
    os.kill(pid, 0)  # running
    del job
    gc.collect()
    with pytest.raises(ProcessLookupError):  # gone, and reaped (not a zombie)
        os.kill(pid, 0)
    assert not done.exists()  # stopped, not waited for
