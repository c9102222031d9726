"""LogitHistogram: binning, decay, merge algebra, ECE from the sketch, persistence."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.core.sketches.logit_histogram as module
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.sketches import LogitHistogram

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- references


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def decay_weights(ts: np.ndarray, at: int, half_life: float | None) -> np.ndarray:
    """Direct computation: each event's weight seen at ``at``."""
    if half_life is None:
        return np.ones(len(ts))
    return np.array([2.0 ** (-(at - int(t)) / half_life) for t in ts])


def batch_reference(h: LogitHistogram, z, y, ts, at: int):
    """Per-bin (mean z, weight, positives, sum p) by brute force, bin by bin, event by event."""
    edges = h.bin_edges.tolist()
    w = decay_weights(np.asarray(ts), at, h.half_life_ms)
    rows: dict[int, list[float]] = {}
    for zi, yi, wi in zip(z, y, w, strict=True):
        # Right-closed bins: bin i holds edges[i-1] < z <= edges[i].
        i = sum(1 for e in edges if e < zi)
        r = rows.setdefault(i, [0.0, 0.0, 0.0, 0.0])
        r[0] += wi * zi
        r[1] += wi
        r[2] += wi * yi
        r[3] += wi * float(sigmoid(np.float64(zi)))
    keys = sorted(k for k in rows if rows[k][1] > 0)
    sz, wt, pos, sp = (np.array([rows[k][j] for k in keys]) for j in range(4))
    return sz / wt, wt, pos, sp


def raw_ece(p: np.ndarray, y: np.ndarray, w: np.ndarray, n_bins: int) -> float:
    edges = np.arange(n_bins + 1) / n_bins
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    resid = np.bincount(idx, w * (y - p), minlength=n_bins)
    return float(np.abs(resid).sum() / w.sum())


