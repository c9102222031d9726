"""One assigned partition of the Kafka runtime: inputs in, the messages of one transaction out.

No I/O here: ``GroupWorker`` reads the consumer, calls ``offer`` for each input message and
``step`` once per poll, and at each commit point takes ``take_transaction()`` — the output
messages, the changed state records and the input offsets that Kafka must commit together
(DESIGN §9). Everything between two commits is in memory only, so a crash, a fencing or a
failed step means "forget it and start again from the last committed transaction"
(``GroupWorker`` rebuilds the task from the changelog).

Order of work: the two input topics are aligned in event time per partition
(``EventTimeMerger``), the released messages become one ``InputBatch`` (decoder rejections
included, so dead letters keep input order) and go through the partition's ``Pipeline``;
its ``Outputs`` become Kafka messages here, in the same encoding as ``recal replay``'s files
(``orjson.dumps`` of the same dicts, copied to exact size by ``dumps_sized`` because a
transaction keeps them until it commits), so the two runtimes publish the same bytes.

Offsets: a message is committed once it has been processed — the offset committed for an
input topic-partition is one past the last message the pipeline took, never one still
waiting in the merger (after a restart those are read again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.core.codec.input_decoder import InputDecoder
from worker.core.codec.output_encoder import dumps_sized
from worker.core.errors import InvalidInputError
from worker.core.pipeline import InputBatch, Outputs, Pipeline, PipelineConfig
from worker.core.records.click import Click
from worker.core.records.dead_letter import (
    DLQ_MAX_KEY_CHARS,
    DLQ_MAX_PAYLOAD_BYTES,
    event_ref,
    make_dead_letter,
    ref_source,
    unpack_ref,
)
from worker.core.records.impression import Impression
from worker.core.records.scope import USER_PREFIX
from worker.runtime.merge import BacklogProbe, EventTimeMerger, InputEvent, _unknown
from worker.runtime.topics import TopicNames

#: The changelog record holding the partition's input positions (per source, the next offset
#: to read), written in the same transaction as the state they belong to. The group's
#: committed offsets say the same, but they can vanish while the state stays (offset
#: retention, a new app id on the same topics): a restore trusts this record. Never a key of
#: the pipeline's own records.
POSITIONS_KEY = "input_positions"

#: Where a returned event's original message lived, by the rejection's reason, when its ref
#: does not say (refs always do in this runtime; this is the fallback for foreign state).
_REASON_SOURCE = {"orphan_click": "clicks", "late_impression": "impressions"}


@dataclass(slots=True)
class OutMessage:
    """One message to produce: ``partition`` None lets the producer's partitioner choose."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


