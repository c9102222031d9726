"""Fitting: recovery, agreement with scikit-learn / scipy, sketch fits vs raw fits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from worker.core.calibrators import (
    IdentityCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
)
from worker.core.calibrators.temperature import T_MAX, T_MIN
from worker.core.errors import InvalidInputError
from worker.core.sketches import LogitHistogram


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_data(n: int, seed: int, overconfidence: float = 1.6):
    """True p ~ Beta(2, 8); the model's logit is ``overconfidence`` x the true logit."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 8, n)
    y = (rng.random(n) < p).astype(float)
    z = overconfidence * np.log(p / (1 - p))
    return z, y


@pytest.fixture(scope="module")
def data_100k():
    return make_data(100_000, 42)


@pytest.fixture(scope="module")
def sketch_100k(data_100k):
    z, y = data_100k
    h = LogitHistogram()
    h.update_many(z, y, 0)
    return h


def nll(p, y, w=None):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    ll = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(ll, weights=w))


def sklearn_logistic(z, y, w=None):
    # C=inf is the unregularised fit (scikit-learn >= 1.8 deprecates penalty=None for it).
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000)
    lr.fit(z[:, None], y, sample_weight=w)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


# --------------------------------------------------------------------------- temperature


def test_temperature_recovers_overconfidence(data_100k):
    z, y = data_100k
    t = TemperatureCalibrator.fit(z, y).temperature
    assert 1.55 <= t <= 1.67


def test_temperature_is_the_nll_minimiser(data_100k):
    z, y = data_100k
    w = np.random.default_rng(1).uniform(0.2, 2.0, z.size)

    def loss(log_t: float) -> float:
        return nll(sigmoid(z / np.exp(log_t)), y, w)

    ref = np.exp(
        minimize_scalar(loss, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10}).x
    )
    assert TemperatureCalibrator.fit(z, y, w).temperature == pytest.approx(ref, rel=1e-6)


def test_temperature_clamps_degenerate_data():
    z = np.array([-2.0, -1.0, 1.0, 2.0])
    # Anti-correlated labels: the NLL keeps falling as T grows -> upper bound.
    assert TemperatureCalibrator.fit(z, [1, 1, 0, 0]).temperature == T_MAX
    # Separable: T -> 0 -> lower bound.
    assert TemperatureCalibrator.fit(z, [0, 0, 1, 1]).temperature == T_MIN
    # No signal at all.
    assert TemperatureCalibrator.fit(np.zeros(4), [0, 1, 0, 1]).temperature == 1.0


# --------------------------------------------------------------------------- platt


def test_platt_matches_sklearn_unregularised(data_100k):
    z, y = data_100k
    cal = PlattCalibrator.fit(z, y)
    a, b = sklearn_logistic(z, y)
    assert cal.a == pytest.approx(a, abs=1e-4)
    assert cal.b == pytest.approx(b, abs=1e-4)
    # A calibrated model's fit is near identity; this one is over-confident by 1.6.
    assert cal.a == pytest.approx(1 / 1.6, abs=0.02)


def test_platt_matches_sklearn_weighted():
    rng = np.random.default_rng(3)
    z = rng.normal(-2, 1.5, 20_000)
    y = (rng.random(z.size) < sigmoid(0.8 * z + 0.4)).astype(float)
    w = rng.exponential(1.0, z.size)
    cal = PlattCalibrator.fit(z, y, w)
    a, b = sklearn_logistic(z, y, w)
    assert cal.a == pytest.approx(a, abs=1e-4)
    assert cal.b == pytest.approx(b, abs=1e-4)


def test_platt_stays_finite_on_separable_and_one_class_data():
    z = np.array([-2.0, -1.0, 1.0, 2.0])
    for y in ([0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]):
        cal = PlattCalibrator.fit(z, y)
        assert np.isfinite([cal.a, cal.b]).all()
        p = cal.apply_logit(z)
        assert np.abs(p - np.array(y)).max() < 0.01


# --------------------------------------------------------------------------- isotonic


@pytest.mark.parametrize("weighted", [False, True])
def test_isotonic_reproduces_sklearn_predict(weighted):
    rng = np.random.default_rng(4)
    s = rng.beta(2, 6, 5_000)
    s[:50] = np.round(s[:50], 2)  # ties
    y = (rng.random(s.size) < s**1.3).astype(float)
    w = rng.uniform(0.1, 3.0, s.size) if weighted else None
    cal = IsotonicCalibrator.fit_scores(s, y, w)
    ir = IsotonicRegression(out_of_bounds="clip", increasing=True).fit(s, y, sample_weight=w)
    grid = np.concatenate([np.linspace(0, 1, 3001), s])
    np.testing.assert_allclose(cal.apply(grid), ir.predict(grid), rtol=0, atol=1e-12)
    x = np.array(cal.params()["x"])
    yy = np.array(cal.params()["y"])
    assert (np.diff(x) > 0).all() and x[0] >= 0 and x[-1] <= 1
    assert (np.diff(yy) >= 0).all()
    # Compacted: fewer breakpoints than distinct scores.
    assert x.size < np.unique(s).size


