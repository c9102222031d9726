"""The demo reads the worker's real `/metrics` exposition with prometheus-client's parser."""

from __future__ import annotations

from worker.demo import parse_metrics
from worker.runtime.metrics import RuntimeMetrics


def test_parse_metrics_reads_the_worker_exposition() -> None:
    metrics = RuntimeMetrics()
    metrics.events.labels(topic="clicks", outcome="accepted").inc(5)
    metrics.events.labels(topic="impressions", outcome="dead_letter").inc(7)
    metrics.feedback.labels(label="1").inc(2)
    metrics.dead_letters.labels(reason="schema").inc(3)
    metrics.late_clicks.inc(4)
    parsed = parse_metrics(metrics.exposition().decode())
    assert parsed["processed"] == 12
    assert parsed["feedback"]["1"] == 2
    assert parsed["dead_letters"] == {"schema": 3}
    assert parsed["late_clicks"] == 4
