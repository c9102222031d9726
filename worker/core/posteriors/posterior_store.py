"""Per-(user, arm) and per-arm Beta posteriors, segment-rate priors and user tiers (DESIGN §6)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.posteriors import _checks
from worker.core.posteriors.beta_posterior import BetaPosterior

POPULATION = "*"
TIERS = ("confident", "moderate_uncertain", "high_epistemic")
_RANK = {t: i for i, t in enumerate(TIERS)}
#: ``tier_counts`` key of users not tiered yet.
_NO_TIER = "none"
# Rates used as prior means are kept away from 0 and 1 so that Beta(m·s, (1 − m)·s) is proper
# whatever a short, extreme segment history says.
_RATE_FLOOR = 1e-4
_RATE_CEIL = 1.0 - _RATE_FLOOR


class _User:
    """One user's state: segment, pooled and per-arm posteriors, conformal share, tier."""

    __slots__ = (
        "arms", "last_ts", "m0", "n_flags", "pooled", "segment", "share", "tier", "touch"
    )

    def __init__(self, segment: str, pooled: BetaPosterior) -> None:
        self.segment = segment
        self.pooled = pooled
        # The pooled prior's mean, fixed with the prior: the tier's cv needs it per event.
        a0 = pooled.prior_alpha
        self.m0 = a0 / (a0 + pooled.prior_beta)
        self.arms: dict[str, BetaPosterior] = {}
        self.share = 0.0
        self.n_flags = 0
        self.tier: str | None = None
        self.last_ts = 0
        # The store's update count at this user's latest update: the users' LRU order, which
        # per-user records must carry (eviction and the snapshot order follow it).
        self.touch = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "pooled": self.pooled.to_dict(),
            "arms": {a: p.to_dict() for a, p in self.arms.items()},
            "share": self.share,
            "n_flags": self.n_flags,
            "tier": self.tier,
            "last_ts": self.last_ts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _User:
        u = cls(
            _checks.identifier("segment", data["segment"]),
            BetaPosterior.from_dict(data["pooled"]),
        )
        u.arms = {
            _checks.identifier("arm", a): BetaPosterior.from_dict(p)
            for a, p in data["arms"].items()
        }
        share, n_flags, tier = data["share"], data["n_flags"], data["tier"]
        if not (_checks.is_real(share) and 0.0 <= share <= 1.0):
            raise ValueError(f"share must be in [0, 1]; got {share!r}")
        if isinstance(n_flags, bool) or not isinstance(n_flags, int) or n_flags < 0:
            raise ValueError(f"n_flags must be an integer >= 0; got {n_flags!r}")
        if tier is not None and tier not in _RANK:
            raise ValueError(f"tier must be one of {TIERS}; got {tier!r}")
        u.share, u.n_flags, u.tier = float(share), n_flags, tier
        u.last_ts = _checks.timestamp("last_ts", data["last_ts"])
        return u


