"""Pure parts of the local broker: config rendering, ids, wire format, state handling.

No Java here; the real broker is exercised in tests/integration/test_broker.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
from pathlib import Path

import pytest

from worker.core.errors import ConfigError
from worker.localkafka import LocalKafka, TopicSpec, new_cluster_id
from worker.localkafka import cli as kafka_cli
from worker.localkafka.broker import (
    min_java_major,
    parse_java_major,
    pid_alive,
    port_is_free,
    render_server_properties,
)


def _props(text: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def test_cluster_id_is_22_char_base64url_of_16_bytes() -> None:
    for _ in range(500):
        cid = new_cluster_id()
        assert len(cid) == 22
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    props = _props(
        render_server_properties(
            host="127.0.0.1", broker_port=19092, controller_port=19093, log_dirs=tmp_path / "d"
        )
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["log.dirs"] == str(tmp_path / "d")
    assert props["auto.create.topics.enable"] == "false"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "default.replication.factor",
        "offsets.topic.num.partitions",
        "transaction.state.log.num.partitions",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.cleaner.dedupe.buffer.size"] == str(32 * 1024 * 1024)


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_292"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.2" 2019-01-15', 11),
    ],
)
def test_parse_java_major(output: str, major: int) -> None:
    assert parse_java_major(output) == major


def test_min_java_major_by_kafka_version() -> None:
    assert min_java_major("3.9.1") == 11
    assert min_java_major("4.0.0") == 17


@pytest.mark.parametrize(
    "kwargs",
    [{"name": ""}, {"name": "bad name"}, {"name": "t", "partitions": 0}],
)
def test_topic_spec_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TopicSpec(**kwargs)  # type: ignore[arg-type]


def test_local_kafka_validates_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heap"):
        LocalKafka(data_dir=tmp_path, heap="lots")
    with pytest.raises(ConfigError, match="version"):
        LocalKafka(data_dir=tmp_path, version="latest")


def test_status_without_state_is_not_running(tmp_path: Path) -> None:
    status = LocalKafka(data_dir=tmp_path / "k").status()
    assert status["running"] is False
    assert status["pid"] is None and status["bootstrap"] is None
    assert status["data_dir"] == str((tmp_path / "k").resolve())


def test_status_distrusts_dead_or_foreign_pid(tmp_path: Path) -> None:
    kafka = LocalKafka(data_dir=tmp_path)
    # Our own (python, not java) PID stands in for a reused PID: alive but not the broker.
    for pid in (os.getpid(), 2**22 + 12345):
        kafka.state_file.write_text(json.dumps({"pid": pid, "bootstrap": "127.0.0.1:1"}))
        assert kafka.status()["running"] is False
        assert kafka.stop() is False  # never signals a process that is not ours


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)


def test_port_is_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)


def test_fetch_is_a_no_op_once_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = LocalKafka(data_dir=tmp_path / "d", cache_dir=tmp_path / "cache")
    kafka.libs_dir.mkdir(parents=True)
    (kafka.version_dir / ".fetch-complete").write_text("{}")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # would fail if mvn were run
    assert kafka.fetch() == kafka.libs_dir


def test_interrupted_fetch_is_not_complete(tmp_path: Path) -> None:
    kafka = LocalKafka(data_dir=tmp_path / "d", cache_dir=tmp_path / "cache")
    kafka.libs_dir.mkdir(parents=True)  # jars there, but no marker
    assert not kafka.is_fetched()


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recal")
    kafka_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_status_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["kafka", "status", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "not running"
    assert _run_cli(["kafka", "status", "--json", "--data-dir", str(tmp_path)]) == 1
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert _run_cli(["kafka", "stop", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "not running"
    assert _run_cli(["kafka", "stop", "--json", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": False}


def test_cli_without_action_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["kafka"]) == 2
    assert "usage" in capsys.readouterr().err


def test_default_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECAL_KAFKA_DATA", str(tmp_path / "env-data"))
    monkeypatch.setenv("RECAL_KAFKA_HOME", str(tmp_path / "env-cache"))
    kafka = LocalKafka()
    assert kafka.data_dir == (tmp_path / "env-data").resolve()
    assert kafka.cache_dir == (tmp_path / "env-cache").resolve()
    monkeypatch.delenv("RECAL_KAFKA_DATA")
    monkeypatch.chdir(tmp_path)
    assert LocalKafka().data_dir == (tmp_path / ".kafka").resolve()
