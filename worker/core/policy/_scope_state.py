"""Per-scope (global or segment) state of the recalibration policy (private)."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.core.errors import StateError
from worker.core.policy.online_learner import OnlineLearner, learner_from_dict, new_learner
from worker.core.policy.policy_config import PolicyConfig
from worker.core.sketches.event_ring import EventRing
from worker.core.sketches.logit_histogram import LogitHistogram


class ScopeState:
    """Training sketch, raw training ring, holdout ring and publication state of one scope.

    ``regime_seq``: events with a smaller feedback sequence number belong to an earlier
    regime (before a detected change) and no longer count for fits or scoring.
    ``current``: the newest published version message; ``follow`` marks a version that
    only mirrors the parent (a segment's copy of the global after the global changed
    regime), which is treated as "no own version" when candidates are judged.
    ``parametric``: the parametric calibrator that stands in for ``current`` as a shrinkage
    parent (``{"method", "params"}``).
    ``residual``: the segment's own offset from the global, ``(a, b)`` with
    ``segment = global o residual`` in logit space, carried over a global regime change
    that its own calibrator did not survive: until the segment has new-regime data of its
    own, its version is the new global composed with it, and its fits shrink toward that.
    ``learner``: the scope's online learner (``online_learner``; None when the policy runs
    without one), fed the scope's training labels, restarted (``reseed``) at a new regime;
    ``learner_n`` / ``learner_from_ts`` / ``learner_to_ts`` are the ``training`` block of a
    version it wins (labels and impression times since its start).
    """

    __slots__ = (
        "anchor",
        "current",
        "follow",
        "holdout",
        "last_refit_n",
        "learner",
        "learner_from_ts",
        "learner_n",
        "learner_positives",
        "learner_to_ts",
        "n_events",
        "parametric",
        "pending_drift",
        "refine_at",
        "regime_seq",
        "residual",
        "sketch",
        "survived_regime",
        "train",
        "version",
        "version_regime",
    )

    def __init__(
        self, config: PolicyConfig, start: tuple[float, float] = (1.0, 0.0)
    ) -> None:
        self.learner: OnlineLearner | None = new_learner(config, start)
        # The map served when the current regime's change was detected (``{"method",
        # "params"}``), which the regime's fits are shrunk toward; None: no change yet.
        self.anchor: dict[str, Any] | None = None
        self.learner_n = 0
        self.learner_positives = 0
        self.learner_from_ts: int | None = None
        self.learner_to_ts: int | None = None
        self.sketch = LogitHistogram(half_life_ms=config.half_life_ms)
        # With a contextual learner the rings keep each event's context, so its maps are
        # scored in context on the same events as every context-free candidate.
        fields = config.context_fields if config.online_method == "contextual" else None
        self.train = EventRing(config.train_buffer, fields)
        self.holdout = EventRing(config.holdout_capacity, fields)
        self.current: dict[str, Any] | None = None
        self.follow = False
        self.parametric: dict[str, Any] = {"method": "identity", "params": {}}
        self.residual: tuple[float, float] | None = None
        self.version = 0
        self.version_regime = 0
        self.regime_seq = 0
        # The latest global regime this segment's own version was checked against and kept.
        self.survived_regime = 0
        self.pending_drift = 0
        # ``n_events`` at which a young version (few training events, right after a change)
        # is due for its refinement, when that comes before the next scheduled refit.
        self.refine_at: int | None = None
        self.n_events = 0
        self.last_refit_n = -1

    @property
    def own(self) -> dict[str, Any] | None:
        """The scope's own (non-mirroring) current version, if any."""
        return None if self.follow else self.current

    @property
    def covered(self) -> bool:
        """Whether serving uses this segment's own calibrator (not the global's)."""
        return self.current is not None and not self.follow

    def add(self, z: float, y: int, ts: int, seq: int, holdout: bool, seg: int = 0,
            sketch: bool = True, impression: object = None) -> None:
        self.n_events += 1
        if holdout:
            self.holdout.append(z, y, ts, seq, seg, impression)
        else:
            self.train.append(z, y, ts, seq, seg, impression)
            if sketch:
                # Trusted: the policy hands in a clamped float logit, an int label and time.
                self.sketch.count_trusted(z, y, ts)

    def learn(self, z: float, y: int, ts: int, impression: object) -> None:
        """One training label into the online learner (none: nothing)."""
        learner = self.learner
        if learner is None:
            return
        learner.update(z, y, impression)  # type: ignore[arg-type]
        self.learner_n += 1
        self.learner_positives += y
        if self.learner_from_ts is None or ts < self.learner_from_ts:
            self.learner_from_ts = ts
        if self.learner_to_ts is None or ts > self.learner_to_ts:
            self.learner_to_ts = ts

    def reseed(self, config: PolicyConfig, start: tuple[float, float]) -> None:
        """A fresh online learner starting at ``start`` (a new regime: what it learnt
        before describes the old one, and its curvature would make it slow to leave)."""
        self.learner = new_learner(config, start)
        self.learner_n = self.learner_positives = 0
        self.learner_from_ts = self.learner_to_ts = None

    def rescale_learner(self, alpha: float, beta: float) -> bool:
        """After a change refitted a contextual map as ``sigmoid(alpha * eta + beta)`` of
        its logit: the learner continues from that map, keeping its context weights
        (``OnlineContextual.rescale``); False when the learner cannot (then ``reseed``)."""
        rescale = getattr(self.learner, "rescale", None)
        if rescale is None:
            return False
        rescale(alpha, beta)
        self.learner_n = self.learner_positives = 0
        self.learner_from_ts = self.learner_to_ts = None
        return True

    def learner_training(self) -> dict[str, Any]:
        """The ``training`` block of a version the learner wins."""
        return {"n": self.learner_n, "positives": self.learner_positives,
                "from_ts": self.learner_from_ts, "to_ts": self.learner_to_ts}

    def restart(self, seq: int, half_life_ms: float | None) -> None:
        """Start a new regime at ``seq``: drop older events, rebuild the sketch from the
        kept raw training events of the new regime."""
        if seq <= self.regime_seq:
            return
        self.regime_seq = seq
        self.train.drop_before(seq)
        self.holdout.drop_before(seq)
        self.sketch = LogitHistogram(half_life_ms=half_life_ms)
        z, y, ts, _ = self.train.arrays()
        if z.size:
            self.sketch.update_many(z, y.astype(np.int64), ts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sketch": self.sketch.to_dict(),
            "train": self.train.to_dict(),
            "holdout": self.holdout.to_dict(),
            "current": self.current,
            "follow": self.follow,
            "parametric": self.parametric,
            "residual": None if self.residual is None else list(self.residual),
            "version": self.version,
            "version_regime": self.version_regime,
            "regime_seq": self.regime_seq,
            "survived_regime": self.survived_regime,
            "pending_drift": self.pending_drift,
            "refine_at": self.refine_at,
            "n_events": self.n_events,
            "last_refit_n": self.last_refit_n,
            "anchor": self.anchor,
            "learner": None if self.learner is None else {
                "state": self.learner.to_dict(),
                "n": self.learner_n,
                "positives": self.learner_positives,
                "from_ts": self.learner_from_ts,
                "to_ts": self.learner_to_ts,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: PolicyConfig) -> ScopeState:
        state = cls(config)
        try:
            state.sketch = LogitHistogram.from_dict(data["sketch"])
            state.train = EventRing.from_dict(data["train"])
            state.holdout = EventRing.from_dict(data["holdout"])
            state.current = data["current"]
            state.follow = bool(data["follow"])
            state.parametric = dict(data["parametric"])
            residual = data.get("residual")  # absent in states written before it existed
            state.residual = None if residual is None else (
                float(residual[0]), float(residual[1])
            )
            state.version = int(data["version"])
            state.version_regime = int(data["version_regime"])
            state.regime_seq = int(data["regime_seq"])
            state.survived_regime = int(data["survived_regime"])
            state.pending_drift = int(data["pending_drift"])
            refine_at = data.get("refine_at")
            state.refine_at = None if refine_at is None else int(refine_at)
            state.n_events = int(data["n_events"])
            state.last_refit_n = int(data["last_refit_n"])
            anchor = data.get("anchor")  # absent in states written before it existed
            state.anchor = None if anchor is None else dict(anchor)
            # Absent in states written before the learner existed: it starts fresh.
            learner = data.get("learner")
            if learner is not None and config.online_method is not None:
                state.learner = learner_from_dict(config.online_method, learner["state"])
                state.learner_n = int(learner["n"])
                state.learner_positives = int(learner["positives"])
                state.learner_from_ts = _opt_int(learner["from_ts"])
                state.learner_to_ts = _opt_int(learner["to_ts"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise StateError(f"invalid policy scope state: {exc}") from exc
        return state


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
