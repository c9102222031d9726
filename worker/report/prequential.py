"""Prequential scoring: each feedback calibrated by what serving would have used at the time.

A feedback event is scored by the newest calibrator version published (``event_ts``) strictly
before its impression's ``ts``, along the fallback chain user → segment → global → identity.
``event_ts`` is the publishing partition's event-time clock: the impressions' own time axis in
both runtimes. (``created_at`` is not: a Kafka worker stamps its wall clock, so on a stream
of past events every version would look newer than every impression.)
The chain, the staleness rules and the formulas are the serving client's
(``worker.client.CalibratorClient``, their one owner): versions are fed to one client in
``event_ts`` order, and between two publication times ("epochs") the held versions do not
change, so each epoch's feedback is calibrated in a few vectorised calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.client import CalibratorClient
from worker.core.calibrators.calibrator import Calibrator
from worker.core.calibrators.contextual import ContextualCalibrator
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.metrics import calibration_metrics
from worker.core.records.scope import USER_PREFIX
from worker.report.load import FeedbackColumns

MS_PER_DAY = 86_400_000
#: What served a feedback event, as stored in ``Scored.served``.
SERVED_KINDS = ("identity", "global", "segment", "user")


@dataclass
class Scored:
    """The recal probability of every feedback event (``FeedbackColumns`` order) and which
    scope kind served it (an index into ``SERVED_KINDS``)."""

    calibrated: NDArray[np.float64]
    served: NDArray[np.int8]
    versions: int
    rejected: int

    def served_counts(self) -> dict[str, int]:
        counts = np.bincount(self.served, minlength=len(SERVED_KINDS))
        return {kind: int(c) for kind, c in zip(SERVED_KINDS, counts, strict=True)}


def _kind_index(scope: str) -> int:
    return SERVED_KINDS.index(scope.split(":", 1)[0])


def _timed_records(versions: list[dict[str, Any]]) -> list[tuple[int, str | None, Any]]:
    """(event_ts, key, value) in event_ts order. A tombstone line ``{"key", "value": null}``
    carries no time; it takes the previous line's, i.e. it acts where it stood in the file."""
    timed = []
    last_ms = -(2**62)
    for i, obj in enumerate(versions):
        if isinstance(obj, dict) and set(obj) == {"key", "value"}:
            value = obj["value"]
            key = obj["key"]
        else:
            value, key = obj, None
        if isinstance(value, dict):
            ms = value.get("event_ts")
            if isinstance(ms, bool) or not isinstance(ms, int):
                raise ConfigError(
                    f"calibrators record {i + 1} has no integer event_ts: {ms!r}"
                )
            last_ms = ms
        timed.append((last_ms, key, value))
    # Stable: versions published in the same millisecond keep their file (emission) order.
    timed.sort(key=lambda item: item[0])
    return timed


def prequential_scores(fb: FeedbackColumns, versions: list[dict[str, Any]]) -> Scored:
    """Calibrate every feedback event prequentially with the versions of ``calibrators.jsonl``.

    >>> from worker.report.load import feedback_columns
    >>> fb = feedback_columns([{"ts": t, "score": 0.9, "label": 1, "model_id": "m",
    ...                         "user_id": "u"} for t in (1000, 3000)])
    >>> v = {"model_id": "m", "scope": "global", "version": 1, "method": "temperature",
    ...      "params": {"temperature": 2.0}, "event_ts": 2000, "reason": "bootstrap",
    ...      "created_at": "1970-01-01T00:00:02.000Z", "training": {"n": 1, "positives": 1,
    ...      "from_ts": 0, "to_ts": 0}, "metrics": dict.fromkeys(["ece_before", "ece_after",
    ...      "nll_before", "nll_after", "n_eval", "ece_floor"], 0)}
    >>> s = prequential_scores(fb, [v])
    >>> s.calibrated.round(4).tolist(), s.served_counts()["global"]
    ([0.9, 0.75], 1)
    """
    n = len(fb)
    calibrated = fb.score.copy()
    served = np.zeros(n, dtype=np.int8)
    timed = _timed_records(versions)
    client = CalibratorClient()
    n_seg = max(len(fb.segment_names), 1)
    n_user = max(len(fb.user_names), 1)
    user_code = {name: i for i, name in enumerate(fb.user_names)}
    model_code = {name: i for i, name in enumerate(fb.model_names)}
    # (model code * n_user + user code) of the users holding a user-scope version now: only
    # their rows need the per-row chain; every other row resolves by (model, segment).
    held_users: set[int] = set()
    applied = rejected = 0
    boundaries = np.searchsorted(fb.ts, [ms for ms, _, _ in timed], side="right")
    i = 0
    start = 0
    while True:
        # Apply every version published before the next epoch's first impression.
        stop = n if i >= len(timed) else int(boundaries[i])
        if stop > start:
            _score_epoch(client, fb, calibrated, served, start, stop, held_users, n_seg, n_user)
            start = stop
        if i >= len(timed):
            break
        _, key, value = timed[i]
        i += 1
        try:
            outcome = client.apply(key, value)
        except InvalidInputError:
            rejected += 1
            continue
        scope = value["scope"] if isinstance(value, dict) else (key or "").split("|", 1)[-1]
        model = value["model_id"] if isinstance(value, dict) else (key or "").split("|", 1)[0]
        if scope.startswith(USER_PREFIX) and model in model_code:
            uid = user_code.get(scope[len(USER_PREFIX):])
            if uid is not None:
                code = model_code[model] * n_user + uid
                if outcome == "applied":
                    held_users.add(code)
                elif outcome == "withdrawn":
                    held_users.discard(code)
        applied += outcome == "applied"
    return Scored(calibrated, served, applied, rejected)


