"""``recal demo``: the whole loop on the project's own Kafka broker, live, with a report (§11).

What it does, in order:

1. starts a local single-node Kafka broker (``worker.localkafka``) in a fresh data directory
   (a temporary one, or ``--data-dir``), and creates the four topics co-partitioned;
2. starts ``recal worker`` as a subprocess (W = 60 s, lateness 10 s, idle timeout 10 s);
3. generates a StreamRec stream (CTR ~ Beta(2, 8), served model over-confident with T = 1.6,
   ~1 % duplicates and orphan clicks, 0.3 % malformed lines, 5 s of arrival reordering) with
   event times starting at the wall clock, and sends it with ``worker.sim.kafka_sink``;
4. ends the stream with a few *flush* impressions per partition, stamped past every deadline:
   Kafka has no end of stream, and waiting for the idle watermark advance (W + idle timeout
   + lateness of wall time) would take minutes; with the flush every negative matures as soon
   as the worker reaches it, and the result does not depend on timing;
5. shows a live line (produced, processed and lag, feedback, dead letters) until every label
   and dead letter expected by the batch oracle has arrived, or nothing moved for
   ``--timeout`` seconds;
6. stops the worker (SIGTERM) and the broker (in every case: error, Ctrl-C, SIGTERM) and
   prints the report: the Kafka feedback against the oracle's labels, dead letters by reason
   against the generator's expectations, the served scores' ECE on the feedback, what a
   temperature fit on the first half does to the second half, throughput and timings.

Exit codes: 0 when the loop completed and matched the oracle; 1 when it did not (the message
says why, with the worker's log tail); 2 for invalid flags; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from worker.core.errors import ConfigError, InvalidInputError, RecalError

log = logging.getLogger(__name__)

#: Join settings of the demo worker (seconds). The window is short so that the stream's
#: event-time span covers a few windows and negatives mature while the stream is processed;
#: the lateness still exceeds the stream's arrival reordering (5 s), so nothing is late.
WINDOW_S = 60
LATENESS_S = 10
IDLE_TIMEOUT_S = 10
#: Impressions per second of event time, raised for long streams so that their event times
#: span at most EVENT_SPAN_MAX_S: the flush impressions (max ts + W + L + 5 s) then stay far
#: inside the worker's max_future_s (1 h).
EVENT_RATE = 100.0
EVENT_SPAN_MAX_S = 300
FLUSH_MARGIN_MS = 5_000
#: The scenario's served-model temperature (T > 1: over-confident).
SERVED_TEMPERATURE = 1.6
_READY_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0
_SETTLE_S = 1.5
_LIVE_PERIOD_S = 0.5
_PLAIN_PERIOD_S = 5.0
_LOG_TAIL_LINES = 30
_MIN_CALIBRATION_N = 50

Key = tuple[str, str]

_SHORT_REASON = {
    "invalid_json": "json",
    "schema": "schema",
    "score_range": "range",
    "too_large": "large",
    "key_mismatch": "key",
    "future_ts": "future",
    "late_impression": "late_imp",
    "orphan_click": "orphan",
}


class DemoError(RecalError):
    """The demo's loop did not complete (the message says where it stopped)."""


# --- command line -----------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    """Register ``recal demo``.

    >>> parser = argparse.ArgumentParser(prog="recal")
    >>> add_parser(parser.add_subparsers(dest="command"))
    >>> options_from_args(parser.parse_args(["demo", "--events", "500"])).events
    500
    """
    p = subparsers.add_parser(
        "demo",
        help="the whole loop on a local broker: stream, worker, live view, report",
        description=(
            "Start a local Kafka broker and `recal worker`, send a generated StreamRec stream, "
            "show the worker's progress live, check its feedback against the batch oracle and "
            "report calibration, dead letters and throughput. Stops everything it started."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=20_000, help="impressions to generate")
    p.add_argument("--partitions", type=int, default=2, help="partitions of every topic")
    p.add_argument("--seed", type=int, default=1, help="random seed of the stream")
    p.add_argument("--keep-broker", action="store_true",
                   help="leave the broker running at the end and print its address")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="empty or absent directory for the broker, the worker and their logs "
                   "(default: a temporary directory, removed after a successful run)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="give up when neither outputs nor the worker's processed count move "
                   "for this many seconds")
    p.add_argument("--topic-prefix", default="recal.", help="prefix of the topic names")
    p.add_argument("--json-report", type=Path, default=None,
                   help="also write the report (with the broker and worker PIDs) as JSON here")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings, validated."""

    events: int = 20_000
    partitions: int = 2
    seed: int = 1
    keep_broker: bool = False
    data_dir: Path | None = None
    timeout_s: float = 60.0
    topic_prefix: str = "recal."
    json_report: Path | None = None
    app_id: str = "recal-demo"

    def __post_init__(self) -> None:
        if not 1 <= self.events <= 10_000_000:
            raise ConfigError(f"--events must be an integer in [1, 10000000]; got {self.events}")
        if not 1 <= self.partitions <= 64:
            raise ConfigError(f"--partitions must be an integer in [1, 64]; got {self.partitions}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"--timeout must be a number > 0; got {self.timeout_s}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{0,200}", self.topic_prefix):
            raise ConfigError(
                "--topic-prefix must be up to 200 chars of [A-Za-z0-9._-]; "
                f"got {self.topic_prefix!r}"
            )
        if self.data_dir is not None and self.data_dir.exists():
            if not self.data_dir.is_dir():
                raise ConfigError(f"--data-dir {self.data_dir} is not a directory")
            if any(self.data_dir.iterdir()):
                raise ConfigError(
                    f"--data-dir {self.data_dir} is not empty; the demo needs a fresh broker "
                    "(pass an empty or new directory, or stop and remove the old one)"
                )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        events=args.events,
        partitions=args.partitions,
        seed=args.seed,
        keep_broker=args.keep_broker,
        data_dir=args.data_dir,
        timeout_s=args.timeout,
        topic_prefix=args.topic_prefix,
        json_report=args.json_report,
    )


