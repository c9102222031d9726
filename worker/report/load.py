"""Reading a replay output directory (or a ``dump_topics`` one) into arrays for the report.

The layout is replay's (``worker.replay.OUTPUT_FILES`` plus ``summary.json``): one JSON object
per line. Only ``feedback.jsonl`` is required; every other file may be missing (a section then
says so). Feedback is the one large file, so it is parsed once into numpy columns sorted by
impression time; everything else stays as lists of dicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from worker.core.errors import ConfigError
from worker.core.records.impression import serving_context
from worker.replay import OUTPUT_FILES

FEEDBACK_FILE = "feedback.jsonl"
SUMMARY_FILE = "summary.json"
#: The output files besides feedback, by short name (``calibrators`` -> calibrators.jsonl).
OPTIONAL_STREAMS = tuple(
    name.removesuffix(".jsonl") for name in OUTPUT_FILES if name != FEEDBACK_FILE
)
DEFAULT_SEGMENT = "default"


@dataclass
class FeedbackColumns:
    """Labeled feedback as columns, sorted (stably) by impression ``ts``.

    ``model``, ``segment`` and ``user`` are integer codes into the matching ``*_names``.
    """

    ts: NDArray[np.int64]
    score: NDArray[np.float64]
    label: NDArray[np.float64]
    model: NDArray[np.intp]
    segment: NDArray[np.intp]
    user: NDArray[np.intp]
    model_names: list[str]
    segment_names: list[str]
    user_names: list[str]
    #: Per row, the impression's serving context (``ts``, ``segment``, ``position``, the kept
    #: ``context`` fields): what serving passes to a ``contextual`` version.
    contexts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ts.size)


@dataclass
class ReportInput:
    """Everything the report reads from one directory."""

    source: Path
    feedback: FeedbackColumns
    #: Short stream name -> its records, or None when the file is absent.
    streams: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)
    summary: dict[str, Any] | None = None

    def records(self, name: str) -> list[dict[str, Any]]:
        return self.streams.get(name) or []


def _read_lines(path: Path) -> list[Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    out = []
    for line_no, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line_no} is not JSON: {exc}") from None
    return out


def _codes(values: list[str]) -> tuple[NDArray[np.intp], list[str]]:
    names, codes = np.unique(np.asarray(values, dtype=object), return_inverse=True)
    return codes.astype(np.intp), [str(v) for v in names]


def feedback_columns(records: list[Any], path: Path | str = FEEDBACK_FILE) -> FeedbackColumns:
    """Columns of feedback records (dicts with ``ts``, ``score``, ``label``, ``model_id``,
    ``user_id`` and optional ``segment``), sorted by ``ts``.

    >>> cols = feedback_columns([
    ...     {"ts": 5, "score": 0.2, "label": 1, "model_id": "m", "user_id": "b"},
    ...     {"ts": 1, "score": 0.1, "label": 0, "model_id": "m", "user_id": "a",
    ...      "segment": "web"}])
    >>> cols.ts.tolist(), cols.label.tolist(), [cols.segment_names[s] for s in cols.segment]
    ([1, 5], [0.0, 1.0], ['web', 'default'])
    """
    n = len(records)
    ts = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    label = np.empty(n, dtype=np.float64)
    models: list[str] = [""] * n
    segments: list[str] = [""] * n
    users: list[str] = [""] * n
    contexts: list[dict[str, Any]] = [{}] * n
    # The one Python pass over the feedback; everything after it is numpy.
    try:
        for i, fb in enumerate(records):
            ts[i] = fb["ts"]
            score[i] = fb["score"]
            label[i] = fb["label"]
            models[i] = fb["model_id"]
            segments[i] = fb.get("segment") or DEFAULT_SEGMENT
            users[i] = fb["user_id"]
            contexts[i] = serving_context(fb["ts"], segments[i], fb.get("position"),
                                          fb.get("context"))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(
            f"{path}: record {i + 1} is not a feedback event: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if n and not (((score >= 0) & (score <= 1)).all() and np.isin(label, (0.0, 1.0)).all()):
        raise ConfigError(f"{path}: scores must be in [0, 1] and labels 0 or 1")
    order = np.argsort(ts, kind="stable")
    model, model_names = _codes(models)
    segment, segment_names = _codes(segments)
    user, user_names = _codes(users)
    return FeedbackColumns(
        ts=ts[order], score=score[order], label=label[order], model=model[order],
        segment=segment[order], user=user[order], model_names=model_names,
        segment_names=segment_names, user_names=user_names,
        contexts=[contexts[i] for i in order.tolist()],
    )


def load_directory(
    source: Path, progress: Callable[[str], None] | None = None
) -> ReportInput:
    """Read a replay-layout directory; ``ConfigError`` when it is not one."""
    if not source.is_dir():
        raise ConfigError(f"report source {source} is not a directory")
    fb_path = source / FEEDBACK_FILE
    if not fb_path.is_file():
        present = sorted(p.name for p in source.iterdir())
        found = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8
                                          else "")
        raise ConfigError(
            f"{source} has no {FEEDBACK_FILE}: expected the output directory of `recal replay` "
            f"or `recal report --out-dir` (found: {found or 'nothing'})"
        )
    started = time.perf_counter()
    feedback = feedback_columns(_read_lines(fb_path), fb_path)
    if progress:
        progress(f"read {len(feedback):,} feedback events in "
                 f"{time.perf_counter() - started:.1f} s")
    streams: dict[str, list[dict[str, Any]] | None] = {}
    for name in OPTIONAL_STREAMS:
        path = source / f"{name}.jsonl"
        streams[name] = _read_lines(path) if path.is_file() else None
    summary = None
    if (source / SUMMARY_FILE).is_file():
        try:
            loaded = orjson.loads((source / SUMMARY_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {source / SUMMARY_FILE}: {exc}") from None
        summary = loaded if isinstance(loaded, dict) else None
    if progress:
        counts = ", ".join(f"{len(v):,} {k}" for k, v in streams.items() if v is not None)
        progress(f"read {counts or 'no other outputs'}")
    return ReportInput(source=source, feedback=feedback, streams=streams, summary=summary)
