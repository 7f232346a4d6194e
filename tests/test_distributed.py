import json
import subprocess
import sys

import pytest
import torch

from mlupdates.distributed import TinyCausalLM, launch, run


def test_seed_argument_and_chapter_seed_choose_the_run(monkeypatch):
    from mlupdates import runtime

    monkeypatch.setattr(runtime, "_current", None)
    monkeypatch.setenv("MLUPDATES_SEED", "0")
    kwargs = dict(steps=2, global_batch=4, context=16, lr=3e-3)
    seed0 = run(**kwargs)
    assert run(**kwargs, seed=0) == seed0  # seed 0: today's corpus, weights and batches
    other = run(**kwargs, seed=1)
    assert other != seed0
    monkeypatch.setenv("MLUPDATES_SEED", "1")  # a child process of a chapter run under seed 1
    assert run(**kwargs) == other
    with pytest.raises(ValueError, match="non-negative"):
        run(**kwargs, seed=-1)


def test_single_process_training_lowers_the_loss():
    losses = run(steps=8, global_batch=4, context=16, lr=3e-3)
    assert len(losses) == 8 and losses[-1] < losses[0]
    model = TinyCausalLM(100, context=16)
    assert model.tok.weight is not None and model.mask.shape == (16, 16)


@pytest.mark.slow
def test_ddp_with_two_processes_matches_one_process(tmp_path):
    args = ["--steps", "6", "--global-batch", "8", "--context", "16", "--seed", "2"]
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    subprocess.run([sys.executable, "-m", "mlupdates.distributed", *args, "--out", single],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "mlupdates.distributed", *args, "--out", ddp],
        check=True, capture_output=True,
    )  # fmt: skip
    one, two = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2 and one["seed"] == two["seed"] == 2
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=True)) < 1e-4


def test_run_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(steps=1, global_batch=2, context=8, lr=1e-3, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_launch_on_two_processes_matches_one_process():
    kwargs = dict(steps=6, global_batch=8, context=16, lr=3e-3, seed=2)
    one = run(**kwargs)
    two = launch(2, **kwargs)
    assert two["world_size"] == 2 and two["seed"] == 2 and len(two["losses"]) == 6
    assert max(abs(a - b) for a, b in zip(one, two["losses"], strict=True)) < 1e-4
    assert launch(1, **kwargs)["world_size"] == 1


def test_launch_rejects_bad_process_counts():
    with pytest.raises(ValueError, match="at least 1"):
        launch(0, steps=1, global_batch=4, context=8, lr=1e-3)
    with pytest.raises(ValueError, match="divisible"):
        launch(3, steps=1, global_batch=4, context=8, lr=1e-3)
