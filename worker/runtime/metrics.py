"""Prometheus metrics of runtime A (DESIGN §8), in a registry of their own per worker.

A registry per worker (not the process-global default) keeps two workers in one process —
tests — from colliding on metric names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from worker.runtime.partition_task import Transaction

#: Per-message latency buckets (seconds): from sub-millisecond to the merge waits.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0)

#: The exposition's content type without its charset parameter: aiohttp refuses a charset
#: inside content_type; the body is UTF-8, the format's default.
CONTENT_TYPE = "; ".join(
    part.strip() for part in CONTENT_TYPE_LATEST.split(";") if "charset" not in part
)


class RuntimeMetrics:
    """The worker's metrics.

    >>> m = RuntimeMetrics()
    >>> m.feedback.labels(label="1").inc()
    >>> b'recal_feedback_total{label="1"} 1.0' in m.exposition()
    True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "recal_events", "Input messages processed, by topic (impressions, clicks) and "
            "outcome (accepted, dead_letter)", ["topic", "outcome"], registry=r,
        )
        self.feedback = Counter(
            "recal_feedback", "Feedback messages committed, by label", ["label"], registry=r
        )
        self.dead_letters = Counter(
            "recal_dead_letters", "Dead letters committed, by reason", ["reason"], registry=r
        )
        self.late_clicks = Counter(
            "recal_late_clicks", "Clicks beyond the attribution window or after their "
            "impression's label was final", registry=r,
        )
        self.calibrators = Counter(
            "recal_calibrator_versions", "Calibrator versions published, by refit reason",
            ["reason"], registry=r,
        )
        self.alerts = Counter(
            "recal_alert_events", "Alert events published, by kind and status",
            ["kind", "status"], registry=r,
        )
        self.alerts_firing = Gauge(
            "recal_alerts_firing", "Alert episodes currently firing on this worker, by kind",
            ["kind"], registry=r,
        )
        self.posteriors = Counter(
            "recal_posterior_snapshots", "Posterior snapshots published", registry=r,
        )
        self.transactions = Counter(
            "recal_transactions", "Kafka transactions, by result (committed, aborted)",
            ["result"], registry=r,
        )
        self.rebalances = Counter(
            "recal_rebalances", "Partition assignments received from the group", registry=r,
        )
        self.processing_failures = Counter(
            "recal_processing_failures", "Pipeline steps that raised (the partition is "
            "rebuilt from its last committed transaction)", registry=r,
        )
        self.restore_records = Counter(
            "recal_restore_records", "State records read from the changelog at assignment",
            registry=r,
        )
        self.restore_seconds = Histogram(
            "recal_restore_seconds", "Wall time to restore one partition's state",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r,
        )
        self.state_records = Gauge(
            "recal_state_records", "State records held for the partition (join users, "
            "clock, monitor)", ["partition"], registry=r,
        )
        self.consumer_lag = Gauge(
            "recal_consumer_lag", "Input messages not yet processed (end offset minus "
            "committed position), by partition and topic", ["partition", "topic"], registry=r,
        )
        self.watermark_lag = Gauge(
            "recal_watermark_lag_seconds", "Wall clock minus the partition's event-time "
            "clock", ["partition"], registry=r,
        )
        self.buffered = Gauge(
            "recal_merge_buffered_messages", "Input messages waiting for event-time "
            "alignment of the two input topics", ["partition"], registry=r,
        )
        self.processing = Histogram(
            "recal_processing_seconds", "Per input message: wall time from its arrival at "
            "the worker to the commit of the transaction holding its outputs",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ready = Gauge(
            "recal_ready", "1 when the worker owns its partitions with their state restored "
            "(the /readyz condition)", registry=r,
        )
        # Children created up front so dashboards see zeros, not absent series.
        for topic in ("impressions", "clicks"):
            for outcome in ("accepted", "dead_letter"):
                self.events.labels(topic=topic, outcome=outcome)
        for label in ("0", "1"):
            self.feedback.labels(label=label)
        for result in ("committed", "aborted"):
            self.transactions.labels(result=result)

    def record(self, txn: Transaction, now_ms: int) -> None:
        """Count what one committed transaction held."""
        for (topic, result), n in txn.events.items():
            self.events.labels(topic=topic, outcome=result).inc(n)
        for kind, n in txn.outputs.items():
            if kind.startswith("feedback_"):
                self.feedback.labels(label=kind[len("feedback_"):]).inc(n)
            elif kind.startswith("dlq:"):
                self.dead_letters.labels(reason=kind[len("dlq:"):]).inc(n)
            elif kind.startswith("calibrators:"):
                self.calibrators.labels(reason=kind[len("calibrators:"):]).inc(n)
            elif kind.startswith("alerts:"):
                _, alert_kind, status = kind.split(":", 2)
                self.alerts.labels(kind=alert_kind, status=status).inc(n)
                self.alerts_firing.labels(kind=alert_kind).inc(n if status == "firing" else -n)
            elif kind == "posteriors":
                self.posteriors.inc(n)
        if txn.late_clicks:
            self.late_clicks.inc(txn.late_clicks)
        self.transactions.labels(result="committed").inc()
        self.observe_latency(txn.received_ms, now_ms)

    def observe_latency(self, received_ms: Iterable[int], now_ms: int) -> None:
        observe = self.processing.observe
        for received in received_ms:
            observe(max(0.0, (now_ms - received) / 1000.0))

    def set_partition(
        self, partition: int, state_records: int, clock_ms: float, buffered: int, now_ms: int
    ) -> None:
        label = str(partition)
        self.state_records.labels(partition=label).set(state_records)
        self.buffered.labels(partition=label).set(buffered)
        if math.isfinite(clock_ms):
            self.watermark_lag.labels(partition=label).set((now_ms - clock_ms) / 1000.0)

    def set_lag(self, partition: int, topic: str, lag: int) -> None:
        self.consumer_lag.labels(partition=str(partition), topic=topic).set(lag)

    def forget_partition(self, partition: int) -> None:
        """Drop a revoked partition's series (another worker reports it now)."""
        label = str(partition)
        for gauge in (self.state_records, self.watermark_lag, self.buffered):
            with contextlib.suppress(KeyError):
                gauge.remove(label)
        for topic in ("impressions", "clicks"):
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(label, topic)

    def exposition(self) -> bytes:
        """The text exposition format (for ``/metrics``)."""
        return generate_latest(self.registry)