def assert_same_state(a: LogitHistogram, b: LogitHistogram, at: int, rtol: float = 1e-9) -> None:
    za, wa, pa, sa = a.arrays(at_ts=at)
    zb, wb, pb, sb = b.arrays(at_ts=at)
    scale = max(float(wa.sum()), 1e-300)
    assert wa.shape == wb.shape
    np.testing.assert_allclose(wa, wb, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(pa, pb, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(sa, sb, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(za, zb, rtol=1e-7, atol=1e-7)
    assert (a.n_events, a.n_positives, a.min_ts, a.max_ts) == (
        b.n_events,
        b.n_positives,
        b.min_ts,
        b.max_ts,
    )


def build(config: dict, z, y, ts, *, one_by_one: bool = False) -> LogitHistogram:
    h = LogitHistogram(**config)
    if one_by_one:
        for zi, yi, ti in zip(z, y, ts, strict=True):
            h.update(float(zi), int(yi), int(ti))
    elif len(z):
        h.update_many(z, y, ts)
    return h


# --------------------------------------------------------------------------- strategies

HALF_LIVES = st.sampled_from([None, 1_000.0, 60_000.0, 3_600_000.0])


@st.composite
def event_batches(draw, min_size: int = 0, max_size: int = 60):
    n = draw(st.integers(min_size, max_size))
    z = draw(
        st.lists(st.floats(-15, 15, allow_nan=False, allow_infinity=False), min_size=n, max_size=n)
    )
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    # Up to 5e5 ms: with the 1 s half-life that is 500 half-lives, so the renormalisation
    # path (>64 half-lives) is exercised while weights stay far from float underflow.
    ts = draw(st.lists(st.integers(1_700_000_000_000, 1_700_000_500_000), min_size=n, max_size=n))
    return np.array(z, dtype=float), np.array(y), np.array(ts, dtype=np.int64)


# --------------------------------------------------------------------------- binning


def test_default_grid_has_uniform_bins_plus_aligned_ece_edges():
    h = LogitHistogram()
    edges = h.bin_edges
    assert edges[0] == -12.0 and edges[-1] == 12.0
    assert edges.size == 201 + 14
    uniform = np.linspace(-12, 12, 201)
    assert np.isin(uniform, edges).all()
    aligned = np.setdiff1d(edges, uniform)
    expected = np.log(np.arange(1, 15) / 15) - np.log1p(-np.arange(1, 15) / 15)
    np.testing.assert_allclose(np.sort(aligned), expected, atol=2e-9)
    # Without alignment: exactly the uniform grid.
    np.testing.assert_array_equal(LogitHistogram(ece_bins=None).bin_edges, uniform)


def test_bins_are_right_closed_with_overflow_bins():
    h = LogitHistogram(n_bins=4, lo=-2.0, hi=2.0, ece_bins=None)
    for z in (-5.0, -2.0, -1.5, -1.0, 0.0, 1e-12, 2.0, 2.5, 1e6):
        h.update(z, 0, ts=0)
    z, w, _, _ = h.arrays()
    # bins: (-inf,-2], (-2,-1], (-1,0], (0,1], (1,2], (2,inf)
    assert w.tolist() == [2.0, 2.0, 1.0, 1.0, 1.0, 2.0]
    np.testing.assert_allclose(z, [-3.5, -1.25, 0.0, 1e-12, 2.0, (2.5 + 1e6) / 2])


@pytest.mark.parametrize("half_life", [None, 30_000.0])
def test_agrees_with_batch_reference_at_every_step(half_life):
    rng = np.random.default_rng(5)
    n = 200
    z = rng.normal(-1.5, 3.0, n)
    y = (rng.random(n) < sigmoid(z)).astype(int)
    ts = np.sort(rng.integers(0, 600_000, n))
    h = LogitHistogram(half_life_ms=half_life)
    for k in range(n):
        h.update(float(z[k]), int(y[k]), int(ts[k]))
        if k % 37 == 0 or k == n - 1:
            at = int(ts[k])
            got = h.arrays(at_ts=at)
            want = batch_reference(h, z[: k + 1], y[: k + 1], ts[: k + 1], at)
            for g, e in zip(got, want, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
            assert h.total_weight(at_ts=at) == pytest.approx(want[1].sum(), rel=1e-12)


@SETTINGS
@given(events=event_batches(min_size=1), half_life=HALF_LIVES)
def test_update_many_equals_update_one_by_one(events, half_life):
    z, y, ts = events
    config = {"half_life_ms": half_life}
    a = build(config, z, y, ts)
    b = build(config, z, y, ts, one_by_one=True)
    assert_same_state(a, b, at=int(ts.max()))


@SETTINGS
@given(events=event_batches(min_size=1), half_life=HALF_LIVES, data=st.data())
def test_decay_weights_equal_direct_computation(events, half_life, data):
    z, y, ts = events
    h = build({"half_life_ms": half_life}, z, y, ts, one_by_one=True)
    at = data.draw(st.integers(int(ts.max()), int(ts.max()) + 10_000_000))
    direct = decay_weights(ts, at, half_life)
    assert h.total_weight(at_ts=at) == pytest.approx(direct.sum(), rel=1e-9, abs=1e-300)
    _, w, pos, _ = h.arrays(at_ts=at)
    assert pos.sum() == pytest.approx((direct * y).sum(), rel=1e-9, abs=1e-300)
    assert w.sum() == pytest.approx(direct.sum(), rel=1e-9, abs=1e-300)


def test_extreme_time_spans_do_not_overflow():
    h = LogitHistogram(half_life_ms=1.0)
    h.update(0.0, 1, ts=0)
    # 1e6 half-lives later: the first event has decayed to exactly nothing, no inf/nan.
    for k in range(1, 2001):
        h.update(1.0, k % 2, ts=k * 500)
    assert h.total_weight() == pytest.approx(
        sum(2.0 ** (-(1_000_000 - k * 500)) for k in range(1, 2001))
    )
    state = h.to_dict()
    assert all(math.isfinite(v) for v in state["weight"])
    assert max(state["weight"]) < 2.0**65
    # A very late event (far older than the reference) simply weighs ~0.
    h.update(-1.0, 1, ts=0)
    assert math.isfinite(h.total_weight())
    assert h.n_events == 2002


def test_at_ts_before_reference_extrapolates_and_refuses_overflow():
    h = LogitHistogram(half_life_ms=1_000)
    h.update(0.0, 1, ts=10_000)
    assert h.total_weight(at_ts=9_000) == pytest.approx(2.0)
    with pytest.raises(InvalidInputError):
        h.total_weight(at_ts=10_000 - 1_000 * 600)


# --------------------------------------------------------------------------- merge


@SETTINGS
@given(
    events=event_batches(max_size=80),
    half_life=HALF_LIVES,
    cuts=st.lists(st.integers(0, 80), min_size=2, max_size=2),
    order=st.permutations(range(80)),
)
def test_merge_is_commutative_associative_and_equals_sequential(events, half_life, cuts, order):
    z, y, ts = events
    n = len(z)
    perm = np.array([i for i in order if i < n], dtype=int)
    c1, c2 = sorted(min(c, n) for c in cuts)
    parts = [perm[:c1], perm[c1:c2], perm[c2:]]
    config = {"half_life_ms": half_life}
    a, b, c = (build(config, z[p], y[p], ts[p]) for p in parts)
    seq = build(config, z, y, ts, one_by_one=True)
    before = [h.to_dict() for h in (a, b, c)]
    ab = a.merge(b)
    ba = b.merge(a)
    # Commutative bit for bit.
    assert ab.to_dict() == ba.to_dict()
    left = ab.merge(c)
    right = a.merge(b.merge(c))
    # merge returns a new sketch and never mutates an operand.
    assert [h.to_dict() for h in (a, b, c)] == before
    if n == 0:
        assert left.total_weight() == right.total_weight() == 0.0
        return
    at = int(ts.max())
    assert_same_state(left, right, at)
    assert_same_state(left, seq, at)


def test_merge_with_empty_and_identity():
    h = LogitHistogram(half_life_ms=5_000)
    h.update_many([0.5, -1.0], [1, 0], [100, 200])
    empty = LogitHistogram(half_life_ms=5_000)
    assert h.merge(empty).to_dict() == h.to_dict()
    assert empty.merge(h).to_dict() == h.to_dict()
    assert empty.merge(empty).total_weight() == 0.0


def test_merge_refuses_other_configs():
    with pytest.raises(ConfigError):
        LogitHistogram().merge(LogitHistogram(half_life_ms=1_000))
    with pytest.raises(ConfigError):
        LogitHistogram().merge(LogitHistogram(n_bins=100))
    with pytest.raises(TypeError):
        LogitHistogram().merge({"v": 1})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ECE


@st.composite
def scored_events(draw):
    n = draw(st.integers(1, 120))
    edge_scores = [k / 15 for k in range(16)] + [0.1, 0.3, 0.5, 0.7, 0.9]
    score = st.one_of(st.floats(0.0, 1.0), st.sampled_from(edge_scores))
    s = np.array(draw(st.lists(score, min_size=n, max_size=n)))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=float)
    ts = np.array(draw(st.lists(st.integers(0, 100_000), min_size=n, max_size=n)), dtype=np.int64)
    return s, y, ts


def decoder_logit(s: np.ndarray) -> np.ndarray:
    # What the input decoder does (DESIGN §3): clip, then log(p / (1 - p)).
    p = np.clip(s, 1e-6, 1 - 1e-6)
    return np.log(p / (1.0 - p))


@SETTINGS
@given(events=scored_events(), half_life=st.sampled_from([None, 10_000.0]))
def test_ece_exact_for_aligned_bins_and_within_bound_otherwise(events, half_life):
    s, y, ts = events
    z = decoder_logit(s)
    h = build({"half_life_ms": half_life}, z, y, ts)
    p = np.clip(s, 1e-6, 1 - 1e-6)
    w = decay_weights(ts, int(ts.max()), half_life)
    for n_bins in (15, 5, 3, 1):
        # Exact: every fine bin lies inside one ECE bin, even for scores exactly on an edge.
        assert h.ece_error_bound(n_bins) == 0.0
        assert h.ece(n_bins) == pytest.approx(raw_ece(p, y, w, n_bins), abs=1e-9)
    for n_bins in (10, 7, 20, 40):
        bound = h.ece_error_bound(n_bins)
        assert 0.0 <= bound <= 2.0
        assert abs(h.ece(n_bins) - raw_ece(p, y, w, n_bins)) <= bound + 1e-9


def test_ece_typical_error_far_below_worst_case_bound():
    rng = np.random.default_rng(11)
    n = 100_000
    p_true = rng.beta(2, 8, n)
    y = (rng.random(n) < p_true).astype(float)
    z = 1.3 * np.log(p_true / (1 - p_true))  # an over-confident model
    h = LogitHistogram()
    h.update_many(z, y, 0)
    p = sigmoid(z)
    w = np.ones(n)
    assert h.ece(15) == pytest.approx(raw_ece(p, y, w, 15), abs=1e-12)
    for n_bins in (10, 20):
        err = abs(h.ece(n_bins) - raw_ece(p, y, w, n_bins))
        bound = h.ece_error_bound(n_bins)
        assert err <= bound
        # Measured: err ~ 2e-4 with bounds ~ 0.1-0.2 (0.12-logit bins, Beta(2, 8) scores).
        assert err < 2e-3


def test_ece_of_empty_sketch_is_nan():
    assert math.isnan(LogitHistogram().ece())
    assert LogitHistogram().ece_error_bound(10) == 0.0
    with pytest.raises(ConfigError):
        LogitHistogram().ece(0)


# --------------------------------------------------------------------------- persistence


@SETTINGS
@given(events=event_batches(), half_life=HALF_LIVES)
def test_to_dict_from_dict_round_trip_through_json(events, half_life):
    z, y, ts = events
    h = build({"half_life_ms": half_life}, z, y, ts)
    d = h.to_dict()
    assert d["v"] == 1
    back = LogitHistogram.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    if len(z):
        assert_same_state(back, h, at=int(ts.max()), rtol=0.0)
        # A restored sketch keeps working exactly like the original.
        h.update(0.3, 1, int(ts.max()) + 7)
        back.update(0.3, 1, int(ts.max()) + 7)
        assert back.to_dict() == h.to_dict()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=2),
        lambda d: d.pop("weight"),
        lambda d: d.update(bins=[10_000]),
        lambda d: d.update(weight=[float("nan")]),
        lambda d: d.update(weight=[-1.0]),
        lambda d: d.update(n_bins=0),
        lambda d: d.update(half_life_ms=-5),
        lambda d: d.update(n_positives=99),
        lambda d: d.update(ref_ts="x"),
        lambda d: d.update(
            bins=[3, 3], weight=[1, 1], positives=[0, 0], sum_p=[0, 0], sum_z=[0, 0]
        ),
    ],
)
def test_from_dict_rejects_malformed_state(mutate):
    h = LogitHistogram(half_life_ms=1_000)
    h.update(0.0, 1, ts=5)
    d = h.to_dict()
    mutate(d)
    with pytest.raises(StateError):
        LogitHistogram.from_dict(d)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_bins": 0},
        {"n_bins": 2.5},
        {"n_bins": True},
        {"lo": 1.0, "hi": 1.0},
        {"lo": float("nan")},
        {"hi": float("inf")},
        {"half_life_ms": 0},
        {"half_life_ms": float("inf")},
        {"ece_bins": 0},
        {"ece_bins": 1.5},
    ],
)
def test_bad_hyper_parameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        LogitHistogram(**kwargs)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((float("nan"), 1, 0), "score_range"),
        ((float("inf"), 1, 0), "score_range"),
        (("0.5", 1, 0), "score_range"),
        ((0.5, 2, 0), "schema"),
        ((0.5, 0.5, 0), "schema"),
        ((0.5, 1, 1.5), "schema"),
        ((0.5, 1, True), "schema"),
    ],
)
def test_bad_events_are_invalid_input(args, reason):
    h = LogitHistogram()
    with pytest.raises(InvalidInputError) as info:
        h.update(*args)
    assert info.value.reason == reason
    assert h.n_events == 0


