"""A batch of decoded input events for ``Pipeline.process``, in input order."""

from __future__ import annotations

import itertools
from typing import Any

from worker.core.records.click import Click
from worker.core.records.impression import Impression

#: Kinds of batch entries.
IMPRESSION = 0
CLICK = 1
REJECTED = 2


class InputBatch:
    """Decoded events (and the inputs the decoder rejected) in the order they arrived.

    Every entry carries an opaque, JSON-ready ``ref`` chosen by the runtime (replay: the line
    number and the line; Kafka: topic, partition, offset): the pipeline hands it back with
    any dead letter about that input, so the runtime can attach the original bytes.
    Rejected inputs go into the batch too, so that dead letters leave the pipeline in input
    order whatever the batch cuts, and are counted in one place.

    >>> from worker.core.records.click import Click
    >>> batch = InputBatch()
    >>> batch.add_click(Click("i1", "u1", 1_500, None), ref=7)
    >>> batch.add_rejected(ref=8, key=None, reason="invalid_json", error="not JSON")
    >>> len(batch), batch.kinds
    (2, [1, 2])
    """

    __slots__ = ("events", "kinds", "refs", "wall_ms")

    def __init__(self, wall_ms: int | None = None) -> None:
        self.kinds: list[int] = []
        # An Impression, a Click, or (key, reason, error) for a rejected input.
        self.events: list[Any] = []
        self.refs: list[Any] = []
        #: The runtime's wall clock (ms) when the batch was cut; None in replay, where event
        #: time alone drives the watermark.
        self.wall_ms = wall_ms

    def add_impression(self, imp: Impression, ref: Any = None) -> None:
        self.kinds.append(IMPRESSION)
        self.events.append(imp)
        self.refs.append(ref)

    def add_click(self, click: Click, ref: Any = None) -> None:
        self.kinds.append(CLICK)
        self.events.append(click)
        self.refs.append(ref)

    def add_rejected(self, ref: Any, key: str | None, reason: str, error: str) -> None:
        """An input the decoder rejected (``InvalidInputError``): ``reason`` is its code."""
        self.kinds.append(REJECTED)
        self.events.append((key, reason, error))
        self.refs.append(ref)

    def __len__(self) -> int:
        return len(self.kinds)

    def split(self, *cuts: int) -> list[InputBatch]:
        """The same entries cut at the given positions (for tests of batch-cut invariance)."""
        out = []
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(self)), len(self)]
        for lo, hi in itertools.pairwise(bounds):
            part = InputBatch(self.wall_ms)
            part.kinds = self.kinds[lo:hi]
            part.events = self.events[lo:hi]
            part.refs = self.refs[lo:hi]
            out.append(part)
        return out
