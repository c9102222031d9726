"""The join's faust wiring: one agent over both input topics, a timer, the state table.

Per input message, the agent hands it to the ``JoinRouter`` (decode, per-partition event-time
alignment) and processes what the router releases: the join runs, the outputs (feedback, dead
letters) are handed to the Kafka producer, and the step goes into the *persist pipeline*.

The persist pipeline (one FIFO task) finishes steps strictly in order: it waits until the
step's outputs are delivered, then writes the touched users' records to the state table's
changelog, then acks the step's input messages (manual acks: a message waiting for
alignment must not be committed). faust commits only acked offsets and flushes the producer
before committing, so a committed offset implies its outputs and its state are in Kafka; and
state in Kafka implies its outputs are (waiting for delivery first is what makes a crash
lose nothing). The agent does not wait for the pipeline, so a delivery round trip per step
does not bound throughput; the queue's size bounds how far it runs ahead.

The timer (every ``TIMER_INTERVAL_S``) releases messages whose alignment wait expired,
advances idle partitions' watermarks on wall time (``AttributionJoin.tick``), queues each
partition's clock record (at most every ``CLOCK_EVERY_MS``, through the pipeline so it is
written behind the user records it accounts for) and refreshes the gauges. While
a rebalance is in progress it processes every buffered message instead (faust waits for all
delivered messages to be acked before it hands partitions over) and does nothing else.

After every table recovery (start-up and each rebalance) the joins of the assigned partitions
are rebuilt from the recovered tables (once the pipeline is empty), before faust resumes the
input streams.

State writes go straight to the changelog topic (through the producer, JSON as faust's
table codec reads it) plus ``table.data``, not through ``table[key] = value``: that path
needs a current event and buffers the changelog message in faust's own send-soon queue,
whose flush before a commit gives up after 0.1 s per message; a direct send is in the Kafka
producer before the message is acked, so the pre-commit flush covers it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from worker.runtime.join_router import JoinRouter, Outcome, RouterConfig
from worker.runtime.merge import BacklogProbe, InputEvent
from worker.runtime.metrics import RuntimeMetrics
from worker.runtime.state import (
    STATE_TABLE,
    clock_of,
    encode_key,
    encode_value,
    group_user_records,
)
from worker.runtime.topics import TopicNames
from worker.settings import Settings

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.2
CLOCK_EVERY_MS = 1_000
AGENT_NAME = "recal-join"
#: Steps whose outputs may be awaiting delivery at once (backpressure on the agent).
PIPELINE_DEPTH = 1_024
#: Most steps the pipeline finishes together.
PERSIST_GROUP = 256


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Step:
    """One pipeline item: a processing step's outcome, its input messages (to ack) and its
    outputs' delivery futures; or a clock record to write (``clock``)."""

    outcome: Outcome
    events: list[InputEvent]
    futures: list[Any]
    clock: dict[str, Any] | None = None


