"""The app factory's configuration and the `recal worker` command line (no broker needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker.cli import main
from worker.runtime.app import create_app, internal_topics
from worker.runtime.topics import TopicPlan
from worker.settings import Settings


def test_create_app_is_configured_safely(tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers="h1:9092,h2:9092", app_id="recal-t",
                        data_dir=str(tmp_path), web_port=0)
    app = create_app(settings, TopicPlan(partitions=6, replication_factor=3))
    conf = app.conf
    assert [str(b) for b in conf.broker] == ["kafka://h1:9092", "kafka://h2:9092"]
    assert conf.store.scheme == "memory"
    assert conf.web_bind == "127.0.0.1" and 1 <= conf.web_port <= 65535
    assert conf.web_tables_enabled is False and conf.web_router_enabled is False
    assert conf.web_stats_enabled is False and conf.web_graph_enabled is False
    assert conf.consumer_auto_offset_reset == "earliest"
    assert conf.processing_guarantee.value == "at_least_once"
    assert (conf.topic_partitions, conf.topic_replication_factor) == (6, 3)
    # Unaligned messages must never be forced through to let a rebalance or stop proceed.
    assert conf.stream_wait_empty is False and conf.producer_acks == -1
    runtime = app.recal
    assert runtime.state.partitions == 6
    agent = next(iter(app.agents.values()))
    assert agent.concurrency == 1
    assert set(agent.channel.topics) == {"recal.impressions", "recal.clicks"}
    assert internal_topics(settings) == [runtime.state.changelog_topic.get_topic_name()]
    assert runtime.readiness() == (False, "recovering state")


def test_expose_tables_turns_the_table_pages_on(tmp_path: Path) -> None:
    app = create_app(Settings(expose_tables=True, data_dir=str(tmp_path), web_port=6123,
                              web_host="0.0.0.0"))
    assert app.conf.web_tables_enabled is True
    assert (app.conf.web_bind, app.conf.web_port) == ("0.0.0.0", 6123)


def test_invalid_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--web-port", "70000"]) == 2
    assert "web_port" in capsys.readouterr().err


def test_unreachable_broker_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["worker", "--bootstrap-servers", "127.0.0.1:1", "--data-dir", str(tmp_path)])
    assert code == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in capsys.readouterr().err


def test_worker_subcommand_has_every_setting_flag() -> None:
    from worker.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["worker"].format_help()
    for flag in ("--bootstrap-servers", "--topic-prefix", "--app-id", "--web-host",
                 "--expose-tables", "--sasl-password", "--config"):
        assert flag in help_text
    assert sys.modules.get("worker.runtime.cli") is not None
