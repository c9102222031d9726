"""Hierarchical (empirical-Bayes) shrinkage of per-user calibrators toward the parent's."""

from __future__ import annotations

import numpy as np
import pytest

from worker.core.calibrators import (
    HierarchicalShrinkage,
    IdentityCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
)
from worker.core.errors import ConfigError

PARENT = PlattCalibrator(1 / 1.6, -0.1)
DIFFERENT = PlattCalibrator(0.3, 0.4)  # a genuinely different user calibration


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def nll_sum(p, y):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum())


def events(rng, n: int, truth: PlattCalibrator):
    """Model logits of a Beta(2, 8) population, labels from the user's true calibration."""
    p = rng.beta(2, 8, n)
    z = 1.6 * np.log(p / (1 - p)) + 0.16
    y = (rng.random(n) < truth.apply_logit(z)).astype(float)
    return z, y


@pytest.fixture(scope="module")
def population():
    """1,500 users following the parent with 3-60 events each, 40 different heavy users."""
    rng = np.random.default_rng(2024)
    train, holdout, kind = {}, {}, {}
    for u in range(1_500):
        z, y = events(rng, int(rng.integers(3, 61)), PARENT)
        train[u] = (z, y, None)
        holdout[u] = events(rng, 40, PARENT)
        kind[u] = "null"
    for u in range(1_500, 1_540):
        z, y = events(rng, 1_500, DIFFERENT)
        train[u] = (z, y, None)
        holdout[u] = events(rng, 500, DIFFERENT)
        kind[u] = "different"
    return train, holdout, kind


def test_shrunk_users_are_never_meaningfully_worse_and_different_users_improve(population):
    train, holdout, kind = population
    shrink = HierarchicalShrinkage("platt")
    fitted, k = shrink.fit_children(train, PARENT)
    assert 200.0 <= k < 10_000

    def excess(users, cals):
        """Holdout NLL per event, calibrator minus parent."""
        d = n = 0.0
        for u in users:
            zh, yh = holdout[u]
            d += nll_sum(cals[u].apply_logit(zh), yh) - nll_sum(PARENT.apply_logit(zh), yh)
            n += yh.size
        return d / n

    null = [u for u in train if kind[u] == "null"]
    small = [u for u in null if train[u][0].size < 20]
    different = [u for u in train if kind[u] == "different"]
    assert len(small) > 300

    # Users who truly follow the parent lose (almost) nothing: at most d / (8 k) = 0.00125
    # nats/event in expectation at the default floor k = 200 (< 0.3% of the ~0.45 NLL), in
    # aggregate and for users with < 20 events. Measured: 0.0010 and 0.0005.
    assert excess(null, fitted) <= 0.002
    assert excess(small, fitted) <= 0.001
    # Their calibrated probabilities stay close to the parent's.
    dp = [
        np.abs(fitted[u].apply_logit(holdout[u][0]) - PARENT.apply_logit(holdout[u][0])).mean()
        for u in small
    ]
    # Measured: mean 0.007, 99th percentile 0.026.
    assert np.mean(dp) < 0.015 and np.quantile(dp, 0.99) < 0.05

    # The same users fitted on their own (the MLE) are much worse: shrinkage is what helps.
    mle = {u: PlattCalibrator.fit(*train[u][:2]) for u in small}
    assert excess(small, mle) > 0.05

    # Heavy users with a different calibration gain most of what their true calibration gives.
    gain = excess(different, fitted)
    oracle = excess(different, dict.fromkeys(different, DIFFERENT))
    assert oracle < -0.01
    assert gain <= 0.8 * oracle
    improved = 0
    for u in different:
        zh, yh = holdout[u]
        improved += nll_sum(fitted[u].apply_logit(zh), yh) < nll_sum(PARENT.apply_logit(zh), yh)
    assert improved >= 0.9 * len(different)


def test_prior_strength_is_large_when_every_child_follows_the_parent():
    rng = np.random.default_rng(9)
    children = [(*events(rng, int(rng.integers(10, 200)), PARENT), None) for _ in range(600)]
    shrink = HierarchicalShrinkage("platt")
    assert shrink.estimate_prior_strength(children, PARENT) >= 2_000


@pytest.mark.parametrize("k_true", [50.0, 500.0])
def test_prior_strength_recovered_when_children_follow_the_model(k_true):
    # Children's true (a, b) ~ N(parent, (k F)^-1) with F the per-event Fisher information at
    # the parent: the g-prior the estimator assumes. It should find k within a factor ~1.5.
    rng = np.random.default_rng(int(k_true))
    z_pop, _ = events(rng, 200_000, PARENT)
    mu = PARENT.apply_logit(z_pop)
    x = np.stack([z_pop, np.ones_like(z_pop)], axis=1)
    fisher = (x * (mu * (1 - mu))[:, None]).T @ x / z_pop.size
    cov = np.linalg.inv(k_true * fisher)
    children = []
    for _ in range(400):
        a, b = rng.multivariate_normal([PARENT.a, PARENT.b], cov)
        children.append((*events(rng, 300, PlattCalibrator(a, b)), None))
    shrink = HierarchicalShrinkage("platt", min_prior_strength=1.0)
    k_hat = shrink.estimate_prior_strength(children, PARENT)
    assert k_true / 1.5 <= k_hat <= k_true * 1.5