@dataclass
class Transaction:
    """What one commit of one partition holds (DESIGN §9): outputs, changed state records
    (``value`` None: delete) and, per input source, the next offset to consume."""

    partition: int
    messages: list[OutMessage] = field(default_factory=list)
    state: list[OutMessage] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    #: Inputs processed, by (source, outcome): ``accepted`` or ``dead_letter``.
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Output records by kind (``feedback``, ``feedback_1``, ``dlq:<reason>``,
    #: ``calibrators:<reason>:<scope kind>``, ``alerts:<kind>:<status>``, ``posteriors``):
    #: for the metrics.
    outputs: Counter[str] = field(default_factory=Counter)
    #: Arrival wall times (ms) of the inputs this transaction completes (latency metric).
    received_ms: list[int] = field(default_factory=list)
    #: Clicks that came after their impression's label was final (the join's count).
    late_clicks: int = 0

    def __bool__(self) -> bool:
        return bool(self.messages or self.state or self.offsets)


class PartitionTask:
    """One partition's merger, pipeline and pending transaction (see the module doc).

    >>> import orjson
    >>> from worker.core.pipeline import PipelineConfig
    >>> names = TopicNames.from_prefix("t.")
    >>> task = PartitionTask(0, Pipeline(PipelineConfig(window_ms=1_000,
    ...                      allowed_lateness_ms=0)), names, InputDecoder())
    >>> imp = b'{"impression_id":"i1","user_id":"u1","item_id":"x","ts":100,"score":0.2}'
    >>> task.offer("impressions", 5, b"u1", imp, received_ms=0)
    >>> task.offer("clicks", 9, b"u1", b'{"impression_id":"i1","user_id":"u1","ts":400}', 0)
    >>> task.step(wall_ms=0, backlog=lambda source: False)
    >>> txn = task.take_transaction()
    >>> [(m.topic, m.key, orjson.loads(m.value).get("label")) for m in txn.messages]
    [('t.feedback', b'u1', 1), ('t.posteriors', b'u1|', None)]
    >>> txn.offsets
    {'impressions': 6, 'clicks': 10}
    >>> sorted(m.key.decode() for m in txn.state)
    ['clock', 'config', 'input_positions', 'join:u1', 'monitor', 'post:u1']
    """

    def __init__(
        self,
        partition: int,
        pipeline: Pipeline,
        names: TopicNames,
        decoder: InputDecoder,
        merge_max_wait_ms: int = 1_000,
        merge_max_backlog_wait_ms: int = 30_000,
        state_keys: set[str] | None = None,
        shared_scopes: bool = True,
    ) -> None:
        self.partition = partition
        #: Per source, the next input offset to process: the restore's positions
        #: (``start_at``), then one past each message the pipeline took (the consumer lag's
        #: "done" side, and the positions saved with the state; the fetch position runs ahead
        #: by what the merger holds).
        self.next_offsets: dict[str, int] = {}
        #: The input positions read back with the state (``from_records``), else None.
        self.saved_positions: dict[str, int] | None = None
        # Whether this partition publishes the model-wide (global, segment) versions and the
        # alerts; see ``shared_scope_writer``.
        self._shared_scopes = shared_scopes
        # Keys of the partition's live records in the changelog (for the metric).
        self._state_keys = set() if state_keys is None else state_keys
        self._pipeline = pipeline
        self._names = names
        self._decoder = decoder
        self._merger = EventTimeMerger(merge_max_wait_ms, merge_max_backlog_wait_ms)
        self._txn = Transaction(partition)
        self._late_clicks = pipeline.join.stats.late_clicks
        #: (source, offset) of inputs whose processing raised, and how often.
        self.failures: Counter[tuple[str, int]] = Counter()
        #: Inputs to dead-letter instead of processing (they raised too often).
        self.poisoned: dict[tuple[str, int], str] = {}

    @classmethod
    def from_records(
        cls,
        partition: int,
        records: Mapping[str, Any],
        names: TopicNames,
        decoder: InputDecoder,
        config: PipelineConfig,
        **options: Any,
    ) -> PartitionTask:
        """The task of a partition restored from its changelog (the latest record per key):
        the pipeline from its records (a new one with ``config`` when there are none), and
        ``saved_positions``, the input positions written with them."""
        records = dict(records)
        saved = records.pop(POSITIONS_KEY, None)
        pipeline = Pipeline.from_records(records) if records else Pipeline(config)
        keys = set(records) | ({POSITIONS_KEY} if saved is not None else set())
        task = cls(partition, pipeline, names, decoder, state_keys=keys, **options)
        if saved is not None:
            task.saved_positions = {str(source): int(offset) for source, offset in saved.items()}
            task.start_at(task.saved_positions)
        return task

    def start_at(self, positions: Mapping[str, int]) -> None:
        """Where the inputs are read from now (written with the next transaction's state)."""
        self.next_offsets = dict(positions)

    # ------------------------------------------------------------------ read-only

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    @property
    def shared_scopes(self) -> bool:
        """Whether this partition publishes the global/segment versions and the alerts."""
        return self._shared_scopes

    @property
    def buffered(self) -> int:
        """Input messages waiting for the other topic (event-time alignment)."""
        return len(self._merger)

    @property
    def state_records(self) -> int:
        """Live records of the partition's state in the changelog."""
        return len(self._state_keys)

    def pending_offsets(self) -> dict[str, int]:
        """Per source, the next offset after the inputs processed since the last commit."""
        return dict(self._txn.offsets)

    def waiting_for(self) -> str | None:
        """The source the merger waits for (its queue is empty, the other one is not)."""
        return self._merger.waiting_for()

    # ------------------------------------------------------------------ inputs

    def offer(
        self, source: str, offset: int, key: bytes | None, raw: bytes | None, received_ms: int
    ) -> None:
        """Decode one input message and queue it for event-time alignment."""
        topic = self._names.input_topic(source)
        event = InputEvent(source, topic, self.partition, offset, key, raw or b"", received_ms)
        poison = self.poisoned.get((source, offset))
        if poison is not None:
            event.error = InvalidInputError("processing_error", poison)
        else:
            _decode(self._decoder, event, raw)
        self._merger.push(event)

    def step(self, wall_ms: int, backlog: BacklogProbe = _unknown, *, idle: bool = False) -> None:
        """Process what the merger releases; with nothing buffered and ``idle`` (both input
        topic-partitions read to a freshly fetched end), let the watermark follow the wall
        clock. Outputs accumulate in the pending transaction."""
        ready = self._merger.pop_ready(wall_ms, backlog=backlog)
        if ready:
            self._process(ready, wall_ms)
        elif idle and not len(self._merger):
            self._collect(self._pipeline.advance(wall_ms), wall_ms)

    def process_one_by_one(self, wall_ms: int, backlog: BacklogProbe = _unknown) -> None:
        """Like ``step``, one message per pipeline call: after a failure, to find the input
        that raises (``failures`` counts it; the exception propagates)."""
        for event in self._merger.pop_ready(wall_ms, backlog=backlog):
            key = (event.source, event.offset)
            try:
                self._process([event], wall_ms)
            except Exception:
                self.failures[key] += 1
                raise

    def take_transaction(self) -> Transaction:
        """The pending transaction (outputs, changed state, offsets); a new one starts."""
        txn, self._txn = self._txn, Transaction(self.partition)
        pipe = self._pipeline
        late = pipe.join.stats.late_clicks
        txn.late_clicks, self._late_clicks = late - self._late_clicks, late
        names = self._names
        keys = self._state_keys
        for key in pipe.changed_keys():
            record = pipe.export(key)
            if record is None:
                keys.discard(key)
            else:
                keys.add(key)
            txn.state.append(
                OutMessage(
                    names.state, key.encode("utf-8"),
                    None if record is None else dumps_sized(record), self.partition,
                )
            )
        pipe.mark_persisted()
        if txn.offsets:
            keys.add(POSITIONS_KEY)
            txn.state.append(OutMessage(names.state, POSITIONS_KEY.encode("utf-8"),
                                        dumps_sized(self.next_offsets), self.partition))
        return txn

    def drain_posteriors(self) -> None:
        """Add the snapshots of the (user, arm) posteriors updated since the last drain to
        the pending transaction (the compacted posteriors topic, in batches)."""
        out = Outputs(posteriors=self._pipeline.drain_posteriors())
        self._collect(out, 0)
        # Pairs the store evicted (bounded memory): tombstones on the compacted topic.
        for user_id, arm in self._pipeline.monitor.posteriors.drain_evicted():
            self._txn.messages.append(
                OutMessage(self._names.posteriors, f"{user_id}|{arm}".encode(), None)
            )

    # ------------------------------------------------------------------ internals

    def _process(self, events: list[InputEvent], wall_ms: int) -> None:
        batch = InputBatch(wall_ms)
        txn = self._txn
        offsets = txn.offsets
        done = self.next_offsets
        for event in events:
            ref = event_ref(event.offset, event.raw, event.source)
            obj = event.decoded
            if obj is None:
                err = event.error
                assert err is not None, "a released message is either decoded or rejected"
                batch.add_rejected(ref, _key_text(event.key), err.reason, str(err))
                txn.events[(event.source, "dead_letter")] += 1
            elif type(obj) is Impression:
                batch.add_impression(obj, ref)
                txn.events[(event.source, "accepted")] += 1
            else:
                batch.add_click(obj, ref)  # type: ignore[arg-type]
                txn.events[(event.source, "accepted")] += 1
            offsets[event.source] = done[event.source] = event.offset + 1
            txn.received_ms.append(event.received_ms)
        self._collect(self._pipeline.process(batch), wall_ms)

    def _collect(self, out: Outputs, wall_ms: int) -> None:
        if not out:
            return
        names = self._names
        txn = self._txn
        messages = txn.messages
        counts = txn.outputs
        dumps = dumps_sized
        partition = self.partition
        for fb in out.feedback:
            messages.append(
                OutMessage(names.feedback, fb.impression.user_id.encode("utf-8"),
                           dumps(fb.to_dict()), partition)
            )
            counts[f"feedback_{fb.label}"] += 1
        for rejection in out.dead_letters:
            offset, raw = unpack_ref(rejection.ref, {})
            source = ref_source(rejection.ref) or _REASON_SOURCE.get(rejection.reason, "clicks")
            key = rejection.key
            letter = make_dead_letter(
                names.input_topic(source), partition, offset, key, rejection.reason,
                rejection.error, raw, wall_ms or rejection.clock_ms,
                DLQ_MAX_PAYLOAD_BYTES, DLQ_MAX_KEY_CHARS,
            )
            messages.append(
                OutMessage(names.dlq, None if letter.key is None else letter.key.encode(
                    "utf-8", "surrogatepass"), dumps(letter.to_dict()))
            )
            counts[f"dlq:{rejection.reason}"] += 1
        shared = self._shared_scopes
        for msg in out.calibrators:
            if not shared and not msg["scope"].startswith(USER_PREFIX):
                continue
            messages.append(
                OutMessage(names.calibrators, f"{msg['model_id']}|{msg['scope']}".encode(),
                           dumps(msg))
            )
            counts[f"calibrators:{msg['reason']}:{scope_kind(msg['scope'])}"] += 1
        for alert in out.alerts if shared else ():
            messages.append(OutMessage(names.alerts, alert["fingerprint"].encode(), dumps(alert)))
            counts[f"alerts:{alert['kind']}:{alert['status']}"] += 1
        for change in out.tier_changes:
            # Key "<user>|" (no arm can be empty): the user's latest tier, beside its arms.
            messages.append(
                OutMessage(names.posteriors, f"{change['user_id']}|".encode(), dumps(change))
            )
            counts["tier_changes"] += 1
        for snapshot in out.posteriors:
            messages.append(
                OutMessage(names.posteriors, f"{snapshot['user_id']}|{snapshot['arm']}".encode(),
                           dumps(snapshot))
            )
            counts["posteriors"] += 1


def shared_scope_writer(partition: int) -> bool:
    """Whether ``partition`` publishes the global and segment calibrator versions and the
    alerts (DESIGN §3: one writer per key, versions strictly increasing).

    Every partition's pipeline fits its own global and segment calibrators (its users'
    shrinkage uses them), but only partition 0's are published: its traffic is a hash sample
    of the users, and its versions come from its committed state, so they increase across
    restarts and reassignments. Merging every partition's sketches into one aggregator
    (``recal.sketches``) is the design's next step; until then the published model-wide
    versions and alerts see partition 0's share of the traffic.

    >>> shared_scope_writer(0), shared_scope_writer(3)
    (True, False)
    """
    return partition == 0


def scope_kind(scope: str) -> str:
    """``global``, ``segment`` or ``user``: a scope without its name (a bounded label).

    >>> scope_kind("global"), scope_kind("segment:web"), scope_kind("user:u1")
    ('global', 'segment', 'user')
    """
    return scope.split(":", 1)[0]


def _key_text(key: bytes | None) -> str | None:
    """A message key for the dead letter's ``key`` field (undecodable bytes escaped)."""
    if key is None:
        return None
    return key.decode("utf-8", errors="backslashreplace")


def _decode(decoder: InputDecoder, event: InputEvent, raw: bytes | None) -> None:
    try:
        if raw is None:
            raise InvalidInputError("null_value", "message has no value (a tombstone?)")
        if event.source == "impressions":
            obj: Impression | Click = decoder.decode_impression(
                raw, key=event.key, now_ms=event.received_ms
            )
        else:
            obj = decoder.decode_click(raw, key=event.key, now_ms=event.received_ms)
    except InvalidInputError as exc:
        event.error = exc
        return
    if event.key is None:
        # Unkeyed input lands on an arbitrary partition, away from its user's state.
        event.error = InvalidInputError(
            "key_mismatch",
            f"message has no key; it must be keyed by its user_id {obj.user_id!r}",
        )
        return
    event.decoded = obj