def test_isotonic_fit_from_logits_uses_scores(data_100k):
    z, y = data_100k
    z, y = z[:5_000], y[:5_000]
    cal = IsotonicCalibrator.fit(z, y)
    s = sigmoid(z)
    ir = IsotonicRegression(out_of_bounds="clip").fit(s, y)
    np.testing.assert_allclose(cal.apply_logit(z), ir.predict(s), atol=1e-12)


# --------------------------------------------------------------------------- sketch fits


def test_sketch_fits_are_within_stated_tolerance_of_raw_fits(data_100k, sketch_100k):
    z, y = data_100k
    zh, yh = make_data(100_000, 43)
    grid = np.linspace(-8, 4, 1201)
    # Temperature: |T_sketch / T_raw - 1| <= 1e-3 (measured ~3e-4 at most).
    t_raw = TemperatureCalibrator.fit(z, y)
    t_sk = TemperatureCalibrator.fit_sketch(sketch_100k)
    assert t_sk.temperature == pytest.approx(t_raw.temperature, rel=1e-3)
    # Platt: |da|, |db| <= 2e-3 (measured <= 7e-4); probabilities within 1e-3.
    p_raw = PlattCalibrator.fit(z, y)
    p_sk = PlattCalibrator.fit_sketch(sketch_100k)
    assert abs(p_sk.a - p_raw.a) <= 2e-3 and abs(p_sk.b - p_raw.b) <= 2e-3
    assert np.abs(p_sk.apply_logit(grid) - p_raw.apply_logit(grid)).max() <= 1e-3
    # Isotonic: the sketch fit is a coarser step function; holdout NLL within 1e-3 nats and
    # mean |dp| on holdout within 0.01 (measured 3e-5 and 0.004).
    i_raw = IsotonicCalibrator.fit(z, y)
    i_sk = IsotonicCalibrator.fit_sketch(sketch_100k)
    assert abs(nll(i_sk.apply_logit(zh), yh) - nll(i_raw.apply_logit(zh), yh)) <= 1e-3
    assert np.abs(i_sk.apply_logit(zh) - i_raw.apply_logit(zh)).mean() <= 0.01
    # All of them beat the raw model on the holdout.
    base = nll(sigmoid(zh), yh)
    for cal in (t_sk, p_sk, i_sk):
        assert nll(cal.apply_logit(zh), yh) < base - 0.005


def test_sketch_fit_with_decay_matches_weighted_raw_fit():
    # The sketch's decay must act like per-event weights 2**(-(T - t) / h).
    z1, y1 = make_data(30_000, 7, overconfidence=1.0)
    z2, y2 = make_data(30_000, 8, overconfidence=2.0)
    z = np.concatenate([z1, z2])
    y = np.concatenate([y1, y2])
    ts = np.concatenate([np.zeros(z1.size), np.full(z2.size, 3_600_000)]).astype(np.int64)
    h = LogitHistogram(half_life_ms=1_800_000)
    h.update_many(z, y, ts)
    w = 2.0 ** (-(3_600_000 - ts) / 1_800_000)  # old half weighs 1/4
    t_raw = TemperatureCalibrator.fit(z, y, w).temperature
    assert TemperatureCalibrator.fit_sketch(h).temperature == pytest.approx(t_raw, rel=1e-3)
    p_raw = PlattCalibrator.fit(z, y, w)
    p_sk = PlattCalibrator.fit_sketch(h)
    assert p_sk.a == pytest.approx(p_raw.a, abs=2e-3)
    assert p_sk.b == pytest.approx(p_raw.b, abs=2e-3)
    # And differs from the undecayed fit: decay matters.
    assert abs(TemperatureCalibrator.fit(z, y).temperature - t_raw) > 0.05


def test_identity_fit_and_fit_scores():
    assert IdentityCalibrator.fit([0.0, 1.0], [0, 1]) == IdentityCalibrator()
    h = LogitHistogram()
    h.update(0.0, 1, 0)
    assert IdentityCalibrator.fit_sketch(h) == IdentityCalibrator()
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    y = np.array([0, 1, 1, 1, 0, 0])
    z = np.log(np.clip(s, 1e-6, 1 - 1e-6) / (1 - np.clip(s, 1e-6, 1 - 1e-6)))
    assert PlattCalibrator.fit_scores(s, y).a == pytest.approx(PlattCalibrator.fit(z, y).a)


@pytest.mark.parametrize(
    "cls", [IdentityCalibrator, TemperatureCalibrator, PlattCalibrator, IsotonicCalibrator]
)
def test_fits_reject_bad_training_data(cls):
    with pytest.raises(InvalidInputError):
        cls.fit([], [])
    with pytest.raises(InvalidInputError):
        cls.fit([0.0, 1.0], [0, 1], [0.0, 0.0])
    with pytest.raises(InvalidInputError):
        cls.fit([0.0, float("nan")], [0, 1])
    with pytest.raises(InvalidInputError):
        cls.fit([0.0, 1.0], [0, 2])
    with pytest.raises(InvalidInputError):
        cls.fit([0.0, 1.0], [0, 1], [1.0, -1.0])
    with pytest.raises(InvalidInputError):
        cls.fit([0.0, 1.0], [0])
    with pytest.raises(InvalidInputError):
        cls.fit_sketch(LogitHistogram())
