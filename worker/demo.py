"""``recal demo``: the whole loop on the project's own Kafka broker, live, with a report (§11).

What it does, in order:

1. starts a local single-node Kafka broker (``worker.localkafka``) in a fresh data directory
   (a temporary one, or ``--data-dir``) and creates every topic of the worker
   (``worker.runtime.topics.ensure_topics``, the one owner of the layout);
2. starts ``--workers`` (default 2) ``recal worker`` processes in one consumer group;
3. generates the simulator's ``realistic`` scenario (6 days of a news-recommendation click
   log: daily traffic and CTR cycles, a served model overconfident every morning, position
   effects, a slow base-rate drift and one retrained model, the drift, at 77.5 % of the
   impressions) from the UTC midnight a week ago (the same stream on every run of a seed),
   with ~1 % duplicates and orphan clicks, 0.3 % malformed lines and 5 s of arrival
   reordering, and sends it keyed by user;
4. ends the stream with a few *flush* impressions per partition, stamped past every deadline:
   Kafka has no end of stream, and with them every negative matures as soon as the workers
   reach them, so the result does not depend on timing. The workers' idle timeout is longer
   than the demo, so the wall clock never moves a watermark (the stream lies in the past);
5. shows a live view read from the workers' output topics and ``/metrics``: events/s and lag,
   feedback and dead letters, ECE of the raw scores and of recal's calibrators by segment
   (prequential: each label scored with the newest version published before its
   impression), calibrator versions, alerts firing, uncertainty tiers;
6. once every label and dead letter the batch oracle expects has arrived, stops the workers
   (SIGTERM), writes the HTML report (``recal report``) from the output topics, stops the
   broker (in every case: error, Ctrl-C, SIGTERM) and prints a summary with its checks.

Exit codes: 0 when the loop completed and every check passed; 1 when it did not (the message
says which, with the workers' log tails); 2 for invalid flags; 130 when interrupted.
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
from worker.runtime.topics import TopicNames, committed_consumer

log = logging.getLogger(__name__)

#: Join settings of the demo's workers (seconds): the realistic scenario's attribution window
#: (30 min, clicks ~1 min after their impression) and the default lateness, which exceeds the
#: stream's arrival reordering (5 s), so nothing on time is late.
WINDOW_S = 1800
LATENESS_S = 60
#: Longer than any demo run: the stream's event times lie in the past (a week ago to a day
#: ago), and an idle partition's watermark follows the wall clock after this long.
IDLE_TIMEOUT_S = 3600
#: Posterior snapshots are drained this often (the worker's default is 10 s): the demo's
#: posterior check reads them right after the last feedback.
POSTERIOR_INTERVAL_S = 1
FLUSH_MARGIN_MS = 5_000
DEFAULT_EVENTS = 60_000
DEFAULT_WORKERS = 2
#: Corruption of the demo's stream (shares of the lines), so the dead letters have work.
DUPLICATE_SHARE = 0.01
ORPHAN_CLICK_SHARE = 0.01
MALFORMED_SHARE = 0.003
REORDER_WITHIN_MS = 5_000
_READY_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0
_SETTLE_S = 1.5
_LIVE_PERIOD_S = 0.5
_PLAIN_PERIOD_S = 5.0
_LOG_TAIL_LINES = 30
_MIN_CALIBRATION_N = 50
#: How often the live view recomputes the prequential ECE (it scans every label so far).
_SCORE_PERIOD_S = 2.0

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
        help="the whole loop on a local broker: stream, workers, live view, report",
        description=(
            "Start a local Kafka broker and a group of `recal worker` processes, send the "
            "simulator's realistic scenario (with a drift), show the loop live from the output "
            "topics, check the feedback against the batch oracle and the calibrators against "
            "the raw scores, write the HTML report. Stops everything it started."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="impressions to generate")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help="worker processes in the consumer group")
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
    p.add_argument("--report", type=Path, default=Path("recal-demo-report.html"),
                   help="where to write the HTML report (recal report)")
    p.add_argument("--json-report", type=Path, default=None,
                   help="also write the report (with the broker and worker PIDs) as JSON here")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings, validated."""

    events: int = DEFAULT_EVENTS
    workers: int = DEFAULT_WORKERS
    partitions: int = 2
    seed: int = 1
    keep_broker: bool = False
    data_dir: Path | None = None
    timeout_s: float = 60.0
    topic_prefix: str = "recal."
    json_report: Path | None = None
    report: Path = Path("recal-demo-report.html")
    app_id: str = "recal-demo"

    def __post_init__(self) -> None:
        if not 1 <= self.events <= 10_000_000:
            raise ConfigError(f"--events must be an integer in [1, 10000000]; got {self.events}")
        if not 1 <= self.workers <= 8:
            raise ConfigError(f"--workers must be an integer in [1, 8]; got {self.workers}")
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
        workers=args.workers,
        partitions=args.partitions,
        seed=args.seed,
        keep_broker=args.keep_broker,
        data_dir=args.data_dir,
        timeout_s=args.timeout,
        topic_prefix=args.topic_prefix,
        json_report=args.json_report,
        report=args.report,
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


