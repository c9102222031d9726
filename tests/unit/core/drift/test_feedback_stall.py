"""FeedbackStall: false-alarm rate by simulation, detection, merge, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.drift import FeedbackStall
from worker.core.errors import ConfigError, InvalidInputError


def _traffic(seed: int, seconds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-second impressions, expected clicks and clicks at CTR ~0.04, with a traffic rate
    swinging between quiet and busy so that windows sit near the decision boundary."""
    rng = np.random.default_rng(seed)
    rate = 15.0 + 12.0 * np.sin(np.arange(seconds) / 600.0)
    counts = rng.poisson(rate)
    p = rng.beta(1, 24, int(counts.sum()))
    y = rng.random(p.shape[0]) < p
    edges = np.concatenate([[0], np.cumsum(counts)])[:-1]
    nonempty = counts > 0
    expected = np.zeros(seconds)
    clicks = np.zeros(seconds, dtype=np.int64)
    expected[nonempty] = np.add.reduceat(p, edges[nonempty])
    clicks[nonempty] = np.add.reduceat(y.astype(np.int64), edges[nonempty])
    return counts, expected, clicks


def _run(det: FeedbackStall, counts, expected, clicks) -> tuple[int, int]:
    episodes = 0
    firing = False
    rows = zip(counts.tolist(), expected.tolist(), clicks.tolist(), strict=True)
    for t, (n, e, c) in enumerate(rows):
        ts = t * 1_000
        det.observe_impressions(n, min(e, n), ts)
        if c:
            det.observe_clicks(c, ts)
        now = det.check(ts + 999)
        episodes += now and not firing
        firing = now
    return episodes, int(counts.sum())


def test_false_alarm_rate_below_alpha_per_event() -> None:
    # alpha = 1e-2 (fires at >= 4.6 expected clicks with none observed) so that false
    # episodes are frequent enough to count; theory: <= CTR * alpha per event.
    det = FeedbackStall(window_ms=10_000, bucket_ms=1_000, min_impressions=10, alpha=1e-2)
    episodes, events = _run(det, *_traffic(40, 150_000))
    rate = episodes / events
    assert episodes >= 5  # the check has power
    assert rate <= 0.04 * 1e-2 * 1.5, (episodes, events)


def test_default_alpha_quiet_on_calibrated_traffic() -> None:
    det = FeedbackStall(window_ms=10_000, bucket_ms=1_000, min_impressions=10)
    episodes, events = _run(det, *_traffic(41, 100_000))
    assert episodes == 0 and events > 1_000_000


def test_detects_a_stall_and_recovers() -> None:
    det = FeedbackStall(window_ms=300_000, bucket_ms=60_000, min_impressions=100)
    for minute in range(30):
        ts = minute * 60_000
        det.observe_impressions(1_000, 40.0, ts)
        if minute < 20:
            det.observe_clicks(40, ts + 5)
        fired = det.check(ts + 59_999)
        assert fired == (minute >= 24), minute
    assert det.p_value(30 * 60_000 - 1) == pytest.approx(math.exp(-200.0))
    det.observe_clicks(3, 29 * 60_000 + 10)
    assert not det.check(30 * 60_000 - 1)
    assert 0.0 < det.p_value(30 * 60_000 - 1) < 1e-6


def test_min_impressions_and_expected_clicks_gate() -> None:
    det = FeedbackStall(window_ms=60_000, bucket_ms=60_000, min_impressions=500)
    det.observe_impressions(400, 30.0, 0)
    assert not det.check(1)  # too few impressions
    det.observe_impressions(400, 0.0, 2)
    assert det.check(3)
    det2 = FeedbackStall(window_ms=60_000, bucket_ms=60_000, min_impressions=10)
    det2.observe_impressions(1_000, 10.0, 0)  # 10 < 13.8 expected: could be chance
    assert not det2.check(1)


def test_state_is_bounded_and_old_buckets_expire() -> None:
    det = FeedbackStall(window_ms=120_000, bucket_ms=60_000, min_impressions=1)
    for minute in range(100):
        det.observe_impressions(10, 1.0, minute * 60_000)
    assert len(det.to_dict()["buckets"]) <= 3
    assert det.window(99 * 60_000) == (20, 2.0, 0)


