"""Replay throughput: `recal replay` over 1M generated impressions, beside a bare orjson loop.

The bare baseline reads the same file line by line and only parses each line with
`orjson.loads`; the ratio (replay / baseline, in lines per second) is the figure that matters on
a noisy machine, since both are measured in the same run, alternately, best of `--repeat`.

    .venv/bin/python bench/replay_throughput.py            # 1M impressions (~1.2M lines)
    .venv/bin/python bench/replay_throughput.py --quick    # 100k impressions
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import cached_stream, machine_line
from worker.core.pipeline import PipelineConfig
from worker.replay import run_replay
from worker.sim.scenario import Scenario


def bare_loop(path: Path) -> tuple[int, float]:
    started = time.perf_counter()
    n = 0
    loads = orjson.loads
    with open(path, "rb", buffering=1 << 20) as handle:
        for line in handle:
            loads(line)
            n += 1
    return n, time.perf_counter() - started


def replay_once(path: Path) -> tuple[int, float, float, dict[str, object]]:
    """Lines, wall seconds, CPU seconds (``process_time``: what other load on a shared
    machine inflates least) and the summary of one replay."""
    with tempfile.TemporaryDirectory() as out:
        cpu = time.process_time()
        started = time.perf_counter()
        summary = run_replay(path, Path(out), PipelineConfig())
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return summary.lines, elapsed, cpu, summary.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="impressions to generate")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs, best kept")
    parser.add_argument("--quick", action="store_true", help="100k impressions, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeat = 100_000, 1
    scenario = Scenario(n_events=args.events, n_users=50_000, n_items=20_000, seed=7)
    path = cached_stream(scenario, "replay")
    print(f"# replay throughput | {machine_line()}")
    print(f"input: {path.name} ({path.stat().st_size / 1e6:.0f} MB)")
    best_bare = best_replay = best_cpu = float("inf")
    lines = 0
    summary: dict[str, object] = {}
    for _ in range(args.repeat):
        n, t = bare_loop(path)
        best_bare = min(best_bare, t)
        lines, t, cpu, summary = replay_once(path)
        best_replay = min(best_replay, t)
        best_cpu = min(best_cpu, cpu)
    bare_rate = n / best_bare
    replay_rate = lines / best_replay
    print(f"bare orjson.loads loop : {bare_rate:12,.0f} lines/s  ({best_bare:.2f} s)")
    print(f"recal replay           : {replay_rate:12,.0f} lines/s  ({best_replay:.2f} s)")
    print(f"ratio replay / bare    : {replay_rate / bare_rate:12.3f}")
    print(f"µs per line            : {1e6 / replay_rate:12.1f}  (bare {1e6 / bare_rate:.2f})")
    print(f"replay CPU µs per line : {best_cpu / lines * 1e6:12.1f}  (process_time)")
    print(f"feedback {summary['feedback']:,}  dead letters {summary['dead_letters_total']:,}  "
          f"calibrators {summary['calibrators_total']:,}  peak RSS {summary['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