def _score_epoch(
    client: CalibratorClient,
    fb: FeedbackColumns,
    out: NDArray[np.float64],
    served: NDArray[np.int8],
    start: int,
    stop: int,
    held_users: set[int],
    n_seg: int,
    n_user: int,
) -> None:
    rows = np.arange(start, stop)
    if held_users:
        user_keys = fb.model[rows] * n_user + fb.user[rows]
        per_user = np.isin(user_keys, np.fromiter(held_users, dtype=np.int64))
        for r in rows[per_user]:
            res = client.resolve(fb.model_names[fb.model[r]], fb.user_names[fb.user[r]],
                                 fb.segment_names[fb.segment[r]])
            out[r] = _apply(res.calibrator, fb, np.array([r]))[0]
            served[r] = _kind_index(res.scope)
        rows = rows[~per_user]
    if not rows.size:
        return
    group = fb.model[rows] * n_seg + fb.segment[rows]
    order = np.argsort(group, kind="stable")
    keys, first = np.unique(group[order], return_index=True)
    for key, part in zip(keys, np.split(rows[order], first[1:]), strict=True):
        model, segment = divmod(int(key), n_seg)
        res = client.resolve(fb.model_names[model], None, fb.segment_names[segment])
        out[part] = _apply(res.calibrator, fb, part)
        served[part] = _kind_index(res.scope)


def _apply(cal: Calibrator, fb: FeedbackColumns, rows: NDArray[np.intp]) -> NDArray[np.float64]:
    """``cal`` on the rows' scores as serving applies it: a ``contextual`` version in each
    row's serving context (the client's ``calibrate`` with that context)."""
    if isinstance(cal, ContextualCalibrator):
        return np.asarray(cal.apply(fb.score[rows], [fb.contexts[r] for r in rows.tolist()]),
                          dtype=np.float64)
    return np.asarray(cal.apply(fb.score[rows]), dtype=np.float64)


@dataclass(frozen=True)
class DayRow:
    """One UTC day of the prequential table (identity = the raw score)."""

    day_ms: int
    n: int
    positives: int
    ctr: float
    mean_score: float
    mean_recal: float
    ece_identity: float
    ece_recal: float
    ece_floor: float
    nll_identity: float
    nll_recal: float


def day_row(
    day_ms: int, score: NDArray[np.float64], recal: NDArray[np.float64],
    label: NDArray[np.float64],
) -> DayRow:
    raw = calibration_metrics(score, label)
    cal = calibration_metrics(recal, label)
    n = int(label.size)
    return DayRow(
        day_ms=day_ms, n=n, positives=int(label.sum()),
        ctr=float(label.mean()) if n else math.nan,
        mean_score=float(score.mean()) if n else math.nan,
        mean_recal=float(recal.mean()) if n else math.nan,
        ece_identity=raw.ece, ece_recal=cal.ece, ece_floor=cal.ece_floor,
        nll_identity=raw.nll, nll_recal=cal.nll,
    )


def runs(keys: NDArray[np.int64]) -> list[tuple[int, int, int]]:
    """``(key, start, stop)`` of each run of equal values in sorted ``keys``.

    >>> runs(np.array([3, 3, 5, 9, 9, 9]))
    [(3, 0, 2), (5, 2, 3), (9, 3, 6)]
    """
    values, first = np.unique(keys, return_index=True)
    bounds = [*first.tolist(), int(keys.size)]
    return [(int(v), a, b) for v, a, b in zip(values, bounds[:-1], bounds[1:], strict=True)]


def daily_table(fb: FeedbackColumns, calibrated: NDArray[np.float64]) -> list[DayRow]:
    """One row per UTC day of impression time, in order (feedback is sorted by ``ts``)."""
    return [
        day_row(day * MS_PER_DAY, fb.score[a:b], calibrated[a:b], fb.label[a:b])
        for day, a, b in runs(fb.ts // MS_PER_DAY)
    ]
