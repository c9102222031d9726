"""`recal report`: the HTML report from a replay output directory or from the topics.

    recal report DIR [--out FILE]
    recal report --bootstrap-servers HOST:PORT [--topic-prefix recal.] --out-dir DIR

The second form dumps the worker's output topics (``dump_topics``) into DIR, in replay's
layout, then builds the report from it. Kafka connection settings (SASL/TLS included) are
the worker's, with the same flags and ``RECAL_*`` variables. Prints the report's path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.core.errors import ConfigError
from worker.settings import add_settings_arguments, settings_from_args

#: The settings `recal report` takes: where the topics are and how to connect.
KAFKA_SETTINGS = (
    "bootstrap_servers", "topic_prefix", "security_protocol", "sasl_mechanism",
    "sasl_username", "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
    "ssl_password",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (reliability, timelines, prequential table)",
        description="Write one self-contained HTML file (charts inline, opens offline) from a "
        "`recal replay` output directory, or, with --out-dir and no DIR, from the worker's "
        "output topics (dumped into --out-dir first, in replay's layout). Prints its path.",
    )
    parser.add_argument("source", nargs="?", type=Path, metavar="DIR",
                        help="replay output directory (feedback.jsonl, calibrators.jsonl, ...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default: DIR/report.html)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="read the output topics into this directory, then report on it")
    parser.add_argument("--title", default=None, help="the report's heading")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds allowed for reading the topics (default 30)")
    add_settings_arguments(parser, KAFKA_SETTINGS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worker.report import build_report, dump_topics

    source: Path | None = args.source
    if source is not None and args.out_dir is not None:
        raise ConfigError("give either DIR (a replay output directory) or --out-dir (read "
                          "the topics into it), not both")
    if source is None:
        if args.out_dir is None:
            raise ConfigError("give DIR (a replay output directory), or --out-dir DIR with "
                              "--bootstrap-servers to report on the worker's topics")
        from worker.runtime.security import aiokafka_security_kwargs
        from worker.runtime.topics import BrokerUnavailableError

        settings = settings_from_args(args)
        try:
            source = dump_topics(settings.bootstrap_servers, settings.topic_prefix,
                                 args.out_dir, timeout_s=args.timeout,
                                 **aiokafka_security_kwargs(settings))
        except BrokerUnavailableError as exc:
            print(f"recal report: {exc}", file=sys.stderr)
            return 1
    path = build_report(source, args.out, title=args.title)
    print(path)
    return 0
