"""A Beta posterior of a click rate with optional event-time discounting (DESIGN §6)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.posteriors import _checks


class BetaPosterior:
    """Beta(α0 + successes, β0 + failures): a click-rate posterior over a fixed prior.

    The prior ``(alpha0, beta0)`` is fixed at construction and never touched again; the
    evidence lives in two separate counts, ``successes`` and ``failures``. Keeping them apart
    is what makes discounting *toward the prior* possible: forgetting shrinks the counts, so
    an idle posterior relaxes back to its prior instead of to Beta(0, 0).

    Discounting (``half_life_ms``, ``None`` = none) is by **event time**, not per update: a
    count added at time ``t`` weighs ``2 ** (-(T - t) / half_life_ms)`` when read at ``T``.
    Per-update discounting was rejected because a pair is updated only when its user is
    active: a per-update factor would never forget an absent user, and would forget a popular
    arm's population posterior within minutes at high traffic. Event-time discounting is
    traffic-invariant and, unlike per-update discounting, merges exactly (``merge`` aligns
    both sides to the later time and adds). Stored counts are as of ``last_ts``, the newest
    event time seen; ``at(ts)`` returns a copy read at a later time. An event older than
    ``last_ts`` (out of order) enters already decayed, so arrival order does not matter.

    ``n`` counts update calls (mature feedback events), undiscounted, whatever the weight.

    >>> post = BetaPosterior.from_rate(0.04, strength=10)
    >>> post.alpha, post.beta, round(post.mean, 4)
    (0.4, 9.6, 0.04)
    >>> for y in (1, 0, 0, 0):
    ...     post.update(y)
    >>> post.alpha, post.beta, post.n, round(post.mean, 4)
    (1.4, 12.6, 4, 0.1)
    >>> round(post.quantile(0.5), 4), round(post.std, 4)
    (0.0813, 0.0775)
    >>> d = BetaPosterior(1.0, 9.0, half_life_ms=1_000)
    >>> d.update(1, ts=0)
    >>> d.at(1_000).alpha, d.at(2_000).alpha, d.prior_alpha
    (1.5, 1.25, 1.0)
    >>> BetaPosterior.from_dict(post.to_dict()) == post
    True
    """

    __slots__ = ("_alpha0", "_beta0", "_failures", "_half_life", "_last_ts", "_n", "_successes")

    def __init__(
        self, alpha0: float = 1.0, beta0: float = 1.0, *, half_life_ms: float | None = None
    ) -> None:
        self._alpha0 = _checks.config_positive("alpha0", alpha0)
        self._beta0 = _checks.config_positive("beta0", beta0)
        self._half_life = _checks.config_half_life(half_life_ms)
        self._successes = 0.0
        self._failures = 0.0
        self._n = 0
        self._last_ts: int | None = None

    @classmethod
    def from_rate(
        cls, mean: float, strength: float = 10.0, *, half_life_ms: float | None = None
    ) -> BetaPosterior:
        """The prior Beta(mean·strength, (1 − mean)·strength): ``strength`` pseudo-events."""
        m = _checks.config_unit_open("mean", mean)
        s = _checks.config_positive("strength", strength)
        return cls(m * s, (1.0 - m) * s, half_life_ms=half_life_ms)

    @classmethod
    def from_rate_unchecked(
        cls, mean: float, strength: float, half_life_ms: float | None
    ) -> BetaPosterior:
        """``from_rate`` for arguments already validated, as floats (the posterior store's
        own clamped rates and configured strengths): a store creates a prior for every new
        (user, arm) pair, and the checks cost more than the rest of that event's update."""
        out = cls.__new__(cls)
        out._alpha0 = mean * strength
        out._beta0 = (1.0 - mean) * strength
        out._half_life = half_life_ms
        out._successes = 0.0
        out._failures = 0.0
        out._n = 0
        out._last_ts = None
        return out

    # ------------------------------------------------------------------ read-only properties

    @property
    def prior_alpha(self) -> float:
        """α0, the prior's pseudo-successes."""
        return self._alpha0

    @property
    def prior_beta(self) -> float:
        """β0, the prior's pseudo-failures."""
        return self._beta0

    @property
    def half_life_ms(self) -> float | None:
        """Event-time half-life of the counts (``None``: no discounting)."""
        return self._half_life

    @property
    def successes(self) -> float:
        """Discounted positive evidence as of ``last_ts``."""
        return self._successes

    @property
    def failures(self) -> float:
        """Discounted negative evidence as of ``last_ts``."""
        return self._failures

    @property
    def n(self) -> int:
        """Events counted, undiscounted."""
        return self._n

    @property
    def last_ts(self) -> int | None:
        """Newest event time seen (``None`` before the first timed update)."""
        return self._last_ts

    @property
    def alpha(self) -> float:
        """α = α0 + successes."""
        return self._alpha0 + self._successes

    @property
    def beta(self) -> float:
        """β = β0 + failures."""
        return self._beta0 + self._failures

    @property
    def mean(self) -> float:
        """Posterior mean α / (α + β)."""
        a, b = self.alpha, self.beta
        return a / (a + b)

    @property
    def var(self) -> float:
        """Posterior variance αβ / ((α + β)² (α + β + 1))."""
        a, b = self.alpha, self.beta
        k = a + b
        return a * b / (k * k * (k + 1.0))

    @property
    def std(self) -> float:
        """Posterior standard deviation."""
        return math.sqrt(self.var)

    @property
    def cv(self) -> float:
        """Coefficient of variation std / mean ≈ 1/√α for small rates: relative uncertainty."""
        return self.std / self.mean

    # ------------------------------------------------------------------ updates

    def update(self, label: int, weight: float = 1.0, ts: int | None = None) -> None:
        """Count one event with ``label`` (0 or 1) and ``weight`` at event time ``ts`` (ms).

        ``ts`` is required when discounting; without it, it is only recorded.
        """
        y = _checks.label(label)
        w = _checks.weight(weight)
        if ts is None:
            if self._half_life is not None:
                raise InvalidInputError("schema", "ts is required when half_life_ms is set")
        else:
            t = _checks.timestamp("ts", ts)
            w *= self._advance(t)
        if y:
            self._successes += w
        else:
            self._failures += w
        self._n += 1

    def count(self, label: int, ts: int) -> None:
        """``update(label, ts=ts)`` for values already validated (the decoder is the only
        validator on the hot path): a label of 0 or 1 and an integer event time."""
        if self._half_life is None:
            # ``_advance`` without discounting, inlined (the store counts six posteriors per
            # event): the weight is 1 and only the newest time moves.
            last = self._last_ts
            if last is None or ts > last:
                self._last_ts = ts
            w = 1.0
        else:
            w = self._advance(ts)
        if label:
            self._successes += w
        else:
            self._failures += w
        self._n += 1

    def _advance(self, t: int) -> float:
        """Move the reference time to ``max(last_ts, t)``; return the weight factor for ``t``."""
        if self._last_ts is None:
            self._last_ts = t
            return 1.0
        if t > self._last_ts:
            if self._half_life is not None:
                f = 2.0 ** (-(t - self._last_ts) / self._half_life)
                self._successes *= f
                self._failures *= f
            self._last_ts = t
            return 1.0
        if self._half_life is None or t == self._last_ts:
            return 1.0
        return 2.0 ** (-(self._last_ts - t) / self._half_life)

    def at(self, ts: int | None) -> BetaPosterior:
        """A copy read at event time ``ts``: counts decayed to ``ts`` when it is later.

        A time before ``last_ts`` returns the state as of ``last_ts`` (events cannot be
        un-seen). Without discounting this is a plain copy.
        """
        out = self.copy()
        if ts is not None:
            out._advance(_checks.timestamp("ts", ts))
        return out

    def counts_at(self, ts: int | None) -> tuple[float, float]:
        """``(successes, failures)`` read at ``ts`` (as ``at(ts)``, without a copy)."""
        if ts is None or self._half_life is None or self._last_ts is None:
            return self._successes, self._failures
        t = _checks.timestamp("ts", ts)
        if t <= self._last_ts:
            return self._successes, self._failures
        f = 2.0 ** (-(t - self._last_ts) / self._half_life)
        return self._successes * f, self._failures * f

    def copy(self) -> BetaPosterior:
        """An independent copy."""
        out = BetaPosterior.__new__(BetaPosterior)
        out._alpha0 = self._alpha0
        out._beta0 = self._beta0
        out._half_life = self._half_life
        out._successes = self._successes
        out._failures = self._failures
        out._n = self._n
        out._last_ts = self._last_ts
        return out

    def merge(self, other: BetaPosterior) -> BetaPosterior:
        """Evidence of both (same prior and half-life), as a new posterior; neither changes.

        Without discounting the counts add; with it both are read at the later ``last_ts``
        and add, which equals one posterior fed both streams. Commutative and associative
        (up to float rounding). The prior is not doubled: it is the shared prior.
        """
        if not isinstance(other, BetaPosterior):
            raise TypeError(f"can only merge a BetaPosterior; got {type(other).__name__}")
        if (self._alpha0, self._beta0, self._half_life) != (
            other._alpha0,
            other._beta0,
            other._half_life,
        ):
            raise ConfigError(
                "cannot merge posteriors with different priors or half-lives: "
                f"{self._config()} vs {other._config()}"
            )
        times = [t for t in (self._last_ts, other._last_ts) if t is not None]
        ref = max(times) if times else None
        a, b = self.at(ref), other.at(ref)
        out = BetaPosterior(self._alpha0, self._beta0, half_life_ms=self._half_life)
        out._successes = a._successes + b._successes
        out._failures = a._failures + b._failures
        out._n = a._n + b._n
        out._last_ts = ref
        return out

    # ------------------------------------------------------------------ reads

    def sample(self, rng: np.random.Generator, size: int | None = None) -> Any:
        """Thompson draw(s) from Beta(α, β) with the caller's generator."""
        return rng.beta(self.alpha, self.beta, size)

    def quantile(self, q: ArrayLike) -> Any:
        """Posterior quantile(s) ``q`` in [0, 1] (``scipy.stats.beta.ppf``)."""
        qa = np.asarray(q, dtype=np.float64)
        if not (np.isfinite(qa).all() and (qa >= 0).all() and (qa <= 1).all()):
            raise InvalidInputError("schema", f"q must be in [0, 1]; got {q!r}")
        out: NDArray[np.float64] = stats.beta.ppf(qa, self.alpha, self.beta)
        return float(out) if out.ndim == 0 else out

    def interval(self, level: float = 0.9) -> tuple[float, float]:
        """Equal-tailed credible interval with probability ``level``."""
        if not _checks.is_real(level) or not 0 < level < 1:
            raise InvalidInputError("schema", f"level must be in (0, 1); got {level!r}")
        lo, hi = self.quantile([(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    # ------------------------------------------------------------------ persistence

    def _config(self) -> dict[str, Any]:
        return {"alpha0": self._alpha0, "beta0": self._beta0, "half_life_ms": self._half_life}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with version field ``"v": 1``."""
        return {
            "v": 1,
            **self._config(),
            "successes": self._successes,
            "failures": self._failures,
            "n": self._n,
            "last_ts": self._last_ts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BetaPosterior:
        """Inverse of ``to_dict``; a malformed dict raises ``StateError``."""
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported posterior version {data.get('v')!r}")
            out = cls(data["alpha0"], data["beta0"], half_life_ms=data["half_life_ms"])
            s, f, n = data["successes"], data["failures"], data["n"]
            if not (_checks.is_real(s) and _checks.is_real(f) and s >= 0 and f >= 0):
                raise ValueError("successes and failures must be finite numbers >= 0")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"n must be an integer >= 0; got {n!r}")
            last = data["last_ts"]
            out._successes, out._failures, out._n = float(s), float(f), n
            out._last_ts = None if last is None else _checks.timestamp("last_ts", last)
            return out
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed posterior state: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BetaPosterior):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"BetaPosterior(alpha={self.alpha:.6g}, beta={self.beta:.6g}, n={self._n}, "
            f"prior=({self._alpha0:.6g}, {self._beta0:.6g}), half_life_ms={self._half_life})"
        )
