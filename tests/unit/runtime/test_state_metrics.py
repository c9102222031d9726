"""The state gauges of ``/metrics`` (``RuntimeMetrics.refresh``) against the pipeline's own
state: ECE with its n and floor, served calibrator versions, alerts firing, posterior counts,
and the consumer lag against the next offset the pipeline takes."""

from __future__ import annotations

from collections import Counter

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.runtime.test_partition_task import NAMES, WALL_MS, inputs
from worker.core.alerts import KINDS
from worker.core.codec.input_decoder import InputDecoder
from worker.core.pipeline import MonitorConfig, Pipeline, PipelineConfig
from worker.core.policy import PolicyConfig
from worker.runtime import metrics as metrics_module
from worker.runtime.metrics import RuntimeMetrics
from worker.runtime.partition_task import PartitionTask

CONFIG = PipelineConfig(
    window_ms=600_000, allowed_lateness_ms=30_000,
    monitor=MonitorConfig(check_every=50), policy=PolicyConfig(recalibrate_every=300),
)


def samples(m: RuntimeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, read back with prometheus-client's parser."""
    text = m.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def fed_task(partition: int, metrics: RuntimeMetrics | None = None) -> PartitionTask:
    """A task that took the whole scenario; its transaction recorded into ``metrics``."""
    task = PartitionTask(partition, Pipeline(CONFIG), NAMES, InputDecoder(),
                         shared_scopes=partition == 0)
    for source, offset, key, raw in inputs():
        task.offer(source, offset, key, raw, received_ms=WALL_MS)
    task.step(WALL_MS + 60_000, backlog=lambda _s: False)
    txn = task.take_transaction()
    if metrics is not None:
        metrics.record(txn, WALL_MS)
    task.drain_posteriors()
    return task


def test_refits_are_counted_by_reason_and_scope_kind() -> None:
    m = RuntimeMetrics()
    task = PartitionTask(0, Pipeline(CONFIG), NAMES, InputDecoder())
    for source, offset, key, raw in inputs():
        task.offer(source, offset, key, raw, received_ms=WALL_MS)
    task.step(WALL_MS + 60_000, backlog=lambda _s: False)
    txn = task.take_transaction()
    m.record(txn, WALL_MS)
    published = Counter(
        (msg["reason"], msg["scope"].split(":")[0])
        for msg in (orjson.loads(out.value) for out in txn.messages
                    if out.topic == NAMES.calibrators and out.value is not None)
    )
    assert {kind for _, kind in published} >= {"global", "segment"}
    got = samples(m)
    for reason in ("bootstrap", "scheduled", "drift"):
        for kind in ("global", "segment", "user"):
            key = frozenset({"reason": reason, "scope_kind": kind}.items())
            assert got[("recal_calibrator_versions_total", key)] == published[(reason, kind)]


def test_refresh_reports_the_pipelines_state() -> None:
    task0, task1 = fed_task(0), fed_task(1)
    m = RuntimeMetrics()
    m.refresh({0: task0, 1: task1})
    got = samples(m)
    monitor = task0.pipeline.monitor
    seen_scopes = 0
    for model_id in monitor.models():
        for scope in monitor.scopes(model_id):
            labels = frozenset({"model_id": model_id, "scope": scope}.items())
            report = monitor.calibration_report(model_id, scope)
            assert report is not None and report.n > 0
            assert got[("recal_calibration_ece", labels)] == report.ece
            assert got[("recal_calibration_ece_floor", labels)] == report.ece_floor
            assert got[("recal_calibration_n", labels)] == report.n
            seen_scopes += 1
            version = monitor.version(model_id, scope)
            if version is not None:
                key = frozenset({**dict(labels), "method": version["method"]}.items())
                assert got[("recal_calibrator_version", key)] == version["version"]
    # The scenario has segments besides the global scope, and refits happened.
    assert seen_scopes >= 3
    assert any(name == "recal_calibrator_version" for name, _ in got)
    # Only partition 0 (the shared-scope writer) reports calibration: one series per scope.
    assert sum(1 for name, _ in got if name == "recal_calibration_ece") == seen_scopes
    assert got[("recal_ece_threshold", frozenset())] == monitor.ece_test.threshold
    firing = {kind: 0 for kind in KINDS}
    for alert in monitor.firing_alerts():
        firing[alert["kind"]] += 1
    for kind in KINDS:
        assert got[("recal_alerts_firing", frozenset({"kind": kind}.items()))] == firing[kind]
    for p, task in ((0, task0), (1, task1)):
        store = task.pipeline.monitor.posteriors
        assert store.n_pairs > 0
        assert got[("recal_posterior_pairs", frozenset({"partition": str(p)}.items()))] == (
            store.n_pairs)
        tiers = store.tier_counts()
        assert sum(tiers.values()) == store.n_users > 0
        for tier, n in tiers.items():
            key = frozenset({"partition": str(p), "tier": tier}.items())
            assert got[("recal_posterior_users", key)] == n
    # Partition 1 revoked: its posterior series go; partition 0's calibration stays.
    m.forget_partition(1)
    m.refresh({0: task0})
    after = samples(m)
    assert not any(dict(labels).get("partition") == "1" for _, labels in after)
    assert sum(1 for name, _ in after if name == "recal_calibration_ece") == seen_scopes
    # Partition 0 gone too: no calibration or version series are left, alerts read 0.
    m.refresh({})
    empty = samples(m)
    assert not any(name in ("recal_calibration_ece", "recal_calibrator_version")
                   for name, _ in empty)
    assert all(v == 0 for (name, _), v in empty.items() if name == "recal_alerts_firing")


def test_segment_series_are_capped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    task = fed_task(0)
    monitor = task.pipeline.monitor
    model_id = monitor.models()[0]
    assert len(monitor.scopes(model_id)) >= 3
    monkeypatch.setattr(metrics_module, "MAX_SEGMENT_SERIES", 1)
    m = RuntimeMetrics()
    m.refresh({0: task})
    scopes = {dict(labels)["scope"] for name, labels in samples(m)
              if name == "recal_calibration_ece" and dict(labels)["model_id"] == model_id}
    assert scopes == {"global", monitor.scopes(model_id)[1]}


def test_next_offsets_follow_what_the_pipeline_took() -> None:
    task = PartitionTask(0, Pipeline(CONFIG), NAMES, InputDecoder())
    task.next_offsets.update({"impressions": 0, "clicks": 0})
    imp = b'{"impression_id":"i1","user_id":"u1","item_id":"x","ts":100,"score":0.2}'
    task.offer("impressions", 0, b"u1", imp, received_ms=0)
    # Offered but waiting in the merger for the clicks topic: not taken yet.
    task.step(wall_ms=0, backlog=lambda source: source == "clicks")
    assert task.next_offsets == {"impressions": 0, "clicks": 0}
    task.step(wall_ms=0, backlog=lambda _s: False)
    assert task.next_offsets == {"impressions": 1, "clicks": 0}
