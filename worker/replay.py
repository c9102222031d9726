"""Runtime B: replay a JSONL file of impressions and clicks through the core, in file order.

The file is read line by line exactly as one Kafka partition would deliver it, with each
line's `ts` as event time; at the end of the file the watermark is +inf, so every pending
impression matures. Outputs are JSONL files in an output directory; they are deterministic
for a given input file and settings (dead letters carry the event-time clock, not the wall
clock, in `received_at` for that reason).

Every join output also goes through the `FeedbackMonitor` (DESIGN §5–§7): the recalibration
policy's calibrator versions go to `calibrators.jsonl`, drift alerts (firing and resolved) to
`alerts.jsonl`, tier changes and the final snapshot of every (user, arm) posterior to
`posteriors.jsonl` (tier changes carry `"type": "tier_change"`), all in emission order. Their
`created_at` is, for the same reason, not the wall clock but the replay's event-time clock
(the largest `ts` seen so far) as ISO 8601 UTC with milliseconds, e.g.
"2026-01-01T00:05:00.000Z".
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import orjson

from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import InvalidInputError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.pipeline import FeedbackMonitor, MonitorOutputs
from worker.core.policy import PolicyConfig, RecalibrationPolicy
from worker.core.records.dead_letter import (
    future_ts_error,
    make_dead_letter,
    orphan_click_error,
    unpack_ref,
)
from worker.core.records.impression import Impression
from worker.core.records.timefmt import iso_utc_ms

OUTPUT_FILES = (
    "feedback.jsonl",
    "dlq.jsonl",
    "calibrators.jsonl",
    "alerts.jsonl",
    "posteriors.jsonl",
)


@dataclass(frozen=True)
class ReplayConfig:
    """What a replay needs; built from `Settings` by the CLI."""

    window_ms: int = 1_800_000
    allowed_lateness_ms: int = 60_000
    max_message_bytes: int = 65_536
    recalibrate_every: int = 1000
    # How far one event may move the join's clock unconfirmed (None: the window) and how
    # many later events confirm or refute a bigger jump (see ClockGuard).
    max_clock_jump_ms: int | None = None
    clock_confirmations: int = 3
    # The policy's other knobs; ``recalibrate_every`` above always wins over the one in here.
    policy: PolicyConfig | None = None

    def policy_config(self) -> PolicyConfig:
        base = self.policy if self.policy is not None else PolicyConfig()
        return replace(base, recalibrate_every=self.recalibrate_every)


@dataclass
class ReplaySummary:
    lines: int = 0
    impressions: int = 0
    clicks: int = 0
    feedback: int = 0
    feedback_positive: int = 0
    feedback_negative: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    calibrators: Counter[str] = field(default_factory=Counter)
    calibrator_reasons: Counter[str] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    tier_changes: int = 0
    posterior_snapshots: int = 0
    join: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        events_per_s = self.lines / self.wall_seconds if self.wall_seconds > 0 else None
        return {
            "lines": self.lines,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "feedback": self.feedback,
            "feedback_positive": self.feedback_positive,
            "feedback_negative": self.feedback_negative,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "dead_letters_total": sum(self.dead_letters.values()),
            "calibrators": dict(sorted(self.calibrators.items())),
            "calibrators_total": sum(self.calibrators.values()),
            "calibrators_by_reason": dict(sorted(self.calibrator_reasons.items())),
            "alerts": dict(sorted(self.alerts.items())),
            "tier_changes": self.tier_changes,
            "posterior_snapshots": self.posterior_snapshots,
            "join": self.join,
            "wall_seconds": round(self.wall_seconds, 3),
            "events_per_second": round(events_per_s, 1) if events_per_s else None,
        }


def _clock_ms(ts_ms: float) -> int:
    # The clock is -inf before the first event; the epoch stands in for it.
    return int(ts_ms) if ts_ms > -math.inf else 0


class Replay:
    """Drives the core over replay lines and writes every output through `write(name, obj)`.

    With a `monitor` (what `run_replay` uses) every join output also goes through the
    `FeedbackMonitor`: the recalibration policy, the drift detectors and their alerts,
    conformal thresholds and the posteriors, written as `"calibrators"`, `"alerts"` and
    `"posteriors"`. Without one (for callers that only want the join) only feedback and dead
    letters are written.
    """

    def __init__(
        self,
        config: ReplayConfig,
        write: Callable[[str, dict[str, Any]], None],
        source_name: str = "replay",
        monitor: FeedbackMonitor | None = None,
    ) -> None:
        self._config = config
        self._write = write
        self._source = source_name
        self._decoder = InputDecoder(max_message_bytes=config.max_message_bytes)
        self._join = AttributionJoin(
            window_ms=config.window_ms,
            allowed_lateness_ms=config.allowed_lateness_ms,
            max_clock_jump_ms=(
                config.window_ms if config.max_clock_jump_ms is None else config.max_clock_jump_ms
            ),
            clock_confirmations=config.clock_confirmations,
        )
        self._max_ts = float("-inf")
        self._created_at_ts = float("nan")
        self._created_at_text = ""
        self._monitor = monitor
        self.summary = ReplaySummary()

    def _created_at(self) -> str:
        # The event-time clock, not the wall clock, so replays stay deterministic. Memoised:
        # several monitor calls per line share one clock value, and formatting is not cheap.
        if self._max_ts != self._created_at_ts:
            self._created_at_ts = self._max_ts
            self._created_at_text = iso_utc_ms(_clock_ms(self._max_ts))
        return self._created_at_text

    def process_line(self, raw: bytes, line_no: int) -> None:
        self.summary.lines += 1
        monitor = self._monitor
        try:
            event = self._decoder.decode_replay_line(raw)
            # An event the join's clock guard holds back reaches the clock and the monitor
            # only if the join releases it (see _emit): one far-future line moves nothing.
            held = event.ts > self._join.horizon
            if event.ts > self._max_ts and not held:
                self._max_ts = event.ts
            # The original bytes travel with the event: an orphan's or a future_ts letter
            # must carry them, not a rebuilt event.
            ref = (line_no, raw)
            if isinstance(event, Impression):
                self.summary.impressions += 1
                step = self._join.add_impression(event, ref=ref)
                if monitor is not None and not held:
                    self._publish(monitor.on_impression(event, self._created_at()))
            else:
                self.summary.clicks += 1
                if monitor is not None and not held:
                    self._publish(monitor.on_click(event, self._created_at()))
                step = self._join.add_click(event, ref=ref)
        except InvalidInputError as exc:
            self._dead_letter(raw, line_no, _key_of(raw), exc.reason, str(exc))
            return
        if step:
            self._emit(step)
        if monitor is not None:
            self._publish(monitor.tick(int(self._max_ts), self._created_at()))

    def finish(self) -> ReplaySummary:
        # No monitor tick after the join's finish: a stall check past the last input is not real.
        self._emit(self._join.finish())
        if self._monitor is not None:
            self._publish(self._monitor.finish(None, self._created_at()))
        self.summary.join = self._join.stats.to_dict()
        return self.summary

    def _emit(self, step: JoinStep) -> None:
        monitor = self._monitor
        for event in step.released:
            if event.ts > self._max_ts:
                self._max_ts = event.ts
            if monitor is not None:
                if isinstance(event, Impression):
                    self._publish(monitor.on_impression(event, self._created_at()))
                else:
                    self._publish(monitor.on_click(event, self._created_at()))
        for fb in step.feedback:
            self.summary.feedback += 1
            if fb.label:
                self.summary.feedback_positive += 1
            else:
                self.summary.feedback_negative += 1
            self._write("feedback", fb.to_dict())
            if monitor is not None:
                # Labels finalised by finish() lie beyond the last input's ts; the clock
                # follows them so a version's created_at is never before its event_ts.
                if fb.label_ts > self._max_ts:
                    self._max_ts = fb.label_ts
                self._publish(monitor.on_feedback(fb, self._created_at()))
        for click, ref in step.orphans:
            line_no, raw = unpack_ref(ref, click.to_dict())
            error = orphan_click_error(click)
            self._dead_letter(raw, line_no, click.user_id, "orphan_click", error)
        for event, ref in step.future:
            line_no, raw = unpack_ref(ref, event.to_dict())
            self._dead_letter(raw, line_no, event.user_id, "future_ts", future_ts_error(event))
        if monitor is not None:
            for click in step.late_clicks:
                self._publish(monitor.on_late_click(click, self._created_at()))

    def _publish(self, out: MonitorOutputs) -> None:
        if not out:
            return
        for msg in out.calibrators:
            self.summary.calibrators[msg["scope"].split(":", 1)[0]] += 1
            self.summary.calibrator_reasons[msg["reason"]] += 1
            self._write("calibrators", msg)
        for alert in out.alerts:
            self.summary.alerts[f"{alert['kind']}:{alert['status']}"] += 1
            self._write("alerts", alert)
        for change in out.tier_changes:
            self.summary.tier_changes += 1
            self._write("posteriors", change)
        for snapshot in out.posteriors:
            self.summary.posterior_snapshots += 1
            self._write("posteriors", snapshot)

    def _dead_letter(
        self, raw: bytes, line_no: int | None, key: str | None, reason: str, error: str
    ) -> None:
        self.summary.dead_letters[reason] += 1
        clock = _clock_ms(self._max_ts)
        letter = make_dead_letter(self._source, 0, line_no, key, reason, error, raw, clock)
        self._write("dlq", letter.to_dict())


_BOM = b"\xef\xbb\xbf"


def _key_of(raw: bytes) -> str | None:
    """Best-effort user_id of a rejected line, for the dead letter's key."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    user = obj.get("user_id") if isinstance(obj, dict) else None
    return user if isinstance(user, str) else None