def test_score_statistic_excess_has_mean_zero_under_the_parent():
    # E[Q - e] = 0 exactly when the child follows the parent: the estimator's foundation.
    rng = np.random.default_rng(10)
    shrink = HierarchicalShrinkage("platt")
    terms = np.array(
        [shrink.moment_terms(*events(rng, 30, PARENT), None, PARENT) for _ in range(3_000)]
    )
    assert (terms[:, 0] == 2 * 30).all()  # d * n with d = 2 parameters
    excess = terms[:, 1]
    assert abs(excess.mean()) < 4 * excess.std() / np.sqrt(excess.size)
    # A deviating population has a clearly positive excess.
    dev = [shrink.moment_terms(*events(rng, 300, DIFFERENT), None, PARENT)[1] for _ in range(50)]
    assert np.mean(dev) > 20


def test_large_child_matches_quadratic_formula():
    # n = k: w = 1/2, so the posterior mode sits half-way between the child's MLE and the
    # parent (exact when the likelihood's curvature is the same at both: small deviations).
    rng = np.random.default_rng(11)
    z, y = events(rng, 20_000, PlattCalibrator(0.7, 0.0))
    mle = PlattCalibrator.fit(z, y)
    shrunk = HierarchicalShrinkage("platt", prior_strength=20_000).fit_child(z, y, parent=PARENT)
    assert HierarchicalShrinkage.shrinkage_weight(20_000, 20_000) == 0.5
    half = 0.5 * np.array([mle.a, mle.b]) + 0.5 * np.array([PARENT.a, PARENT.b])
    gap = np.abs(np.array([mle.a - PARENT.a, mle.b - PARENT.b]))
    assert np.all(np.abs(np.array([shrunk.a, shrunk.b]) - half) <= 0.1 * gap)


def test_tiny_children_get_the_parent():
    shrink = HierarchicalShrinkage("platt", prior_strength=200)
    assert shrink.fit_child([], [], parent=PARENT) == PARENT
    # Three negatives: the MLE would be b -> -inf; the shrunk fit barely moves.
    child = shrink.fit_child([-2.0, -3.0, -2.5], [0, 0, 0], parent=PARENT)
    assert abs(child.a - PARENT.a) < 0.05 and abs(child.b - PARENT.b) < 0.1
    # One repeated score: a flat direction of the likelihood, still a unique finite answer.
    child = shrink.fit_child(np.full(50, -1.0), np.r_[np.ones(10), np.zeros(40)], parent=PARENT)
    assert np.isfinite([child.a, child.b]).all()


def test_temperature_children():
    rng = np.random.default_rng(12)
    parent = TemperatureCalibrator(1.6)
    shrink = HierarchicalShrinkage("temperature", prior_strength=100)
    z, y = events(rng, 5_000, PlattCalibrator(1 / 1.2, 0.0))
    child = shrink.fit_child(z, y, parent=parent)
    assert isinstance(child, TemperatureCalibrator)
    assert 1.15 < child.temperature < 1.3
    small = shrink.fit_child(z[:5], y[:5], parent=parent)
    assert small.temperature == pytest.approx(1.6, rel=0.05)
    # Identity parent = temperature 1.
    assert shrink.fit_child([], [], parent=IdentityCalibrator()) == TemperatureCalibrator(1.0)
    assert isinstance(
        HierarchicalShrinkage("platt", prior_strength=1).fit_child(
            [], [], parent=TemperatureCalibrator(2.0)
        ),
        PlattCalibrator,
    )


def test_parents_without_a_parameter_space_are_rejected():
    iso = IsotonicCalibrator([0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ConfigError):
        HierarchicalShrinkage("platt", prior_strength=10).fit_child([0.0], [1], parent=iso)
    with pytest.raises(ConfigError):
        HierarchicalShrinkage("temperature", prior_strength=10).fit_child(
            [0.0], [1], parent=PlattCalibrator(1.0, 0.5)
        )


def test_moments_combine_across_partitions():
    rng = np.random.default_rng(13)
    shrink = HierarchicalShrinkage("platt")
    children = [(*events(rng, 200, DIFFERENT), None) for _ in range(20)]
    whole = shrink.estimate_prior_strength(children, PARENT)
    parts = [shrink.moment_terms(z, y, w, PARENT) for z, y, w in children]
    sum_dn = sum(p[0] for p in parts[:7]) + sum(p[0] for p in parts[7:])
    sum_ex = sum(p[1] for p in parts[:7]) + sum(p[1] for p in parts[7:])
    assert shrink.prior_strength_from_moments(sum_dn, sum_ex) == pytest.approx(whole)
    assert shrink.prior_strength_from_moments(100.0, -5.0) == 1e6
    assert shrink.prior_strength_from_moments(1_000.0, 100.0) == 200.0  # the floor
    assert shrink.prior_strength_from_moments(1e6, 100.0) == 1e4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "isotonic"},
        {"prior_strength": 0},
        {"prior_strength": float("nan")},
        {"min_prior_strength": -1},
        {"min_prior_strength": 10, "max_prior_strength": 5},
    ],
)
def test_bad_hyper_parameters(kwargs):
    with pytest.raises(ConfigError):
        HierarchicalShrinkage(**kwargs)


def test_fit_child_needs_a_prior_strength():
    with pytest.raises(ConfigError):
        HierarchicalShrinkage().fit_child([0.0], [1], parent=PARENT)
