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
                 "--expose-tables", "--sasl-password", "--config", "--session-timeout-s",
                 "--attribution-window", "--attribution-window-s"):
        assert flag in help_text
    assert sys.modules.get("worker.runtime.cli") is not None


def _worker_settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    from worker.cli import build_parser
    from worker.settings import settings_from_args

    return settings_from_args(build_parser().parse_args(["worker", *argv]), env=env or {})


def test_session_timeout_flag_reaches_the_app_config(tmp_path: Path) -> None:
    default = create_app(_worker_settings(["--data-dir", str(tmp_path), "--web-port", "0"]))
    assert default.conf.broker_session_timeout == 30.0
    assert default.conf.broker_heartbeat_interval == 10.0
    settings = _worker_settings(
        ["--session-timeout-s", "45", "--data-dir", str(tmp_path), "--web-port", "0"]
    )
    app = create_app(settings)
    assert app.conf.broker_session_timeout == 45.0
    assert app.conf.broker_heartbeat_interval == 15.0
    from_env = _worker_settings([], env={"RECAL_SESSION_TIMEOUT_S": "12"})
    assert (from_env.session_timeout_s, from_env.heartbeat_interval_s) == (12.0, 4.0)


@pytest.mark.parametrize("value", ["0", "-5", "1", "5.9", "1800.5", "nan"])
def test_invalid_session_timeout_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    # 1 s used to pass and left the worker live but never ready: the broker refuses < 6 s.
    assert main(["worker", f"--session-timeout-s={value}"]) == 2
    err = capsys.readouterr().err
    assert "session_timeout_s (--session-timeout-s) must be in [6, 1800] seconds" in err
    assert "group.min.session.timeout.ms" in err


def test_session_timeout_bounds_are_accepted(tmp_path: Path) -> None:
    assert _worker_settings(["--session-timeout-s", "6"]).session_timeout_s == 6.0
    longest = _worker_settings(
        ["--session-timeout-s", "1800", "--data-dir", str(tmp_path), "--web-port", "0"]
    )
    # faust refuses a session timeout above its request timeout: the app raises it to match.
    app = create_app(longest)
    assert app.conf.broker_session_timeout == 1800.0
    assert app.conf.broker_request_timeout == 1800.0


def test_attribution_window_flag_and_its_deprecated_alias(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="worker.settings"):
        documented = _worker_settings(["--attribution-window", "600"])
    assert (documented.attribution_window_s, documented.window_ms) == (600.0, 600_000)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="worker.settings"):
        alias = _worker_settings(["--attribution-window-s", "600"])
    assert (alias.attribution_window_s, alias.window_ms) == (600.0, 600_000)
    assert [r.getMessage() for r in caplog.records] == [
        "--attribution-window-s is deprecated; use --attribution-window"
    ]
    assert _worker_settings([]).attribution_window_s == 1800.0


def test_attribution_window_errors_name_the_documented_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for flag in ("--attribution-window", "--attribution-window-s"):
        assert main(["worker", flag, "-1"]) == 2
        assert "attribution_window_s (--attribution-window) must be > 0" in (
            capsys.readouterr().err
        )


def test_tune_gc_freezes_start_up_objects_and_logs_slow_collections(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    from worker.runtime import app as app_module

    thresholds = gc.get_threshold()
    try:
        app_module.tune_gc()
        assert gc.get_threshold() == (50_000, 20, 100)
        assert gc.get_freeze_count() > 0
        app_module.tune_gc()  # idempotent: one callback
        assert gc.callbacks.count(app_module._time_collections) == 1
        monkeypatch.setattr(app_module, "GC_SLOW_S", 0.0)
        with caplog.at_level("WARNING", logger="worker.runtime.app"):
            gc.collect()
        assert any("gc: generation 2 collection took" in r.getMessage() for r in caplog.records)
    finally:
        if app_module._time_collections in gc.callbacks:
            gc.callbacks.remove(app_module._time_collections)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
