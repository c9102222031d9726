"""Prometheus metrics of runtime A (DESIGN §8), in a registry of their own per app.

A registry per app (not the process-global default) keeps two apps in one process — tests,
or a future second runtime — from colliding on metric names.
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

from worker.runtime.join_router import Outcome

#: Per-message latency buckets (seconds): from sub-millisecond to the merge waits.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0)

#: The exposition's content type without its charset parameter: aiohttp (faust's web
#: driver) refuses a charset inside content_type; the body is UTF-8, the format's default.
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
            "recal_events", "Input messages by topic (impressions, clicks) and outcome "
            "(accepted, dead_letter, redelivered)", ["topic", "outcome"], registry=r,
        )
        self.feedback = Counter(
            "recal_feedback", "Feedback messages sent, by label", ["label"], registry=r
        )
        self.dead_letters = Counter(
            "recal_dead_letters", "Dead letters sent, by reason", ["reason"], registry=r
        )
        self.late_clicks = Counter(
            "recal_late_clicks", "Clicks beyond the attribution window or after their "
            "impression's label was final", registry=r,
        )
        self.state_size = Gauge(
            "recal_join_state_size", "Keys held by the partition's join (pending "
            "impressions, waiting clicks, tombstones)", ["partition"], registry=r,
        )
        self.watermark_lag = Gauge(
            "recal_watermark_lag_seconds", "Wall clock minus the partition's event-time "
            "watermark", ["partition"], registry=r,
        )
        self.buffered = Gauge(
            "recal_merge_buffered_messages", "Input messages waiting for event-time "
            "alignment of the two input topics", ["partition"], registry=r,
        )
        self.processing = Histogram(
            "recal_processing_seconds", "Per input message: wall time from its arrival at "
            "the worker to the end of its processing (outputs delivered, state written)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ready = Gauge(
            "recal_ready", "1 when the worker has recovered its state and owns its "
            "partitions (the /readyz condition)", registry=r,
        )
        # Children created up front so dashboards see zeros, not absent series.
        for topic in ("impressions", "clicks"):
            for outcome in ("accepted", "dead_letter", "redelivered"):
                self.events.labels(topic=topic, outcome=outcome)
        for label in ("0", "1"):
            self.feedback.labels(label=label)

    def record(self, outcome: Outcome) -> None:
        """Count what one processing step produced."""
        for (topic, result), n in outcome.events.items():
            self.events.labels(topic=topic, outcome=result).inc(n)
        for fb in outcome.feedback:
            self.feedback.labels(label=str(fb.label)).inc()
        for _key, letter in outcome.dead_letters:
            self.dead_letters.labels(reason=letter.reason).inc()
        if outcome.late_clicks:
            self.late_clicks.inc(outcome.late_clicks)

    def observe_latency(self, received_ms: Iterable[int], now_ms: int) -> None:
        for received in received_ms:
            self.processing.observe(max(0.0, (now_ms - received) / 1000.0))

    def set_partition(
        self, partition: int, state_size: int, watermark: float, buffered: int, now_ms: int
    ) -> None:
        label = str(partition)
        self.state_size.labels(partition=label).set(state_size)
        self.buffered.labels(partition=label).set(buffered)
        if math.isfinite(watermark):
            self.watermark_lag.labels(partition=label).set((now_ms - watermark) / 1000.0)

    def forget_partition(self, partition: int) -> None:
        """Drop a revoked partition's series (another worker reports it now)."""
        label = str(partition)
        for gauge in (self.state_size, self.watermark_lag, self.buffered):
            with contextlib.suppress(KeyError):
                gauge.remove(label)

    def exposition(self) -> bytes:
        """The text exposition format (for ``/metrics``)."""
        return generate_latest(self.registry)
