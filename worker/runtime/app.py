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

import logging
import socket

import faust

from worker.runtime.join_agent import JoinRuntime
from worker.runtime.security import bootstrap_list, faust_credentials
from worker.runtime.state import STATE_TABLE
from worker.runtime.topics import TopicPlan, changelog_topic_name
from worker.runtime.web import register_web
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Consumer-group session timeout. faust's default is 60 s: a worker that died without
#: leaving the group (SIGKILL, OOM, lost host) would hold its partitions that long before
#: the group moves them. 10 s is Kafka's classic default (heartbeats every 3 s).
SESSION_TIMEOUT_S = 10.0


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
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=3.0,
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
