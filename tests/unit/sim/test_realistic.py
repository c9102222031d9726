"""The realistic knobs and preset: daily cycles, position effects, drift, the retrain jump.

Where a knob adds no random draw, the same seed with and without it gives the same world and
the same impressions, so its effect is checked exactly on paired streams; the preset itself
is checked statistically on small streams (a few seconds in all).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

import numpy as np
import pytest

from tests.unit.sim.helpers import impressions, index_of
from worker.sim import cli
from worker.sim.scenario import REALISTIC_DAYS, Scenario, realistic
from worker.sim.streamrec import generate, lines

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _columns(sc: Scenario) -> dict[str, np.ndarray]:
    """Impression columns in generation order, and the label of each (from its click)."""
    events = list(generate(sc))
    imps = sorted(impressions(events), key=lambda o: index_of(o["impression_id"]))
    clicked = {e.obj["impression_id"] for e in events if e.kind == "click" and e.obj}
    window = sc.attribution_window_ms
    ts_of = {o["impression_id"]: o["ts"] for o in imps}
    labelled = {
        e.obj["impression_id"] for e in events
        if e.kind == "click" and e.obj and e.obj["ts"] - ts_of.get(e.obj["impression_id"], 0)
        <= window
    }
    return {
        "index": np.array([index_of(o["impression_id"]) for o in imps]),
        "ts": np.array([o["ts"] for o in imps]),
        "true_p": np.array([o["context"]["true_p"] for o in imps]),
        "score": np.array([o["score"] for o in imps]),
        "position": np.array([o["position"] for o in imps]),
        "clicked": np.array([o["impression_id"] in clicked for o in imps]),
        "label": np.array([o["impression_id"] in labelled for o in imps]),
        "user": np.array([o["user_id"] for o in imps]),
    }


def _hour(ts: np.ndarray) -> np.ndarray:
    return (ts % _DAY_MS) / _HOUR_MS


# Pins of streams generated before the realistic knobs existed (commit f83d35a): the new
# knobs default to off, and must leave every older stream byte for byte as it was.
_PINS: list[tuple[dict[str, Any], str]] = [
    ({"n_events": 2_000, "seed": 1},
     "5eac4c6b904791bbbaff58355e37eb7381730a1aaf4defd89981d8fdc2223155"),
    ({"n_events": 3_000, "n_users": 200, "seed": 5, "duplicate_share": 0.05,
      "reorder_within_ms": 20_000, "malformed_share": 0.05, "orphan_click_share": 0.05,
      "score_field": "mixed", "temperature": 1.6, "drift_at_event": 1_500,
      "drift_temperature": 0.8, "model_noise_sd": 0.3, "base_rate_shift_at": 1_000,
      "base_rate_shift_odds": 2.0, "new_user_share": 0.1},
     "820e9206dd43cb7705e9d80da8adce70d90ef1a1420e59f7abd02112f41ad4c8"),
    ({"n_events": 2_500, "n_users": 300, "seed": 9, "arms": (), "ctr_alpha": 1, "ctr_beta": 24,
      "bias": -0.4, "skew_share": 0.05, "late_click_share": 0.05},
     "45c7730145b0bb599637e7fd0a8019ad4bed5d8e14f7d7d769c8156f4b56bc99"),
]


@pytest.mark.parametrize(("kwargs", "digest"), _PINS)
def test_older_streams_are_byte_identical(kwargs: dict[str, Any], digest: str) -> None:
    assert hashlib.sha256(b"\n".join(lines(Scenario(**kwargs)))).hexdigest() == digest


@pytest.fixture(scope="module")
def preset() -> dict[str, np.ndarray]:
    return _columns(realistic(30_000, seed=1))


def test_preset_spans_six_days_at_three_to_five_percent_ctr(preset: dict[str, np.ndarray]) -> None:
    span_days = (preset["ts"][-1] - preset["ts"][0]) / _DAY_MS
    assert span_days == pytest.approx(REALISTIC_DAYS, abs=0.3)
    assert 0.03 <= preset["true_p"].mean() <= 0.05
    assert 0.03 <= preset["clicked"].mean() <= 0.05
    assert list(preset["ts"]) == sorted(preset["ts"])  # impressions never go back in time


@pytest.mark.parametrize("seed", [2, 3])
def test_preset_ctr_holds_on_other_seeds(seed: int) -> None:
    sc = realistic(12_000, seed=seed)
    clicks = sum(1 for e in generate(sc) if e.kind == "click")
    assert 0.03 <= clicks / sc.n_events <= 0.05


def test_preset_traffic_follows_the_day(preset: dict[str, np.ndarray]) -> None:
    sc = realistic(30_000, seed=1)
    hour = _hour(preset["ts"]).astype(int)
    counts = np.bincount(hour, minlength=24)
    peak = int(sc.diurnal_traffic_peak_hour)
    trough = (peak + 12) % 24
    # Rate ratio (1 + A) / (1 - A) = 4 at A = 0.6; each hourly count is ~Poisson(>= 250).
    ratio = counts[peak] / counts[trough]
    amp = sc.diurnal_traffic_amplitude
    assert ratio == pytest.approx((1 + amp) / (1 - amp), rel=0.3)


def test_preset_hourly_ctr_and_calibration_follow_the_configuration(
    preset: dict[str, np.ndarray],
) -> None:
    sc = realistic(30_000, seed=1)
    hour = _hour(preset["ts"])
    p, s = preset["true_p"], preset["score"]
    dist = np.abs((hour - sc.diurnal_ctr_peak_hour + 12) % 24 - 12)
    near, far = dist < 3, dist > 9
    # log odds of the mean CTR: near the peak vs near the trough, about 2 x amplitude apart
    # (diluted by the drift and the mix of users over the hours).
    lift = _logit(np.array([p[near].mean()]))[0] - _logit(np.array([p[far].mean()]))[0]
    assert lift == pytest.approx(2 * sc.diurnal_ctr_amplitude, abs=0.15)
    # The served model's calibration by hour: mean score over mean truth is the hour's
    # calibration-in-the-large; the morning temperature moves it, the afternoon does not.
    bump = sc.miscal_bump(hour)
    morning, rest = bump > 0.6, bump < 0.01
    ratio_morning = s[morning].mean() / p[morning].mean()
    ratio_rest = s[rest].mean() / p[rest].mean()
    assert abs(ratio_morning - ratio_rest) > 0.1


def test_diurnal_ctr_cycle_is_exact_on_the_logit() -> None:
    common: dict[str, Any] = {"n_events": 3_000, "n_users": 200, "seed": 4,
                              "events_per_second": 0.05}
    plain = _columns(Scenario(**common))
    cyc = _columns(Scenario(**common, diurnal_ctr_amplitude=0.4, diurnal_ctr_peak_hour=18.0))
    assert np.array_equal(plain["ts"], cyc["ts"])
    expected = 0.4 * np.cos(2 * math.pi * (_hour(plain["ts"]) - 18.0) / 24)
    got = _logit(cyc["true_p"]) - _logit(plain["true_p"])
    assert np.allclose(got, expected, atol=1e-9)
    # The frozen model does not see the cycle.
    assert np.array_equal(plain["score"], cyc["score"])


def test_served_temperature_follows_the_hour() -> None:
    common: dict[str, Any] = {"n_events": 3_000, "n_users": 200, "seed": 6,
                              "events_per_second": 0.05, "temperature": 1.2, "bias": -0.1}
    knobs = {"diurnal_temperature_factor": 1.5, "diurnal_bias_shift": 0.3,
             "diurnal_miscal_peak_hour": 6.0, "diurnal_miscal_width_hours": 2.0}
    plain = _columns(Scenario(**common))
    daily = _columns(Scenario(**common, **knobs, temperature_pivot=-2.0))
    z = _logit(plain["true_p"])  # no noise: the plain model is exact up to T and bias
    k = Scenario(**knobs).miscal_bump(_hour(plain["ts"]))
    expected = 1.2 * 1.5**k * (z + 2.0) - 2.0 - 0.1 + 0.3 * k
    assert np.allclose(_logit(daily["score"]), expected, atol=1e-6)
    assert np.array_equal(plain["true_p"], daily["true_p"])


def test_position_effect_is_only_partly_in_the_model() -> None:
    common: dict[str, Any] = {"n_events": 3_000, "n_users": 200, "seed": 7}
    plain = _columns(Scenario(**common))
    pos = _columns(Scenario(**common, position_decay=0.5, position_model_share=0.4))
    effect = -0.5 * np.log1p(plain["position"])
    assert np.allclose(_logit(pos["true_p"]) - _logit(plain["true_p"]), effect, atol=1e-9)
    mean_effect = -0.5 * np.mean(np.log1p(np.arange(10)))
    served = _logit(pos["score"]) - _logit(plain["score"])
    assert np.allclose(served, 0.4 * effect + 0.6 * mean_effect, atol=1e-6)


def test_preset_clicks_decrease_with_position(preset: dict[str, np.ndarray]) -> None:
    pos, clicked, p, s = preset["position"], preset["clicked"], preset["true_p"], preset["score"]
    top, bottom = pos <= 2, pos >= 7
    assert clicked[top].mean() > 1.5 * clicked[bottom].mean()
    by_pos = [p[pos == k].mean() for k in range(10)]
    assert all(a > b for a, b in itertools.pairwise(by_pos))
    # The model underestimates the top of the list relative to the bottom (whatever its
    # overall level, which the morning temperature and the unseen user effects move).
    assert s[pos == 0].mean() / p[pos == 0].mean() < 0.9 * s[pos == 9].mean() / p[pos == 9].mean()


def test_preset_model_jump_is_at_the_configured_index() -> None:
    sc = realistic(8_000, seed=5)
    at = sc.drift_at_event
    assert at == 6_200
    jumped = _columns(sc)
    frozen = _columns(realistic(8_000, seed=5, drift_at_event=None, drift_temperature=None,
                                drift_bias=None))
    before, after = jumped["index"] < at, jumped["index"] >= at
    assert np.array_equal(jumped["score"][before], frozen["score"][before])
    assert np.array_equal(jumped["true_p"], frozen["true_p"])
    # After the retrain: temperature 1.2 spreads logits around 0 (scores go down at ~4 %
    # CTR) and the bias moves them down further.
    assert np.all(jumped["score"][after] < frozen["score"][after])
    lz_j, lz_f = _logit(jumped["score"][after]), _logit(frozen["score"][after])
    slope = np.polyfit(lz_f, lz_j, 1)[0]
    assert slope == pytest.approx(sc.drift_temperature / sc.temperature, abs=0.02)


def test_pareto_activity_is_heavier_tailed() -> None:
    common: dict[str, Any] = {"n_events": 20_000, "n_users": 2_000, "seed": 8,
                              "new_user_share": 0}
    def top_share(sc: Scenario) -> float:
        users = _columns(sc)["user"]
        _, counts = np.unique(users, return_counts=True)
        counts = np.sort(counts)[::-1]
        return float(counts[: len(counts) // 100].sum() / counts.sum())
    light = top_share(Scenario(**common, user_activity_sigma=0.3))
    heavy = top_share(Scenario(**common, user_activity_pareto_shape=1.5))
    assert heavy > 2 * light


def test_context_fields_carry_hour_and_device() -> None:
    sc = Scenario(n_events=500, seed=2, context_fields=True, events_per_second=0.005)
    imps = impressions(list(generate(sc)))
    for o in imps:
        ctx = o["context"]
        assert set(ctx) == {"true_p", "hour", "device"}
        assert ctx["hour"] == o["ts"] % _DAY_MS // _HOUR_MS
        assert ctx["device"] in ("mobile", "desktop", "tablet")
    by_user: dict[str, set[str]] = {}
    for o in imps:
        by_user.setdefault(o["user_id"], set()).add(o["context"]["device"])
    assert all(len(d) == 1 for d in by_user.values())  # a user keeps one device
    assert len({o["context"]["hour"] for o in imps}) == 24


def test_preset_is_deterministic_per_seed() -> None:
    a = list(lines(realistic(2_000, seed=3)))
    assert a == list(lines(realistic(2_000, seed=3)))
    assert a != list(lines(realistic(2_000, seed=4)))


def test_cli_scenario_preset_with_explicit_overrides() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="recal")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--scenario", "realistic", "--seed", "3",
                              "--events", "60000", "--temperature", "1.0",
                              "--diurnal-temperature", "2.0"])
    sc = cli.scenario_from_args(args)
    preset = realistic(60_000, seed=3)
    assert sc == realistic(60_000, seed=3, diurnal_temperature_factor=2.0)
    assert sc.drift_at_event == preset.drift_at_event == 46_500
    assert sc.events_per_second == preset.events_per_second
    plain = cli.scenario_from_args(parser.parse_args(["simulate", "--events", "10"]))
    assert plain == Scenario(n_events=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"diurnal_traffic_amplitude": 1.0},
         "diurnal_traffic_amplitude must be a number in [0, 1)"),
        ({"diurnal_ctr_peak_hour": 24.0}, "diurnal_ctr_peak_hour must be a number in [0, 24)"),
        ({"diurnal_temperature_factor": 0},
         "diurnal_temperature_factor must be a finite number > 0"),
        ({"user_activity_pareto_shape": -1.0}, "user_activity_pareto_shape must be a finite"),
        ({"position_model_share": 1.5}, "position_model_share must be a number in [0, 1]"),
        ({"context_fields": 1}, "context_fields must be true or false"),
    ],
)
def test_invalid_realistic_knobs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Scenario(**kwargs)
    assert message in str(info.value)
