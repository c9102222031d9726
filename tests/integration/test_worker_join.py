"""`recal worker` against the real local broker: feedback, dead letters, layout check, crash.

The generated stream (self-contained here, deterministic per seed) has duplicates (exact
repeated messages), arrival reordering within 30 s of event time, clicks before their
impression, late clicks, orphan clicks and one or more malformed messages of every kind.
Events are keyed by user_id and produced in one "replay file" order.

End of input: Kafka has no end-of-stream, so the worker's watermark never becomes +inf. The
test appends four *flush* impressions per partition (sentinel user, ts = max ts + W + L + 5 s;
four because the join's clock guard wants three events to confirm such a jump) which move
every partition's watermark past all deadlines, so every negative matures and
every orphan is dead-lettered; the flush impressions themselves stay pending and are never
expected as feedback. Event times start 5 minutes in the future, so the idle watermark
advance (which follows the wall clock) can never overtake them during the test: the outputs
do not depend on timing.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.core.codec.input_decoder import InputDecoder
from worker.core.pipeline import PipelineConfig
from worker.localkafka import TopicSpec, create_topics
from worker.replay import Replay
from worker.runtime.topics import committed_consumer

pytestmark = pytest.mark.integration

WINDOW_S = 300
WINDOW_MS = WINDOW_S * 1000
LATENESS_MS = 60_000
FLUSH_USER = "zz-flush"
REPO = Path(__file__).resolve().parents[2]


# --- the generated stream --------------------------------------------------------------------


@dataclass
class Line:
    """One message to produce (``partition`` None: by key hash)."""

    source: str  # impressions | clicks
    key: bytes | None
    raw: bytes
    obj: dict[str, Any] | None
    expected_reason: str | None = None
    partition: int | None = None


def generate(
    seed: int, n_impressions: int, n_users: int, t0_ms: int, now_ms: int, step_ms: int = 600
) -> list[Line]:
    rng = random.Random(seed)
    users = [f"u{seed}-{i}" for i in range(n_users)]
    timed: list[tuple[float, int, Line]] = []

    def add(line: Line, ts: int, jitter_ms: float | None = None) -> None:
        arrival = ts + (rng.uniform(0, 30_000) if jitter_ms is None else jitter_ms)
        timed.append((arrival, len(timed), line))

    def event(source: str, obj: dict[str, Any]) -> Line:
        return Line(source, obj["user_id"].encode(), orjson.dumps(obj), obj)

    for i in range(n_impressions):
        user = rng.choice(users)
        ts = t0_ms + i * step_ms + rng.randrange(0, 400)
        imp: dict[str, Any] = {
            "impression_id": f"imp-{seed}-{i}",
            "user_id": user,
            "item_id": f"it{rng.randrange(50)}",
            "ts": ts,
            "model_id": "m1",
            "segment": rng.choice(["a", "b"]),
        }
        if rng.random() < 0.1:
            imp["logit"] = round(rng.uniform(-4, 2), 6)
        else:
            imp["score"] = round(rng.uniform(0.001, 0.999), 6)
        if rng.random() < 0.3:
            imp["arm"] = rng.choice(["news", "sport"])
            imp["position"] = rng.randrange(10)
        add(event("impressions", imp), ts)
        u = rng.random()
        click_ts = None
        if u < 0.25:  # within the window
            click_ts = ts + rng.randrange(0, int(WINDOW_MS * 0.9))
        elif u < 0.28:  # late: beyond the window
            click_ts = ts + WINDOW_MS + rng.randrange(1_000, WINDOW_MS)
        elif u < 0.30:  # stamped before its impression (clock skew): delay 0
            click_ts = ts - rng.randrange(0, 10_000)
        if click_ts is not None:
            click = {"impression_id": imp["impression_id"], "user_id": user, "ts": click_ts}
            if rng.random() < 0.5:
                click["item_id"] = imp["item_id"]
            add(event("clicks", click), click_ts)
    span = n_impressions * step_ms
    for k in range(max(5, n_impressions // 80)):  # orphans: no impression at all
        ts = t0_ms + rng.randrange(0, span)
        click = {"impression_id": f"ghost-{seed}-{k}", "user_id": rng.choice(users), "ts": ts}
        add(event("clicks", click), ts)
    # ~5% exact duplicates, redelivered up to 5 s after the original.
    for arrival, _, line in list(timed):
        if rng.random() < 0.05:
            timed.append((arrival + rng.uniform(0, 5_000), len(timed), line))
    timed.sort(key=lambda item: (item[0], item[1]))
    lines = [line for _, _, line in timed]
    bad = _malformed(rng, users, t0_ms, now_ms, seed)
    for line in bad:
        lines.insert(rng.randrange(len(lines) + 1), line)
    return lines


def _malformed(
    rng: random.Random, users: list[str], t0_ms: int, now_ms: int, seed: int
) -> list[Line]:
    out: list[Line] = []

    def imp(n: int, **fields: Any) -> dict[str, Any]:
        base = {
            "impression_id": f"bad-{seed}-{n}",
            "user_id": rng.choice(users),
            "item_id": "it0",
            "ts": t0_ms + rng.randrange(0, 60_000),
            "score": 0.5,
        }
        base.update(fields)
        return base

    n = 0
    for source in ("impressions", "clicks"):
        for reason in ("invalid_json", "schema", "score_range", "too_large", "key_mismatch",
                       "future_ts", "no_key"):
            if source == "clicks" and reason == "score_range":
                continue  # clicks have no score
            n += 1
            obj = imp(n)
            if source == "clicks":
                obj = {"impression_id": obj["impression_id"], "user_id": obj["user_id"],
                       "ts": obj["ts"]}
            key: bytes | None = obj["user_id"].encode()
            expected = reason
            if reason == "invalid_json":
                raw = orjson.dumps(obj)[:-7] + b"}{"
            elif reason == "schema":
                obj.pop("item_id" if source == "impressions" else "ts")
                raw = orjson.dumps(obj)
            elif reason == "score_range":
                obj["score"] = 1.5
                raw = orjson.dumps(obj)
            elif reason == "too_large":
                obj["context"] = {"pad": "x" * 70_000}
                raw = orjson.dumps(obj)
            elif reason == "key_mismatch":
                key = b"someone-else"
                raw = orjson.dumps(obj)
            elif reason == "future_ts":
                obj["ts"] = now_ms + 2 * 3_600_000
                raw = orjson.dumps(obj)
            else:  # no key at all
                key = None
                expected = "key_mismatch"
                raw = orjson.dumps(obj)
            out.append(Line(source, key, raw, None, expected))
    return out


#: Flush impressions per partition: the join's clock guard holds one event that jumps the
#: clock by more than W until three later ones confirm the jump.
FLUSH_PER_PARTITION = 4


def flush_lines(partitions: int, max_ts: int) -> list[Line]:
    """Impressions per partition far beyond everything: mature all labels and orphans."""
    ts = max_ts + WINDOW_MS + LATENESS_MS + 5_000
    out = []
    for p in range(partitions):
        user = f"{FLUSH_USER}-{p}"
        for k in range(FLUSH_PER_PARTITION):
            obj = {"impression_id": f"flush-{p}-{k}", "user_id": user, "item_id": "x",
                   "ts": ts + k, "score": 0.5}
            out.append(Line("impressions", user.encode(), orjson.dumps(obj), obj, None, p))
    return out


def max_event_ts(lines: Iterable[Line]) -> int:
    return max(line.obj["ts"] for line in lines if line.obj is not None)


# --- expectations ----------------------------------------------------------------------------


def valid_events(lines: Iterable[Line]) -> list[Any]:
    dec = InputDecoder()
    out = []
    for line in lines:
        if line.expected_reason is not None or line.obj is None:
            continue
        if line.obj["user_id"].startswith(FLUSH_USER):
            continue
        if line.source == "impressions":
            out.append(dec.decode_impression(line.raw))
        else:
            out.append(dec.decode_click(line.raw))
    return out


def oracle(lines: Iterable[Line]) -> dict[tuple[str, str], int]:
    """(user_id, impression_id) -> label from the whole event set (batch reference)."""
    events = valid_events(lines)
    try:
        from worker.sim.join_oracle import oracle_labels
    except ImportError:  # pragma: no cover - the project's oracle is the reference
        oracle_labels = _oracle_labels
    return oracle_labels(events, WINDOW_MS)


def _oracle_labels(events: Iterable[Any], window_ms: int) -> dict[tuple[str, str], int]:
    imps: dict[tuple[str, str], Any] = {}
    clicks: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for ev in events:
        key = (ev.user_id, ev.impression_id)
        if hasattr(ev, "score"):
            imps.setdefault(key, ev)
        else:
            clicks[key].append(ev)
    return {
        key: int(any(c.ts <= imp.ts + window_ms for c in clicks.get(key, ())))
        for key, imp in imps.items()
    }


def expected_orphans(lines: Iterable[Line]) -> set[tuple[str, str]]:
    events = valid_events(lines)
    imps = {(e.user_id, e.impression_id) for e in events if hasattr(e, "score")}
    return {(e.user_id, e.impression_id) for e in events
            if not hasattr(e, "score") and (e.user_id, e.impression_id) not in imps}


def replay_per_partition(lines: list[Line], partition_of: list[int]) -> tuple[list, list]:
    """Feedback and dead letters of ``worker.replay`` run over each partition's events."""
    per_partition: dict[int, list[Line]] = defaultdict(list)
    for line, p in zip(lines, partition_of, strict=True):
        if (
            line.expected_reason is None
            and line.obj is not None
            and not line.obj["user_id"].startswith(FLUSH_USER)
        ):
            per_partition[p].append(line)
    feedback: list[dict[str, Any]] = []
    dlq: list[dict[str, Any]] = []
    sinks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sinks["feedback"], sinks["dlq"] = feedback, dlq
    for p in sorted(per_partition):
        replay = Replay(
            PipelineConfig(window_ms=WINDOW_MS, allowed_lateness_ms=LATENESS_MS),
            lambda name, obj: sinks[name].append(obj),
        )
        for n, line in enumerate(per_partition[p]):
            kind = "impression" if line.source == "impressions" else "click"
            replay.process_line(orjson.dumps({**line.obj, "type": kind}), n)
        replay.finish()
    return feedback, dlq


