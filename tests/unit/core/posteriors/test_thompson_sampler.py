"""ThompsonSampler: choice probabilities, determinism, segment priors for unseen arms."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import integrate, stats

import worker.core.posteriors.thompson_sampler as module
from worker.core.errors import InvalidInputError
from worker.core.posteriors import BetaPosterior, PosteriorStore, ThompsonSampler


def test_doctests() -> None:
    assert doctest.testmod(module).failed == 0


def test_choice_frequency_matches_probability_of_being_best() -> None:
    a, b = BetaPosterior(2, 3), BetaPosterior(3, 2)
    # P(X_b > X_a) = ∫ f_b(x) F_a(x) dx, by quadrature.
    p_b, _ = integrate.quad(lambda x: stats.beta(3, 2).pdf(x) * stats.beta(2, 3).cdf(x), 0, 1)
    rng = np.random.default_rng(3)
    n = 20_000
    picks = sum(ThompsonSampler.choose_from({"a": a, "b": b}, rng) == "b" for _ in range(n))
    assert abs(picks / n - p_b) < 4 * np.sqrt(p_b * (1 - p_b) / n)


def test_seeded_choices_are_reproducible() -> None:
    store = PosteriorStore()
    for i in range(50):
        store.update("u", ["a", "b", "c"][i % 3], "s", int(i % 4 == 0), i)
    sampler = ThompsonSampler(store)
    runs = [
        [sampler.choose("u", ["a", "b", "c"], rng) for _ in range(200)]
        for rng in (np.random.default_rng(11), np.random.default_rng(11))
    ]
    assert runs[0] == runs[1]
    ranked = sampler.rank("u", ["a", "b", "c"], np.random.default_rng(0))
    assert sorted(ranked) == ["a", "b", "c"]


def test_unseen_arms_explore_around_the_segment_rate() -> None:
    store = PosteriorStore(prior_strength=10)
    rng = np.random.default_rng(0)
    for i in range(4_000):
        store.update(f"v{i % 40}", "good", "s", int(rng.uniform() < 0.30), i)
        store.update(f"v{i % 40}", "bad", "s", int(rng.uniform() < 0.01), i)
    sampler = ThompsonSampler(store)
    # A new user of the segment: its priors already prefer the good arm most of the time.
    picks = [sampler.choose("new", ["good", "bad"], rng, segment="s") for _ in range(2_000)]
    assert picks.count("good") / len(picks) > 0.9
    # With flat priors the choice would be a coin toss.
    flat = {"good": BetaPosterior(1, 1), "bad": BetaPosterior(1, 1)}
    coin = [ThompsonSampler.choose_from(flat, rng) for _ in range(2_000)]
    assert 0.45 < coin.count("good") / len(coin) < 0.55


def test_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError):
        ThompsonSampler().choose("u", ["a"], rng)
    with pytest.raises(InvalidInputError):
        ThompsonSampler(PosteriorStore()).choose("u", [], rng)
    with pytest.raises(InvalidInputError):
        ThompsonSampler.choose_from({}, rng)
    with pytest.raises(TypeError):
        ThompsonSampler("store")  # type: ignore[arg-type]
