"""ScoreShift: false-alarm rate by simulation (no labels), detection, paths, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.unit.core.drift.streams import calibrated, logits
from worker.core.drift import ScoreShift
from worker.core.errors import ConfigError, InvalidInputError


def _alarms(make, streams) -> tuple[int, int]:
    alarms = events = 0
    for z in streams:
        det = make()
        det.update_many(z)
        alarms += det.alarms
        events += det.n
    return alarms, events


@pytest.mark.parametrize("ctr", ["ctr20", "ctr04"])
def test_default_false_alarm_rate_at_most_one_per_million(ctr: str) -> None:
    # 5 streams of 10^6 logits per CTR (the first 50,000 of each are the warm-up).
    streams = (logits(calibrated(seed, 1_000_000, ctr)[0]) for seed in range(500, 505))
    alarms, events = _alarms(ScoreShift, streams)
    assert events == 5 * 950_000
    assert alarms / events * 1e6 <= 1.0, alarms


@pytest.mark.parametrize("ctr", ["ctr20", "ctr04", "student_t"])
def test_false_alarm_rate_measurable_at_one_per_ten_thousand(ctr: str) -> None:
    # Distribution-free: a heavy-tailed logit distribution is held to the same target.
    def stream(seed: int) -> np.ndarray:
        if ctr == "student_t":
            return np.random.default_rng(seed).standard_t(3, 1_000_000) - 2.0
        return logits(calibrated(seed, 1_000_000, ctr)[0])

    alarms, events = _alarms(lambda: ScoreShift(arl0=1e4), (stream(s) for s in range(600, 602)))
    assert alarms >= 20 and alarms / events <= 1e-4, alarms


@pytest.mark.parametrize(
    ("change", "direction"),
    [
        ("mean_up", "mean_up"),
        ("mean_down", "mean_down"),
        ("sharper", "spread_up"),
        ("flatter", "spread_down"),
    ],
)
def test_detects_shifts(change: str, direction: str) -> None:
    p, _ = calibrated(17, 80_000, "ctr20")
    z = logits(p)
    centre = float(np.median(z))
    post = z[60_000:]
    if change == "mean_up":
        z[60_000:] = post + 0.25
    elif change == "mean_down":
        z[60_000:] = post - 0.25
    elif change == "sharper":
        z[60_000:] = centre + 1.3 * (post - centre)
    else:
        z[60_000:] = centre + 0.75 * (post - centre)
    det = ScoreShift()
    assert det.update_many(z[:60_000]) == -1
    first = det.update_many(z[60_000:])
    assert 0 <= first < 5_000, first
    assert det.direction == direction


def test_scalar_and_vector_paths_agree() -> None:
    p, _ = calibrated(18, 70_000, "ctr04")
    z = logits(p)
    z[60_000:] += 0.4
    z[0] = -40.0  # out of the histogram range: end bins
    z[1] = 40.0
    for spread in (True, False):
        a = ScoreShift(warmup=20_000, spread=spread)
        hits = [i for i, v in enumerate(z.tolist()) if a.update(v)]
        b = ScoreShift(warmup=20_000, spread=spread)
        assert hits and b.update_many(z) == hits[0]
        da, db = a.to_dict(), b.to_dict()
        assert da["reference"] == db["reference"]
        assert da["alarms"] == db["alarms"] == len(hits) and da["direction"] == db["direction"]
        np.testing.assert_allclose(da["cum"], db["cum"], rtol=1e-9)


def test_round_trip_mid_stream_then_continue() -> None:
    p, _ = calibrated(19, 40_000, "ctr20")
    z = logits(p)
    z[25_000:] -= 0.5
    whole = ScoreShift(warmup=10_000)
    hits_whole = [i for i, v in enumerate(z.tolist()) if whole.update(v)]
    for cut in (5_000, 24_000, 30_000):
        part = ScoreShift(warmup=10_000)
        hits = [i for i, v in enumerate(z[:cut].tolist()) if part.update(v)]
        part = ScoreShift.from_dict(json.loads(json.dumps(part.to_dict())))
        hits += [cut + i for i, v in enumerate(z[cut:].tolist()) if part.update(v)]
        assert hits == hits_whole and hits
        assert part.to_dict() == whole.to_dict()


def test_warmup_reset_and_rebaseline() -> None:
    det = ScoreShift(warmup=1_000)
    assert det.update_many(np.zeros(999)) == -1 and not det.warmed_up
    det.update(0.0)
    assert det.warmed_up and det.n == 0
    det.update_many(np.full(20_000, 3.0))
    assert det.alarm and det.direction == "mean_up"
    det.reset()
    assert det.warmed_up and not det.alarm and det.n == 0
    det.rebaseline()
    assert not det.warmed_up and det.to_dict()["reference"] == []


def test_thresholds() -> None:
    lam = 1.0
    a = math.log(math.sinh(lam / 2) / (lam / 2))
    assert ScoreShift().threshold == pytest.approx(math.log(1e6 * 4 * a) + 0.5)
    assert ScoreShift(conservative=True).threshold == pytest.approx(math.log(4e6))
    assert ScoreShift(spread=False).directions == ("mean_up", "mean_down")


@pytest.mark.parametrize(
    "kwargs",
    [{"warmup": 10}, {"tilt": 0.0}, {"tilt": -1.0}, {"arl0": -5.0}, {"margin": math.inf}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ScoreShift(**kwargs)


def test_input_validation() -> None:
    det = ScoreShift()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(InvalidInputError, match="logit must be a finite number"):
            det.update(bad)
        with pytest.raises(InvalidInputError):
            det.update_many([0.0, bad])
    data = det.to_dict()
    with pytest.raises(ConfigError):
        ScoreShift.from_dict({**data, "reference": [[5_000, 3]], "warm_n": 3})
    with pytest.raises(ConfigError):
        ScoreShift.from_dict({**data, "reference": [[5, 3]], "warm_n": 4})