class _Outputs:
    """One buffered JSONL file per output stream."""

    def __init__(self, out_dir: Path, names: Iterable[str]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[bytes]] = {
            # Closed together in close(); a context manager per file would not fit the loop.
            name: open(out_dir / f"{name}.jsonl", "wb", buffering=1 << 20)  # noqa: SIM115
            for name in names
        }

    def write(self, name: str, obj: dict[str, Any]) -> None:
        self._files[name].write(orjson.dumps(obj) + b"\n")

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def run_replay(
    events_path: Path,
    out_dir: Path,
    config: ReplayConfig,
    progress: IO[str] | None = None,
) -> ReplaySummary:
    """Replay `events_path` into `out_dir`; returns (and writes) the summary."""
    outputs = _Outputs(out_dir, (name.removesuffix(".jsonl") for name in OUTPUT_FILES))
    replay = Replay(
        config,
        outputs.write,
        source_name=f"replay:{events_path.name}",
        monitor=FeedbackMonitor(policy=RecalibrationPolicy(config.policy_config())),
    )
    total_bytes = events_path.stat().st_size
    started = time.perf_counter()
    last_report = started
    read_bytes = 0
    try:
        with open(events_path, "rb", buffering=1 << 20) as handle:
            # A UTF-8 byte order mark (editors on Windows write one) is not part of line 1.
            if handle.read(3) == _BOM:
                read_bytes = len(_BOM)
            else:
                handle.seek(0)
            for line_no, line in enumerate(handle):
                read_bytes += len(line)
                # Whitespace-only lines are not skipped: the decoder dead-letters them
                # ("empty"), so every line of the file is accounted for.
                replay.process_line(line.rstrip(b"\r\n"), line_no)
                if progress is not None and (line_no & 0x3FFF) == 0:
                    now = time.perf_counter()
                    if now - last_report >= 0.5:
                        last_report = now
                        _report_progress(
                            progress, read_bytes, total_bytes, line_no + 1, now - started
                        )
        summary = replay.finish()
    finally:
        outputs.close()
    summary.wall_seconds = time.perf_counter() - started
    if progress is not None:
        _report_progress(progress, total_bytes, total_bytes, summary.lines, summary.wall_seconds)
        progress.write("\n")
    (out_dir / "summary.json").write_bytes(
        orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"
    )
    return summary


def _report_progress(stream: IO[str], done: int, total: int, lines: int, seconds: float) -> None:
    share = done / total if total else 1.0
    rate = lines / seconds if seconds > 0 else 0.0
    stream.write(f"\rreplay: {share:6.1%}  {lines:,} lines  {rate:,.0f} lines/s")
    stream.flush()


def progress_stream() -> IO[str] | None:
    """Progress goes to stderr only when it is a terminal."""
    return sys.stderr if sys.stderr.isatty() else None