# --- Kafka and the worker process ------------------------------------------------------------


async def produce(bootstrap: str, topics: dict[str, str], lines: list[Line]) -> list[int]:
    """Produce in order (one producer: per-partition order is the list order); partitions."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=1_048_576
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topics[line.source], value=line.raw, key=line.key, partition=line.partition
            )
            for line in lines
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [m.partition for m in metadata]


class Outputs:
    """Reads the feedback and dead-letter topics from the beginning."""

    def __init__(self, bootstrap: str, feedback: str, dlq: str) -> None:
        self.bootstrap = bootstrap
        self.topics = (feedback, dlq)
        self.feedback: list[bytes] = []
        self.dlq: list[dict[str, Any]] = []
        self._consumer: Any = None

    async def __aenter__(self) -> Outputs:
        self._consumer = committed_consumer(self.bootstrap, "recal-test-outputs", *self.topics)
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for record in records:
                if tp.topic == self.topics[0]:
                    self.feedback.append(record.value)
                else:
                    self.dlq.append(orjson.loads(record.value))

    async def wait_for(
        self, done: Callable[[Outputs], bool], worker: WorkerProcess, timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout_s:.0f}s waiting for {what}: "
                    f"{len(self.feedback)} feedback, {len(self.dlq)} dead letters so far\n"
                    f"--- worker log tail ---\n{worker.log_tail()}"
                )
            if worker.proc.poll() is not None:
                await self.poll()
                if done(self):
                    break
                pytest.fail(
                    f"worker exited with {worker.proc.returncode} while waiting for {what}\n"
                    f"--- worker log tail ---\n{worker.log_tail()}"
                )
            await self.poll()

    def feedback_dicts(self) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in self.feedback]


class WorkerProcess:
    """``recal worker`` as a subprocess with its log in a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "--log-level", "INFO", "worker", *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def web_port(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(r"web on http://[\d.]+:(\d+)", self.log_path.read_text())
            if match:
                return int(match.group(1))
            time.sleep(0.1)
        raise AssertionError(f"worker never logged its web port\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = 60.0) -> int:
        port = self.web_port()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}\n{self.log_tail()}")
            status, _ = http_get(port, "/readyz")
            if status == 200:
                return port
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout_s:.0f}s\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(
                    f"worker did not stop within {timeout_s:.0f}s of signal {sig}\n"
                    f"{self.log_tail()}"
                ) from None
        self._log.close()
        return self.proc.returncode


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def worker_args(bootstrap: str, prefix: str, app_id: str) -> list[str]:
    """Flags of one worker; W = 300 s, L = 60 s, the other settings at their defaults."""
    return [
        "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--app-id", app_id,
        "--web-port", "0",
        "--attribution-window", str(WINDOW_S),
        "--allowed-lateness", str(LATENESS_MS / 1000),
    ]


