"""`recal worker`: run one member of the join worker's consumer group (runtime A).

Start-up: resolve and log the settings (secrets masked), check the topic layout and create
missing topics (``worker.runtime.topics``), then run the faust worker until SIGTERM/SIGINT
(clean shutdown: in-flight messages finish, offsets are committed, exit 0). Invalid settings
or an unusable topic layout exit 2 with a message; an unreachable cluster exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from worker.runtime.topics import BrokerUnavailableError, TopicNames, ensure_topics
from worker.settings import add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "worker",
        help="run one join worker (consumes impressions and clicks, produces feedback)",
        description="Run one member of the recal consumer group: joins the impressions and "
        "clicks topics into labeled feedback, dead-letters bad input, serves /healthz, "
        "/readyz and /metrics. Every setting is also read from its RECAL_* variable.",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # faust is imported here so the other subcommands do not pay for it.
    import faust

    from worker.runtime.app import create_app, internal_topics, tune_gc

    settings = settings_from_args(args)
    log.info("recal worker settings: %s", settings.describe())
    names = TopicNames.from_settings(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        plan = loop.run_until_complete(
            ensure_topics(settings, names, internal=internal_topics(settings))
        )
    except BrokerUnavailableError as exc:
        print(f"recal worker: {exc}", file=sys.stderr)
        loop.close()
        return 1
    log.info(
        "topics: %s, %s -> %s, %s; %s partitions (co-partitioned), replication factor %s "
        "for created topics", names.impressions, names.clicks, names.feedback, names.dlq,
        plan.partitions, plan.replication_factor,
    )
    app = create_app(settings, plan)
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        quiet=True,
        # recal's own logging setup (worker/cli.py) stays in charge.
        override_logging=False,
        redirect_stdouts=False,
    )
    # Last, so the imports, the app and the worker are frozen out of the collector's scans.
    tune_gc()
    # Exits the process: 0 after a clean shutdown, 1 after a crash.
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline raises SystemExit
