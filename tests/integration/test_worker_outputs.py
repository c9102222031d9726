"""`recal worker` publishes every output of the pipeline, and poison input never stops it.

- On one partition, the Kafka outputs (feedback, calibrator versions, alerts, posteriors)
  equal `recal replay`'s on the same stream, field for field except the wall-clock stamps
  (issue 9, test (a)).
- Poison messages (a 600 KB key, a 1 MB value, garbage, a null value) interleaved with valid
  traffic are all dead-lettered, the valid outputs are unchanged and the worker never
  restarts (test (f)).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_worker_join import (
    Line,
    WorkerProcess,
    http_get,
    produce,
    topic_names,
)
from worker.localkafka import TopicSpec, create_topics
from worker.replay import run_replay
from worker.runtime.topics import OUTPUT_TOPICS, committed_consumer
from worker.settings import Settings
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate

pytestmark = pytest.mark.integration

WINDOW_S = 600
# A drifting stream in event-time order (no reordering, duplicates or corruption: the Kafka
# runtime merges the two topics by ts, replay reads the file order; here they coincide),
# with a short refit cadence, so bootstrap, scheduled and drift versions and alerts happen.
SCENARIO = Scenario(
    n_events=12_000, n_users=100, n_items=50, seed=4, events_per_second=5,
    drift_at_event=5_000, drift_temperature=2.0, attribution_window_ms=WINDOW_S * 1000,
)
KNOBS = {"recalibrate_every": 300, "monitor_check_every": 100}


class TopicReader:
    """Reads output topics from the beginning, read_committed, keeping keys and values."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.bootstrap = bootstrap
        self.by_name = {topics[short]: short for short in OUTPUT_TOPICS}
        self.records: dict[str, list[tuple[bytes | None, bytes | None]]] = {
            short: [] for short in OUTPUT_TOPICS
        }
        self._consumer: Any = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = committed_consumer(
            self.bootstrap, "recal-test-reader", *self.by_name, max_partition_fetch_bytes=4 << 20
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for record in records:
                self.records[self.by_name[tp.topic]].append((record.key, record.value))

    def values(self, short: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _k, v in self.records[short] if v is not None]

    async def wait_for(
        self, done: Callable[[TopicReader], bool], worker: WorkerProcess, timeout_s: float,
        what: str,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if worker.proc.poll() is not None:
                pytest.fail(f"worker exited {worker.proc.returncode} waiting for {what}\n"
                            f"{worker.log_tail()}")
            if time.monotonic() > deadline:
                counts = {k: len(v) for k, v in self.records.items()}
                pytest.fail(f"timed out waiting for {what}: {counts}\n{worker.log_tail()}")
            await self.poll()


def worker_flags(
    bootstrap: str, prefix: str, app_id: str, knobs: dict[str, Any] | None = None
) -> list[str]:
    """The worker's flags for ``SCENARIO``; ``knobs``: more settings (as in ``KNOBS``)."""
    flags = [
        "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--app-id", app_id,
        "--web-port", "0", "--attribution-window", str(WINDOW_S), "--allowed-lateness", "30",
        "--idle-timeout-s", "2", "--posterior-interval-s", "1",
    ]
    for name, value in {**KNOBS, **(knobs or {})}.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def replay_outputs(
    lines: list[bytes], tmp_path: Path, knobs: dict[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    settings = Settings.load(env={}, overrides={
        "attribution_window_s": WINDOW_S, "allowed_lateness_s": 30, **KNOBS, **(knobs or {})})
    out_dir = tmp_path / "replay"
    run_replay(events, out_dir, settings.pipeline_config())
    return {
        name: [orjson.loads(raw) for raw in (out_dir / f"{name}.jsonl").read_bytes().splitlines()]
        for name in OUTPUT_TOPICS
    }


def without(obj: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in fields}


def as_lines(raws: list[bytes]) -> list[Line]:
    out = []
    for raw in raws:
        obj = orjson.loads(raw)
        source = "impressions" if obj["type"] == "impression" else "clicks"
        out.append(Line(source, obj["user_id"].encode(), raw, obj, partition=0))
    return out


async def preload_one_partition(
    bootstrap: str, unique_topic: Callable[[str], str], raws: list[bytes]
) -> tuple[str, dict[str, str]]:
    """A fresh topic prefix whose one-partition input topics hold ``raws`` (produced in
    order); the prefix and every topic name under it."""
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix) | {s: f"{prefix}{s}" for s in OUTPUT_TOPICS}
    await create_topics(
        bootstrap, [TopicSpec(topics["impressions"], 1), TopicSpec(topics["clicks"], 1)]
    )
    await produce(bootstrap, topics, as_lines(raws))
    return prefix, topics


async def test_one_partition_publishes_what_replay_writes(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    raws = [event.raw for event in generate(SCENARIO)]
    expected = replay_outputs(raws, tmp_path)
    assert expected["calibrators"] and expected["alerts"], "the stream must refit and alert"
    assert {v["reason"] for v in expected["calibrators"]} >= {"bootstrap", "scheduled"}

    prefix, topics = await preload_one_partition(kafka_bootstrap, unique_topic, raws)
    worker = WorkerProcess(worker_flags(kafka_bootstrap, prefix, unique_topic("app")),
                           tmp_path / "worker.log")
    n_feedback = len(expected["feedback"])
    try:
        async with TopicReader(kafka_bootstrap, topics) as out:
            await out.wait_for(
                lambda o: len(o.records["feedback"]) >= n_feedback
                and len(o.records["calibrators"]) >= len(expected["calibrators"])
                and len(o.records["alerts"]) >= len(expected["alerts"]),
                worker, timeout_s=180, what="every output",
            )
            await asyncio.sleep(2.5)  # posterior batches after the last feedback
            for _ in range(10):
                await out.poll()
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()

    assert out.values("feedback") == expected["feedback"]
    assert [without(v, "created_at") for v in out.values("calibrators")] == [
        without(v, "created_at") for v in expected["calibrators"]]
    assert [without(v, "created_at") for v in out.values("alerts")] == [
        without(v, "created_at") for v in expected["alerts"]]
    for key, value in out.records["calibrators"]:
        msg = orjson.loads(value)  # type: ignore[arg-type]
        assert key == f"{msg['model_id']}|{msg['scope']}".encode()
    # Posteriors: the latest snapshot per (user, arm) equals replay's final one (replay
    # stamps it at the end of input, the worker at its batch). A snapshot's tier is the
    # user's tier when it was taken; the user's later tier changes are their own messages.
    latest: dict[bytes | None, dict[str, Any]] = {}
    tier_of: dict[str, str] = {}
    for key, value in out.records["posteriors"]:
        msg = orjson.loads(value)  # type: ignore[arg-type]
        if msg.get("type") == "tier_change":
            assert key == f"{msg['user_id']}|".encode()
            tier_of[msg["user_id"]] = msg["to_tier"]
            continue
        latest[key] = without(msg, "event_ts", "tier")
    final = {
        f"{v['user_id']}|{v['arm']}".encode(): without(v, "event_ts", "tier")
        for v in expected["posteriors"] if v.get("type") != "tier_change"
    }
    assert latest == final
    final_tiers = {v["user_id"]: v["tier"] for v in expected["posteriors"]
                   if v.get("type") != "tier_change" and v["user_id"] != "*"}
    assert tier_of == final_tiers
    assert out.records["dlq"] == []


async def test_poison_messages_are_dead_lettered_and_the_partition_moves_on(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    small = Scenario(n_events=1_500, n_users=40, n_items=20, seed=9, events_per_second=5,
                     attribution_window_ms=WINDOW_S * 1000)
    raws = [event.raw for event in generate(small)]
    expected = replay_outputs(raws, tmp_path)
    lines = as_lines(raws)
    impression = orjson.loads(raws[0])
    poison = [
        Line("impressions", b"k" * 600_000, orjson.dumps(impression), None, "key_mismatch", 0),
        Line("impressions", b"u1", b'{"pad":"' + b"x" * 1_000_000 + b'"}', None, "too_large", 0),
        Line("clicks", b"u1", b"\x00\xff garbage \xfe", None, "invalid_json", 0),
        Line("clicks", b"u1", None, None, "null_value", 0),  # type: ignore[arg-type]
    ]
    # Interleaved with the valid traffic, at fixed places.
    for n, line in enumerate(poison):
        lines.insert(300 * (n + 1), line)

    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix) | {s: f"{prefix}{s}" for s in OUTPUT_TOPICS}
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], 1), TopicSpec(topics["clicks"], 1)],
    )
    await produce_large(kafka_bootstrap, topics, lines)
    worker = WorkerProcess(worker_flags(kafka_bootstrap, prefix, unique_topic("app")),
                           tmp_path / "worker.log")
    try:
        async with TopicReader(kafka_bootstrap, topics) as out:
            await out.wait_for(
                lambda o: len(o.records["feedback"]) >= len(expected["feedback"])
                and len(o.records["dlq"]) >= len(poison),
                worker, timeout_s=120, what="feedback and dead letters",
            )
            await asyncio.sleep(1.0)
            await out.poll()
            _, metrics = http_get(worker.web_port(), "/metrics")
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    assert out.values("feedback") == expected["feedback"]
    letters = out.values("dlq")
    assert sorted(d["reason"] for d in letters) == sorted(
        line.expected_reason or "" for line in poison)
    for key, value in out.records["dlq"]:
        assert len(value or b"") + len(key or b"") < 1_000_000  # under the producer's limit
    big_key = next(d for d in letters if d["reason"] == "key_mismatch")
    assert big_key["truncated"]["key_chars"] == 600_000
    big_value = next(d for d in letters if d["reason"] == "too_large")
    assert big_value["truncated"]["payload_bytes"] > 1_000_000
    assert "recal_dead_letters_total" in metrics.decode()
    # One start, no restart loop.
    assert worker.log_path.read_text().count("state restored") == 1


