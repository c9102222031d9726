"""``worker.sim.kafka_sink`` without a broker: routing, keys, order, counts, errors.

The producer is replaced by a recording fake; the real round trip through a broker is in
``tests/integration/test_demo.py``.
"""

from __future__ import annotations

import asyncio
import doctest
from typing import Any

import orjson
import pytest

from worker.sim import kafka_sink
from worker.sim.kafka_sink import (
    FLUSH_PER_PARTITION,
    KafkaSinkError,
    flush_impressions,
    send_flush,
    send_to_kafka,
    topic_names,
)
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate


class _Meta:
    def __init__(self, partition: int) -> None:
        self.partition = partition


class FakeProducer:
    """Records ``send`` calls; each delivery future resolves soon after, as the producer's
    background sender would resolve it (or fails, for the message number ``fail_at``)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.fail_at = fail_at
        self.stopped = False

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        index = len(self.sent)
        self.sent.append((topic, value, key, partition))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_at is not None and index == self.fail_at:
            asyncio.get_running_loop().call_soon(fut.set_exception, RuntimeError("broker said no"))
        else:
            chosen = partition if partition is not None else len(key or b"") % 2
            asyncio.get_running_loop().call_soon(fut.set_result, _Meta(chosen))
        return fut

    async def flush(self) -> None:
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    producer = FakeProducer()

    async def start(bootstrap: str, topics: Any, overrides: Any) -> FakeProducer:
        return producer

    monkeypatch.setattr(kafka_sink, "_start_producer", start)
    return producer


def _scenario() -> Scenario:
    return Scenario(n_events=400, n_users=30, seed=9, duplicate_share=0.05, malformed_share=0.05,
                    orphan_click_share=0.05, reorder_within_ms=2_000)


def test_routes_by_target_keyed_by_user_in_order(fake: FakeProducer) -> None:
    events = list(generate(_scenario()))
    calls: list[tuple[int, int]] = []
    summary = asyncio.run(
        send_to_kafka(events, "h:1", "x.", progress=lambda s, a: calls.append((s, a)))
    )
    assert [v for _t, v, _k, _p in fake.sent] == [e.raw for e in events]  # arrival order
    for (topic, _value, key, partition), ev in zip(fake.sent, events, strict=True):
        assert topic == ("x.impressions" if ev.target == "impression" else "x.clicks")
        assert key == (ev.key.encode() if ev.key is not None else None)
        assert partition is None  # the default partitioner hashes the key
    assert any(ev.kind == "malformed" for ev in events)
    assert summary.messages == len(events)
    assert summary.by_kind["malformed"] == sum(e.kind == "malformed" for e in events)
    assert summary.by_topic["x.clicks"] == sum(e.target == "click" for e in events)
    assert summary.duplicates == sum(e.duplicate for e in events) > 0
    assert sum(summary.by_partition.values()) == len(events)
    assert summary.max_ts == max(
        e.obj["ts"] for e in events if e.expected_reason is None and e.obj is not None
    )
    assert calls[-1] == (len(events), len(events))
    assert fake.stopped
    d = summary.to_dict()
    assert d["messages"] == len(events) and d["topics"]["impressions"] == "x.impressions"


def test_a_failed_delivery_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer(fail_at=3)

    async def start(bootstrap: str, topics: Any, overrides: Any) -> FakeProducer:
        return producer

    monkeypatch.setattr(kafka_sink, "_start_producer", start)
    with pytest.raises(KafkaSinkError, match=r"delivery to .* failed after 3 acknowledged"):
        asyncio.run(send_to_kafka(generate(_scenario()), "h:1"))
    assert producer.stopped


def test_flush_impressions_per_partition_past_every_deadline(fake: FakeProducer) -> None:
    keys = asyncio.run(send_flush("h:1", "x.", 3, 1_000))
    assert keys == ["~flush-0", "~flush-1", "~flush-2"]
    assert [(t, k, p) for t, _v, k, p in fake.sent] == [
        ("x.impressions", f"~flush-{p}".encode(), p)
        for p in range(3)
        for _ in range(FLUSH_PER_PARTITION)
    ]
    for (_p, key, value) in flush_impressions(3, 1_000):
        obj = orjson.loads(value)
        assert obj["user_id"].encode() == key and obj["ts"] >= 1_000  # key matches user_id
    # Enough of them for the join's clock guard (3 confirmations by default).
    assert FLUSH_PER_PARTITION > 3


def test_topic_names() -> None:
    assert topic_names("a-") == {"impressions": "a-impressions", "clicks": "a-clicks"}


def test_doctests() -> None:
    assert doctest.testmod(kafka_sink).failed == 0
