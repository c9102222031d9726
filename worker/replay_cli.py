"""`recal replay EVENTS.jsonl --out DIR`: the file-replay runtime's command line.

Its settings flags (`--attribution-window`, `--allowed-lateness`, `--recalibrate-every`,
every policy and monitor knob, `--config`) come from the one declaration in
`worker.settings`, like the worker's; `RECAL_*` variables apply too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO

import orjson

from worker.core.errors import ConfigError
from worker.replay import progress_stream, run_replay
from worker.settings import (
    add_settings_arguments,
    replay_setting_names,
    settings_from_args,
)

#: The events argument that means standard input.
STDIN = "-"


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "replay",
        help="run the core over a JSONL file of impressions and clicks",
        description="Replay EVENTS.jsonl (one impression or click per line, with \"type\"; "
        "'-' reads standard input) through the core in file order and write feedback.jsonl, "
        "calibrators.jsonl, alerts.jsonl, posteriors.jsonl, dlq.jsonl and summary.json to "
        "--out. Every setting is also read from its RECAL_* variable.",
    )
    parser.add_argument("events", help="JSONL file of impressions and clicks ('-': stdin)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    add_settings_arguments(parser, replay_setting_names())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    events: Path | IO[bytes]
    if args.events == STDIN:
        events = sys.stdin.buffer
    else:
        events = Path(args.events)
        if not events.is_file():
            raise ConfigError(f"events file {events} does not exist")
    settings = settings_from_args(args)
    summary = run_replay(events, args.out, settings.pipeline_config(), progress=progress_stream(),
                         max_message_bytes=settings.max_message_bytes)
    sys.stdout.write(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
