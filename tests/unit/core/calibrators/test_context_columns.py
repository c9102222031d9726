"""The policy's vectorised contextual scoring: ``ContextColumns`` from an ``EventRing`` and
``ContextualCalibrator.apply_columns`` agree with the per-event mapping path, and the
change path's ``rescaled`` / ``OnlineContextual.rescale`` are the affine map of the logit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.unit.core.calibrators.test_contextual import CAL, T0
from worker.core.calibrators import ContextColumns, ContextualCalibrator, OnlineContextual
from worker.core.errors import ConfigError, StateError
from worker.core.mathfn import sigmoid_array
from worker.core.sketches.event_ring import EventRing

SEGMENTS = ["web", "app", "new"]


def filled_ring(n: int, seed: int, capacity: int | None = None) -> tuple[EventRing, list]:
    """A context ring of ``n`` random events (positions, devices and depths sometimes
    missing or of the wrong type), with the impressions that went in."""
    rng = np.random.default_rng(seed)
    ring = EventRing(capacity or n, fields=("device", "depth"))
    imps = []
    for _ in range(n):
        ctx: dict = {}
        r = rng.random()
        if r < 0.4:
            ctx["device"] = str(rng.choice(["mobile", "tv", "desk"]))
        elif r < 0.5:
            ctx["device"] = 7.0  # a number in a field that is usually a category
        if rng.random() < 0.7:
            ctx["depth"] = float(rng.normal(0, 30))
        elif rng.random() < 0.5:
            ctx["depth"] = "deep"
        pos = int(rng.integers(0, 12)) if rng.random() < 0.8 else None
        imp = SimpleNamespace(position=pos, context=ctx or None)
        ring.append(float(rng.normal(-3, 1)), int(rng.random() < 0.05),
                    T0 + int(rng.integers(0, 3 * 86_400_000)), seg=int(rng.integers(0, 3)),
                    impression=imp)
        imps.append(imp)
    return ring, imps


def test_columns_from_a_ring_score_like_each_event_s_own_context() -> None:
    ring, _ = filled_ring(3_000, 1)
    z, _, _, _ = ring.arrays()
    cols = ring.context(segment_vocab=SEGMENTS)
    assert cols is not None and len(cols) == z.size
    fast = CAL.apply_columns(z, cols)
    slow = np.array([CAL.apply_logit(float(z[i]), cols.contexts(i)) for i in range(z.size)])
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    a, b = CAL.slope_intercept_columns(cols)
    assert (a > 0).all()
    np.testing.assert_allclose(CAL.logit_columns(z, cols), a * z + b, rtol=1e-12)


def test_the_ring_keeps_each_impression_s_context_and_selects_like_arrays() -> None:
    ring, imps = filled_ring(500, 2)
    _, _, ts, seq, seg = ring.columns()
    cols = ring.context(segment_vocab=SEGMENTS)
    assert cols is not None
    for i in (0, 17, 499):
        got = cols.contexts(i)
        imp = imps[i]
        assert got["hour"] == pytest.approx((ts[i] % 86_400_000) / 3_600_000)
        assert got.get("position") == imp.position
        assert got["segment"] == SEGMENTS[seg[i]]
        for f in ("device", "depth"):
            v = (imp.context or {}).get(f)
            assert got.get(f) == (v if isinstance(v, (str, float)) else None)
    # The same selection as arrays(since_seq, segs).
    since, segs = int(seq[200]), np.array([0, 2])
    sz, _, _, _ = ring.arrays(since, segs)
    sel = ring.context(since, segs, SEGMENTS)
    assert sel is not None and len(sel) == sz.size
    keep = (seq >= since) & np.isin(seg, segs)
    np.testing.assert_array_equal(sel.hour, cols.hour[keep])
    np.testing.assert_array_equal(sel.position, cols.position[keep])


def test_a_context_ring_round_trips_and_a_plain_ring_writes_no_context() -> None:
    ring, _ = filled_ring(300, 3, capacity=200)  # wrapped: the oldest 100 dropped
    again = EventRing.from_dict(ring.to_dict())
    for a, b in zip(ring.columns(), again.columns(), strict=True):
        np.testing.assert_array_equal(a, b)
    c1, c2 = ring.context(segment_vocab=SEGMENTS), again.context(segment_vocab=SEGMENTS)
    assert c1 is not None and c2 is not None
    assert [c1.contexts(i) for i in range(len(c1))] == [c2.contexts(i) for i in range(len(c2))]
    plain = EventRing(5)
    plain.append(0.1, 1, 5)
    assert "context" not in plain.to_dict() and plain.context() is None
    bad = ring.to_dict()
    bad["context"]["fields"][0]["code"] = bad["context"]["fields"][1]["number"]
    with pytest.raises(StateError):
        EventRing.from_dict(bad)


def test_past_the_vocabulary_values_share_the_other_column() -> None:
    ring = EventRing(EventRing.MAX_VOCABULARY + 10, fields=("device",))
    for i in range(EventRing.MAX_VOCABULARY + 5):
        ring.append(-1.0, 0, T0 + i, impression=SimpleNamespace(
            position=None, context={"device": f"d{i}"}))
    cols = ring.context()
    assert cols is not None
    codes, vocab = cols.categories["device"]
    assert codes.max() == EventRing.MAX_VOCABULARY and vocab[codes[-1]] == ""
    cal = ContextualCalibrator(1.0, 0.0, [{"kind": "category", "field": "device",
                                           "values": ["d0"], "w_a": [0.0, 0.0],
                                           "w_b": [0.5, -0.5]}])
    _, b = cal.slope_intercept_columns(cols)
    assert b[0] == 0.5 and b[-1] == -0.5  # known value; a value past the vocabulary: other


def test_rescaled_is_the_affine_map_of_the_logit_and_stays_increasing() -> None:
    ring, _ = filled_ring(1_000, 4)
    z, _, _, _ = ring.arrays()
    cols = ring.context(segment_vocab=SEGMENTS)
    assert cols is not None
    new = CAL.rescaled(0.7, -0.25)
    np.testing.assert_allclose(new.apply_columns(z, cols),
                               sigmoid_array(0.7 * CAL.logit_columns(z, cols) - 0.25),
                               rtol=1e-12)
    assert (new.slope_intercept_columns(cols)[0] > 0).all()
    with pytest.raises(ConfigError):
        CAL.rescaled(0.0, 0.1)


def test_a_rescaled_learner_continues_from_the_rescaled_map() -> None:
    rng = np.random.default_rng(5)
    hours = rng.uniform(0, 24, 20_000)
    z = rng.normal(-3, 1, hours.size)
    y = (rng.random(hours.size) < sigmoid_array(np.where(hours < 12, 0.6, 1.0) * z)).astype(
        float)
    learner = OnlineContextual(hour_harmonics=1, position_edges=(), segment=False)
    learner.update_many(z, y, [{"hour": h} for h in hours])
    before = learner.calibrator()
    learner.rescale(0.8, 0.1)
    after = learner.calibrator()
    for h in (3.0, 15.0):
        a, b = before.slope_intercept({"hour": h})
        a2, b2 = after.slope_intercept({"hour": h})
        assert a2 == pytest.approx(0.8 * a, rel=1e-12)
        assert b2 == pytest.approx(0.8 * b + 0.1, rel=1e-12, abs=1e-12)
    assert OnlineContextual.from_dict(learner.to_dict()) == learner


def test_columns_need_one_context_per_logit() -> None:
    cols = ContextColumns.from_ts(np.array([T0]), np.array([-1]))
    with pytest.raises(ConfigError, match="one context per logit"):
        CAL.apply_columns(np.zeros(2), cols)