async def produce_large(bootstrap: str, topics: dict[str, str], lines: list[Line]) -> None:
    """Like ``produce``, with a producer that accepts ~1 MB messages."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_request_size=2_000_000)
    await producer.start()
    try:
        futures = [
            await producer.send(topics[line.source], value=line.raw, key=line.key,
                                partition=line.partition)
            for line in lines
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_the_changelog_is_read_from_its_beginning_every_time(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    """A restore reads every committed record of its partition, the latest per key, deletes
    applied, and nothing of the other partitions; again and again on the same consumer.
    (The restore seeks explicitly: in the bench's reader ``seek_to_beginning`` right after
    ``assign`` lost a race with the assignment's reset and read nothing; this test did not
    reproduce that race for the restore's call order, it guards the restore's contract.)"""
    from aiokafka import AIOKafkaProducer

    from worker.runtime.group_worker import GroupWorker
    from worker.runtime.topics import TopicPlan

    prefix = unique_topic("recal") + "."
    settings = Settings.load(env={}, overrides={
        "bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix})
    worker = GroupWorker(settings, TopicPlan(partitions=2, replication_factor=1))
    await create_topics(kafka_bootstrap, [TopicSpec(worker.names.state, 2)])
    txn_id = unique_topic("txn")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    await producer.start()
    try:
        async with producer.transaction():
            for n in range(500):
                await producer.send(worker.names.state, orjson.dumps({"n": n}),
                                    key=f"join:u{n % 50}".encode(), partition=1)
            await producer.send(worker.names.state, None, key=b"join:u0", partition=1)
    finally:
        await producer.stop()
    # A commit returns before its markers are written, and until then the last stable offset
    # (a read_committed reader's end) stays below the transaction. The worker restores only
    # after its partition's producer (the same transactional id) has initialised, which
    # waits for the markers; the test does the same (a restore started earlier read nothing
    # on a loaded machine: the end offset was still the transaction's start).
    again = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    await again.start()
    await again.stop()
    worker._restorer = committed_consumer(kafka_bootstrap, "recal-test-restore")
    await worker._restorer.start()
    try:
        for _ in range(5):
            records = await worker._read_changelog(1)
            assert len(records) == 49 and "join:u0" not in records
            assert records["join:u49"] == {"n": 499}
            assert await worker._read_changelog(0) == {}
    finally:
        await worker._restorer.stop()


async def test_state_without_committed_offsets_resumes_from_the_state_offsets(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """The group's committed offsets can vanish while the state changelog stays (offsets
    expire after `offsets.retention.minutes`, or the app id changes on the same topics). The
    state and its input positions are written in one transaction, so a worker restoring the
    state resumes its inputs from the state's positions: nothing is processed twice (no second
    feedback message, no posterior counting a label twice, no dead letter)."""
    raws = [event.raw for event in generate(SCENARIO)][:4_000]
    prefix, topics = await preload_one_partition(kafka_bootstrap, unique_topic, raws)
    first = WorkerProcess(worker_flags(kafka_bootstrap, prefix, unique_topic("app")),
                          tmp_path / "first.log")
    async with TopicReader(kafka_bootstrap, topics) as out:
        try:
            # Some labels mature (the stream spans more than W + L of event time).
            await out.wait_for(lambda o: len(o.records["feedback"]) >= 1_000, first,
                               timeout_s=120, what="the first worker's feedback")
            await asyncio.sleep(1.5)  # its last commits (the inputs are all read by now)
        finally:
            assert first.stop() == 0, first.log_tail()
        for _ in range(10):
            await out.poll()
        before = {k: len(v) for k, v in out.records.items()}
        assert before["dlq"] == 0
        # Same topics, another app id: a group without committed offsets.
        second = WorkerProcess(worker_flags(kafka_bootstrap, prefix, unique_topic("app")),
                               tmp_path / "second.log")
        try:
            second.wait_ready()
            await asyncio.sleep(4.0)  # anything reprocessed would be committed by now
            for _ in range(20):
                await out.poll()
        finally:
            assert second.stop() == 0, second.log_tail()
    feedback = out.values("feedback")
    keys = [(fb["user_id"], fb["impression_id"]) for fb in feedback]
    assert len(keys) == len(set(keys)), (
        f"{len(keys) - len(set(keys))} impressions labelled twice\n{second.log_tail()}")
    assert out.records["dlq"] == [], out.values("dlq")[:3]
    assert "from the state's positions" in second.log_path.read_text()


async def in_process_worker(
    bootstrap: str, unique_topic: Callable[[str], str], overrides: dict[str, Any]
) -> tuple[Any, dict[str, str]]:
    """A ``GroupWorker`` in this process (for fault injection; the broker is real) on fresh
    one-partition topics, window 60 s, no lateness; and the topic names by short name."""
    from worker.runtime.group_worker import GroupWorker
    from worker.runtime.topics import TopicNames, ensure_topics

    prefix = unique_topic("recal") + "."
    settings = Settings.load(env={}, overrides={
        "bootstrap_servers": bootstrap, "topic_prefix": prefix, "app_id": unique_topic("app"),
        "partitions": 1, "attribution_window_s": 60, "allowed_lateness_s": 0, **overrides})
    plan = await ensure_topics(settings, TopicNames.from_settings(settings))
    topics = {s: f"{prefix}{s}" for s in ("impressions", "clicks", *OUTPUT_TOPICS)}
    return GroupWorker(settings, plan), topics


def forty_impressions(special: str, *, clicks: bool) -> list[Line]:
    """Impressions imp-0..imp-39, one second apart over five users, the 21st named
    ``special`` (with a click on every fourth from the second when ``clicks``), then four
    impressions past every deadline, so all 40 labels mature (four, because the clock guard
    confirms a jump with later events)."""
    t0 = 1_767_225_600_000
    lines = []
    for i in range(40):
        imp_id = special if i == 20 else f"imp-{i}"
        obj = {"impression_id": imp_id, "user_id": f"u{i % 5}", "item_id": "x",
               "ts": t0 + i * 1_000, "score": 0.3}
        lines.append(Line("impressions", obj["user_id"].encode(), orjson.dumps(obj), obj))
        if clicks and i % 4 == 1:
            click = {"impression_id": imp_id, "user_id": obj["user_id"], "ts": obj["ts"] + 500}
            lines.append(Line("clicks", obj["user_id"].encode(), orjson.dumps(click), click))
    for n in range(4):
        flush = {"impression_id": f"imp-flush-{n}", "user_id": "u0", "item_id": "x",
                 "ts": t0 + 500_000 + n, "score": 0.3}
        lines.append(Line("impressions", b"u0", orjson.dumps(flush), flush))
    return lines


async def test_an_input_whose_processing_raises_is_dead_lettered_and_the_rest_flows(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every input the decoder accepts is processed without an exception, so a processing
    failure is a bug; the worker must still move on. Fault injection in-process (the broker
    is real): the pipeline raises whenever a batch holds impression ``imp-boom``. The worker
    rebuilds the partition from its last transaction, replays one input at a time, and after
    ``max_processing_attempts`` dead-letters that input as ``processing_error`` with the
    exception text; every other input is labelled exactly once and the worker keeps running."""
    from worker.core.pipeline import Pipeline
    from worker.core.records.impression import Impression

    original = Pipeline.process

    def process(self: Pipeline, batch: Any) -> Any:
        for event in batch.events:
            if isinstance(event, Impression) and event.impression_id == "imp-boom":
                raise RuntimeError("injected failure for imp-boom")
        return original(self, batch)

    monkeypatch.setattr(Pipeline, "process", process)
    worker, topics = await in_process_worker(
        kafka_bootstrap, unique_topic, {"max_processing_attempts": 2}
    )
    lines = forty_impressions("imp-boom", clicks=True)
    await produce(kafka_bootstrap, topics, lines)
    running = asyncio.ensure_future(worker.run())
    try:
        async with TopicReader(kafka_bootstrap, topics) as out:
            deadline = time.monotonic() + 90
            while not (len(out.records["feedback"]) >= 39 and out.records["dlq"]):
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline, {k: len(v) for k, v in out.records.items()}
                await out.poll()
            await asyncio.sleep(1.0)
            for _ in range(5):
                await out.poll()
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    feedback = out.values("feedback")
    ids = [fb["impression_id"] for fb in feedback]
    assert sorted(ids) == sorted(f"imp-{i}" for i in range(40) if i != 20)
    letters = out.values("dlq")
    assert [d["reason"] for d in letters] == ["processing_error"], letters
    assert "injected failure for imp-boom" in letters[0]["error"]
    assert "(2 attempts)" in letters[0]["error"]
    assert letters[0]["offset"] == next(
        n for n, line in enumerate(x for x in lines if x.source == "impressions")
        if line.obj is not None and line.obj["impression_id"] == "imp-boom")
    assert worker.metrics.processing_failures._value.get() >= 2


