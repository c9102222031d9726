"""Online coverage of published conformal thresholds (DESIGN §5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from worker.core.conformal import _checks
from worker.core.errors import ConfigError, InvalidInputError, StateError

# Weighted sums, in this order: weight, weight², covered, uncertain ({0, 1}), empty, then
# weight and covered per label. Per-label sums are kept directly rather than as differences
# of totals, which cancel catastrophically when one label's weight has decayed to ~1e-8.
_FIELDS = ("w", "w2", "covered", "uncertain", "empty", "w0", "covered0", "w1", "covered1")
_W, _W2, _COV, _UNC, _EMPTY, _W0, _COV0, _W1, _COV1 = range(len(_FIELDS))


class CoverageTracker:
    """Running share of events whose true label is in the conformal set of the live ``qhat``.

    Each mature event brings its calibrated score ``p``, its label ``y`` and the ``qhat``
    that was published when it was scored (so a version change is tracked correctly).
    Besides ``coverage`` it keeps per-label coverage (marginal coverage can hide that clicks
    are never covered), the share of {0, 1} sets (``uncertain_share``) and of empty sets.

    With ``half_life_ms`` an event at event time ``t`` counts ``2 ** (-(T - t) / half_life)``
    at the newest time ``T`` seen: a decayed window that follows the current regime. Sums
    are kept scaled to ``T`` (they only ever shrink, so nothing overflows), which makes
    ``merge`` exact: both sides are rescaled to the later time and added; it is commutative
    and associative up to float rounding. ``n`` counts events, undiscounted; ``n_eff`` is
    Kish's effective sample size of the weights, for ``z`` (the coverage's distance from a
    target in standard errors: a reading well below −3 says the threshold under-covers).

    >>> t = CoverageTracker()
    >>> t.update(0.03, 0, qhat=0.05)   # set {0}: covered
    >>> t.update(0.04, 1, qhat=0.05)   # set {0}: a click, not covered
    >>> t.update_many([0.01, 0.2], [0, 0], qhat=0.05)  # {0} covered, {} not
    >>> t.n, t.coverage, t.coverage_by_label(1), t.empty_share
    (4, 0.5, 0.0, 0.25)
    >>> CoverageTracker.from_dict(t.to_dict()).coverage
    0.5
    >>> d = CoverageTracker(half_life_ms=1_000)
    >>> d.update(0.5, 1, qhat=0.2, ts=0)      # not covered, weight 0.5 at t = 1000
    >>> d.update(0.5, 1, qhat=0.6, ts=1_000)  # covered, weight 1
    >>> round(d.coverage, 4)
    0.6667
    """

    def __init__(self, half_life_ms: float | None = None) -> None:
        if half_life_ms is not None and not (
            _checks.is_real(half_life_ms) and float(half_life_ms) > 0
        ):
            raise ConfigError(
                f"half_life_ms must be a finite number > 0 or None; got {half_life_ms!r}"
            )
        self._half_life = None if half_life_ms is None else float(half_life_ms)
        self._sums = np.zeros(len(_FIELDS))
        self._n = 0
        self._ref_ts: int | None = None

    @property
    def half_life_ms(self) -> float | None:
        """Event-time half-life (``None``: every event counts fully)."""
        return self._half_life

    # ------------------------------------------------------------------ updates

    def update(self, p: float, y: int, qhat: float, ts: int | None = None) -> None:
        """Count one event: calibrated score ``p``, label ``y``, published ``qhat``."""
        self.update_many([p], [y], qhat, None if ts is None else [ts])

    def update_many(
        self, p: ArrayLike, y: ArrayLike, qhat: ArrayLike, ts: ArrayLike | None = None
    ) -> None:
        """Count a batch; ``qhat`` and ``ts`` are scalars or one per event.

        The whole batch is validated before the state changes.
        """
        pa = _checks.probabilities(p).ravel()
        ya = _checks.labels(y, pa.shape).astype(np.float64)
        qa = np.broadcast_to(np.asarray(qhat, dtype=np.float64), pa.shape)
        if not (np.isfinite(qa) & (qa >= 0) & (qa <= 1)).all():
            raise InvalidInputError("schema", "qhat must be finite numbers in [0, 1]")
        if pa.size == 0:
            return
        if ts is None:
            if self._half_life is not None:
                raise InvalidInputError("schema", "ts is required when half_life_ms is set")
            self._count(pa, ya, qa, None)
            return
        ta = np.asarray(ts)
        if ta.dtype.kind not in "iu" or (ta < 0).any() or (ta > _checks.MAX_TS).any():
            raise InvalidInputError(
                "schema", f"ts must be integer epoch-ms timestamps >= 0; got {ts!r}"
            )
        self._count(pa, ya, qa, np.broadcast_to(ta.astype(np.int64), pa.shape))

    def count_trusted(
        self, p: list[float], y: list[int], qhat: list[float], ts: list[int]
    ) -> None:
        """``update_many`` for a batch its caller built from validated values (the feedback
        stage's own served probabilities, labels, thresholds and event times): the same
        arithmetic without the checks, which cost more than the counting."""
        if p:
            self._count(np.array(p, dtype=np.float64), np.array(y, dtype=np.float64),
                        np.array(qhat, dtype=np.float64), np.array(ts, dtype=np.int64))

    def _count(
        self,
        pa: NDArray[np.float64],
        ya: NDArray[np.float64],
        qa: NDArray[np.float64],
        ta: NDArray[np.int64] | None,
    ) -> None:
        weights = np.ones(pa.size)
        if ta is not None:
            self._advance(int(ta.max()))
            if self._half_life is not None:
                assert self._ref_ts is not None
                weights = np.exp2(-(self._ref_ts - ta).astype(np.float64) / self._half_life)
        # The membership rule of ``conformal_threshold.prediction_sets``, with per-event qhat.
        has0 = pa <= qa
        has1 = (1.0 - pa) <= qa
        covered = np.where(ya == 1.0, has1, has0).astype(np.float64)
        rows = np.stack(
            [
                weights,
                weights * weights,
                weights * covered,
                weights * (has0 & has1),
                weights * ~(has0 | has1),
                weights * (1.0 - ya),
                weights * (1.0 - ya) * covered,
                weights * ya,
                weights * ya * covered,
            ]
        )
        self._sums += rows.sum(axis=1)
        self._n += int(pa.size)

    def _advance(self, t: int) -> None:
        if self._ref_ts is None or t <= self._ref_ts:
            if self._ref_ts is None:
                self._ref_ts = t
            return
        if self._half_life is not None:
            f = 2.0 ** (-(t - self._ref_ts) / self._half_life)
            self._scale(f)
        self._ref_ts = t

    def _scale(self, f: float) -> None:
        self._sums *= f
        self._sums[_W2] *= f  # squared weights decay twice as fast

    def merge(self, other: CoverageTracker) -> CoverageTracker:
        """Both trackers' events as a new tracker (same half-life required); neither changes."""
        if not isinstance(other, CoverageTracker):
            raise TypeError(f"can only merge a CoverageTracker; got {type(other).__name__}")
        if self._half_life != other._half_life:
            raise ConfigError(
                f"cannot merge trackers with half-lives {self._half_life} and {other._half_life}"
            )
        out = CoverageTracker(self._half_life)
        times = [t for t in (self._ref_ts, other._ref_ts) if t is not None]
        out._ref_ts = max(times) if times else None
        total = np.zeros(len(_FIELDS))
        for part in (self, other):
            sums = part._sums.copy()
            if (
                out._half_life is not None
                and part._ref_ts is not None
                and out._ref_ts is not None
                and part._ref_ts < out._ref_ts
            ):
                f = 2.0 ** (-(out._ref_ts - part._ref_ts) / out._half_life)
                sums *= f
                sums[_W2] *= f
            total += sums
        out._sums = total
        out._n = self._n + other._n
        return out

    # ------------------------------------------------------------------ reads

    def _ratio(self, num: float, den: float) -> float | None:
        return None if den <= 0.0 else num / den

    @property
    def n(self) -> int:
        """Events counted, undiscounted."""
        return self._n

    @property
    def last_ts(self) -> int | None:
        """Newest event time seen."""
        return self._ref_ts

    def weight(self, at_ts: int | None = None) -> float:
        """Total (decayed) weight read at ``at_ts`` (default: the newest event time)."""
        w = float(self._sums[_W])
        if at_ts is None or self._half_life is None or self._ref_ts is None:
            return w
        t = _checks.timestamp("at_ts", at_ts)
        return w * 2.0 ** (-(t - self._ref_ts) / self._half_life)

    @property
    def n_eff(self) -> float:
        """Kish's effective sample size (Σw)² / Σw² (= ``n`` without decay)."""
        w, w2 = float(self._sums[_W]), float(self._sums[_W2])
        return 0.0 if w2 <= 0.0 else w * w / w2

    @property
    def coverage(self) -> float | None:
        """Share of (weighted) events whose label was in its set; ``None`` when empty."""
        return self._ratio(float(self._sums[_COV]), float(self._sums[_W]))

    def coverage_by_label(self, label: int) -> float | None:
        """Coverage among events with this label (``None``: none seen)."""
        if label == 1:
            return self._ratio(float(self._sums[_COV1]), float(self._sums[_W1]))
        if label == 0:
            return self._ratio(float(self._sums[_COV0]), float(self._sums[_W0]))
        raise InvalidInputError("schema", f"label must be 0 or 1; got {label!r}")

    @property
    def uncertain_share(self) -> float | None:
        """Share of sets that were {0, 1}."""
        return self._ratio(float(self._sums[_UNC]), float(self._sums[_W]))

    @property
    def empty_share(self) -> float | None:
        """Share of sets that were empty."""
        return self._ratio(float(self._sums[_EMPTY]), float(self._sums[_W]))

    def z(self, target: float) -> float | None:
        """(coverage − target) / sqrt(target (1 − target) / n_eff); ``None`` when empty."""
        if not (_checks.is_real(target) and 0.0 < float(target) < 1.0):
            raise InvalidInputError("schema", f"target must be in (0, 1); got {target!r}")
        cov, n_eff = self.coverage, self.n_eff
        if cov is None or n_eff <= 0.0:
            return None
        return (cov - target) / math.sqrt(target * (1.0 - target) / n_eff)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with version field ``"v": 1``."""
        return {
            "v": 1,
            "half_life_ms": self._half_life,
            "n": self._n,
            "ref_ts": self._ref_ts,
            **{k: float(v) for k, v in zip(_FIELDS, self._sums, strict=True)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoverageTracker:
        """Inverse of ``to_dict``; a malformed dict raises ``StateError``."""
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported coverage state version {data.get('v')!r}")
            out = cls(data["half_life_ms"])
            sums = [data[k] for k in _FIELDS]
            if not all(_checks.is_real(v) and v >= 0 for v in sums):
                raise ValueError("sums must be finite numbers >= 0")
            n = data["n"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"n must be an integer >= 0; got {n!r}")
            out._sums = np.array(sums, dtype=np.float64)
            out._n = n
            ref = data["ref_ts"]
            out._ref_ts = None if ref is None else _checks.timestamp("ref_ts", ref)
            return out
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed coverage state: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"CoverageTracker(n={self._n}, coverage={self.coverage}, "
            f"half_life_ms={self._half_life})"
        )

