"""Kafka worker throughput: `recal worker` joining a preloaded backlog, beside a bare consumer.

One worker, one consumer group, both input topics already holding the whole stream (1M
generated impressions and their clicks by default, no malformed lines, a click rate of about
5 %), so the figure is the catch-up rate of a worker that is never starved by its producers.
Measured in the same run, on the same topics:

- *bare consume + orjson.loads*: an aiokafka consumer (fresh group, ``earliest``) reading both
  topics to their end offsets, parsing each value; events/s = messages / (last - first
  message);
- *bare consume + InputDecoder*: the same, running the worker's decoder (parse + validate,
  with the key and clock checks) on each value: the least work a join worker could do
  (both bare lines alternate ``--repeat`` times, best kept);
- *recal worker*: ``recal worker`` as a subprocess with a fresh app id; its rate comes from the
  consumer group's committed offsets (polled every 0.5 s), over the window from 10 % to 100 %
  of the input offsets (start-up and the first fetches excluded), with the worker's CPU use
  over that window (/proc). Cross-check: the feedback topic must end up with one message
  per impression and the dead-letter topic empty; the exit status is 0 only then.

The worker's rate has two phases, printed apart: while the first W + L (31 min) of event time
is read no negative matures (*fill*); after that every impression read also finalizes an
older one, and the per-user state written to the changelog with every event is at its full
size (*steady*). At the simulator's 200 impressions/s of event time the steady phase starts
after ~372k impressions: shorter runs (``--quick``) measure the fill phase only.

Event times are the simulator's (2026-01-01 on): old, so no input is ever ``future_ts`` and the
wall clock plays no part in the labels; a few *flush* impressions per partition (stamped W + L
+ 5 s after the last event) move every watermark past every deadline, so every negative
matures and the feedback count is exactly the number of impressions. The preload (generate +
produce) is timed and printed but is not the measured figure.

    .venv/bin/python bench/kafka_worker_throughput.py            # 1M impressions
    .venv/bin/python bench/kafka_worker_throughput.py --quick    # 100k impressions
    .venv/bin/python bench/kafka_worker_throughput.py --events 300000 --partitions 2
    .venv/bin/python bench/kafka_worker_throughput.py --bootstrap 127.0.0.1:9092  # own broker

``--py-spy FILE`` samples the worker with py-spy (non-blocking) over the measurement window
and writes a collapsed-stack profile (the throughput of such a run is a little lower).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import machine_line, run_on_broker  # noqa: E402
from worker.core.codec.input_decoder import InputDecoder  # noqa: E402
from worker.localkafka import TopicSpec, create_topics  # noqa: E402
from worker.runtime.topics import committed_consumer  # noqa: E402
from worker.sim.kafka_sink import FLUSH_PER_PARTITION, flush_impressions  # noqa: E402
from worker.sim.scenario import Scenario  # noqa: E402
from worker.sim.streamrec import generate  # noqa: E402

#: The worker's defaults (README): the flush impression must clear W + L.
WINDOW_MS = 1_800_000
LATENESS_MS = 60_000
POLL_S = 0.5
#: Share of the input offsets committed before the measurement window opens.
WINDOW_FROM = 0.10
SOURCES = ("impressions", "clicks")


def scenario_for(n_impressions: int) -> Scenario:
    """The replay bench's world (50k users, 20k items, 200 impressions/s of event time) with
    a click-through rate near 5 % (Beta(1, 19) user base rates) instead of 20 %."""
    return Scenario(
        n_events=n_impressions, n_users=50_000, n_items=20_000, seed=7,
        ctr_alpha=1.0, ctr_beta=19.0,
    )


# --- preload ---------------------------------------------------------------------------------


@dataclass
class Preload:
    impressions: int = 0
    clicks: int = 0
    bytes: int = 0
    generate_s: float = 0.0
    produce_s: float = 0.0
    #: Messages before the first one stamped W + L after the stream's start: from about there
    #: on, every impression also matures an older one (the join's steady state).
    fill_messages: int = 0
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(self.ends.values())


def _strip_type(obj: dict[str, Any]) -> bytes:
    # Replay lines carry "type"; the Kafka topics say it by their name.
    return orjson.dumps({k: v for k, v in obj.items() if k != "type"})


async def preload(
    bootstrap: str, topics: dict[str, str], partitions: int, scenario: Scenario
) -> Preload:
    """Produce the scenario (keyed by user_id, murmur2 partitioner as any Java producer would)
    plus one flush impression per partition; batches built by hand for speed."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    out = Preload()
    started = time.perf_counter()
    lines: list[tuple[str, bytes, bytes]] = []
    max_ts = 0
    fill_ts = scenario.start_ts_ms + WINDOW_MS + LATENESS_MS
    for ev in generate(scenario):
        if ev.kind not in ("impression", "click") or ev.obj is None or ev.key is None:
            raise AssertionError(f"unexpected line in a clean scenario: {ev.tag}")
        value = _strip_type(ev.obj)
        lines.append((ev.target + "s", ev.key.encode(), value))
        max_ts = max(max_ts, ev.obj["ts"])
        # Impressions only: the late clicks released at the very end of a short stream lie
        # beyond W as well, but they are a tail, not a steady state.
        if not out.fill_messages and ev.target == "impression" and ev.obj["ts"] >= fill_ts:
            out.fill_messages = len(lines) - 1
        if ev.target == "impression":
            out.impressions += 1
        else:
            out.clicks += 1
    flush_ts = max_ts + WINDOW_MS + LATENESS_MS + 5_000
    # Several per partition: the join's clock guard confirms a jump with three later events.
    flush = [
        ("impressions", key, value, p) for p, key, value in flush_impressions(partitions, flush_ts)
    ]
    out.generate_s = time.perf_counter() - started

    started = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_batch_size=512 * 1024,
    )
    await producer.start()
    partitioner = DefaultPartitioner()
    all_parts = list(range(partitions))
    batches: dict[tuple[str, int], Any] = {}
    pending: list[Any] = []

    async def ship(source: str, p: int) -> None:
        batch = batches.pop((source, p))
        pending.append(await producer.send_batch(batch, topics[source], partition=p))
        if len(pending) >= 64:
            await asyncio.gather(*pending)
            pending.clear()

    async def put(source: str, key: bytes, value: bytes, p: int) -> None:
        out.bytes += len(value)
        out.ends[(source, p)] = out.ends.get((source, p), 0) + 1
        batch = batches.get((source, p))
        if batch is None:
            batch = batches[(source, p)] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            await ship(source, p)
            batch = batches[(source, p)] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)

    try:
        for source, key, value in lines:
            await put(source, key, value, partitioner(key, all_parts, all_parts))
        for source, key, value, p in flush:
            await put(source, key, value, p)
        for source, p in list(batches):
            await ship(source, p)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    out.produce_s = time.perf_counter() - started
    for source in SOURCES:
        for p in all_parts:
            out.ends.setdefault((source, p), 0)
    return out