def demo_scenario(events: int, seed: int, now_ms: int) -> Any:
    """The demo's stream: the ``realistic`` preset (6 days of event time), starting at the UTC
    midnight a week before ``now_ms``, with the demo's corruption shares.

    The start is a midnight, not "now minus 6 days": the scenario's daily patterns follow the
    UTC hour, so every run with the same seed generates the same stream (and the same
    calibration figures), whenever it runs. Its event times end a day before ``now_ms`` or
    more, inside every bound of the worker (the stream lies in the past; nothing is future).
    """
    from worker.sim.scenario import realistic

    midnight = now_ms - now_ms % 86_400_000
    return realistic(
        events,
        seed=seed,
        start_ts_ms=midnight - 7 * 86_400_000,
        attribution_window_ms=WINDOW_S * 1000,
        duplicate_share=DUPLICATE_SHARE,
        reorder_within_ms=REORDER_WITHIN_MS,
        orphan_click_share=ORPHAN_CLICK_SHARE,
        malformed_share=MALFORMED_SHARE,
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
    """Reads every output topic of the workers from the beginning, ``read_committed`` (what a
    downstream consumer sees), without a consumer group."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        #: (user_id, impression_id) -> the first copy's feedback message.
        self.feedback: dict[Key, dict[str, Any]] = {}
        self.feedback_messages = 0
        self.conflicting = 0
        self.labels: Counter[int] = Counter()
        self.dlq: Counter[str] = Counter()
        #: Calibrator versions in topic order (tombstones are counted, not kept).
        self.versions: list[dict[str, Any]] = []
        self.tombstones = 0
        #: "model_id|scope" -> the last version number read, and keys whose versions did not
        #: strictly increase in topic order.
        self.last_version: dict[str, int] = {}
        self.version_regressions: list[str] = []
        #: (kind, model_id, scope) -> the latest alert message; alert messages by kind/status.
        self.alert_state: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.alert_counts: Counter[tuple[str, str]] = Counter()
        #: (user_id, arm) -> the latest posterior snapshot (None: evicted); user -> tier.
        self.posteriors: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.tiers: dict[str, str] = {}
        self.first_output_at: float | None = None
        self.last_output_at: float | None = None
        self._consumer: Any = None

    @property
    def duplicates(self) -> int:
        return self.feedback_messages - len(self.feedback)

    @property
    def dlq_total(self) -> int:
        return sum(self.dlq.values())

    def firing(self) -> list[tuple[str, str, str]]:
        return sorted(key for key, msg in self.alert_state.items()
                      if msg.get("status") == "firing")

    async def start(self) -> None:
        self._consumer = committed_consumer(
            self.bootstrap, "recal-demo-reader", *self.topics.outputs()
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self) -> None:
        t = self.topics
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
            if not batches:
                continue
            now = time.monotonic()
            if self.first_output_at is None:
                self.first_output_at = now
            self.last_output_at = now
            for tp, records in batches.items():
                if tp.topic == t.feedback:
                    for record in records:
                        self._feedback(orjson.loads(record.value))
                elif tp.topic == t.dlq:
                    for record in records:
                        self.dlq[str(orjson.loads(record.value).get("reason"))] += 1
                elif tp.topic == t.calibrators:
                    for record in records:
                        self._version(record.key, record.value)
                elif tp.topic == t.alerts:
                    for record in records:
                        self._alert(orjson.loads(record.value))
                else:
                    for record in records:
                        self._posterior(record.key, record.value)

    def _feedback(self, fb: dict[str, Any]) -> None:
        self.feedback_messages += 1
        key = (fb["user_id"], fb["impression_id"])
        seen = self.feedback.get(key)
        if seen is not None:
            if seen["label"] != fb["label"]:
                self.conflicting += 1
            return
        self.labels[int(fb["label"])] += 1
        self.feedback[key] = fb

    def _version(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            self.tombstones += 1
            return
        msg = orjson.loads(value)
        self.versions.append(msg)
        name = f"{msg['model_id']}|{msg['scope']}"
        last = self.last_version.get(name)
        if last is not None and msg["version"] <= last:
            self.version_regressions.append(f"{name}: {last} then {msg['version']}")
        self.last_version[name] = msg["version"]

    def _alert(self, msg: dict[str, Any]) -> None:
        self.alert_state[(msg["kind"], msg["model_id"], msg["scope"])] = msg
        self.alert_counts[(msg["kind"], msg["status"])] += 1

    def _posterior(self, key: bytes | None, value: bytes | None) -> None:
        user, _, arm = (key or b"").decode("utf-8", "replace").partition("|")
        obj = None if value is None else orjson.loads(value)
        if arm == "":  # a tier change, keyed by the user alone
            if obj is not None and obj.get("type") == "tier_change":
                self.tiers[obj["user_id"]] = obj["to_tier"]
            return
        if user != "*":  # not the partition's population posterior of the arm
            self.posteriors[(user, arm)] = obj

    def posterior_mismatches(self) -> list[tuple[tuple[str, str], int | None, int]]:
        """(user, arm) pairs whose latest snapshot's ``n`` differs from their feedback count."""
        want = Counter((fb["user_id"], fb["arm"]) for fb in self.feedback.values()
                       if fb.get("arm") is not None)
        bad = []
        for pair in set(want) | set(self.posteriors):
            obj = self.posteriors.get(pair)
            got = None if obj is None else int(obj["n"])
            if got != want.get(pair, 0):
                bad.append((pair, got, want.get(pair, 0)))
        return sorted(bad, key=lambda b: b[0])


# --- prequential scoring ----------------------------------------------------------------------


def scored_summary(
    feedback: Sequence[dict[str, Any]], versions: list[dict[str, Any]]
) -> dict[str, Any]:
    """ECE (with its noise floor) and log loss of the raw scores and of recal's prequential
    probabilities (``worker.report.prequential``: each label scored by the newest version
    published before its impression, along serving's fallback chain), overall and per segment.

    >>> fb = [{"ts": t, "label": t % 3 == 0, "score": 0.4, "segment": "web", "user_id": "u",
    ...        "model_id": "m"} for t in range(100)]
    >>> out = scored_summary(fb, [])
    >>> out["overall"]["raw"]["ece"] == out["overall"]["recal"]["ece"], sorted(out["segments"])
    (True, ['web'])
    """
    from worker.core.metrics import calibration_metrics
    from worker.report.load import feedback_columns
    from worker.report.prequential import prequential_scores

    n = len(feedback)
    if n < _MIN_CALIBRATION_N:
        return {"n": n, "skipped": f"fewer than {_MIN_CALIBRATION_N} labels"}
    cols = feedback_columns(list(feedback))
    recal = prequential_scores(cols, versions).calibrated

    def brief(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        r = calibration_metrics(p, y)
        lo, hi = r.ece_ci
        return {"n": int(r.n), "positives": int(r.positives), "ece": r.ece,
                "ece_ci": [lo, hi], "ece_floor": r.ece_floor, "nll": r.nll, "brier": r.brier}

    def pair(mask: np.ndarray | slice) -> dict[str, Any]:
        y = cols.label[mask]
        return {"raw": brief(cols.score[mask], y), "recal": brief(recal[mask], y)}

    out: dict[str, Any] = {"n": n, "overall": pair(slice(None)), "segments": {}}
    for code, seg in sorted(enumerate(cols.segment_names), key=lambda item: item[1]):
        mask = cols.segment == code
        if int(mask.sum()) >= _MIN_CALIBRATION_N:
            out["segments"][seg] = pair(mask)
    return out


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
    """A block of status lines redrawn twice a second on a terminal; the block every 5 s
    otherwise (when it changed). Progress notes (``say``) print as their own lines."""

    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.started = started
        self.total = 0
        self.produced = 0
        self.acked = 0
        self.processed: int | None = None
        self.rate = 0.0
        self.reader: OutputReader | None = None
        self.expected: Expected | None = None
        self.calibration: dict[str, Any] | None = None
        self._rate_at: tuple[float, int] | None = None
        self._scored_at = 0.0
        self._shown = 0  # lines of the block on screen
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

    def on_processed(self, processed: int) -> None:
        now = time.monotonic()
        if self._rate_at is not None and now - self._rate_at[0] >= 1.0:
            self.rate = (processed - self._rate_at[1]) / (now - self._rate_at[0])
            self._rate_at = (now, processed)
        elif self._rate_at is None:
            self._rate_at = (now, processed)
        self.processed = processed

    def rescore(self, force: bool = False) -> None:
        """Recompute the prequential ECE from everything read so far (every 2 s)."""
        reader = self.reader
        now = time.monotonic()
        if reader is None or not reader.feedback or (
                not force and now - self._scored_at < _SCORE_PERIOD_S):
            return
        self._scored_at = now
        self.calibration = scored_summary(list(reader.feedback.values()), reader.versions)

    def lines(self) -> list[str]:
        head = f"[{self.elapsed():6.1f}s] "
        pad = " " * len(head)
        parts = [f"events produced {self.produced:,}/{self.total:,}"]
        if self.processed is not None:
            lag = max(0, self.produced - self.processed)
            parts.append(f"processed {self.processed:,} ({self.rate:,.0f}/s)")
            parts.append(f"lag {lag:,}")
        rows = [head + " | ".join(parts)]
        reader = self.reader
        if reader is None:
            return rows
        want = f"/{len(self.expected.labels):,}" if self.expected is not None else ""
        reasons = " ".join(f"{_SHORT_REASON.get(r, r)} {n}" for r, n in sorted(reader.dlq.items()))
        rows.append(
            pad + f"feedback {len(reader.feedback):,}{want} (+{reader.labels[1]:,} "
            f"-{reader.labels[0]:,}) | dlq {reader.dlq_total:,}"
            + (f" ({reasons})" if reasons else "")
        )
        cal = self.calibration
        if cal is not None and "overall" in cal:
            segs = " ".join(
                f"{seg} {v['raw']['ece']:.4f}->{v['recal']['ece']:.4f}"
                for seg, v in cal["segments"].items()
            )
            o = cal["overall"]
            rows.append(
                pad + f"ECE raw -> recal: all {o['raw']['ece']:.4f}->{o['recal']['ece']:.4f} "
                f"(floor {o['recal']['ece_floor']:.4f}, n {cal['n']:,})"
                + (f" | {segs}" if segs else "")
            )
        scopes = Counter(
            "global" if v["scope"] == "global" else v["scope"].split(":", 1)[0]
            for v in reader.versions
        )
        newest = next((v for v in reversed(reader.versions) if v["scope"] == "global"), None)
        served = (f" | global v{newest['version']} {newest['method']}"
                  if newest is not None else "")
        rows.append(
            pad + f"calibrators {len(reader.versions):,} versions ("
            + ", ".join(f"{k} {n:,}" for k, n in sorted(scopes.items())) + ")" + served
        )
        firing = reader.firing()
        raised = sum(n for (_kind, status), n in reader.alert_counts.items()
                     if status == "firing")
        rows.append(
            pad + "alerts firing: "
            + (", ".join(f"{k} ({s})" for k, _m, s in firing[:4]) if firing else "none")
            + (f" +{len(firing) - 4}" if len(firing) > 4 else "")
            + f" | raised {raised:,}"
        )
        tiers = Counter(reader.tiers.values())
        rows.append(
            pad + "tiers: " + (" ".join(f"{t} {n:,}" for t, n in sorted(tiers.items()))
                               if tiers else "none yet")
            + f" | posteriors {len(reader.posteriors):,} (user, arm) pairs"
        )
        return rows

    def render(self) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns
            self._clear()
            rows = [row[: max(20, width - 1)] for row in self.lines()]
            self.out.write("\n".join(rows) + "\n")
            self._shown = len(rows)
        else:
            now = time.monotonic()
            if now - self._last_plain < _PLAIN_PERIOD_S:
                return
            self._last_plain = now
            self._print_plain()
        self.out.flush()

    def _print_plain(self) -> None:
        # The elapsed-time prefix always differs; repeat the block only when it moved.
        rows = self.lines()
        body = "\n".join([rows[0].split("] ", 1)[-1], *rows[1:]])
        if body != self._last_body:
            self._last_body = body
            self.out.write("\n".join(rows) + "\n")

    async def run(self, ports: Sequence[int]) -> None:
        while True:
            scraped = await asyncio.gather(
                *(asyncio.to_thread(scrape_metrics, port) for port in ports))
            if all(m is not None for m in scraped):
                self.on_processed(sum(m["processed"] for m in scraped if m is not None))
            self.rescore()
            self.render()
            await asyncio.sleep(_LIVE_PERIOD_S)

    def close(self) -> None:
        if self.tty:
            self.rescore(force=True)
            self.render()
            self._shown = 0
        else:
            self.rescore(force=True)
            self._print_plain()
            self.out.flush()

    def _clear(self) -> None:
        if self.tty and self._shown:
            # Up to the block's first line, then clear to the end of the screen.
            self.out.write(f"\x1b[{self._shown}F\x1b[J")
            self._shown = 0


# --- the demo ---------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
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
        self.checks: dict[str, bool] = {}
        self.started = time.monotonic()
        self.live = LiveView(self.out, self.started)
        self.kafka: Any = None
        self.broker_pid: int | None = None
        self.bootstrap: str | None = None
        self.workers: list[_Worker] = []
        self.workers_started = self.started
        self.reader: OutputReader | None = None
        self.timings: dict[str, float] = {}
        self.owns_dir = self.opts.data_dir is None
        self.dir = self.opts.data_dir  # set in execute when temporary
        self.names = TopicNames.from_prefix(self.opts.topic_prefix)
        self.report_path: Path | None = None
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
            f"recal demo: {opts.events:,} impressions (realistic scenario, seed {opts.seed}), "
            f"{opts.workers} workers, {opts.partitions} partitions; data in {self.dir}"
        )
        self._start_broker()
        self._create_topics()
        self._start_workers()
        self._wait_workers_ready()
        phase = time.monotonic()
        events, expected = self._generate(int(time.time() * 1000))
        self.timings["generate_s"] = time.monotonic() - phase
        asyncio.run(self._stream(events, expected))
        self._final_metrics()
        self._stop_workers()
        self._evaluate(expected)
        self._write_report()

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
        from worker.runtime.topics import ensure_topics
        from worker.settings import Settings

        assert self.bootstrap is not None
        since = time.monotonic()
        settings = Settings(bootstrap_servers=self.bootstrap, topic_prefix=self.opts.topic_prefix,
                            partitions=self.opts.partitions)
        plan = asyncio.run(ensure_topics(settings, self.names))
        took = self._phase("topics_s", since)
        self.live.say(
            f"{len(plan.create)} topics ({self.opts.topic_prefix}*) created with "
            f"{plan.partitions} partitions in {took:.1f} s"
        )

    def _start_workers(self) -> None:
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
            "--posterior-interval-s", str(POSTERIOR_INTERVAL_S),
        ]
        # The demo is self-contained: RECAL_* settings of the caller's shell (a production
        # bootstrap, TLS, ...) must not leak into workers that talk to the local broker.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECAL_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.workers_started = time.monotonic()
        for i in range(opts.workers):
            log_path = self.dir / f"worker-{i}.log"
            with log_path.open("wb") as log_fh:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=env,
                    # Their own session: a Ctrl-C reaches the demo only, which then stops
                    # the workers first (they commit through the broker) and the broker last.
                    start_new_session=True,
                )
            self.workers.append(_Worker(i, proc, log_path))
            self.live.say(f"worker {i} starting (pid {proc.pid}); log {log_path}")
        self.live.say(
            f"workers: W {WINDOW_S} s, lateness {LATENESS_S} s, idle timeout {IDLE_TIMEOUT_S} s, "
            f"one consumer group ({opts.app_id})"
        )

    def _generate(self, now_ms: int) -> tuple[list[Any], Expected]:
        from worker.sim.streamrec import generate

        scenario = demo_scenario(self.opts.events, self.opts.seed, now_ms)
        events = list(generate(scenario))
        expected = expectations(events, WINDOW_S * 1000)
        s = expected.stream
        self.result["stream"] = {**s, "partitions": self.opts.partitions, "seed": self.opts.seed,
                                 "scenario": "realistic", "drift_at_event": scenario.drift_at_event}
        self.live.say(
            f"generated {len(events):,} lines over 6 days of event time: {s['impressions']:,} "
            f"impressions, {s['clicks']:,} clicks ({s['late_clicks']:,} late), "
            f"{s['orphan_clicks']:,} orphan clicks, "
            f"{s['duplicate_impressions'] + s['duplicate_clicks']:,} duplicates, "
            f"{s['malformed']:,} malformed; the served model is retrained at impression "
            f"{scenario.drift_at_event:,}; oracle: {len(expected.labels):,} labels, "
            f"{sum(expected.labels.values()):,} positive"
        )
        return events, expected

    def _wait_workers_ready(self) -> None:
        deadline = self.workers_started + _READY_TIMEOUT_S
        pattern = re.compile(r"web on http://[\d.]+:(\d+)")
        for worker in self.workers:
            while True:
                code = worker.proc.poll()
                if code is not None:
                    raise DemoError(f"worker {worker.index} exited with code {code} during "
                                    "start-up")
                if worker.web_port is None:
                    with contextlib.suppress(OSError):
                        match = pattern.search(worker.log_path.read_text(errors="replace"))
                        if match:
                            worker.web_port = int(match.group(1))
                if worker.web_port is not None and http_status(worker.web_port, "/readyz") == 200:
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"worker {worker.index} was not ready after "
                                    f"{_READY_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
        took = self._phase("workers_ready_s", self.workers_started)
        ports = ", ".join(f"http://127.0.0.1:{w.web_port}/metrics" for w in self.workers)
        self.live.say(f"workers ready in {took:.1f} s (metrics on {ports})")

    def _ports(self) -> list[int]:
        return [w.web_port for w in self.workers if w.web_port is not None]

    async def _stream(self, events: list[Any], expected: Expected) -> None:
        from worker.sim.kafka_sink import FLUSH_PER_PARTITION, send_flush, send_to_kafka

        assert self.bootstrap is not None and self.workers
        opts = self.opts
        reader = OutputReader(self.bootstrap, self.names)
        await reader.start()
        live = self.live
        live.reader, live.expected = reader, expected
        live.total = len(events) + opts.partitions * FLUSH_PER_PARTITION
        tasks = [
            asyncio.ensure_future(reader.run()),
            asyncio.ensure_future(live.run(self._ports())),
        ]
        try:
            live.say(f"sending the stream to {self.names.impressions} and "
                     f"{self.names.clicks}, keyed by user_id")
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
                "waiting for the workers"
            )
            # A stall bound, not a total one: a long stream may take minutes on a slow
            # machine, but workers that move nothing for --timeout seconds are stuck.
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
                for worker in self.workers:
                    code = worker.proc.poll()
                    if code is not None:
                        raise DemoError(
                            f"worker {worker.index} exited with code {code} while processing")
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
                "input_messages": sent.messages + n_flush,
                "seconds": round(complete - first_send, 3),
                "messages_per_second": round(
                    (sent.messages + n_flush) / max(complete - first_send, 1e-9)
                ),
                "first_output_after_s": (
                    round(reader.first_output_at - first_send, 3)
                    if reader.first_output_at is not None else None
                ),
            }
            # Anything extra (a duplicate label) would show up now, and the last posterior
            # drains (every POSTERIOR_INTERVAL_S) arrive.
            await asyncio.sleep(max(_SETTLE_S, 2.0 * POSTERIOR_INTERVAL_S))
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
            "calibrator_versions": len(reader.versions),
            "calibrator_tombstones": reader.tombstones,
            "alerts": {f"{k}:{st}": n for (k, st), n in sorted(reader.alert_counts.items())},
            "alerts_firing_at_end": [list(key) for key in reader.firing()],
            "tiers": dict(sorted(Counter(reader.tiers.values()).items())),
            "posterior_pairs": len(reader.posteriors),
        }

    def _final_metrics(self) -> None:
        scraped = [scrape_metrics(port, timeout_s=3.0) for port in self._ports()]
        if scraped and all(m is not None for m in scraped):
            self.result["worker_metrics"] = {
                "processed": sum(m["processed"] for m in scraped if m is not None),
                "processed_by_worker": [m["processed"] for m in scraped if m is not None],
                "late_clicks": sum(m["late_clicks"] for m in scraped if m is not None),
            }

    def _stop_workers(self) -> None:
        since = time.monotonic()
        running = [w for w in self.workers if w.exit_code is None]
        for worker in running:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in running:
            proc = worker.proc
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) ignored SIGTERM for %.0f s; killing it",
                            worker.index, proc.pid, _STOP_TIMEOUT_S)
                proc.kill()
                proc.wait(10)
            worker.exit_code = proc.returncode
        if running:
            self.timings["workers_stop_s"] = time.monotonic() - since
        self.processes["worker_exits"] = [w.exit_code for w in self.workers]

    def _stop_broker(self) -> None:
        if self.kafka is None:
            return
        if self.opts.keep_broker and self.kafka.status().get("running"):
            self.processes["broker_kept"] = True
            return
        since = time.monotonic()
        self.kafka.stop(timeout_s=_STOP_TIMEOUT_S)
        self.timings["broker_stop_s"] = time.monotonic() - since

    def _write_report(self) -> None:
        """The HTML report, from the output topics (as ``recal report --bootstrap-servers``)."""
        from worker.report import build_report, dump_topics

        assert self.dir is not None and self.bootstrap is not None
        since = time.monotonic()
        outputs = self.dir / "outputs"
        dump_topics(self.bootstrap, self.opts.topic_prefix, outputs)
        self.report_path = build_report(outputs, self.opts.report.resolve(), title="recal demo")
        took = self._phase("report_s", since)
        self.live.say(f"report written to {self.report_path} in {took:.1f} s")

    def fail(self, message: str, *, interrupted: bool = False) -> None:
        self.error = message
        self.interrupted = interrupted
        self.live._clear()

    def cleanup(self) -> None:
        """Stop the workers, then the broker; record what is left. Never raises."""
        from worker.localkafka.broker import pid_alive

        for step in (self._stop_workers, self._stop_broker):
            try:
                step()
            except Exception as exc:  # clean-up goes on; the report says what failed
                log.error("clean-up step %s failed: %r", step.__name__, exc)
                if self.error is None:
                    self.error = f"clean-up failed: {exc!r}"
        worker_pids = [w.proc.pid for w in self.workers]
        self.processes.update(
            {
                "worker_pids": worker_pids,
                "workers_alive": [pid for pid in worker_pids if pid_alive(pid)],
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
        got = {key: fb["label"] for key, fb in reader.feedback.items()}
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
        calibration = scored_summary(list(reader.feedback.values()), reader.versions)
        self.result["calibration"] = calibration
        mismatched = reader.posterior_mismatches()
        self.result["posteriors"] = {
            "pairs": len(reader.posteriors),
            "mismatched": len(mismatched),
            "examples": [[list(pair), got_n, want_n] for pair, got_n, want_n in mismatched[:5]],
        }
        versions_by_scope = Counter(
            "global" if v["scope"] == "global" else v["scope"].split(":", 1)[0]
            for v in reader.versions
        )
        self.result["calibrators"] = {
            "versions": len(reader.versions),
            "by_scope": dict(sorted(versions_by_scope.items())),
            "by_method": dict(sorted(Counter(v["method"] for v in reader.versions).items())),
            "regressions": reader.version_regressions[:5],
        }
        overall = calibration.get("overall")
        self.checks = {
            "feedback equals the batch oracle (exactly once)": equal,
            "dead letters as expected": dlq_match,
            "calibrator versions published, strictly increasing per key": (
                versions_by_scope.get("global", 0) > 0 and not reader.version_regressions),
            "recal's ECE below the raw scores'": bool(
                overall and overall["recal"]["ece"] < overall["raw"]["ece"]),
            "recal's log loss not above the raw scores'": bool(
                overall and overall["recal"]["nll"] <= overall["raw"]["nll"]),
            "posterior n per (user, arm) equals its feedback count": not mismatched,
            "every worker exited 0 after SIGTERM": all(w.exit_code == 0 for w in self.workers),
        }
        failed = [name for name, ok in self.checks.items() if not ok]
        self.result["ok"] = not failed
        if failed:
            self.error = "check failed: " + "; ".join(failed)

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
            "checks": self.checks,
            **{k: v for k, v in self.result.items() if k != "ok"},
            "settings": {
                "events": self.opts.events,
                "workers": self.opts.workers,
                "partitions": self.opts.partitions,
                "seed": self.opts.seed,
                "window_s": WINDOW_S,
                "allowed_lateness_s": LATENESS_S,
                "idle_timeout_s": IDLE_TIMEOUT_S,
                "topic_prefix": self.opts.topic_prefix,
                "app_id": self.opts.app_id,
            },
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "total_s": round(time.monotonic() - self.started, 3),
            "processes": self.processes,
            "data_dir": str(self.dir) if self.dir is not None else None,
            "html_report": str(self.report_path) if self.report_path is not None else None,
            "worker_logs": [str(w.log_path) for w in self.workers],
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
        if self.error is not None and not self.interrupted:
            for worker in self.workers:
                self.out.write(
                    f"\nlast {_LOG_TAIL_LINES} lines of worker {worker.index}'s log "
                    f"({worker.log_path}):\n{worker.tail()}\n"
                )
        self.out.flush()
        if self.error is not None:
            print(f"recal demo: {self.error}", file=sys.stderr)


# --- the summary ------------------------------------------------------------------------------


def _ece_line(r: dict[str, Any]) -> str:
    return (f"ECE {r['ece']:.4f} (floor {r['ece_floor']:.4f}), log loss {r['nll']:.5f}")


def format_report(rep: dict[str, Any]) -> str:
    """The human summary (whatever parts the run got to)."""
    lines = ["", "recal demo: summary", "==================="]
    stream = rep.get("stream")
    settings = rep["settings"]
    if stream:
        lines.append(
            f"stream        {stream['lines']:,} lines, realistic scenario (seed {stream['seed']}): "
            f"{stream['impressions']:,} impressions over 6 days, served model retrained at "
            f"impression {stream['drift_at_event']:,}"
        )
        lines.append(
            f"              {stream['clicks']:,} clicks ({stream['late_clicks']:,} beyond the "
            f"window), {stream['orphan_clicks']:,} orphan clicks, "
            f"{stream['duplicate_impressions'] + stream['duplicate_clicks']:,} duplicates, "
            f"{stream['malformed']:,} malformed"
        )
    lines.append(
        f"workers       {settings['workers']} in one consumer group, {settings['partitions']} "
        f"partitions; W = {settings['window_s']} s, lateness {settings['allowed_lateness_s']} s"
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
    if cal and "overall" in cal:
        lines.append("calibration   prequential: each label scored with the newest version "
                     "published before its impression")
        rows = [("all", cal["overall"]), *cal["segments"].items()]
        for name, pair in rows:
            lines.append(f"  {name:<11} n {pair['raw']['n']:>7,}  raw {_ece_line(pair['raw'])}")
            lines.append(f"  {'':<11} {'':>9}  recal {_ece_line(pair['recal'])}")
    elif cal:
        lines.append(f"calibration   skipped: {cal.get('skipped')}")
    calibrators = rep.get("calibrators")
    if calibrators:
        scopes = ", ".join(f"{k} {n:,}" for k, n in calibrators["by_scope"].items())
        methods = ", ".join(f"{k} {n:,}" for k, n in calibrators["by_method"].items())
        lines.append(f"calibrators   {calibrators['versions']:,} versions ({scopes}; {methods})")
    if outputs:
        alerts = ", ".join(f"{k} {n}" for k, n in outputs["alerts"].items()) or "none"
        lines.append(f"alerts        {alerts}")
        tiers = ", ".join(f"{k} {n:,}" for k, n in outputs["tiers"].items()) or "none"
        lines.append(f"tiers         {tiers} (users, latest tier change)")
    post = rep.get("posteriors")
    if post:
        lines.append(f"posteriors    {post['pairs']:,} (user, arm) pairs, {post['mismatched']:,} "
                     "whose n differs from their feedback count")
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
        per = ", ".join(f"{n:,}" for n in metrics["processed_by_worker"])
        lines.append(
            f"workers       processed {metrics['processed']:,} input messages ({per}), "
            f"{metrics['late_clicks']:,} late clicks counted"
        )
    timings = rep.get("timings", {})
    if timings:
        names = [
            ("broker_start_s", "broker"), ("topics_s", "topics"), ("workers_ready_s", "workers"),
            ("generate_s", "generate"), ("produce_s", "produce"), ("drain_s", "drain"),
            ("workers_stop_s", "workers stop"), ("report_s", "report"),
            ("broker_stop_s", "broker stop"),
        ]
        parts = [f"{label} {timings[key]:.1f}" for key, label in names if key in timings]
        lines.append(f"timings (s)   {', '.join(parts)}; total {rep['total_s']:.1f}")
    procs = rep.get("processes", {})
    if procs:
        alive = procs.get("workers_alive") or []
        worker = (
            f"worker pids {procs.get('worker_pids')} exits {procs.get('worker_exits')}"
            f"{' STILL RUNNING: ' + str(alive) if alive else ''}"
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
        lines.append(f"data          {rep['data_dir']} (worker-*.log, kafka/broker.log)")
    checks = rep.get("checks") or {}
    for name, ok in checks.items():
        lines.append(f"check         {'PASS' if ok else 'FAIL'}  {name}")
    if rep.get("html_report"):
        lines.append(f"report        {rep['html_report']}")
    if rep["ok"]:
        result = "OK"
    elif rep["status"] == "interrupted":
        result = "INTERRUPTED (Ctrl-C or SIGTERM)"
    else:
        result = f"FAILED: {rep['error']}"
    lines.append(f"result        {result}")
    return "\n".join(lines) + "\n"
