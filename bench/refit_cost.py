"""Wall cost of the recalibration policy's refits during a replay (DESIGN §5: a refit from
sketches must not grow with traffic; issue 8 caps it at 20 ms).

Replays a generated stream through `recal replay`'s code with the policy's refit entry
points timed (a wrapper around `RecalibrationPolicy._refit_model`, the scheduled and drift
refit of a model: its global scope, every segment and the user sync; and `_refit_scope`,
one scope's candidates, scoring and change test) and prints their distribution.

    .venv/bin/python bench/refit_cost.py                  # 200k impressions, drift at 100k
    .venv/bin/python bench/refit_cost.py --events 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import cached_stream, machine_line
from worker.core.pipeline import PipelineConfig
from worker.core.policy import RecalibrationPolicy
from worker.replay import run_replay
from worker.sim.scenario import Scenario


def timed(name: str, sink: dict[str, list[float]]) -> Callable[..., Any]:
    original = getattr(RecalibrationPolicy, name)

    def wrapper(self: RecalibrationPolicy, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            sink[name].append(time.perf_counter() - started)

    setattr(RecalibrationPolicy, name, wrapper)
    return original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="impressions to generate")
    args = parser.parse_args()
    scenario = Scenario(n_events=args.events, n_users=50_000, n_items=20_000, seed=7,
                        drift_at_event=args.events // 2, drift_temperature=1.6)
    path = cached_stream(scenario, "refit")
    sink: dict[str, list[float]] = {"_refit_model": [], "_refit_scope": []}
    originals = {name: timed(name, sink) for name in sink}
    try:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = run_replay(path, Path(out), PipelineConfig())
            total = time.perf_counter() - started
    finally:
        for name, fn in originals.items():
            setattr(RecalibrationPolicy, name, fn)
    print(f"# refit cost | {machine_line()}")
    print(f"input: {path.name}, {summary.lines:,} lines, replay {total:.1f} s; "
          f"{sum(summary.calibrators.values())} versions published")
    print("| call | n | p50 ms | p90 ms | p99 ms | max ms | share of replay |")
    print("|---|---|---|---|---|---|---|")
    for name, samples in sink.items():
        ms = np.array(samples) * 1e3
        if ms.size == 0:
            continue
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        print(f"| `{name}` | {ms.size:,} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {ms.max():.2f} | "
              f"{ms.sum() / 1e3 / total:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
