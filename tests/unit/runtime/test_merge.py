"""EventTimeMerger: per-topic FIFO, event-time merge across topics, bounded waits."""

from __future__ import annotations

import pytest

from worker.core.errors import InvalidInputError
from worker.core.records.click import Click
from worker.core.records.impression import Impression
from worker.runtime.merge import EventTimeMerger, InputEvent


def imp(offset: int, ts: int) -> InputEvent:
    return InputEvent(
        "impressions", "i", 0, offset, b"u", b"", 0,
        decoded=Impression(f"i{offset}", "u", "x", ts, "m", 0.5, 0.0, "s", None, None),
    )


def click(offset: int, ts: int) -> InputEvent:
    return InputEvent("clicks", "c", 0, offset, b"u", b"", 0, decoded=Click("i", "u", ts, None))


def bad(source: str, offset: int) -> InputEvent:
    return InputEvent(source, source[0], 0, offset, None, b"{", 0,
                      error=InvalidInputError("invalid_json", "not JSON"))


def order(events: list[InputEvent]) -> list[tuple[str, int]]:
    return [(e.source[0], e.offset) for e in events]


def test_merges_by_event_time_and_keeps_each_topic_in_order() -> None:
    m = EventTimeMerger(max_wait_ms=100)
    for ev in (imp(0, 10), imp(1, 5), imp(2, 40), click(0, 20), click(1, 30), click(2, 50)):
        m.push(ev)
    # imp 1 (ts 5) stays behind imp 0: topic order is never changed, only interleaved.
    assert order(m.pop_ready(0)) == [("i", 0), ("i", 1), ("c", 0), ("c", 1), ("i", 2)]
    assert len(m) == 1  # click ts 50 waits for a later impression


def test_ties_go_to_the_impression() -> None:
    m = EventTimeMerger()
    m.push(click(0, 10))
    m.push(imp(0, 10))
    assert order(m.pop_ready(0, backlog=lambda s: False)) == [("i", 0), ("c", 0)]


def test_undecodable_messages_go_as_soon_as_they_are_at_the_head() -> None:
    m = EventTimeMerger(max_wait_ms=1_000)
    m.push(bad("impressions", 0))
    m.push(imp(1, 10))
    m.push(bad("clicks", 0))
    assert order(m.pop_ready(0)) == [("i", 0), ("c", 0)]
    assert len(m) == 1


def test_waits_for_the_other_topic_depending_on_its_backlog() -> None:
    m = EventTimeMerger(max_wait_ms=100, max_backlog_wait_ms=1_000)
    m.push(imp(0, 10))
    assert m.pop_ready(0, backlog=lambda s: None) == []  # unknown: up to max_wait
    assert m.pop_ready(99, backlog=lambda s: None) == []
    assert order(m.pop_ready(100, backlog=lambda s: None)) == [("i", 0)]
    m.push(imp(1, 20))
    assert m.pop_ready(200, backlog=lambda s: True) == []  # clicks known to be behind
    assert m.pop_ready(1_100, backlog=lambda s: True) == []
    assert order(m.pop_ready(1_200, backlog=lambda s: True)) == [("i", 1)]
    m.push(imp(2, 30))
    # The clicks topic is read to its end: nothing to wait for.
    assert order(m.pop_ready(1_200, backlog=lambda s: False)) == [("i", 2)]


def test_the_wait_restarts_after_the_other_topic_delivered() -> None:
    m = EventTimeMerger(max_wait_ms=100)
    m.push(imp(0, 10))
    assert m.pop_ready(0) == []
    m.push(click(0, 5))
    assert order(m.pop_ready(50)) == [("c", 0)]
    assert m.pop_ready(120) == []  # blocked again since 50, not since 0
    assert order(m.pop_ready(150)) == [("i", 0)]


def test_drain_releases_everything_in_order() -> None:
    m = EventTimeMerger(max_wait_ms=10_000)
    for ev in (imp(0, 30), imp(1, 40), click(0, 10)):
        m.push(ev)
    assert order(m.pop_ready(0, drain=True)) == [("c", 0), ("i", 0), ("i", 1)]
    assert len(m) == 0


def test_clear_returns_the_buffered_messages() -> None:
    m = EventTimeMerger()
    m.push(imp(0, 1))
    m.push(click(0, 2))
    assert order(m.clear()) == [("i", 0), ("c", 0)]
    assert len(m) == 0


def test_rejects_negative_waits() -> None:
    with pytest.raises(ValueError):
        EventTimeMerger(max_wait_ms=-1)