# --- bare baseline ---------------------------------------------------------------------------


async def bare_consume(
    bootstrap: str, topics: dict[str, str], ends: dict[tuple[str, int], int], decode: bool
) -> tuple[int, float, float]:
    """Read both topics to their end offsets; (messages, seconds from first to last, CPU
    seconds of this process meanwhile)."""
    from aiokafka import AIOKafkaConsumer

    source_of = {topics[s]: s for s in SOURCES}
    consumer = AIOKafkaConsumer(
        *(topics[s] for s in SOURCES), bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    dec = InputDecoder()
    handlers: dict[str, Callable[..., Any]] = {
        "impressions": dec.decode_impression, "clicks": dec.decode_click,
    }
    loads = orjson.loads
    remaining = {k: v for k, v in ends.items() if v}
    n = 0
    first = last = cpu0 = cpu1 = 0.0
    await consumer.start()
    try:
        while remaining:
            batches = await consumer.getmany(timeout_ms=1_000, max_records=10_000)
            if not batches:
                continue
            if not first:
                first = time.perf_counter()
                cpu0 = time.process_time()
            now = time.time_ns() // 1_000_000
            for tp, records in batches.items():
                source = source_of[tp.topic]
                if decode:
                    handle = handlers[source]
                    for r in records:
                        handle(r.value, r.key, now)
                else:
                    for r in records:
                        loads(r.value)
                n += len(records)
                key = (source, tp.partition)
                if records and records[-1].offset + 1 >= remaining.get(key, 0):
                    remaining.pop(key, None)
            last = time.perf_counter()
            cpu1 = time.process_time()
    finally:
        await consumer.stop()
    return n, last - first, cpu1 - cpu0


# --- the worker ------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    committed: int
    feedback: int
    dlq: int
    cpu_s: float | None = None


class Worker:
    """``recal worker`` as a subprocess, log in a file; stop it by its own pid only."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "--log-level", "INFO", "worker", *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )

    def peak_rss_mb(self) -> float | None:
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", text)
        return int(match.group(1)) / 1024 if match else None

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the worker process so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_findings(self) -> tuple[float, int]:
        """(slowest state restore in s, rebalances that took partitions away) from the log:
        the worker logs each restore's duration, and each revoke of partitions it held (a
        rebalance in the middle of the run)."""
        text = self.log_path.read_text(errors="replace")
        restores = [float(t) for t in re.findall(r"state restored \(.*?\) in ([\d.]+)s", text)]
        revokes = len(re.findall(r"partitions \[[\d, ]+\] revoked", text))
        return max(restores, default=0.0), revokes

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after ``timeout_s``; (exit code, seconds to stop)."""
        started = time.monotonic()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self._log.close()
        return self.proc.returncode, time.monotonic() - started


