import os
import random
import re

import numpy as np
import pytest
import torch

from mlupdates import runtime


def test_setup_makes_random_streams_repeatable():
    runtime.setup(notebook="00-test", seed=123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    runtime.setup(notebook="00-test", seed=123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])
    runtime.setup(notebook="00-test", seed=124)
    assert not torch.equal(torch.rand(3), first[2])


def test_setup_sets_threads_determinism_and_records_choice(monkeypatch):
    monkeypatch.delenv("MLUPDATES_DEVICE", raising=False)
    monkeypatch.setenv("MLUPDATES_THREADS", "1")
    rt = runtime.setup(notebook="00-test")
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()
    assert runtime.current() is rt
    assert str(rt) == "notebook=00-test device=cpu seed=0 threads=1 deterministic=True"


def test_device_override_and_loud_failure(monkeypatch):
    monkeypatch.setenv("MLUPDATES_DEVICE", "cpu")
    assert runtime.pick_device() == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            runtime.pick_device("cuda")
    with pytest.raises(ValueError, match="must be cpu, cuda"):
        runtime.pick_device("meta")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"notebook": "notebooks/01-x.ipynb"}, "file stem"),
        ({"notebook": "01-x", "threads": -1}, "threads=-1"),
        ({"notebook": "01-x", "seed": -5}, "seed=-5"),
    ],
)
def test_setup_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        runtime.setup(**kwargs)


def test_project_root_walks_up(tmp_path):
    (tmp_path / "_quarto.yml").write_text("project: {type: book}\n")
    deep = tmp_path / "notebooks" / "sub"
    deep.mkdir(parents=True)
    assert runtime.project_root(deep) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match=r"no _quarto\.yml"):
        runtime.project_root(tmp_path.parent)


def test_streams_keep_seed_zero_and_separate_other_seeds(monkeypatch):
    monkeypatch.delenv("MLUPDATES_SEED", raising=False)
    rt = runtime.setup(notebook="00-test")
    assert [rt.seed_for(k) for k in (0, 1, 7)] == [0, 1, 7]  # today's constants under seed 0
    assert torch.equal(
        torch.randn(4, generator=rt.generator(7)),
        torch.randn(4, generator=torch.Generator().manual_seed(7)),
    )
    three = runtime.setup(notebook="00-test", seed=3)
    streams = {three.seed_for(k) for k in range(100)}
    assert len(streams) == 100 and not streams & {rt.seed_for(k) for k in range(100)}
    assert runtime.seed_for(5) == three.seed_for(5) == 5 + 3 * runtime.SEED_STRIDE
    assert runtime.resolve_seed(None, 5) == three.seed_for(5) and runtime.resolve_seed(11, 5) == 11
    with pytest.raises(ValueError, match="stream=-1"):
        rt.seed_for(-1)
    with pytest.raises(ValueError, match="seed=-2"):
        runtime.resolve_seed(-2)


def test_seed_environment_overrides_the_argument_and_reaches_child_processes(monkeypatch):
    monkeypatch.setenv("MLUPDATES_SEED", "4")
    assert runtime.setup(notebook="00-test", seed=1).seed == 4
    monkeypatch.setattr(runtime, "_current", None)  # a torchrun worker that never called setup
    assert runtime.chapter_seed() == 4 and runtime.seed_for(2) == 2 + 4 * runtime.SEED_STRIDE
    for bad in ("-1", "three"):
        monkeypatch.setenv("MLUPDATES_SEED", bad)
        with pytest.raises(ValueError, match="MLUPDATES_SEED"):
            runtime.setup(notebook="00-test")
    monkeypatch.setenv("MLUPDATES_SEED", "")
    assert runtime.setup(notebook="00-test").seed == 0


def test_platform_fingerprint_is_stable_here_and_changes_with_the_kernels(monkeypatch):
    import subprocess
    import sys

    from mlupdates.runtime import ALT_KERNELS

    here = runtime.platform_fingerprint("cpu", 1)
    assert re.fullmatch(r"[0-9a-f]{12}", here)
    runtime._fingerprint.cache_clear()
    assert runtime.platform_fingerprint("cpu", 1) == here  # recomputed, same bits
    assert runtime.platform_fingerprint("cpu", 2) != here  # thread count is part of it
    code = "from mlupdates.runtime import platform_fingerprint as f; print(f('cpu', 1))"
    for switch, value in ALT_KERNELS.items():  # each switch alone changes how floats round
        env = {k: v for k, v in os.environ.items() if k not in ALT_KERNELS}
        env[switch] = value
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        assert out != here, switch
