"""Kafka consume variants: why the worker's hot path is aiokafka batches, not faust (issue 9).

Reproduces, on the project's own local broker (DESIGN §10, a fresh data dir on free ports;
or ``--bootstrap``), the figures of DESIGN §9 and prints every variant side by side in one
run. One input topic with one partition holds N preloaded ~200-byte JSON messages (500k by
default, 100k with ``--quick``), produced before anything is measured (the preload time is
printed, not measured). Every variant then reads that topic from ``earliest`` to its end
offset with a fresh consumer group, in its own subprocess (a fresh interpreter, so one
variant's runtime, threads or garbage never weigh on another's):

1. *bare aiokafka*: ``getmany`` (10k records max) + ``orjson.loads`` per value; no output,
   no commit. The ceiling of a Python consumer.
2. *aiokafka read-process-write, at-least-once*: decode each value, re-encode it and
   ``await producer.send`` it to an output topic (one output per input, ``acks="all"``);
   per ``getmany`` batch, ``producer.flush()`` then ``consumer.commit()``.
3. *aiokafka read-process-write, exactly-once*: the same with a transactional producer; one
   transaction per ~100 ms of batches holds the outputs and the input offsets
   (``send_offsets_to_transaction``); consumer ``isolation_level="read_committed"``.
4. *Quix Streams pass-through, exactly-once*: an ``Application`` with
   ``processing_guarantee="exactly-once"`` and ``commit_interval=0.1`` (a checkpoint, i.e. a
   transaction, per ~100 ms as in 3), a ``StreamingDataFrame`` that deserializes the JSON
   value and writes it unchanged to an output topic (``to_topic``). Skipped, with the reason
   printed, when ``quixstreams`` is not importable (it is in the optional group ``bench``).
5. *faust-streaming agent, per event*: an agent that only decodes (``orjson.loads``) each
   raw value and acks it (faust's automatic ack as the ``async for`` moves on); in-memory
   store, web server off.
6. *faust-streaming agent, take(1000)*: the same over ``stream.take(1000, within=1.0)``.

For each: events/s = messages / wall seconds between the first and the last message seen by
the variant; CPU µs per event = the variant process's CPU time (user + system, all threads:
librdkafka's for Quix, faust's) over that same window / messages. The aiokafka variants read
``time.process_time()``; faust and Quix read ``/proc/<pid>/stat`` of their own process at
the first and the last message (the same quantity; start-up, imports and the group join are
outside the window for every variant). Ratios are given against variants 1 and 3. With
``--repeat K`` the variants run K times in alternation and each keeps its best rate and its
lowest CPU per event.

Versions this was measured with (Python 3.11.7): aiokafka 0.14.0, faust-streaming 0.15.3,
mode-streaming 0.7.1, orjson 3.13.0, quixstreams 3.28.1 (confluent-kafka 2.12.2,
librdkafka bundled), Kafka 3.9.1. The script prints the versions it actually ran with.

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e '.[dev,bench]'
    .venv-bench/bin/python bench/kafka_consume_variants.py --quick   # 100k messages
    .venv-bench/bin/python bench/kafka_consume_variants.py           # 500k messages
    .venv-bench/bin/python bench/kafka_consume_variants.py --repeat 3 --only bare,eos
    .venv-bench/bin/python bench/kafka_consume_variants.py --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import machine_line  # noqa: E402
from worker.localkafka import LocalKafka, TopicSpec, create_topics  # noqa: E402

#: Variant keys in run order, with the label printed in the table.
VARIANTS: dict[str, str] = {
    "bare": "(1) aiokafka getmany + orjson.loads",
    "alo": "(2) aiokafka read-process-write, at-least-once",
    "eos": "(3) aiokafka read-process-write, exactly-once",
    "quix": "(4) Quix Streams pass-through, exactly-once",
    "faust": "(5) faust agent, decode + ack per event",
    "faust_take": "(6) faust agent, stream.take(1000)",
}
#: Variants that write one output per input (each gets its own output topic).
WRITERS = ("alo", "eos", "quix")
#: Seconds of batches per transaction (variant 3) and per Quix checkpoint (variant 4).
TXN_EVERY_S = 0.1
MAX_RECORDS = 10_000
VERSIONED = ("aiokafka", "faust-streaming", "mode-streaming", "orjson", "quixstreams",
             "confluent-kafka")


# --- measuring inside a variant's process ----------------------------------------------------


def proc_cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Counts messages and stamps wall and CPU time at the first and the last one."""

    def __init__(self, total: int, cpu: Callable[[], float], result: Path) -> None:
        self.total = total
        self.result = result
        self.cpu = cpu
        self.n = 0
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = 0.0

    def start(self) -> None:
        if not self.n:
            self.t0 = time.perf_counter()
            self.cpu0 = self.cpu()

    def add(self, k: int) -> bool:
        """Count ``k`` more messages; True once all ``total`` have been seen."""
        self.n += k
        self.t1 = time.perf_counter()
        if self.n < self.total:
            return False
        # Only at the end: reading /proc/self/stat costs tens of µs, a per-event variant
        # that read it with every message would be charged for it.
        self.cpu1 = self.cpu()
        return True

    def report(self, **extra: Any) -> None:
        result = {"n": self.n, "wall_s": self.t1 - self.t0, "cpu_s": self.cpu1 - self.cpu0,
                  **extra}
        # A file, not stdout: faust's worker redirects stdout into its logging.
        partial = self.result.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(result))
        partial.rename(self.result)