def test_merge_equals_one_detector_and_is_commutative() -> None:
    rng = np.random.default_rng(42)
    events = [
        (int(rng.integers(0, 600_000)), int(rng.integers(0, 50)), bool(rng.random() < 0.5))
        for _ in range(300)
    ]
    parts = [FeedbackStall(window_ms=120_000, bucket_ms=10_000) for _ in range(3)]
    single = FeedbackStall(window_ms=120_000, bucket_ms=10_000)
    for i, (ts, n, is_click) in enumerate(sorted(events)):
        for det in (parts[i % 3], single):
            if is_click:
                det.observe_clicks(n, ts)
            else:
                det.observe_impressions(n, n / 25, ts)
    left = parts[0].merge(parts[1]).merge(parts[2])
    right = parts[2].merge(parts[1]).merge(parts[0])
    for ts in (599_999, 550_000):
        w_single, w_left, w_right = single.window(ts), left.window(ts), right.window(ts)
        assert w_left[0] == w_right[0] == w_single[0] and w_left[2] == w_single[2]
        assert w_left[1] == pytest.approx(w_single[1]) == pytest.approx(w_right[1])
    with pytest.raises(ConfigError):
        left.merge(FeedbackStall())
    with pytest.raises(TypeError):
        left.merge({"v": 1})  # type: ignore[arg-type]


# (is_click, count, ts): event times span several windows, so merges must drop old buckets.
_stall_events = st.lists(
    st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 400_000)), max_size=60
)


def _observe(det: FeedbackStall, is_click: bool, n: int, ts: int) -> None:
    if is_click:
        det.observe_clicks(n, ts)
    else:
        # Expected clicks as a dyadic fraction, so sums are exact in any order.
        det.observe_impressions(n, n / 32, ts)


@settings(max_examples=150, deadline=None)
@given(_stall_events, st.lists(st.integers(0, 2), max_size=60))
def test_merge_laws(events, assignment) -> None:
    """New object, operands unchanged, commutative, associative, merge = sequential."""
    config = {"window_ms": 120_000, "bucket_ms": 10_000}
    parts = [FeedbackStall(**config) for _ in range(3)]
    whole = FeedbackStall(**config)
    # Each part sees its events in time order (a partition's clock); the whole sees them all.
    for i, event in enumerate(sorted(events, key=lambda e: e[2])):
        _observe(parts[assignment[i] if i < len(assignment) else 0], *event)
        _observe(whole, *event)
    a, b, c = parts
    before = [p.to_dict() for p in parts]
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    assert a.merge(b).to_dict() == b.merge(a).to_dict()
    assert left.to_dict() == right.to_dict() == c.merge(a).merge(b).to_dict()
    assert [p.to_dict() for p in parts] == before
    assert left is not a
    # One detector fed everything holds the same live buckets, so every window agrees.
    top = max((t for _, _, t in events), default=0)
    for ts in (top, top - 30_000, top + 60_000):
        assert left.window(ts) == whole.window(ts)
        assert left.check(ts) == whole.check(ts)


def test_round_trip() -> None:
    det = FeedbackStall(window_ms=120_000, bucket_ms=60_000, min_impressions=1)
    det.observe_impressions(500, 20.5, 1_000)
    det.observe_clicks(3, 70_000)
    back = FeedbackStall.from_dict(json.loads(json.dumps(det.to_dict())))
    assert back.to_dict() == det.to_dict()
    assert back.window(100_000) == det.window(100_000)
    with pytest.raises(ConfigError):
        FeedbackStall.from_dict({**det.to_dict(), "v": 2})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_ms": 0},
        {"bucket_ms": 0},
        {"window_ms": 90_000, "bucket_ms": 60_000},
        {"min_impressions": 0},
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"alpha": math.nan},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        FeedbackStall(**kwargs)


def test_input_validation() -> None:
    det = FeedbackStall()
    with pytest.raises(InvalidInputError):
        det.observe_impressions(-1, 0.0, 0)
    with pytest.raises(InvalidInputError):
        det.observe_impressions(10, 11.0, 0)
    with pytest.raises(InvalidInputError):
        det.observe_impressions(10, math.nan, 0)
    with pytest.raises(InvalidInputError):
        det.observe_clicks(1, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        det.observe_clicks(True, 0)  # type: ignore[arg-type]


@given(st.lists(st.tuples(st.booleans(), st.floats(0.0, 1.0), st.integers(0, 10**8)),
                max_size=80))
def test_trusted_counts_equal_the_checked_observations(
    events: list[tuple[bool, float, int]],
) -> None:
    checked, trusted = FeedbackStall(), FeedbackStall()
    for is_click, p, ts in events:
        if is_click:
            checked.observe_clicks(1, ts)
            trusted.count_click(ts)
        else:
            checked.observe_impressions(1, p, ts)
            trusted.count_impression(p, ts)
    assert trusted.to_dict() == checked.to_dict()
