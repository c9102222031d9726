"""Split-conformal threshold: the order statistic, coverage guarantee by simulation, sets."""

from __future__ import annotations

import doctest
import json
import math
import pathlib

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.core.conformal.conformal_threshold as module
from worker.core.conformal import (
    ConformalThreshold,
    fit_qhat,
    is_uncertain,
    prediction_set,
    prediction_sets,
)
from worker.core.errors import ConfigError, InvalidInputError, StateError

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAL_SCHEMA = json.loads(
    (pathlib.Path(__file__).parents[4] / "schemas" / "calibrator_version.schema.json").read_text()
)


def reference_qhat(p: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Textbook: sort the scores, take the ⌈(n+1)(1−α)⌉-th smallest (1 when beyond n)."""
    s = sorted(float(1 - pi) if yi == 1 else float(pi) for pi, yi in zip(p, y, strict=True))
    n = len(s)
    k = (n + 1) * (1 - alpha)
    k = math.ceil(round(k, 9))
    return 1.0 if k > n else s[k - 1]


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0


@SETTINGS
@given(
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1)), max_size=60),
    st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.25, 0.5, 0.9]),
)
def test_qhat_is_the_order_statistic(events, alpha) -> None:
    p = np.array([e[0] for e in events])
    y = np.array([e[1] for e in events], dtype=int)
    assert fit_qhat(p, y, alpha) == reference_qhat(p, y, alpha)
    # Every calibration event's own label is in its own set exactly when its score <= qhat.
    q = fit_qhat(p, y, alpha)
    has0, has1 = prediction_sets(p, q)
    covered = np.where(y == 1, has1, has0)
    s = np.where(y == 1, 1 - p, p)
    np.testing.assert_array_equal(covered, s <= q)


@pytest.mark.parametrize(("n", "alpha", "rank"), [(9, 0.1, 9), (19, 0.05, 19), (99, 0.1, 90)])
def test_rank_is_exact_where_floats_would_round_up(n, alpha, rank) -> None:
    s = np.arange(1, n + 1) / (n + 1) / 2  # distinct non-click scores
    assert fit_qhat(s, np.zeros(n, dtype=int), alpha) == s[rank - 1]


def test_too_few_events_give_the_trivial_threshold() -> None:
    assert fit_qhat([], [], 0.1) == 1.0
    assert fit_qhat([0.2] * 8, [0] * 8, 0.1) == 1.0  # rank 9 > 8
    assert prediction_set(0.3, 1.0) == (0, 1)


@SETTINGS
@given(
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1), st.integers(0, 4)), max_size=40),
    st.sampled_from([0.05, 0.1, 0.3]),
)
def test_integer_weights_equal_repeated_events(events, alpha) -> None:
    p = np.array([e[0] for e in events])
    y = np.array([e[1] for e in events], dtype=int)
    w = np.array([e[2] for e in events], dtype=float)
    expanded_p = np.repeat(p, w.astype(int))
    expanded_y = np.repeat(y, w.astype(int))
    assert fit_qhat(p, y, alpha, weights=w) == fit_qhat(expanded_p, expanded_y, alpha)


@pytest.mark.parametrize(
    ("name", "draw_p"),
    [
        ("mid scores", lambda rng, size: rng.uniform(0.05, 0.95, size)),
        ("click-like scores", lambda rng, size: rng.beta(1.0, 20.0, size)),
    ],
)
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_exchangeable_coverage_guarantee(name, draw_p, alpha) -> None:
    """Over many calibration draws: 1 − α ≤ E[coverage] ≤ 1 − α + 1/(n + 1)."""
    rng = np.random.default_rng(20240)
    trials, n, m = 2_000, 99, 50
    p = draw_p(rng, (trials, n + m))
    y = (rng.uniform(size=p.shape) < p).astype(int)
    s = np.where(y == 1, 1 - p, p)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    qhat = np.sort(s[:, :n], axis=1)[:, k - 1]
    # Spot-check the production function on some rows.
    for i in range(0, trials, 400):
        assert fit_qhat(p[i, :n], y[i, :n], alpha) == qhat[i]
    covered = s[:, n:] <= qhat[:, None]
    mean_cov = covered.mean()
    # Monte Carlo standard error of the average (trials are independent).
    se = covered.mean(axis=1).std(ddof=1) / math.sqrt(trials)
    assert mean_cov >= 1 - alpha - 4 * se, name
    assert mean_cov <= 1 - alpha + 1 / (n + 1) + 4 * se, name


def test_no_uncertain_sets_when_the_click_rate_is_below_alpha() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(1.0, 24.0, 20_000)  # ~4 % CTR
    y = (rng.uniform(size=p.size) < p).astype(int)
    ct = ConformalThreshold.fit(p, y, alpha=0.1)
    assert ct.qhat < 0.5
    assert not ct.is_uncertain(p).any()
    # Clicks are mostly not covered: coverage is marginal, not per label.
    has0, has1 = ct.prediction_sets(p)
    assert has1[y == 1].mean() < 0.1
    assert np.where(y == 1, has1, has0).mean() >= 0.89


def test_prediction_sets_semantics() -> None:
    assert prediction_set(0.03, 0.05) == (0,)
    assert prediction_set(0.97, 0.05) == (1,)
    assert prediction_set(0.5, 0.5) == (0, 1)
    assert prediction_set(0.5, 0.49) == ()
    assert prediction_set(0.0, 0.0) == (0,)
    assert prediction_set(1.0, 0.0) == (1,)
    assert is_uncertain(0.5, 0.6) is True
    np.testing.assert_array_equal(
        is_uncertain(np.array([0.1, 0.4, 0.6, 0.9]), 0.6), [False, True, True, False]
    )


def test_threshold_object_block_and_round_trip() -> None:
    ct = ConformalThreshold.fit([0.1, 0.2, 0.3], [0, 1, 0], alpha=0.5)
    assert ct.n == 3 and ct.alpha == 0.5
    block = ct.block()
    assert set(block) == {"alpha", "qhat"}
    jsonschema.validate(block, CAL_SCHEMA["properties"]["conformal"])
    assert ConformalThreshold.from_block(block).qhat == ct.qhat
    data = json.loads(json.dumps(ct.to_dict()))
    assert data["v"] == 1 and ConformalThreshold.from_dict(data) == ct
    assert hash(ConformalThreshold.from_dict(data)) == hash(ct)
    weighted = ConformalThreshold.fit([0.1, 0.2], [0, 0], alpha=0.5, weights=[2.0, 3.0])
    assert weighted.n == 5


def test_errors() -> None:
    for a in (0.0, 1.0, -0.1, math.nan, "0.1"):
        with pytest.raises(ConfigError):
            fit_qhat([0.1], [0], a)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="score must be a finite number in"):
        fit_qhat([0.1, 1.5], [0, 0])
    with pytest.raises(InvalidInputError, match="label"):
        fit_qhat([0.1, 0.2], [0, 2])
    with pytest.raises(InvalidInputError, match="label"):
        fit_qhat([0.1, 0.2], [0, 0.5])
    with pytest.raises(InvalidInputError):
        fit_qhat([0.1, 0.2], [0, 1, 1])
    with pytest.raises(InvalidInputError, match="weights"):
        fit_qhat([0.1, 0.2], [0, 1], weights=[1.0, -1.0])
    with pytest.raises(InvalidInputError, match="qhat"):
        prediction_set(0.1, 1.2)
    with pytest.raises(InvalidInputError):
        ConformalThreshold(0.1, qhat=math.nan)
    with pytest.raises(StateError):
        ConformalThreshold.from_dict({"v": 2, "alpha": 0.1, "qhat": 0.2, "n": 1})
    with pytest.raises(InvalidInputError):
        ConformalThreshold.from_block({"alpha": 0.1})