# --- variants 1-3: aiokafka ------------------------------------------------------------------


async def run_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    group = f"bench-{args.child}-{uuid.uuid4().hex[:8]}"
    exactly_once = args.child == "eos"
    consumer = AIOKafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level="read_committed" if exactly_once else "read_uncommitted",
    )
    producer: AIOKafkaProducer | None = None
    if args.child == "alo":
        producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    elif exactly_once:
        producer = AIOKafkaProducer(
            bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True,
            transactional_id=f"{group}-txn",
        )
    meter = Meter(args.messages, time.process_time, args.result)
    loads, dumps = orjson.loads, orjson.dumps
    out = args.out_topic
    transactions = 0
    await consumer.start()
    if producer is not None:
        await producer.start()
    try:
        done = False
        in_txn = False
        txn_started = 0.0
        offsets: dict[Any, int] = {}
        while not done:
            batches = await consumer.getmany(timeout_ms=1_000, max_records=MAX_RECORDS)
            if not batches:
                continue
            meter.start()
            if producer is None:  # (1) bare
                for records in batches.values():
                    for r in records:
                        loads(r.value)
                    done = meter.add(len(records))
                continue
            if exactly_once and not in_txn:
                await producer.begin_transaction()
                in_txn, txn_started = True, time.perf_counter()
            for tp, records in batches.items():
                for r in records:
                    await producer.send(out, dumps(loads(r.value)), key=r.key)
                offsets[tp] = records[-1].offset + 1
                done = meter.add(len(records))
            if not exactly_once:  # (2) at-least-once: outputs durable, then the offsets
                await producer.flush()
                await consumer.commit()
                meter.add(0)
            elif done or time.perf_counter() - txn_started >= TXN_EVERY_S:  # (3)
                await producer.send_offsets_to_transaction(offsets, group)
                await producer.commit_transaction()
                in_txn = False
                transactions += 1
                meter.add(0)
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    meter.report(transactions=transactions)


# --- variant 4: Quix Streams -----------------------------------------------------------------


def run_quix(args: argparse.Namespace, state_dir: str) -> None:
    from quixstreams import Application

    meter = Meter(args.messages, proc_cpu_s, args.result)
    app = Application(
        broker_address=args.bootstrap, consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", processing_guarantee="exactly-once",
        commit_interval=args.quix_commit_interval, loglevel="WARNING", use_changelog_topics=False,
        state_dir=state_dir, auto_create_topics=False,
    )
    source = app.topic(args.topic, key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(args.out_topic, key_serializer="bytes", value_serializer="json")

    def count(value: Any) -> None:
        meter.start()
        if meter.add(1):
            meter.report()
            app.stop()

    sdf = app.dataframe(source)
    sdf = sdf.update(count)
    sdf.to_topic(sink)
    app.run()


# --- variants 5-6: faust ---------------------------------------------------------------------


def run_faust(args: argparse.Namespace, data_dir: str) -> None:
    import faust

    meter = Meter(args.messages, proc_cpu_s, args.result)
    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:8]}", broker=f"kafka://{args.bootstrap}",
        store="memory://", web_enabled=False, datadir=data_dir, topic_partitions=1,
        topic_replication_factor=1, consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    loads = orjson.loads

    def finish() -> None:
        meter.report()
        # The figure is out; faust's own shutdown (minutes of draining at worst) is not.
        shutil.rmtree(data_dir, ignore_errors=True)
        os._exit(0)

    if args.child == "faust_take":
        @app.agent(topic)
        async def take_agent(stream: Any) -> None:
            async for values in stream.take(1000, within=1.0):
                meter.start()
                for v in values:
                    loads(v)
                if meter.add(len(values)):
                    finish()
    else:
        @app.agent(topic)
        async def event_agent(stream: Any) -> None:
            async for value in stream:
                meter.start()
                loads(value)
                if meter.add(1):
                    finish()

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def child_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix=f"recal-bench-{args.child}-") as tmp:
        if args.child in ("bare", "alo", "eos"):
            asyncio.run(run_aiokafka(args))
        elif args.child == "quix":
            run_quix(args, tmp)
        else:
            run_faust(args, tmp)
    return 0


