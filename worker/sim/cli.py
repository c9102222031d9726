"""``recal simulate``: write a StreamRec scenario as replay JSONL (DESIGN §11).

Wired into ``worker/cli.py`` by the lead::

    from worker.sim import cli as sim_cli
    sim_cli.add_parser(subparsers)      # registers "simulate", sets func=sim_cli.run
    ...
    return args.func(args)

Examples::

    recal simulate --events 100000 --seed 7 --out events.jsonl
    recal simulate --events 1000000 --temperature 1.6 --drift-at 500000 \\
        --drift-temperature 0.8 --duplicates 0.01 --reorder-ms 30000 --malformed 0.005 \\
        --orphans 0.01 --out big.jsonl
    recal simulate --events 1000 | head
    recal simulate --scenario realistic --seed 2 --events 60000 --out real.jsonl
    recal simulate --events 100000 --start-ts $(date +%s000) --to-kafka 127.0.0.1:9092

``--scenario realistic`` starts from the preset ``worker.sim.scenario.realistic`` (6 days of
event time whatever ``--events``); flags given explicitly override its values.

With ``--out FILE`` the expected-outcomes manifest ``FILE.expected.json`` is written next to
it; the one-line summary goes to stderr either way. With ``--to-kafka BOOTSTRAP`` the stream
is produced to ``<prefix>impressions`` and ``<prefix>clicks`` keyed by user_id
(``worker.sim.kafka_sink``; the topics must exist) instead of stdout, or in addition to
``--out FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson

from worker.core.errors import ConfigError
from worker.sim.scenario import PRESETS, SCORE_FIELDS, Scenario
from worker.sim.streamrec import SimEvent, SimSummary, generate, manifest_path, write_jsonl

#: Outputs at least this large show progress on a terminal.
_PROGRESS_MIN_EVENTS = 100_000


class _StoreExplicit(argparse._StoreAction):
    """The plain ``store`` action that also records its ``dest`` in ``namespace.explicit``.

    A preset must give way to the flags the user typed, including one set to its plain
    default value, which comparing values against the defaults cannot tell apart.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        explicit: set[str] = getattr(namespace, "explicit", set())
        namespace.explicit = explicit | {self.dest}


