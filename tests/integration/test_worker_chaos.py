"""`recal worker` under chaos, against a real local broker: kills, slow upstreams, rebalances
with buffered input, a broker restart. Exactly once is checked on what a ``read_committed``
reader sees: every impression labelled once with the batch oracle's label, every orphan click
dead-lettered once, no output message twice, posteriors that count what the feedback says.

The streams come from ``test_worker_join.generate`` (event times start 5 minutes or more in
the future, so the idle watermark advance, which follows the wall clock, never interferes).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_worker_join import (
    LATENESS_MS,
    REPO,
    WINDOW_MS,
    Line,
    WorkerProcess,
    expected_orphans,
    fb_key,
    flush_lines,
    generate,
    http_get,
    max_event_ts,
    oracle,
    produce,
    topic_names,
    worker_args,
)
from worker.localkafka import LocalKafka, TopicSpec, create_topics
from worker.runtime.topics import committed_consumer

pytestmark = pytest.mark.integration

OUTPUTS = ("feedback", "dlq", "calibrators", "posteriors")


# --- reading every output topic --------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class TopicLog:
    """Every committed record (read_committed) of some output topics, from the beginning,
    with partition, offset and key (the order checks need them)."""

    def __init__(self, bootstrap: str, prefix: str, shorts: Sequence[str] = OUTPUTS) -> None:
        self.bootstrap = bootstrap
        self.full = {short: f"{prefix}{short}" for short in shorts}
        self._short = {full: short for short, full in self.full.items()}
        self.records: dict[str, list[Rec]] = {short: [] for short in shorts}
        self._consumer: Any = None

    async def __aenter__(self) -> TopicLog:
        self._consumer = committed_consumer(
            self.bootstrap, "recal-test-chaos", *self.full.values(), metadata_max_age_ms=2_000
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=50_000)
        n = 0
        for tp, msgs in batches.items():
            out = self.records[self._short[tp.topic]]
            out.extend(Rec(tp.partition, m.offset, m.key, m.value) for m in msgs)
            n += len(msgs)
        return n

    async def settle(self, quiet_s: float = 3.0) -> None:
        """Poll until nothing new arrived for ``quiet_s`` (duplicates would show up now)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if await self.poll():
                last = time.monotonic()

    def dicts(self, short: str) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records[short] if r.value is not None]

    def counts(self) -> dict[str, int]:
        return {short: len(recs) for short, recs in self.records.items()}


def logs_of(workers: Iterable[WorkerProcess], lines: int = 40) -> str:
    return "\n".join(
        f"--- {w.log_path.name} (exit {w.proc.poll()}) ---\n{w.log_tail(lines)}" for w in workers
    )


async def wait_until(
    log: TopicLog,
    done: Callable[[TopicLog], bool],
    timeout_s: float,
    what: str,
    workers: Callable[[], list[WorkerProcess]],
) -> None:
    """Poll ``log`` until ``done``; fail with the workers' log tails on timeout or when a
    worker that should be running has exited."""
    deadline = time.monotonic() + timeout_s
    while not done(log):
        for w in workers():
            if w.proc.poll() is not None:
                await log.poll()
                if done(log):
                    return
                pytest.fail(f"a worker exited while waiting for {what}\n{logs_of(workers())}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout_s:.0f}s waiting for {what}: {log.counts()}\n"
                f"{logs_of(workers())}"
            )
        await log.poll()


async def wait_ready(worker: WorkerProcess, timeout_s: float = 90.0) -> int:
    """``WorkerProcess.wait_ready`` without blocking the event loop (a producer may run)."""
    deadline = time.monotonic() + timeout_s
    port = None
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            pytest.fail(f"worker exited {worker.proc.returncode}\n{worker.log_tail()}")
        if port is None:
            match = re.search(r"web on http://[\d.]+:(\d+)", worker.log_path.read_text())
            port = int(match.group(1)) if match else None
        if port is not None:
            status, _ = await asyncio.to_thread(http_get, port, "/readyz")
            if status == 200:
                return port
        await asyncio.sleep(0.2)
    pytest.fail(f"worker not ready after {timeout_s:.0f}s\n{worker.log_tail()}")


# --- producing on a schedule -----------------------------------------------------------------


