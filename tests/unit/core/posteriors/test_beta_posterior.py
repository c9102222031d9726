"""BetaPosterior: moments vs scipy, discounting vs a batch reference, merge algebra, persistence."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import worker.core.posteriors.beta_posterior as module
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.posteriors import BetaPosterior

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

events_st = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.floats(0.1, 3.0),
        st.integers(0, 50_000),
    ),
    max_size=40,
)


def batch_reference(
    alpha0: float, beta0: float, half_life: float | None, events: list[tuple[int, float, int]]
) -> tuple[float, float]:
    """α, β by direct summation: each event weighs w · 2^(-(T - t)/h) at the newest time T."""
    if not events:
        return alpha0, beta0
    newest = max(t for _, _, t in events)
    a, b = alpha0, beta0
    for y, w, t in events:
        f = 1.0 if half_life is None else 2.0 ** (-(newest - t) / half_life)
        if y:
            a += w * f
        else:
            b += w * f
    return a, b


def feed(post: BetaPosterior, events: list[tuple[int, float, int]]) -> BetaPosterior:
    for y, w, t in events:
        post.update(y, w, ts=t)
    return post


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(("a0", "b0"), [(1.0, 1.0), (0.4, 9.6), (3.0, 0.5), (200.0, 4000.0)])
def test_moments_and_quantiles_match_scipy(a0: float, b0: float) -> None:
    rng = np.random.default_rng(1)
    post = BetaPosterior(a0, b0)
    for y in rng.integers(0, 2, 37):
        post.update(int(y))
        ref = stats.beta(post.alpha, post.beta)
        assert post.mean == pytest.approx(ref.mean(), rel=1e-12)
        assert post.var == pytest.approx(ref.var(), rel=1e-10)
        assert post.std == pytest.approx(ref.std(), rel=1e-10)
        assert post.cv == pytest.approx(ref.std() / ref.mean(), rel=1e-10)
    qs = np.array([0.0, 0.025, 0.5, 0.975, 1.0])
    np.testing.assert_allclose(post.quantile(qs), ref.ppf(qs))
    assert post.quantile(0.3) == pytest.approx(ref.ppf(0.3))
    lo, hi = post.interval(0.9)
    assert (lo, hi) == pytest.approx(ref.interval(0.9))


def test_samples_follow_the_posterior() -> None:
    post = BetaPosterior(3.0, 7.0)
    draws = post.sample(np.random.default_rng(0), size=20_000)
    assert stats.kstest(draws, stats.beta(3.0, 7.0).cdf).pvalue > 1e-3
    one = post.sample(np.random.default_rng(0))
    assert 0.0 < one < 1.0


@SETTINGS
@given(
    st.floats(0.05, 50.0), st.floats(0.05, 50.0),
    st.one_of(st.none(), st.floats(100.0, 1e5)), events_st,
)
def test_agrees_with_batch_reference_at_every_step(a0, b0, half_life, events) -> None:
    post = BetaPosterior(a0, b0, half_life_ms=half_life)
    for i, (y, w, t) in enumerate(events):
        post.update(y, w, ts=t)
        a, b = batch_reference(a0, b0, half_life, events[: i + 1])
        assert post.alpha == pytest.approx(a, rel=1e-9, abs=1e-12)
        assert post.beta == pytest.approx(b, rel=1e-9, abs=1e-12)
        assert post.n == i + 1
        assert post.last_ts == max(t for _, _, t in events[: i + 1])
        # The prior is never touched.
        assert (post.prior_alpha, post.prior_beta) == (a0, b0)


def test_discounting_relaxes_to_the_prior_not_to_zero() -> None:
    post = BetaPosterior(0.5, 9.5, half_life_ms=1_000)
    for i in range(500):
        post.update(int(i % 2 == 0), ts=i)
    assert post.mean == pytest.approx(0.5, abs=0.05)
    later = post.at(500 + 100_000)
    assert later.alpha == pytest.approx(0.5, abs=1e-12)
    assert later.beta == pytest.approx(9.5, abs=1e-12)
    assert later.mean == pytest.approx(0.05)
    # Reading does not change the posterior, and reading in the past is the present state.
    assert post.last_ts == 499
    assert post.at(0) == post
    assert later.n == post.n == 500


def test_without_discount_ts_is_optional_and_time_does_not_matter() -> None:
    a, b = BetaPosterior(1, 1), BetaPosterior(1, 1)
    a.update(1)
    a.update(0, ts=5)
    b.update(0, ts=1_000_000)
    b.update(1, ts=3)
    assert (a.alpha, a.beta) == (b.alpha, b.beta) == (2.0, 2.0)
    assert a.at(10**9).alpha == 2.0


@SETTINGS
@given(
    st.one_of(st.none(), st.floats(100.0, 1e5)),
    events_st,
    st.lists(st.integers(0, 2), max_size=40),
)
def test_merge_equals_sequential(half_life, events, assignment) -> None:
    parts = [BetaPosterior(0.7, 3.0, half_life_ms=half_life) for _ in range(3)]
    whole = BetaPosterior(0.7, 3.0, half_life_ms=half_life)
    for i, (y, w, t) in enumerate(events):
        k = assignment[i] if i < len(assignment) else 0
        parts[k].update(y, w, ts=t)
        whole.update(y, w, ts=t)
    a, b, c = parts
    before = [p.to_dict() for p in parts]
    left = a.merge(b).merge(c)
    right = a.merge(b.merge(c))
    for m in (left, right, c.merge(a).merge(b)):
        assert m.alpha == pytest.approx(whole.alpha, rel=1e-9)
        assert m.beta == pytest.approx(whole.beta, rel=1e-9)
        assert m.n == whole.n
        assert m.last_ts == whole.last_ts
    # Commutative bit for bit; merge returns a new posterior and never mutates an operand.
    assert a.merge(b) == b.merge(a)
    assert [p.to_dict() for p in parts] == before


def test_merge_requires_the_same_prior_and_half_life() -> None:
    with pytest.raises(ConfigError):
        BetaPosterior(1, 1).merge(BetaPosterior(1, 2))
    with pytest.raises(ConfigError):
        BetaPosterior(1, 1).merge(BetaPosterior(1, 1, half_life_ms=10))
    with pytest.raises(TypeError):
        BetaPosterior(1, 1).merge("x")  # type: ignore[arg-type]
    assert BetaPosterior(1, 1).merge(BetaPosterior(1, 1)) == BetaPosterior(1, 1)


@SETTINGS
@given(st.one_of(st.none(), st.floats(100.0, 1e5)), events_st)
def test_round_trip(half_life, events) -> None:
    post = feed(BetaPosterior(0.3, 2.5, half_life_ms=half_life), events)
    data = json.loads(json.dumps(post.to_dict()))
    assert data["v"] == 1
    back = BetaPosterior.from_dict(data)
    assert back == post
    # The restored object continues identically.
    post.update(1, ts=60_000)
    back.update(1, ts=60_000)
    assert back == post


def test_from_rate() -> None:
    post = BetaPosterior.from_rate(0.04, 10)
    assert (post.alpha, post.beta) == pytest.approx((0.4, 9.6))
    assert post.mean == pytest.approx(0.04)
    with pytest.raises(ConfigError):
        BetaPosterior.from_rate(0.0, 10)
    with pytest.raises(ConfigError):
        BetaPosterior.from_rate(0.5, -1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha0": 0.0},
        {"beta0": -1.0},
        {"alpha0": math.nan},
        {"beta0": math.inf},
        {"alpha0": True},
        {"half_life_ms": 0},
        {"half_life_ms": -5.0},
    ],
)
def test_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        BetaPosterior(**kwargs)


def test_input_errors() -> None:
    post = BetaPosterior()
    for bad in (2, -1, 0.5, "1", None):
        with pytest.raises(InvalidInputError, match="label must be 0 or 1"):
            post.update(bad)  # type: ignore[arg-type]
    for bad_w in (0, -1.0, math.nan, math.inf):
        with pytest.raises(InvalidInputError, match="weight"):
            post.update(1, bad_w)
    for bad_ts in (-1, 1.5, "3", True):
        with pytest.raises(InvalidInputError, match="ts"):
            post.update(1, ts=bad_ts)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="ts is required"):
        BetaPosterior(half_life_ms=10).update(1)
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(InvalidInputError):
            post.quantile(q)
    with pytest.raises(InvalidInputError):
        post.interval(1.0)
    assert post.n == 0
    post.update(True)
    assert post.alpha == 2.0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=2),
        lambda d: d.pop("successes"),
        lambda d: d.update(failures=-1.0),
        lambda d: d.update(n=1.5),
        lambda d: d.update(alpha0=0),
        lambda d: d.update(last_ts="x"),
    ],
)
def test_from_dict_rejects_malformed(mutate) -> None:
    data = BetaPosterior(1, 2).to_dict()
    mutate(data)
    with pytest.raises(StateError):
        BetaPosterior.from_dict(data)


@given(st.floats(1e-4, 1 - 1e-4), st.floats(0.01, 1e4),
       st.one_of(st.none(), st.floats(1.0, 1e12)))
def test_from_rate_unchecked_is_from_rate_for_valid_arguments(
    mean: float, strength: float, half_life: float | None
) -> None:
    checked = BetaPosterior.from_rate(mean, strength, half_life_ms=half_life)
    assert BetaPosterior.from_rate_unchecked(mean, strength, half_life).to_dict() == (
        checked.to_dict()
    )