def topic_names(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}{name}" for name in ("impressions", "clicks", "feedback", "dlq")}


def fb_key(fb: dict[str, Any]) -> tuple[str, str]:
    return fb["user_id"], fb["impression_id"]


def canonical(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


# --- tests -----------------------------------------------------------------------------------


async def test_worker_joins_like_the_oracle_and_replay(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    started = time.monotonic()
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], 2), TopicSpec(topics["clicks"], 2)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=7, n_impressions=2_000, n_users=150, t0_ms=now + 300_000, now_ms=now)
    lines += flush_lines(2, max_event_ts(lines))
    partition_of = await produce(kafka_bootstrap, topics, lines)
    assert set(partition_of) == {0, 1}

    labels = oracle(lines)
    orphans = expected_orphans(lines)
    malformed = {line.raw: line.expected_reason for line in lines if line.expected_reason}
    assert set(malformed.values()) >= {
        "invalid_json", "schema", "score_range", "too_large", "key_mismatch", "future_ts"
    }
    assert 0 < sum(labels.values()) < len(labels) and orphans

    worker = WorkerProcess(
        worker_args(kafka_bootstrap, prefix, unique_topic("app")),
        tmp_path / "worker.log",
    )
    try:
        async with Outputs(kafka_bootstrap, topics["feedback"], topics["dlq"]) as out:
            await out.wait_for(
                lambda o: len(o.feedback) >= len(labels)
                and len(o.dlq) >= len(malformed) + len(orphans),
                worker, timeout_s=120, what="all feedback and dead letters",
            )
            await asyncio.sleep(1.5)  # anything extra (duplicates) would show up now
            await out.poll()
            port = worker.web_port()
            ready, ready_body = http_get(port, "/readyz")
            health, _ = http_get(port, "/healthz")
            # Counters move when a step is fully persisted, a moment after its outputs.
            n_pos = sum(labels.values())
            want = f'recal_feedback_total{{label="1"}} {float(n_pos)}'
            deadline = time.monotonic() + 15
            while True:
                metrics_status, metrics = http_get(port, "/metrics")
                if want in metrics.decode() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    finally:
        code = worker.stop(signal.SIGTERM)
    elapsed = time.monotonic() - started

    feedback = out.feedback_dicts()
    # No duplicates, exactly the oracle's labels.
    counts = Counter(fb_key(fb) for fb in feedback)
    assert [k for k, n in counts.items() if n > 1] == []
    assert {fb_key(fb): fb["label"] for fb in feedback} == labels
    # Byte for byte what the replay runtime produces on each partition's events.
    replay_feedback, replay_dlq = replay_per_partition(lines, partition_of)
    assert sorted(map(canonical, feedback)) == sorted(map(canonical, replay_feedback))
    # Every malformed message dead-lettered with its reason; every orphan once.
    letters = Counter(
        (base64.b64decode(d["payload_b64"]), d["reason"]) for d in out.dlq
        if d["reason"] != "orphan_click"
    )
    assert letters == Counter(malformed.items())
    for d in out.dlq:
        assert d["source_topic"] in (topics["impressions"], topics["clicks"])
        assert d["received_at"].endswith("Z") and d["offset"] is not None
    got_orphans = [(d["key"], orjson.loads(base64.b64decode(d["payload_b64"]))["impression_id"])
                   for d in out.dlq if d["reason"] == "orphan_click"]
    assert sorted(got_orphans) == sorted(orphans)
    assert sorted(got_orphans) == sorted(
        (d["key"], orjson.loads(base64.b64decode(d["payload_b64"]))["impression_id"])
        for d in replay_dlq
    )
    # Operations endpoints.
    assert ready == 200, ready_body
    assert health == 200
    assert metrics_status == 200
    text = metrics.decode()
    assert want in text, text
    assert 'recal_dead_letters_total{reason="orphan_click"}' in text
    assert "recal_state_records{partition=" in text
    assert 'recal_transactions_total{result="committed"}' in text
    # SIGTERM: clean shutdown.
    assert code == 0, worker.log_tail()
    assert elapsed < 150


