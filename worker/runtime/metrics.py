"""Prometheus metrics of runtime A (DESIGN §8), in a registry of their own per worker.

A registry per worker (not the process-global default) keeps two workers in one process —
tests — from colliding on metric names.

Two kinds of series: counters of what committed transactions held (``record``, at each
commit), and gauges read from the partitions' state (``refresh``, on a timer: the ECE
reports and the posterior scans are too costly per event, and state-derived values stay
right across restores and rebalances, which counting events up and down would not).

Label cardinality is bounded: no user ids (per-user calibrators are only counted, in
``recal_calibrator_versions_total``), models and segments up to ``MAX_MODEL_SERIES`` and
``MAX_SEGMENT_SERIES`` (first seen first), partitions and alert kinds are finite.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from worker.core.alerts import KINDS as ALERT_KINDS
from worker.core.pipeline.feedback_stage import FeedbackStage
from worker.core.records.scope import GLOBAL
from worker.runtime.partition_task import PartitionTask, Transaction

#: Seconds between two ``refresh`` calls of the worker (state gauges and consumer lag).
REFRESH_INTERVAL_S = 5.0
#: Models with calibration/version series (first seen first), per worker.
MAX_MODEL_SERIES = 20
#: Segment scopes with calibration/version series per model (first seen first).
MAX_SEGMENT_SERIES = 20

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
            "recal_calibrator_versions", "Calibrator versions published (refits), by reason "
            "(bootstrap, scheduled, drift) and scope kind (global, segment, user)",
            ["reason", "scope_kind"], registry=r,
        )
        self.alerts = Counter(
            "recal_alert_events", "Alert events published, by kind and status",
            ["kind", "status"], registry=r,
        )
        self.alerts_firing = Gauge(
            "recal_alerts_firing", "Alert episodes firing now in the alerts this worker "
            "publishes (partition 0's pipeline), by kind", ["kind"], registry=r,
        )
        scope_labels = ["model_id", "scope"]
        self.ece = Gauge(
            "recal_calibration_ece", "Decayed 15-bin ECE of the probabilities the scope's "
            "calibrator served (the ece_high alert's input), partition 0's pipeline",
            scope_labels, registry=r,
        )
        self.ece_floor = Gauge(
            "recal_calibration_ece_floor", "ECE a perfectly calibrated predictor would show "
            "on the same scores (the noise floor)", scope_labels, registry=r,
        )
        self.ece_n = Gauge(
            "recal_calibration_n", "Effective (decayed) number of labelled events behind "
            "recal_calibration_ece", scope_labels, registry=r,
        )
        self.ece_threshold = Gauge(
            "recal_ece_threshold", "The ece_high test's tolerated ECE beyond the noise floor",
            registry=r,
        )
        self.ece_min_n = Gauge(
            "recal_ece_min_n", "Events below which the ece_high test never fires", registry=r,
        )
        self.calibrator_version = Gauge(
            "recal_calibrator_version", "Version number of the calibrator published for the "
            "scope (global and segments; partition 0), with its method",
            ["model_id", "scope", "method"], registry=r,
        )
        self.posterior_pairs = Gauge(
            "recal_posterior_pairs", "(user, arm) posteriors held, by partition",
            ["partition"], registry=r,
        )
        self.posterior_users = Gauge(
            "recal_posterior_users", "Users held by the posterior store, by partition and "
            "uncertainty tier", ["partition", "tier"], registry=r,
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
            "recal_consumer_lag", "Input messages not yet processed (end offset minus the "
            "next offset the pipeline takes), by partition and topic", ["partition", "topic"],
            registry=r,
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
        self._tiers_seen: set[str] = set()
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
        for kind in ALERT_KINDS:
            self.alerts_firing.labels(kind=kind)
        for reason in ("bootstrap", "scheduled", "drift"):
            for scope_kind in ("global", "segment", "user"):
                self.calibrators.labels(reason=reason, scope_kind=scope_kind)

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
                _, reason, scope = kind.split(":", 2)
                self.calibrators.labels(reason=reason, scope_kind=scope).inc(n)
            elif kind.startswith("alerts:"):
                _, alert_kind, status = kind.split(":", 2)
                self.alerts.labels(kind=alert_kind, status=status).inc(n)
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
        for gauge in (self.state_records, self.watermark_lag, self.buffered,
                      self.posterior_pairs):
            with contextlib.suppress(KeyError):
                gauge.remove(label)
        for topic in ("impressions", "clicks"):
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(label, topic)
        for tier in self._tiers_seen:
            with contextlib.suppress(KeyError):
                self.posterior_users.remove(label, tier)

    def refresh(self, tasks: Mapping[int, PartitionTask]) -> None:
        """Set the state gauges from the partitions this worker owns now.

        Calibration, versions and alerts come from the partitions that publish the
        model-wide versions and the alerts (``shared_scope_writer``: partition 0), so the
        series describe what the calibrators and alerts topics say; a worker without that
        partition reports none (alerts: zeros). Posterior counts come from every partition.
        Synchronous: a scrape (same event loop) never sees a half-refreshed registry.
        """
        for gauge in (self.ece, self.ece_floor, self.ece_n, self.calibrator_version):
            gauge.clear()
        firing = dict.fromkeys(ALERT_KINDS, 0)
        for partition, task in sorted(tasks.items()):
            monitor = task.pipeline.monitor
            label = str(partition)
            store = monitor.posteriors
            self.posterior_pairs.labels(partition=label).set(store.n_pairs)
            for tier, n in store.tier_counts().items():
                self._tiers_seen.add(tier)
                self.posterior_users.labels(partition=label, tier=tier).set(n)
            if not task.shared_scopes:
                continue
            for alert in monitor.firing_alerts():
                firing[alert["kind"]] = firing.get(alert["kind"], 0) + 1
            test = monitor.ece_test
            self.ece_threshold.set(test.threshold)
            self.ece_min_n.set(test.config()["min_n"])
            for model_id in monitor.models()[:MAX_MODEL_SERIES]:
                self._refresh_model(monitor, model_id)
        for kind, n in firing.items():
            self.alerts_firing.labels(kind=kind).set(n)

    def _refresh_model(self, monitor: FeedbackStage, model_id: str) -> None:
        scopes = [s for s in monitor.scopes(model_id) if s != GLOBAL][:MAX_SEGMENT_SERIES]
        for scope in (GLOBAL, *scopes):
            report = monitor.calibration_report(model_id, scope)
            if report is not None:
                labels = {"model_id": model_id, "scope": scope}
                for gauge, value in ((self.ece, report.ece), (self.ece_floor, report.ece_floor),
                                     (self.ece_n, report.n)):
                    if math.isfinite(value):
                        gauge.labels(**labels).set(value)
            version = monitor.version(model_id, scope)
            if version is not None:
                self.calibrator_version.labels(
                    model_id=model_id, scope=scope, method=version["method"]
                ).set(version["version"])

    def exposition(self) -> bytes:
        """The text exposition format (for ``/metrics``)."""
        return generate_latest(self.registry)