def run(args: argparse.Namespace) -> int:
    """``recal demo``: 0 success, 1 the loop did not complete or match, 2 bad flags, 130 ^C."""
    try:
        opts = options_from_args(args)
    except ConfigError as exc:
        print(f"recal demo: error: {exc}", file=sys.stderr)
        return 2
    # The broker's and the Kafka clients' INFO lines would only repeat the demo's own.
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for name in ("worker.localkafka", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    demo = Demo(opts, sys.stdout)
    received: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        # Our own handler for Ctrl-C too, not Python's default: asyncio.run then leaves it
        # in place instead of turning Ctrl-C into a cancellation of its main task, which a
        # client library may absorb (aiokafka's producer stop can), losing the interrupt.
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        try:
            demo.execute()
            if received:  # absorbed somewhere on the way out: still an interruption
                raise KeyboardInterrupt
            code = 0 if demo.result.get("ok") else 1
        except KeyboardInterrupt:
            demo.fail("interrupted", interrupted=True)
            code = 130
        except (RecalError, OSError) as exc:
            demo.fail(str(exc))
            code = 1
        finally:
            with _signals_ignored():
                demo.cleanup()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    demo.print_report()
    demo.write_json()
    return code


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """No second Ctrl-C may cut the clean-up short (it is bounded by the stop timeouts)."""
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            saved[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# --- the stream and what it must produce ------------------------------------------------------


def demo_scenario(events: int, seed: int, start_ts_ms: int) -> Any:
    """The demo's StreamRec scenario (event times from ``start_ts_ms``, span <= 300 s)."""
    from worker.sim.scenario import Scenario

    return Scenario(
        n_events=events,
        seed=seed,
        start_ts_ms=start_ts_ms,
        events_per_second=max(EVENT_RATE, events / EVENT_SPAN_MAX_S),
        ctr_alpha=2.0,
        ctr_beta=8.0,
        temperature=SERVED_TEMPERATURE,
        attribution_window_ms=WINDOW_S * 1000,
        click_delay_mean_ms=10_000.0,
        late_click_share=0.01,
        duplicate_share=0.01,
        reorder_within_ms=5_000,
        orphan_click_share=0.01,
        malformed_share=0.003,
    )


@dataclass
class Expected:
    """What the worker must produce for a stream, from the batch oracle and the generator."""

    labels: dict[Key, int]
    dlq: Counter[str]
    true_p: dict[Key, float]
    lines: int
    stream: dict[str, Any]

    @property
    def dlq_total(self) -> int:
        return sum(self.dlq.values())


def expectations(events: Sequence[Any], window_ms: int) -> Expected:
    """Oracle labels of the well-formed events, and dead letters by reason: the generator's
    reason for each malformed line plus one ``orphan_click`` per clicked impression id that
    never arrived (duplicates of an orphan count once, as in the join)."""
    from worker.core.codec.input_decoder import InputDecoder
    from worker.core.records.impression import Impression
    from worker.sim.join_oracle import oracle_labels
    from worker.sim.streamrec import SimSummary

    decoder = InputDecoder()
    valid: list[Any] = []
    dlq: Counter[str] = Counter()
    true_p: dict[Key, float] = {}
    summary = SimSummary(scenario=None)  # type: ignore[arg-type]  # used for its counts only
    for ev in events:
        summary.add(ev)
        if ev.expected_reason is not None:
            dlq[ev.expected_reason] += 1
            continue
        try:
            if ev.target == "impression":
                imp = decoder.decode_impression(ev.raw)
                valid.append(imp)
                context = (ev.obj or {}).get("context") or {}
                if "true_p" in context:
                    true_p.setdefault((imp.user_id, imp.impression_id), float(context["true_p"]))
            else:
                valid.append(decoder.decode_click(ev.raw))
        except InvalidInputError as exc:  # a generator/decoder disagreement: still expected
            dlq[exc.reason] += 1
    labels = oracle_labels(valid, window_ms)
    orphans = {
        (e.user_id, e.impression_id)
        for e in valid
        if not isinstance(e, Impression) and (e.user_id, e.impression_id) not in labels
    }
    if orphans:
        dlq["orphan_click"] += len(orphans)
    stream: dict[str, Any] = {
        "lines": summary.lines,
        "impressions": summary.impressions,
        "clicks": summary.clicks,
        "late_clicks": summary.late_clicks,
        "orphan_clicks": summary.orphan_clicks,
        "duplicate_impressions": summary.duplicate_impressions,
        "duplicate_clicks": summary.duplicate_clicks,
        "malformed": summary.malformed,
    }
    return Expected(labels, dlq, true_p, len(events), stream)


# --- reading the outputs ----------------------------------------------------------------------


class OutputReader:
    """Reads the feedback and dead-letter topics from the beginning (no consumer group)."""

    def __init__(self, bootstrap: str, feedback_topic: str, dlq_topic: str) -> None:
        self.bootstrap = bootstrap
        self.feedback_topic = feedback_topic
        self.dlq_topic = dlq_topic
        #: (user_id, impression_id) -> (label, ts, score, logit) of the first copy.
        self.feedback: dict[Key, tuple[int, int, float, float]] = {}
        self.feedback_messages = 0
        self.conflicting = 0
        self.labels: Counter[int] = Counter()
        self.dlq: Counter[str] = Counter()
        self.first_output_at: float | None = None
        self.last_output_at: float | None = None
        self._consumer: Any = None

    @property
    def duplicates(self) -> int:
        return self.feedback_messages - len(self.feedback)

    @property
    def dlq_total(self) -> int:
        return sum(self.dlq.values())

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            self.feedback_topic,
            self.dlq_topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            client_id="recal-demo-reader",
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
            if not batches:
                continue
            now = time.monotonic()
            if self.first_output_at is None:
                self.first_output_at = now
            self.last_output_at = now
            for tp, records in batches.items():
                if tp.topic == self.feedback_topic:
                    for record in records:
                        self._feedback(orjson.loads(record.value))
                else:
                    for record in records:
                        self.dlq[str(orjson.loads(record.value).get("reason"))] += 1

    def _feedback(self, fb: dict[str, Any]) -> None:
        self.feedback_messages += 1
        key = (fb["user_id"], fb["impression_id"])
        label = int(fb["label"])
        seen = self.feedback.get(key)
        if seen is not None:
            if seen[0] != label:
                self.conflicting += 1
            return
        self.labels[label] += 1
        self.feedback[key] = (label, int(fb["ts"]), float(fb["score"]), float(fb["logit"]))


# --- the worker's metrics ---------------------------------------------------------------------

def scrape_metrics(port: int, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The worker's counters from ``/metrics`` (None when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None
    return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, Any]:
    """Input messages processed, feedback by label, dead letters by reason, late clicks, read
    with prometheus-client's own exposition-format parser.

    >>> parse_metrics('recal_events_total{topic="clicks",outcome="accepted"} 3.0\\n'
    ...               'recal_dead_letters_total{reason="schema"} 1.0\\n')["processed"]
    3
    """
    out: dict[str, Any] = {"processed": 0, "feedback": {}, "dead_letters": {}, "late_clicks": 0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            number = int(sample.value)
            if sample.name == "recal_events_total":
                out["processed"] += number
            elif sample.name == "recal_feedback_total":
                out["feedback"][sample.labels.get("label", "")] = number
            elif sample.name == "recal_dead_letters_total":
                out["dead_letters"][sample.labels.get("reason", "")] = number
            elif sample.name == "recal_late_clicks_total":
                out["late_clicks"] = number
    return out


def http_status(port: int, path: str, timeout_s: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


# --- the live view ----------------------------------------------------------------------------


class LiveView:
    """One status line refreshed twice a second on a terminal; a plain line every 5 s
    otherwise. Progress notes (``say``) print as their own lines in both cases."""

    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.started = started
        self.total = 0
        self.produced = 0
        self.acked = 0
        self.processed: int | None = None
        self.reader: OutputReader | None = None
        self.expected: Expected | None = None
        self._shown = False
        self._last_plain = 0.0
        self._last_body = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        self._clear()
        self.out.write(f"[{self.elapsed():6.1f}s] {message}\n")
        self.out.flush()

    def on_progress(self, sent: int, acked: int) -> None:
        self.produced, self.acked = sent, acked

    def line(self) -> str:
        parts = [f"produced {self.produced:,}/{self.total:,}"]
        if self.processed is not None:
            lag = max(0, self.produced - self.processed)
            parts.append(f"processed {self.processed:,} (lag {lag:,})")
        reader = self.reader
        if reader is not None:
            want = f"/{len(self.expected.labels):,}" if self.expected is not None else ""
            parts.append(
                f"feedback {len(reader.feedback):,}{want} "
                f"(+{reader.labels[1]:,} -{reader.labels[0]:,})"
            )
            reasons = " ".join(
                f"{_SHORT_REASON.get(r, r)} {n}" for r, n in sorted(reader.dlq.items())
            )
            parts.append(f"dlq {reader.dlq_total:,}" + (f" ({reasons})" if reasons else ""))
        return f"[{self.elapsed():6.1f}s] " + " | ".join(parts)

    def render(self) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns
            self.out.write("\r" + self.line()[: max(20, width - 1)] + "\x1b[K")
            self._shown = True
        else:
            now = time.monotonic()
            if now - self._last_plain < _PLAIN_PERIOD_S:
                return
            self._last_plain = now
            self._print_plain()
        self.out.flush()

    def _print_plain(self) -> None:
        # The elapsed-time prefix always differs; repeat a line only when the counts moved.
        text = self.line()
        body = text.split("] ", 1)[-1]
        if body != self._last_body:
            self._last_body = body
            self.out.write(text + "\n")

    async def run(self, port: int) -> None:
        while True:
            metrics = await asyncio.to_thread(scrape_metrics, port)
            if metrics is not None:
                self.processed = metrics["processed"]
            self.render()
            await asyncio.sleep(_LIVE_PERIOD_S)

    def close(self) -> None:
        if self.tty and self._shown:
            self.out.write("\r" + self.line() + "\x1b[K\n")
            self.out.flush()
            self._shown = False
        elif not self.tty:
            self._print_plain()
            self.out.flush()

    def _clear(self) -> None:
        if self.tty and self._shown:
            self.out.write("\r\x1b[K")
            self._shown = False


# --- the demo ---------------------------------------------------------------------------------


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    web_port: int | None = None
    exit_code: int | None = None

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip("\n")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:]) or f"(log {self.log_path} is empty)"


class Demo:
    """One run of the demo; ``execute`` then ``cleanup`` (always), then the report."""

    def __init__(self, opts: DemoOptions, out: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.result: dict[str, Any] = {}
        self.started = time.monotonic()
        self.live = LiveView(self.out, self.started)
        self.kafka: Any = None
        self.broker_pid: int | None = None
        self.bootstrap: str | None = None
        self.worker: _Worker | None = None
        self.worker_started = self.started
        self.reader: OutputReader | None = None
        self.timings: dict[str, float] = {}
        self.owns_dir = self.opts.data_dir is None
        self.dir = self.opts.data_dir  # set in execute when temporary
        self.topics = {
            short: f"{self.opts.topic_prefix}{short}"
            for short in ("impressions", "clicks", "feedback", "dlq")
        }
        self.error: str | None = None
        self.interrupted = False
        self.processes: dict[str, Any] = {}

    # -- phases --

    def execute(self) -> None:
        opts = self.opts
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="recal-demo-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.live.say(
            f"recal demo: {opts.events:,} impressions, {opts.partitions} partitions, "
            f"seed {opts.seed}; data in {self.dir}"
        )
        self._start_broker()
        self._create_topics()
        self._start_worker()
        self._wait_worker_ready()
        # Generated now, not while the worker starts: event times begin at the wall clock
        # of the send, so the idle watermark advance (wall - idle timeout - lateness) can
        # never close an impression's window before the impression arrives.
        phase = time.monotonic()
        events, expected = self._generate(int(time.time() * 1000))
        self.timings["generate_s"] = time.monotonic() - phase
        asyncio.run(self._stream(events, expected))
        self._final_metrics()
        self._stop_worker()
        self._evaluate(expected)

    def _phase(self, name: str, since: float) -> float:
        self.timings[name] = time.monotonic() - since
        return self.timings[name]

    def _start_broker(self) -> None:
        from worker.localkafka import LocalKafka

        assert self.dir is not None
        self.kafka = LocalKafka(data_dir=self.dir / "kafka")
        since = time.monotonic()
        if not self.kafka.is_fetched():
            self.live.say("fetching the Kafka jars (once; cached for later runs)")
            self.kafka.fetch()
            self._phase("fetch_s", since)
            since = time.monotonic()
        self.live.say("starting the local Kafka broker")
        self.bootstrap = self.kafka.start(timeout_s=_READY_TIMEOUT_S)
        self.broker_pid = self.kafka.status().get("pid")
        took = self._phase("broker_start_s", since)
        self.live.say(f"broker ready at {self.bootstrap} (pid {self.broker_pid}) in {took:.1f} s")

    def _create_topics(self) -> None:
        from worker.localkafka import TopicSpec, create_topics

        assert self.bootstrap is not None
        since = time.monotonic()
        n = self.opts.partitions
        asyncio.run(
            create_topics(self.bootstrap, [TopicSpec(t, n) for t in self.topics.values()])
        )
        took = self._phase("topics_s", since)
        self.live.say(
            f"topics {', '.join(self.topics.values())} created with {n} partitions "
            f"in {took:.1f} s"
        )

    def _start_worker(self) -> None:
        assert self.dir is not None and self.bootstrap is not None
        opts = self.opts
        cmd = [
            sys.executable, "-m", "worker.cli", "--log-level", "INFO", "worker",
            "--bootstrap-servers", self.bootstrap,
            "--topic-prefix", opts.topic_prefix,
            "--app-id", opts.app_id,
            "--web-port", "0",
            "--partitions", str(opts.partitions),
            "--attribution-window", str(WINDOW_S),
            "--allowed-lateness", str(LATENESS_S),
            "--idle-timeout-s", str(IDLE_TIMEOUT_S),
        ]
        # The demo is self-contained: RECAL_* settings of the caller's shell (a production
        # bootstrap, TLS, ...) must not leak into a worker that talks to the local broker.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECAL_")}
        env["PYTHONUNBUFFERED"] = "1"
        log_path = self.dir / "worker.log"
        with log_path.open("wb") as log_fh:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                # Its own session: a Ctrl-C reaches the demo only, which then stops the
                # worker first (it commits through the broker) and the broker last.
                start_new_session=True,
            )
        self.worker = _Worker(proc, log_path)
        self.worker_started = time.monotonic()
        self.live.say(
            f"worker starting (pid {proc.pid}): W {WINDOW_S} s, lateness {LATENESS_S} s, "
            f"idle timeout {IDLE_TIMEOUT_S} s; log {log_path}"
        )

    def _generate(self, start_ts_ms: int) -> tuple[list[Any], Expected]:
        from worker.sim.streamrec import generate

        scenario = demo_scenario(self.opts.events, self.opts.seed, start_ts_ms)
        events = list(generate(scenario))
        expected = expectations(events, WINDOW_S * 1000)
        s = expected.stream
        self.result["stream"] = {**s, "partitions": self.opts.partitions, "seed": self.opts.seed,
                                 "served_temperature": SERVED_TEMPERATURE}
        self.live.say(
            f"generated {len(events):,} lines: {s['impressions']:,} impressions, "
            f"{s['clicks']:,} clicks ({s['late_clicks']:,} late), {s['orphan_clicks']:,} orphan "
            f"clicks, {s['duplicate_impressions'] + s['duplicate_clicks']:,} duplicates, "
            f"{s['malformed']:,} malformed; oracle: {len(expected.labels):,} labels, "
            f"{sum(expected.labels.values()):,} positive"
        )
        return events, expected

    def _wait_worker_ready(self) -> None:
        worker = self.worker
        assert worker is not None
        deadline = self.worker_started + _READY_TIMEOUT_S
        pattern = re.compile(r"web on http://[\d.]+:(\d+)")
        while True:
            code = worker.proc.poll()
            if code is not None:
                raise DemoError(f"the worker exited with code {code} during start-up")
            if worker.web_port is None:
                with contextlib.suppress(OSError):
                    match = pattern.search(worker.log_path.read_text(errors="replace"))
                    if match:
                        worker.web_port = int(match.group(1))
            if worker.web_port is not None and http_status(worker.web_port, "/readyz") == 200:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"the worker was not ready after {_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        took = self._phase("worker_ready_s", self.worker_started)
        self.live.say(
            f"worker ready in {took:.1f} s (metrics on http://127.0.0.1:{worker.web_port}/metrics)"
        )

    async def _stream(self, events: list[Any], expected: Expected) -> None:
        from worker.sim.kafka_sink import FLUSH_PER_PARTITION, send_flush, send_to_kafka

        assert self.bootstrap is not None and self.worker is not None
        assert self.worker.web_port is not None
        opts = self.opts
        reader = OutputReader(self.bootstrap, self.topics["feedback"], self.topics["dlq"])
        await reader.start()
        live = self.live
        live.reader, live.expected = reader, expected
        live.total = len(events) + opts.partitions
        tasks = [
            asyncio.ensure_future(reader.run()),
            asyncio.ensure_future(live.run(self.worker.web_port)),
        ]
        try:
            live.say(f"sending the stream to {self.topics['impressions']} and "
                     f"{self.topics['clicks']}, keyed by user_id")
            first_send = time.monotonic()
            sent = await send_to_kafka(
                events, self.bootstrap, opts.topic_prefix, progress=live.on_progress
            )
            flush_ts = (sent.max_ts or int(time.time() * 1000)) + (
                (WINDOW_S + LATENESS_S) * 1000 + FLUSH_MARGIN_MS
            )
            await send_flush(self.bootstrap, opts.topic_prefix, opts.partitions, flush_ts)
            n_flush = opts.partitions * FLUSH_PER_PARTITION
            live.produced += n_flush
            produce_s = self._phase("produce_s", first_send)
            self.result["produced"] = {
                **sent.to_dict(),
                "flush_impressions": n_flush,
                "flush_ts": flush_ts,
            }
            live.say(
                f"sent {sent.messages:,} messages in {sent.seconds:.1f} s "
                f"({sent.messages_per_second:,.0f} msg/s, acks=all), then "
                f"{n_flush} flush impressions ({produce_s:.1f} s in all); "
                "waiting for the worker"
            )
            # A stall bound, not a total one: a long stream may take minutes on a slow
            # machine, but a worker that moves nothing for --timeout seconds is stuck.
            last_progress, progress = time.monotonic(), (-1, -1, live.processed)
            while not (
                len(reader.feedback) >= len(expected.labels)
                and reader.dlq_total >= expected.dlq_total
            ):
                now = time.monotonic()
                state = (len(reader.feedback), reader.dlq_total, live.processed)
                if state != progress:
                    progress, last_progress = state, now
                for task in tasks:
                    if task.done():
                        task.result()  # re-raise what ended it
                        raise DemoError("a monitoring task ended early")
                code = self.worker.proc.poll()
                if code is not None:
                    raise DemoError(f"the worker exited with code {code} while processing")
                if now - last_progress > opts.timeout_s:
                    raise DemoError(
                        f"no progress for {opts.timeout_s:g} s: only {len(reader.feedback):,} of "
                        f"{len(expected.labels):,} labels and {reader.dlq_total:,} of "
                        f"{expected.dlq_total:,} dead letters had arrived"
                    )
                await asyncio.sleep(0.1)
            complete = time.monotonic()
            self.timings["drain_s"] = complete - first_send - produce_s
            self.timings["end_to_end_s"] = complete - first_send
            self.result["end_to_end"] = {
                "input_messages": sent.messages + opts.partitions,
                "seconds": round(complete - first_send, 3),
                "messages_per_second": round(
                    (sent.messages + opts.partitions) / max(complete - first_send, 1e-9)
                ),
                "first_output_after_s": (
                    round(reader.first_output_at - first_send, 3)
                    if reader.first_output_at is not None else None
                ),
            }
            # Anything extra (a duplicate label) would show up now.
            await asyncio.sleep(_SETTLE_S)
            live.render()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            live.close()
            self._reader_snapshot(reader)
            await reader.stop()

    def _reader_snapshot(self, reader: OutputReader) -> None:
        self.reader = reader
        self.result["outputs"] = {
            "feedback_messages": reader.feedback_messages,
            "feedback_distinct": len(reader.feedback),
            "positives": reader.labels[1],
            "negatives": reader.labels[0],
            "duplicates": reader.duplicates,
            "dead_letters": dict(sorted(reader.dlq.items())),
        }

    def _final_metrics(self) -> None:
        assert self.worker is not None and self.worker.web_port is not None
        metrics = scrape_metrics(self.worker.web_port, timeout_s=3.0)
        if metrics is not None:
            self.result["worker_metrics"] = metrics

    def _stop_worker(self) -> None:
        worker = self.worker
        if worker is None or worker.exit_code is not None:
            return
        since = time.monotonic()
        proc = worker.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("worker (pid %d) ignored SIGTERM for %.0f s; killing it",
                            proc.pid, _STOP_TIMEOUT_S)
                proc.kill()
                proc.wait(10)
        worker.exit_code = proc.returncode
        self.timings["worker_stop_s"] = time.monotonic() - since
        self.processes["worker_exit"] = proc.returncode

    def _stop_broker(self) -> None:
        if self.kafka is None:
            return
        if self.opts.keep_broker and self.kafka.status().get("running"):
            self.processes["broker_kept"] = True
            return
        since = time.monotonic()
        self.kafka.stop(timeout_s=_STOP_TIMEOUT_S)
        self.timings["broker_stop_s"] = time.monotonic() - since

    def fail(self, message: str, *, interrupted: bool = False) -> None:
        self.error = message
        self.interrupted = interrupted
        self.live._clear()

    def cleanup(self) -> None:
        """Stop the worker, then the broker; record what is left. Never raises."""
        from worker.localkafka.broker import pid_alive

        for step in (self._stop_worker, self._stop_broker):
            try:
                step()
            except Exception as exc:  # clean-up goes on; the report says what failed
                log.error("clean-up step %s failed: %r", step.__name__, exc)
                if self.error is None:
                    self.error = f"clean-up failed: {exc!r}"
        worker_pid = self.worker.proc.pid if self.worker is not None else None
        self.processes.update(
            {
                "worker_pid": worker_pid,
                "worker_alive": bool(worker_pid and pid_alive(worker_pid)),
                "broker_pid": self.broker_pid,
                "broker_alive": bool(self.broker_pid and pid_alive(self.broker_pid)),
                "broker_kept": bool(self.processes.get("broker_kept")),
                "bootstrap": self.bootstrap,
            }
        )
        # A temporary directory goes unless it holds a failure's logs or the kept broker.
        done = self.interrupted or (self.error is None and bool(self.result.get("ok")))
        if self.owns_dir and self.dir is not None and done and not self.opts.keep_broker:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.processes["data_dir_removed"] = True

    # -- evaluation --

    def _evaluate(self, expected: Expected) -> None:
        reader = self.reader
        assert reader is not None
        got = {key: value[0] for key, value in reader.feedback.items()}
        want = expected.labels
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        different = [k for k in want if k in got and got[k] != want[k]]
        equal = not (missing or extra or different or reader.duplicates or reader.conflicting)
        self.result["oracle"] = {
            "feedback_equals_oracle": equal,
            "labels": len(want),
            "positives": sum(want.values()),
            "missing": len(missing),
            "extra": len(extra),
            "different": len(different),
            "duplicates": reader.duplicates,
            "examples": [list(k) for k in (missing + extra + different)[:5]],
        }
        dlq_match = dict(reader.dlq) == dict(expected.dlq)
        self.result["dead_letters"] = {
            "got": dict(sorted(reader.dlq.items())),
            "expected": dict(sorted(expected.dlq.items())),
            "match": dlq_match,
        }
        self.result["calibration"] = calibration_summary(reader.feedback, expected.true_p)
        worker_ok = self.worker is not None and self.worker.exit_code == 0
        if not worker_ok and self.worker is not None:
            self.error = f"the worker exited with code {self.worker.exit_code} after SIGTERM"
        self.result["ok"] = bool(equal and dlq_match and worker_ok)
        if not equal:
            self.error = "the Kafka feedback differs from the batch oracle's labels"
        elif not dlq_match:
            self.error = "the dead letters differ from the expected ones"

    # -- output --

    def report_dict(self) -> dict[str, Any]:
        status = "ok" if self.result.get("ok") and self.error is None else (
            "interrupted" if self.interrupted else "failed")
        return {
            "status": status,
            "ok": status == "ok",
            "error": self.error,
            "feedback_equals_oracle": bool(
                self.result.get("oracle", {}).get("feedback_equals_oracle")
            ),
            **{k: v for k, v in self.result.items() if k != "ok"},
            "settings": {
                "events": self.opts.events,
                "partitions": self.opts.partitions,
                "seed": self.opts.seed,
                "window_s": WINDOW_S,
                "allowed_lateness_s": LATENESS_S,
                "idle_timeout_s": IDLE_TIMEOUT_S,
                "topics": self.topics,
                "app_id": self.opts.app_id,
            },
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "total_s": round(time.monotonic() - self.started, 3),
            "processes": self.processes,
            "data_dir": str(self.dir) if self.dir is not None else None,
            "worker_log": str(self.worker.log_path) if self.worker is not None else None,
            "broker_log": str(self.kafka.log_file) if self.kafka is not None else None,
        }

    def write_json(self) -> None:
        path = self.opts.json_report
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(orjson.dumps(self.report_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            print(f"recal demo: cannot write {path}: {exc}", file=sys.stderr)

    def print_report(self) -> None:
        self.out.write(format_report(self.report_dict()))
        if self.error is not None and not self.interrupted and self.worker is not None:
            self.out.write(
                f"\nlast {_LOG_TAIL_LINES} lines of the worker log ({self.worker.log_path}):\n"
                f"{self.worker.tail()}\n"
            )
        self.out.flush()
        if self.error is not None:
            print(f"recal demo: {self.error}", file=sys.stderr)


# --- calibration ------------------------------------------------------------------------------


def calibration_summary(
    feedback: dict[Key, tuple[int, int, float, float]], true_p: dict[Key, float]
) -> dict[str, Any]:
    """ECE of the served scores on the feedback; a temperature fit on the first half (by
    event time) applied to the second half; and the true probabilities as the reference."""
    from worker.core.calibrators import TemperatureCalibrator
    from worker.core.metrics import calibration_metrics

    n = len(feedback)
    if n < _MIN_CALIBRATION_N:
        return {"n": n, "skipped": f"fewer than {_MIN_CALIBRATION_N} labels"}
    keys = list(feedback)
    rows = np.array([feedback[k] for k in keys], dtype=np.float64)
    order = np.argsort(rows[:, 1], kind="stable")
    rows = rows[order]
    keys = [keys[i] for i in order]
    y, score, logit = rows[:, 0], rows[:, 2], rows[:, 3]

    def brief(report: Any) -> dict[str, Any]:
        lo, hi = report.ece_ci
        return {
            "n": int(report.n),
            "positives": int(report.positives),
            "ece": report.ece,
            "ece_ci": [lo, hi],
            "ece_floor": report.ece_floor,
            "nll": report.nll,
            "brier": report.brier,
        }

    out: dict[str, Any] = {"raw": brief(calibration_metrics(score, y))}
    truth = np.array([true_p.get(k, math.nan) for k in keys])
    if np.isfinite(truth).all():
        out["true_p"] = brief(calibration_metrics(truth, y))
    half = n // 2
    cal = TemperatureCalibrator.fit(logit[:half], y[:half])
    after = np.asarray(cal.apply_logit(logit[half:]), dtype=np.float64)
    out["temperature_fit"] = {
        "fit_n": half,
        "temperature": cal.temperature,
        "second_half_raw": brief(calibration_metrics(score[half:], y[half:])),
        "second_half_calibrated": brief(calibration_metrics(after, y[half:])),
    }
    return out


def _pct(a: float, b: float) -> str:
    return f"{100.0 * (a - b) / a:.0f} %" if a > 0 else "n/a"


def _ece_line(r: dict[str, Any]) -> str:
    lo, hi = r["ece_ci"]
    ci = f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
    return (
        f"ECE {r['ece']:.4f}{ci} on n = {r['n']:,} (noise floor {r['ece_floor']:.4f}), "
        f"log loss {r['nll']:.4f}"
    )


def format_report(rep: dict[str, Any]) -> str:
    """The human report (whatever parts the run got to)."""
    lines = ["", "recal demo: report", "=================="]
    stream = rep.get("stream")
    settings = rep["settings"]
    if stream:
        lines.append(
            f"stream        {stream['lines']:,} lines: {stream['impressions']:,} impressions "
            f"(CTR ~ Beta(2, 8), served model over-confident T = {stream['served_temperature']}),"
        )
        lines.append(
            f"              {stream['clicks']:,} clicks ({stream['late_clicks']:,} beyond the "
            f"window), {stream['orphan_clicks']:,} orphan clicks, "
            f"{stream['duplicate_impressions'] + stream['duplicate_clicks']:,} duplicates, "
            f"{stream['malformed']:,} malformed"
        )
    lines.append(
        f"join          W = {settings['window_s']} s, lateness {settings['allowed_lateness_s']} s,"
        f" {settings['partitions']} partitions; negatives matured by flush impressions "
        "at the end of each partition"
    )
    produced = rep.get("produced")
    if produced:
        lines.append(
            f"produced      {produced['messages']:,} messages + {produced['flush_impressions']} "
            f"flush in {produced['seconds']:.1f} s ({produced['messages_per_second']:,} msg/s, "
            f"{produced['bytes'] / 1e6:.1f} MB)"
        )
    outputs = rep.get("outputs")
    if outputs:
        lines.append(
            f"feedback      {outputs['feedback_distinct']:,} labels ({outputs['positives']:,} "
            f"positive, {outputs['negatives']:,} negative), {outputs['duplicates']:,} duplicates"
        )
    oracle = rep.get("oracle")
    if oracle:
        verdict = "EQUAL" if oracle["feedback_equals_oracle"] else "DIFFERENT"
        lines.append(
            f"vs oracle     {verdict}: Kafka feedback vs the batch oracle's {oracle['labels']:,} "
            f"labels: {oracle['missing']:,} missing, {oracle['extra']:,} extra, "
            f"{oracle['different']:,} different"
        )
    dead = rep.get("dead_letters")
    if dead:
        verdict = "as expected" if dead["match"] else "NOT as expected"
        lines.append(f"dead letters  {sum(dead['got'].values()):,} ({verdict})")
        lines.append(f"              {'reason':<16}{'got':>8}{'expected':>10}")
        for reason in sorted(set(dead["got"]) | set(dead["expected"])):
            got, want = dead["got"].get(reason, 0), dead["expected"].get(reason, 0)
            mark = "" if got == want else "  <-"
            lines.append(f"              {reason:<16}{got:>8,}{want:>10,}{mark}")
    cal = rep.get("calibration")
    if cal and "raw" in cal:
        lines.append(f"calibration   served scores: {_ece_line(cal['raw'])}")
        if "true_p" in cal:
            lines.append(f"              true probabilities: {_ece_line(cal['true_p'])}")
        fit = cal["temperature_fit"]
        before = fit["second_half_raw"]
        after = fit["second_half_calibrated"]
        lines.append(
            f"temperature   fit on the first half by event time (n = {fit['fit_n']:,}): "
            f"T = {fit['temperature']:.3f} (served T = {SERVED_TEMPERATURE})"
        )
        lines.append(f"              second half, raw:        {_ece_line(before)}")
        lines.append(f"              second half, calibrated: {_ece_line(after)}")
        lines.append(
            f"              ECE {_pct(before['ece'], after['ece'])} lower, log loss "
            f"{_pct(before['nll'], after['nll'])} lower"
        )
    elif cal:
        lines.append(f"calibration   skipped: {cal.get('skipped')}")
    e2e = rep.get("end_to_end")
    if e2e:
        first = e2e.get("first_output_after_s")
        lines.append(
            f"throughput    all outputs {e2e['seconds']:.1f} s after the first message sent: "
            f"{e2e['messages_per_second']:,} input msg/s end to end"
            + (f"; first output after {first:.1f} s" if first is not None else "")
        )
    metrics = rep.get("worker_metrics")
    if metrics:
        lines.append(
            f"worker        processed {metrics['processed']:,} input messages, "
            f"{metrics['late_clicks']:,} late clicks counted"
        )
    timings = rep.get("timings", {})
    if timings:
        names = [
            ("broker_start_s", "broker"), ("topics_s", "topics"), ("worker_ready_s", "worker"),
            ("generate_s", "generate"), ("produce_s", "produce"), ("drain_s", "drain"),
            ("worker_stop_s", "worker stop"), ("broker_stop_s", "broker stop"),
        ]
        parts = [f"{label} {timings[key]:.1f}" for key, label in names if key in timings]
        lines.append(f"timings (s)   {', '.join(parts)}; total {rep['total_s']:.1f}")
    procs = rep.get("processes", {})
    if procs:
        worker = (
            f"worker pid {procs.get('worker_pid')} exit {procs.get('worker_exit')}"
            f"{' STILL RUNNING' if procs.get('worker_alive') else ''}"
        )
        if procs.get("broker_kept"):
            broker = (
                f"broker pid {procs.get('broker_pid')} LEFT RUNNING at {procs.get('bootstrap')}; "
                f"stop it with: recal kafka stop --data-dir {Path(rep['data_dir']) / 'kafka'}"
            )
        else:
            broker = (
                f"broker pid {procs.get('broker_pid')} "
                f"{'STILL RUNNING' if procs.get('broker_alive') else 'stopped'}"
            )
        lines.append(f"processes     {worker}; {broker}")
    if rep.get("data_dir") and not procs.get("data_dir_removed"):
        lines.append(f"data          {rep['data_dir']} (worker.log, kafka/broker.log)")
    if rep["ok"]:
        result = "OK"
    elif rep["status"] == "interrupted":
        result = "INTERRUPTED (Ctrl-C or SIGTERM)"
    else:
        result = f"FAILED: {rep['error']}"
    lines.append(f"result        {result}")
    return "\n".join(lines) + "\n"
