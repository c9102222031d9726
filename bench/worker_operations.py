"""Kafka worker operations: latency under load, recovery after SIGKILL, state size, restore.

Issue 9's operational figures, on one fresh local broker, in one run:

1. **Maximum rate**: one worker catching up on a preloaded backlog (``--events`` impressions
   and their clicks, ``--partitions`` partitions), committed input offsets from 10 % to 100 %
   (``bench/kafka_worker_throughput.py``'s ``measure_worker``).
2. **State and restore**: the partition state that run left in the compacted changelog
   (``<prefix>state``, latest record per key, read ``read_committed``): bytes per active user
   (users with a ``join:``, ``post:`` or ``puser:`` record); then a new worker of the same
   group restores it, and its log gives records and seconds per partition (records/s).
3. **Click -> feedback latency at 70 % of the maximum rate**: two workers on a live stream
   whose event times follow the wall clock (clicks 0.5-3 s after their impression), paced at
   ``--load`` x the maximum rate; for every click, the time from its send to the moment this
   script's ``read_committed`` consumer receives its positive feedback (p50/p90/p99/max).
4. **Recovery after SIGKILL**: during that stream one worker is SIGKILLed; the time until the
   survivor publishes feedback on each partition the dead worker held. The survivor takes
   them over when the broker expires the dead member's session (``--session-timeout-s``), so
   that setting bounds the figure from below.

    .venv/bin/python bench/worker_operations.py                   # 100k impressions backlog
    .venv/bin/python bench/worker_operations.py --events 30000 --live-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import machine_line, run_on_broker  # noqa: E402
from bench.kafka_worker_throughput import (  # noqa: E402
    Worker,
    measure_worker,
    preload,
    scenario_for,
)
from worker.localkafka import TopicSpec, create_topics  # noqa: E402
from worker.runtime.topics import committed_consumer  # noqa: E402
from worker.sim.scenario import Scenario  # noqa: E402
from worker.sim.streamrec import generate  # noqa: E402

TOPICS = ("impressions", "clicks", "feedback", "dlq")


def topic_map(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}{name}" for name in (*TOPICS, "state")}


def worker_flags(bootstrap: str, prefix: str, app_id: str, partitions: int,
                 session_timeout_s: float) -> list[str]:
    return ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--app-id", app_id,
            "--web-port", "0", "--partitions", str(partitions),
            "--session-timeout-s", str(session_timeout_s)]


# --- 2. state size and restore ----------------------------------------------------------------


async def state_size(bootstrap: str, topic: str, partitions: int) -> dict[str, Any]:
    """Latest record per key of the changelog: bytes (key + value) by record kind, users."""
    from aiokafka import TopicPartition

    consumer = committed_consumer(bootstrap, "recal-bench-state")
    await consumer.start()
    latest: dict[tuple[int, bytes], int] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
        ends = await consumer.end_offsets(tps)
        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for rec in records:
                    key = (tp.partition, rec.key or b"")
                    if rec.value is None:
                        latest.pop(key, None)
                    else:
                        latest[key] = len(rec.key or b"") + len(rec.value)
    finally:
        await consumer.stop()
    by_kind: dict[str, int] = {}
    for (_p, key), size in latest.items():
        kind = key.decode().split(":", 1)[0]
        by_kind[kind] = by_kind.get(kind, 0) + size
    # A user's state is its join record (pending labels; gone once all matured), its
    # posterior pairs (post:) and its tier record (puser:).
    users = len({key.split(b":", 1)[1] for (_p, key) in latest
                 if key.startswith((b"join:", b"post:", b"puser:"))})
    return {"records": len(latest), "bytes": sum(latest.values()), "users": users,
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))}


def restore_lines(log_path: Path) -> list[tuple[int, int, float]]:
    """(partition, records, seconds) of every state restore the worker logged."""
    text = log_path.read_text(errors="replace")
    return [(int(p), int(n), float(s)) for p, n, s in re.findall(
        r"partition (\d+): state restored \((\d+) records, .*?\) in ([\d.]+)s", text)]


# --- 3/4. live stream: latency and SIGKILL recovery ---------------------------------------------


class FeedbackWatch:
    """Receives feedback read_committed; the receive time of each positive label, and the
    receive times per partition (for the recovery figure)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.positive_at: dict[str, float] = {}
        self.arrivals: dict[int, list[float]] = {}
        self.count = 0

    async def run(self, stop: asyncio.Event) -> None:
        consumer = committed_consumer(self.bootstrap, "recal-bench-latency", self.topic)
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=50)
                now = time.monotonic()
                for tp, records in batches.items():
                    self.arrivals.setdefault(tp.partition, []).append(now)
                    for rec in records:
                        self.count += 1
                        fb = orjson.loads(rec.value)
                        if fb["label"] == 1:
                            self.positive_at.setdefault(fb["impression_id"], now)
        finally:
            await consumer.stop()


