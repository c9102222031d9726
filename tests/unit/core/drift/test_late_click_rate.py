"""LateClickRate: false-alarm rate by simulation, detection, batching, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from worker.core.drift import LateClickRate
from worker.core.errors import ConfigError, InvalidInputError


def test_default_false_alarm_rate_at_acceptable_share() -> None:
    rng = np.random.default_rng(30)
    det = LateClickRate()
    for _ in range(5):
        det.update_many(rng.random(1_000_000) < 0.02)
    assert det.alarms <= 5, det.alarms


def test_false_alarm_rate_measurable_at_one_per_ten_thousand() -> None:
    rng = np.random.default_rng(31)
    det = LateClickRate(arl0=1e4)
    det.update_many(rng.random(2_000_000) < 0.02)
    assert 10 <= det.alarms <= 200, det.alarms
    # Below the acceptable share the null is only more comfortable.
    low = LateClickRate(arl0=1e4)
    low.update_many(rng.random(2_000_000) < 0.01)
    assert low.alarms < det.alarms


def test_detects_a_short_attribution_window() -> None:
    rng = np.random.default_rng(32)
    delays = []
    for _ in range(10):
        det = LateClickRate()
        det.update_many(rng.random(50_000) < 0.02)
        det.reset()
        delays.append(det.update_many(rng.random(50_000) < 0.05))
    assert all(0 <= d < 5_000 for d in delays), delays
    assert det.late_share == pytest.approx(0.05, abs=0.01)


def test_scalar_vector_and_batched_paths() -> None:
    rng = np.random.default_rng(33)
    late = rng.random(30_000) < 0.04
    a = LateClickRate()
    hits = [i for i, v in enumerate(late.tolist()) if a.update(v)]
    b = LateClickRate()
    assert hits and b.update_many(late) == hits[0]
    assert a.alarms == b.alarms and a.late == b.late == int(late.sum())
    # Batches restart only at their boundaries: never more alarms than per click.
    c = LateClickRate()
    for chunk in late.reshape(300, 100):
        c.update_counts(100, int(chunk.sum()))
    assert 1 <= c.alarms <= a.alarms
    assert c.clicks == 30_000 and c.late == a.late


def test_round_trip_mid_stream_then_continue() -> None:
    rng = np.random.default_rng(34)
    late = (rng.random(40_000) < 0.035).tolist()
    whole = LateClickRate()
    hits_whole = [i for i, v in enumerate(late) if whole.update(v)]
    part = LateClickRate()
    hits = [i for i, v in enumerate(late[:17_000]) if part.update(v)]
    part = LateClickRate.from_dict(json.loads(json.dumps(part.to_dict())))
    hits += [17_000 + i for i, v in enumerate(late[17_000:]) if part.update(v)]
    assert hits == hits_whole and hits
    assert part.to_dict() == whole.to_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"acceptable": 0.0},
        {"acceptable": 1.0},
        {"acceptable": 0.05, "alternative": 0.04},
        {"alternative": 1.0},
        {"arl0": math.nan},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        LateClickRate(**kwargs)


def test_input_validation() -> None:
    det = LateClickRate()
    with pytest.raises(InvalidInputError):
        det.update(2)
    with pytest.raises(InvalidInputError):
        det.update_counts(10, 11)
    with pytest.raises(InvalidInputError):
        det.update_counts(-1, 0)
    with pytest.raises(InvalidInputError):
        det.update_many([0, 3])
    assert det.update_counts(0, 0) is False and det.clicks == 0
    assert math.isnan(det.late_share)
