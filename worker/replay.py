"""Runtime B: replay a JSONL file of impressions and clicks through the core, in file order.

The file is read line by line exactly as one Kafka partition would deliver it, with each
line's `ts` as event time; at the end of the file the watermark is +inf, so every pending
impression matures. Outputs are JSONL files in an output directory; they are deterministic
for a given input file and settings (dead letters carry the event-time clock, not the wall
clock, in `received_at` for that reason).

Every join output also goes through the `FeedbackStage` (DESIGN §5–§7): the recalibration
policy's calibrator versions go to `calibrators.jsonl`, drift alerts (firing and resolved) to
`alerts.jsonl`, tier changes and the final snapshot of every (user, arm) posterior to
`posteriors.jsonl` (tier changes carry `"type": "tier_change"`), all in emission order. Their
`created_at` is, for the same reason, not the wall clock but the replay's event-time clock
(the largest `ts` seen so far) as ISO 8601 UTC with milliseconds, e.g.
"2026-01-01T00:05:00.000Z".
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import InvalidInputError
from worker.core.pipeline import InputBatch, Outputs, Pipeline, PipelineConfig
from worker.core.records.dead_letter import make_dead_letter, unpack_ref
from worker.core.records.impression import Impression
from worker.gc_tuning import rare_collections

OUTPUT_FILES = (
    "feedback.jsonl",
    "dlq.jsonl",
    "calibrators.jsonl",
    "alerts.jsonl",
    "posteriors.jsonl",
)
DEFAULT_MAX_MESSAGE_BYTES = 65_536
#: Lines per batch handed to the pipeline: large enough to amortise the per-batch work,
#: small enough that a batch's outputs stay a few MB (memory is bounded by it, not the file).
CHUNK_LINES = 4096


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
    peak_rss_mb: float | None = None

    @property
    def dead_letters_total(self) -> int:
        return sum(self.dead_letters.values())

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
            "dead_letters_total": self.dead_letters_total,
            "calibrators": dict(sorted(self.calibrators.items())),
            "calibrators_total": sum(self.calibrators.values()),
            "calibrators_by_reason": dict(sorted(self.calibrator_reasons.items())),
            "alerts": dict(sorted(self.alerts.items())),
            "tier_changes": self.tier_changes,
            "posterior_snapshots": self.posterior_snapshots,
            "join": self.join,
            "wall_seconds": round(self.wall_seconds, 3),
            "events_per_second": round(events_per_s, 1) if events_per_s else None,
            "peak_rss_mb": self.peak_rss_mb,
        }


class Replay:
    """Drives a ``Pipeline`` over replay lines and writes every output through
    ``write(name, obj)`` (``"feedback"``, ``"dlq"``, ``"calibrators"``, ``"alerts"``,
    ``"posteriors"``).

    Lines are decoded one by one and handed to the pipeline in batches of ``chunk_lines``;
    batch cuts do not change the outputs (``Pipeline``), so the chunk size only trades
    memory against per-batch overhead. Each input's ``ref`` is ``(line number, raw bytes)``:
    every dead letter carries the line it was about, byte for byte.
    """

    def __init__(
        self,
        config: PipelineConfig,
        write: Callable[[str, dict[str, Any]], None],
        source_name: str = "replay",
        chunk_lines: int = CHUNK_LINES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._write = write
        self._source = source_name
        self._decoder = InputDecoder(
            max_message_bytes=max_message_bytes, context_fields=config.context_fields
        )
        self._decode = self._decoder.decode_replay_line
        self._pipeline = Pipeline(config)
        self._chunk = max(1, int(chunk_lines))
        self._batch = InputBatch()
        self.summary = ReplaySummary()

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    def process_line(self, raw: bytes, line_no: int) -> None:
        summary = self.summary
        summary.lines += 1
        batch = self._batch
        try:
            event = self._decode(raw)
        except InvalidInputError as exc:
            batch.add_rejected((line_no, raw), _key_of(raw), exc.reason, str(exc))
        else:
            if isinstance(event, Impression):
                summary.impressions += 1
                batch.add_impression(event, (line_no, raw))
            else:
                summary.clicks += 1
                batch.add_click(event, (line_no, raw))
        # ``len(batch.kinds)``, not ``len(batch)``: no Python-level __len__ call per line.
        if len(batch.kinds) >= self._chunk:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered lines to the pipeline and write what they produced."""
        if len(self._batch):
            batch, self._batch = self._batch, InputBatch()
            self._write_outputs(self._pipeline.process(batch))

    def finish(self) -> ReplaySummary:
        self.flush()
        self._write_outputs(self._pipeline.finish())
        self.summary.join = self._pipeline.join.stats.to_dict()
        return self.summary

    def _write_outputs(self, out: Outputs) -> None:
        write = self._write
        summary = self.summary
        for fb in out.feedback:
            write("feedback", fb.to_dict())
        positives = sum(fb.label for fb in out.feedback)
        summary.feedback += len(out.feedback)
        summary.feedback_positive += positives
        summary.feedback_negative += len(out.feedback) - positives
        for rejection in out.dead_letters:
            line_no, raw = unpack_ref(rejection.ref, {})
            summary.dead_letters[rejection.reason] += 1
            letter = make_dead_letter(self._source, 0, line_no, rejection.key, rejection.reason,
                                      rejection.error, raw, rejection.clock_ms)
            write("dlq", letter.to_dict())
        for msg in out.calibrators:
            summary.calibrators[msg["scope"].split(":", 1)[0]] += 1
            summary.calibrator_reasons[msg["reason"]] += 1
            write("calibrators", msg)
        for alert in out.alerts:
            summary.alerts[f"{alert['kind']}:{alert['status']}"] += 1
            write("alerts", alert)
        for change in out.tier_changes:
            summary.tier_changes += 1
            write("posteriors", change)
        for snapshot in out.posteriors:
            summary.posterior_snapshots += 1
            write("posteriors", snapshot)


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
        # orjson appends the newline itself: no second bytes object per output line.
        self._files[name].write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def run_replay(
    events: Path | IO[bytes],
    out_dir: Path,
    config: PipelineConfig | None = None,
    progress: IO[str] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ReplaySummary:
    """Replay ``events`` (a file, or a binary stream such as standard input) into
    ``out_dir``; returns (and writes) the summary. Memory is bounded by the chunk size,
    not the input: lines are read, processed and their outputs written chunk by chunk."""
    outputs = _Outputs(out_dir, (name.removesuffix(".jsonl") for name in OUTPUT_FILES))
    name = events.name if isinstance(events, Path) else "-"
    replay = Replay(
        config if config is not None else PipelineConfig(),
        outputs.write,
        source_name=f"replay:{name}",
        max_message_bytes=max_message_bytes,
    )
    total_bytes = events.stat().st_size if isinstance(events, Path) else None
    started = time.perf_counter()
    meter = _Progress(progress, total_bytes, started)
    read_bytes = 0
    try:
        with (
            open(events, "rb", buffering=1 << 20) if isinstance(events, Path)
            else contextlib.nullcontext(events)
        ) as handle, rare_collections():
            for line_no, line in enumerate(handle):
                read_bytes += len(line)
                if line_no == 0 and line.startswith(_BOM):
                    # A UTF-8 byte order mark (editors on Windows write one) is not part of
                    # line 1.
                    line = line[len(_BOM):]
                # Whitespace-only lines are not skipped: the decoder dead-letters them
                # ("empty"), so every line of the input is accounted for.
                replay.process_line(line.rstrip(b"\r\n"), line_no)
                if (line_no & 0x3FFF) == 0:
                    meter.show(read_bytes, line_no + 1)
            summary = replay.finish()
    finally:
        outputs.close()
    summary.wall_seconds = time.perf_counter() - started
    summary.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    meter.done(read_bytes, summary.lines)
    (out_dir / "summary.json").write_bytes(
        orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"
    )
    if summary.lines and summary.dead_letters_total == summary.lines:
        reasons = ", ".join(f"{r} {n:,}" for r, n in summary.dead_letters.most_common())
        sys.stderr.write(
            f"warning: every one of the {summary.lines:,} lines was dead-lettered ({reasons}); "
            f"is this a replay file (one JSON impression or click per line, with \"type\")? "
            f"See {out_dir / 'dlq.jsonl'}\n"
        )
    return summary


class _Progress:
    """A one-line progress display: share of the file, lines, rate and ETA."""

    def __init__(self, stream: IO[str] | None, total_bytes: int | None, started: float) -> None:
        self._stream = stream
        self._total = total_bytes
        self._started = started
        self._last = started

    def show(self, done_bytes: int, lines: int) -> None:
        if self._stream is None:
            return
        now = time.perf_counter()
        if now - self._last >= 0.5:
            self._last = now
            self._write(done_bytes, lines, now - self._started)

    def done(self, done_bytes: int, lines: int) -> None:
        if self._stream is not None:
            self._write(done_bytes, lines, time.perf_counter() - self._started)
            self._stream.write("\n")
            self._stream.flush()

    def _write(self, done_bytes: int, lines: int, seconds: float) -> None:
        assert self._stream is not None
        rate = lines / seconds if seconds > 0 else 0.0
        text = f"\rreplay: {lines:,} lines  {rate:,.0f} lines/s"
        if self._total:
            share = min(done_bytes / self._total, 1.0)
            eta = seconds * (1.0 - share) / share if share > 0 else float("inf")
            text = (f"\rreplay: {share:6.1%}  {lines:,} lines  {rate:,.0f} lines/s  "
                    f"ETA {_duration(eta)}")
        self._stream.write(text)
        self._stream.flush()


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def progress_stream() -> IO[str] | None:
    """Progress goes to stderr only when it is a terminal."""
    return sys.stderr if sys.stderr.isatty() else None
