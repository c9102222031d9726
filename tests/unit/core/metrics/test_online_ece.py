"""OnlineCalibration: batch agreement at every step, merge laws, decay, round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.metrics._reference import ref_bin, ref_metrics
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.metrics import CalibrationReport, OnlineCalibration, calibration_metrics

NUMERIC = (
    "n",
    "positives",
    "expected",
    "ece",
    "ece_debiased",
    "ece_floor",
    "ece_se",
    "mce",
    "brier",
    "nll",
    "debiased_l2_ece",
    "l2_ece_debiased",
    "citl_ratio",
    "citl_z",
    "spiegelhalter_z",
)


def assert_reports_close(a: CalibrationReport, b: CalibrationReport, rel: float = 1e-9) -> None:
    for name in NUMERIC:
        x, y = getattr(a, name), getattr(b, name)
        if math.isnan(y):
            assert math.isnan(x), name
        else:
            assert x == pytest.approx(y, rel=rel, abs=1e-11), name
    assert a.ece_ci == pytest.approx(b.ece_ci, rel=rel, abs=1e-11, nan_ok=True)
    for ra, rb in zip(a.reliability, b.reliability, strict=True):
        assert (ra.lo, ra.hi) == (rb.lo, rb.hi)
        assert ra.n == pytest.approx(rb.n, rel=rel, abs=1e-11)
        assert ra.positives == pytest.approx(rb.positives, rel=rel, abs=1e-11)


def _events(n: int, seed: int):
    rng = np.random.default_rng(seed)
    p = rng.beta(1.0, 3.0, n)
    p[::17] = 0.0  # exact edges exercise the scalar binning
    p[5::23] = 1.0
    p[3::29] = np.floor(p[3::29] * 15) / 15
    pi = np.clip(p * 1.2, 0, 1)
    y = (rng.random(n) < pi).astype(int)
    ts = np.sort(rng.integers(0, 100_000, n)) + rng.integers(-3_000, 3_000, n)  # out of order
    return p, y, ts


# ------------------------------------------------------------------ agreement with batch


def test_update_sequence_equals_batch_report_at_every_step() -> None:
    p, y, _ = _events(250, 1)
    oc = OnlineCalibration()
    assert oc.report().n == 0 and math.isnan(oc.report().ece)
    for i in range(p.size):
        oc.update(float(p[i]), int(y[i]))
        assert_reports_close(oc.report(), calibration_metrics(p[: i + 1], y[: i + 1]))
    assert oc.count == p.size


def test_online_report_matches_loop_reference() -> None:
    p, y, _ = _events(500, 2)
    oc = OnlineCalibration()
    for pi, yi in zip(p.tolist(), y.tolist(), strict=True):
        oc.update(pi, yi)
    ref = ref_metrics(p, y)
    r = oc.report()
    for name in ("ece", "mce", "brier", "ece_floor", "debiased_l2_ece", "citl_z"):
        assert getattr(r, name) == pytest.approx(ref[name], rel=1e-9), name


def test_scalar_binning_matches_reference_on_edges() -> None:
    edges = [k / 15 for k in range(16)]
    scores = [0.0, 1.0, *edges, *(float(np.nextafter(e, 1.0)) for e in edges[:-1])]
    scores += [float(np.nextafter(e, 0.0)) for e in edges[1:]]
    for v in scores:
        oc = OnlineCalibration()
        oc.update(v, 1)
        got = [b.n for b in oc.report().reliability].index(1.0)
        assert got == ref_bin(v), v


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(1, 40))
def test_scalar_binning_matches_reference(v: float, n_bins: int) -> None:
    oc = OnlineCalibration(n_bins=n_bins)
    oc.update(v, 0)
    assert [b.n for b in oc.report().reliability].index(1.0) == ref_bin(v, n_bins)


def test_update_many_equals_updates() -> None:
    p, y, ts = _events(3000, 3)
    w = np.random.default_rng(0).uniform(0, 2, p.size)
    for hl in (None, 5_000.0):
        one = OnlineCalibration(half_life_ms=hl)
        for i in range(p.size):
            one.update(float(p[i]), int(y[i]), ts=int(ts[i]), weight=float(w[i]))
        many = OnlineCalibration(half_life_ms=hl)
        many.update_many(p[:1000], y[:1000], ts=ts[:1000], weights=w[:1000])
        many.update_many(p[1000:], y[1000:], ts=ts[1000:], weights=w[1000:])
        assert many.count == one.count == p.size
        assert_reports_close(many.report(), one.report())


def test_weighted_updates_equal_weighted_batch() -> None:
    p, y, _ = _events(800, 4)
    w = np.random.default_rng(1).exponential(1.0, p.size)
    oc = OnlineCalibration()
    for i in range(p.size):
        oc.update(float(p[i]), int(y[i]), weight=float(w[i]))
    assert_reports_close(oc.report(), calibration_metrics(p, y, w))


# ------------------------------------------------------------------ merge laws

events = st.lists(
    st.tuples(
        st.floats(0.0, 1.0),
        st.integers(0, 1),
        st.integers(0, 2_000_000),  # spans many half-lives, so re-anchoring happens
    ),
    max_size=60,
)


def _fill(evts, hl) -> OnlineCalibration:
    oc = OnlineCalibration(half_life_ms=hl)
    for p, y, t in evts:
        oc.update(p, y, ts=t)
    return oc


@settings(max_examples=150, deadline=None)
@given(events, st.lists(st.integers(0, 2), max_size=60), st.sampled_from([None, 20_000.0]))
def test_merge_equals_sequential(evts, parts, hl) -> None:
    parts = (parts + [0] * len(evts))[: len(evts)]
    split = [[e for e, k in zip(evts, parts, strict=True) if k == j] for j in range(3)]
    a, b, c = (_fill(s, hl) for s in split)
    before = [oc.to_dict() for oc in (a, b, c)]
    seq = _fill(evts, hl)
    merged = a.merge(b).merge(c)
    assert merged.count == seq.count
    assert merged.max_ts == seq.max_ts
    assert_reports_close(merged.report(), seq.report(), rel=1e-7)
    # Associative (up to rounding) and commutative (exactly).
    right = a.merge(b.merge(c))
    assert_reports_close(right.report(), merged.report(), rel=1e-7)
    assert a.merge(b).to_dict() == b.merge(a).to_dict()
    # merge returns a new accumulator and never mutates an operand.
    assert [oc.to_dict() for oc in (a, b, c)] == before
    assert merged is not a and right is not a


def test_merge_with_empty_is_identity() -> None:
    p, y, ts = _events(100, 5)
    full = OnlineCalibration(half_life_ms=10_000)
    full.update_many(p, y, ts=ts)
    before = full.to_dict()
    assert full.merge(OnlineCalibration(half_life_ms=10_000)).to_dict() == before
    assert OnlineCalibration(half_life_ms=10_000).merge(full).to_dict() == before
    assert full.to_dict() == before


def test_merge_rejects_different_hyper_parameters() -> None:
    with pytest.raises(ConfigError):
        OnlineCalibration().merge(OnlineCalibration(n_bins=10))
    with pytest.raises(ConfigError):
        OnlineCalibration().merge(OnlineCalibration(half_life_ms=1000))
    with pytest.raises(TypeError):
        OnlineCalibration().merge({"v": 1})  # type: ignore[arg-type]


# ------------------------------------------------------------------ decay


def test_event_one_half_life_older_weighs_half() -> None:
    oc = OnlineCalibration(half_life_ms=60_000)
    oc.update(0.3, 1, ts=1_000_000)
    oc.update(0.3, 0, ts=1_060_000)
    r = oc.report()
    assert r.n == pytest.approx(1.5)
    assert r.positives == pytest.approx(0.5)
    assert oc.report(at_ts=1_120_000).n == pytest.approx(0.75)
    # Arrival order does not matter.
    other = OnlineCalibration(half_life_ms=60_000)
    other.update(0.3, 0, ts=1_060_000)
    other.update(0.3, 1, ts=1_000_000)
    assert_reports_close(other.report(), r)


@pytest.mark.parametrize("hl", [1_000.0, 7_500.0, 200.0])
def test_decayed_report_equals_batch_with_direct_weights(hl: float) -> None:
    p, y, ts = _events(1500, 6)  # 100 s of events: up to 500 half-lives, re-anchoring included
    oc = OnlineCalibration(half_life_ms=hl)
    for i in range(p.size):
        oc.update(float(p[i]), int(y[i]), ts=int(ts[i]))
    t_max = ts.max()
    w = np.array([2.0 ** (-(t_max - t) / hl) for t in ts.tolist()])
    assert oc.max_ts == t_max
    assert_reports_close(oc.report(), calibration_metrics(p, y, w), rel=1e-8)
    later = t_max + 3 * hl
    assert oc.report(at_ts=later).n == pytest.approx(w.sum() / 8, rel=1e-9)


def test_decay_requires_ts() -> None:
    oc = OnlineCalibration(half_life_ms=1000)
    with pytest.raises(InvalidInputError):
        oc.update(0.5, 1)
    with pytest.raises(InvalidInputError):
        oc.update_many([0.5], [1])
    # Without decay ts is optional and only tracked.
    plain = OnlineCalibration()
    plain.update(0.5, 1)
    plain.update(0.5, 1, ts=42)
    assert plain.max_ts == 42 and plain.report().n == 2.0


# ------------------------------------------------------------------ state and validation


@pytest.mark.parametrize("hl", [None, 30_000])
def test_to_dict_round_trip_through_json(hl) -> None:
    p, y, ts = _events(400, 7)
    oc = OnlineCalibration(half_life_ms=hl)
    oc.update_many(p, y, ts=ts)
    d = json.loads(json.dumps(oc.to_dict(), allow_nan=False))
    assert d["v"] == 1
    back = OnlineCalibration.from_dict(d)
    assert back.to_dict() == oc.to_dict()
    assert_reports_close(back.report(), oc.report(), rel=0)
    # The restored object keeps working like the original.
    back.update(0.2, 1, ts=int(ts.max()) + 5)
    oc.update(0.2, 1, ts=int(ts.max()) + 5)
    assert back.to_dict() == oc.to_dict()
    with pytest.raises(InvalidInputError):
        OnlineCalibration.from_dict({**d, "v": 0})
    with pytest.raises(InvalidInputError):
        OnlineCalibration.from_dict({**d, "w": d["w"][:3]})


@pytest.mark.parametrize(
    "args,reason",
    [
        ((1.5, 1), "score_range"),
        ((math.nan, 1), "score_range"),
        ((-0.1, 0), "score_range"),
        ((0.5, 2), "schema"),
        ((0.5, 1, math.inf), "schema"),
        ((0.5, 1, None, -1.0), "schema"),
    ],
)
def test_update_rejects_bad_input(args, reason: str) -> None:
    oc = OnlineCalibration()
    with pytest.raises(InvalidInputError) as err:
        oc.update(*args)
    assert err.value.reason == reason
    assert oc.count == 0 and oc.to_dict() == OnlineCalibration().to_dict()


@pytest.mark.parametrize(
    "kwargs", [{"n_bins": 0}, {"half_life_ms": 0}, {"half_life_ms": -5}, {"half_life_ms": math.inf}]
)
def test_bad_hyper_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        OnlineCalibration(**kwargs)


def test_ancient_events_underflow_without_breaking_the_report() -> None:
    oc = OnlineCalibration(half_life_ms=1.0)
    oc.update(0.5, 1, ts=0)  # weight 2**-1000 at report time: its square underflows
    oc.update(0.3, 0, ts=1000)
    r = oc.report()
    assert r.n == pytest.approx(1.0)
    assert all(math.isfinite(x) for x in (r.ece, *r.ece_ci, r.ece_debiased, r.debiased_l2_ece))
