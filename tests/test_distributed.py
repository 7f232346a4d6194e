import json
import subprocess
import sys

import pytest

from mlupdates.distributed import TinyCausalLM, run


def test_single_process_training_lowers_the_loss():
    losses = run(steps=8, global_batch=4, context=16, lr=3e-3)
    assert len(losses) == 8 and losses[-1] < losses[0]
    model = TinyCausalLM(100, context=16)
    assert model.tok.weight is not None and model.mask.shape == (16, 16)


@pytest.mark.slow
def test_ddp_with_two_processes_matches_one_process(tmp_path):
    args = ["--steps", "6", "--global-batch", "8", "--context", "16"]
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    subprocess.run([sys.executable, "-m", "mlupdates.distributed", *args, "--out", single],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "mlupdates.distributed", *args, "--out", ddp],
        check=True, capture_output=True,
    )  # fmt: skip
    one, two = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=True)) < 1e-4