async def measure_worker(
    bootstrap: str, topics: dict[str, str], prefix: str, partitions: int, pre: Preload,
    data_dir: Path, log_path: Path, timeout_s: float, py_spy: Path | None, workers: int = 1,
) -> dict[str, Any]:
    """Run ``workers`` worker processes in one group over the preloaded topics until every
    input is committed and every label is out; the samples' CPU is the group's sum."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    total = pre.messages
    want_feedback = pre.impressions  # the flush impressions stay pending
    app_id = f"bench-recal-{uuid.uuid4().hex[:8]}"
    inputs = {topics[s] for s in SOURCES}
    out_tps = {
        name: [TopicPartition(topics[name], p) for p in range(partitions)]
        for name in ("feedback", "dlq")
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await probe.start()
    samples: list[Sample] = []
    result: dict[str, Any] = {"app_id": app_id}
    spy: subprocess.Popen[bytes] | None = None
    flags = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--app-id", app_id,
             "--web-port", "0", "--partitions", str(partitions)]
    group = [Worker(flags, log_path if i == 0 else log_path.with_suffix(f".{i}.log"))
             for i in range(workers)]
    worker = group[0]

    def group_cpu() -> float | None:
        times = [w.cpu_s() for w in group]
        return None if any(t is None for t in times) else sum(t for t in times if t is not None)

    started = time.monotonic()
    try:
        deadline = started + timeout_s
        last_progress = started
        last_change = (started, -1, -1)
        while True:
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            try:
                offsets = await admin.list_consumer_group_offsets(app_id)
            except GroupCoordinatorNotAvailableError:
                continue  # a fresh broker creates __consumer_offsets on the first group
            committed = sum(
                meta.offset for tp, meta in offsets.items()
                if tp.topic in inputs and meta.offset >= 0
            )
            fb_ends = await probe.end_offsets(out_tps["feedback"])
            dlq_ends = await probe.end_offsets(out_tps["dlq"])
            s = Sample(now - started, committed, sum(fb_ends.values()), sum(dlq_ends.values()),
                       group_cpu())
            samples.append(s)
            if (s.committed, s.feedback) != last_change[1:]:
                last_change = (now, s.committed, s.feedback)
            if py_spy is not None and spy is None and committed >= WINDOW_FROM * total:
                spy = start_py_spy(worker.proc.pid, py_spy)
            if now - last_progress >= 30:
                last_progress = now
                print(f"  [{s.t:6.0f} s] committed {committed:,}/{total:,}  "
                      f"feedback {s.feedback:,}/{want_feedback:,}", file=sys.stderr, flush=True)
            if committed >= total and s.feedback >= want_feedback:
                break
            for w in group:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {w.proc.returncode}\n{w.log_tail()}")
            if now > deadline or now - last_change[0] > 120:
                result["incomplete"] = (
                    f"stopped waiting at {s.t:.0f} s: committed {committed:,}/{total:,}, "
                    f"feedback {s.feedback:,}/{want_feedback:,}"
                )
                break
        if spy is not None:
            stop_py_spy(spy)
            spy = None
        rss = [w.peak_rss_mb() for w in group]
        result["peak_rss_mb"] = max((r for r in rss if r is not None), default=None)
    finally:
        if spy is not None:
            stop_py_spy(spy)
        for w in group:
            w.proc.send_signal(signal.SIGTERM)  # all at once: none waits for the others
        stops = [w.stop() for w in group]
        result["exit_code"] = next((c for c, _t in stops if c != 0), 0)
        result["stop_s"] = max(t for _c, t in stops)
        findings = [w.log_findings() for w in group]
        result["stall_s"] = max(f[0] for f in findings)
        # With several workers the first assignment is one rebalance per joining member.
        result["rebalances"] = sum(f[1] for f in findings) if workers == 1 else 0
        await probe.stop()
        await admin.close()
    result.update(rates(samples, total, pre.fill_messages))
    # End offsets count transaction markers too: the exact counts come from read_committed
    # reads of the output topics.
    result.update(
        feedback=await count_committed(bootstrap, topics["feedback"], partitions),
        dlq=await count_committed(bootstrap, topics["dlq"], partitions),
        want_feedback=want_feedback,
    )
    done_fb = next((x.t for x in samples if x.feedback >= want_feedback), None)
    result["all_feedback_t"] = done_fb
    return result


@dataclass
class Span:
    """Committed input offsets between two samples."""

    a: Sample
    b: Sample

    @property
    def seconds(self) -> float:
        return self.b.t - self.a.t

    @property
    def events(self) -> int:
        return self.b.committed - self.a.committed

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_share(self) -> float | None:
        if self.a.cpu_s is None or self.b.cpu_s is None:
            return None
        return (self.b.cpu_s - self.a.cpu_s) / self.seconds


def _span(samples: list[Sample], lo: float, hi: float) -> Span | None:
    """From the first sample committing >= lo to the first committing the most <= hi."""
    a = next((s for s in samples if s.committed >= lo), None)
    inside = [s for s in samples if s.committed <= hi]
    if a is None or not inside:
        return None
    top = max(s.committed for s in inside)
    b = next(s for s in inside if s.committed == top)
    return Span(a, b) if b.t > a.t and b.committed > a.committed else None


def rates(samples: list[Sample], total: int, fill: int) -> dict[str, Any]:
    """Input events/s from the committed offsets: from WINDOW_FROM of the input to the end
    (``overall``), and split at ``fill`` into the phase before negatives mature and after."""
    first = next((s for s in samples if s.committed > 0), None)
    top = max(s.committed for s in samples)
    lo = WINDOW_FROM * total
    return {
        "first_commit_t": first.t if first else None,
        "committed": top,
        "overall": _span(samples, lo, total),
        "fill": _span(samples, lo, fill) if fill > lo else None,
        "steady": _span(samples, max(lo, fill), total) if 0 < fill < top else None,
    }


async def count_committed(bootstrap: str, topic: str, partitions: int) -> int:
    """Committed messages in ``topic`` (read_committed, to the last stable offset)."""
    from aiokafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = committed_consumer(bootstrap, "recal-bench-reader")
    await consumer.start()
    n = 0
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        # Explicit seeks: seek_to_beginning right after assign() can lose the race with the
        # assignment's own offset reset.
        for tp, start in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, start)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batches = await consumer.getmany(timeout_ms=2_000, max_records=50_000)
            n += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    return n


async def dlq_reasons(bootstrap: str, topic: str, partitions: int) -> dict[str, int]:
    """Dead letters by reason (the topic is expected to be empty; read only when not)."""
    from aiokafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = committed_consumer(bootstrap, "recal-bench-reader")
    await consumer.start()
    reasons: dict[str, int] = {}
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, start in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, start)
        left = sum(ends.values())
        while left > 0:
            batches = await consumer.getmany(timeout_ms=2_000, max_records=10_000)
            if not batches:
                break
            for records in batches.values():
                for r in records:
                    reason = orjson.loads(r.value).get("reason", "?")
                    reasons[reason] = reasons.get(reason, 0) + 1
                left -= len(records)
    finally:
        await consumer.stop()
    return dict(sorted(reasons.items()))


def start_py_spy(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("  py-spy not found; no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--nonblocking", "--rate", "50", "--format", "raw",
         "--output", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(10)


# --- main ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, bootstrap: str, tmp: Path) -> int:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topics = {name: f"{prefix}{name}" for name in ("impressions", "clicks", "feedback", "dlq")}
    await create_topics(bootstrap, [TopicSpec(topics[n], args.partitions) for n in topics])
    eos_out = f"{prefix}eos-out"
    await create_topics(bootstrap, [TopicSpec(eos_out, args.partitions)])
    scenario = scenario_for(args.events)
    print(f"# kafka worker throughput | {machine_line()}")
    pre = await preload(bootstrap, topics, args.partitions, scenario)
    total = pre.messages
    print(
        f"input: {pre.impressions:,} impressions + {pre.clicks:,} clicks "
        f"(CTR {pre.clicks / max(pre.impressions, 1):.1%}) + "
        f"{args.partitions * FLUSH_PER_PARTITION} flush = "
        f"{total:,} messages, {pre.bytes / 1e6:.0f} MB, {args.partitions} partition(s); "
        f"broker {'given' if args.bootstrap else 'local Kafka, fresh data dir'}"
    )
    print(
        f"preload (not measured): generate {pre.generate_s:.1f} s, produce (acks=all) "
        f"{pre.produce_s:.1f} s = {total / pre.produce_s:,.0f} msgs/s"
    )
    t_loads = t_dec = cpu_dec = float("inf")
    for _ in range(args.repeat):  # alternating, best kept: the ceiling on a noisy machine
        for decode in (False, True):
            n, t, cpu = await bare_consume(bootstrap, topics, pre.ends, decode=decode)
            if n != total:
                raise RuntimeError(f"bare consumer read {n:,} messages, expected {total:,}")
            if decode:
                t_dec, cpu_dec = min(t_dec, t), min(cpu_dec, cpu)
            else:
                t_loads = min(t_loads, t)
    loads_rate, dec_rate = total / t_loads, total / t_dec
    best = f"best of {args.repeat}"
    # The bare exactly-once read-process-write loop (bench/kafka_consume_variants.py variant
    # 3: decode, one output per input, one transaction per ~100 ms) over the impressions.
    from bench.kafka_consume_variants import run_child

    eos, why = run_child("eos", bootstrap, topics["impressions"], eos_out, pre.impressions,
                         600.0, [])
    eos_rate = eos["n"] / eos["wall_s"] if eos and eos["wall_s"] > 0 else None
    print(f"bare consume + orjson.loads    : {loads_rate:10,.0f} events/s  "
          f"({t_loads:.1f} s, {best})")
    print(f"bare consume + InputDecoder    : {dec_rate:10,.0f} events/s  ({t_dec:.1f} s, {best})")

    timeout_s = args.timeout or max(600.0, total / 250)
    res = await measure_worker(
        bootstrap, topics, prefix, args.partitions, pre, tmp / "worker-data",
        tmp / "worker.log", timeout_s, args.py_spy,
    )
    if args.keep_log:
        shutil.copy(tmp / "worker.log", args.keep_log)
    overall: Span | None = res["overall"]
    if overall is None:
        print(f"recal worker                   : no rate (committed {res['committed']:,})")
    else:
        rate = overall.rate
        first_t = res["first_commit_t"]
        print(
            f"recal worker (committed offsets): {rate:10,.0f} events/s  ({overall.events:,} "
            f"events in {overall.seconds:.1f} s, {overall.a.committed / total:.0%}->"
            f"{overall.b.committed / total:.0%} of the input; first commit at {first_t:.1f} s)"
        )
        fill_share = pre.fill_messages / total
        if not pre.fill_messages:
            print("  steady phase                 :        n/a  (the stream is shorter "
                  "than W + L of event time: no negative matures before the flush)")
        for name, span, what in (
            ("fill", res["fill"], f"before negatives mature: first {fill_share:.0%} of input"),
            ("steady", res["steady"], "negatives maturing: each impression finalizes one"),
        ):
            if pre.fill_messages and span is not None:
                print(f"  {name:<6} phase                 : {span.rate:10,.0f} events/s  "
                      f"({span.events:,} events in {span.seconds:.1f} s; {what})")
        cpu_share = overall.cpu_share
        if cpu_share:
            per_cpu = rate / cpu_share
            print(f"  worker CPU over the window   : {cpu_share:10.0%} of one core = "
                  f"{per_cpu:,.0f} events per worker CPU second (bare decode: "
                  f"{total / cpu_dec:,.0f}; ratio {per_cpu * cpu_dec / total:.4f})")
        print(f"ratio recal / bare decode      : {rate / dec_rate:10.4f}")
        print(f"ratio recal / bare loads       : {rate / loads_rate:10.4f}")
        if eos_rate:
            print(f"ratio recal / bare EOS loop    : {rate / eos_rate:10.4f}  (the bare "
                  f"exactly-once read-process-write loop: {eos_rate:,.0f} events/s)")
        else:
            print(f"bare EOS loop                  : failed ({why})")
    fb_t = res["all_feedback_t"]
    print(
        f"feedback {res['feedback']:,} of {res['want_feedback']:,} impressions"
        + (f" (all in at {fb_t:.1f} s)" if fb_t is not None else " (INCOMPLETE)")
        + f"; dead letters {res['dlq']:,}"
        + (f" {await dlq_reasons(bootstrap, topics['dlq'], args.partitions)}"
           if res["dlq"] else "")
    )
    rss = res.get("peak_rss_mb")
    print(
        f"worker: peak RSS (VmHWM) {rss:,.0f} MB; " if rss else "worker: ",
        end="",
    )
    print(f"exit {res['exit_code']} {res['stop_s']:.1f} s after SIGTERM; slowest state restore "
          f"{res['stall_s']:.1f} s; rebalances {res['rebalances']}")
    if res["rebalances"]:
        print("WARNING: the worker lost its partitions during the run (a rebalance: drain and "
              "full state recovery); the figures are not a clean catch-up rate")
    if "incomplete" in res:
        print(f"WARNING: {res['incomplete']}")
    if args.py_spy:
        print(f"py-spy profile (collapsed stacks): {args.py_spy}")
    ok = (
        "incomplete" not in res and res["feedback"] == res["want_feedback"]
        and res["dlq"] == 0 and res["exit_code"] == 0 and not res["rebalances"]
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="impressions to produce")
    parser.add_argument("--partitions", type=int, default=1, help="partitions per topic")
    parser.add_argument("--quick", action="store_true", help="100k impressions")
    parser.add_argument("--repeat", type=int, default=3, help="bare consumer passes, best kept")
    parser.add_argument("--bootstrap", help="use this broker instead of a fresh local one")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds to wait for the worker (default: from the input size)")
    parser.add_argument("--py-spy", type=Path, help="write a py-spy profile of the worker here")
    parser.add_argument("--keep-log", type=Path, help="copy the worker's log here")
    args = parser.parse_args()
    if args.quick:
        args.events = 100_000
    if args.events < 1 or args.partitions < 1 or args.repeat < 1:
        parser.error("--events, --partitions and --repeat must be >= 1")
    return run_on_broker(lambda bootstrap, tmp: run(args, bootstrap, tmp), args.bootstrap,
                         "recal-bench-")

if __name__ == "__main__":
    sys.exit(main())
