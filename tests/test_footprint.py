"""Training footprint arithmetic, checked against the totals the LLaMA paper publishes."""

import pytest

from mlupdates.footprint import emissions_tco2, energy_mwh, training_days
from mlupdates.llama import LLAMA_TRAINING


def test_llama_table_is_reproduced_from_its_assumptions():
    for size, row in LLAMA_TRAINING.items():
        mwh = energy_mwh(row["gpu_hours"])
        assert 0 <= mwh - row["mwh"] < 1, size  # the paper drops the decimals (449.8 -> 449)
        assert round(emissions_tco2(mwh)) == row["tco2"], size


def test_65b_run_took_about_three_weeks_on_2048_gpus():
    assert training_days(1.4e12, 380, 2048) == pytest.approx(20.8, abs=0.05)
    assert LLAMA_TRAINING["65B"]["gpu_hours"] / 2048 / 24 == pytest.approx(20.8, abs=0.05)


def test_assumptions_change_the_totals_proportionally():
    assert energy_mwh(1000, gpu_watts=800) == pytest.approx(2 * energy_mwh(1000))
    assert energy_mwh(1000, pue=1.0) == pytest.approx(0.4)
    assert emissions_tco2(10, intensity=0.0) == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: energy_mwh(0), "gpu_hours=0 must be positive"),
        (lambda: energy_mwh(10, gpu_watts=-1), "gpu_watts=-1"),
        (lambda: energy_mwh(10, pue=0.9), "pue=0.9 must be at least 1"),
        (lambda: emissions_tco2(-1), "mwh=-1"),
        (lambda: emissions_tco2(1, intensity=-0.1), "intensity=-0.1"),
        (lambda: training_days(1e9, 380, 0), "gpus=0"),
        (lambda: training_days(1e9, 0, 8), "tokens_per_second_per_gpu=0"),
    ],
)
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
