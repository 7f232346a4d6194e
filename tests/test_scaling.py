import numpy as np
import pytest

from mlupdates.scaling import PowerLaw, fit_power_law


def test_recovers_an_exact_power_law():
    n = np.array([1e3, 1e4, 1e5, 1e6])
    law = fit_power_law(n, 5.0 * n**-0.3)
    assert law.alpha == pytest.approx(0.3) and law.a == pytest.approx(5.0)
    assert law.r2 == pytest.approx(1.0)
    assert law(1e7) == pytest.approx(5.0 * 1e7**-0.3)


def test_r2_drops_when_points_are_not_on_a_line():
    law = fit_power_law([1, 10, 100, 1000], [1.0, 0.2, 0.9, 0.1])
    assert law.r2 < 0.9
    assert isinstance(law, PowerLaw)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 10], [1.0, 0.0])
    with pytest.raises(ValueError, match="equal length"):
        fit_power_law([1, 10, 100], [1.0, 0.5])
    with pytest.raises(ValueError, match="two different sizes"):
        fit_power_law([10, 10], [1.0, 0.5])
