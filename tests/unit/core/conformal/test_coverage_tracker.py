"""CoverageTracker: batch reference at every step, decay, merge algebra, persistence."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.core.conformal.coverage_tracker as module
from worker.core.conformal import ConformalThreshold, CoverageTracker
from worker.core.errors import ConfigError, InvalidInputError, StateError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

events_st = st.lists(
    st.tuples(
        st.floats(0, 1),
        st.integers(0, 1),
        st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.8, 1.0]),
        st.integers(0, 20_000),
    ),
    max_size=40,
)


def reference(events, half_life):
    """Direct weighted shares from the raw events."""
    if not events:
        return None
    p = np.array([e[0] for e in events])
    y = np.array([e[1] for e in events])
    q = np.array([e[2] for e in events])
    t = np.array([e[3] for e in events])
    w = np.ones(len(events)) if half_life is None else 2.0 ** (-(t.max() - t) / half_life)
    has0, has1 = p <= q, 1 - p <= q
    cov = np.where(y == 1, has1, has0)
    out = {
        "coverage": (w * cov).sum() / w.sum(),
        "uncertain": (w * (has0 & has1)).sum() / w.sum(),
        "empty": (w * ~(has0 | has1)).sum() / w.sum(),
        "n_eff": w.sum() ** 2 / (w**2).sum(),
        "weight": w.sum(),
    }
    for label in (0, 1):
        sel = y == label
        out[f"cov{label}"] = None if not sel.any() else (w * cov)[sel].sum() / w[sel].sum()
    return out


def check(tracker: CoverageTracker, ref) -> None:
    if ref is None:
        assert tracker.coverage is None and tracker.n == 0
        return
    assert tracker.coverage == pytest.approx(ref["coverage"], rel=1e-9, abs=1e-12)
    assert tracker.uncertain_share == pytest.approx(ref["uncertain"], rel=1e-9, abs=1e-12)
    assert tracker.empty_share == pytest.approx(ref["empty"], rel=1e-9, abs=1e-12)
    assert tracker.n_eff == pytest.approx(ref["n_eff"], rel=1e-9)
    assert tracker.weight() == pytest.approx(ref["weight"], rel=1e-9)
    for label in (0, 1):
        got, want = tracker.coverage_by_label(label), ref[f"cov{label}"]
        if want is None:
            assert got is None
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0


@SETTINGS
@given(events_st, st.one_of(st.none(), st.floats(500.0, 1e5)))
def test_agrees_with_batch_reference_at_every_step(events, half_life) -> None:
    tracker = CoverageTracker(half_life)
    for i, (p, y, q, t) in enumerate(events):
        tracker.update(p, y, q, ts=t)
        check(tracker, reference(events[: i + 1], half_life))
    assert tracker.n == len(events)


@SETTINGS
@given(events_st, st.one_of(st.none(), st.floats(500.0, 1e5)))
def test_update_many_equals_updates(events, half_life) -> None:
    one, many = CoverageTracker(half_life), CoverageTracker(half_life)
    for p, y, q, t in events:
        one.update(p, y, q, ts=t)
    if events:
        cols = list(zip(*events, strict=True))
        many.update_many(cols[0], cols[1], cols[2], ts=list(cols[3]))
    check(many, reference(events, half_life))
    assert many.n == one.n


@SETTINGS
@given(
    events_st,
    st.lists(st.integers(0, 2), max_size=40),
    st.one_of(st.none(), st.floats(500.0, 1e5)),
)
def test_merge_equals_sequential(events, assignment, half_life) -> None:
    parts = [CoverageTracker(half_life) for _ in range(3)]
    for i, (p, y, q, t) in enumerate(events):
        parts[assignment[i] if i < len(assignment) else 0].update(p, y, q, ts=t)
    a, b, c = parts
    before = [part.to_dict() for part in parts]
    ref = reference(events, half_life)
    for merged in (a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(b).merge(a)):
        check(merged, ref)
        assert merged.n == len(events)
    ab, ba = a.merge(b).to_dict(), b.merge(a).to_dict()
    assert ab == ba
    # merge returns a new tracker and never mutates an operand.
    assert [part.to_dict() for part in parts] == before


@SETTINGS
@given(events_st, st.one_of(st.none(), st.floats(500.0, 1e5)))
def test_round_trip(events, half_life) -> None:
    tracker = CoverageTracker(half_life)
    for p, y, q, t in events:
        tracker.update(p, y, q, ts=t)
    data = json.loads(json.dumps(tracker.to_dict()))
    assert data["v"] == 1
    back = CoverageTracker.from_dict(data)
    assert back.to_dict() == tracker.to_dict()
    back.update(0.5, 1, 0.6, ts=30_000)
    tracker.update(0.5, 1, 0.6, ts=30_000)
    assert back.to_dict() == tracker.to_dict()


def test_tracks_a_published_threshold_online() -> None:
    rng = np.random.default_rng(9)
    p = rng.uniform(0.1, 0.9, 30_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    ct = ConformalThreshold.fit(p[:5_000], y[:5_000], alpha=0.1)
    tracker = CoverageTracker()
    tracker.update_many(p[5_000:], y[5_000:], ct.qhat)
    assert tracker.coverage == pytest.approx(0.9, abs=0.01)
    assert abs(tracker.z(0.9)) < 4
    # A miscalibrated stream under-covers, and z says so.
    drift = CoverageTracker()
    y_bad = (rng.uniform(size=p.size) < np.clip(p * 0.3, 0, 1)).astype(int)
    drift.update_many(p, y_bad, ct.qhat)
    assert drift.z(0.9) < -10


def test_decay_follows_the_recent_regime() -> None:
    tracker = CoverageTracker(half_life_ms=1_000)
    for t in range(0, 5_000, 10):
        tracker.update(0.5, 1, 0.2, ts=t)  # never covered
    for t in range(5_000, 15_000, 10):
        tracker.update(0.5, 1, 0.6, ts=t)  # always covered
    assert tracker.coverage > 0.99
    assert tracker.n == 1_500
    r = 2.0 ** (-10 / 1_000)  # one event per 10 ms: geometric weights, n_eff = (1+r)/(1-r)
    assert tracker.n_eff == pytest.approx((1 + r) / (1 - r), rel=1e-3)
    assert tracker.weight(at_ts=15_990) == pytest.approx(tracker.weight() / 2, rel=1e-9)


def test_errors() -> None:
    with pytest.raises(ConfigError):
        CoverageTracker(half_life_ms=0)
    t = CoverageTracker()
    with pytest.raises(InvalidInputError, match="score"):
        t.update(1.2, 0, 0.5)
    with pytest.raises(InvalidInputError, match="label"):
        t.update(0.2, 3, 0.5)
    with pytest.raises(InvalidInputError, match="qhat"):
        t.update(0.2, 0, math.nan)
    with pytest.raises(InvalidInputError, match="ts"):
        t.update_many([0.2, 0.3], [0, 0], 0.5, ts=[1, -1])
    with pytest.raises(InvalidInputError, match="ts is required"):
        CoverageTracker(10).update(0.2, 0, 0.5)
    with pytest.raises(InvalidInputError):
        t.coverage_by_label(2)
    with pytest.raises(InvalidInputError):
        t.z(1.0)
    assert t.n == 0 and t.z(0.9) is None
    with pytest.raises(ConfigError):
        t.merge(CoverageTracker(10))
    with pytest.raises(StateError):
        CoverageTracker.from_dict({**t.to_dict(), "w": -1.0})


@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 1), st.floats(0.0, 1.0),
                          st.integers(0, 10**9)), min_size=1, max_size=60),
       st.one_of(st.none(), st.floats(1e3, 1e9)))
def test_count_trusted_counts_like_update_many(
    batch: list[tuple[float, int, float, int]], half_life: float | None
) -> None:
    p, y, q, ts = (list(col) for col in zip(*batch, strict=True))
    checked = CoverageTracker(half_life)
    checked.update_many(p, y, q, np.array(ts, dtype=np.int64))
    trusted = CoverageTracker(half_life)
    trusted.count_trusted(p, y, q, ts)
    assert trusted.to_dict() == checked.to_dict()