async def live_stream(
    bootstrap: str, topics: dict[str, str], rate: float, seconds: float,
    on_tick: Any = None,
) -> dict[str, float]:
    """Send a stream paced at ``rate`` input events/s with event times = the wall clock;
    clicks are sent at their own event time. Returns impression_id -> click send time."""
    from aiokafka import AIOKafkaProducer

    n = max(1, int(rate * seconds * 0.93))  # ~7 % of the inputs are clicks
    now_ms = int(time.time() * 1000)
    scenario = Scenario(n_events=n, n_users=20_000, n_items=5_000, seed=11, ctr_alpha=1.0,
                        ctr_beta=11.0, events_per_second=rate * 0.93, start_ts_ms=now_ms,
                        click_delay_mean_ms=1_000.0, late_click_share=0.0)
    lines = []
    for ev in generate(scenario):
        obj = {k: v for k, v in (ev.obj or {}).items() if k != "type"}
        lines.append((obj["ts"], ev.target, (ev.key or "").encode(), orjson.dumps(obj),
                      obj.get("impression_id")))
    lines.sort(key=lambda line: line[0])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent_at: dict[str, float] = {}
    started_wall = time.time() * 1000
    offset_ms = started_wall - now_ms
    try:
        for ts, target, key, value, imp_id in lines:
            delay = (ts + offset_ms - time.time() * 1000) / 1000
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(topics[target + "s"], value, key=key)
            if target == "click":
                sent_at[imp_id] = time.monotonic()
            if on_tick is not None:
                on_tick()
        await producer.flush()
    finally:
        await producer.stop()
    return sent_at


