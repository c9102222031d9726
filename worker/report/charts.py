"""The report's charts: matplotlib figures rendered to inline PNG (base64 ``data:`` URIs).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas, never pyplot: no
global figure registry, no GUI backend, nothing that depends on a display or the network.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from numpy.typing import NDArray

from worker.core.metrics import CalibrationReport
from worker.core.records.timefmt import iso_utc_ms

RAW_COLOR = "#d95f02"
RECAL_COLOR = "#1b6ac9"
CTR_COLOR = "#222222"
FLOOR_COLOR = "#9e9e9e"
REASON_COLORS = {"bootstrap": "#4caf50", "scheduled": "#1b6ac9", "drift": "#c62828"}
TIER_COLORS = {
    "confident": "#2e7d32", "moderate_uncertain": "#f9a825", "high_epistemic": "#c62828",
}
ALERT_COLORS = (
    "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457", "#283593", "#558b2f",
)
DPI = 96


def png_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (the report must open offline)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _dates(ms: NDArray[np.int64] | Sequence[int]) -> NDArray[np.datetime64]:
    # Naive UTC datetimes: matplotlib's date axis then shows UTC whatever the machine's zone.
    return np.asarray(ms, dtype=np.int64).astype("datetime64[ms]")


def _date_axis(ax: object) -> None:
    locator = AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)  # type: ignore[attr-defined]
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Curve:
    """One reliability curve: a calibration report of fine equal-width bins and its label."""

    label: str
    color: str
    report: CalibrationReport


def reliability_axes(ax: object, curves: Sequence[Curve], limit: float, title: str) -> None:
    """Observed click rate against mean predicted probability per bin, both curves on one
    axes, with the diagonal and the band a calibrated predictor stays in 95% of the time
    (per bin ± 1.96 · sqrt(p̄(1 − p̄) / n), from the first curve's bins: the noise floor
    made visible, per bin, for the bins' own sample sizes)."""
    a: object = ax
    a.plot([0, limit], [0, limit], color="#555555", lw=0.8, ls=":")  # type: ignore[attr-defined]
    if curves:
        bins = [b for b in curves[0].report.reliability if b.n > 0]
        if bins:
            x = np.array([b.mean_p for b in bins])
            half = 1.96 * np.sqrt(np.clip(x * (1 - x), 0, None) / np.array([b.n for b in bins]))
            a.fill_between(x, np.clip(x - half, 0, None), x + half,  # type: ignore[attr-defined]
                           color=FLOOR_COLOR, alpha=0.25, lw=0, label="noise band (95%)")
    for curve in curves:
        bins = [b for b in curve.report.reliability if b.n > 0]
        if not bins:
            continue
        x = np.array([b.mean_p for b in bins])
        y = np.array([b.frac_pos for b in bins])
        counts = np.array([b.n for b in bins])
        sizes = 6 + 60 * np.sqrt(counts / counts.max())
        a.plot(x, y, color=curve.color, lw=1.2, label=curve.label)  # type: ignore[attr-defined]
        a.scatter(x, y, s=sizes, color=curve.color, alpha=0.8, lw=0)  # type: ignore[attr-defined]
    a.set_xlim(0, limit)  # type: ignore[attr-defined]
    a.set_ylim(0, limit)  # type: ignore[attr-defined]
    a.set_title(title, fontsize=9)  # type: ignore[attr-defined]
    a.set_xlabel("predicted probability", fontsize=8)  # type: ignore[attr-defined]
    a.set_ylabel("observed click rate", fontsize=8)  # type: ignore[attr-defined]
    a.tick_params(labelsize=7)  # type: ignore[attr-defined]
    a.grid(alpha=0.2)  # type: ignore[attr-defined]


def reliability_figure(
    panels: Sequence[tuple[str, Sequence[Curve]]], limit: float, columns: int = 3,
    size: float = 3.6,
) -> Figure:
    """A grid of reliability diagrams, one per (title, curves) panel."""
    cols = max(1, min(columns, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < len(panels):
            title, curves = panels[k]
            reliability_axes(ax, curves, limit, title)
            if k == 0:
                ax.legend(fontsize=7, loc="upper left")
        else:
            ax.set_axis_off()
    return fig


@dataclass(frozen=True)
class Marker:
    """A calibrator version on the timeline."""

    ts_ms: int
    row: str
    reason: str


@dataclass(frozen=True)
class Episode:
    """An alert episode: firing from ``start_ms`` to ``end_ms`` (None: still firing)."""

    start_ms: int
    end_ms: int | None
    row: str
    kind: str


@dataclass(frozen=True)
class Buckets:
    """Per time bucket: start, n, and the series drawn on the timelines."""

    start_ms: NDArray[np.int64]
    width_ms: int
    n: NDArray[np.int64]
    ctr: NDArray[np.float64]
    mean_raw: NDArray[np.float64]
    mean_recal: NDArray[np.float64]
    ece_raw: NDArray[np.float64]
    ece_recal: NDArray[np.float64]
    ece_floor: NDArray[np.float64]


def timeline_figure(
    buckets: Buckets, markers: Sequence[Marker], episodes: Sequence[Episode]
) -> Figure:
    """ECE and CTR per time bucket, with calibrator versions and alert episodes below."""
    rows = sorted({m.row for m in markers} | {e.row for e in episodes})
    lane_height = 0.9 + 0.22 * len(rows)
    fig = Figure(figsize=(12.5, 6.4 + lane_height), layout="constrained")
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2.4, lane_height])
    ax_ece = fig.add_subplot(grid[0])
    ax_ctr = fig.add_subplot(grid[1], sharex=ax_ece)
    ax_lane = fig.add_subplot(grid[2], sharex=ax_ece)
    mid = _dates(buckets.start_ms + buckets.width_ms // 2)
    ax_ece.fill_between(mid, 0, buckets.ece_floor, color=FLOOR_COLOR, alpha=0.3, lw=0,
                        step="mid", label="noise floor (calibrated, same scores)")
    ax_ece.plot(mid, buckets.ece_raw, color=RAW_COLOR, lw=1.3, label="raw score (identity)")
    ax_ece.plot(mid, buckets.ece_recal, color=RECAL_COLOR, lw=1.3, label="recal")
    ax_ece.set_ylabel("ECE (15 bins)")
    ax_ece.set_ylim(bottom=0)
    ax_ece.legend(fontsize=8, loc="upper left")
    ax_ece.grid(alpha=0.2)
    ax_ctr.plot(mid, buckets.ctr, color=CTR_COLOR, lw=1.4, label="observed CTR")
    ax_ctr.plot(mid, buckets.mean_raw, color=RAW_COLOR, lw=1.1, label="mean raw score")
    ax_ctr.plot(mid, buckets.mean_recal, color=RECAL_COLOR, lw=1.1, label="mean recal")
    ax_ctr.set_ylabel("click rate")
    ax_ctr.set_ylim(bottom=0)
    ax_ctr.legend(fontsize=8, loc="upper left")
    ax_ctr.grid(alpha=0.2)
    end_ms = int(buckets.start_ms[-1] + buckets.width_ms) if buckets.start_ms.size else 0
    lane = {row: i for i, row in enumerate(rows)}
    kinds = sorted({e.kind for e in episodes})
    kind_color = {k: ALERT_COLORS[i % len(ALERT_COLORS)] for i, k in enumerate(kinds)}
    spans = []
    for e in episodes:
        stop = e.end_ms if e.end_ms is not None else max(end_ms, e.start_ms)
        spans.append((e.start_ms, stop))
        y = lane[e.row]
        ax_lane.plot(_dates([e.start_ms, stop]), [y - 0.18, y - 0.18], color=kind_color[e.kind],
                     lw=5, solid_capstyle="butt", alpha=0.8)
    # Shade where any alert fires (the union, so overlapping episodes do not darken it).
    for lo, hi in _union(spans):
        for ax in (ax_ece, ax_ctr):
            ax.axvspan(_dates([lo])[0], _dates([hi])[0], color="#c62828", alpha=0.06, lw=0)
    for reason, color in REASON_COLORS.items():
        picked = [m for m in markers if m.reason == reason]
        if picked:
            ax_lane.scatter(_dates([m.ts_ms for m in picked]), [lane[m.row] + 0.12 for m in picked],
                            marker="v", s=30, color=color, label=f"version ({reason})", zorder=3)
    for kind in kinds:
        ax_lane.plot([], [], color=kind_color[kind], lw=5, label=f"alert: {kind}")
    ax_lane.set_yticks(range(len(rows)), rows, fontsize=7)
    ax_lane.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax_lane.invert_yaxis()
    ax_lane.grid(alpha=0.2, axis="x")
    if rows:
        ax_lane.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=6,
                       frameon=False)
    _date_axis(ax_lane)
    ax_lane.set_xlabel("impression time (UTC)")
    for ax in (ax_ece, ax_ctr):
        ax.tick_params(labelbottom=False)
    return fig


def _union(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merged overlapping intervals.

    >>> _union([(5, 7), (1, 3), (2, 4)])
    [(1, 4), (5, 7)]
    """
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def tier_figure(
    day_ms: NDArray[np.int64], counts: dict[str, NDArray[np.int64]], final: dict[str, int]
) -> Figure:
    """Users per tier over time (stacked, after each day's tier changes) and at the end."""
    fig = Figure(figsize=(12.5, 3.4), layout="constrained")
    ax_time, ax_end = fig.subplots(1, 2, width_ratios=[3, 1])
    tiers = [t for t in TIER_COLORS if t in counts] + [t for t in counts if t not in TIER_COLORS]
    if day_ms.size:
        ax_time.stackplot(_dates(day_ms), *[counts[t] for t in tiers], labels=tiers,
                          colors=[TIER_COLORS.get(t, "#777777") for t in tiers], alpha=0.85,
                          step="post")
        _date_axis(ax_time)
    ax_time.set_ylabel("users")
    ax_time.set_title("users per tier (end of each interval)", fontsize=9)
    ax_time.legend(fontsize=7, loc="upper left")
    names = [t for t in TIER_COLORS if t in final] + [t for t in final if t not in TIER_COLORS]
    ax_end.barh(names, [final[t] for t in names],
                color=[TIER_COLORS.get(t, "#777777") for t in names])
    ax_end.invert_yaxis()
    ax_end.set_title("users per tier at the end", fontsize=9)
    ax_end.tick_params(labelsize=7)
    return fig


def posterior_figure(
    examples: Sequence[tuple[str, float, float]], title: str
) -> Figure:
    """Beta densities of a few posteriors: (label, alpha, beta) each."""
    from scipy import stats

    fig = Figure(figsize=(6.2, 3.0), layout="constrained")
    ax = fig.subplots()
    hi = 0.0
    for _, a, b in examples:
        hi = max(hi, float(stats.beta.ppf(0.999, a, b)))
    x = np.linspace(0.0, min(1.0, hi * 1.05) or 1.0, 400)
    for label, a, b in examples:
        ax.plot(x, stats.beta.pdf(x, a, b), lw=1.3, label=label)
    ax.set_xlabel("click rate", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.2)
    return fig


def utc_text(ms: int) -> str:
    """Epoch ms as ``YYYY-MM-DD HH:MM`` UTC, for headings and tables.

    >>> utc_text(1_767_225_900_000)
    '2026-01-01 00:05'
    """
    return iso_utc_ms(int(ms))[:16].replace("T", " ")