async def test_worker_refuses_inputs_that_are_not_copartitioned(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], 2), TopicSpec(topics["clicks"], 3)],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker",
         *worker_args(kafka_bootstrap, prefix, unique_topic("app"))],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not co-partitioned" in proc.stderr
    assert f"{topics['impressions']} has 2 partitions, {topics['clicks']} has 3" in proc.stderr


async def test_worker_killed_midway_loses_no_feedback(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """SIGKILL while processing, restart: every label arrives exactly once, with the right
    value (read_committed: what the killed worker had not committed is redone, once)."""
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], 2), TopicSpec(topics["clicks"], 2)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=11, n_impressions=3_000, n_users=200, t0_ms=now + 300_000, now_ms=now)
    lines = [line for line in lines if line.expected_reason is None]
    half = len(lines) * 2 // 3
    first, rest = lines[:half], lines[half:]
    rest += flush_lines(2, max_event_ts(lines))
    await produce(kafka_bootstrap, topics, first)
    labels = oracle(lines)
    orphans = expected_orphans(lines)
    app_id = unique_topic("app")
    args = worker_args(kafka_bootstrap, prefix, app_id)

    worker = WorkerProcess(args, tmp_path / "worker-1.log")
    async with Outputs(kafka_bootstrap, topics["feedback"], topics["dlq"]) as out:
        try:
            await out.wait_for(lambda o: len(o.feedback) >= 50, worker, 90, "first feedback")
        finally:
            worker.stop(signal.SIGKILL)
        assert worker.proc.returncode == -signal.SIGKILL
        await produce(kafka_bootstrap, topics, rest)
        worker = WorkerProcess(args, tmp_path / "worker-2.log")
        try:
            await out.wait_for(
                lambda o: len({fb_key(orjson.loads(r)) for r in o.feedback}) >= len(labels)
                and len(o.dlq) >= len(orphans),
                worker, timeout_s=120, what="all feedback after the restart",
            )
            await asyncio.sleep(1.5)
            await out.poll()
        finally:
            code = worker.stop(signal.SIGTERM)
    assert code == 0, worker.log_tail()
    feedback = out.feedback_dicts()
    counts = Counter(fb_key(fb) for fb in feedback)
    assert [k for k, n in counts.items() if n > 1] == []
    assert {fb_key(fb): fb["label"] for fb in feedback} == labels
    orphan_keys = {
        (d["key"], orjson.loads(base64.b64decode(d["payload_b64"]))["impression_id"])
        for d in out.dlq if d["reason"] == "orphan_click"
    }
    reasons = Counter(d["reason"] for d in out.dlq)
    assert orphan_keys == orphans, (reasons, sorted(orphan_keys ^ orphans)[:10])
    assert reasons == {"orphan_click": len(orphans)}  # each once


