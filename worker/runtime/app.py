"""The faust app factory of runtime A (the join worker).

``create_app(settings, plan)`` returns a configured ``faust.App`` with the join runtime
registered (``app.recal`` is the ``JoinRuntime``: its router, metrics and readiness).
Choices, all from DESIGN §8/§9:

- ``store="memory://"``: tables live in memory and are recovered from their changelog
  topics at start and after each rebalance (nothing to keep on local disk);
- at-least-once processing, agent concurrency 1 (faust's concurrency > 1 can commit past
  unprocessed messages), consumer offset reset ``earliest`` (a new consumer group starts at
  the beginning of the inputs instead of silently skipping them);
- the web server binds ``settings.web_host`` (127.0.0.1 unless configured), faust's table
  and router endpoints are off unless ``settings.expose_tables``; debug/stats pages are off;
- topic partitions / replication factor of the topics faust creates itself (the state
  changelogs, the assignor's topic) follow the start-up ``TopicPlan``.
"""

from __future__ import annotations

import gc
import logging
import socket
import time

import faust

from worker.runtime.join_agent import JoinRuntime
from worker.runtime.security import bootstrap_list, faust_credentials
from worker.runtime.state import STATE_TABLE
from worker.runtime.topics import TopicPlan, changelog_topic_name
from worker.runtime.web import register_web
from worker.settings import Settings

log = logging.getLogger(__name__)


def resolve_web_port(settings: Settings) -> int:
    """The web port to bind: the configured one, or a free one for ``web_port=0`` (faust
    itself only accepts 1-65535)."""
    if settings.web_port != 0:
        return settings.web_port
    # The port is free when picked; another process could take it before faust binds it, in
    # which case the start fails loudly (address in use) rather than silently moving on.
    family, kind, proto, _name, address = socket.getaddrinfo(
        settings.web_host, 0, type=socket.SOCK_STREAM
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        return int(sock.getsockname()[1])


#: Allocations (net of frees) between young-generation collections; CPython's default is 700.
GC_GEN0_THRESHOLD = 50_000
#: Young collections per middle one and middle ones per full one (defaults 10 and 10).
GC_GEN1_THRESHOLD = 20
GC_GEN2_THRESHOLD = 100
#: A collection at least this long is logged as a warning (it stalls the event loop).
GC_SLOW_S = 1.0

_gc_started = 0.0


def _time_collections(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    elapsed = time.perf_counter() - _gc_started
    if elapsed >= GC_SLOW_S:
        log.warning(
            "gc: generation %s collection took %.1f s (%s collected); the event loop was "
            "stalled", info["generation"], elapsed, info["collected"],
        )


def tune_gc() -> None:
    """Collector settings for a long-running worker; call once, after start-up.

    The join keeps a large heap of long-lived state (a list per pending key), and full
    collections over it stalled the event loop for seconds (up to 9.6 s measured), long
    enough to expire the consumer-group session and force a rebalance. Everything alive at
    start-up (modules, faust's app) is frozen out of the collector's scans, and the
    thresholds make collections much rarer: reference counting frees nearly all of the
    worker's garbage (messages, records, exported state), the collector is only needed for
    cycles, which rarer collections still find. Slow collections are logged.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)
    if _time_collections not in gc.callbacks:
        gc.callbacks.append(_time_collections)
    log.info("gc: %s objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())


def internal_topics(settings: Settings) -> list[str]:
    """The changelog topic of the join's state table (checked at start, created by faust)."""
    return [changelog_topic_name(settings.app_id, STATE_TABLE)]


class RecalApp(faust.App):
    """``faust.App`` that lets the join runtime finish its work before faust stops.

    On stop, ``JoinRuntime.drain`` processes what is aligned, finishes the persistence
    pipeline and writes the clocks; messages still waiting for alignment stay uncommitted and
    are received again after the restart.
    """

    recal: JoinRuntime | None = None

    async def on_stop(self) -> None:
        if self.recal is not None:
            await self.recal.drain()
        await super().on_stop()


def create_app(settings: Settings, plan: TopicPlan | None = None) -> RecalApp:
    """A faust app running the join for ``settings``; ``plan`` comes from ``ensure_topics``
    (without it: ``settings.partitions`` partitions, replication factor 1)."""
    if plan is None:
        plan = TopicPlan(partitions=settings.partitions, replication_factor=1)
    web_port = resolve_web_port(settings)
    app = RecalApp(
        settings.app_id,
        broker=[f"kafka://{host}" for host in bootstrap_list(settings)],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=settings.data_dir,
        autodiscover=False,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_partitions=plan.partitions,
        topic_replication_factor=plan.replication_factor,
        # Messages still waiting for event-time alignment must NOT be processed to let a
        # rebalance or a stop proceed: releasing buffered clicks ahead of their impressions
        # would push the watermark past them and finalise real positives as negatives. They
        # stay unacked (so uncommitted) and the partition's next owner, or this worker after
        # a restart, receives them again; per-user offsets in the state skip what was applied.
        stream_wait_empty=False,
        producer_acks=-1,
        # A worker that died without leaving the group (SIGKILL, OOM, lost host) holds its
        # partitions this long (faust's default: 60 s); a live one whose event loop stalls
        # longer is dropped and the group rebalances.
        broker_session_timeout=settings.session_timeout_s,
        # faust refuses a session timeout above its request timeout (default 90 s); the
        # broker allows up to 1800 s, so the request timeout follows a longer session.
        broker_request_timeout=max(90.0, settings.session_timeout_s),
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=web_port,
        web_tables_enabled=settings.expose_tables,
        web_router_enabled=settings.expose_tables,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
    )
    runtime = JoinRuntime(app, settings, plan.partitions)
    register_web(app, runtime)
    app.recal = runtime
    log.info(
        "recal worker %s: %s partitions; web on http://%s:%s (/healthz /readyz /metrics)",
        settings.app_id, plan.partitions, settings.web_host, web_port,
    )
    return app