async def test_a_step_longer_than_the_session_timeout_keeps_the_partition(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step can legitimately take long: a watermark jump matures a whole backlog at once
    (195k labels in one step on the 200k-impression bench, where a loaded machine lost the
    partition to a rebalance mid-run). Steps run in a thread, so the member keeps
    heartbeating: a step blocked for longer than the session timeout (here 8 s against
    6 s, the broker's minimum) costs no rebalance, and every label comes out once."""
    import threading

    from worker.core.pipeline import Pipeline
    from worker.core.records.impression import Impression

    original = Pipeline.process
    slowed: list[str] = []

    def process(self: Pipeline, batch: Any) -> Any:
        for event in batch.events:
            if isinstance(event, Impression) and event.impression_id == "imp-slow" and not slowed:
                slowed.append(threading.current_thread().name)
                time.sleep(8.0)  # blocks its thread, as a long CPU-bound step would
        return original(self, batch)

    monkeypatch.setattr(Pipeline, "process", process)
    worker, topics = await in_process_worker(
        kafka_bootstrap, unique_topic, {"session_timeout_s": 6}
    )
    lines = forty_impressions("imp-slow", clicks=False)
    running = asyncio.ensure_future(worker.run())
    try:
        async with TopicReader(kafka_bootstrap, topics) as out:
            # Assigned first, so the slow step is not confused with the initial join.
            deadline = time.monotonic() + 60
            while worker.metrics.rebalances._value.get() < 1:
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline, "never assigned"
                await asyncio.sleep(0.2)
            await produce(kafka_bootstrap, topics, lines)
            deadline = time.monotonic() + 90
            while len(out.records["feedback"]) < 40:
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline, {k: len(v) for k, v in out.records.items()}
                await out.poll()
            # Longer than a session timeout after the slow step: an eviction would show.
            await asyncio.sleep(7.0)
            for _ in range(5):
                await out.poll()
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    ids = [fb["impression_id"] for fb in out.values("feedback")]
    assert sorted(ids) == sorted(["imp-slow", *(f"imp-{i}" for i in range(40) if i != 20)])
    assert worker.metrics.rebalances._value.get() == 1, "the slow step cost the partition"
    assert slowed and slowed[0] != threading.main_thread().name
