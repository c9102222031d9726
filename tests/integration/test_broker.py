"""The local broker itself: clients round-trip through it,
and a broker's lifecycle (status, stop) leaves nothing behind."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from worker.localkafka import LocalKafka, TopicSpec, create_topics
from worker.localkafka import cli as kafka_cli
from worker.localkafka.broker import pid_alive, port_is_free, process_cmdline

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str, topic: str) -> dict[str, object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return described
    finally:
        await admin.close()


@pytest.mark.timeout(180)  # includes the session broker's start when this test runs first
async def test_produce_consume_round_trip(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("roundtrip")
    assert await create_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)]) == [topic]
    sent = [(f"key-{i % 5}".encode(), f"value-{i}".encode()) for i in range(30)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        placed: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in sent:
            meta = await producer.send_and_wait(topic, value, key=key)
            placed.setdefault(meta.partition, []).append((key, value))
    finally:
        await producer.stop()
    assert len(placed) > 1, "keys should spread over partitions"

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: dict[int, list[tuple[bytes | None, bytes | None]]] = {}

        async def drain() -> None:
            while sum(len(v) for v in received.values()) < len(sent):
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    received.setdefault(tp.partition, []).extend((r.key, r.value) for r in records)

        await asyncio.wait_for(drain(), timeout=30)
    finally:
        await consumer.stop()
    # Exact content, and per-partition order equals send order.
    assert received == placed


@pytest.mark.timeout(180)
async def test_create_topics_is_idempotent_and_applies_config(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    spec = TopicSpec(unique_topic("compact"), partitions=2, config={"cleanup.policy": "compact"})
    assert await create_topics(kafka_bootstrap, [spec]) == [spec.name]
    assert await create_topics(kafka_bootstrap, [spec]) == []  # exists → fine, nothing new

    described = await _describe(kafka_bootstrap, spec.name)
    assert len(described["partitions"]) == 2  # type: ignore[arg-type]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, spec.name)]
        )
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"


def _kafka_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recal")
    kafka_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


@pytest.mark.timeout(240)
def test_second_broker_status_and_stop_leave_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "second-kafka"
    kafka = LocalKafka(data_dir=data_dir)
    bootstrap = kafka.start(timeout_s=120)
    try:
        status = kafka.status()
        pid = int(status["pid"])
        assert status["running"] and status["ready"] and status["bootstrap"] == bootstrap
        assert "kafka.Kafka" in process_cmdline(pid)
        # Another object (as `recal kafka status` in another process) finds the same broker.
        assert LocalKafka(data_dir=data_dir).status()["pid"] == pid
        capsys.readouterr()
        assert _kafka_cli(["kafka", "status", "--json", "--data-dir", str(data_dir)]) == 0
        assert json.loads(capsys.readouterr().out)["bootstrap"] == bootstrap
    finally:
        stopped = kafka.stop(timeout_s=30)
    assert stopped

    host = str(status["bootstrap"]).rsplit(":", 1)[0]
    ports = (int(status["broker_port"]), int(status["controller_port"]))
    assert not pid_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    for port in ports:
        assert not _accepts(host, port)
        assert port_is_free(host, port)
    assert kafka.status()["running"] is False
    assert kafka.stop() is False  # idempotent
    capsys.readouterr()
    assert _kafka_cli(["kafka", "status", "--data-dir", str(data_dir)]) == 1
    assert capsys.readouterr().out.strip() == "not running"


def test_readiness_probe_is_a_metadata_round_trip_through_aiokafka(kafka_bootstrap: str) -> None:
    from worker.localkafka.broker import LocalKafkaError, probe_metadata

    host, port = kafka_bootstrap.rsplit(":", 1)
    assert any(p == int(port) for _, _, p in probe_metadata(host, int(port)))
    with pytest.raises(LocalKafkaError):
        probe_metadata("127.0.0.1", 1, timeout_s=1.0)  # nothing listens on port 1
