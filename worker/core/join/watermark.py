"""The event-time watermark of one partition (DESIGN §4)."""

from __future__ import annotations

import math
from typing import Any

from worker.core.errors import ConfigError, StateError

_INF = math.inf


def _check_ms(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; True as a window length is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "a positive" if minimum > 0 else "a non-negative"
        raise ConfigError(f"{name} must be {bound} integer (milliseconds); got {value!r}")
    return value


def _encode(value: float) -> int | str | None:
    # JSON has no infinities: -inf (nothing seen yet) is null, +inf (finished) is "inf".
    if value == -_INF:
        return None
    if value == _INF:
        return "inf"
    return int(value)


def _decode(value: int | str | None) -> float:
    if value is None:
        return -_INF
    if value == "inf":
        return _INF
    return int(value)


class Watermark:
    """Max event time seen minus the allowed lateness, with an idle advance on wall time.

    The watermark only moves forward. ``observe`` feeds an event's ``ts`` (and, in the
    Kafka runtime, its arrival wall time); ``idle`` advances an idle partition to
    ``wall_ms - idle_timeout_ms - allowed_lateness_ms`` once no event has arrived for
    ``idle_timeout_ms`` wall milliseconds, because production event time tracks wall time
    and an idle partition's negatives must still mature. Replay passes no wall times and
    never calls ``idle``. The idle timer starts at the first wall time seen (an event's or
    an ``idle`` call's) and is deliberately not persisted: after a restart the backlog in
    Kafka must get a chance to arrive before the clock may run ahead of it.

    >>> wm = Watermark(allowed_lateness_ms=100, idle_timeout_ms=1_000)
    >>> wm.value
    -inf
    >>> wm.observe(5_000), wm.value, wm.observe(4_950), wm.value
    (True, 4900, False, 4900)
    >>> wm.idle(10_000), wm.idle(10_999), wm.idle(20_000), wm.value
    (False, False, True, 18900)
    """

    __slots__ = ("_idle_timeout_ms", "_lateness_ms", "last_wall_ms", "max_ts", "value")

    def __init__(self, allowed_lateness_ms: int = 60_000, idle_timeout_ms: int = 30_000) -> None:
        self._lateness_ms = _check_ms("allowed_lateness_ms", allowed_lateness_ms, 0)
        self._idle_timeout_ms = _check_ms("idle_timeout_ms", idle_timeout_ms, 1)
        # Plain attributes, not properties: the join reads them on every event.
        self.value: float = -_INF
        self.max_ts: float = -_INF
        self.last_wall_ms: int | None = None

    @property
    def allowed_lateness_ms(self) -> int:
        """How far behind the max event time the watermark trails."""
        return self._lateness_ms

    @property
    def idle_timeout_ms(self) -> int:
        """Wall milliseconds without events after which the watermark follows wall time."""
        return self._idle_timeout_ms

    def observe(self, ts: int, wall_ms: int | None = None) -> bool:
        """Account for one event; True when the watermark advanced."""
        if wall_ms is not None:
            self.last_wall_ms = wall_ms
        if ts > self.max_ts:
            self.max_ts = ts
            candidate = ts - self._lateness_ms
            if candidate > self.value:
                self.value = candidate
                return True
        return False

    def idle(self, wall_ms: int) -> bool:
        """Advance on wall time if no event arrived for the idle timeout; True if it moved."""
        if self.last_wall_ms is None:
            self.last_wall_ms = wall_ms
            return False
        if wall_ms - self.last_wall_ms < self._idle_timeout_ms:
            return False
        candidate = wall_ms - self._idle_timeout_ms - self._lateness_ms
        if candidate > self.value:
            self.value = candidate
            return True
        return False

    def finish(self) -> None:
        """End of input: every deadline has passed."""
        self.value = _INF

    def to_dict(self) -> dict[str, Any]:
        """The persistent part (watermark and max ts; not the idle timer)."""
        return {"v": 1, "watermark": _encode(self.value), "max_ts": _encode(self.max_ts)}

    def load(self, data: dict[str, Any]) -> None:
        """Set the persistent part from ``to_dict()`` output, keeping the hyper-parameters."""
        if data.get("v") != 1:
            raise StateError(f"unsupported watermark state version {data.get('v')!r}; want 1")
        self.value = _decode(data["watermark"])
        self.max_ts = _decode(data["max_ts"])
        self.last_wall_ms = None

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], allowed_lateness_ms: int = 60_000, idle_timeout_ms: int = 30_000
    ) -> Watermark:
        """Inverse of ``to_dict`` (the hyper-parameters are configuration, passed in).

        >>> wm = Watermark(allowed_lateness_ms=10)
        >>> _ = wm.observe(100)
        >>> Watermark.from_dict(wm.to_dict(), allowed_lateness_ms=10).value
        90
        """
        out = cls(allowed_lateness_ms, idle_timeout_ms)
        out.load(data)
        return out
