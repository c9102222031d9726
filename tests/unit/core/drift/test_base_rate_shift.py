"""BaseRateShift: false-alarm rate by simulation, detection, paths, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.unit.core.drift.streams import calibrated, scalar_hits
from worker.core.drift import BaseRateShift
from worker.core.errors import ConfigError, InvalidInputError


def _alarms(make, ctr: str, seeds: range, n: int) -> tuple[int, int]:
    alarms = events = 0
    for seed in seeds:
        det = make()
        p, y = calibrated(seed, n, ctr)
        det.update_many(p, y)
        alarms += det.alarms
        events += det.n
    return alarms, events


@pytest.mark.parametrize("reference", ["expected", "warmup"])
@pytest.mark.parametrize("ctr", ["ctr20", "ctr04"])
def test_default_false_alarm_rate_at_most_one_per_million(ctr: str, reference: str) -> None:
    alarms, events = _alarms(
        lambda: BaseRateShift(reference=reference), ctr, range(300, 305), 1_000_000
    )
    assert events >= 4_900_000
    assert alarms / events * 1e6 <= 1.0, alarms


@pytest.mark.parametrize("ctr", ["ctr20", "ctr04"])
def test_false_alarm_rate_measurable_at_one_per_ten_thousand(ctr: str) -> None:
    alarms, events = _alarms(lambda: BaseRateShift(arl0=1e4), ctr, range(400, 402), 1_000_000)
    assert alarms >= 10 and alarms / events <= 1e-4, alarms
    # The warm-up reference is estimated; its confidence bound keeps the rate under target.
    alarms, events = _alarms(
        lambda: BaseRateShift(arl0=1e4, reference="warmup"), ctr, range(410, 412), 1_000_000
    )
    assert alarms / events <= 1e-4, alarms


def test_worst_case_scores_meet_target() -> None:
    # p = 0.5 maximises the per-event KL of a logit shift: the threshold's worst case.
    det = BaseRateShift(arl0=1e4)
    rng = np.random.default_rng(6)
    p = np.full(2_000_000, 0.5)
    det.update_many(p, rng.random(p.shape[0]) < p)
    assert 20 <= det.alarms <= 200, det.alarms


@pytest.mark.parametrize("reference", ["expected", "warmup"])
def test_detects_base_rate_shifts_both_ways(reference: str) -> None:
    rng = np.random.default_rng(8)
    n0, n1 = 40_000, 60_000
    p = rng.beta(1, 24, n0 + n1)
    for factor, direction in ((1.4, "up"), (0.6, "down")):
        truth = p.copy()
        truth[n0:] = np.minimum(1.0, factor * p[n0:])
        y = rng.random(p.shape[0]) < truth
        det = BaseRateShift(reference=reference)
        assert det.update_many(p[:n0], y[:n0]) == -1
        first = det.update_many(p[n0:], y[n0:])
        assert 0 <= first < 30_000, first
        assert det.direction == direction


def test_scalar_and_vector_paths_agree() -> None:
    rng = np.random.default_rng(9)
    p = rng.beta(2, 8, 40_000)
    y = rng.random(40_000) < np.where(np.arange(40_000) < 10_000, p, np.minimum(1.0, 1.5 * p))
    for reference in ("expected", "warmup"):
        a = BaseRateShift(reference=reference, warmup=5_000)
        hits = scalar_hits(a, p, y)
        b = BaseRateShift(reference=reference, warmup=5_000)
        assert hits and b.update_many(p, y) == hits[0]
        da, db = a.to_dict(), b.to_dict()
        assert da["alarms"] == db["alarms"] == len(hits) and da["n"] == db["n"]
        np.testing.assert_allclose(da["cum"], db["cum"], rtol=1e-9)
        assert a.reference_rate == b.reference_rate


def test_warmup_reference_and_rebaseline() -> None:
    det = BaseRateShift(reference="warmup", warmup=1_000)
    assert not det.warmed_up and det.reference_rate is None
    det.update_many(np.full(600, 0.1), np.arange(600) % 10 == 0)
    assert not det.warmed_up and det.n == 0
    det.update_many(np.full(600, 0.1), np.arange(600) % 10 == 0)
    assert det.warmed_up and det.reference_rate == pytest.approx(0.1) and det.n == 200
    det.rebaseline()
    assert not det.warmed_up and det.n == 0
    assert BaseRateShift().warmed_up and BaseRateShift().reference_rate is None


def test_round_trip_mid_stream_then_continue() -> None:
    rng = np.random.default_rng(10)
    p = rng.beta(2, 8, 60_000)
    y = rng.random(60_000) < np.where(np.arange(60_000) < 30_000, p, np.minimum(1, 1.4 * p))
    for reference in ("expected", "warmup"):
        whole = BaseRateShift(reference=reference)
        hits_whole = scalar_hits(whole, p, y)
        for cut in (10_000, 35_000):  # during warm-up, and after it
            part = BaseRateShift(reference=reference)
            hits = scalar_hits(part, p[:cut], y[:cut])
            part = BaseRateShift.from_dict(json.loads(json.dumps(part.to_dict())))
            hits += scalar_hits(part, p[cut:], y[cut:], offset=cut)
            assert hits == hits_whole and hits
            assert part.to_dict() == whole.to_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shift": 0.0},
        {"shift": -0.2},
        {"shift": math.inf},
        {"reference": "global"},
        {"warmup": 0},
        {"warmup": 10.5},
        {"reference_z": -1.0},
        {"arl0": 0.0},
        {"threshold": 0.0},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BaseRateShift(**kwargs)


def test_input_validation() -> None:
    det = BaseRateShift()
    with pytest.raises(InvalidInputError):
        det.update(math.nan, 1)
    with pytest.raises(InvalidInputError):
        det.update(0.3, 3)
    with pytest.raises(InvalidInputError):
        det.update_many([0.3, 2.0], [1, 0])
    with pytest.raises(ConfigError):
        BaseRateShift.from_dict({**det.to_dict(), "v": 0})
