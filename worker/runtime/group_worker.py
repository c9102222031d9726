"""Runtime A: one member of the consumer group, exactly once (DESIGN §2, §8, §9).

The loop: ``getmany`` batches from the two input topics, each partition's ``PartitionTask``
(event-time alignment, the ``Pipeline``), and every ``commit_interval_ms`` one Kafka
transaction per partition holding its output messages, its changed state records (the
compacted ``state`` topic, partition p) and its input offsets
(``send_offsets_to_transaction``). Each step runs in a worker thread while the event loop
goes on heartbeating (a step that matures a large backlog can outlast the session timeout).
Everything read back — inputs, the state at restore — is
read ``read_committed``. A crash, a fencing or a failed step therefore means "start again
from the last committed transaction": nothing lost, nothing twice.

**Fencing.** Each partition has its own transactional producer, ``transactional.id`` =
``<app_id>|<state topic>|<partition>``. The next owner of a partition starts its producer
first (``init_transactions`` aborts or completes the previous owner's open transaction and
fences it: a zombie's next commit fails), then reads the committed offsets and the state —
so it starts from exactly the last committed transaction. (aiokafka's
``send_offsets_to_transaction`` carries no group generation, so per-worker producers could
not fence a zombie; per-partition ids can.) A fenced member gives the partition up and
rejoins the group; it never takes the partition back by starting a producer itself (that
would fence the new owner).

**Rebalances.** The assignment is range-based, so partition p of both input topics goes to
the same member. When a revoke begins, the loop is not inside a step (one lock guards both);
the revoked partitions' pending transactions are committed, then their tasks and producers
are dropped: nothing is processed for a partition once its revoke has begun. Messages still
waiting in the merger were never committed and are read again by the next owner. Assigned
partitions are adopted (producer, restore) by the loop, one per turn, not in the assignment
callback: aiokafka sends no heartbeat until that callback returns.

**Idle inputs.** The merger waits for the other topic only while that topic-partition has
unread messages. That is asked of the broker: the consumer's position against an end offset
fetched for the question (``end_offsets``), never a cached highwater. The same check, on
both topics, lets an idle partition's watermark follow the wall clock.

**Poison input.** A step that raises aborts nothing on Kafka (the transaction was not begun)
but the partition's in-memory state is suspect: the partition is rebuilt from the changelog,
its consumer seeks back to the committed offsets, and the inputs are processed one by one
until the failing one is found; an input that raised ``max_processing_attempts`` times is
dead-lettered (``processing_error``, with the exception text) and the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import Counter
from typing import Any

from aiokafka import ConsumerRebalanceListener

from worker.core.codec.input_decoder import InputDecoder
from worker.runtime.metrics import REFRESH_INTERVAL_S, RuntimeMetrics
from worker.runtime.partition_task import PartitionTask, shared_scope_writer
from worker.runtime.security import aiokafka_security_kwargs, bootstrap_list
from worker.runtime.topics import (
    INPUT_SOURCES,
    STATE_MAX_MESSAGE_BYTES,
    TopicNames,
    TopicPlan,
)
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Transactions of one partition that may fail in a row (each time the partition restarts
#: from its last committed transaction) before the worker stops: a failure that repeats is
#: not transient (e.g. a record over the broker's limit) and must reach the operator.
MAX_COMMIT_FAILURES = 5
#: Largest number of records one ``getmany`` returns (bounds one step's work and latency).
MAX_POLL_RECORDS = 20_000
#: aiokafka's ``max_poll_interval_ms`` (its default, set explicitly): a step longer than
#: this makes the member leave the group, so liveness fails past it.
MAX_POLL_INTERVAL_S = 300.0


def now_ms() -> int:
    return int(time.time() * 1000)


class GroupWorker:
    """One member of the recal consumer group (see the module doc).

    ``run()`` returns when ``stop()`` was called (SIGTERM: the pending transactions are
    committed and the group is left) or raises when the worker cannot go on.
    """

    def __init__(self, settings: Settings, plan: TopicPlan) -> None:
        self.settings = settings
        self.names = TopicNames.from_settings(settings)
        self.plan = plan
        self.metrics = RuntimeMetrics()
        self._config = settings.pipeline_config()
        self._decoder = InputDecoder(
            max_message_bytes=settings.max_message_bytes,
            max_future_ms=int(settings.max_future_s * 1000),
            context_fields=settings.context_fields,
        )
        self._tasks: dict[int, PartitionTask] = {}
        self._producers: dict[int, Any] = {}
        # Per partition: inputs that raised, and how often (survives the task's rebuild).
        self._failures: dict[int, Counter[tuple[str, int]]] = {}
        self._poisoned: dict[int, dict[tuple[str, int], str]] = {}
        # Partition -> the input offsets (by source) up to which it runs one message per step.
        self._careful: dict[int, dict[str, int]] = {}
        self._lock = asyncio.Lock()
        # The restore consumer reads one partition's changelog at a time (``assign``
        # replaces its assignment): restores that may run concurrently (failed commits of
        # several partitions in one round) take turns.
        self._restore_lock = asyncio.Lock()
        # Partitions assigned by the group but not yet adopted (restored): adopted by the
        # loop, one per turn, not inside aiokafka's assignment callback, during which the
        # member sends no heartbeats (a long restore there cost it its membership).
        self._to_adopt: set[int] = set()
        self._stop = asyncio.Event()
        self._consumer: Any = None
        self._restorer: Any = None
        self._assigned = False
        self._crashed: str | None = None
        self._last_loop = time.monotonic()
        # When the step running in its thread began (None: none running).
        self._step_started: float | None = None
        self._next_commit = 0.0
        self._next_posteriors = 0.0
        self._next_metrics = 0.0
        self._next_idle_check: dict[int, float] = {}
        # Per (partition, source), the newest end offset fetched. End offsets never go down,
        # so a position below one proves unread messages without asking the broker again; a
        # position at or past it needs a fresh fetch (idle is only ever decided on that).
        self._known_ends: dict[tuple[int, str], int] = {}
        self._commit_failures: Counter[int] = Counter()
        # Per partition, how often its inputs were sought (restores): messages fetched
        # before a seek of their partition are dropped (they are fetched again after it).
        self._seeks: Counter[int] = Counter()

    # ------------------------------------------------------------------ health

    def readiness(self) -> tuple[bool, str]:
        if self._crashed is not None:
            return False, f"crashed: {self._crashed}"
        if not self._assigned:
            return False, "waiting for a partition assignment"
        return True, f"processing partitions {sorted(self._tasks)}"

    def liveness(self) -> tuple[bool, str]:
        """False once the worker crashed or its loop has not turned for a session timeout
        (a stuck consumer: the orchestrator should restart the process)."""
        if self._crashed is not None:
            return False, f"crashed: {self._crashed}"
        now = time.monotonic()
        stalled = now - self._last_loop
        if self._step_started is not None:
            # A long step (a watermark jump maturing a large backlog) is work, not a stall,
            # up to aiokafka's max poll interval: past it the member leaves the group anyway.
            busy = now - self._step_started
            if busy > MAX_POLL_INTERVAL_S:
                return False, f"one processing step has run for {busy:.0f}s"
            return True, f"processing a step for {busy:.0f}s"
        if stalled > max(30.0, self.settings.session_timeout_s):
            return False, f"consumer loop stalled for {stalled:.0f}s"
        return True, "ok"

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        s = self.settings
        security = aiokafka_security_kwargs(s)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(s),
            group_id=s.app_id,
            client_id=f"{s.app_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # Range: partition p of both input topics goes to the same member.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
            max_poll_interval_ms=int(MAX_POLL_INTERVAL_S * 1000),
            request_timeout_ms=int(max(40.0, s.session_timeout_s + 10) * 1000),
            max_partition_fetch_bytes=max(1 << 20, s.max_message_bytes * 4),
            fetch_max_bytes=64 << 20,
            **security,
        )
        self._restorer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(s),
            group_id=None,
            client_id=f"{s.app_id}-restore",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=STATE_MAX_MESSAGE_BYTES,
            fetch_max_bytes=64 << 20,
            isolation_level="read_committed",
            **security,
        )
        await self._restorer.start()
        self._consumer.subscribe(
            [self.names.impressions, self.names.clicks], listener=_Listener(self)
        )
        await self._consumer.start()
        try:
            await self._loop()
        except BaseException as exc:
            self._crashed = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await self._shutdown()

    async def _loop(self) -> None:
        consumer = self._consumer
        interval = self.settings.commit_interval_ms / 1000.0
        posterior_interval = self.settings.posterior_interval_s
        while not self._stop.is_set():
            self._last_loop = time.monotonic()
            batches = await consumer.getmany(
                timeout_ms=min(100, self.settings.commit_interval_ms),
                max_records=MAX_POLL_RECORDS,
            )
            # No await since getmany returned: a partition sought after this point was
            # sought *after* these messages were fetched.
            seeks = dict(self._seeks)
            probes = await self._probe_inputs()
            if time.monotonic() >= self._next_metrics:
                self._next_metrics = time.monotonic() + REFRESH_INTERVAL_S
                await self._refresh_metrics()
            async with self._lock:
                if self._to_adopt:
                    await self._adopt_next()
                wall = now_ms()
                for tp, messages in batches.items():
                    task = self._tasks.get(tp.partition)
                    if task is None or seeks.get(tp.partition) != self._seeks[tp.partition]:
                        # Revoked, or rebuilt and sought back to its committed offsets since
                        # these were fetched: they are read again from there.
                        continue
                    source = self.names.source_of(tp.topic)
                    offer = task.offer
                    for msg in messages:
                        offer(source, msg.offset, msg.key, msg.value, wall)
                for partition in list(self._tasks):
                    await self._step(partition, wall, probes.get(partition))
                mono = time.monotonic()
                if mono >= self._next_posteriors:
                    self._next_posteriors = mono + posterior_interval
                    for task in self._tasks.values():
                        task.drain_posteriors()
                if mono >= self._next_commit:
                    self._next_commit = mono + interval
                    await self._commit(list(self._tasks))

    async def _step(
        self, partition: int, wall: int, probe: dict[str, bool] | None
    ) -> None:
        task = self._tasks[partition]
        backlog = (lambda source: probe.get(source)) if probe is not None else (lambda _s: None)
        idle = probe is not None and probe.get("impressions") is False and (
            probe.get("clicks") is False
        )
        careful = self._careful.get(partition)
        try:
            if careful is None:
                # In a worker thread, so the event loop keeps running meanwhile: aiokafka's
                # heartbeats (a step that matures a large backlog at once can take longer
                # than the session timeout, and cost the member its partitions), fetches and
                # the web endpoints. Only this step touches the partition's state: the loop
                # awaits it under the lock, and a revoke waits for that lock.
                self._step_started = time.monotonic()
                try:
                    await asyncio.to_thread(task.step, wall, backlog, idle=idle)
                finally:
                    self._step_started = None
            else:
                task.process_one_by_one(wall, backlog)
                done = task.pending_offsets()
                if all(done.get(src, -1) >= off for src, off in careful.items()):
                    del self._careful[partition]
        except Exception as exc:  # a bug or poison input: rebuild, find the input, move on
            await self._on_step_failure(partition, task, exc)

    async def _on_step_failure(self, partition: int, task: PartitionTask, exc: Exception) -> None:
        self.metrics.processing_failures.inc()
        failures = self._failures.setdefault(partition, Counter())
        failures.update(task.failures)
        text = f"processing raised {type(exc).__name__}: {exc}"
        poisoned = self._poisoned.setdefault(partition, {})
        limit = self.settings.max_processing_attempts
        for key, n in failures.items():
            if n >= limit and key not in poisoned:
                poisoned[key] = f"{text} ({n} attempts)"
                log.error(
                    "partition %s: %s offset %s raised %s times; it is dead-lettered "
                    "(processing_error)", partition, key[0], key[1], n,
                )
        if partition not in self._careful:
            # Everything up to what this step had read is replayed one message at a time.
            self._careful[partition] = task.pending_offsets()
        log.error(
            "partition %s: step failed (%s); rebuilding it from its last committed "
            "transaction\n%s", partition, text, "".join(traceback.format_exception(exc)),
        )
        # A new producer first: its init_transactions waits until this partition's last
        # commit is fully written (markers included), so the restore below reads the state
        # and the committed offsets of the same transaction.
        producer = self._producers.pop(partition, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        await self._adopt(partition)

    # ------------------------------------------------------------------ idle / backlog

    async def _probe_inputs(self) -> dict[int, dict[str, bool]]:
        """Per partition that needs it: whether each input topic-partition has unread
        messages, from end offsets fetched now (DESIGN §9). Asked for partitions whose
        merger waits for the other topic, and (once per idle timeout / 4) for partitions
        with nothing buffered, to let an idle watermark follow the wall clock."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        consumer = self._consumer
        mono = time.monotonic()
        wanted: dict[int, tuple[str, ...]] = {}
        for partition, task in list(self._tasks.items()):
            waiting = task.waiting_for()
            if waiting is not None:
                wanted[partition] = (waiting,)
            elif task.buffered == 0 and mono >= self._next_idle_check.get(partition, 0.0):
                self._next_idle_check[partition] = mono + self.settings.idle_timeout_s / 4
                wanted[partition] = INPUT_SOURCES
        if not wanted:
            return {}
        out: dict[int, dict[str, bool]] = {}
        tps: dict[tuple[int, str], Any] = {}
        try:
            for p, sources in wanted.items():
                for src in sources:
                    tp = TopicPartition(self.names.input_topic(src), p)
                    known = self._known_ends.get((p, src))
                    if known is not None and await consumer.position(tp) < known:
                        out.setdefault(p, {})[src] = True  # unread for sure: no round trip
                    else:
                        tps[(p, src)] = tp
            if not tps:
                return out
            ends = await consumer.end_offsets(list(tps.values()))
            for (p, src), tp in tps.items():
                self._known_ends[(p, src)] = ends[tp]
                position = await consumer.position(tp)
                out.setdefault(p, {})[src] = position < ends[tp]
            return out
        except (KafkaError, AssertionError, asyncio.TimeoutError) as exc:
            # A rebalance in progress, or the broker slow: unknown (the merger waits its
            # bounded time), never "idle".
            log.debug("end-offset probe failed: %r", exc)
            return {}

    async def _refresh_metrics(self) -> None:
        """The state gauges and the consumer lag of every owned partition (on a timer):
        one end-offset request for all input topic-partitions, against the next offset
        each partition's pipeline takes (not the fetch position, which runs ahead)."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        tps = {
            (p, src): TopicPartition(self.names.input_topic(src), p)
            for p in list(self._tasks) for src in INPUT_SOURCES
        }
        ends: dict[Any, int] = {}
        if tps:
            try:
                # Bounded: with the broker away the request would wait its full timeout,
                # and the loop with it; the lag is simply not updated this time.
                ends = await asyncio.wait_for(
                    self._consumer.end_offsets(list(tps.values())), REFRESH_INTERVAL_S / 2
                )
            except (KafkaError, AssertionError, asyncio.TimeoutError) as exc:
                log.debug("end-offset request for the lag metric failed: %r", exc)
        for (p, src), tp in tps.items():
            task = self._tasks.get(p)  # revoked during the request: another worker's now
            done = None if task is None else task.next_offsets.get(src)
            if done is not None and tp in ends:
                self.metrics.set_lag(p, src, max(0, ends[tp] - done))
        self.metrics.refresh(self._tasks)

    # ------------------------------------------------------------------ transactions

    async def _commit(self, partitions: list[int]) -> None:
        await asyncio.gather(*(self._commit_one(p) for p in partitions if p in self._tasks))

    async def _commit_one(self, partition: int) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError, ProducerFenced

        task = self._tasks[partition]
        # In a thread like a step (exporting the changed state can take seconds after a
        # large step), so heartbeats go on; the lock keeps the task to this thread.
        txn = await asyncio.to_thread(task.take_transaction)
        if not txn:
            return
        producer = self._producers[partition]
        try:
            await producer.begin_transaction()
            send = producer.send
            for msg in txn.messages:
                await send(msg.topic, msg.value, key=msg.key, partition=msg.partition)
            for msg in txn.state:
                await send(msg.topic, msg.value, key=msg.key, partition=msg.partition)
            if txn.offsets:
                await producer.send_offsets_to_transaction(
                    {
                        TopicPartition(self.names.input_topic(src), partition): offset
                        for src, offset in txn.offsets.items()
                    },
                    self.settings.app_id,
                )
            await producer.commit_transaction()
        except KafkaError as exc:
            self.metrics.transactions.labels(result="aborted").inc()
            if isinstance(exc, ProducerFenced):
                # A newer producer holds the partition's transactional id: its new owner,
                # after a rebalance this member has not seen yet (e.g. it was paused past
                # the session timeout). Starting a producer again would fence that owner:
                # give the partition up and rejoin; if it is still ours, the new
                # assignment adopts it again from its last committed transaction.
                log.error(
                    "partition %s: transaction fenced (%s); the partition is given up and "
                    "the group rejoined", partition, exc,
                )
                await self._drop(partition)
                with contextlib.suppress(Exception):
                    self._consumer.pause(*self._input_tps(partition))
                self._consumer._coordinator.request_rejoin()
                return
            failures = self._commit_failures[partition] = self._commit_failures[partition] + 1
            if failures >= MAX_COMMIT_FAILURES:
                raise RuntimeError(
                    f"partition {partition}: {failures} transactions in a row failed, the last "
                    f"with {type(exc).__name__}: {exc}; stopping (the input offsets stay at "
                    "the last committed transaction)"
                ) from exc
            log.error(
                "partition %s: transaction failed (%s: %s); the partition restarts from its "
                "last committed transaction", partition, type(exc).__name__, exc,
            )
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            await self._drop(partition)
            await self._adopt(partition)
            return
        self._commit_failures[partition] = 0
        self.metrics.record(txn, now_ms())
        pipe = task.pipeline
        self.metrics.set_partition(
            partition, task.state_records, pipe.clock_ms, task.buffered, now_ms()
        )

    # ------------------------------------------------------------------ assignment

    async def on_revoked(self, partitions: set[int]) -> None:
        async with self._lock:
            self._assigned = False
            self.metrics.ready.set(0)
            self._to_adopt -= partitions
            mine = sorted(p for p in partitions if p in self._tasks)
            if mine:
                await self._commit(mine)
                for partition in mine:
                    await self._drop(partition)
                log.info("partitions %s revoked (pending transactions committed)", mine)

    async def on_assigned(self, partitions: set[int], tps: list[Any]) -> None:
        # Before any await: nothing is fetched for the new partitions until their state is
        # restored and their positions set (``_restore`` resumes them).
        self._consumer.pause(*tps)
        async with self._lock:
            self.metrics.rebalances.inc()
            # Adopted by the loop (``_adopt_next``): aiokafka sends no heartbeat until this
            # callback returns, and restoring may take longer than the session timeout.
            self._to_adopt = {p for p in partitions if p not in self._tasks}
            # Partitions kept across the rebalance (not revoked) just go on.
            self._consumer.resume(*(tp for tp in tps if tp.partition in self._tasks))
            log.info("partitions %s given by the group; restoring %s", sorted(partitions),
                     sorted(self._to_adopt))
            if not self._to_adopt:
                self._ready()

    async def _adopt_next(self) -> None:
        """Adopt one partition assigned by the group (the loop calls this each turn)."""
        partition = min(self._to_adopt)
        await self._adopt(partition)
        self._to_adopt.discard(partition)
        if not self._to_adopt:
            self._ready()

    def _ready(self) -> None:
        self._assigned = True
        self.metrics.ready.set(1)
        log.info("assigned partitions %s", sorted(self._tasks))

    def _input_tps(self, partition: int) -> list[Any]:
        from aiokafka import TopicPartition

        return [TopicPartition(self.names.input_topic(source), partition)
                for source in INPUT_SOURCES]

    async def _adopt(self, partition: int) -> None:
        """Become the owner of ``partition``: fence the previous owner, then restore."""
        from aiokafka import AIOKafkaProducer

        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_list(s),
            client_id=f"{s.app_id}-p{partition}",
            transactional_id=f"{s.app_id}|{self.names.state}|{partition}",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            # State records (the partition's monitor) can pass 1 MB: the state topic is
            # created with the same limit.
            max_request_size=STATE_MAX_MESSAGE_BYTES,
            **aiokafka_security_kwargs(s),
        )
        # start() runs init_transactions: the previous owner's open transaction is aborted
        # (or completed) and that owner fenced, before anything is read below.
        await producer.start()
        self._producers[partition] = producer
        await self._restore(partition)

    async def _restore(self, partition: int) -> None:
        """(Re)build the partition's task from its changelog and seek its inputs back to the
        positions saved with it (else the group's committed offsets): the state of the last
        committed transaction."""
        from aiokafka import TopicPartition

        started = time.monotonic()
        self._tasks.pop(partition, None)
        records = await self._read_changelog(partition)
        # Rebuilding a large state is CPU work: in a thread, so heartbeats go on.
        task = await asyncio.to_thread(
            PartitionTask.from_records,
            partition, records, self.names, self._decoder, self._config,
            merge_max_wait_ms=self.settings.merge_max_wait_ms,
            merge_max_backlog_wait_ms=self.settings.merge_max_backlog_wait_ms,
            shared_scopes=shared_scope_writer(partition),
        )
        if task.pipeline.config != self._config:
            log.warning(
                "partition %s: its state was built with other pipeline settings than this "
                "worker's; the state's settings stay in force for the partition (use a new "
                "--topic-prefix to start over with the new ones)", partition,
            )
        saved = task.saved_positions
        consumer = self._consumer
        tps = [TopicPartition(self.names.input_topic(source), partition)
               for source in INPUT_SOURCES]
        consumer.pause(*tps)
        self._seeks[partition] += 1
        positions: dict[str, int] = {}
        committed_by_source: dict[str, int | None] = {}
        for source, tp in zip(INPUT_SOURCES, tps, strict=True):
            committed = await consumer.committed(tp)
            committed_by_source[source] = committed
            if saved is not None and source in saved:
                # The positions written with the state: the state is exactly what the
                # inputs before them made (the group's offsets may be gone or another's).
                positions[source] = saved[source]
            elif committed is not None:
                positions[source] = committed
            else:  # a new group: from the beginning (explicitly, see above)
                positions[source] = (await consumer.beginning_offsets([tp]))[tp]
            consumer.seek(tp, positions[source])
        if saved is not None and any(
                committed_by_source[s] != positions[s] for s in INPUT_SOURCES if s in saved):
            log.warning(
                "partition %s: the group's committed offsets %s differ from the positions "
                "saved with the partition's state %s (offsets expired, or another app id on "
                "the same topics); resuming from the state's positions", partition,
                committed_by_source, saved,
            )
        task.start_at(positions)
        task.poisoned = self._poisoned.setdefault(partition, {})
        self._tasks[partition] = task
        consumer.resume(*tps)
        elapsed = time.monotonic() - started
        self.metrics.restore_seconds.observe(elapsed)
        self.metrics.restore_records.inc(len(records))
        users = sum(1 for key in records if key.startswith("join:"))
        log.info(
            "partition %s: state restored (%s records, %s join users) in %.2fs; inputs from "
            "%s %s", partition, len(records), users, elapsed,
            "the state's positions" if saved is not None else "the group's offsets", positions,
        )

    async def _read_changelog(self, partition: int) -> dict[str, Any]:
        """The latest record per key of the partition's changelog (committed data only)."""
        from aiokafka import TopicPartition

        async with self._restore_lock:
            return await self._read_changelog_locked(TopicPartition(self.names.state, partition))

    async def _read_changelog_locked(self, tp: Any) -> dict[str, Any]:
        import orjson

        partition = tp.partition
        restorer = self._restorer
        restorer.assign([tp])
        # An explicit seek: seek_to_beginning right after assign() can lose the race with the
        # assignment's own offset reset and leave the position at the end (nothing restored).
        start = (await restorer.beginning_offsets([tp]))[tp]
        restorer.seek(tp, start)
        end = (await restorer.end_offsets([tp]))[tp]
        records: dict[str, Any] = {}
        last_log = time.monotonic()
        while await restorer.position(tp) < end:
            batch = await restorer.getmany(tp, timeout_ms=500, max_records=50_000)
            for msg in batch.get(tp, ()):
                key = msg.key.decode("utf-8")
                if msg.value is None:
                    records.pop(key, None)
                else:
                    records[key] = orjson.loads(msg.value)
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log.info(
                    "partition %s: restoring state, offset %s of %s",
                    partition, await restorer.position(tp), end,
                )
        return records

    async def _drop(self, partition: int) -> None:
        self._tasks.pop(partition, None)
        self._careful.pop(partition, None)
        for source in INPUT_SOURCES:
            self._known_ends.pop((partition, source), None)
        self.metrics.forget_partition(partition)
        producer = self._producers.pop(partition, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _shutdown(self) -> None:
        async with self._lock:
            if self._crashed is None and self._tasks:
                with contextlib.suppress(Exception):
                    await self._commit(list(self._tasks))
            for partition in list(self._tasks):
                await self._drop(partition)
        for client in (self._consumer, self._restorer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, forwarded to the worker (by partition number)."""

    def __init__(self, worker: GroupWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._worker.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._worker.on_assigned({tp.partition for tp in assigned}, list(assigned))

