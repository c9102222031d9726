"""The serving client against the real broker: replay's calibrators.jsonl produced to a
compacted topic (in a transaction, with a tombstone, a malformed record and an aborted
transaction) and read back by ``subscribe`` gives the same probabilities as the jsonl."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.unit.client_support import expected, final_versions, replay_stream, rows_per_scope
from worker.client import CalibratorClient
from worker.localkafka import TopicSpec, create_topics

pytestmark = pytest.mark.integration


async def _wait(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_subscribed_client_serves_what_the_jsonl_says(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    path, last = replay_stream(tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    versions = final_versions(path)
    withdrawn = next(k for k in versions if "|user:" in k)
    del versions[withdrawn]

    topic = unique_topic("calibrators")
    spec = TopicSpec(topic, partitions=3, config={"cleanup.policy": "compact"})
    assert await create_topics(kafka_bootstrap, [spec]) == [topic]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique_topic("tx"),
        enable_idempotence=True,
    )
    await producer.start()
    try:
        async with producer.transaction():
            for msg in lines:
                key = f"{msg['model_id']}|{msg['scope']}".encode()
                await producer.send(topic, json.dumps(msg).encode(), key=key)
            await producer.send(topic, None, key=withdrawn.encode())
            await producer.send(topic, b'{"model_id": "default"}', key=b"default|global")
        # An aborted refit must never serve (read_committed).
        await producer.begin_transaction()
        bogus = {**lines[-1], "scope": "global", "version": 10**9, "method": "identity",
                 "params": {}}
        await producer.send(topic, json.dumps(bogus).encode(), key=b"default|global")
        await producer.abort_transaction()
    finally:
        await producer.stop()

    client = CalibratorClient()
    sub = client.subscribe(kafka_bootstrap, topic)
    try:
        assert await asyncio.to_thread(sub.wait_caught_up, 60.0)
        assert client.versions() == versions
        stats = client.stats()
        assert (stats["withdrawn"], stats["rejected"]) == (1, 1)
        rows = rows_per_scope(versions, last)
        for model, user, segment, score in rows:
            want = expected(versions, (model, user, segment, score))
            assert client.calibrate(score, model, user, segment) == want
        gone_user = withdrawn.split("|user:", 1)[1]
        assert client.resolve("default", gone_user).scope != f"user:{gone_user}"
        assert client.staleness().since_message_ms is not None

        # Still live after catching up: a new global version arrives and serves.
        newer = {**versions["default|global"], "version": 10**6, "method": "identity",
                 "params": {}}
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, json.dumps(newer).encode(),
                                         key=b"default|global")
        finally:
            await producer.stop()
        await _wait(lambda: client.resolve("default").version == 10**6)
        assert client.calibrate(0.42, "default") == 0.42
    finally:
        client.close()
    assert not sub.running


async def test_client_on_a_real_worker_serves_what_replay_calibrators_jsonl_says(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """Issue 11 item 1: the versions a running ``recal worker`` publishes, read by
    ``subscribe``, give the same probabilities as replay's ``calibrators.jsonl`` on the same
    stream (one partition, where the worker publishes exactly what replay writes)."""
    from tests.integration.test_worker_join import WorkerProcess
    from tests.integration.test_worker_outputs import (
        SCENARIO,
        preload_one_partition,
        replay_outputs,
        worker_flags,
    )
    from worker.sim.streamrec import generate

    raws = [event.raw for event in generate(SCENARIO)]
    # Context-free learner: on this short stream the default contextual global map (which
    # has segment features) leaves no segment version, and this test wants every scope
    # kind to cross the topic.
    knobs = {"policy_online_method": "platt"}
    replay_outputs(raws, tmp_path, knobs)  # writes tmp_path/replay/calibrators.jsonl
    from_file = CalibratorClient.from_jsonl(tmp_path / "replay" / "calibrators.jsonl")
    want = from_file.versions()
    assert {k.split("|", 1)[1].split(":")[0] for k in want} >= {"global", "segment"}

    prefix, _topics = await preload_one_partition(kafka_bootstrap, unique_topic, raws)
    worker = WorkerProcess(worker_flags(kafka_bootstrap, prefix, unique_topic("app"), knobs),
                           tmp_path / "worker.log")
    client = CalibratorClient()
    try:
        # Subscribed while the worker is still catching up: versions arrive live.
        client.subscribe(kafka_bootstrap, f"{prefix}calibrators")
        deadline = time.monotonic() + 180
        while {k: v["version"] for k, v in client.versions().items()} != {
            k: v["version"] for k, v in want.items()
        }:
            assert worker.proc.poll() is None, worker.log_tail()
            assert time.monotonic() < deadline, (client.versions().keys(), worker.log_tail())
            await asyncio.sleep(0.2)
    finally:
        client.close()
        code = worker.stop()
    assert code == 0, worker.log_tail()

    strip = lambda v: {k: x for k, x in v.items() if k != "created_at"}  # noqa: E731
    assert {k: strip(v) for k, v in client.versions().items()} == {
        k: strip(v) for k, v in want.items()}
    segments = sorted(k.split("|segment:", 1)[1] for k in want if "|segment:" in k)
    rows = [(user, segment, score)
            for user in ("u-0", "u-1", "nobody")
            for segment in [*segments, "no-such-segment", None]
            for score in (0.001, 0.05, 0.2, 0.5, 0.93)]
    for user, segment, score in rows:
        got = client.calibrate(score, "default", user, segment)
        assert got == from_file.calibrate(score, "default", user, segment)
        assert client.resolve("default", user, segment).scope == from_file.resolve(
            "default", user, segment).scope
    assert client.stats()["rejected"] == 0
