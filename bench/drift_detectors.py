"""Benchmark: recal's CalibrationCusum against River's ADWIN and PageHinkley.

Streams (numpy, vectorised): true click probabilities ``p ~ Beta(2, 8)`` (CTR ~0.2) or
``Beta(1, 24)`` (CTR ~0.04), labels ``y ~ Bernoulli(p)``.

(a) calibrated stationary streams (served score = p) of ``--events`` events: false alarms
    per 10^6 events;
(b) streams that turn overconfident at event 50,000 (served logit = 1.6 x true logit) and run
    50,000 events more: detection delay (events from the change to the first alarm at or
    after it; alarms before the change are ignored there and counted in (a)'s spirit).

recal's detector sees ``(served p, y)``. River's detectors see one number per event, the
per-event **log loss** of the served score, ``-log p`` if clicked else ``-log(1 - p)``
(``p`` clipped to [1e-6, 1 - 1e-6]): every miscalibration, over- or under-confident, raises its
mean (expected log loss = entropy + KL), so a detector of a change in its mean is the natural
label-aware baseline; ``--metric sqerr`` switches to the squared error ``(y - p)^2``.
Both River detectors run with their defaults and "tuned": ADWIN's ``delta`` and PageHinkley's
``threshold`` (with ``mode="up"``: only a loss increase is miscalibration) are chosen on
separate tuning seeds as the most sensitive grid value whose false-alarm rate is at most
recal's measured one (zero alarms on the tuning streams when recal had none).

Run:  .venv/bin/python bench/drift_detectors.py [--seeds 20] [--events 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.core.drift import CalibrationCusum

CTRS = {"0.20": (2.0, 8.0), "0.04": (1.0, 24.0)}
CHANGE = 50_000
POST = 50_000
TEMPERATURE = 1.6
ADWIN_GRID = (2e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14)
PH_GRID = (50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 600.0, 800.0)


# ---- streams ------------------------------------------------------------------------------
def _rng(kind: int, ctr_index: int, seed: int) -> np.random.Generator:
    # Independent streams per purpose (0 stationary, 1 drift, 2 tuning), CTR and seed.
    return np.random.default_rng([kind, ctr_index, seed])


def stationary(ctr: str, seed: int, n: int, kind: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a, b = CTRS[ctr]
    rng = _rng(kind, list(CTRS).index(ctr), seed)
    p = rng.beta(a, b, n)
    return p, rng.random(n) < p


def drifting(ctr: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = CTRS[ctr]
    rng = _rng(1, list(CTRS).index(ctr), seed)
    p = rng.beta(a, b, CHANGE + POST)
    y = rng.random(p.shape[0]) < p
    z = np.log(p / (1.0 - p))
    z[CHANGE:] *= TEMPERATURE
    return 1.0 / (1.0 + np.exp(-z)), y


def monitored(p: np.ndarray, y: np.ndarray, metric: str) -> list[float]:
    q = np.clip(p, 1e-6, 1.0 - 1e-6)
    if metric == "sqerr":
        return ((y - q) ** 2).tolist()
    return (-np.where(y, np.log(q), np.log1p(-q))).tolist()


# ---- detectors ----------------------------------------------------------------------------
def river_alarms(make: Callable[[], object], x: Sequence[float]) -> list[int]:
    det = make()
    update = det.update  # type: ignore[attr-defined]
    out = []
    for i, v in enumerate(x):
        update(v)
        if det.drift_detected:  # type: ignore[attr-defined]
            out.append(i)
    return out


def adwin(delta: float) -> Callable[[], object]:
    from river.drift import ADWIN

    return lambda: ADWIN(delta=delta)


def page_hinkley(threshold: float | None) -> Callable[[], object]:
    from river.drift import PageHinkley

    if threshold is None:
        return PageHinkley
    return lambda: PageHinkley(threshold=threshold, mode="up")


@dataclass
class Row:
    name: str
    alarms: int = 0
    events: int = 0
    delays: list[float] = field(default_factory=list)

    @property
    def far(self) -> float:
        return self.alarms / self.events * 1e6 if self.events else math.nan

    def delay_stats(self) -> tuple[str, str, str]:
        d = np.asarray(self.delays, dtype=float)
        missed = int(np.isinf(d).sum())
        med = np.median(d)
        p90 = np.percentile(d, 90) if missed <= 0.1 * d.size else math.inf
        return _fmt(med), _fmt(p90), f"{missed}/{d.size}"


def _fmt(delay: float) -> str:
    return f">{POST:,}" if math.isinf(delay) else f"{delay:,.0f}"


def first_after_change(alarms: Sequence[int]) -> float:
    after = [i - CHANGE for i in alarms if i >= CHANGE]
    return float(after[0]) if after else math.inf


# ---- tuning -------------------------------------------------------------------------------
def tune(
    grid: Sequence[float],
    make: Callable[[float], Callable[[], object]],
    streams: Sequence[Sequence[float]],
    max_rate: float,
) -> tuple[float, float]:
    """Most sensitive grid value (grid ordered most -> least sensitive) with FAR <= max_rate.

    Bisection over the grid (the false-alarm rate is monotone in the parameter).
    """
    events = sum(len(s) for s in streams)
    cache: dict[int, float] = {}

    def rate(i: int) -> float:
        if i not in cache:
            cache[i] = sum(len(river_alarms(make(grid[i]), s)) for s in streams) / events
        return cache[i]

    lo, hi = 0, len(grid) - 1
    if rate(hi) > max_rate:
        return grid[hi], rate(hi) * 1e6
    while lo < hi:
        mid = (lo + hi) // 2
        if rate(mid) <= max_rate:
            hi = mid
        else:
            lo = mid + 1
    return grid[lo], rate(lo) * 1e6


# ---- main ---------------------------------------------------------------------------------
def run_ctr(ctr: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Row]:
    seeds = range(args.seeds)
    river_n = min(args.events, args.river_events or args.events)
    rows = {k: Row(k) for k in ("recal", "adwin_def", "adwin_tuned", "ph_def", "ph_tuned")}

    # (a) recal on stationary streams, then River defaults on the same streams.
    t0 = time.perf_counter()
    for s in seeds:
        p, y = stationary(ctr, s, args.events)
        det = CalibrationCusum()
        det.update_many(p, y)
        rows["recal"].alarms += det.alarms
        rows["recal"].events += det.n
    log(
        f"  recal stationary: {rows['recal'].alarms} alarms in {rows['recal'].events:,} events "
        f"({time.perf_counter() - t0:.1f}s)"
    )

    # Tuning on separate seeds: River's FAR must not exceed recal's measured one.
    t0 = time.perf_counter()
    max_rate = rows["recal"].alarms / rows["recal"].events
    tune_streams = [
        monitored(*stationary(ctr, 10_000 + s, river_n, kind=2), args.metric)
        for s in range(args.tune_seeds)
    ]
    delta, adwin_tune_far = tune(ADWIN_GRID, adwin, tune_streams, max_rate)
    threshold, ph_tune_far = tune(PH_GRID, page_hinkley, tune_streams, max_rate)
    del tune_streams
    log(
        f"  tuned on {args.tune_seeds} x {river_n:,} events: ADWIN delta={delta:g} "
        f"(tuning FAR {adwin_tune_far:.2f}/1e6), PageHinkley threshold={threshold:g} "
        f"(tuning FAR {ph_tune_far:.2f}/1e6) ({time.perf_counter() - t0:.1f}s)"
    )
    makers = {
        "adwin_def": adwin(0.002),
        "adwin_tuned": adwin(delta),
        "ph_def": page_hinkley(None),
        "ph_tuned": page_hinkley(threshold),
    }
    rows["adwin_tuned"].name = f"adwin_tuned:{delta:g}"
    rows["ph_tuned"].name = f"ph_tuned:{threshold:g}"

    t0 = time.perf_counter()
    for s in seeds:
        x = monitored(*stationary(ctr, s, river_n), args.metric)
        for key, make in makers.items():
            rows[key].alarms += len(river_alarms(make, x))
            rows[key].events += len(x)
    log(f"  River stationary ({time.perf_counter() - t0:.1f}s)")

    # (b) detection delay after the change.
    t0 = time.perf_counter()
    for s in seeds:
        p, y = drifting(ctr, s)
        det = CalibrationCusum()
        det.update_many(p[:CHANGE], y[:CHANGE])
        first = det.update_many(p[CHANGE:], y[CHANGE:])
        rows["recal"].delays.append(float(first) if first >= 0 else math.inf)
        x = monitored(p, y, args.metric)
        for key, make in makers.items():
            rows[key].delays.append(first_after_change(river_alarms(make, x)))
    log(f"  detection runs ({time.perf_counter() - t0:.1f}s)")
    return rows


def scalar_throughput() -> float:
    rng = np.random.default_rng(0)
    p = rng.beta(2, 8, 200_000)
    pl, yl = p.tolist(), (rng.random(p.shape[0]) < p).tolist()
    best = math.inf
    for _ in range(3):
        det = CalibrationCusum()
        update = det.update
        t0 = time.perf_counter()
        for a, b in zip(pl, yl, strict=True):
            update(a, b)
        best = min(best, time.perf_counter() - t0)
    return len(pl) / best


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds per CTR and scenario")
    ap.add_argument("--events", type=int, default=1_000_000, help="stationary stream length")
    ap.add_argument(
        "--river-events",
        type=int,
        default=0,
        help="stationary length for River (default: --events)",
    )
    ap.add_argument("--tune-seeds", type=int, default=5, help="separate seeds for tuning River")
    ap.add_argument("--metric", choices=("logloss", "sqerr"), default="logloss")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 seeds, 200k events")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.events, args.tune_seeds = 3, 200_000, 2
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = {}
    for ctr in CTRS:
        log(f"CTR {ctr}:")
        results[ctr] = run_ctr(ctr, args, log)

    river_n = min(args.events, args.river_events or args.events)
    det = CalibrationCusum()
    print(
        f"\nrecal CalibrationCusum: temperatures (1.5, 1/1.5), h = {det.threshold:.2f} "
        f"(target <= 1 false alarm per 1e6 events); River monitors per-event {args.metric}."
    )
    print(
        f"(a) {args.seeds} calibrated stationary streams of {args.events:,} events per CTR"
        + (f" ({river_n:,} for River)" if river_n < args.events else "")
    )
    print(
        f"(b) {args.seeds} streams turning overconfident (served logit = {TEMPERATURE} x true)"
        f" at event {CHANGE:,}, {POST:,} events after it; delay in events after the change\n"
    )
    labels = {
        "recal": "recal CalibrationCusum",
        "adwin_def": "River ADWIN (default)",
        "adwin_tuned": "River ADWIN (tuned)",
        "ph_def": "River PageHinkley (default)",
        "ph_tuned": "River PageHinkley (tuned)",
    }
    header = (
        f"{'CTR':>5} | {'detector':<38} | {'false alarms / 1e6':>22} | "
        f"{'median delay':>12} | {'p90 delay':>9} | {'missed':>6}"
    )
    print(header)
    print("-" * len(header))
    for ctr, rows in results.items():
        for key, row in rows.items():
            name = labels[key]
            if ":" in row.name:
                param = row.name.split(":")[1]
                name += f" {'delta' if key.startswith('adwin') else 'thr'}={param}"
            med, p90, missed = row.delay_stats()
            far = f"{row.far:.2f} ({row.alarms}/{row.events / 1e6:g}M)"
            print(f"{ctr:>5} | {name:<38} | {far:>22} | {med:>12} | {p90:>9} | {missed:>6}")
        recal_med = float(np.median(rows["recal"].delays))
        for key in ("adwin_def", "adwin_tuned"):
            ratio = float(np.median(rows[key].delays)) / recal_med
            print(f"{ctr:>5} | ratio median delay {labels[key]} / recal = {ratio:.1f}")
        print("-" * len(header))
    print(
        f"recal CalibrationCusum.update (scalar path): {scalar_throughput():,.0f} events/s; "
        f"total runtime {time.perf_counter() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