# --- the parent: preload, run each variant as a subprocess, print the table -----------------


def make_value(i: int) -> bytes:
    """One ~200-byte JSON message, an impression-like record."""
    return orjson.dumps({
        "impression_id": f"imp-{i:010d}", "user_id": f"u-{i * 7919 % 50_000:06d}",
        "item_id": f"i-{i * 104_729 % 20_000:05d}", "model": "ctr-v7", "segment": "mobile-web",
        "ts": 1_767_225_600_000 + i * 5, "score": (i * 2_654_435_761 % 1_000_003) / 1_000_003,
        "features": {"pos": i % 10, "hour": i // 720_000 % 24, "country": "de"},
    })


async def preload(bootstrap: str, topic: str, n: int) -> tuple[int, float]:
    """Produce ``n`` messages to partition 0 of ``topic``; (bytes, seconds). Batches are built
    by hand for speed (this part is not measured)."""
    from aiokafka import AIOKafkaProducer

    started = time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=512 * 1024)
    await producer.start()
    size = 0
    pending: list[Any] = []
    try:
        batch = producer.create_batch()
        for i in range(n):
            key = f"u-{i * 7919 % 50_000:06d}".encode()
            value = make_value(i)
            size += len(value)
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=0))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending.clear()
        pending.append(await producer.send_batch(batch, topic, partition=0))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return size, time.perf_counter() - started


@dataclass
class Row:
    key: str
    rate: float = 0.0
    cpu_us: float = float("inf")
    runs: int = 0
    skipped: str = ""
    note: str = ""


def run_child(
    variant: str, bootstrap: str, topic: str, out_topic: str, n: int, timeout_s: float,
    extra: list[str],
) -> tuple[dict[str, Any] | None, str]:
    """One variant in its own process; (its result, or None and the reason)."""
    fd, name = tempfile.mkstemp(prefix=f"recal-bench-{variant}-", suffix=".json")
    os.close(fd)
    result = Path(name)
    result.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
           "--bootstrap", bootstrap, "--topic", topic, "--out-topic", out_topic,
           "--messages", str(n), "--result", str(result), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=REPO, env=env, check=False)
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills its own child
        tail = (exc.stderr or b"")
        text = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return None, f"timed out after {timeout_s:.0f} s; stderr tail: {text[-300:]!r}"
    if result.exists():
        try:
            return orjson.loads(result.read_bytes()), ""
        finally:
            result.unlink()
    last = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return None, f"exit {proc.returncode}, no result; stderr tail: {last}"


def versions() -> str:
    parts = []
    for name in VERSIONED:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def quix_missing() -> str:
    """Why variant 4 cannot run here, or "" when it can."""
    try:
        with warnings.catch_warnings():  # its dependencies' deprecation notices
            warnings.simplefilter("ignore")
            import quixstreams  # noqa: F401
    except Exception as exc:  # any import failure is a reason to skip, printed as is
        return f"quixstreams not importable ({type(exc).__name__}: {exc}); " \
               "install the optional group: pip install -e '.[bench]'"
    return ""


async def setup(bootstrap: str, topics: dict[str, str], n: int) -> tuple[int, float]:
    await create_topics(bootstrap, [TopicSpec(name, 1) for name in topics.values()])
    return await preload(bootstrap, topics["in"], n)


def fmt_ratio(x: float, ref: Row | None) -> str:
    if ref is None or not ref.rate or not x:
        return "n/a"
    return f"{x / ref.rate:.3f}"


