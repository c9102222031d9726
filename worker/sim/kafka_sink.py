"""Send a simulated StreamRec stream to Kafka: the input side of runtime A (DESIGN §3, §11).

Impressions go to ``<prefix>impressions`` and clicks to ``<prefix>clicks``, keyed by user_id,
in the stream's arrival order (one producer, so each partition keeps that order). A malformed
line goes to the topic of its ``target`` under its key (None when the generator could not
know it), so the worker dead-letters it exactly as it would a broken message from a real
producer. The ``"type"`` field of replay lines travels along: the decoder ignores unknown
fields.

Fast on purpose: batched (``linger_ms``, large batches), ``acks="all"`` with idempotence, and
no per-message wait for the broker's acknowledgement: delivery futures are collected and
awaited a window at a time, which also bounds memory for long streams.

    >>> import asyncio
    >>> from worker.sim.scenario import Scenario
    >>> from worker.sim.streamrec import generate
    >>> events = generate(Scenario(n_events=1_000, seed=1))
    >>> asyncio.run(send_to_kafka(events, "127.0.0.1:9092"))   # doctest: +SKIP
    SendSummary(messages=1216, ...)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.core.errors import RecalError
from worker.sim.streamrec import SimEvent

#: ``progress(sent, acked)``: messages handed to the producer, and acknowledged by the broker.
SendProgressFn = Callable[[int, int], None]

_TOPIC_OF_TARGET = {"impression": "impressions", "click": "clicks"}
#: Delivery futures awaited together; also the most messages in flight (memory bound).
_ACK_WINDOW = 20_000
#: Hand control back to the event loop this often, so the producer's sender task (and any
#: live view) runs while the loop below fills the accumulator.
_YIELD_EVERY = 1_000
_PROGRESS_EVERY = 1_000
#: The largest message the producer accepts (the broker's default limit is ~1 MB); the
#: generator's oversize lines are ~70 kB, dead-lettered by the worker as ``too_large``.
_MAX_REQUEST_SIZE = 1_048_576
#: Key prefix of the flush impressions (sorts after the generator's ``u<n>`` users).
FLUSH_USER_PREFIX = "~flush-"
#: Sentinel impressions per partition: the worker's join holds an event that jumps the clock
#: by more than the window until three later events confirm the jump (its clock guard).
FLUSH_PER_PARTITION = 4


class KafkaSinkError(RecalError):
    """The stream could not be sent (topics missing, broker unreachable, delivery failed)."""


@dataclass
class SendSummary:
    """What ``send_to_kafka`` sent: counts by topic and by role, size, time and rate."""

    bootstrap: str
    topics: dict[str, str]
    messages: int = 0
    bytes: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    by_partition: Counter[tuple[str, int]] = field(default_factory=Counter)
    duplicates: int = 0
    #: Largest ``ts`` of a well-formed line (None when nothing well-formed was sent).
    max_ts: int | None = None
    seconds: float = 0.0

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "topics": dict(self.topics),
            "messages": self.messages,
            "bytes": self.bytes,
            "by_topic": dict(self.by_topic),
            "by_kind": dict(self.by_kind),
            "by_partition": {f"{t}[{p}]": n for (t, p), n in sorted(self.by_partition.items())},
            "duplicates": self.duplicates,
            "max_ts": self.max_ts,
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.messages_per_second),
        }


def topic_names(topic_prefix: str) -> dict[str, str]:
    """Full input topic names by short name.

    >>> topic_names("recal.")
    {'impressions': 'recal.impressions', 'clicks': 'recal.clicks'}
    """
    return {short: f"{topic_prefix}{short}" for short in ("impressions", "clicks")}


def flush_impressions(partitions: int, ts_ms: int) -> list[tuple[int, bytes, bytes]]:
    """``FLUSH_PER_PARTITION`` sentinel impressions per partition as (partition, key, value),
    stamped ``ts_ms``, ``ts_ms + 1``, ...

    Kafka has no end of stream, so an input partition's watermark stays where its last event
    left it. Flush impressions stamped beyond every deadline (max ts + window + lateness)
    move each partition's watermark past all of them: every negative matures and every
    orphan click is dead-lettered. Several, because one event that far ahead is held by the
    join's clock guard until later ones confirm the jump. The sentinels stay pending.

    >>> [(p, k, orjson.loads(v)["ts"]) for p, k, v in flush_impressions(2, 5)][3:5]
    [(0, b'~flush-0', 8), (1, b'~flush-1', 5)]
    """
    out = []
    for p in range(partitions):
        user = f"{FLUSH_USER_PREFIX}{p}"
        for k in range(FLUSH_PER_PARTITION):
            obj = {"impression_id": f"flush-{p}-{k}", "user_id": user, "item_id": "flush",
                   "ts": ts_ms + k, "score": 0.5}
            out.append((p, user.encode("utf-8"), orjson.dumps(obj)))
    return out


def _producer_config(bootstrap: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "recal-simulate",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 10,
        "max_batch_size": 256 * 1024,
        "max_request_size": _MAX_REQUEST_SIZE,
        "request_timeout_ms": 30_000,
    }
    config.update(overrides or {})
    return config


async def _start_producer(
    bootstrap: str, topics: Sequence[str], overrides: Mapping[str, Any] | None
) -> Any:
    """A started producer, after checking the topics exist (a clear error, not a timeout)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(**_producer_config(bootstrap, overrides))
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise KafkaSinkError(f"cannot connect to Kafka at {bootstrap}: {exc!r}") from exc
    try:
        metadata = await producer.client.fetch_all_metadata()
        missing = [t for t in topics if not metadata.partitions_for_topic(t)]
    except BaseException:
        await producer.stop()
        raise
    if missing:
        await producer.stop()
        raise KafkaSinkError(
            f"topic(s) {', '.join(missing)} do not exist on {bootstrap}; create them first "
            "(`recal worker` creates missing input topics at start, with --partitions)"
        )
    return producer