class JoinRuntime:
    """Registers the join's topics, tables, agent, timer and recovery hook on a faust app."""

    def __init__(self, app: Any, settings: Settings, partitions: int) -> None:
        self.app = app
        self.settings = settings
        self.names = TopicNames.from_settings(settings)
        self.router = JoinRouter(RouterConfig.from_settings(settings), self.names)
        self.metrics = RuntimeMetrics()
        self.recovered = False
        self._crashed: BaseException | None = None
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        # (topic, partition) -> offset of the last message received (for the backlog probe).
        self._received: dict[tuple[str, int], int] = {}
        # partition -> (wall ms, clock) of the last clock record queued for writing.
        self._clock_written: dict[int, tuple[int, dict[str, Any]]] = {}
        self._stream: Any = None
        self._pipeline: asyncio.Queue[_Step] | None = None

        names = self.names
        self.input_topic = app.topic(
            names.impressions, names.clicks, key_serializer="raw", value_serializer="raw"
        )
        # No key/value types: faust then uses JSON for both (str user ids, int partitions).
        self.state = app.Table(
            STATE_TABLE, partitions=partitions,
            help="attribution join state: user records and partition clocks "
            "(worker.runtime.state)",
        )
        self.state.on_recover(self._on_recovered)
        app.agent(self.input_topic, name=AGENT_NAME, concurrency=1)(self._agent)
        app.timer(interval=TIMER_INTERVAL_S, name="recal-join-timer")(self._on_timer)
        app.task(self._persist_pipeline)

    # -- status --------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready once state is recovered and no rebalance is in progress."""
        if self._crashed is not None:
            ready, why = False, f"crashed: {self._crashed!r}"
        elif not self.recovered:
            ready, why = False, "recovering state"
        elif self.app.rebalancing:
            ready, why = False, "rebalancing"
        else:
            ready, why = True, f"owning partitions {sorted(self.router.partitions)}"
        self.metrics.ready.set(1 if ready else 0)
        return ready, why

    # -- agent ---------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        # Manual acks: a message is acked only once processed, possibly by the timer.
        self._stream = stream.noack()
        async for event in self._stream.events():
            try:
                await self._on_event(event)
            except Exception as exc:
                await self._crash(exc)
                raise

    async def _on_event(self, event: Any) -> None:
        message = event.message
        partition = message.partition
        if partition not in self.router.partitions:
            # Only a message of a partition revoked a moment ago can get here; acking it does
            # not commit it (faust discards commits of revoked partitions).
            log.warning(
                "message %s[%s]@%s of a partition this worker does not own; skipped",
                message.topic, partition, message.offset,
            )
            await self._stream.ack(event)
            return
        received = now_ms()
        value = message.value
        self.router.offer(
            InputEvent(
                source=self.names.source_of(message.topic),
                topic=message.topic,
                partition=partition,
                offset=message.offset,
                key=message.key,
                raw=b"" if value is None else bytes(value),
                received_ms=received,
                handle=event,
            )
        )
        self._received[(message.topic, partition)] = message.offset
        async with self._locks[partition]:
            await self._run_ready(partition, drain=False)

    async def _run_ready(self, partition: int, drain: bool) -> None:
        """Process what the partition's merger releases (call with the partition's lock)."""
        if partition not in self.router.partitions:
            return
        wall = now_ms()
        ready = self.router.ready(
            partition, wall, drain=drain, backlog=self._backlog_probe(partition)
        )
        if not ready:
            return
        outcome = self.router.process(partition, ready, wall)
        await self._emit(outcome, ready)

    def _backlog_probe(self, partition: int) -> BacklogProbe:
        from faust.types import TP

        consumer = self.app.consumer
        names = self.names

        def probe(source: str) -> bool | None:
            topic = names.input_topic(source)
            try:
                highwater = consumer.highwater(TP(topic, partition))
            except Exception:  # not assigned (yet) or no fetch response yet: unknown
                return None
            if highwater is None:
                return None
            last = self._received.get((topic, partition))
            if last is None:
                return False if highwater == 0 else None
            return bool(highwater > last + 1)

        return probe

    # -- outputs and state ---------------------------------------------------------------

    @property
    def pipeline(self) -> asyncio.Queue[_Step]:
        # Created lazily: the queue must belong to the loop the worker runs.
        if self._pipeline is None:
            self._pipeline = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        return self._pipeline

    async def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None
    ) -> Any:
        """Hand one message to the Kafka producer; returns its delivery future.

        Straight to faust's producer (serialized by us with orjson): faust's ``Topic.send``
        costs several times more per message, and this runtime sends two to three messages
        per input message.
        """
        return await self.app.producer.send(topic, key, value, partition, None, None)

    async def _emit(self, outcome: Outcome, events: list[InputEvent]) -> None:
        """Hand a step's outputs to the producer and queue the rest for the pipeline."""
        partition = outcome.partition
        produce = self._produce
        futures = []
        for fb in outcome.feedback:
            futures.append(
                await produce(
                    self.names.feedback,
                    fb.impression.user_id.encode("utf-8"),
                    orjson.dumps(fb.to_dict()),
                    # Co-partitioned with the inputs, whatever partitioner their producer used.
                    partition,
                )
            )
        for key, letter in outcome.dead_letters:
            futures.append(
                await produce(self.names.dlq, key, orjson.dumps(letter.to_dict()), None)
            )
        clock = None
        if outcome.clock_changed:
            # Held events live only in the clock record: written with this step (after its
            # user records, before its acks), or a crash could lose them.
            clock = self.router.clock_record(partition)
            self._clock_written[partition] = (now_ms(), clock)
        await self.pipeline.put(_Step(outcome, events, futures, clock))

    async def _persist_pipeline(self) -> None:
        """Finish queued steps in order: outputs delivered -> state written -> inputs acked.

        Takes every step queued so far at once (up to ``PERSIST_GROUP``): one wait for their
        outputs, then one changelog write per touched user (its latest record), then the
        acks in order.
        """
        queue = self.pipeline
        changelog = self.state.changelog_topic.get_topic_name()
        data = self.state.data
        produce = self._produce
        while True:
            group = [await queue.get()]
            while len(group) < PERSIST_GROUP and not queue.empty():
                group.append(queue.get_nowait())
            try:
                futures = [f for step in group for f in step.futures]
                if futures:
                    # Outputs must be in Kafka before the state that says they were produced.
                    await asyncio.gather(*futures)
                # Latest record per (partition, key), in the order of their last change:
                # keeps each step's "message users last" order (see JoinRouter._writes) and
                # every clock behind the user records it accounts for.
                writes: dict[tuple[int, str | int], dict[str, Any] | None] = {}
                for step in group:
                    p = step.outcome.partition
                    for user, record in step.outcome.writes.items():
                        writes.pop((p, user), None)
                        writes[(p, user)] = record
                    if step.clock is not None:
                        writes.pop((p, p), None)
                        writes[(p, p)] = step.clock
                for (partition, table_key), value in writes.items():
                    if value is None:
                        data.pop(table_key, None)
                    else:
                        data[table_key] = value
                    await produce(
                        changelog, encode_key(table_key), encode_value(value), partition
                    )
                done = now_ms()
                for step in group:
                    for event in step.events:
                        await self._stream.ack(event.handle)
                    self.metrics.record(step.outcome)
                    if step.events:
                        self.metrics.observe_latency(
                            (e.received_ms for e in step.events), done
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._crash(exc)
                raise
            finally:
                for _ in group:
                    queue.task_done()

    async def _write_clock(self, partition: int, wall: int, force: bool = False) -> None:
        """Queue the partition's clock record (call with the partition's lock): through the
        pipeline, behind the steps whose effects it includes."""
        written = self._clock_written.get(partition)
        if not force and written is not None and wall - written[0] < CLOCK_EVERY_MS:
            return
        record = self.router.clock_record(partition)
        if written is not None and written[1] == record:
            return
        await self.pipeline.put(_Step(Outcome(partition), [], [], record))
        self._clock_written[partition] = (wall, record)

    # -- timer ---------------------------------------------------------------------------

    async def _on_timer(self) -> None:
        self.readiness()  # keeps the recal_ready gauge current
        if not self.recovered or self._stream is None:
            return
        try:
            rebalancing = bool(self.app.rebalancing)
            for partition in sorted(self.router.partitions):
                async with self._locks[partition]:
                    if partition not in self.router.partitions:
                        continue
                    # Never drain the alignment buffer to let a rebalance through (see
                    # create_app's stream_wait_empty): only what is aligned is processed.
                    await self._run_ready(partition, drain=False)
                    if rebalancing:
                        continue
                    wall = now_ms()
                    if self.router.buffered(partition) == 0:
                        outcome = self.router.tick(partition, wall)
                        if outcome.feedback or outcome.dead_letters or outcome.writes:
                            await self._emit(outcome, [])
                    await self._write_clock(partition, wall)
                    self.metrics.set_partition(
                        partition,
                        self.router.state_size(partition),
                        self.router.watermark(partition),
                        self.router.buffered(partition),
                        wall,
                    )
        except Exception as exc:
            await self._crash(exc)
            raise

    # -- rebalance -----------------------------------------------------------------------

    async def _on_recovered(self) -> None:
        """Rebuild the joins of the assigned partitions from the recovered tables."""
        try:
            inputs = {self.names.impressions, self.names.clicks}
            assigned = sorted(
                {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in inputs}
            )
            for partition in sorted(self.router.partitions - set(assigned)):
                async with self._locks[partition]:
                    dropped = self.router.revoke(partition)
                    if dropped:
                        log.warning(
                            "partition %s revoked with %s unprocessed messages; its new owner "
                            "will receive them again", partition, len(dropped),
                        )
                self._clock_written.pop(partition, None)
                self.metrics.forget_partition(partition)
            # Steps still in the pipeline have not written their records yet.
            await self.pipeline.join()
            grouped = group_user_records(self.state.data.items(), assigned)
            for partition in assigned:
                async with self._locks[partition]:
                    self.router.assign(
                        partition, clock_of(self.state.data.get(partition)), grouped[partition]
                    )
                    self._clock_written.pop(partition, None)
                watermark = self.router.watermark(partition)
                log.info(
                    "partition %s: join state restored (%s users, %s keys, watermark %s)",
                    partition, len(grouped[partition]), self.router.state_size(partition),
                    int(watermark) if math.isfinite(watermark) else watermark,
                )
            self.recovered = True
        except Exception as exc:
            # faust runs recovery callbacks under asyncio.wait, which would swallow this.
            await self._crash(exc)
            raise

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Clean stop (before faust stops the consumer): process what is aligned, finish the
        pipeline and write the clocks. Messages still waiting for alignment are not forced
        through (that would finalise negatives early); uncommitted, they come again."""
        if not self.recovered or self._stream is None or self._crashed is not None:
            return
        for partition in sorted(self.router.partitions):
            async with self._locks[partition]:
                await self._run_ready(partition, drain=False)
                await self._write_clock(partition, now_ms(), force=True)
        try:
            await asyncio.wait_for(self.pipeline.join(), timeout_s)
        except asyncio.TimeoutError:
            log.warning(
                "shutdown: %s processing steps not finished after %.0fs; their messages "
                "will be processed again after the restart", self.pipeline.qsize(), timeout_s,
            )
            return
        log.info("shutdown: all received messages processed")

    async def _crash(self, exc: BaseException) -> None:
        if self._crashed is None:
            self._crashed = exc
            self.readiness()
            log.critical("recal join runtime failed; stopping the worker: %r", exc,
                         exc_info=exc)
            await self.app.crash(exc)