def run(args: argparse.Namespace, bootstrap: str, broker_note: str) -> int:
    prefix = f"bench-cv-{uuid.uuid4().hex[:8]}."
    topics = {"in": f"{prefix}in", **{w: f"{prefix}out-{w}" for w in WRITERS}}
    n = args.messages
    print(f"# kafka consume variants | {machine_line()}")
    print(f"versions: Python {sys.version.split()[0]}, {versions()}")
    size, preload_s = asyncio.run(setup(bootstrap, topics, n))
    print(f"input: {n:,} messages, 1 partition, {size / n:.0f} bytes/value on average; "
          f"broker {broker_note}")
    print(f"preload (not measured): produce (acks=all) {preload_s:.1f} s = "
          f"{n / preload_s:,.0f} msgs/s")
    rows = {k: Row(k) for k in args.only}
    if "quix" in rows:
        rows["quix"].skipped = quix_missing()
    timeout_s = args.timeout or max(180.0, n / 1_500)
    extra = ["--quix-commit-interval", str(args.quix_commit_interval)]
    for rep in range(args.repeat):
        for key, row in rows.items():
            if row.skipped:
                continue
            started = time.perf_counter()
            res, why = run_child(key, bootstrap, topics["in"], topics.get(key, topics["in"]),
                                 n, timeout_s, extra)
            took = time.perf_counter() - started
            if res is None:
                print(f"  run {rep + 1} {key}: FAILED: {why}", file=sys.stderr)
                if not row.runs:
                    row.note = why
                continue
            if res["n"] != n:
                row.note = f"read {res['n']:,} of {n:,}"
            rate = res["n"] / res["wall_s"] if res["wall_s"] > 0 else 0.0
            cpu_us = res["cpu_s"] / res["n"] * 1e6
            row.rate, row.cpu_us, row.runs = max(row.rate, rate), min(row.cpu_us, cpu_us), \
                row.runs + 1
            if res.get("transactions"):
                row.note = f"{res['transactions']} transactions"
            print(f"  run {rep + 1} {key:<10} {rate:10,.0f} events/s {cpu_us:7.1f} µs CPU/event "
                  f"({res['wall_s']:.2f} s measured, {took:.1f} s with start-up)",
                  file=sys.stderr)
    bare, eos = rows.get("bare"), rows.get("eos")
    best = f"best of {args.repeat}" if args.repeat > 1 else "one run"
    print(f"\n{'variant':<48} {'events/s':>10} {'CPU µs/ev':>10} {'x (1)':>7} {'x (3)':>7}"
          f"  ({best})")
    for key, row in rows.items():
        label = VARIANTS[key]
        if row.skipped or not row.runs:
            print(f"{label:<48} {'skipped' if row.skipped else 'FAILED':>10}  "
                  f"{row.skipped or row.note}")
            continue
        print(f"{label:<48} {row.rate:10,.0f} {row.cpu_us:10.1f} "
              f"{fmt_ratio(row.rate, bare):>7} {fmt_ratio(row.rate, eos):>7}"
              + (f"  {row.note}" if row.note else ""))
    if bare and bare.runs and eos and eos.runs:
        print("CPU per event vs (1): " + ", ".join(
            f"{k} {r.cpu_us / bare.cpu_us:.1f}x" for k, r in rows.items() if r.runs))
        print("CPU per event vs (3): " + ", ".join(
            f"{k} {r.cpu_us / eos.cpu_us:.2f}x" for k, r in rows.items() if r.runs))
    failed = [k for k, r in rows.items() if not r.skipped and not r.runs]
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000, help="messages to preload")
    parser.add_argument("--quick", action="store_true", help="100k messages")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of every variant, in alternation; best kept")
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--quix-commit-interval", type=float, default=TXN_EVERY_S,
                        help="Quix checkpoint (transaction) interval in s (default %(default)s)")
    parser.add_argument("--bootstrap", help="use this broker instead of a fresh local one")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds per variant run (default: from the input size)")
    # Internal: run one variant (the parent starts these).
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--out-topic", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    if args.quick:
        args.messages = 100_000
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.messages < 1 or args.repeat < 1:
        parser.error("--messages and --repeat must be >= 1")
    if args.bootstrap:
        return run(args, args.bootstrap, f"given ({args.bootstrap})")
    with tempfile.TemporaryDirectory(prefix="recal-bench-cv-") as tmp:
        broker = LocalKafka(data_dir=Path(tmp) / "kafka")
        broker.fetch()
        try:
            bootstrap = broker.start(timeout_s=120.0)
            return run(args, bootstrap, f"local Kafka {broker.version}, fresh data dir")
        finally:
            broker.stop(timeout_s=30.0)


if __name__ == "__main__":
    sys.exit(main())
