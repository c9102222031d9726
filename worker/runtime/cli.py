"""`recal worker`: run one member of the recal consumer group (runtime A).

Start-up: resolve and log the settings (secrets masked), check the topic layout and create
missing topics (``worker.runtime.topics``), serve /healthz, /readyz and /metrics, then run
the ``GroupWorker`` until SIGTERM/SIGINT (clean shutdown: pending transactions committed,
the group left, exit 0). Invalid settings or an unusable topic layout exit 2 with a message;
an unreachable cluster exits 1; a crash exits 1 after logging it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from worker.runtime.topics import BrokerUnavailableError, TopicNames, ensure_topics
from worker.settings import Settings, add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "worker",
        help="run one worker of the consumer group (the whole pipeline, exactly once)",
        description="Run one member of the recal consumer group: joins the impressions and "
        "clicks topics into labeled feedback, recalibrates, raises drift alerts, keeps the "
        "posteriors, dead-letters bad input; every output, state change and input offset of a "
        "partition is committed in one Kafka transaction. Serves /healthz, /readyz and "
        "/metrics. Every setting is also read from its RECAL_* variable.",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    log.info("recal worker settings: %s", settings.describe())
    try:
        return asyncio.run(_main(settings))
    except BrokerUnavailableError as exc:
        print(f"recal worker: {exc}", file=sys.stderr)
        return 1


async def _main(settings: Settings) -> int:
    from worker.gc_tuning import tune_for_worker
    from worker.runtime.group_worker import GroupWorker
    from worker.runtime.web import start_web

    names = TopicNames.from_settings(settings)
    plan = await ensure_topics(settings, names)
    log.info(
        "topics: %s, %s -> %s, %s, %s, %s, %s; state %s; %s partitions (co-partitioned), "
        "replication factor %s for created topics", names.impressions, names.clicks,
        names.feedback, names.calibrators, names.alerts, names.posteriors, names.dlq,
        names.state, plan.partitions, plan.replication_factor,
    )
    worker = GroupWorker(settings, plan)
    # Last before the loop: imports and settings are frozen out of the collector's scans.
    tune_for_worker()
    runner, port = await start_web(worker, settings.web_host, settings.web_port)
    log.info(
        "recal worker %s: %s partitions; web on http://%s:%s (/healthz /readyz /metrics)",
        settings.app_id, plan.partitions, settings.web_host, port,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    except Exception:
        log.exception("recal worker crashed")
        return 1
    finally:
        await runner.cleanup()
    log.info("recal worker stopped cleanly")
    return 0
