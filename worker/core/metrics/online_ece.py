"""Streaming calibration metrics: the per-bin sums behind ``CalibrationReport``."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.errors import ConfigError, InvalidInputError
from worker.core.metrics.calibration_report import CalibrationReport
from worker.core.metrics.functions import (
    LOG_LOSS_EPS,
    _aggregate,
    _Aggregates,
    _as_1d,
    _check_inputs,
    _check_level,
    _report,
    check_n_bins,
)

_PER_BIN = ("w", "wy", "wp", "w2", "w2pq")
_SCALARS = ("brier", "nll", "sp_num", "sp_var")
# Stored weights are 2**((ts - anchor) / half_life); re-anchoring once the exponent passes
# this keeps squared weights (up to 2**128) far from float overflow (2**1024).
_MAX_EXPONENT = 64.0


class OnlineCalibration:
    """Mergeable accumulator of calibration statistics with optional event-time decay.

    Keeps, per ECE bin, the sums of ``w``, ``w y``, ``w p``, ``w^2`` and ``w^2 p(1-p)`` and four
    global sums (``w (y-p)^2``, ``w * log loss``, and Spiegelhalter's numerator and variance).
    ``report()`` equals ``calibration_metrics(p, y, weights)`` on the same events, with every
    metric, the debiased L2-ECE and the ECE confidence interval included.

    Decay: with ``half_life_ms = h`` an event at event time ``ts`` weighs
    ``2 ** (-(t - ts) / h)`` at report time ``t`` (default: the latest ``ts`` seen), so an
    event ``h`` ms older than another weighs half as much, whatever the arrival order. Without
    decay ``ts`` is optional and only tracked. ``merge`` is associative and commutative (up to
    float rounding; commutative exactly) and equals feeding both streams to one accumulator.

    Cost: an ``update`` is a few dozen float operations on small lists (no numpy);
    ``update_many`` is vectorised.

    >>> oc = OnlineCalibration()
    >>> for p, y in [(0.1, 0), (0.1, 0), (0.9, 1), (0.9, 0)]:
    ...     oc.update(p, y)
    >>> r = oc.report()
    >>> r.n, round(r.ece, 3)
    (4.0, 0.25)
    >>> d = OnlineCalibration(half_life_ms=1000)
    >>> d.update(0.5, 1, ts=0)
    >>> d.update(0.5, 0, ts=1000)
    >>> d.report().n, d.report().positives
    (1.5, 0.5)
    >>> OnlineCalibration.from_dict(d.to_dict()).to_dict() == d.to_dict()
    True
    """

    __slots__ = (
        "_anchor",
        "_brier",
        "_count",
        "_edges",
        "_half_life",
        "_max_ts",
        "_n_bins",
        "_nll",
        "_sp_num",
        "_sp_var",
        "_w",
        "_w2",
        "_w2pq",
        "_wp",
        "_wy",
    )

    def __init__(self, n_bins: int = 15, half_life_ms: float | None = None) -> None:
        self._n_bins = check_n_bins(n_bins)
        if half_life_ms is not None and not (
            isinstance(half_life_ms, (int, float))
            and not isinstance(half_life_ms, bool)
            and 0.0 < half_life_ms < math.inf
        ):
            raise ConfigError(
                f"half_life_ms must be a finite number > 0 or None; got {half_life_ms!r}"
            )
        self._half_life: float | None = None if half_life_ms is None else float(half_life_ms)
        self._edges = [k / self._n_bins for k in range(self._n_bins + 1)]
        self._w = [0.0] * self._n_bins
        self._wy = [0.0] * self._n_bins
        self._wp = [0.0] * self._n_bins
        self._w2 = [0.0] * self._n_bins
        self._w2pq = [0.0] * self._n_bins
        self._brier = 0.0
        self._nll = 0.0
        self._sp_num = 0.0
        self._sp_var = 0.0
        self._count = 0
        self._anchor: float | None = None  # event time at which a stored weight is 1
        self._max_ts: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def n_bins(self) -> int:
        return self._n_bins

    @property
    def half_life_ms(self) -> float | None:
        return self._half_life

    @property
    def count(self) -> int:
        """Events absorbed, undiscounted."""
        return self._count

    @property
    def max_ts(self) -> float | None:
        """Latest event time seen (``None`` before any event with a ``ts``)."""
        return self._max_ts

    # ------------------------------------------------------------------ updates

    def _rescale(self, first: float) -> None:
        second = first * first
        for b in range(self._n_bins):
            self._w[b] *= first
            self._wy[b] *= first
            self._wp[b] *= first
            self._w2[b] *= second
            self._w2pq[b] *= second
        self._brier *= first
        self._nll *= first
        self._sp_num *= first
        self._sp_var *= second

    def _decay_factor(self, ts: float) -> float:
        """Stored weight multiplier of an event at ``ts`` (re-anchoring when needed)."""
        hl = self._half_life
        assert hl is not None
        if self._anchor is None:
            self._anchor = ts
        e = (ts - self._anchor) / hl
        if e > _MAX_EXPONENT:
            self._rescale(2.0 ** (-e))
            self._anchor = ts
            e = 0.0
        return 2.0**e

    def update(self, p: float, y: int, ts: float | None = None, weight: float = 1.0) -> None:
        """Absorb one scored, labeled event (``ts`` required when decaying)."""
        if not 0.0 <= p <= 1.0:
            raise InvalidInputError(
                "score_range", f"score must be a finite number in [0, 1]; got {p!r}"
            )
        if y != 0 and y != 1:
            raise InvalidInputError("schema", f"label must be 0 or 1; got {y!r}")
        if not 0.0 <= weight < math.inf:
            raise InvalidInputError(
                "schema", f"weight must be a finite number >= 0; got {weight!r}"
            )
        if ts is not None and not -math.inf < ts < math.inf:
            raise InvalidInputError("schema", f"ts must be a finite number; got {ts!r}")
        if ts is None and self._half_life is not None:
            raise InvalidInputError(
                "schema", "ts is required when half_life_ms is set; got None"
            )
        self.count_trusted(p, y, ts, weight)

    def count_trusted(self, p: float, y: int, ts: float | None, weight: float = 1.0) -> None:
        """``update`` for values the caller has validated (``p`` in [0, 1], ``y`` 0 or 1, a
        finite ``ts``, given when decaying; a finite ``weight >= 0``): the feedback stage's
        per-event path, whose CUSUM has just checked the same ``p`` and ``y``."""
        if ts is not None and (self._max_ts is None or ts > self._max_ts):
            self._max_ts = ts
        hl = self._half_life
        if hl is not None:
            assert ts is not None
            # _decay_factor inlined: this is the per-event hot path.
            anchor = self._anchor
            if anchor is None:
                anchor = self._anchor = ts
            e = (ts - anchor) / hl
            if e > _MAX_EXPONENT:
                weight *= self._decay_factor(ts)
            else:
                weight *= 2.0**e

        nb = self._n_bins
        edges = self._edges
        # ceil(p * nb) can miss by one next to an edge; the edge comparisons make it exact
        # (the same bin as the vectorised searchsorted).
        b = math.ceil(p * nb) - 1
        if b < 0:
            b = 0
        elif b >= nb:
            b = nb - 1
        if p <= edges[b]:
            if b > 0:
                b -= 1
        elif p > edges[b + 1]:
            b += 1

        w2 = weight * weight
        pq = p * (1.0 - p)
        r = y - p
        om = 1.0 - 2.0 * p
        self._w[b] += weight
        self._wp[b] += weight * p
        self._w2[b] += w2
        self._w2pq[b] += w2 * pq
        if y:
            self._wy[b] += weight
            loss = -math.log(p if p > LOG_LOSS_EPS else LOG_LOSS_EPS)
        else:
            q = 1.0 - p
            loss = -math.log(q if q > LOG_LOSS_EPS else LOG_LOSS_EPS)
        self._brier += weight * r * r
        self._nll += weight * loss
        self._sp_num += weight * r * om
        self._sp_var += w2 * pq * om * om
        self._count += 1

    def update_many(
        self,
        p: ArrayLike,
        y: ArrayLike,
        ts: ArrayLike | float | None = None,
        weights: ArrayLike | None = None,
    ) -> None:
        """Absorb a batch (vectorised); equal to ``update`` on each event, up to rounding.

        ``ts`` is an array of event times or one time for the whole batch.
        """
        pa, ya, wa = _check_inputs(p, y, weights)
        if pa.size == 0:
            return
        ta = None
        if ts is not None:
            ta = np.broadcast_to(np.asarray(ts, dtype=np.float64), pa.shape)
            ta = _as_1d("ts", ta)
            if not np.isfinite(ta).all():
                raise InvalidInputError(
                    "schema", f"ts must be a finite number; got {float(ta[~np.isfinite(ta)][0])!r}"
                )
            top = float(ta.max())
            if self._max_ts is None or top > self._max_ts:
                self._max_ts = top
        if self._half_life is not None:
            if ta is None:
                raise InvalidInputError(
                    "schema", "ts is required when half_life_ms is set; got None"
                )
            self._decay_factor(float(ta.max()))  # re-anchors first if needed
            assert self._anchor is not None
            factor = np.exp2((ta - self._anchor) / self._half_life)
            wa = factor if wa is None else wa * factor
        agg = _aggregate(pa, ya, wa, self._n_bins)
        for name in _PER_BIN:
            mine: list[float] = getattr(self, "_" + name)
            for b, v in enumerate(getattr(agg, name).tolist()):
                mine[b] += v
        self._brier += agg.brier
        self._nll += agg.nll
        self._sp_num += agg.sp_num
        self._sp_var += agg.sp_var
        self._count += int(pa.size)

    def merge(self, other: OnlineCalibration) -> OnlineCalibration:
        """A new accumulator holding the events of both; ``self`` and ``other`` are unchanged."""
        if not isinstance(other, OnlineCalibration):
            raise TypeError(f"can only merge OnlineCalibration; got {type(other).__name__}")
        if other._n_bins != self._n_bins or other._half_life != self._half_life:
            raise ConfigError(
                "cannot merge OnlineCalibration with different hyper-parameters: "
                f"n_bins {self._n_bins} vs {other._n_bins}, "
                f"half_life_ms {self._half_life} vs {other._half_life}"
            )
        out = copy.deepcopy(self)
        out._absorb(other)
        return out

    def _absorb(self, other: OnlineCalibration) -> None:
        # In place, on the fresh copy ``merge`` made (same hyper-parameters, checked there).
        mine_f = theirs_f = 1.0
        if self._half_life is not None and other._anchor is not None:
            if self._anchor is None:
                self._anchor = other._anchor
            # The later anchor keeps every factor <= 1 (no overflow).
            anchor = max(self._anchor, other._anchor)
            mine_f = 2.0 ** ((self._anchor - anchor) / self._half_life)
            theirs_f = 2.0 ** ((other._anchor - anchor) / self._half_life)
            self._anchor = anchor
        mine_s, theirs_s = mine_f * mine_f, theirs_f * theirs_f
        for name, mf, tf in (
            ("w", mine_f, theirs_f),
            ("wy", mine_f, theirs_f),
            ("wp", mine_f, theirs_f),
            ("w2", mine_s, theirs_s),
            ("w2pq", mine_s, theirs_s),
        ):
            mine: list[float] = getattr(self, "_" + name)
            theirs: list[float] = getattr(other, "_" + name)
            for b in range(self._n_bins):
                mine[b] = mine[b] * mf + theirs[b] * tf
        self._brier = self._brier * mine_f + other._brier * theirs_f
        self._nll = self._nll * mine_f + other._nll * theirs_f
        self._sp_num = self._sp_num * mine_f + other._sp_num * theirs_f
        self._sp_var = self._sp_var * mine_s + other._sp_var * theirs_s
        self._count += other._count
        if other._max_ts is not None and (self._max_ts is None or other._max_ts > self._max_ts):
            self._max_ts = other._max_ts

    # ------------------------------------------------------------------ results

    def report(self, at_ts: float | None = None, ci_level: float = 0.95) -> CalibrationReport:
        """The metrics of the events so far, weighted as of ``at_ts`` (default: latest ts).

        ``at_ts`` only changes the decayed weight totals (``n``, ``positives``, ...), never
        ratios such as ECE, which are invariant to a common rescaling.
        """
        first = 1.0
        if self._half_life is not None and self._anchor is not None:
            t = self._max_ts if at_ts is None else float(at_ts)
            assert t is not None
            first = 2.0 ** ((self._anchor - t) / self._half_life)
        second = first * first
        agg = _Aggregates(
            w=np.array(self._w) * first,
            wy=np.array(self._wy) * first,
            wp=np.array(self._wp) * first,
            w2=np.array(self._w2) * second,
            w2pq=np.array(self._w2pq) * second,
            brier=self._brier * first,
            nll=self._nll * first,
            sp_num=self._sp_num * first,
            sp_var=self._sp_var * second,
        )
        return _report(agg, _check_level("ci_level", ci_level))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with ``"v": 1`` (sums are stored relative to ``anchor_ts``)."""
        out: dict[str, Any] = {
            "v": 1,
            "n_bins": self._n_bins,
            "half_life_ms": self._half_life,
            "anchor_ts": self._anchor,
            "max_ts": self._max_ts,
            "count": self._count,
        }
        for name in _PER_BIN:
            out[name] = list(getattr(self, "_" + name))
        for name in _SCALARS:
            out[name] = getattr(self, "_" + name)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnlineCalibration:
        """Inverse of ``to_dict``."""
        if data.get("v") != 1:
            raise InvalidInputError(
                "schema", f"OnlineCalibration state version must be 1; got {data.get('v')!r}"
            )
        obj = cls(n_bins=data["n_bins"], half_life_ms=data["half_life_ms"])
        for name in _PER_BIN:
            values = [float(v) for v in data[name]]
            if len(values) != obj._n_bins:
                raise InvalidInputError(
                    "schema", f"{name} must have {obj._n_bins} entries; got {len(values)}"
                )
            setattr(obj, "_" + name, values)
        for name in _SCALARS:
            setattr(obj, "_" + name, float(data[name]))
        obj._count = int(data["count"])
        obj._anchor = None if data["anchor_ts"] is None else data["anchor_ts"]
        obj._max_ts = None if data["max_ts"] is None else data["max_ts"]
        return obj
