"""The bounded per-user feedback buffer of the policy (private)."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.errors import StateError

_DAY_MS = 86_400_000


class UserBuffer:
    """The newest ``capacity`` feedback events of one user: ``(z, y, ts, holdout, seq)``.

    Compact ``array`` columns (18 bytes per event plus the sequence number) instead of
    tuples, because most users are light and a few are heavy: memory is proportional to
    the events actually kept. Trimming happens in blocks (when the buffer exceeds
    capacity by a quarter), so appends stay O(1) amortised.
    """

    __slots__ = ("_cap", "_h", "_seq", "_ts", "_y", "_z", "last_ts", "segment",
                 "since_check", "touch")

    def __init__(self, capacity: int, segment: str) -> None:
        self._cap = int(capacity)
        self._z = array("d")
        self._y = array("b")
        self._h = array("b")
        self._ts = array("q")
        self._seq = array("q")
        self.segment = segment
        self.since_check = 0
        self.last_ts = -(2**62)
        # The owner's place for this buffer in its LRU order (persisted beside the buffer).
        self.touch = 0

    def __len__(self) -> int:
        return min(len(self._z), self._cap)

    def append(self, z: float, y: int, ts: int, holdout: bool, seq: int, segment: str) -> None:
        self._z.append(z)
        self._y.append(y)
        self._h.append(1 if holdout else 0)
        self._ts.append(ts)
        self._seq.append(seq)
        self.segment = segment
        self.since_check += 1
        if ts > self.last_ts:
            self.last_ts = ts
        extra = len(self._z) - self._cap
        if extra > self._cap // 4:
            for col in (self._z, self._y, self._h, self._ts, self._seq):
                del col[:extra]

    def columns(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64],
                               NDArray[np.bool_], NDArray[np.int64]]:
        """``(z, y, ts, holdout, seq)`` of the newest ``capacity`` events, oldest first."""
        start = max(0, len(self._z) - self._cap)
        return (
            np.frombuffer(self._z, dtype=np.float64)[start:].copy(),
            np.frombuffer(self._y, dtype=np.int8)[start:].astype(np.float64),
            np.frombuffer(self._ts, dtype=np.int64)[start:].copy(),
            np.frombuffer(self._h, dtype=np.int8)[start:].astype(bool),
            np.frombuffer(self._seq, dtype=np.int64)[start:].copy(),
        )

    def drop_before(self, seq: int) -> None:
        """Forget events older than ``seq`` (a regime change made them obsolete)."""
        k = int(np.searchsorted(np.frombuffer(self._seq, dtype=np.int64), seq, side="left"))
        if k:
            for col in (self._z, self._y, self._h, self._ts, self._seq):
                del col[:k]

    @staticmethod
    def distinct_days(ts: NDArray[np.int64]) -> int:
        """Distinct UTC days (``ts // 86,400,000``) among event times ``ts``."""
        return int(np.unique(ts // _DAY_MS).size) if ts.size else 0

    def to_dict(self) -> dict[str, Any]:
        z, y, ts, h, seq = self.columns()
        return {
            "segment": self.segment,
            "since_check": self.since_check,
            "last_ts": self.last_ts,
            "z": z.tolist(),
            "y": y.astype(np.int64).tolist(),
            "ts": ts.tolist(),
            "holdout": h.astype(np.int64).tolist(),
            "seq": seq.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], capacity: int) -> UserBuffer:
        try:
            buf = cls(capacity, str(data["segment"]))
            n = len(data["z"])
            cols = [data[k] for k in ("y", "ts", "holdout", "seq")]
            if any(len(c) != n for c in cols) or n > capacity:
                raise ValueError("user buffer columns must have one length <= capacity")
            buf._z.extend(float(v) for v in data["z"])
            buf._y.extend(int(v) for v in data["y"])
            buf._ts.extend(int(v) for v in data["ts"])
            buf._h.extend(int(v) for v in data["holdout"])
            buf._seq.extend(int(v) for v in data["seq"])
            buf.since_check = int(data["since_check"])
            buf.last_ts = int(data["last_ts"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise StateError(f"invalid policy user state: {exc}") from exc
        return buf
