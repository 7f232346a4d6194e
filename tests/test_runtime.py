import random

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