class PosteriorStore:
    """Beta click-rate posteriors per (user, arm) and per arm, with uncertainty tiers.

    **Priors** are never flat. A new (user, arm) posterior starts at
    Beta(m·s, (1 − m)·s) with ``s = prior_strength`` pseudo-events and ``m`` the click rate
    of the user's segment on that arm, estimated by the store itself from the mature
    feedback it has seen, hierarchically (each level shrunk to its parent with
    ``segment_prior_strength`` pseudo-events ``c``)::

        m_global      = (clicks + c·default_rate) / (events + c)
        m_seg         = (clicks_seg + c·m_global) / (events_seg + c)   (or set_segment_rate)
        m_seg_arm     = (clicks_seg_arm + c·m_seg) / (events_seg_arm + c)

    so a new segment starts at the global rate and a rare arm at its segment's rate. The
    aggregator knows the segment rates over all partitions better than one worker;
    ``set_segment_rate`` overrides ``m_seg`` with such a value. A prior is fixed when its
    posterior is created (the store never rewrites a prior; evidence is kept apart from it,
    see ``BetaPosterior``). The user's own event is not part of the rate its prior is taken
    from. Population posteriors (user ``"*"``) start from ``default_rate``: the same prior in
    every partition, so the aggregator can merge them.

    **Discounting** (``half_life_ms``): every posterior and rate estimate forgets with that
    event-time half-life, toward its prior.

    **Tiers** come from the spread of the user's *pooled* posterior (all arms) and from the
    share of the user's recent predictions whose conformal set was {0, 1}
    (``conformal_uncertain``; an exponential average over about ``uncertain_memory`` flagged
    events, the plain mean before that; events with ``None`` do not count). The spread is
    ``cv = std / rate``: the std of the pooled posterior, whose prior has only
    ``tier_prior_strength`` pseudo-events (default 2) at the segment rate ``m0``, over the
    user's rate shrunk with ``prior_strength`` pseudo-events,
    ``rate = (clicks + prior_strength·m0) / (events + prior_strength)``. Relative, so
    comparable across base rates: cv ≈ 1/√(clicks), so at the defaults ``confident`` needs
    about 16 clicks and ``high_epistemic`` means fewer than about 4. Why two strengths: the
    tier says how much *this user's own* feedback has told us, so the std must not count the
    exploration prior (``prior_strength`` in the hundreds is reasonable when users vary
    little around their segment, and would make a user without a single event look
    ``confident``); the shrunk rate keeps a lucky first click or two (weak-prior mean ~50 %)
    from looking precise::

        high_epistemic      cv > cv_high  or  share >= share_high
        confident           cv <= cv_confident  and  share <= share_confident
        moderate_uncertain  otherwise

    A tier change needs the rule to hold with every threshold moved by ``tier_margin``
    (relative) against the change, so a user sitting on a boundary does not flap and flood
    the tier events. ``update`` returns the tier events (including the first assignment,
    ``from_tier: None``). Tiers are re-evaluated on the user's updates only; population
    posteriors and unknown pairs get the cv part of the rule, on their own evidence with the
    tier prior strength.

    **Bounded state**: at most ``max_users`` users (least recently updated evicted first;
    ``drain_evicted`` hands their (user, arm) keys to the runtime for tombstones), at most
    ``max_segments`` segments and ``max_arms`` arms per user and in the population (events on
    arms beyond the cap update the pooled and rate statistics only). ``expire(before_ts)``
    drops users idle since before an event time. ``drain_dirty`` returns snapshots of the
    pairs updated since the last drain, for the batched compacted topic.

    **Persistence** is by records, for a compacted changelog: ``export_shared`` (rates and
    counters, bounded by segments), ``export_user`` per user, ``export_arm`` per arm and
    ``export_evicted`` per evicted user with undrained tombstone keys; ``dirty_users``,
    ``dirty_arms`` and ``dirty_evicted`` name the records changed since they were last
    asked (noted as the update runs: no scan), and ``restore`` rebuilds the store from
    them. The records carry the orders that matter (the LRU order, the order of the
    pending snapshots and tombstones), so a restored store continues exactly.

    Users are partitioned across workers, so a store has no ``merge``; the population
    posteriors (``population(arm)``) are ``BetaPosterior`` objects, which merge.

    >>> store = PosteriorStore(prior_strength=10, default_rate=0.05)
    >>> events = store.update("u1", "news", "default", 1, event_ts=1_000)
    >>> [(e["from_tier"], e["to_tier"]) for e in events]
    [(None, 'high_epistemic')]
    >>> snap = store.snapshot("u1", "news", event_ts=1_000)
    >>> snap["alpha"], snap["beta"], snap["n"], snap["tier"]
    (1.5, 9.5, 1, 'high_epistemic')
    >>> round(store.global_rate(), 4), round(store.segment_rate("default"), 4)
    (0.0594, 0.0687)
    >>> for i in range(400):
    ...     events = store.update("u1", "news", "default", int(i % 10 == 0), event_ts=2_000 + i)
    ...     if events:
    ...         print(events[0]["to_tier"], events[0]["n"])
    moderate_uncertain 42
    confident 172
    >>> sorted(s["user_id"] for s in store.drain_dirty(event_ts=3_000))
    ['*', 'u1']
    """

    def __init__(
        self,
        *,
        prior_strength: float = 10.0,
        tier_prior_strength: float = 2.0,
        default_rate: float = 0.05,
        segment_prior_strength: float = 100.0,
        half_life_ms: float | None = None,
        cv_confident: float = 0.25,
        cv_high: float = 0.5,
        share_confident: float = 0.1,
        share_high: float = 0.5,
        uncertain_memory: int = 50,
        tier_margin: float = 0.1,
        max_users: int = 1_000_000,
        max_segments: int = 10_000,
        max_arms: int = 1_000,
    ) -> None:
        self._prior_strength = _checks.config_positive("prior_strength", prior_strength)
        self._tier_strength = _checks.config_positive("tier_prior_strength", tier_prior_strength)
        self._default_rate = _checks.config_unit_open("default_rate", default_rate)
        self._segment_strength = _checks.config_positive(
            "segment_prior_strength", segment_prior_strength
        )
        self._half_life = _checks.config_half_life(half_life_ms)
        self._cv_confident = _checks.config_positive("cv_confident", cv_confident)
        self._cv_high = _checks.config_positive("cv_high", cv_high)
        if not self._cv_confident < self._cv_high:
            raise ConfigError(
                f"need cv_confident < cv_high; got {cv_confident!r} and {cv_high!r}"
            )
        if not (
            _checks.is_real(share_confident)
            and _checks.is_real(share_high)
            and 0.0 <= share_confident < share_high <= 1.0
        ):
            raise ConfigError(
                "need 0 <= share_confident < share_high <= 1; "
                f"got {share_confident!r} and {share_high!r}"
            )
        self._share_confident = float(share_confident)
        self._share_high = float(share_high)
        self._memory = _config_int("uncertain_memory", uncertain_memory)
        if not (_checks.is_real(tier_margin) and 0.0 <= tier_margin < 1.0):
            raise ConfigError(f"tier_margin must be a number in [0, 1); got {tier_margin!r}")
        self._margin = float(tier_margin)
        # The tier rule's thresholds at the three scales it is applied with (first
        # assignment, toward uncertainty, toward confidence), multiplied once.
        self._th_plain = self._thresholds(1.0)
        self._th_up = self._thresholds(1.0 + self._margin)
        self._th_down = self._thresholds(1.0 - self._margin)
        self._max_users = _config_int("max_users", max_users)
        self._max_segments = _config_int("max_segments", max_segments)
        self._max_arms = _config_int("max_arms", max_arms)
        self._reset()

    def _reset(self) -> None:
        """Empty state (construction and ``restore``)."""
        self._users: OrderedDict[str, _User] = OrderedDict()
        # Kept as users, pairs and tiers change, for metrics read often (``tier_counts``,
        # ``n_pairs``): a scan of a million users takes a second.
        self._n_pairs = 0
        self._tiers: dict[str, int] = dict.fromkeys((*TIERS, _NO_TIER), 0)
        self._population: dict[str, BetaPosterior] = {}
        # Rate statistics: only the discounted counts of these posteriors are used.
        self._global = self._counter()
        self._segments: dict[str, BetaPosterior] = {}
        self._segment_arms: dict[tuple[str, str], BetaPosterior] = {}
        self._overrides: dict[str, float] = {}
        # Each arm's position in ``_population`` and the segments it has rate counts for, so
        # that one arm's record is built without a scan (kept on creation, which is rare).
        self._arm_index: dict[str, int] = {}
        self._arm_segments: dict[str, list[str]] = {}
        # Updates so far: stamps the users' LRU order and the pairs' dirty order.
        self._ticks = 0
        # Pairs updated since the last ``drain_dirty``, in first-update order; the value is
        # the update (tick) that marked it, so per-user records can carry the order.
        self._dirty: dict[tuple[str, str], int] = {}
        # Evicted users' (user, arm) keys not yet drained, by user; values order the drain.
        self._evicted: dict[str, dict[str, int]] = {}
        self._n_evicted = 0
        # Records changed since the last ``dirty_*`` call (see ``export_user``).
        self._changed_users: set[str] = set()
        self._changed_arms: set[str] = set()
        self._changed_evicted: set[str] = set()

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as keyword arguments of the constructor."""
        return {
            "prior_strength": self._prior_strength,
            "tier_prior_strength": self._tier_strength,
            "default_rate": self._default_rate,
            "segment_prior_strength": self._segment_strength,
            "half_life_ms": self._half_life,
            "cv_confident": self._cv_confident,
            "cv_high": self._cv_high,
            "share_confident": self._share_confident,
            "share_high": self._share_high,
            "uncertain_memory": self._memory,
            "tier_margin": self._margin,
            "max_users": self._max_users,
            "max_segments": self._max_segments,
            "max_arms": self._max_arms,
        }

    @property
    def n_users(self) -> int:
        """Users held."""
        return len(self._users)

    @property
    def n_pairs(self) -> int:
        """(user, arm) posteriors held, population posteriors excluded."""
        return self._n_pairs

    def tier_counts(self) -> dict[str, int]:
        """Users held per tier (every tier in ``TIERS``, zeros included; a user not yet
        tiered counts under ``"none"``); kept up to date, no scan.

        >>> store = PosteriorStore()
        >>> _ = store.update("u1", "news", "default", 1, event_ts=1_000)
        >>> store.tier_counts()
        {'confident': 0, 'moderate_uncertain': 0, 'high_epistemic': 1, 'none': 0}
        """
        return dict(self._tiers)

    def _hold(self, user: _User, sign: int) -> None:
        """Count a user in (``sign`` 1) or out (-1) of the tier and pair counts."""
        self._tiers[user.tier or _NO_TIER] += sign
        self._n_pairs += sign * len(user.arms)

    def users(self) -> list[str]:
        """User ids held, least recently updated first."""
        return list(self._users)

    def arms(self) -> list[str]:
        """Arms with a population posterior."""
        return list(self._population)

    def evicted_users(self) -> list[str]:
        """Evicted users whose (user, arm) keys ``drain_evicted`` has not handed out yet."""
        return list(self._evicted)

    # ------------------------------------------------------------------ rates and priors

    def _counter(self) -> BetaPosterior:
        return BetaPosterior(half_life_ms=self._half_life)

    def _shrunk(self, counts: BetaPosterior | None, parent: float, ts: int | None) -> float:
        c = self._segment_strength
        if counts is None:
            return parent
        if self._half_life is None:
            # ``counts_at`` without discounting, read directly (three reads per new user).
            s, f = counts._successes, counts._failures
        else:
            s, f = counts.counts_at(ts)
        m = (s + c * parent) / (s + f + c)
        # min(max(m, floor), 1 - floor) as comparisons: the builtins cost ~0.5 µs a call on
        # this interpreter (no vectorcall for min/max before 3.13), and a new user needs
        # three of these.
        return _RATE_FLOOR if m < _RATE_FLOOR else (_RATE_CEIL if m > _RATE_CEIL else m)

    def global_rate(self, event_ts: int | None = None) -> float:
        """The running click rate over every event, shrunk toward ``default_rate``."""
        return self._shrunk(self._global, self._default_rate, event_ts)

    def segment_rate(
        self, segment: str, arm: str | None = None, event_ts: int | None = None
    ) -> float:
        """The prior mean the store would give a new user of ``segment`` (on ``arm``)."""
        rate = self._overrides.get(segment)
        if rate is None:
            rate = self._shrunk(self._segments.get(segment), self.global_rate(event_ts), event_ts)
        if arm is None:
            return rate
        return self._shrunk(self._segment_arms.get((segment, arm)), rate, event_ts)

    def set_segment_rate(self, segment: str, rate: float | None) -> None:
        """Use ``rate`` (e.g. from the aggregator's merged sketch) as ``m_seg``; ``None`` clears.

        Affects posteriors created afterwards only: existing priors are never rewritten.
        """
        _checks.identifier("segment", segment)
        if rate is None:
            self._overrides.pop(segment, None)
            return
        r = _checks.config_unit_open("rate", rate)
        if segment not in self._overrides and len(self._overrides) >= self._max_segments:
            raise ConfigError(f"more than max_segments={self._max_segments} segment rates")
        self._overrides[segment] = min(max(r, _RATE_FLOOR), 1.0 - _RATE_FLOOR)

    def _prior(self, rate: float, strength: float | None = None) -> BetaPosterior:
        s = self._prior_strength if strength is None else strength
        # ``rate`` is clamped into (0, 1) by _shrunk or set_segment_rate, the strengths and
        # the half-life were validated by the constructor.
        return BetaPosterior.from_rate_unchecked(rate, s, self._half_life)

    # ------------------------------------------------------------------ updates

    def update(
        self,
        user_id: str,
        arm: str | None,
        segment: str,
        label: int,
        event_ts: int,
        conformal_uncertain: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Count one mature feedback event; return the tier events it causes (0 or 1).

        ``arm`` may be ``None`` (an impression without an exploration arm): the pooled
        posterior, the tier and the rates still learn from it. A tier event is
        ``{"user_id", "segment", "from_tier", "to_tier", "event_ts", "cv",
        "uncertain_share", "n"}``.
        """
        uid = _checks.identifier("user_id", user_id)
        if uid == POPULATION:
            raise InvalidInputError("schema", f"user_id {POPULATION!r} is reserved")
        if arm is not None:
            _checks.identifier("arm", arm)
        seg = _checks.identifier("segment", segment)
        y = _checks.label(label)
        ts = _checks.timestamp("event_ts", event_ts)
        if conformal_uncertain is not None and not isinstance(conformal_uncertain, bool):
            raise InvalidInputError(
                "schema", f"conformal_uncertain must be a bool or None; got {conformal_uncertain!r}"
            )

        return self.observe(uid, arm, seg, y, ts, conformal_uncertain)

    def observe(
        self,
        user_id: str,
        arm: str | None,
        segment: str,
        label: int,
        event_ts: int,
        conformal_uncertain: bool | None = None,
    ) -> list[dict[str, Any]]:
        """``update`` for arguments already validated (by the decoder and the join): the
        pipeline's path, which re-checks nothing. ``user_id`` must not be ``"*"``."""
        uid, seg, y, ts = user_id, segment, label, event_ts
        tick = self._ticks
        self._ticks = tick + 1
        # Without discounting (the default) the six counts of an event go through ``_bump``:
        # ``BetaPosterior.count``'s arithmetic for weight 1 (the same floats), no method call.
        plain = self._half_life is None
        # Priors are taken before this event enters the rates: the user's own event must not
        # also be counted as prior evidence.
        users = self._users
        user = users.get(uid)
        seg_rate: float | None = None
        if user is None:
            seg_rate = self.segment_rate(seg, None, ts)
            user = _User(seg, self._prior(seg_rate, self._tier_strength))
            users[uid] = user
            self._tiers[_NO_TIER] += 1
        else:
            users.move_to_end(uid)
            user.segment = seg
        user.touch = tick
        self._changed_users.add(uid)
        dirty = self._dirty
        if arm is not None:
            arms = user.arms
            pair = arms.get(arm)
            if pair is None and len(arms) < self._max_arms:
                # A new user's segment rate was just read (nothing was counted since):
                # ``segment_rate(seg, arm, ts)`` shrinks toward it, no need to read it again.
                rate = (self.segment_rate(seg, arm, ts) if seg_rate is None else
                        self._shrunk(self._segment_arms.get((seg, arm)), seg_rate, ts))
                pair = arms[arm] = self._prior(rate)
                self._n_pairs += 1
            if pair is not None:
                if plain:
                    _bump(pair, y, ts)
                else:
                    pair.count(y, ts)
                if (uid, arm) not in dirty:
                    dirty[(uid, arm)] = tick
            pop = self._population.get(arm)
            if pop is None and len(self._population) < self._max_arms:
                pop = self._population[arm] = self._prior(self._default_rate)
                self._arm_index[arm] = len(self._arm_index)
                self._arm_segments[arm] = []
            if pop is not None:
                if plain:
                    _bump(pop, y, ts)
                else:
                    pop.count(y, ts)
                if (POPULATION, arm) not in dirty:
                    dirty[(POPULATION, arm)] = tick
                self._changed_arms.add(arm)
        pooled = user.pooled
        if plain:
            _bump(pooled, y, ts)
            _bump(self._global, y, ts)
        else:
            pooled.count(y, ts)
            self._global.count(y, ts)
        if ts > user.last_ts:
            user.last_ts = ts

        seg_counts = self._segments.get(seg)
        if seg_counts is None and len(self._segments) < self._max_segments:
            seg_counts = self._segments[seg] = self._counter()
        if seg_counts is not None:
            if plain:
                _bump(seg_counts, y, ts)
            else:
                seg_counts.count(y, ts)
            if arm is not None and arm in self._population:
                sa = self._segment_arms.get((seg, arm))
                if sa is None:
                    sa = self._segment_arms[(seg, arm)] = self._counter()
                    self._arm_segments[arm].append(seg)
                if plain:
                    _bump(sa, y, ts)
                else:
                    sa.count(y, ts)

        if conformal_uncertain is not None:
            user.n_flags += 1
            n_flags = user.n_flags
            step = 1.0 / (n_flags if n_flags < self._memory else self._memory)
            share = user.share + (float(conformal_uncertain) - user.share) * step
            user.share = 0.0 if share < 0.0 else (1.0 if share > 1.0 else share)

        # ``_retier`` inlined up to the decision (the per-event part): the cv of the pooled
        # posterior (``_spread``, same expression), then the tier rule with the thresholds
        # precomputed per scale (``_tier_rule`` multiplies the same floats).
        if plain:
            s = pooled._successes
            f = pooled._failures
        else:
            s, f = pooled.counts_at(ts)
        m0 = user.m0
        a = m0 * self._tier_strength + s
        b = (1.0 - m0) * self._tier_strength + f
        k = a + b
        ps = self._prior_strength
        cv = (a * b / (k * k * (k + 1.0))) ** 0.5 / ((s + ps * m0) / (s + f + ps))
        share = user.share
        old = user.tier
        if old is None:
            new = self._rule(cv, share, self._th_plain)
        else:
            # Moving toward uncertainty must clear thresholds raised by the margin; moving
            # toward confidence must clear thresholds lowered by it. From an end tier only
            # one direction can move.
            rank = _RANK[old]
            new = old
            if rank < 2:
                up = self._rule(cv, share, self._th_up)
                if _RANK[up] > rank:
                    new = up
            if new is old and rank > 0:
                down = self._rule(cv, share, self._th_down)
                if _RANK[down] < rank:
                    new = down
        if new == old:
            events: list[dict[str, Any]] = []
        else:
            events = self._tier_event(uid, user, old, new, cv, ts)
        if len(users) > self._max_users:
            self._evict_over_cap()
        return events

    def _spread(self, post: BetaPosterior, ts: int | None = None) -> float:
        """The tier ``cv`` of ``post``'s evidence read at ``ts`` (class docstring), prior mean
        ``m0``; ``counts_at`` reads the decayed counts without copying the posterior."""
        a0 = post.prior_alpha
        m0 = a0 / (a0 + post.prior_beta)
        s, f = post.counts_at(ts)
        a = m0 * self._tier_strength + s
        b = (1.0 - m0) * self._tier_strength + f
        k = a + b
        rate = (s + self._prior_strength * m0) / (s + f + self._prior_strength)
        return (a * b / (k * k * (k + 1.0))) ** 0.5 / rate

    def _tier_rule(self, cv: float, share: float, scale: float) -> str:
        if cv > self._cv_high * scale or share >= self._share_high * scale:
            return "high_epistemic"
        if cv <= self._cv_confident * scale and share <= self._share_confident * scale:
            return "confident"
        return "moderate_uncertain"

    @staticmethod
    def _rule(cv: float, share: float, th: tuple[float, float, float, float]) -> str:
        """``_tier_rule`` with its four thresholds already multiplied by the scale."""
        if cv > th[0] or share >= th[1]:
            return "high_epistemic"
        if cv <= th[2] and share <= th[3]:
            return "confident"
        return "moderate_uncertain"

    def _thresholds(self, scale: float) -> tuple[float, float, float, float]:
        return (self._cv_high * scale, self._share_high * scale,
                self._cv_confident * scale, self._share_confident * scale)

    def _tier_event(
        self, uid: str, user: _User, old: str | None, new: str, cv: float, ts: int
    ) -> list[dict[str, Any]]:
        """Move ``user`` from tier ``old`` to ``new``; the tier event, in a list."""
        user.tier = new
        tiers = self._tiers
        tiers[old or _NO_TIER] -= 1
        tiers[new] += 1
        return [
            {
                "user_id": uid,
                "segment": user.segment,
                "from_tier": old,
                "to_tier": new,
                "event_ts": ts,
                "cv": cv,
                "uncertain_share": user.share if user.n_flags else None,
                "n": user.pooled.n,
            }
        ]

    def _evict_over_cap(self) -> None:
        while len(self._users) > self._max_users:
            uid, user = self._users.popitem(last=False)
            self._forget(uid, user)
            if user.arms:
                pending = self._evicted.setdefault(uid, {})
                for arm in user.arms:
                    if arm not in pending:
                        pending[arm] = self._n_evicted
                        self._n_evicted += 1
                self._changed_evicted.add(uid)

    def _forget(self, uid: str, user: _User) -> None:
        """A user leaves the store: its pairs are no longer dirty, its record is deleted."""
        self._hold(user, -1)
        for arm in user.arms:
            self._dirty.pop((uid, arm), None)
        self._changed_users.add(uid)

    def expire(self, before_ts: int) -> list[tuple[str, str]]:
        """Drop users whose newest event is older than ``before_ts``; return their keys.

        The (user, arm) keys are for tombstones on the compacted posteriors topic. Meant to be
        driven by the watermark (e.g. ``watermark − idle TTL``): with discounting, an idle
        user's posterior is back at its prior anyway.
        """
        t = _checks.timestamp("before_ts", before_ts)
        gone: list[tuple[str, str]] = []
        for uid in [u for u, s in self._users.items() if s.last_ts < t]:
            user = self._users.pop(uid)
            self._forget(uid, user)
            gone += [(uid, arm) for arm in user.arms]
        return gone

    def drain_evicted(self) -> list[tuple[str, str]]:
        """(user, arm) keys of users evicted by the ``max_users`` cap since the last drain."""
        rows = sorted(
            (seq, uid, arm) for uid, arms in self._evicted.items() for arm, seq in arms.items()
        )
        self._changed_evicted.update(self._evicted)
        self._evicted.clear()
        return [(uid, arm) for _, uid, arm in rows]

    def drain_dirty(self, event_ts: int) -> list[dict[str, Any]]:
        """Snapshots (at ``event_ts``) of the pairs updated since the last drain, in order."""
        ts = _checks.timestamp("event_ts", event_ts)
        out = [self._snapshot(u, a, ts) for u, a in self._dirty]
        self.discard_dirty()
        return out

    def discard_dirty(self) -> None:
        """``drain_dirty`` without building the snapshots: for a caller that has just
        emitted every pair's snapshot (``snapshots``), e.g. at the end of a replay."""
        # The pending marks are part of the users' and arms' records.
        changed_users = self._changed_users
        changed_arms = self._changed_arms
        for uid, arm in self._dirty:
            if uid == POPULATION:
                changed_arms.add(arm)
            else:
                changed_users.add(uid)
        self._dirty.clear()

    # ------------------------------------------------------------------ reads

    def population(self, arm: str) -> BetaPosterior | None:
        """The arm's population posterior (a copy), or ``None`` if the arm was never seen."""
        pop = self._population.get(arm)
        return None if pop is None else pop.copy()

    def tier(self, user_id: str) -> str | None:
        """The user's current tier (``None`` for an unknown user)."""
        user = self._users.get(user_id)
        return None if user is None else user.tier

    def uncertain_share(self, user_id: str) -> float | None:
        """The user's recent conformal-uncertain share (``None``: unknown user or no flags)."""
        user = self._users.get(user_id)
        return None if user is None or not user.n_flags else user.share

    def user_segment(self, user_id: str) -> str | None:
        """The segment of the user's latest event (``None`` for an unknown user)."""
        user = self._users.get(user_id)
        return None if user is None else user.segment

    def posterior(
        self,
        user_id: str,
        arm: str,
        segment: str | None = None,
        event_ts: int | None = None,
    ) -> BetaPosterior:
        """The (user, arm) posterior read at ``event_ts`` (a copy), or the prior it would get.

        For an unknown pair the prior comes from the user's segment, else from ``segment``,
        else from the global rate. ``user_id="*"`` reads the arm's population posterior.
        """
        if user_id == POPULATION:
            pop = self._population.get(arm)
            post = pop if pop is not None else self._prior(self._default_rate)
            return post.at(event_ts)
        user = self._users.get(user_id)
        if user is not None and arm in user.arms:
            return user.arms[arm].at(event_ts)
        seg = user.segment if user is not None else segment
        rate = self.global_rate(event_ts) if seg is None else self.segment_rate(seg, arm, event_ts)
        return self._prior(rate)

    def snapshot(
        self, user_id: str, arm: str, event_ts: int, segment: str | None = None
    ) -> dict[str, Any]:
        """The DESIGN §3 posterior snapshot of (user, arm) at ``event_ts``.

        Unknown pairs get their prior (``n`` 0). ``tier`` is the user's stored tier (the one
        its tier events announced); for the population, and for unknown users, it is the cv
        rule applied to the posterior itself.
        """
        _checks.identifier("user_id", user_id)
        _checks.identifier("arm", arm)
        return self._snapshot(user_id, arm, _checks.timestamp("event_ts", event_ts), segment)

    def _snapshot(
        self, user_id: str, arm: str, ts: int, segment: str | None = None
    ) -> dict[str, Any]:
        # The store's own keys and a checked time: the end-of-replay and batched snapshots
        # of every pair go through here without re-checking them.
        if user_id == POPULATION:
            user = None
            post = self._population.get(arm)
        else:
            user = self._users.get(user_id)
            post = None if user is None else user.arms.get(arm)
        if post is None:
            # An unknown pair: the prior it would get (read at ``ts``: nothing to decay).
            post = self.posterior(user_id, arm, segment, ts)
        return self._snapshot_of(user_id, arm, post, user, ts)

    def _snapshot_of(
        self, user_id: str, arm: str, post: BetaPosterior, user: _User | None, ts: int
    ) -> dict[str, Any]:
        """The snapshot of ``post`` read at ``ts``: the values of ``post.at(ts)``'s
        ``alpha``, ``beta``, ``mean`` and ``std`` (same expressions), without the copy."""
        s, f = post.counts_at(ts)
        a = post.prior_alpha + s
        b = post.prior_beta + f
        k = a + b
        tier = None if user is None else user.tier
        if tier is None:
            tier = self._tier_rule(self._spread(post, ts), 0.0, 1.0)
        return {
            "user_id": user_id,
            "arm": arm,
            "alpha": a,
            "beta": b,
            "mean": a / k,
            "std": math.sqrt(a * b / (k * k * (k + 1.0))),
            "n": post.n,
            "tier": tier,
            "event_ts": ts,
        }

    def snapshots(self, event_ts: int) -> Iterator[dict[str, Any]]:
        """Snapshots of every population and (user, arm) posterior held, at ``event_ts``."""
        ts = _checks.timestamp("event_ts", event_ts)
        snap = self._snapshot_of
        for arm, pop in list(self._population.items()):
            yield snap(POPULATION, arm, pop, None, ts)
        for uid, user in list(self._users.items()):
            for arm, post in list(user.arms.items()):
                yield snap(uid, arm, post, user, ts)

    # ------------------------------------------------------------------ persistence

    def user_to_dict(self, user_id: str) -> dict[str, Any] | None:
        """One user's state (for a per-user table entry); ``None`` for an unknown user."""
        user = self._users.get(user_id)
        return None if user is None else {"v": 1, **user.to_dict()}

    def load_user(self, user_id: str, data: Mapping[str, Any]) -> None:
        """Install a user's state from ``user_to_dict`` (replacing any held state)."""
        uid = _checks.identifier("user_id", user_id)
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported user state version {data.get('v')!r}")
            user = _User.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed user state: {exc}") from exc
        old = self._users.get(uid)
        if old is not None:
            self._hold(old, -1)
            for arm in old.arms:
                if arm not in user.arms:
                    self._dirty.pop((uid, arm), None)
        self._hold(user, 1)
        user.touch = self._ticks
        self._ticks += 1
        self._users[uid] = user
        self._users.move_to_end(uid)
        self._changed_users.add(uid)
        self._evict_over_cap()

    # Incremental persistence: the store's state is one shared record (rates, counters),
    # one record per user, per arm with a population posterior, and per evicted user whose
    # tombstone keys are not drained yet. Only the shared record is bounded by the
    # configuration alone; the others are written when they change (``dirty_*``).

    def dirty_users(self) -> set[str]:
        """Users whose ``export_user`` changed since the last call (the call clears the set);
        an evicted or expired user is among them, with ``export_user`` None."""
        out = self._changed_users
        self._changed_users = set()
        return out

    def dirty_arms(self) -> set[str]:
        """Arms whose ``export_arm`` changed since the last call (the call clears the set)."""
        out = self._changed_arms
        self._changed_arms = set()
        return out

    def dirty_evicted(self) -> set[str]:
        """Users whose ``export_evicted`` changed since the last call (clears the set)."""
        out = self._changed_evicted
        self._changed_evicted = set()
        return out

    def export_user(self, user_id: str) -> dict[str, Any] | None:
        """One user's record, JSON-ready: posteriors, tier, share, its place in the LRU order
        (``touch``) and its pairs awaiting ``drain_dirty`` (``dirty``: ``[arm, mark]``);
        None when the store holds no such user (a delete)."""
        user = self._users.get(user_id)
        if user is None:
            return None
        dirty = self._dirty
        marks = [[arm, dirty[(user_id, arm)]] for arm in user.arms if (user_id, arm) in dirty]
        return {"v": 1, "user_id": user_id, **user.to_dict(), "touch": user.touch,
                "dirty": marks}

    def export_arm(self, arm: str) -> dict[str, Any] | None:
        """One arm's record: its population posterior, its position among the arms (``i``),
        its pending ``drain_dirty`` mark and its per-segment rate counts; None for an arm
        without a population posterior."""
        pop = self._population.get(arm)
        if pop is None:
            return None
        seg_arms = self._segment_arms
        return {
            "v": 1,
            "arm": arm,
            "i": self._arm_index[arm],
            "population": pop.to_dict(),
            "dirty": self._dirty.get((POPULATION, arm)),
            "segments": [[g, seg_arms[(g, arm)].to_dict()] for g in self._arm_segments[arm]],
        }

    def export_evicted(self, user_id: str) -> dict[str, Any] | None:
        """The (user, arm) keys of an evicted user that ``drain_evicted`` has not handed out
        yet (``arms``: ``[arm, order]``); None when there are none."""
        pending = self._evicted.get(user_id)
        if not pending:
            return None
        return {"v": 1, "user_id": user_id, "arms": [[a, n] for a, n in pending.items()]}

    def export_shared(self) -> dict[str, Any]:
        """The part bounded by segments: global and segment rate counts, overrides,
        counters (no hyper-parameters: the owner's configuration holds them)."""
        return {
            "v": 1,
            "global": self._global.to_dict(),
            "segments": [[g, p.to_dict()] for g, p in self._segments.items()],
            "overrides": [[g, r] for g, r in self._overrides.items()],
            "ticks": self._ticks,
            "n_evicted": self._n_evicted,
        }

    def restore(
        self,
        shared: Mapping[str, Any] | None,
        users: Iterable[Mapping[str, Any] | None] = (),
        arms: Iterable[Mapping[str, Any] | None] = (),
        evicted: Iterable[Mapping[str, Any] | None] = (),
    ) -> None:
        """Replace the whole state by exported records (``export_shared``, ``export_user``,
        ``export_arm``, ``export_evicted``; in any order, None items skipped): the store then
        behaves exactly as the exporting one. Nothing is dirty afterwards. Unreadable
        records raise ``StateError``."""
        try:
            self._restore(shared, users, arms, evicted)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed posterior store state: {exc!r}") from exc

    def _restore(
        self,
        shared: Mapping[str, Any] | None,
        users: Iterable[Mapping[str, Any] | None],
        arms: Iterable[Mapping[str, Any] | None],
        evicted: Iterable[Mapping[str, Any] | None],
    ) -> None:
        self._reset()
        if shared is not None:
            _version(shared, "posterior store")
            self._global = BetaPosterior.from_dict(shared["global"])
            self._segments = {str(g): BetaPosterior.from_dict(p) for g, p in shared["segments"]}
            for g, r in shared["overrides"]:
                self.set_segment_rate(g, r)
            self._ticks = _count("ticks", shared["ticks"])
            self._n_evicted = _count("n_evicted", shared["n_evicted"])
        # (mark, population?, user, arm): a pair and its arm marked by one update share the
        # mark, and the pair was marked first.
        marks: list[tuple[int, int, str, str]] = []
        held: list[tuple[int, str, _User]] = []
        for data in users:
            if data is None:
                continue
            _version(data, "posterior user")
            uid = _checks.identifier("user_id", data["user_id"])
            user = _User.from_dict(data)
            user.touch = _count("touch", data["touch"])
            for arm, mark in data["dirty"]:
                if arm not in user.arms:
                    raise ValueError(f"dirty arm {arm!r} has no posterior")
                marks.append((_count("mark", mark), 0, uid, arm))
            held.append((user.touch, uid, user))
        held.sort(key=lambda row: row[0])
        self._users = OrderedDict((uid, user) for _, uid, user in held)
        if len(self._users) != len(held):
            raise ValueError("a user has two records")
        for user in self._users.values():
            self._hold(user, 1)
        rows: list[tuple[int, str, Mapping[str, Any]]] = []
        for data in arms:
            if data is None:
                continue
            _version(data, "posterior arm")
            rows.append((_count("i", data["i"]), _checks.identifier("arm", data["arm"]), data))
        rows.sort(key=lambda row: row[0])
        if [i for i, _, _ in rows] != list(range(len(rows))):
            raise ValueError("arm positions must be 0, 1, ... without gaps")
        for i, arm, data in rows:
            self._population[arm] = BetaPosterior.from_dict(data["population"])
            self._arm_index[arm] = i
            segs = self._arm_segments[arm] = []
            for g, counts in data["segments"]:
                self._segment_arms[(str(g), arm)] = BetaPosterior.from_dict(counts)
                segs.append(str(g))
            if data["dirty"] is not None:
                marks.append((_count("mark", data["dirty"]), 1, POPULATION, arm))
        marks.sort()
        self._dirty = {(uid, arm): mark for mark, _, uid, arm in marks}
        gone: list[tuple[int, str, dict[str, int]]] = []
        for data in evicted:
            if data is None:
                continue
            _version(data, "posterior eviction")
            uid = _checks.identifier("user_id", data["user_id"])
            pending = {str(a): _count("order", n) for a, n in data["arms"]}
            if pending:
                gone.append((min(pending.values()), uid, pending))
        gone.sort(key=lambda row: row[0])
        self._evicted = {uid: pending for _, uid, pending in gone}

    def to_dict(self) -> dict[str, Any]:
        """The whole store as JSON-ready data with version field ``"v": 2``: the
        hyper-parameters and every record (``export_*``)."""
        return {
            "v": 2,
            "config": self.config,
            "shared": self.export_shared(),
            "users": [self.export_user(uid) for uid in self._users],
            "arms": [self.export_arm(arm) for arm in self._population],
            "evicted": [self.export_evicted(uid) for uid in self._evicted],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PosteriorStore:
        """Inverse of ``to_dict``; a malformed dict raises ``StateError``."""
        try:
            if data.get("v") != 2:
                raise ValueError(f"unsupported store version {data.get('v')!r}")
            out = cls(**data["config"])
            parts = (data["shared"], data["users"], data["arms"], data["evicted"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed posterior store state: {exc}") from exc
        out.restore(*parts)
        return out

    def __repr__(self) -> str:
        return (
            f"PosteriorStore(users={self.n_users}, pairs={self.n_pairs}, "
            f"arms={len(self._population)}, segments={len(self._segments)})"
        )


def _bump(post: BetaPosterior, label: int, ts: int) -> None:
    """``post.count(label, ts)`` for an undiscounted posterior (the same floats: weight 1),
    without the method's branch on the half-life: the store counts six posteriors per event."""
    if label:
        post._successes += 1.0
    else:
        post._failures += 1.0
    post._n += 1
    last = post._last_ts
    if last is None or ts > last:
        post._last_ts = ts


def _config_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def _version(data: Mapping[str, Any], what: str) -> None:
    if data.get("v") != 1:
        raise ValueError(f"unsupported {what} record version {data.get('v')!r}")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
    return value
