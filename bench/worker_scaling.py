"""Kafka worker scaling: one worker vs a group of N on the same partitioned backlog.

Issue 9's target: two workers on 2+ partitions process >= 1.6x the input events/s of one.
Each measurement gets its own topic prefix with the same preloaded stream (a group's state
and input positions live under its prefix, so a second group on the same topics would resume
where the first stopped); the rate is the group's committed input offsets from 10 % to 100 %
of the input (``bench/kafka_worker_throughput.py``'s ``measure_worker``, whose docstring
describes the window). One fresh local broker serves every run.

    .venv/bin/python bench/worker_scaling.py                      # 200k impressions, 2 partitions
    .venv/bin/python bench/worker_scaling.py --events 100000 --partitions 4 --workers 1,2,4

On a machine with C cores the group shares them with the broker and this script: the ratio
is bounded by the spare cores, which the output states (load average before each run).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import machine_line, run_on_broker  # noqa: E402
from bench.kafka_worker_throughput import measure_worker, preload, scenario_for  # noqa: E402
from worker.localkafka import TopicSpec, create_topics  # noqa: E402


async def one_run(
    bootstrap: str, events: int, partitions: int, workers: int, tmp: Path
) -> dict[str, Any]:
    prefix = f"scale-{uuid.uuid4().hex[:8]}."
    topics = {name: f"{prefix}{name}" for name in ("impressions", "clicks", "feedback", "dlq")}
    await create_topics(bootstrap, [TopicSpec(topics[n], partitions) for n in topics])
    pre = await preload(bootstrap, topics, partitions, scenario_for(events))
    load = os.getloadavg()[0]
    res = await measure_worker(
        bootstrap, topics, prefix, partitions, pre, tmp / f"data-{workers}",
        tmp / f"worker-{workers}.log", max(600.0, pre.messages / 200), None, workers=workers,
    )
    res["messages"] = pre.messages
    res["load_before"] = load
    return res


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> int:
    counts = [int(w) for w in args.workers.split(",")]
    print(f"# kafka worker scaling | {machine_line()}")
    print(f"input: {args.events:,} impressions and their clicks, {args.partitions} partitions; "
          f"groups of {', '.join(map(str, counts))} worker(s), each on its own copy")
    rates: dict[int, float] = {}
    ok = True
    for n in counts:
        res = await one_run(bootstrap, args.events, args.partitions, n, tmp)
        span = res["overall"]
        complete = res["feedback"] == res["want_feedback"] and res["exit_code"] == 0
        ok = ok and complete and span is not None
        if span is None:
            print(f"{n} worker(s): no rate ({res.get('incomplete', 'no span')})")
            continue
        rates[n] = span.rate
        cpu = span.cpu_share
        print(
            f"{n} worker(s): {span.rate:8,.0f} events/s ({span.events:,} events in "
            f"{span.seconds:.1f} s; group CPU {cpu:.0%} of one core"
            + (f" = {span.rate / cpu:,.0f} events per CPU second" if cpu else "")
            + f"; load before {res['load_before']:.1f}); feedback {res['feedback']:,}/"
            f"{res['want_feedback']:,}, dead letters {res['dlq']}, exit {res['exit_code']}"
        )
    base = rates.get(1)
    if base:
        for n, rate in sorted(rates.items()):
            if n != 1:
                print(f"ratio {n} workers / 1 worker: {rate / base:.2f}  (issue 9 target for 2: "
                      ">= 1.6)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="impressions per run")
    parser.add_argument("--partitions", type=int, default=2, help="partitions per topic")
    parser.add_argument("--workers", default="1,2", help="group sizes to run, comma-separated")
    parser.add_argument("--bootstrap", help="use this broker instead of a fresh local one")
    args = parser.parse_args()
    return run_on_broker(lambda bootstrap, tmp: run(args, bootstrap, tmp), args.bootstrap,
                         "recal-scaling-")

if __name__ == "__main__":
    sys.exit(main())
