"""EligibilityGate: when a per-user calibrator version may be published."""

from __future__ import annotations

import pytest

from worker.core.calibrators import EligibilityGate
from worker.core.errors import ConfigError, InvalidInputError


def test_defaults_and_boundaries():
    gate = EligibilityGate()
    assert (gate.min_events, gate.min_days, gate.min_positives, gate.min_negatives) == (
        200,
        2,
        10,
        10,
    )
    # Minimums are inclusive.
    assert gate.check(200, 2, 10, 190) == (True, "")
    assert gate.check(199, 2, 10, 189) == (False, "events 199 < 200")
    assert gate.check(500, 1.5, 10, 490) == (False, "days 1.5 < 2")
    assert gate.check(500, 3, 9, 491) == (False, "positives 9 < 10")
    assert gate.check(500, 3, 491, 9) == (False, "negatives 9 < 10")


def test_every_unmet_minimum_is_reported():
    ok, reason = EligibilityGate().check(n=5, n_days=0, positives=0, negatives=5)
    assert not ok
    assert reason == "events 5 < 200; days 0 < 2; positives 0 < 10; negatives 5 < 10"


def test_custom_minimums_and_fractional_counts():
    gate = EligibilityGate(min_events=50, min_days=0, min_positives=1, min_negatives=1)
    assert gate.check(50.5, 0, 1, 49.5)[0]
    assert EligibilityGate(0, 0, 0, 0).check(0, 0, 0, 0) == (True, "")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_events": -1},
        {"min_days": float("nan")},
        {"min_positives": float("inf")},
        {"min_negatives": "10"},
        {"min_events": True},
    ],
)
def test_bad_minimums_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        EligibilityGate(**kwargs)


@pytest.mark.parametrize(
    "args", [(-1, 2, 10, 10), (200, float("nan"), 10, 10), (200, 2, None, 10), (200, 2, 10, True)]
)
def test_bad_counts_are_invalid_input(args):
    with pytest.raises(InvalidInputError):
        EligibilityGate().check(*args)