async def produce_scheduled(
    bootstrap: str, topics: dict[str, str], schedule: list[tuple[float, Line]]
) -> None:
    """Produce each line at its wall offset (seconds from now), in offset order; one
    idempotent producer, so nothing is written twice and per-partition order is kept."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_request_size=1_048_576,
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        futures = []
        for due, line in sorted(schedule, key=lambda item: item[0]):
            delay = start + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(await producer.send(
                topics[line.source], value=line.raw, key=line.key, partition=line.partition
            ))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- the exactly-once checks -----------------------------------------------------------------


def _dlq_id(d: dict[str, Any]) -> tuple[str, str]:
    return d["key"], orjson.loads(base64.b64decode(d["payload_b64"]))["impression_id"]


def _show(items: Iterable[Any], n: int = 10) -> str:
    items = sorted(items)
    return f"{len(items)}: {items[:n]}{' ...' if len(items) > n else ''}"


def check_feedback_and_dlq(
    log: TopicLog,
    labels: dict[tuple[str, str], int],
    orphans: set[tuple[str, str]],
    malformed: dict[bytes, str] | None = None,
) -> None:
    """Every impression once with the oracle's label; no output message twice; every orphan
    (and every malformed input, with its reason) dead-lettered exactly once."""
    for short in ("feedback", "dlq"):
        same = [kv for kv, n in Counter((r.key, r.value) for r in log.records[short]).items()
                if n > 1]
        assert not same, f"{short}: the same message (key+value) more than once: {same[:3]}"
    feedback = log.dicts("feedback")
    counts = Counter(fb_key(fb) for fb in feedback)
    twice = [k for k, n in counts.items() if n > 1]
    assert not twice, f"impressions labelled more than once: {_show(twice)}"
    got = {fb_key(fb): fb["label"] for fb in feedback}
    missing = set(labels) - set(got)
    extra = set(got) - set(labels)
    wrong = {k for k in set(got) & set(labels) if got[k] != labels[k]}
    assert not missing and not extra and not wrong, (
        f"feedback differs from the oracle: missing {_show(missing)}; unexpected "
        f"{_show(extra)}; wrong label {_show((k, got[k], labels[k]) for k in wrong)}"
    )
    dlq = log.dicts("dlq")
    got_orphans = Counter(_dlq_id(d) for d in dlq if d["reason"] == "orphan_click")
    again = [k for k, n in got_orphans.items() if n > 1]
    assert not again, f"orphans dead-lettered more than once: {_show(again)}"
    assert set(got_orphans) == orphans, (
        f"orphans: missing {_show(orphans - set(got_orphans))}, "
        f"unexpected {_show(set(got_orphans) - orphans)}"
    )
    letters = Counter(
        (base64.b64decode(d["payload_b64"]), d["reason"]) for d in dlq
        if d["reason"] != "orphan_click"
    )
    want = Counter((malformed or {}).items())
    assert letters == want, (
        f"dead letters other than orphans: extra {letters - want}, missing {want - letters}"
    )


def check_posteriors(log: TopicLog) -> None:
    """For each (user, arm) the latest snapshot counts every feedback of that user and arm."""
    latest: dict[tuple[str, str], dict[str, Any] | None] = {}
    for rec in sorted(log.records["posteriors"], key=lambda r: (r.partition, r.offset)):
        user, _, arm = (rec.key or b"").decode().partition("|")
        obj = None if rec.value is None else orjson.loads(rec.value)
        if arm == "":
            assert obj is not None and obj.get("type") == "tier_change", (rec.key, obj)
            continue
        if user == "*":  # the partition's population posterior of the arm
            continue
        assert obj is None or (obj["user_id"], obj["arm"]) == (user, arm), (rec.key, obj)
        latest[(user, arm)] = obj
    want = Counter(
        (fb["user_id"], fb["arm"]) for fb in log.dicts("feedback") if fb.get("arm") is not None
    )
    assert want, "the stream has no feedback with an arm: the check would be empty"
    got = {pair: (None if obj is None else obj["n"]) for pair, obj in latest.items()}
    bad = {pair for pair in set(want) | set(got) if got.get(pair) != want.get(pair)}
    assert not bad, (
        f"latest posterior n != feedback count for {len(bad)} (user, arm) pairs of "
        f"{len(want)}: {sorted((p, got.get(p), want.get(p)) for p in bad)[:10]}"
    )


def check_calibrator_versions(log: TopicLog) -> int:
    """Each ``model_id|scope`` key's versions strictly increase in topic order; the number
    of versions read."""
    by_key: dict[bytes | None, list[tuple[int, int, int]]] = defaultdict(list)
    for rec in log.records["calibrators"]:
        if rec.value is not None:
            by_key[rec.key].append((rec.partition, rec.offset, orjson.loads(rec.value)["version"]))
    for key, entries in by_key.items():
        versions = [v for _p, _o, v in sorted(entries)]
        bad = [(a, b) for a, b in itertools.pairwise(versions) if b <= a]
        assert not bad, f"calibrator {key!r}: versions not increasing in topic order: {versions}"
    return sum(len(v) for v in by_key.values())


def prepared(lines: list[Line]) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]],
                                           dict[bytes, str]]:
    labels = oracle(lines)
    orphans = expected_orphans(lines)
    malformed = {line.raw: line.expected_reason for line in lines if line.expected_reason}
    assert 0 < sum(labels.values()) < len(labels) and orphans
    return labels, orphans, malformed  # type: ignore[return-value]


def all_in(labels: dict[Any, int], orphans: set[Any], malformed: dict[bytes, str] | None = None
           ) -> Callable[[TopicLog], bool]:
    n_dlq = len(orphans) + len(malformed or {})

    def done(log: TopicLog) -> bool:
        return len(log.records["feedback"]) >= len(labels) and len(log.records["dlq"]) >= n_dlq

    return done


def model_per_partition(lines: list[Line], partitions: int) -> list[Line]:
    """The stream with each impression's ``model_id`` naming the input partition it lands on
    (``m<p>``, by the producer's default partitioner). Each partition runs its own pipeline,
    so this keeps every calibrator key (``model_id|scope``) to one pipeline: its versions
    then must strictly increase in topic order, also across kills and restores (see
    ``test_calibrator_key_shared_by_partitions_gets_one_version_sequence`` for one model
    over several partitions)."""
    from aiokafka.partitioner import DefaultPartitioner

    choose = DefaultPartitioner()
    every = list(range(partitions))
    out = []
    for line in lines:
        if line.source == "impressions" and line.obj is not None and line.key is not None:
            p = line.partition if line.partition is not None else choose(line.key, every, every)
            obj = {**line.obj, "model_id": f"m{p}"}
            line = Line(line.source, line.key, orjson.dumps(obj), obj, line.expected_reason,
                        line.partition)
        out.append(line)
    return out


# --- tests -----------------------------------------------------------------------------------


async def test_three_workers_survive_repeated_sigkill_during_live_production(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """(b) 3 workers x 6 partitions, the stream produced live at a steady rate; one worker
    SIGKILLed and restarted 5 times during production. Exactly once on every output."""
    partitions = 6
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=21, n_impressions=2_400, n_users=120, t0_ms=now + 300_000, now_ms=now,
                     step_ms=250)
    lines = model_per_partition(lines, partitions)
    labels, orphans, malformed = prepared(lines)
    flush = flush_lines(partitions, max_event_ts(lines))
    app_id = unique_topic("app")
    args = [*worker_args(kafka_bootstrap, prefix, app_id),
            "--session-timeout-s", "6", "--posterior-interval-s", "1",
            "--recalibrate-every", "50", "--policy-min-n-eval", "20"]
    n_logs = 0

    def spawn() -> WorkerProcess:
        nonlocal n_logs
        n_logs += 1
        return WorkerProcess(args, tmp_path / f"worker-{n_logs}.log")

    slots = [spawn() for _ in range(3)]
    everyone = list(slots)
    production_s = 40.0
    kills = [  # (seconds into production, slot, seconds before the restart)
        (5.0, 0, 0.5), (12.0, 1, 3.0), (19.0, 2, 0.0), (26.0, 0, 7.0), (34.0, 1, 1.0)
    ]
    killed: list[tuple[float, str, list[int]]] = []

    async def chaos() -> None:
        t0 = time.monotonic()
        for at, slot, pause in kills:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            victim = slots[slot]
            owned = re.findall(r"assigned partitions \[([\d, ]*)\]", victim.log_path.read_text())
            victim.stop(signal.SIGKILL)
            killed.append((round(time.monotonic() - t0, 1), victim.log_path.name,
                           [int(p) for p in owned[-1].split(",") if p.strip()] if owned else []))
            await asyncio.sleep(pause)
            slots[slot] = spawn()
            everyone.append(slots[slot])

    def running() -> list[WorkerProcess]:
        return list(slots)

    try:
        for w in slots:
            await wait_ready(w)
        async with TopicLog(kafka_bootstrap, prefix) as log:
            rate = len(lines) / production_s
            schedule = [(i / rate, line) for i, line in enumerate(lines)]
            await asyncio.gather(produce_scheduled(kafka_bootstrap, topics, schedule), chaos())
            await produce(kafka_bootstrap, topics, flush)
            await wait_until(log, all_in(labels, orphans, malformed), 150,
                             "all feedback and dead letters", running)
            # The last feedback's posteriors are drained within one interval (1 s), then
            # committed; anything duplicated would show up too.
            await asyncio.sleep(2.5)
            await log.settle(3.0)
    finally:
        codes = [w.stop(signal.SIGTERM) for w in slots]
        for w in everyone:
            if not w._log.closed:
                w.stop(signal.SIGKILL)
    assert [k[1] for k in killed] and len(killed) == 5, killed
    # The victims owned partitions when killed (so kills did move partitions around).
    assert sum(1 for _at, _name, owned in killed if owned) >= 4, killed
    restores = sum(len(re.findall(r"state restored", w.log_path.read_text())) for w in everyone)
    assert restores > partitions, restores

    check_feedback_and_dlq(log, labels, orphans, malformed)
    # A crashed worker leaves its partitions' last posterior drains uncommitted until a new
    # owner restores them: say so first, the posterior check would only show the symptom.
    crashed = [w.log_path.name for w in everyone if "recal worker crashed" in
               w.log_path.read_text()]
    assert not crashed and codes == [0, 0, 0], (
        f"workers crashed: {crashed}; exit codes at the end {codes}\n{logs_of(everyone, 25)}"
    )
    check_posteriors(log)
    assert check_calibrator_versions(log) > 0


async def test_clicks_produced_late_by_a_slow_upstream_still_label_exactly(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """(c) Impressions are produced on time, clicks 5 s of wall time after their event time
    (a slow upstream). While impressions flow the stream runs at ``speed`` event seconds per
    wall second, so each click trails the impressions by about 5 s x 10 = 50 s of event
    time, within the allowed lateness (60 s): a click then joins its impression as long as
    its delay after the impression plus that lag stays within W + L, which holds for every
    click of the stream (delays < 0.9 W), so no label may differ from the oracle's. The
    impressions span more than W + L of event time, so many impressions' windows close
    while their clicks trail. Once the impressions are out, the rest (clicks late beyond
    the window) follows faster."""
    speed, tail_speed, delay_s = 10.0, 60.0, 5.0
    partitions = 2
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    t0 = now + 300_000
    lines = generate(seed=31, n_impressions=2_000, n_users=100, t0_ms=t0, now_ms=now,
                     step_ms=220)
    lines = [line for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    imp_ts = sorted(line.obj["ts"] for line in lines if line.source == "impressions")
    imp_end = imp_ts[-1]
    assert imp_end - imp_ts[0] > WINDOW_MS + LATENESS_MS

    def wall_s(ts: int) -> float:
        """Wall seconds after the start at which event time ``ts`` is "now"."""
        return max(0.0, (min(ts, imp_end) - t0) / 1000 / speed
                   + max(0, ts - imp_end) / 1000 / tail_speed)

    schedule = [
        (wall_s(line.obj["ts"]) + (delay_s if line.source == "clicks" else 0.0), line)
        for line in lines
    ]
    end = max(due for due, _ in schedule)
    schedule += [(end + 0.5, line) for line in flush_lines(partitions, max_event_ts(lines))]
    # The premise: many clicks that make a positive label are produced well after
    # impressions stamped past them (the watermark is ahead of them when they arrive), and
    # none of them after its impression's window closed (at imp.ts + W + L of max ts).
    first_ts: dict[tuple[str, str], int] = {}
    for line in lines:
        key = (line.obj["user_id"], line.obj["impression_id"])
        if line.source == "impressions" and labels.get(key):
            first_ts[key] = min(first_ts.get(key, line.obj["ts"]), line.obj["ts"])
    trailing = 0
    for due, line in schedule:
        key = (line.obj["user_id"], line.obj["impression_id"])
        if line.source != "clicks" or key not in first_ts:
            continue
        ahead = bisect.bisect_right(imp_ts, _ts_at(due, speed, t0, imp_end))
        max_ts = imp_ts[ahead - 1] if ahead else 0
        trailing += max_ts - line.obj["ts"] > 30_000
        assert max_ts <= first_ts[key] + WINDOW_MS + LATENESS_MS, (key, line.obj)
    assert trailing > 50, trailing

    worker = WorkerProcess(worker_args(kafka_bootstrap, prefix, unique_topic("app")),
                           tmp_path / "worker.log")
    try:
        await wait_ready(worker)
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq")) as log:
            await produce_scheduled(kafka_bootstrap, topics, schedule)
            await wait_until(log, all_in(labels, orphans), 90, "all feedback", lambda: [worker])
            await log.settle(2.0)
    finally:
        code = worker.stop(signal.SIGTERM)
    assert "late_click" not in {d["reason"] for d in log.dicts("dlq")}
    check_feedback_and_dlq(log, labels, orphans)
    assert code == 0, worker.log_tail()


def _ts_at(wall_s: float, speed: float, t0: int, imp_end: int) -> int:
    """The newest impression event time produced by ``wall_s`` (see the slow upstream)."""
    return min(imp_end, t0 + int(wall_s * speed * 1000))


def padded(line: Line, pad: int = 2_000) -> Line:
    """An impression with a ``context`` of ``pad`` bytes (ignored by the pipeline): a fetch
    (1 MB per partition) then holds a few hundred impressions but all of a partition's
    clicks, so the clicks run ahead and wait in the merger for the impressions' backlog."""
    if line.source != "impressions" or line.obj is None:
        return line
    obj = {**line.obj, "context": {"pad": "x" * pad}}
    return Line(line.source, line.key, orjson.dumps(obj), obj, line.expected_reason,
                line.partition)


class PrimedWorker(WorkerProcess):
    """``recal worker`` with its interpreter up and its modules imported, waiting for
    ``go()``: it joins the group within a second of it, however slow an import is on a busy
    machine."""

    _CODE = (
        "import sys, aiokafka, worker.cli, worker.runtime.cli, worker.runtime.group_worker, "
        "worker.runtime.web; print('primed', file=sys.stderr, flush=True); "
        "sys.stdin.readline(); sys.exit(worker.cli.main(sys.argv[1:]))"
    )

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self._CODE, "--log-level", "INFO", "worker", *args],
            stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def primed(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while "primed" not in self.log_path.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log_tail()
            await asyncio.sleep(0.1)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples named ``name`` of a /metrics body (prometheus-client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


def _gauges(text: str, name: str) -> dict[str, float]:
    """A per-partition gauge: partition -> value."""
    return {labels["partition"]: value for labels, value in _samples(text, name)}


def _log_time(line: str) -> float:
    from datetime import datetime

    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def test_rebalance_while_the_merger_holds_messages(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """(d) A backlog is read in chunks, so each partition's event-time merger holds the
    messages of one topic that are ahead of the other (waiting while the other topic has
    unread messages): here the clicks, as the impressions are padded (see ``padded``). A
    second worker (primed: imported and waiting, so it joins at once) joins while the first
    one holds such messages (its ``recal_merge_buffered_messages`` gauge, sampled just
    before the revoke, is > 0): what was buffered was never committed and is read again by
    the new owner; labels exact, once."""
    partitions = 4
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=41, n_impressions=8_000, n_users=200, t0_ms=now + 300_000,
                     now_ms=now, step_ms=45)
    lines = [padded(line) for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    await produce(kafka_bootstrap, topics, lines + flush_lines(partitions, max_event_ts(lines)))
    app_id = unique_topic("app")
    # Heartbeats every 2 s: A hears of the rebalance soon after B asks to join.
    args = [*worker_args(kafka_bootstrap, prefix, app_id), "--session-timeout-s", "6"]
    b = PrimedWorker(args, tmp_path / "worker-b.log")
    a: WorkerProcess | None = None
    started_b = False
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        await b.primed()
        a = WorkerProcess(args, tmp_path / "worker-a.log")
        port = await asyncio.to_thread(a.web_port)
        deadline = time.monotonic() + 90
        # Wait until A holds messages in a merger, then start B and keep sampling A until
        # its partitions are revoked.
        while not started_b or "revoked" not in a.log_path.read_text():
            assert time.monotonic() < deadline, f"no rebalance\n{logs_of([a, b])}"
            assert a.proc.poll() is None, a.log_tail()
            status, body = await asyncio.to_thread(http_get, port, "/metrics")
            if status == 200:
                buffered = _gauges(body.decode(), "recal_merge_buffered_messages")
                samples.append((time.time(), buffered))
                if not started_b and sum(buffered.values()) > 0:
                    b.go()
                    started_b = True
            await asyncio.sleep(0.05)
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq")) as log:
            await wait_until(log, all_in(labels, orphans), 120, "all feedback",
                             lambda: [a, b])  # type: ignore[list-item]
            await log.settle(2.0)
    finally:
        codes = [w.stop(signal.SIGTERM) for w in (a, b) if w is not None]
    assert a is not None
    revoked_at = min(_log_time(line) for line in a.log_path.read_text().splitlines()
                     if "revoked" in line)
    before = [(t, s) for t, s in samples if t < revoked_at and s]
    assert before, samples[-5:]
    last_t, last = before[-1]
    assert revoked_at - last_t < 1.5 and sum(last.values()) > 0, (
        f"scenario not reached: A held nothing in its mergers just before the revoke "
        f"({revoked_at - last_t:.2f}s before it: {last})"
    )
    assert "state restored" in b.log_path.read_text()
    check_feedback_and_dlq(log, labels, orphans)
    assert codes == [0, 0], logs_of([a, b])


async def test_broker_restart_mid_stream(
    unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """(e) The broker (its own, not the session's) is stopped (SIGTERM) while the worker is
    processing and started again on the same data directory; the rest of the stream is
    produced after it. Labels exact, once; the worker exits 0 on SIGTERM at the end."""
    broker = LocalKafka(data_dir=tmp_path / "kafka")
    await asyncio.to_thread(broker.fetch)
    bootstrap = await asyncio.to_thread(broker.start, 120.0)
    workers: list[WorkerProcess] = []
    try:
        partitions = 4
        prefix = unique_topic("recal") + "."
        topics = topic_names(prefix)
        await create_topics(
            bootstrap,
            [TopicSpec(topics["impressions"], partitions),
             TopicSpec(topics["clicks"], partitions)],
        )
        now = int(time.time() * 1000)
        lines = generate(seed=51, n_impressions=8_000, n_users=200, t0_ms=now + 300_000,
                         now_ms=now, step_ms=50)
        lines = [line for line in lines if line.expected_reason is None]
        labels, orphans, _ = prepared(lines)
        half = len(lines) // 2
        first, rest = lines[:half], lines[half:] + flush_lines(partitions, max_event_ts(lines))
        await produce(bootstrap, topics, first)
        app_id = unique_topic("app")
        workers.append(WorkerProcess(worker_args(bootstrap, prefix, app_id),
                                     tmp_path / "worker-1.log"))
        await asyncio.to_thread(workers[0].web_port)  # the output topics exist from here on
        async with TopicLog(bootstrap, prefix, ("feedback",)) as log:
            await wait_until(log, lambda o: len(o.records["feedback"]) >= 100, 90,
                             "first feedback", lambda: workers)
        # Mid-backlog: the worker has committed some of the first half, not all of it.
        _, body = await asyncio.to_thread(http_get, workers[0].web_port(), "/metrics")
        done = sum(value for _, value in _samples(body.decode(), "recal_events_total"))
        assert 0 < done < len(first), (done, len(first))
        await asyncio.to_thread(broker.stop, 30.0)
        await asyncio.sleep(3.0)
        restarted = await asyncio.to_thread(broker.start, 120.0)
        if restarted != bootstrap:
            # LocalKafka reuses its ports when they are still free, but another process may
            # have taken one meanwhile: then the worker (which only knows the old bootstrap)
            # cannot follow, and is restarted with the new one. It must still lose and
            # duplicate nothing.
            workers[0].stop(signal.SIGKILL)
            bootstrap = restarted
            workers.append(WorkerProcess(worker_args(bootstrap, prefix, app_id),
                                         tmp_path / "worker-2.log"))
        await produce(bootstrap, topics, rest)
        async with TopicLog(bootstrap, prefix, ("feedback", "dlq")) as log:
            await wait_until(log, all_in(labels, orphans), 150, "all feedback after the restart",
                             lambda: workers[-1:])
            await log.settle(2.0)
        code = workers[-1].stop(signal.SIGTERM)
    finally:
        for w in workers:
            if not w._log.closed:
                w.stop(signal.SIGKILL)
        await asyncio.to_thread(broker.stop, 30.0)
    check_feedback_and_dlq(log, labels, orphans)
    assert code == 0, workers[-1].log_tail()


async def test_calibrator_key_shared_by_partitions_gets_one_version_sequence(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """One model over two partitions, no chaos: the calibrators topic is keyed
    ``model_id|scope`` (compacted: consumers keep the latest record per key), so that key's
    versions must strictly increase in topic order, whichever partition's pipeline fits
    them."""
    partitions = 2
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=61, n_impressions=2_000, n_users=100, t0_ms=now + 300_000,
                     now_ms=now, step_ms=400)
    lines = [line for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    await produce(kafka_bootstrap, topics, lines + flush_lines(partitions, max_event_ts(lines)))
    worker = WorkerProcess(
        [*worker_args(kafka_bootstrap, prefix, unique_topic("app")),
         "--recalibrate-every", "50", "--policy-min-n-eval", "20"],
        tmp_path / "worker.log",
    )
    try:
        await wait_ready(worker)
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq", "calibrators")) as log:
            await wait_until(log, all_in(labels, orphans), 90, "all feedback", lambda: [worker])
            await log.settle(2.0)
    finally:
        worker.stop(signal.SIGTERM)
    check_feedback_and_dlq(log, labels, orphans)
    assert len(log.records["calibrators"]) > 1
    check_calibrator_versions(log)


async def test_a_partition_with_many_users_still_commits(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """One partition, 4,000 impressions of 1,500 users: a modest load, which the worker must
    commit like any other (its state changelog records must fit in a Kafka message)."""
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap, [TopicSpec(topics["impressions"], 1), TopicSpec(topics["clicks"], 1)]
    )
    now = int(time.time() * 1000)
    lines = generate(seed=71, n_impressions=4_000, n_users=1_500, t0_ms=now + 300_000,
                     now_ms=now, step_ms=50)
    lines = [line for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    await produce(kafka_bootstrap, topics, lines + flush_lines(1, max_event_ts(lines)))
    worker = WorkerProcess(worker_args(kafka_bootstrap, prefix, unique_topic("app")),
                           tmp_path / "worker.log")
    failed = re.compile(r"transaction failed .*")

    def done(log: TopicLog) -> bool:
        match = failed.search(worker.log_path.read_text())
        assert match is None, match.group(0)[:400]
        return all_in(labels, orphans)(log)

    try:
        await asyncio.to_thread(worker.web_port)  # the output topics exist from here on
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq")) as log:
            await wait_until(log, done, 90, "all feedback", lambda: [worker])
            await log.settle(1.0)
    finally:
        code = worker.stop(signal.SIGTERM)
    check_feedback_and_dlq(log, labels, orphans)
    assert code == 0, worker.log_tail()


# --- runtime bugs found by the chaos tests, each on its own ----------------------------------


async def test_restoring_many_partitions_does_not_cost_the_group_membership(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """One worker, 16 partitions, session timeout 6 s. The worker restores every assigned
    partition inside aiokafka's ``on_partitions_assigned`` callback, and aiokafka sends no
    heartbeat until that callback returns: when restoring takes longer than the session
    timeout (here ~0.5-1 s per partition even when the changelog is empty), the broker
    removes the member while it restores, and it goes on as a zombie (seen in the kill test
    under load: the zombie is fenced, then fences the partitions' new owners)."""
    partitions = 16
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=81, n_impressions=800, n_users=80, t0_ms=now + 300_000, now_ms=now)
    lines = [line for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    await produce(kafka_bootstrap, topics, lines + flush_lines(partitions, max_event_ts(lines)))
    worker = WorkerProcess(
        [*worker_args(kafka_bootstrap, prefix, unique_topic("app")), "--session-timeout-s", "6"],
        tmp_path / "worker.log",
    )
    evicted = re.compile(r".*member_id was not recognized.*|.*UnknownMemberId.*")

    def done(log: TopicLog) -> bool:
        match = evicted.search(worker.log_path.read_text())
        restored = re.findall(r"state restored .* in ([\d.]+)s", worker.log_path.read_text())
        assert match is None, (
            f"the member was removed from the group: {match.group(0)[:200]} (after restoring "
            f"{len(restored)} partitions in {sum(map(float, restored)):.1f}s)"
        )
        return all_in(labels, orphans)(log)

    try:
        await wait_ready(worker, 120)
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq")) as log:
            await wait_until(log, done, 90, "all feedback", lambda: [worker])
            await log.settle(1.0)
            done(log)
    finally:
        code = worker.stop(signal.SIGTERM)
    check_feedback_and_dlq(log, labels, orphans)
    assert code == 0, worker.log_tail()


async def _fence(bootstrap: str, transactional_ids: list[str]) -> None:
    """Start (init_transactions) and stop a producer per transactional id: whoever used
    those ids before is fenced."""
    from aiokafka import AIOKafkaProducer

    producers = [AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
                 for tid in transactional_ids]
    await asyncio.gather(*(p.start() for p in producers))
    await asyncio.gather(*(p.stop() for p in producers))


async def test_two_partitions_fenced_at_once_are_both_rebuilt(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """Both partitions' transactional producers are fenced at the same moment while the
    worker still owns them (as a stray producer with the worker's transactional ids
    would; a zombie's ``_adopt`` does exactly this, see the paused-worker test). The module
    doc promises that a fencing means "start again from the last committed transaction";
    both partitions' commits fail in the same commit round, and ``_commit_one`` rebuilds
    them concurrently, both through the one shared restore consumer."""
    partitions = 2
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=91, n_impressions=2_000, n_users=100, t0_ms=now + 300_000,
                     now_ms=now, step_ms=100)
    lines = [line for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    app_id = unique_topic("app")
    worker = WorkerProcess(worker_args(kafka_bootstrap, prefix, app_id), tmp_path / "worker.log")
    rate = len(lines) / 20.0
    schedule = [(i / rate, line) for i, line in enumerate(lines)]
    schedule += [(len(lines) / rate + 0.5, line)
                 for line in flush_lines(partitions, max_event_ts(lines))]
    try:
        await wait_ready(worker)
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq")) as log:
            producing = asyncio.ensure_future(produce_scheduled(kafka_bootstrap, topics, schedule))
            await wait_until(log, lambda o: len(o.records["feedback"]) >= 30, 60,
                             "first feedback", lambda: [worker])
            # Fenced while the worker is paused (a second, far below the session timeout),
            # so both partitions' next commits fail in the same round.
            worker.proc.send_signal(signal.SIGSTOP)
            try:
                await _fence(kafka_bootstrap,
                             [f"{app_id}|{prefix}state|{p}" for p in range(partitions)])
            finally:
                worker.proc.send_signal(signal.SIGCONT)
            await producing
            await wait_until(log, all_in(labels, orphans), 90, "all feedback", lambda: [worker])
            await log.settle(1.0)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        code = worker.stop(signal.SIGTERM)
    text = worker.log_path.read_text()
    assert "ProducerFenced" in text, "the fencing did not hit a transaction"
    check_feedback_and_dlq(log, labels, orphans)
    assert code == 0 and "recal worker crashed" not in text, worker.log_tail(60)


async def test_a_paused_worker_does_not_fence_the_new_owner(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """Two workers, one partition each; A is paused (SIGSTOP) longer than the session
    timeout, so B takes A's partition over (its producer init fences A). When A resumes
    it is a zombie until its next heartbeat: its commit fails with ProducerFenced, and it
    must then give the partition up, not take it back by starting a new producer with the
    same transactional id (that fences B, the partition's rightful owner)."""
    partitions = 2
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], partitions), TopicSpec(topics["clicks"], partitions)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=101, n_impressions=2_400, n_users=100, t0_ms=now + 300_000,
                     now_ms=now, step_ms=100)
    lines = [line for line in lines if line.expected_reason is None]
    labels, orphans, _ = prepared(lines)
    app_id = unique_topic("app")
    args = [*worker_args(kafka_bootstrap, prefix, app_id), "--session-timeout-s", "6"]
    a = WorkerProcess(args, tmp_path / "worker-a.log")
    b: WorkerProcess | None = None
    rate = len(lines) / 30.0
    schedule = [(i / rate, line) for i, line in enumerate(lines)]
    schedule += [(len(lines) / rate + 0.5, line)
                 for line in flush_lines(partitions, max_event_ts(lines))]
    try:
        await wait_ready(a)
        b = WorkerProcess(args, tmp_path / "worker-b.log")
        async with TopicLog(kafka_bootstrap, prefix, ("feedback", "dlq")) as log:
            producing = asyncio.ensure_future(produce_scheduled(kafka_bootstrap, topics, schedule))
            # Both members own a partition once B has restored one.
            deadline = time.monotonic() + 60
            while not re.search(r"assigned partitions \[\d\]", b.log_path.read_text()):
                assert time.monotonic() < deadline, logs_of([a, b])
                await log.poll()
            await asyncio.sleep(3.0)
            a.proc.send_signal(signal.SIGSTOP)
            # The session expires (6 s), B is assigned both partitions and restores A's.
            deadline = time.monotonic() + 40
            while not re.search(r"assigned partitions \[0, 1\]", b.log_path.read_text()):
                assert time.monotonic() < deadline, logs_of([a, b])
                await log.poll()
            await asyncio.sleep(1.0)
            a.proc.send_signal(signal.SIGCONT)
            await producing
            await wait_until(log, all_in(labels, orphans), 90, "all feedback", lambda: [a, b])
            await log.settle(1.0)
    finally:
        a.proc.send_signal(signal.SIGCONT)
        codes = [w.stop(signal.SIGTERM) for w in (a, b) if w is not None]
    assert b is not None
    check_feedback_and_dlq(log, labels, orphans)
    fenced_b = re.findall(r".*transaction failed \(ProducerFenced.*", b.log_path.read_text())
    assert not fenced_b, (
        f"B, the partition's owner, was fenced {len(fenced_b)} times after A resumed: "
        f"{fenced_b[0][:160]}\n{logs_of([a, b], 30)}"
    )
    assert codes == [0, 0], logs_of([a, b])
