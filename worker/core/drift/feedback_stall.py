"""Detector for a broken click pipeline (``feedback_stall``, DESIGN §7)."""

from __future__ import annotations

import math
from typing import Any

from scipy.special import pdtr

from worker.core.checks import check_int
from worker.core.drift._cusum import check_real, check_version
from worker.core.errors import ConfigError, InvalidInputError


def _check_ts(ts: object) -> int:
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise InvalidInputError("schema", f"ts must be an integer (epoch ms); got {ts!r}")
    return ts


class FeedbackStall:
    """Impressions mature but no click arrives: fires on zero clicks against many expected.

    Counts live in event-time buckets of ``bucket_ms``; ``check(ts)`` looks at the window of
    the ``window_ms // bucket_ms`` buckets ending with the one holding ``ts``. It fires when
    that window has at least ``min_impressions`` impressions, **zero** clicks, and expected
    clicks ``E = sum p >= -log(alpha)``: with calibrated scores the clicks in the window are
    (at most) Poisson(E), and ``P(no click) <= exp(-E) <= alpha``.

    False-alarm rate: a false alarm needs a click-free stretch carrying expected clicks
    ``>= -log(alpha)``. Such gaps start at a click and occur at most ``alpha`` times per
    expected click, i.e. at most ``alpha * CTR <= alpha`` times per event, however often
    ``check`` is called (consecutive firing checks inside one gap are one episode for the
    alert lifecycle). The default ``alpha = 1e-6`` matches the global target of one false
    alarm per 10^6 events (``E >= 13.8``).

    Timing: register an impression's expected clicks when its label matures
    (``observe_impressions(n, sum_p, ts=maturity time)``) and each click at its event time
    (``observe_clicks(n, ts)``). In steady traffic both flows have the same rate per unit of
    event time, so the window compares like with like; right after start-up there are no
    matured impressions yet and nothing fires. Assumptions: scores calibrated (a model that
    over-predicts tenfold looks like a partial stall only to ``BaseRateShift``), clicks
    independent. ``p_value(ts)`` is the Poisson lower tail ``P(X <= clicks)`` of the window.
    ``merge`` adds the counts of another partition's detector.

    >>> det = FeedbackStall(window_ms=600_000, bucket_ms=60_000, min_impressions=100)
    >>> round(det.min_expected_clicks, 1)
    13.8
    >>> for minute in range(10):
    ...     det.observe_impressions(500, 20.0, ts=minute * 60_000)
    ...     det.observe_clicks(19, ts=minute * 60_000 + 1)
    >>> det.check(599_999)
    False
    >>> for minute in range(10, 13):                 # clicks stop arriving
    ...     det.observe_impressions(500, 20.0, ts=minute * 60_000)
    >>> det.window(779_999), det.check(779_999)
    ((5000, 200.0, 133), False)
    >>> for minute in range(13, 20):
    ...     det.observe_impressions(500, 20.0, ts=minute * 60_000)
    >>> det.window(1_199_999), det.check(1_199_999)
    ((5000, 200.0, 0), True)
    >>> FeedbackStall.from_dict(det.to_dict()).to_dict() == det.to_dict()
    True
    """

    __slots__ = (
        "_alpha",
        "_bucket_ms",
        "_buckets",
        "_max_bucket",
        "_min_expected",
        "_min_impressions",
        "_n_buckets",
        "_window_ms",
    )

    def __init__(
        self,
        window_ms: int = 900_000,
        bucket_ms: int = 60_000,
        min_impressions: int = 200,
        alpha: float = 1e-6,
    ) -> None:
        self._window_ms = check_int("window_ms", window_ms, 1)
        self._bucket_ms = check_int("bucket_ms", bucket_ms, 1)
        if window_ms % bucket_ms:
            raise ConfigError(
                f"window_ms must be a multiple of bucket_ms; got {window_ms} and {bucket_ms}"
            )
        self._n_buckets = window_ms // bucket_ms
        self._min_impressions = check_int("min_impressions", min_impressions, 1)
        self._alpha = check_real("alpha", alpha, 0.0, 1.0)
        self._min_expected = -math.log(self._alpha)
        # bucket index -> [impressions, expected clicks, clicks]
        self._buckets: dict[int, list[Any]] = {}
        self._max_bucket: int | None = None

    @property
    def min_expected_clicks(self) -> float:
        """Expected clicks a click-free window must carry to fire: ``-log(alpha)``."""
        return self._min_expected

    def _bucket(self, ts: int) -> list[Any]:
        k = ts // self._bucket_ms
        if self._max_bucket is None or k > self._max_bucket:
            self._max_bucket = k
            oldest = k - self._n_buckets
            # Keep state bounded: buckets that no window ending now or later can see.
            for old in [b for b in self._buckets if b <= oldest]:
                del self._buckets[old]
        bucket = self._buckets.get(k)
        if bucket is None:
            bucket = self._buckets[k] = [0, 0.0, 0]
        return bucket

    def observe_impressions(self, n: int, expected_clicks: float, ts: int) -> None:
        """``n`` impressions, whose scores sum to ``expected_clicks``, matured at ``ts``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInputError("schema", f"n must be an integer >= 0; got {n!r}")
        if not 0.0 <= expected_clicks <= n:  # NaN fails too
            raise InvalidInputError(
                "schema", f"expected_clicks must be a number in [0, n={n}]; got {expected_clicks!r}"
            )
        bucket = self._bucket(_check_ts(ts))
        bucket[0] += n
        bucket[1] += float(expected_clicks)

    def count_impression(self, expected_click: float, ts: int) -> None:
        """``observe_impressions(1, expected_click, ts)`` for values the caller computed
        from validated input (the feedback stage, once per impression and label)."""
        bucket = self._bucket(ts)
        bucket[0] += 1
        bucket[1] += float(expected_click)

    def count_click(self, ts: int) -> None:
        """``observe_clicks(1, ts)`` for a validated event time."""
        self._bucket(ts)[2] += 1

    def observe_clicks(self, n: int, ts: int) -> None:
        """``n`` clicks arrived at event time ``ts``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInputError("schema", f"n must be an integer >= 0; got {n!r}")
        self._bucket(_check_ts(ts))[2] += n

    def window(self, ts: int) -> tuple[int, float, int]:
        """``(impressions, expected_clicks, clicks)`` in the window ending at ``ts``."""
        k = _check_ts(ts) // self._bucket_ms
        imp = 0
        exp = 0.0
        clk = 0
        for b, (i, e, c) in self._buckets.items():
            if k - self._n_buckets < b <= k:
                imp += i
                exp += e
                clk += c
        return imp, exp, clk

    def check(self, ts: int) -> bool:
        """Whether the window ending at ``ts`` looks like a stalled click pipeline."""
        imp, exp, clk = self.window(ts)
        return clk == 0 and imp >= self._min_impressions and exp >= self._min_expected

    def p_value(self, ts: int) -> float:
        """Poisson ``P(X <= clicks)`` with mean the window's expected clicks (1 if none)."""
        _, exp, clk = self.window(ts)
        if exp <= 0.0:
            return 1.0
        return float(min(1.0, pdtr(clk, exp)))

    def merge(self, other: FeedbackStall) -> FeedbackStall:
        """A new detector as if one had seen both streams; ``self`` and ``other`` are unchanged.

        Same configuration required (``ConfigError`` otherwise).
        """
        if not isinstance(other, FeedbackStall):
            raise TypeError(f"can only merge FeedbackStall; got {type(other).__name__}")
        if other.config() != self.config():
            raise ConfigError("cannot merge FeedbackStall detectors with different configs")
        out = FeedbackStall(**self.config())
        out._max_bucket = self._max_bucket
        # Fresh lists: the buckets are mutable and must not be shared with either operand.
        out._buckets = {b: list(v) for b, v in self._buckets.items()}
        for b, (i, e, c) in other._buckets.items():
            mine = out._buckets.get(b)
            if mine is None:
                out._buckets[b] = [i, e, c]
            else:
                mine[0] += i
                mine[1] += e
                mine[2] += c
        if other._max_bucket is not None:
            out._max_bucket = (
                other._max_bucket
                if out._max_bucket is None
                else max(out._max_bucket, other._max_bucket)
            )
            oldest = out._max_bucket - out._n_buckets
            for old in [b for b in out._buckets if b <= oldest]:
                del out._buckets[old]
        return out

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {
            "window_ms": self._window_ms,
            "bucket_ms": self._bucket_ms,
            "min_impressions": self._min_impressions,
            "alpha": self._alpha,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with its configuration (``"v": 1``)."""
        return {
            "v": 1,
            "config": self.config(),
            "max_bucket": self._max_bucket,
            "buckets": [[b, i, e, c] for b, (i, e, c) in sorted(self._buckets.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedbackStall:
        """Inverse of ``to_dict``."""
        check_version("FeedbackStall", data)
        out = cls(**data["config"])
        out._max_bucket = None if data["max_bucket"] is None else int(data["max_bucket"])
        out._buckets = {int(b): [int(i), float(e), int(c)] for b, i, e, c in data["buckets"]}
        return out