async def send_to_kafka(
    events: Iterable[SimEvent],
    bootstrap: str,
    topic_prefix: str = "recal.",
    *,
    progress: SendProgressFn | None = None,
    producer_config: Mapping[str, Any] | None = None,
) -> SendSummary:
    """Produce ``events`` in order: impressions to ``<prefix>impressions``, clicks to
    ``<prefix>clicks``, keyed by user_id; returns once the broker acknowledged every one.

    ``progress(sent, acked)`` is called every ~1000 messages and at the end.
    ``producer_config`` overrides/extends the aiokafka producer settings (e.g. security).
    Raises ``KafkaSinkError`` when the topics are missing or a delivery fails.
    """
    topics = topic_names(topic_prefix)
    by_target = {target: topics[short] for target, short in _TOPIC_OF_TARGET.items()}
    summary = SendSummary(bootstrap=bootstrap, topics=topics)
    producer = await _start_producer(bootstrap, list(topics.values()), producer_config)
    started = time.perf_counter()
    pending: deque[tuple[str, asyncio.Future[Any]]] = deque()
    acked = 0
    sent = 0
    max_ts: int | None = None

    async def settle(keep: int) -> None:
        nonlocal acked
        while len(pending) > keep:
            topic, fut = pending.popleft()
            try:
                meta = await fut
            except Exception as exc:
                raise KafkaSinkError(
                    f"delivery to {topic} failed after {acked:,} acknowledged messages: {exc!r}"
                ) from exc
            summary.by_partition[(topic, meta.partition)] += 1
            acked += 1

    try:
        send = producer.send
        for ev in events:
            topic = by_target[ev.target]
            key = ev.key.encode("utf-8") if ev.key is not None else None
            pending.append((topic, await send(topic, ev.raw, key=key)))
            sent += 1
            summary.bytes += len(ev.raw)
            summary.by_topic[topic] += 1
            summary.by_kind[ev.kind] += 1
            if ev.duplicate:
                summary.duplicates += 1
            if ev.expected_reason is None and ev.obj is not None:
                ts = ev.obj.get("ts")
                if isinstance(ts, int) and (max_ts is None or ts > max_ts):
                    max_ts = ts
            if sent % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
                if len(pending) >= _ACK_WINDOW:
                    await settle(_ACK_WINDOW // 2)
            if progress is not None and sent % _PROGRESS_EVERY == 0:
                progress(sent, acked)
        await producer.flush()
        await settle(0)
    finally:
        await producer.stop()
    summary.messages = sent
    summary.max_ts = max_ts
    summary.seconds = time.perf_counter() - started
    if progress is not None:
        progress(sent, acked)
    return summary


async def send_flush(
    bootstrap: str,
    topic_prefix: str,
    partitions: int,
    ts_ms: int,
    *,
    producer_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Send ``flush_impressions`` to every partition of ``<prefix>impressions``; their keys.

    Call it after ``send_to_kafka`` returned (everything acknowledged), so the sentinels are
    the last message of each partition.
    """
    topic = topic_names(topic_prefix)["impressions"]
    producer = await _start_producer(bootstrap, [topic], producer_config)
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=p)
            for p, key, value in flush_impressions(partitions, ts_ms)
        ]
        await asyncio.gather(*futures)
    except Exception as exc:
        raise KafkaSinkError(f"sending the flush impressions to {topic} failed: {exc!r}") from exc
    finally:
        await producer.stop()
    return [f"{FLUSH_USER_PREFIX}{p}" for p in range(partitions)]
