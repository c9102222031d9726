"""Kafka security options and the metrics registry."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from worker.core.errors import ConfigError
from worker.core.records.dead_letter import DeadLetter
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression
from worker.runtime.join_router import Outcome
from worker.runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from worker.runtime.security import (
    aiokafka_security_kwargs,
    bootstrap_list,
    faust_credentials,
    ssl_context,
)
from worker.settings import Settings


def test_plaintext_needs_nothing() -> None:
    s = Settings()
    assert ssl_context(s) is None and faust_credentials(s) is None
    assert aiokafka_security_kwargs(s) == {"security_protocol": "PLAINTEXT"}


def test_sasl_plaintext_passes_credentials_through() -> None:
    import faust

    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password="hunter2")
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "svc", "hunter2", "SCRAM-SHA-512")
    assert creds.protocol.value == "SASL_PLAINTEXT"
    assert "hunter2" not in repr(creds)
    kwargs = aiokafka_security_kwargs(s)
    assert kwargs["sasl_plain_password"] == "hunter2" and "ssl_context" not in kwargs


def test_tls_protocols_get_a_verifying_context() -> None:
    import faust

    s = Settings(security_protocol="SSL")
    context = ssl_context(s)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert isinstance(faust_credentials(s), faust.SSLCredentials)
    sasl_ssl = Settings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p")
    assert faust_credentials(sasl_ssl).protocol.value == "SASL_SSL"
    assert isinstance(aiokafka_security_kwargs(sasl_ssl)["ssl_context"], ssl.SSLContext)


def test_unreadable_tls_files_are_a_config_error_without_secrets(tmp_path: Path) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem"),
                 ssl_keyfile="/secret/key.pem", ssl_password="s3cret")
    with pytest.raises(ConfigError, match=r"missing\.pem") as info:
        ssl_context(s)
    assert "s3cret" not in str(info.value) and "/secret/key.pem" not in str(info.value)


def test_bootstrap_list() -> None:
    assert bootstrap_list(Settings(bootstrap_servers="a:1,b:2")) == ["a:1", "b:2"]
    with pytest.raises(ConfigError):
        bootstrap_list(Settings(bootstrap_servers=" , "))


def test_metrics_count_an_outcome() -> None:
    m = RuntimeMetrics()
    imp = Impression("i", "u", "x", 1, "m", 0.5, 0.0, "s", None, None)
    letter = DeadLetter("t", 0, 1, "u", "schema", "bad", b"{}", "now")
    out = Outcome(0, feedback=[Feedback(imp, 1, 2, 2, 1), Feedback(imp, 0, 3, None, None)],
                  dead_letters=[(b"u", letter)], late_clicks=2)
    out.events[("impressions", "accepted")] += 3
    m.record(out)
    m.observe_latency([0, 500], now_ms=1_000)
    m.set_partition(0, state_size=7, watermark=1_000.0, buffered=1, now_ms=3_000)
    m.set_partition(1, state_size=0, watermark=float("-inf"), buffered=0, now_ms=3_000)
    text = m.exposition().decode()
    for line in (
        'recal_events_total{outcome="accepted",topic="impressions"} 3.0',
        'recal_events_total{outcome="dead_letter",topic="clicks"} 0.0',
        'recal_feedback_total{label="1"} 1.0',
        'recal_feedback_total{label="0"} 1.0',
        'recal_dead_letters_total{reason="schema"} 1.0',
        "recal_late_clicks_total 2.0",
        'recal_join_state_size{partition="0"} 7.0',
        'recal_watermark_lag_seconds{partition="0"} 2.0',
        "recal_processing_seconds_count 2.0",
    ):
        assert line in text, line
    assert 'recal_watermark_lag_seconds{partition="1"}' not in text
    m.forget_partition(0)
    assert 'partition="0"' not in m.exposition().decode()
    assert "charset" not in CONTENT_TYPE and CONTENT_TYPE.startswith("text/plain")


def test_each_app_has_its_own_registry() -> None:
    a, b = RuntimeMetrics(), RuntimeMetrics()
    a.late_clicks.inc()
    assert "recal_late_clicks_total 0.0" in b.exposition().decode()
