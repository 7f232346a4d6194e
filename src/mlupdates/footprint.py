"""The energy and carbon arithmetic of a training run, as papers report it.

Since Strubell et al. (2019, arXiv:1906.02243), papers that train large models estimate the
run's electricity and emissions from three stated assumptions, and LLaMA (Touvron et al.
2023, arXiv:2302.13971, section 6) follows Wu et al. (2022, arXiv:2111.00364):

    energy (Wh) = GPU-hours x GPU power (W) x PUE
    emissions (tCO2eq) = energy (MWh) x carbon intensity (tCO2eq / MWh)

PUE, the power usage effectiveness of the data centre, is total facility energy divided by
the energy that reaches the computers (1.1 means 10 % overhead for cooling and power
conversion). The functions below take those assumptions as arguments, so the chapter can
recompute a paper's table and see which inputs its totals depend on.
"""

from __future__ import annotations


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}={value} must be positive")


def energy_mwh(gpu_hours: float, gpu_watts: float = 400.0, pue: float = 1.1) -> float:
    """Electricity of a run in MWh: ``gpu_hours * gpu_watts * pue``.

    The defaults are LLaMA's assumptions: 400 W per A100-80GB (its thermal design power)
    and a PUE of 1.1.
    """
    _positive(gpu_hours=gpu_hours, gpu_watts=gpu_watts)
    if pue < 1:
        raise ValueError(
            f"pue={pue} must be at least 1 (no data centre uses less than its IT load)"
        )
    return gpu_hours * gpu_watts * pue / 1e6


def emissions_tco2(mwh: float, intensity: float = 0.385) -> float:
    """Tonnes of CO2-equivalent for ``mwh`` of electricity at ``intensity`` tCO2eq/MWh.

    0.385 tCO2eq/MWh is the US national average LLaMA assumed, so that models trained in
    different data centres are compared as if trained in the same one.
    """
    _positive(mwh=mwh)
    if intensity < 0:
        raise ValueError(f"intensity={intensity} must be non-negative")
    return mwh * intensity


def training_days(tokens: float, tokens_per_second_per_gpu: float, gpus: int) -> float:
    """Wall-clock days to process ``tokens`` at a measured per-GPU throughput."""
    _positive(tokens=tokens, tokens_per_second_per_gpu=tokens_per_second_per_gpu)
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus={gpus!r} must be a positive integer")
    return tokens / (tokens_per_second_per_gpu * gpus) / 86_400
