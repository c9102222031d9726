"""`recal replay EVENTS.jsonl --out DIR`: the file-replay runtime's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from worker.core.errors import ConfigError
from worker.replay import ReplayConfig, progress_stream, run_replay
from worker.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "replay",
        help="run the core over a JSONL file of impressions and clicks",
        description="Replay EVENTS.jsonl (one impression or click per line, with \"type\") "
        "through the core in file order and write feedback.jsonl, calibrators.jsonl, dlq.jsonl "
        "and summary.json to --out.",
    )
    parser.add_argument("events", type=Path, help="JSONL file of impressions and clicks")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--attribution-window", type=float, default=None, metavar="S",
                        help="attribution window in seconds (default 1800)")
    parser.add_argument("--allowed-lateness", type=float, default=None, metavar="S",
                        help="allowed event-time lateness in seconds (default 60)")
    parser.add_argument("--recalibrate-every", type=int, default=None, metavar="N",
                        help="refit every N mature feedback events per model (default 1000)")
    parser.add_argument("--config", dest="config_file", default=None,
                        help="JSON file of settings")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.events.is_file():
        raise ConfigError(f"events file {args.events} does not exist")
    settings = Settings.load(
        overrides={
            "attribution_window_s": args.attribution_window,
            "allowed_lateness_s": args.allowed_lateness,
            "recalibrate_every": args.recalibrate_every,
        },
        config_file=args.config_file,
    )
    config = ReplayConfig(
        window_ms=settings.window_ms,
        allowed_lateness_ms=settings.lateness_ms,
        max_message_bytes=settings.max_message_bytes,
        recalibrate_every=settings.recalibrate_every,
    )
    summary = run_replay(args.events, args.out, config, progress=progress_stream())
    sys.stdout.write(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