def add_parser(subparsers: Any) -> None:
    """Register the ``simulate`` sub-command on an ``argparse`` sub-parsers object.

    >>> parser = argparse.ArgumentParser(prog="recal")
    >>> add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["simulate", "--events", "10", "--temperature", "1.6"])
    >>> scenario_from_args(args).temperature
    1.6
    """
    p = subparsers.add_parser(
        "simulate",
        help="generate a StreamRec scenario as replay JSONL",
        description=(
            "Generate a deterministic StreamRec stream of impressions and clicks (replay JSONL, "
            "one event per line, in arrival order) with known true click probabilities in "
            "context.true_p, optional miscalibration, drift and input corruption."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Argument groups share the parser's registry: every plain flag records that it was given.
    p.register("action", None, _StoreExplicit)
    p.register("action", "store", _StoreExplicit)
    d = Scenario()
    p.add_argument("--scenario", choices=sorted(PRESETS), default=None,
                   help="start from a named preset (explicit flags override its values)")
    g = p.add_argument_group("size and time")
    g.add_argument("--events", type=int, default=d.n_events, help="impressions to generate")
    g.add_argument("--users", type=int, default=d.n_users, help="number of users")
    g.add_argument("--items", type=int, default=d.n_items, help="number of items")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same bytes)")
    g.add_argument("--start-ts", type=int, default=d.start_ts_ms, help="first event time, epoch ms")
    g.add_argument("--rate", type=float, default=d.events_per_second,
                   help="impressions per second of event time")
    g.add_argument("--model-id", default=d.model_id, help="model_id of the impressions")

    g = p.add_argument_group("true click model")
    g.add_argument("--ctr-alpha", type=float, default=d.ctr_alpha,
                   help="Beta alpha of the users' base CTR (mean = alpha / (alpha + beta))")
    g.add_argument("--ctr-beta", type=float, default=d.ctr_beta, help="Beta beta of the base CTR")
    g.add_argument("--item-logit-sd", type=float, default=d.item_logit_sd,
                   help="sd of the per-item logit effect")
    g.add_argument("--no-arms", action="store_true", help="impressions carry no arm field")
    g.add_argument("--new-users", type=float, default=d.new_user_share,
                   help="share of users who are new (segment 'new', late in the stream)")
    g.add_argument("--base-rate-shift-at", type=int, default=None,
                   help="impression index from which true odds are multiplied")
    g.add_argument("--base-rate-shift", type=float, default=d.base_rate_shift_odds,
                   help="odds multiplier applied from --base-rate-shift-at")
    g.add_argument("--diurnal-traffic", type=float, default=d.diurnal_traffic_amplitude,
                   help="relative amplitude of the daily traffic cycle, in [0, 1)")
    g.add_argument("--diurnal-ctr", type=float, default=d.diurnal_ctr_amplitude,
                   help="log-odds amplitude of the daily CTR cycle")
    g.add_argument("--base-rate-drift", type=float, default=d.base_rate_drift_per_day,
                   help="true log-odds change per day of event time (the model misses it)")
    g.add_argument("--position-decay", type=float, default=d.position_decay,
                   help="true logit falls by this times log(1 + position)")

    g = p.add_argument_group("served model")
    g.add_argument("--temperature", type=float, default=d.temperature,
                   help="served logit = T * true logit + bias; T > 1 is overconfident")
    g.add_argument("--bias", type=float, default=d.bias, help="served logit bias")
    g.add_argument("--model-noise", type=float, default=d.model_noise_sd,
                   help="sd of the model's logit error (before the temperature)")
    g.add_argument("--drift-at", type=int, default=None,
                   help="impression index where temperature/bias switch")
    g.add_argument("--drift-temperature", type=float, default=None,
                   help="temperature from --drift-at on (default: unchanged)")
    g.add_argument("--drift-bias", type=float, default=None,
                   help="bias from --drift-at on (default: unchanged)")
    g.add_argument("--diurnal-temperature", type=float, default=d.diurnal_temperature_factor,
                   help="temperature factor at --diurnal-miscal-hour (> 1: overconfident then)")
    g.add_argument("--diurnal-miscal-hour", type=float, default=d.diurnal_miscal_peak_hour,
                   help="UTC hour where the served model's daily miscalibration peaks")
    g.add_argument("--score-field", choices=SCORE_FIELDS, default=d.score_field,
                   help="which of score/logit the impressions carry")

    g = p.add_argument_group("clicks")
    g.add_argument("--window-ms", type=int, default=d.attribution_window_ms,
                   help="attribution window the late clicks are pushed beyond")
    g.add_argument("--click-delay-ms", type=float, default=d.click_delay_mean_ms,
                   help="mean click delay (exponential)")
    g.add_argument("--late-clicks", type=float, default=d.late_click_share,
                   help="share of clicks pushed beyond the attribution window")
    g.add_argument("--skew", type=float, default=d.skew_share,
                   help="share of clicks stamped before their impression")

    g = p.add_argument_group("corruption")
    g.add_argument("--duplicates", type=float, default=d.duplicate_share,
                   help="probability that a line is followed by an exact duplicate")
    g.add_argument("--reorder-ms", type=int, default=d.reorder_within_ms,
                   help="max event-time lag of a line behind the max ts seen before it")
    g.add_argument("--malformed", type=float, default=d.malformed_share,
                   help="share of invalid lines (each with its expected dead-letter reason)")
    g.add_argument("--orphans", type=float, default=d.orphan_click_share,
                   help="share of clicks whose impression is never sent")

    g = p.add_argument_group("output")
    g.add_argument("--out", default="-", help="output JSONL file, '-' for stdout")
    g.add_argument("--no-manifest", action="store_true",
                   help="do not write the FILE.expected.json manifest")
    g.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    g.add_argument("--to-kafka", metavar="BOOTSTRAP", default=None,
                   help="produce the stream to Kafka at host:port (impressions and clicks "
                   "topics, keyed by user_id) instead of stdout, or after writing --out FILE")
    g.add_argument("--topic-prefix", default=os.environ.get("RECAL_TOPIC_PREFIX", "recal."),
                   help="prefix of the topic names with --to-kafka ($RECAL_TOPIC_PREFIX)")
    p.set_defaults(func=run)


#: Flag destination -> Scenario field.
_FIELD_OF_FLAG: dict[str, str] = {
    "events": "n_events",
    "users": "n_users",
    "items": "n_items",
    "seed": "seed",
    "start_ts": "start_ts_ms",
    "rate": "events_per_second",
    "model_id": "model_id",
    "ctr_alpha": "ctr_alpha",
    "ctr_beta": "ctr_beta",
    "item_logit_sd": "item_logit_sd",
    "new_users": "new_user_share",
    "base_rate_shift_at": "base_rate_shift_at",
    "base_rate_shift": "base_rate_shift_odds",
    "diurnal_traffic": "diurnal_traffic_amplitude",
    "diurnal_ctr": "diurnal_ctr_amplitude",
    "base_rate_drift": "base_rate_drift_per_day",
    "position_decay": "position_decay",
    "temperature": "temperature",
    "bias": "bias",
    "model_noise": "model_noise_sd",
    "drift_at": "drift_at_event",
    "drift_temperature": "drift_temperature",
    "drift_bias": "drift_bias",
    "diurnal_temperature": "diurnal_temperature_factor",
    "diurnal_miscal_hour": "diurnal_miscal_peak_hour",
    "score_field": "score_field",
    "window_ms": "attribution_window_ms",
    "click_delay_ms": "click_delay_mean_ms",
    "late_clicks": "late_click_share",
    "skew": "skew_share",
    "duplicates": "duplicate_share",
    "reorder_ms": "reorder_within_ms",
    "malformed": "malformed_share",
    "orphans": "orphan_click_share",
}


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Build the ``Scenario`` from parsed flags (raises ``ConfigError`` on invalid values).

    With ``--scenario NAME`` the preset supplies every knob the user did not type.
    """
    kwargs: dict[str, Any] = {field: getattr(args, dest) for dest, field in _FIELD_OF_FLAG.items()}
    if args.no_arms:
        kwargs["arms"] = ()
    preset = getattr(args, "scenario", None)
    if preset is None:
        return Scenario(**kwargs)
    typed: set[str] = getattr(args, "explicit", set())
    overrides = {
        field: kwargs[field] for dest, field in _FIELD_OF_FLAG.items() if dest in typed
    }
    if args.no_arms:
        overrides["arms"] = ()
    return PRESETS[preset](**overrides)


class _Progress:
    """A one-line, carriage-return progress meter on stderr, at most ~4 updates a second."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, impressions: int, lines: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.25 and impressions < self.total:
            return
        self.last = now
        rate = lines / max(now - self.start, 1e-9)
        sys.stderr.write(
            f"\rsimulate: {impressions:,}/{self.total:,} impressions "
            f"({100 * impressions / self.total:.0f} %), {lines:,} lines, {rate:,.0f} lines/s"
        )
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    """Run ``recal simulate``; returns the exit code (0 ok, 2 invalid configuration)."""
    try:
        scenario = scenario_from_args(args)
    except ConfigError as exc:
        print(f"recal simulate: error: {exc}", file=sys.stderr)
        return 2
    to_kafka = getattr(args, "to_kafka", None)
    to_stdout = args.out == "-"
    if to_kafka is not None and to_stdout:
        return _run_to_kafka(args, scenario, to_kafka)
    progress = None
    if not args.quiet and sys.stderr.isatty() and scenario.n_events >= _PROGRESS_MIN_EVENTS:
        progress = _Progress(scenario.n_events)
    started = time.perf_counter()
    try:
        summary = write_jsonl(scenario, args.out, manifest=not args.no_manifest, progress=progress)
    except BrokenPipeError:
        # `recal simulate | head`: the reader left; that is not an error. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"recal simulate: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.done()
    elapsed = time.perf_counter() - started
    if not args.quiet:
        info = {
            "out": args.out,
            "manifest": None if to_stdout or args.no_manifest else str(manifest_path(args.out)),
            "seconds": round(elapsed, 3),
            "lines_per_second": round(summary.lines / max(elapsed, 1e-9)),
            **summary.to_dict(),
        }
        sys.stderr.write(orjson.dumps(info).decode() + "\n")
    if to_kafka is not None:
        return _run_to_kafka(args, scenario, to_kafka)
    return 0


class _SendProgress:
    """``progress(sent, acked)`` of the Kafka sink as a one-line meter on stderr."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, sent: int, acked: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.25:
            return
        self.last = now
        rate = sent / max(now - self.start, 1e-9)
        sys.stderr.write(f"\rsimulate: {sent:,} sent, {acked:,} acknowledged, {rate:,.0f} msg/s")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def _run_to_kafka(args: argparse.Namespace, scenario: Scenario, bootstrap: str) -> int:
    """Produce the scenario's stream to Kafka; 0 when every message was acknowledged."""
    from worker.sim.kafka_sink import KafkaSinkError, send_to_kafka

    summary = SimSummary(scenario)

    def counted() -> Iterator[SimEvent]:
        for ev in generate(scenario):
            summary.add(ev)
            yield ev

    progress = _SendProgress() if not args.quiet and sys.stderr.isatty() else None
    try:
        sent = asyncio.run(
            send_to_kafka(counted(), bootstrap, args.topic_prefix, progress=progress)
        )
    except KafkaSinkError as exc:
        print(f"recal simulate: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.done()
    if not args.quiet:
        info = {"to_kafka": bootstrap, "kafka": sent.to_dict(), **summary.to_dict()}
        sys.stderr.write(orjson.dumps(info).decode() + "\n")
    return 0
