"""Kafka security options and the metrics registry."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from worker.core.errors import ConfigError
from worker.runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from worker.runtime.partition_task import Transaction
from worker.runtime.security import aiokafka_security_kwargs, bootstrap_list, ssl_context
from worker.settings import Settings


def test_plaintext_needs_nothing() -> None:
    s = Settings()
    assert ssl_context(s) is None
    assert aiokafka_security_kwargs(s) == {"security_protocol": "PLAINTEXT"}


def test_sasl_plaintext_passes_credentials_through() -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password="hunter2")
    kwargs = aiokafka_security_kwargs(s)
    assert kwargs["sasl_plain_password"] == "hunter2" and "ssl_context" not in kwargs
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == ("SCRAM-SHA-512", "svc")
    assert "hunter2" not in s.describe()


def test_tls_protocols_get_a_verifying_context() -> None:
    s = Settings(security_protocol="SSL")
    context = ssl_context(s)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert isinstance(aiokafka_security_kwargs(s)["ssl_context"], ssl.SSLContext)
    sasl_ssl = Settings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p")
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


def test_metrics_count_a_transaction() -> None:
    m = RuntimeMetrics()
    txn = Transaction(0)
    txn.events[("impressions", "accepted")] += 3
    txn.outputs.update({"feedback_1": 1, "feedback_0": 1, "dlq:schema": 1,
                        "calibrators:bootstrap:segment": 2, "alerts:calibration_drift:firing": 1,
                        "posteriors": 4})
    txn.received_ms.extend([0, 500])
    txn.late_clicks = 2
    m.record(txn, now_ms=1_000)
    m.set_partition(0, state_records=7, clock_ms=1_000.0, buffered=1, now_ms=3_000)
    m.set_partition(1, state_records=0, clock_ms=float("-inf"), buffered=0, now_ms=3_000)
    m.set_lag(0, "clicks", 12)
    text = m.exposition().decode()
    for line in (
        'recal_events_total{outcome="accepted",topic="impressions"} 3.0',
        'recal_events_total{outcome="dead_letter",topic="clicks"} 0.0',
        'recal_feedback_total{label="1"} 1.0',
        'recal_feedback_total{label="0"} 1.0',
        'recal_dead_letters_total{reason="schema"} 1.0',
        'recal_calibrator_versions_total{reason="bootstrap",scope_kind="segment"} 2.0',
        'recal_alert_events_total{kind="calibration_drift",status="firing"} 1.0',
        # Firing alerts are read from the pipeline's state (``refresh``), not counted from
        # events: a restored partition's episodes would otherwise go negative.
        'recal_alerts_firing{kind="calibration_drift"} 0.0',
        "recal_posterior_snapshots_total 4.0",
        "recal_late_clicks_total 2.0",
        'recal_transactions_total{result="committed"} 1.0',
        'recal_state_records{partition="0"} 7.0',
        'recal_consumer_lag{partition="0",topic="clicks"} 12.0',
        'recal_watermark_lag_seconds{partition="0"} 2.0',
        "recal_processing_seconds_count 2.0",
    ):
        assert line in text, line
    assert 'recal_watermark_lag_seconds{partition="1"}' not in text
    m.forget_partition(0)
    assert 'partition="0"' not in m.exposition().decode()
    assert "charset" not in CONTENT_TYPE and CONTENT_TYPE.startswith("text/plain")


def test_each_worker_has_its_own_registry() -> None:
    a, b = RuntimeMetrics(), RuntimeMetrics()
    a.rebalances.inc()
    assert "recal_rebalances_total 0.0" in b.exposition().decode()
