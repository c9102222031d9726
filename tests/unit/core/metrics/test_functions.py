"""Batch calibration metrics against independent references (loops, scikit-learn, Monte Carlo)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from tests.unit.core.metrics._reference import direct_eces, ref_bin, ref_metrics
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.metrics import (
    CalibrationReport,
    calibration_metrics,
    ece_bin_edges,
    ece_bin_index,
    ece_floor,
    ece_floor_quantile,
    ece_from_bins,
    rebin_to_ece_bins,
    simulate_null_ece,
)

REL = 1e-9
FIELDS = (
    "n",
    "positives",
    "expected",
    "ece",
    "mce",
    "brier",
    "nll",
    "ece_floor",
    "debiased_l2_ece",
    "citl_ratio",
    "citl_z",
    "spiegelhalter_z",
)


def _data(n: int, seed: int, a: float = 2.0, b: float = 8.0, distort: float = 1.0):
    """Scores ~ Beta(a, b); true probability = sigmoid(distort * logit(p) + 0.2 (distort-1))."""
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, n)
    z = np.log(p / (1 - p))
    pi = 1 / (1 + np.exp(-(distort * z + 0.2 * (distort - 1))))
    y = (rng.random(n) < pi).astype(float)
    return p, y, pi


def _check_against_reference(r: CalibrationReport, ref: dict) -> None:
    for name in FIELDS:
        assert getattr(r, name) == pytest.approx(ref[name], rel=REL, abs=1e-12), name
    w, yb, pb = ref["bins"]
    for b, rb in enumerate(r.reliability):
        assert rb.n == pytest.approx(w[b], rel=REL)
        assert rb.positives == pytest.approx(yb[b], rel=REL, abs=1e-12)
        if w[b] > 0:
            assert rb.mean_p == pytest.approx(pb[b] / w[b], rel=REL)
            assert rb.frac_pos == pytest.approx(yb[b] / w[b], rel=REL, abs=1e-12)
        else:
            assert math.isnan(rb.mean_p) and math.isnan(rb.frac_pos)
    assert r.l2_ece_debiased == pytest.approx(math.sqrt(max(ref["debiased_l2_ece"], 0.0)))


# ------------------------------------------------------------------ agreement with references


@pytest.mark.parametrize("n,seed,distort", [(50, 1, 1.0), (700, 2, 0.7), (3000, 3, 1.3)])
def test_unweighted_metrics_match_loop_reference(n: int, seed: int, distort: float) -> None:
    p, y, _ = _data(n, seed, distort=distort)
    _check_against_reference(calibration_metrics(p, y), ref_metrics(p, y))


@pytest.mark.parametrize("seed", [4, 5])
def test_weighted_metrics_match_loop_reference(seed: int) -> None:
    p, y, _ = _data(1500, seed, a=1.0, b=3.0, distort=0.8)
    w = np.random.default_rng(seed).exponential(1.0, p.size)
    w[::7] = 0.0  # zero weights are allowed and must be inert
    _check_against_reference(calibration_metrics(p, y, w), ref_metrics(p, y, w))


def test_brier_and_log_loss_match_sklearn() -> None:
    p, y, _ = _data(5000, 6, distort=0.6)
    w = np.random.default_rng(0).uniform(0.1, 2.0, p.size)
    r = calibration_metrics(p, y)
    assert r.brier == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert r.nll == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)
    rw = calibration_metrics(p, y, w)
    assert rw.brier == pytest.approx(brier_score_loss(y, p, sample_weight=w), rel=1e-12)
    assert rw.nll == pytest.approx(log_loss(y, p, sample_weight=w, labels=[0, 1]), rel=1e-12)


def test_log_loss_floors_the_observed_label_probability_at_1e_15() -> None:
    assert calibration_metrics([0.0, 1.0], [1, 0]).nll == pytest.approx(-math.log(1e-15))
    assert calibration_metrics([0.0, 1.0], [0, 1]).nll == 0.0
    assert calibration_metrics([1e-20], [1]).nll == pytest.approx(-math.log(1e-15))


def test_reliability_matches_sklearn_calibration_curve() -> None:
    p, y, _ = _data(20_000, 7, a=1.2, b=2.0, distort=0.7)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    bins = [b for b in calibration_metrics(p, y).reliability if b.n > 0]
    assert len(bins) == len(prob_true)
    np.testing.assert_allclose([b.frac_pos for b in bins], prob_true, rtol=1e-12)
    np.testing.assert_allclose([b.mean_p for b in bins], prob_pred, rtol=1e-12)


def test_integer_weights_equal_duplicated_events_for_first_order_metrics() -> None:
    p, y, _ = _data(400, 8, distort=0.8)
    k = np.random.default_rng(1).integers(0, 4, p.size)
    rw = calibration_metrics(p, y, k)
    rd = calibration_metrics(np.repeat(p, k), np.repeat(y, k))
    for name in ("n", "positives", "ece", "mce", "brier", "nll", "citl_ratio"):
        assert getattr(rw, name) == pytest.approx(getattr(rd, name), rel=1e-12), name


def test_perfect_and_hand_computed_cases() -> None:
    r = calibration_metrics([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 0])
    assert r.ece == pytest.approx(0.25)
    assert r.mce == pytest.approx(0.4)
    assert r.citl_ratio == pytest.approx(1 / 2.0)
    r = calibration_metrics([0.5] * 4, [0, 1, 0, 1])
    assert r.ece == 0.0 and r.mce == 0.0 and r.citl_z == 0.0
    assert r.ece_debiased == 0.0 and r.ece_ci[0] == 0.0


# ------------------------------------------------------------------ bin edges


def test_bin_edges_are_k_over_n() -> None:
    assert ece_bin_edges(15).tolist() == [k / 15 for k in range(16)]


def test_exact_edges_zero_and_one() -> None:
    edges = [k / 15 for k in range(16)]
    p = [0.0, 1.0] + edges[1:-1] + [float(np.nextafter(e, 1.0)) for e in edges[1:-1]]
    want = [0, 14, *range(14), *range(1, 15)]
    assert ece_bin_index(p).tolist() == want
    assert [ref_bin(v) for v in p] == want
    # Every score in its own bin: the report's bin counts say where each went.
    for v, b in zip(p, want, strict=True):
        counts = [rb.n for rb in calibration_metrics([v], [1]).reliability]
        assert counts.index(1.0) == b


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.integers(1, 40))
def test_bin_index_matches_loop_reference(p: list[float], n_bins: int) -> None:
    assert ece_bin_index(p, n_bins).tolist() == [ref_bin(v, n_bins) for v in p]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.data())
def test_bin_index_on_every_edge_and_neighbour(n_bins: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n_bins))
    e = k / n_bins
    p = [e, float(np.nextafter(e, 0.0)), float(np.nextafter(e, 1.0))]
    p = [min(max(v, 0.0), 1.0) for v in p]
    assert ece_bin_index(p, n_bins).tolist() == [ref_bin(v, n_bins) for v in p]


# ------------------------------------------------------------------ noise floor


@pytest.mark.parametrize("n,sims", [(200, 4000), (10_000, 600)])
def test_analytic_floor_matches_monte_carlo_mean(n: int, sims: int) -> None:
    p, _, _ = _data(n, 9)  # Beta(2, 8): CTR 0.2
    labels = np.random.default_rng(10).random((sims, n)) < p
    mc = direct_eces(p, labels).mean()
    assert ece_floor(p) == pytest.approx(mc, rel=0.04)
    assert calibration_metrics(p, labels[0]).ece_floor == pytest.approx(ece_floor(p), rel=1e-12)


def test_floor_at_ctr_0_2_and_n_200_is_about_0_06() -> None:
    p, _, _ = _data(200, 11)
    assert 0.05 < ece_floor(p) < 0.07  # DESIGN §5: 0.87 / sqrt(n)


def test_floor_quantile_matches_brute_force_simulation() -> None:
    p, _, _ = _data(300, 12)
    labels = np.random.default_rng(13).random((4000, p.size)) < p
    brute = direct_eces(p, labels)
    sims = simulate_null_ece(p, n_sims=4000, seed=3)
    assert sims.mean() == pytest.approx(brute.mean(), rel=0.03)
    for q in (0.5, 0.95):
        assert ece_floor_quantile(p, q=q, n_sims=4000, seed=3) == pytest.approx(
            np.quantile(brute, q), rel=0.05
        )


def test_floor_quantile_weighted_path_and_determinism() -> None:
    p, _, _ = _data(400, 14)
    a = ece_floor_quantile(p, n_sims=1500, seed=5)
    assert a == ece_floor_quantile(p, n_sims=1500, seed=5)
    # Unit weights take the exact Bernoulli path: the same distribution.
    b = ece_floor_quantile(p, n_sims=1500, seed=6, weights=np.ones(p.size))
    assert b == pytest.approx(a, rel=0.06)
    assert ece_floor(p) < a


def test_calibrated_ece_rarely_exceeds_floor_quantile() -> None:
    p, _, _ = _data(1000, 15)
    f95 = ece_floor_quantile(p, q=0.95, n_sims=2000, seed=0)
    rng = np.random.default_rng(16)
    labels = rng.random((400, p.size)) < p
    share = float(np.mean(direct_eces(p, labels) > f95))
    assert 0.01 < share < 0.10


# ------------------------------------------------------------------ debiasing and interval


def _true_ece(p: np.ndarray, pi: np.ndarray) -> float:
    idx = np.array([ref_bin(v) for v in p])
    return sum(abs(pi[idx == b].sum() - p[idx == b].sum()) for b in range(15)) / p.size


@pytest.mark.parametrize("distort", [0.7, 1.0])
def test_ece_interval_coverage_by_simulation(distort: float) -> None:
    p, _, pi = _data(2000, 17, distort=distort)
    truth = _true_ece(p, pi)
    rng = np.random.default_rng(18)
    reps = 200
    below = above = 0
    plug_err = deb_err = 0.0
    eces, ses = [], []
    for _ in range(reps):
        r = calibration_metrics(p, (rng.random(p.size) < pi).astype(float))
        eces.append(r.ece)
        ses.append(r.ece_se)
        lo, hi = r.ece_ci
        assert lo <= r.ece_debiased <= hi
        below += truth < lo
        above += truth > hi
        plug_err += r.ece - truth
        deb_err += r.ece_debiased - truth
    assert (below + above) / reps <= 0.10  # nominal 0.05
    assert below / reps <= 0.07 and above / reps <= 0.07
    assert abs(deb_err) <= abs(plug_err)  # the correction reduces the bias
    # The standard error matches the spread of the plug-in ECE (a bit high near 0: safe side).
    assert 0.8 < np.mean(ses) / np.std(eces) < (1.25 if distort != 1.0 else 1.5)


def test_debiased_l2_is_unbiased_for_squared_gaps() -> None:
    p, _, pi = _data(3000, 19, distort=0.8)
    idx = np.array([ref_bin(v) for v in p])
    truth = sum(
        (idx == b).mean() * (pi[idx == b].mean() - p[idx == b].mean()) ** 2
        for b in range(15)
        if (idx == b).any()
    )
    rng = np.random.default_rng(20)
    est = [calibration_metrics(p, rng.random(p.size) < pi).debiased_l2_ece for _ in range(300)]
    se = np.std(est) / math.sqrt(len(est))
    # Unbiased up to within-bin heterogeneity of pi (a small, positive-definite term).
    assert abs(np.mean(est) - truth) < 4 * se + 0.05 * truth


# ------------------------------------------------------------------ histograms of other bins


def test_ece_from_bins_with_nested_fine_bins_is_exact() -> None:
    p, y, _ = _data(5000, 21, distort=0.7)
    fine = ece_bin_index(p, 15 * 4)  # 60 bins nested in the 15 ECE bins
    counts = np.bincount(fine, minlength=60)
    pos = np.bincount(fine, y, minlength=60)
    sp = np.bincount(fine, p, minlength=60)
    assert ece_from_bins(counts, pos, sp) == pytest.approx(calibration_metrics(p, y).ece, 1e-12)


def test_ece_from_logit_bins_assigns_by_mean_score() -> None:
    p, y, _ = _data(5000, 22, distort=0.7)
    z = np.log(p / (1 - p))
    fine = np.clip(np.floor((z + 8) / 0.25).astype(int), 0, 63)  # 64 logit bins
    counts = np.bincount(fine, minlength=64).astype(float)
    pos = np.bincount(fine, y, minlength=64)
    sp = np.bincount(fine, p, minlength=64)
    # Reference: each fine bin whole into the ECE bin of its mean score.
    w = np.zeros(15)
    yy = np.zeros(15)
    ss = np.zeros(15)
    for c, a, s in zip(counts, pos, sp, strict=True):
        if c > 0:
            b = ref_bin(s / c)
            w[b] += c
            yy[b] += a
            ss[b] += s
    want = np.abs(yy - ss).sum() / w.sum()
    assert ece_from_bins(counts, pos, sp) == pytest.approx(want, rel=1e-12)
    got_w, got_y, got_s = rebin_to_ece_bins(counts, pos, sp)
    np.testing.assert_allclose(got_w, w)
    np.testing.assert_allclose(got_y, yy)
    np.testing.assert_allclose(got_s, ss)
    # Narrow logit bins: close to the event-level ECE.
    assert ece_from_bins(counts, pos, sp) == pytest.approx(calibration_metrics(p, y).ece, abs=5e-3)
    assert math.isnan(ece_from_bins([0, 0], [0, 0], [0, 0]))


# ------------------------------------------------------------------ shapes, errors, serialisation


def test_empty_input_gives_nan_report() -> None:
    r = calibration_metrics([], [])
    assert r.n == 0.0 and math.isnan(r.ece) and math.isnan(r.nll)
    d = r.to_dict()
    assert d["ece"] is None and d["v"] == 1
    json.dumps(d, allow_nan=False)


def test_report_round_trip_through_json() -> None:
    p, y, _ = _data(300, 23, a=0.5, b=0.5)
    r = calibration_metrics(p, y)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    back = CalibrationReport.from_dict(d)
    assert back.to_dict() == r.to_dict()
    assert back.ece == r.ece and back.ece_ci == r.ece_ci
    with pytest.raises(InvalidInputError):
        CalibrationReport.from_dict({**d, "v": 2})


@pytest.mark.parametrize(
    "p,y,w,reason",
    [
        ([0.5, 1.5], [0, 1], None, "score_range"),
        ([0.5, math.nan], [0, 1], None, "score_range"),
        ([0.5, -0.0001], [0, 1], None, "score_range"),
        ([0.5, 0.5], [0, 2], None, "schema"),
        ([0.5, 0.5], [0], None, "schema"),
        ([0.5, 0.5], [0, 1], [1.0, -1.0], "schema"),
        ([0.5, 0.5], [0, 1], [1.0, math.inf], "schema"),
        ([[0.5]], [[1]], None, "schema"),
    ],
)
def test_bad_input_raises_invalid_input(p, y, w, reason: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        calibration_metrics(p, y, w)
    assert err.value.reason == reason


def test_bad_score_message_names_the_value() -> None:
    with pytest.raises(
        InvalidInputError, match=r"score must be a finite number in \[0, 1\]; got nan"
    ):
        calibration_metrics([math.nan], [0])


@pytest.mark.parametrize("kwargs", [{"n_bins": 0}, {"n_bins": 2.5}, {"ci_level": 1.0}])
def test_bad_hyper_parameters_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        calibration_metrics([0.5], [1], **kwargs)


def test_other_bin_counts() -> None:
    p, y, _ = _data(1000, 24)
    r = calibration_metrics(p, y, n_bins=10)
    ref = ref_metrics(p, y, n_bins=10)
    assert r.n_bins == 10 and len(r.reliability) == 10
    assert r.ece == pytest.approx(ref["ece"], rel=REL)
