"""Complete impression cohorts out of label order (DESIGN §4: only mature labels count)."""

from __future__ import annotations

import heapq
from typing import Any

from worker.core.errors import StateError
from worker.core.records.feedback import Feedback

_NO_FRONTIER = -(2**62)


class CohortGate:
    """Holds positive labels back until their impression cohort is complete.

    Positives mature at the click, negatives only once the attribution window has passed,
    so in label order the newest impressions show their clicks and not yet their non-clicks
    (at start-up nothing else): every window ending "now" over-represents positives, which a
    fit reads as under-confidence and a sequential test as drift. The join finalises
    negatives in impression-time order, so a positive is released once a negative of an
    impression at least as recent has arrived: everything downstream sees complete
    cohorts only. The feedback stage runs one gate per model and hands what it releases to
    its detectors and to the recalibration policy alike.

    ``offer(fb)`` returns the events released by ``fb`` in order: ``fb`` itself unless it
    is held, then (after a negative) the held positives it completes, oldest impression
    first (arrival order among equal times).

    >>> from worker.core.records.impression import Impression
    >>> def fb(i, ts, y):
    ...     imp = Impression(f"i{i}", "u", "it", ts, "m", 0.5, 0.0, "s", None, None)
    ...     return Feedback(imp, y, ts, None, None)
    >>> gate = CohortGate()
    >>> gate.offer(fb(1, 2_000, 1)), len(gate)
    ([], 1)
    >>> [e.impression.impression_id for e in gate.offer(fb(2, 2_500, 0))]
    ['i2', 'i1']
    >>> CohortGate.from_dict(gate.to_dict()).to_dict() == gate.to_dict()
    True
    """

    __slots__ = ("_frontier", "_pending", "_seq")

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, Feedback]] = []
        self._seq = 0
        self._frontier = _NO_FRONTIER

    def __len__(self) -> int:
        """Positives held."""
        return len(self._pending)

    @property
    def frontier(self) -> int:
        """The newest impression time of a negative seen (cohorts up to it are complete)."""
        return self._frontier

    def offer(self, fb: Feedback) -> list[Feedback]:
        ts = fb.impression.ts
        frontier = self._frontier
        label = fb.label
        if label == 1:
            if ts > frontier:
                heapq.heappush(self._pending, (ts, self._seq, fb))
                self._seq += 1
                return []
            return [fb]
        out = [fb]
        if label == 0:
            if ts > frontier:
                frontier = self._frontier = ts
            pending = self._pending
            while pending and pending[0][0] <= frontier:
                out.append(heapq.heappop(pending)[2])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "frontier": self._frontier,
            "seq": self._seq,
            "pending": [[t, s, fb.to_dict()] for t, s, fb in sorted(self._pending,
                                                                    key=lambda e: e[:2])],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CohortGate:
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported cohort gate version {data.get('v')!r}")
            gate = cls()
            gate._frontier = int(data["frontier"])
            gate._seq = int(data["seq"])
            gate._pending = [(int(t), int(s), Feedback.from_dict(f))
                             for t, s, f in data["pending"]]
            heapq.heapify(gate._pending)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed cohort gate state: {exc}") from exc
        return gate
