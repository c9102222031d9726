"""Per-stage breakdown of a `recal replay` run, from py-spy samples (µs per input line).

Runs `recal replay` under `py-spy record --format raw` (py-spy is a dev dependency), then
charges every sample to the innermost frame that names a pipeline stage (decode, join, score
shift, detectors, policy, posteriors, encode/write), so nested work lands where it is spent:
a calibrator fit inside the policy counts as policy, a CUSUM step inside the monitor's label
path as detectors.

    .venv/bin/python bench/profile_stages.py                 # 200k impressions
    .venv/bin/python bench/profile_stages.py --events 1000000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import cached_stream, machine_line
from worker.sim.scenario import Scenario

# (stage, file fragment, function or None): the innermost matching frame decides.
RULES: list[tuple[str, str, str | None]] = [
    ("decode", "core/codec/input_decoder.py", None),
    ("join", "core/join/", None),
    ("policy", "core/policy/", None),
    ("posteriors", "core/posteriors/", None),
    ("score shift", "core/drift/score_shift.py", None),
    ("score shift", "core/pipeline/", "on_impression"),
    ("score shift", "core/pipeline/", "_shift"),
    ("score shift", "core/pipeline/", "_score_shift"),
    ("detectors", "core/pipeline/", "_detect"),
    ("detectors", "core/pipeline/", "_labelled"),
    ("detectors", "core/pipeline/", "_observe_labels"),
    ("detectors", "core/drift/", None),
    ("alerts", "core/alerts/", None),
    ("encode/write", "worker/replay.py", "write"),
    ("encode/write", "core/records/", "to_dict"),
    ("encode/write", "worker/replay.py", "_write_outputs"),
    ("pipeline loop", "core/pipeline/pipeline.py", None),
    ("pipeline loop", "core/pipeline/outputs.py", None),
    ("monitor other", "core/pipeline/", None),
    ("replay loop", "worker/replay.py", None),
]


def classify(stack: str) -> str:
    if "importlib._bootstrap" in stack:
        # A module import (start-up, or a lazy import such as sklearn's at the first
        # isotonic fit): a one-off cost, not the stage whose module was being imported.
        return "other (start-up, imports)"
    frames = stack.split(";")
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        for stage, fragment, func in RULES:
            if fragment in where and (func is None or name == func):
                return stage
    return "other (start-up, imports)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="impressions to generate")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    scenario = Scenario(n_events=args.events, n_users=50_000, n_items=20_000, seed=7)
    path = cached_stream(scenario, "replay")
    with open(path, "rb") as handle:
        lines = sum(1 for _ in handle)
    py_spy = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "samples.txt"
        subprocess.run(
            [str(py_spy), "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--",
             sys.executable, "-m", "worker.cli", "replay", str(path), "--out", f"{tmp}/out"],
            # Not check=True: py-spy 0.4 can end with "No child process (os error 10)" after
            # the profiled process exited and its samples were written; the samples decide.
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not raw.exists() or raw.stat().st_size == 0:
            raise SystemExit("py-spy wrote no samples; run it by hand to see why")
        counts: Counter[str] = Counter()
        for row in raw.read_text().splitlines():
            stack, _, n = row.rpartition(" ")
            counts[classify(stack)] += int(n)
    total = sum(counts.values())
    seconds = total / args.rate
    print(f"# replay per-stage profile | {machine_line()}")
    print(f"input: {path.name}, {lines:,} lines; {total:,} samples at {args.rate}/s "
          f"= {seconds:.1f} s sampled")
    print("| stage | share | µs / line |\n|---|---|---|")
    for stage, n in counts.most_common():
        print(f"| {stage} | {n / total:6.1%} | {n / args.rate / lines * 1e6:7.1f} |")
    print(f"| **total** | 100% | {seconds / lines * 1e6:7.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
