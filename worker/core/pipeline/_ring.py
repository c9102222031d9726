"""A fixed-capacity ring of recent labelled events in numpy columns (private)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.errors import InvalidInputError


class EventRing:
    """The newest ``capacity`` events ``(z, y, ts, seg)``: clamped logit, label, impression
    time, segment code. Numpy columns rather than a deque of tuples: one append writes four
    slots and leaves no per-event objects for the garbage collector to walk.
    """

    __slots__ = ("_cap", "_n", "_pos", "_seg", "_ts", "_y", "_z")

    def __init__(self, capacity: int) -> None:
        self._cap = int(capacity)
        self._z: NDArray[np.float64] = np.zeros(self._cap)
        self._y: NDArray[np.float64] = np.zeros(self._cap)
        self._ts: NDArray[np.int64] = np.zeros(self._cap, dtype=np.int64)
        self._seg: NDArray[np.int64] = np.zeros(self._cap, dtype=np.int64)
        self._pos = 0  # next slot to write
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, z: float, y: int, ts: int, seg: int) -> None:
        i = self._pos
        self._z[i] = z
        self._y[i] = y
        self._ts[i] = ts
        self._seg[i] = seg
        self._pos = i + 1 if i + 1 < self._cap else 0
        if self._n < self._cap:
            self._n += 1

    def _order(self) -> NDArray[np.int64]:
        start = (self._pos - self._n) % self._cap
        return (start + np.arange(self._n)) % self._cap

    def arrays(
        self,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
        """Copies of ``(z, y, ts, seg)``, oldest first."""
        idx = self._order()
        return self._z[idx], self._y[idx], self._ts[idx], self._seg[idx]

    def to_dict(self) -> dict[str, Any]:
        z, y, ts, seg = self.arrays()
        return {"z": z.tolist(), "y": y.astype(np.int64).tolist(), "ts": ts.tolist(),
                "seg": seg.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], capacity: int) -> EventRing:
        ring = cls(capacity)
        try:
            cols = [data["z"], data["y"], data["ts"], data["seg"]]
            if len({len(c) for c in cols}) != 1:
                raise ValueError("ring columns must have one length")
            for z, y, ts, seg in zip(*cols, strict=True):
                ring.append(float(z), int(y), int(ts), int(seg))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError("schema", f"malformed monitor ring: {exc}") from exc
        return ring