def test_bad_batch_changes_nothing():
    h = LogitHistogram(half_life_ms=1_000)
    h.update_many([0.1, 0.2], [0, 1], 10)
    before = h.to_dict()
    for args in (
        ([0.1, float("nan")], [0, 1], 10),
        ([0.1, 0.2], [0, 3], 10),
        ([0.1, 0.2], [0, 1], [10, 11, 12]),
        ([0.1, 0.2], [0, 1], [10.5, 11.0]),
        ([0.1, 0.2], [0], 10),
        (["a", 0.2], [0, 1], 10),
        ([0.1, 0.2], ["x", 1], 10),
    ):
        with pytest.raises(InvalidInputError):
            h.update_many(*args)
    with pytest.raises(InvalidInputError):
        h.update_many([0.1], [1], 10, weights=[0.0])
    assert h.to_dict() == before


def test_weights_and_counts():
    h = LogitHistogram()
    h.update(0.0, 1, 5, weight=2.5)
    h.update_many([1.0, 2.0], [0, 1], [7, 3], weights=[0.5, 1.0])
    assert h.total_weight() == 4.0
    assert (h.n_events, h.n_positives, h.min_ts, h.max_ts) == (3, 2, 3, 7)


def test_doctests():
    assert doctest.testmod(module).failed == 0
