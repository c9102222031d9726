"""EceHigh: the one-sided test on ECE beyond its noise floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worker.core.drift import EceHigh
from worker.core.errors import ConfigError, InvalidInputError

_EDGES = np.linspace(0.0, 1.0, 16)


def _ece(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """15-bin plug-in ECE and its analytic noise floor (DESIGN §5), in plain numpy."""
    idx = np.clip(np.ceil(p * 15).astype(int) - 1, 0, 14)
    gap = np.bincount(idx, y - p, 15)
    var = np.bincount(idx, p * (1 - p), 15)
    n = p.shape[0]
    return float(np.abs(gap).sum() / n), float(math.sqrt(2 / math.pi) * np.sqrt(var).sum() / n)


def _se(p: np.ndarray, rng: np.random.Generator, reps: int = 100) -> float:
    """Spread of the ECE under calibration on these scores (parametric bootstrap)."""
    return float(np.std([_ece(p, rng.random(p.shape[0]) < p)[0] for _ in range(reps)]))


def test_calibrated_predictor_never_fires() -> None:
    rng = np.random.default_rng(50)
    test = EceHigh(threshold=0.02, alpha=1e-3, min_n=1_000)
    p = rng.beta(2, 8, 2_000)
    se = _se(p, rng)
    stats = []
    for _ in range(300):
        ece, floor = _ece(p, rng.random(p.shape[0]) < p)
        assert not test.check(ece, floor, se, p.shape[0])
        stats.append(test.p_value(ece, floor, se, p.shape[0]))
    assert min(stats) > 1e-3


def test_miscalibrated_predictor_fires() -> None:
    rng = np.random.default_rng(51)
    test = EceHigh(threshold=0.02)
    truth = rng.beta(2, 8, 20_000)
    served = np.clip(truth + 0.05, 0, 1)  # true ECE ~0.05 > 0.02
    se = _se(served, rng, reps=30)
    ece, floor = _ece(served, rng.random(truth.shape[0]) < truth)
    assert test.check(ece, floor, se, truth.shape[0])
    assert test.p_value(ece, floor, se, truth.shape[0]) < 1e-6


def test_size_at_the_boundary() -> None:
    # When the true excess equals the threshold the test fires with probability ~alpha.
    rng = np.random.default_rng(52)
    test = EceHigh(threshold=0.02, alpha=0.05, min_n=1)
    draws = 0.01 + 0.02 + 0.004 * rng.standard_normal(20_000)
    rate = np.mean([test.check(d, 0.01, 0.004, 5_000) for d in draws])
    assert rate == pytest.approx(0.05, abs=0.01)


def test_edge_cases() -> None:
    test = EceHigh(threshold=0.02, min_n=100)
    assert test.check(0.5, 0.0, 0.0, 100) and not test.check(0.02, 0.0, 0.0, 100)
    assert test.p_value(0.5, 0.0, 0.0, 100) == 0.0 and test.p_value(0.0, 0.0, 0.0, 100) == 1.0
    assert not test.check(0.9, 0.0, 0.001, 99) and test.p_value(0.9, 0.0, 0.001, 99) == 1.0
    assert EceHigh.se_from_interval(0.01, 0.03, 0.95) == pytest.approx(0.02 / (2 * 1.959964))
    for args in (
        (math.nan, 0.0, 0.01, 100),
        (0.1, -0.1, 0.01, 100),
        (0.1, 0.0, math.inf, 100),
        (0.1, 0.0, 0.01, math.nan),
    ):
        with pytest.raises(InvalidInputError):
            test.check(*args)
    with pytest.raises(InvalidInputError):
        EceHigh.se_from_interval(0.03, 0.01)


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": -0.1}, {"threshold": 1.5}, {"alpha": 0.0}, {"alpha": 0.7}, {"min_n": 0}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EceHigh(**kwargs)