def assigned_partitions(log_path: Path) -> set[int]:
    """Partitions the worker held last (its latest restores after its latest revoke)."""
    text = log_path.read_text(errors="replace")
    held: set[int] = set()
    for line in text.splitlines():
        m = re.search(r"partitions \[([\d, ]*)\] revoked", line)
        if m:
            held -= {int(p) for p in m.group(1).split(",") if p.strip()}
        m = re.search(r"partition (\d+): state restored", line)
        if m:
            held.add(int(m.group(1)))
    return held


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> int:
    print(f"# kafka worker operations | {machine_line()}")
    p = args.partitions
    # 1. maximum rate on a backlog.
    prefix = f"ops-{uuid.uuid4().hex[:8]}."
    topics = topic_map(prefix)
    await create_topics(bootstrap, [TopicSpec(topics[n], p) for n in TOPICS])
    pre = await preload(bootstrap, topics, p, scenario_for(args.events))
    res = await measure_worker(bootstrap, topics, prefix, p, pre, tmp, tmp / "catchup.log",
                               max(600.0, pre.messages / 200), None)
    span = res["overall"]
    if span is None or res["feedback"] != res["want_feedback"]:
        print(f"catch-up run incomplete: {res}")
        return 1
    max_rate = span.rate
    print(f"1. maximum rate (one worker, {pre.messages:,} preloaded messages, {p} partitions): "
          f"{max_rate:,.0f} events/s")
    # 2. state size and restore (a new member of the catch-up run's group restores it).
    size = await state_size(bootstrap, topics["state"], p)
    print(f"2. state: {size['records']:,} live records, {size['bytes'] / 1e6:.1f} MB for "
          f"{size['users']:,} users = {size['bytes'] / max(size['users'], 1):,.0f} bytes per "
          f"active user (by record kind: "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in list(size["by_kind"].items())[:5])
          + ")")
    restorer = Worker(worker_flags(bootstrap, prefix, res["app_id"], p, args.session_timeout_s),
                      tmp / "restore.log")
    deadline = time.monotonic() + 300
    while len(restore_lines(restorer.log_path)) < p and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    restorer.stop()
    restores = restore_lines(restorer.log_path)
    n_rec = sum(r[1] for r in restores)
    secs = sum(r[2] for r in restores)
    print(f"   restore: {n_rec:,} records in {secs:.2f} s over {len(restores)} partition(s) = "
          f"{n_rec / secs if secs else float('nan'):,.0f} records/s (read from the changelog "
          "and rebuilt)")

    # 3/4. live stream on two workers: latency at --load x max, then a SIGKILL.
    rate = args.load * max_rate
    prefix = f"ops-{uuid.uuid4().hex[:8]}."
    topics = topic_map(prefix)
    await create_topics(bootstrap, [TopicSpec(topics[n], p) for n in TOPICS])
    app_id = f"ops-live-{uuid.uuid4().hex[:8]}"
    flags = worker_flags(bootstrap, prefix, app_id, p, args.session_timeout_s)
    group = [Worker(flags, tmp / f"live-{i}.log") for i in range(2)]
    watch = FeedbackWatch(bootstrap, topics["feedback"])
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(watch.run(stop))
    await asyncio.sleep(args.warmup_s)  # both members joined and restored (empty) state
    kill_at: float | None = None
    victim_parts: set[int] = set()
    started = time.monotonic()

    def maybe_kill() -> None:
        nonlocal kill_at, victim_parts
        if kill_at is None and time.monotonic() - started >= args.live_seconds * 0.6:
            victim_parts = assigned_partitions(group[1].log_path)
            os.kill(group[1].proc.pid, signal.SIGKILL)
            kill_at = time.monotonic()

    try:
        sent_at = await live_stream(bootstrap, topics, rate, args.live_seconds, maybe_kill)
        await asyncio.sleep(max(5.0, args.session_timeout_s + 10.0))
    finally:
        stop.set()
        await watcher
        group[0].stop()
        group[1].stop()
    lat = []
    pre_kill = []
    for imp_id, t_sent in sent_at.items():
        got = watch.positive_at.get(imp_id)
        if got is None:
            continue
        lat.append(got - t_sent)
        if kill_at is not None and t_sent < kill_at - 1.0:
            pre_kill.append(got - t_sent)
    missing = len(sent_at) - len(lat)
    if pre_kill:
        q = np.percentile(np.array(pre_kill) * 1000, [50, 90, 99])
        print(f"3. click -> feedback latency at {args.load:.0%} of the maximum ({rate:,.0f} "
              f"events/s, 2 workers, before the SIGKILL): p50 {q[0]:.0f} ms, p90 {q[1]:.0f} ms, "
              f"p99 {q[2]:.0f} ms, max {max(pre_kill) * 1000:.0f} ms over {len(pre_kill):,} "
              f"clicks (issue 9 target: p99 <= 500 ms)")
    else:
        print("3. no click labelled before the SIGKILL: no latency figure")
    print(f"   clicks sent {len(sent_at):,}, labelled {len(lat):,}, not labelled {missing:,}")
    if kill_at is not None:
        gaps = []
        for part in sorted(victim_parts):
            after = [t for t in watch.arrivals.get(part, []) if t > kill_at]
            gaps.append((part, (after[0] - kill_at) if after else None))
        shown = ", ".join(f"partition {q}: " + (f"{g:.1f} s" if g is not None else "none")
                          for q, g in gaps)
        print(f"4. SIGKILL -> the survivor's first feedback on the dead worker's partitions "
              f"(session timeout {args.session_timeout_s:g} s): {shown or 'the victim held none'}"
              " (issue 9 target: <= 20 s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="backlog impressions")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--load", type=float, default=0.7, help="live rate / maximum rate")
    parser.add_argument("--live-seconds", type=float, default=40.0)
    parser.add_argument("--warmup-s", type=float, default=15.0)
    parser.add_argument("--session-timeout-s", type=float, default=10.0)
    parser.add_argument("--bootstrap", help="use this broker instead of a fresh local one")
    args = parser.parse_args()
    return run_on_broker(lambda bootstrap, tmp: run(args, bootstrap, tmp), args.bootstrap,
                         "recal-ops-")

if __name__ == "__main__":
    sys.exit(main())
