"""Event-time alignment of the two input topics of one partition.

Kafka orders messages within a topic partition, never across topics: the consumer hands the
worker impressions-p and clicks-p in whatever interleaving its fetches produce. When the
worker catches up on a backlog, one fetch can bring thousands of impressions before the
clicks that belong with them; fed to the join in that order, the impressions would push the
watermark far ahead and finalize as negatives before their clicks were read (wrong labels,
late clicks, late impressions). This is what Kafka Streams' timestamp synchronisation
(``max.task.idle.ms``) prevents, and this class does the same for one partition:

- each topic's messages wait in their own FIFO queue (per-topic order is never changed);
- while both queues hold a message, the one with the smaller event time ``ts`` goes first
  (ties: the impression first, so a click stamped with its impression's ts finds it);
- a message that failed to decode has no event time and goes as soon as it is at the head
  of its queue (it never reaches the join);
- when only one queue holds messages, it waits for the other topic: not at all when the
  other topic's partition is known to be fully read (``backlog(other) is False``), up to
  ``max_backlog_wait_ms`` of wall time while that partition is known to hold unread
  messages, and up to ``max_wait_ms`` when that is unknown;
- ``drain=True`` releases everything (a rebalance: the partition must be fully processed
  before it is handed over).

In steady state (both topics read up to their end) every message is released at once; the
waits only shape catch-up reads. Replay files are in this merged order by construction
(one file holds both kinds), so replay and the Kafka runtime feed the join the same sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from worker.core.errors import InvalidInputError
from worker.core.records.click import Click
from worker.core.records.impression import Impression

#: backlog(source) -> True (unread messages at the broker), False (read to the end), None.
BacklogProbe = Callable[[str], "bool | None"]


def _unknown(_source: str) -> bool | None:
    return None


@dataclass(slots=True)
class InputEvent:
    """One input message as the runtime received it, and what decoding made of it.

    ``received_ms`` is the wall clock at arrival.
    """

    source: str  # "impressions" or "clicks"
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    received_ms: int
    decoded: Impression | Click | None = None
    error: InvalidInputError | None = None

    @property
    def ts(self) -> int | None:
        """Event time, or None when the message did not decode."""
        return None if self.decoded is None else self.decoded.ts


class EventTimeMerger:
    """Merges one partition's impressions and clicks in event-time order (see module doc).

    >>> from worker.core.records.click import Click
    >>> def click(offset, ts):
    ...     return InputEvent("clicks", "c", 0, offset, None, b"", 0,
    ...                       decoded=Click("i", "u", ts, None))
    >>> def imp(offset, ts):
    ...     ev = click(offset, ts)
    ...     ev.source = "impressions"
    ...     return ev
    >>> m = EventTimeMerger(max_wait_ms=100)
    >>> for ev in (imp(0, 10), imp(1, 30), click(0, 20)):
    ...     m.push(ev)
    >>> [(e.source[0], e.ts) for e in m.pop_ready(0)]  # imp 30 waits for a later click
    [('i', 10), ('c', 20)]
    >>> m.pop_ready(50), [e.ts for e in m.pop_ready(100)]
    ([], [30])
    """

    __slots__ = ("_blocked_since", "_max_backlog_wait_ms", "_max_wait_ms", "_queues")

    def __init__(self, max_wait_ms: int = 1_000, max_backlog_wait_ms: int = 30_000) -> None:
        if max_wait_ms < 0 or max_backlog_wait_ms < 0:
            raise ValueError("merge waits must be >= 0 ms")
        self._max_wait_ms = max_wait_ms
        self._max_backlog_wait_ms = max(max_backlog_wait_ms, max_wait_ms)
        self._queues: dict[str, deque[InputEvent]] = {
            "impressions": deque(),
            "clicks": deque(),
        }
        self._blocked_since: int | None = None

    def __len__(self) -> int:
        return len(self._queues["impressions"]) + len(self._queues["clicks"])

    def waiting_for(self) -> str | None:
        """The source whose queue is empty while the other's is not (what ``pop_ready``
        may wait for), else None."""
        imps = self._queues["impressions"]
        clicks = self._queues["clicks"]
        if imps and not clicks:
            return "clicks"
        if clicks and not imps:
            return "impressions"
        return None

    def push(self, event: InputEvent) -> None:
        self._queues[event.source].append(event)

    def pop_ready(
        self, wall_ms: int, *, drain: bool = False, backlog: BacklogProbe = _unknown
    ) -> list[InputEvent]:
        """The messages that may be processed now, in processing order."""
        imps = self._queues["impressions"]
        clicks = self._queues["clicks"]
        out: list[InputEvent] = []
        while True:
            while imps and imps[0].decoded is None:
                out.append(imps.popleft())
            while clicks and clicks[0].decoded is None:
                out.append(clicks.popleft())
            if imps and clicks:
                self._blocked_since = None
                # Both heads decoded here, so both have a ts.
                if imps[0].ts <= clicks[0].ts:  # type: ignore[operator]
                    out.append(imps.popleft())
                else:
                    out.append(clicks.popleft())
                continue
            if not imps and not clicks:
                self._blocked_since = None
                break
            queue, other = (imps, "clicks") if imps else (clicks, "impressions")
            if drain:
                out.extend(queue)
                queue.clear()
                continue
            pending = backlog(other)
            if pending is False:
                out.append(queue.popleft())
                continue
            if self._blocked_since is None:
                self._blocked_since = wall_ms
            limit = self._max_backlog_wait_ms if pending else self._max_wait_ms
            if wall_ms - self._blocked_since < limit:
                break
            # Waited long enough for the other topic: release this queue's head; the loop
            # then releases the rest too (the wait has already expired).
            out.append(queue.popleft())
        return out

    def clear(self) -> list[InputEvent]:
        """Forget every buffered message (partition revoked); returns them."""
        out = [*self._queues["impressions"], *self._queues["clicks"]]
        for queue in self._queues.values():
            queue.clear()
        self._blocked_since = None
        return out
