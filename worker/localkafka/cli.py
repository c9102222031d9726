"""`recal kafka fetch|start|stop|status`: the local broker of DESIGN §10 from the shell.

Machine-readable output goes to stdout (the bootstrap address, or JSON with ``--json``);
progress and errors go to stderr, so ``BOOTSTRAP=$(recal kafka start)`` works in scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from worker.localkafka.broker import (
    DEFAULT_HEAP,
    DEFAULT_VERSION,
    ENV_CACHE_DIR,
    ENV_DATA_DIR,
    LocalKafka,
    LocalKafkaError,
)

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Register ``kafka`` and its subcommands on the top-level ``recal`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"broker data directory (default ${ENV_DATA_DIR} or ./.kafka)",
    )
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"jar cache (default ${ENV_CACHE_DIR} or ~/.cache/recal/kafka)",
    )
    common.add_argument(
        "--kafka-version",
        default=DEFAULT_VERSION,
        help=f"Apache Kafka version (default {DEFAULT_VERSION})",
    )

    kafka = subparsers.add_parser(
        "kafka",
        help="run the local single-node Kafka broker",
        description="The project's own single-node Kafka broker (no Docker needed).",
    )
    kafka.set_defaults(func=run, kafka_command=None)
    sub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION")

    sub.add_parser("fetch", parents=[common], help="download the broker jars once (Maven)")

    start = sub.add_parser(
        "start", parents=[common], help="start the broker and print its bootstrap address"
    )
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    start.add_argument("--heap", default=DEFAULT_HEAP, help=f"JVM heap (default {DEFAULT_HEAP})")
    start.add_argument("--json", action="store_true", help="print the full status as JSON")

    stop = sub.add_parser("stop", parents=[common], help="stop the broker (SIGTERM, then KILL)")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    stop.add_argument("--json", action="store_true", help='print {"stopped": true|false}')

    status = sub.add_parser(
        "status", parents=[common], help="print the bootstrap address; exit 1 if not running"
    )
    status.add_argument("--json", action="store_true", help="print the full status as JSON")


def _broker(args: argparse.Namespace) -> LocalKafka:
    kwargs: dict[str, Any] = {"version": args.kafka_version}
    if args.data_dir is not None:
        kwargs["data_dir"] = args.data_dir
    if args.cache_dir is not None:
        kwargs["cache_dir"] = args.cache_dir
    if getattr(args, "heap", None):
        kwargs["heap"] = args.heap
    return LocalKafka(**kwargs)


def run(args: argparse.Namespace) -> int:
    """Execute ``recal kafka ACTION``; the process exit code."""
    action = getattr(args, "kafka_command", None)
    if action is None:
        print("usage: recal kafka {fetch,start,stop,status} [options]", file=sys.stderr)
        return 2
    try:
        broker = _broker(args)
        if action == "fetch":
            print(broker.fetch())
            return 0
        if action == "start":
            bootstrap = broker.start(timeout_s=args.timeout)
            print(json.dumps(broker.status()) if args.json else bootstrap)
            return 0
        if action == "stop":
            stopped = broker.stop(timeout_s=args.timeout)
            if args.json:
                print(json.dumps({"stopped": stopped}))
            else:
                print("stopped" if stopped else "not running")
            return 0
        if action == "status":
            info = broker.status()
            if args.json:
                print(json.dumps(info))
            else:
                print(info["bootstrap"] if info["running"] else "not running")
            return 0 if info["running"] else 1
    except LocalKafkaError as exc:
        print(f"recal kafka {action}: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unknown kafka action {action!r}")
