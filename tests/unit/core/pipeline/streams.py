"""Synthetic impression/feedback streams for the monitor tests (numpy draws -> records).

The true click probability of an event is ``sigmoid(true_z)`` with ``true_z`` from
``logit(Beta(2, 8))`` plus a per-segment offset; the served model logit is
``temperature * true_z`` (``temperature_after`` from ``change_at`` on), so temperature 1 is a
calibrated model and 1.6 an over-confident one. Feedback is emitted right after its
impression with ``label_ts = ts`` (already mature), as the join would for a zero window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression
from worker.core.records.timefmt import iso_utc_ms

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class Stream:
    """Columns of one simulated stream."""

    true_z: np.ndarray
    z: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    segment: list[str]
    user: list[str]
    arm: list[str | None]
    model_id: str = "m"

    def __len__(self) -> int:
        return int(self.z.size)

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[
        tuple[Impression, Feedback]
    ]:
        stop = len(self) if stop is None else stop
        for i in range(start, stop):
            z = float(self.z[i])
            t = int(self.ts[i])
            imp = Impression(f"i{i}", self.user[i], "item", t, self.model_id,
                             1.0 / (1.0 + math.exp(-z)), z, self.segment[i], self.arm[i], None)
            yield imp, Feedback(imp, int(self.y[i]), t, t if self.y[i] else None,
                                0 if self.y[i] else None)


def make_stream(
    n: int,
    seed: int,
    *,
    temperature: float = 1.0,
    change_at: int | None = None,
    temperature_after: float = 1.6,
    segments: Sequence[tuple[str, float, float]] = (("web", 0.6, 0.0), ("app", 0.4, -0.3)),
    n_users: int = 500,
    arms: Sequence[str | None] = ("news", "sports", None),
    gap_ms: int = 100,
) -> Stream:
    """``segments``: (name, share, true logit offset)."""
    rng = np.random.default_rng(seed)
    names = [s[0] for s in segments]
    shares = np.array([s[1] for s in segments])
    seg_idx = rng.choice(len(segments), n, p=shares / shares.sum())
    p = rng.beta(2.0, 8.0, n)
    true_z = np.log(p / (1.0 - p)) + np.array([s[2] for s in segments])[seg_idx]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_z))).astype(np.int64)
    temp = np.full(n, temperature)
    if change_at is not None:
        temp[change_at:] = temperature_after
    z = temp * true_z
    users = [f"u{k}" for k in rng.integers(0, n_users, n)]
    arm_idx = rng.integers(0, len(arms), n)
    ts = START_MS + np.arange(n, dtype=np.int64) * gap_ms
    return Stream(true_z, z, y, ts, [names[i] for i in seg_idx], users,
                  [arms[i] for i in arm_idx])


def iso(ts_ms: int) -> str:
    """Event time as the deterministic ``created_at`` a replay uses."""
    return iso_utc_ms(ts_ms)


def joined_events(
    seed: int,
    *,
    hours: float,
    rate_per_s: float = 1.0,
    click_gaps: Sequence[tuple[float, float]] = (),
    late_share: float = 0.0,
    window_ms: int = 1_800_000,
    delay_mean_ms: float = 60_000.0,
) -> list[Impression | Click]:
    """Raw impressions and clicks in arrival (event-time) order, for the join.

    Calibrated scores; clicks are Bernoulli(p) with exponential delays; clicks whose time
    falls in one of ``click_gaps`` (hours from the start, ``(from, to)``) are dropped (a
    broken click pipeline); a share ``late_share`` of clicks arrives beyond the window.
    """
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * rate_per_s)
    ts = START_MS + np.sort(rng.uniform(0, hours * 3_600_000, n)).astype(np.int64)
    p = rng.beta(2.0, 8.0, n)
    z = np.log(p / (1.0 - p))
    clicked = rng.random(n) < p
    delay = rng.exponential(delay_mean_ms, n)
    late = rng.random(n) < late_share
    beyond = window_ms + 1 + rng.uniform(0, window_ms, n)
    delay = np.where(late, beyond, np.minimum(delay, window_ms))
    events: list[tuple[int, int, Impression | Click]] = []
    for i in range(n):
        imp = Impression(f"i{i}", f"u{i % 300}", "item", int(ts[i]), "m", float(p[i]),
                         float(z[i]), "web", "news", None)
        events.append((int(ts[i]), 0, imp))
        if clicked[i]:
            t = int(ts[i] + delay[i])
            hour = (t - START_MS) / 3_600_000
            if any(a <= hour < b for a, b in click_gaps):
                continue
            events.append((t, 1, Click(f"i{i}", f"u{i % 300}", t, None)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in events]


def drive(
    monitor: Any, join: Any, events: Sequence[Impression | Click], idle_minutes: int = 0
) -> Any:
    """Feed raw events through ``join`` and ``monitor`` as the replay does; returns the
    concatenated ``Outputs`` (``finish`` included).

    ``idle_minutes``: afterwards, let the partition idle that long with the wall clock
    (= event time) running, as the Kafka runtime's timer would (``join.tick``).
    """
    from worker.core.pipeline import Outputs

    out = Outputs()
    clock = 0
    for ev in events:
        clock = max(clock, ev.ts)
        at = iso(clock)
        if isinstance(ev, Impression):
            out.extend(monitor.on_impression(ev, at))
            step = join.add_impression(ev)
        else:
            out.extend(monitor.on_click(ev, at))
            step = join.add_click(ev)
        for fb in step.feedback:
            out.extend(monitor.on_feedback(fb, at))
        for click in step.late_clicks:
            out.extend(monitor.on_late_click(click, at))
        out.extend(monitor.tick(clock, at))
    for minute in range(1, idle_minutes + 1):
        wall = clock + minute * 60_000
        at = iso(wall)
        for fb in join.tick(wall).feedback:
            out.extend(monitor.on_feedback(fb, at))
        out.extend(monitor.tick(wall, at))
    step = join.finish()
    at = iso(monitor.max_event_ts)
    for fb in step.feedback:
        out.extend(monitor.on_feedback(fb, at))
    for click in step.late_clicks:
        out.extend(monitor.on_late_click(click, at))
    out.extend(monitor.finish(None, at))
    return out