async def test_second_worker_takes_over_partitions_with_their_state(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """Scale out mid-stream: the group rebalances, the new member restores the partitions'
    join state from the changelog, and the labels are still exactly the oracle's, once."""
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    await create_topics(
        kafka_bootstrap,
        [TopicSpec(topics["impressions"], 4), TopicSpec(topics["clicks"], 4)],
    )
    now = int(time.time() * 1000)
    lines = generate(seed=3, n_impressions=3_000, n_users=300, t0_ms=now + 120_000, now_ms=now,
                     step_ms=300)
    lines = [line for line in lines if line.expected_reason is None]
    half = len(lines) // 2
    first, rest = lines[:half], lines[half:] + flush_lines(4, max_event_ts(lines))
    await produce(kafka_bootstrap, topics, first)
    labels = oracle(lines)
    orphans = expected_orphans(lines)
    app_id = unique_topic("app")

    a = WorkerProcess(worker_args(kafka_bootstrap, prefix, app_id),
                      tmp_path / "worker-a.log")
    b: WorkerProcess | None = None
    try:
        async with Outputs(kafka_bootstrap, topics["feedback"], topics["dlq"]) as out:
            await out.wait_for(lambda o: len(o.feedback) >= 300, a, 90, "first feedback")
            b = WorkerProcess(worker_args(kafka_bootstrap, prefix, app_id),
                              tmp_path / "worker-b.log")
            b.wait_ready(90)  # ready = the rebalance gave it partitions and their state
            await produce(kafka_bootstrap, topics, rest)
            await out.wait_for(
                lambda o: len(o.feedback) >= len(labels) and len(o.dlq) >= len(orphans),
                a, timeout_s=120, what="all feedback after the rebalance",
            )
            await asyncio.sleep(1.5)
            await out.poll()
    finally:
        codes = [w.stop(signal.SIGTERM) for w in (a, b) if w is not None]
    assert codes == [0, 0]
    restored = re.findall(r"partition (\d+): state restored \(\d+ records, (\d+) join users",
                          (tmp_path / "worker-b.log").read_text())
    assert restored and any(int(users) > 0 for _p, users in restored), restored
    feedback = out.feedback_dicts()
    counts = Counter(fb_key(fb) for fb in feedback)
    assert [k for k, n in counts.items() if n > 1] == []
    assert {fb_key(fb): fb["label"] for fb in feedback} == labels
    assert {
        (d["key"], orjson.loads(base64.b64decode(d["payload_b64"]))["impression_id"])
        for d in out.dlq
    } == orphans


async def test_idle_partition_negatives_mature_on_wall_time(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """No further events: the watermark follows the wall clock after the idle timeout."""
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix)
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--topic-prefix", prefix,
        "--app-id", unique_topic("app"), "--web-port", "0", "--partitions", "1",
        "--attribution-window", "2", "--allowed-lateness", "0", "--idle-timeout-s", "1",
    ]
    worker = WorkerProcess(args, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        now = int(time.time() * 1000)
        obj = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": now, "score": 0.3}
        await produce(kafka_bootstrap, topics, [Line("impressions", b"u", orjson.dumps(obj), obj)])
        async with Outputs(kafka_bootstrap, topics["feedback"], topics["dlq"]) as out:
            await out.wait_for(lambda o: len(o.feedback) >= 1, worker, 30, "the idle negative")
    finally:
        code = worker.stop(signal.SIGTERM)
    [fb] = out.feedback_dicts()
    assert (fb["impression_id"], fb["label"], fb["label_ts"]) == ("a", 0, now + 2_000)
    assert code == 0
