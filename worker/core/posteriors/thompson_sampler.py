"""Thompson sampling over Beta click-rate posteriors (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from worker.core.errors import InvalidInputError
from worker.core.posteriors.beta_posterior import BetaPosterior
from worker.core.posteriors.posterior_store import PosteriorStore


class ThompsonSampler:
    """Pick arms by one posterior draw per arm: the largest draw wins.

    The randomness is the caller's ``numpy.random.Generator``, so a seeded generator gives a
    reproducible choice (replays, tests). A user's unseen arm is drawn from the prior the
    store would give it (the segment-rate prior), so new users explore around their segment's
    rate instead of around 50 %. ``rank`` orders all arms by their draws, for slates.

    >>> store = PosteriorStore()
    >>> for i in range(200):
    ...     _ = store.update("u1", "sport", "default", int(i % 4 == 0), event_ts=i)
    ...     _ = store.update("u1", "news", "default", 0, event_ts=i)
    >>> sampler = ThompsonSampler(store)
    >>> rng = np.random.default_rng(7)
    >>> picks = [sampler.choose("u1", ["sport", "news"], rng, event_ts=200) for _ in range(100)]
    >>> picks.count("sport")
    100
    >>> ThompsonSampler.choose_from({"a": BetaPosterior(50, 50), "b": BetaPosterior(1, 99)}, rng)
    'a'
    """

    def __init__(self, store: PosteriorStore | None = None) -> None:
        if store is not None and not isinstance(store, PosteriorStore):
            raise TypeError(f"store must be a PosteriorStore; got {type(store).__name__}")
        self._store = store

    @staticmethod
    def draw(posteriors: Sequence[BetaPosterior], rng: np.random.Generator) -> np.ndarray:
        """One draw from each posterior, vectorised."""
        if not posteriors:
            raise InvalidInputError("schema", "need at least one posterior to sample")
        a = np.fromiter((p.alpha for p in posteriors), np.float64, len(posteriors))
        b = np.fromiter((p.beta for p in posteriors), np.float64, len(posteriors))
        return rng.beta(a, b)

    @classmethod
    def choose_from(
        cls, posteriors: Mapping[str, BetaPosterior], rng: np.random.Generator
    ) -> str:
        """The arm whose draw is largest (ties: the first in mapping order)."""
        arms = list(posteriors)
        return arms[int(np.argmax(cls.draw([posteriors[a] for a in arms], rng)))]

    def _posteriors(
        self, user_id: str, arms: Sequence[str], segment: str | None, event_ts: int | None
    ) -> list[BetaPosterior]:
        if self._store is None:
            raise InvalidInputError("schema", "this sampler has no store; use choose_from")
        if not arms:
            raise InvalidInputError("schema", "need at least one arm to choose from")
        return [self._store.posterior(user_id, a, segment, event_ts) for a in arms]

    def choose(
        self,
        user_id: str,
        arms: Sequence[str],
        rng: np.random.Generator,
        segment: str | None = None,
        event_ts: int | None = None,
    ) -> str:
        """The arm to show ``user_id`` among ``arms``, from the store's posteriors.

        ``segment`` gives an unknown user its segment prior; ``event_ts`` reads discounted
        posteriors at that time.
        """
        post = self._posteriors(user_id, arms, segment, event_ts)
        return arms[int(np.argmax(self.draw(post, rng)))]

    def rank(
        self,
        user_id: str,
        arms: Sequence[str],
        rng: np.random.Generator,
        segment: str | None = None,
        event_ts: int | None = None,
    ) -> list[str]:
        """All ``arms`` ordered by one draw each, largest first (a Thompson slate)."""
        post = self._posteriors(user_id, arms, segment, event_ts)
        order = np.argsort(-self.draw(post, rng), kind="stable")
        return [arms[int(i)] for i in order]
