"""Join state export: what `AttributionJoin.export_user` costs the Kafka worker per event.

The worker writes every user touched by a processing step to the state table's changelog
(``JoinRouter._writes``: ``export_user`` then ``orjson.dumps``). This drives one join the way
the worker does, over the Kafka bench's generated stream (decoded before timing), and times
the join calls, the exports and their serialisation apart. Every exported record is hashed
in order, so two code versions that print the same digest wrote byte-identical state.

    .venv/bin/python bench/join_export.py                    # 500k impressions, batch 1
    .venv/bin/python bench/join_export.py --events 100000 --batch 64
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine_line
from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import InvalidInputError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.records.click import Click
from worker.core.records.impression import Impression
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate


def scenario_for(n_impressions: int) -> Scenario:
    # The Kafka worker bench's world (bench/kafka_worker_throughput.py).
    return Scenario(
        n_events=n_impressions, n_users=50_000, n_items=20_000, seed=7,
        ctr_alpha=1.0, ctr_beta=19.0,
    )


def decoded(n_impressions: int) -> list[Impression | Click]:
    decoder = InputDecoder()
    out: list[Impression | Click] = []
    for ev in generate(scenario_for(n_impressions)):
        if ev.kind == "impression":
            out.append(decoder.decode_impression(ev.raw))
        elif ev.kind == "click":
            out.append(decoder.decode_click(ev.raw))
    return out


def run(events: list[Impression | Click], batch: int) -> dict[str, float | int | str]:
    join = AttributionJoin()
    digest = hashlib.sha256()
    sizes: list[int] = []
    t_join = t_export = t_dumps = 0.0
    clock = time.perf_counter
    exports = 0
    for start in range(0, len(events), batch):
        t0 = clock()
        for obj in events[start:start + batch]:
            try:
                if isinstance(obj, Impression):
                    join.add_impression(obj, wall_ms=0)
                else:
                    join.add_click(obj, ref=None, wall_ms=0)
            except InvalidInputError:
                pass
        t1 = clock()
        states = [join.export_user(uid) for uid in sorted(join.dirty_users())]
        t2 = clock()
        blobs = [orjson.dumps(state) for state in states]
        t3 = clock()
        t_join += t1 - t0
        t_export += t2 - t1
        t_dumps += t3 - t2
        exports += len(states)
        for blob in blobs:
            digest.update(blob)
            sizes.append(len(blob))
    return {
        "events": len(events),
        "exports": exports,
        "join_s": t_join,
        "export_s": t_export,
        "dumps_s": t_dumps,
        "median_bytes": statistics.median(sizes) if sizes else 0,
        "sha256": digest.hexdigest()[:16],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="impressions to generate")
    parser.add_argument("--batch", type=int, default=1, help="events per export round")
    parser.add_argument("--repeat", type=int, default=3, help="runs, best kept")
    args = parser.parse_args()
    print(f"# join export | {machine_line()}")
    events = decoded(args.events)
    print(f"{len(events)} events decoded; batch {args.batch}")
    best: dict[str, float | int | str] | None = None
    for _ in range(args.repeat):
        res = run(events, args.batch)
        if best is None or float(res["export_s"]) < float(best["export_s"]):
            best = res
        assert res["sha256"] == best["sha256"]
    assert best is not None
    n = int(best["events"])
    total = float(best["join_s"]) + float(best["export_s"]) + float(best["dumps_s"])
    print(f"exports: {best['exports']} user records, median {best['median_bytes']:.0f} bytes, "
          f"sha256 {best['sha256']}")
    print(f"join   : {float(best['join_s']):7.2f} s  ({n / float(best['join_s']):>10,.0f} ev/s)")
    print(f"export : {float(best['export_s']):7.2f} s  "
          f"({1e6 * float(best['export_s']) / int(best['exports']):.2f} us/record)")
    print(f"dumps  : {float(best['dumps_s']):7.2f} s  "
          f"({1e6 * float(best['dumps_s']) / int(best['exports']):.2f} us/record)")
    print(f"total  : {total:7.2f} s  ({n / total:>10,.0f} ev/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
