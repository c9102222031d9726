"""Runtime A's routing of input messages to the per-partition attribution joins (no I/O).

The faust agent hands every input message to ``JoinRouter.offer`` and processes what
``ready`` releases with ``process``; the timer calls ``ready``/``process`` too, and ``tick``
for the idle watermark advance. ``process`` and ``tick`` return an ``Outcome``: the feedback
and dead letters to send, and the table records to write. The runtime must deliver the
outputs *before* it writes the records (a record marks its events as applied; written
first, a crash in between would lose the outputs), then ack the events.

Idempotency under redelivery (DESIGN §9): a user record carries the offsets of the last
impression and click applied to it; a redelivered message at or below them is skipped
(counted as ``redelivered``). What a crash between "outputs delivered" and "records written"
can still cause is a repeat of those outputs, byte-identical (feedback is deterministic);
never a loss. The per-partition clock is persisted less often than the users and never
ahead of them (see ``worker.runtime.state``): a restored older clock only means a lower
watermark, i.e. labels that mature a little later, never a label lost or changed.

This module does no maths: the decoder validates, the join labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import InvalidInputError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.records.click import Click
from worker.core.records.dead_letter import (
    DLQ_MAX_KEY_CHARS,
    DLQ_MAX_PAYLOAD_BYTES,
    DeadLetter,
    dead_letter_key,
    event_ref,
    future_ts_error,
    make_dead_letter,
    orphan_click_error,
    unpack_ref,
)
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression
from worker.runtime.merge import BacklogProbe, EventTimeMerger, InputEvent, _unknown
from worker.runtime.state import NO_OFFSET, clock_record, user_record
from worker.runtime.topics import TopicNames
from worker.settings import Settings

_SOURCE_INDEX = {"impressions": 0, "clicks": 1}


def key_text(key: bytes | None) -> str | None:
    """A message key for the dead letter's ``key`` field (undecodable bytes escaped)."""
    if key is None:
        return None
    return key.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class RouterConfig:
    """The join and decoder settings the router needs (built from ``Settings``)."""

    window_ms: int = 1_800_000
    allowed_lateness_ms: int = 60_000
    idle_timeout_ms: int = 30_000
    max_message_bytes: int = 65_536
    max_future_ms: int = 3_600_000
    merge_max_wait_ms: int = 1_000
    merge_max_backlog_wait_ms: int = 30_000
    # The join's clock guard (None: the window).
    max_clock_jump_ms: int | None = None
    clock_confirmations: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> RouterConfig:
        return cls(
            window_ms=settings.window_ms,
            allowed_lateness_ms=settings.lateness_ms,
            idle_timeout_ms=settings.idle_timeout_ms,
            max_message_bytes=settings.max_message_bytes,
            max_future_ms=int(settings.max_future_s * 1000),
            max_clock_jump_ms=settings.max_clock_jump_ms,
            clock_confirmations=settings.clock_confirmations,
        )


@dataclass
class Outcome:
    """What one ``process``/``tick`` call produced for one partition.

    ``dead_letters`` pairs each letter with the Kafka key to send it under (the original
    message key). ``writes`` maps user ids (state-table keys) to their new record (None:
    delete the key), in the order to write them. ``events`` counts input messages by
    (source, outcome): ``accepted`` (reached the join), ``dead_letter`` (rejected) or
    ``redelivered`` (skipped: already applied before a restart).
    """

    partition: int
    feedback: list[Feedback] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    writes: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    late_clicks: int = 0
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: The join's clock guard took or let go of an event: the clock record (where held
    #: events live) must be written with this outcome, before its inputs are acked.
    clock_changed: bool = False


class _Partition:
    __slots__ = ("join", "merger", "offsets")

    def __init__(self, join: AttributionJoin, merger: EventTimeMerger) -> None:
        self.join = join
        self.merger = merger
        # user_id -> [impressions_offset, clicks_offset] of every user that has a record.
        self.offsets: dict[str, list[int]] = {}


class JoinRouter:
    """Decodes input messages and drives one ``AttributionJoin`` per assigned partition.

    >>> from worker.runtime.topics import TopicNames
    >>> router = JoinRouter(RouterConfig(window_ms=1_000, allowed_lateness_ms=0),
    ...                     TopicNames("imp", "clk", "fb", "dlq"))
    >>> router.assign(0, None, [])
    >>> def msg(source, offset, raw):
    ...     return InputEvent(source, source[:3], 0, offset, b"u1", raw, 0)
    >>> router.offer(msg("impressions", 0,
    ...     b'{"impression_id":"i1","user_id":"u1","item_id":"x","ts":100,"score":0.2}'))
    >>> router.offer(msg("clicks", 0, b'{"impression_id":"i1","user_id":"u1","ts":400}'))
    >>> out = router.process(0, router.ready(0, 0, drain=True), wall_ms=0)
    >>> [(f.impression.impression_id, f.label) for f in out.feedback], list(out.writes)
    ([('i1', 1)], ['u1'])
    """

    def __init__(self, config: RouterConfig, names: TopicNames) -> None:
        self._config = config
        self._names = names
        self._decoder = InputDecoder(
            max_message_bytes=config.max_message_bytes, max_future_ms=config.max_future_ms
        )
        self._parts: dict[int, _Partition] = {}

    # -- partitions ----------------------------------------------------------------------

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._parts)

    def assign(
        self, partition: int, clock: dict[str, Any] | None, records: Iterable[dict[str, Any]]
    ) -> None:
        """(Re)build a partition's join from its persisted clock and user records."""
        cfg = self._config
        join = AttributionJoin(
            window_ms=cfg.window_ms,
            allowed_lateness_ms=cfg.allowed_lateness_ms,
            idle_timeout_ms=cfg.idle_timeout_ms,
            max_clock_jump_ms=(
                cfg.window_ms if cfg.max_clock_jump_ms is None else cfg.max_clock_jump_ms
            ),
            clock_confirmations=cfg.clock_confirmations,
        )
        records = list(records)
        join.restore(clock, (record["s"] for record in records))
        part = _Partition(
            join, EventTimeMerger(cfg.merge_max_wait_ms, cfg.merge_max_backlog_wait_ms)
        )
        for record in records:
            part.offsets[record["s"]["user_id"]] = list(record["o"])
        old = self._parts.get(partition)
        if old is not None and len(old.merger):
            # Buffered messages were never applied nor acked; keep them in order.
            for event in old.merger.clear():
                part.merger.push(event)
        self._parts[partition] = part

    def revoke(self, partition: int) -> list[InputEvent]:
        """Forget a partition; returns its buffered (unprocessed, unacked) messages."""
        part = self._parts.pop(partition, None)
        return [] if part is None else part.merger.clear()

    def join(self, partition: int) -> AttributionJoin:
        return self._parts[partition].join

    def buffered(self, partition: int) -> int:
        return len(self._parts[partition].merger)

    def state_size(self, partition: int) -> int:
        return self._parts[partition].join.state_size()

    def watermark(self, partition: int) -> float:
        return self._parts[partition].join.watermark

    def clock_record(self, partition: int) -> dict[str, Any]:
        return clock_record(partition, self._parts[partition].join.export_clock())

    # -- messages ------------------------------------------------------------------------

    def offer(self, event: InputEvent) -> None:
        """Decode a message and queue it for its partition (KeyError: not assigned)."""
        part = self._parts[event.partition]
        self._decode(event)
        part.merger.push(event)

    def ready(
        self,
        partition: int,
        wall_ms: int,
        *,
        drain: bool = False,
        backlog: BacklogProbe = _unknown,
    ) -> list[InputEvent]:
        """The queued messages to process now, in order (see ``EventTimeMerger``)."""
        return self._parts[partition].merger.pop_ready(wall_ms, drain=drain, backlog=backlog)

    def _decode(self, event: InputEvent) -> None:
        decoder = self._decoder
        try:
            if event.source == "impressions":
                obj: Impression | Click = decoder.decode_impression(
                    event.raw, key=event.key, now_ms=event.received_ms
                )
            else:
                obj = decoder.decode_click(event.raw, key=event.key, now_ms=event.received_ms)
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

    def process(self, partition: int, events: Iterable[InputEvent], wall_ms: int) -> Outcome:
        """Apply released messages (in order) to the partition's join."""
        part = self._parts[partition]
        join = part.join
        offsets = part.offsets
        out = Outcome(partition)
        guard_changes = join.guard_changes
        touched: dict[str, list[int]] = {}
        for event in events:
            source = event.source
            obj = event.decoded
            if obj is None:
                err = event.error
                assert err is not None, "a released message is either decoded or rejected"
                out.events[(source, "dead_letter")] += 1
                letter = self._letter(event, key_text(event.key), err.reason, str(err), wall_ms)
                out.dead_letters.append((dead_letter_key(event.key), letter))
                continue
            uid = obj.user_id
            index = _SOURCE_INDEX[source]
            applied = touched.get(uid) or offsets.get(uid)
            if applied is not None and event.offset <= applied[index]:
                out.events[(source, "redelivered")] += 1
                continue
            try:
                if isinstance(obj, Impression):
                    step = join.add_impression(
                        obj, wall_ms=wall_ms, ref=event_ref(event.offset, event.raw)
                    )
                else:
                    step = join.add_click(
                        obj, ref=event_ref(event.offset, event.raw), wall_ms=wall_ms
                    )
            except InvalidInputError as exc:  # late_impression: the join keeps no trace
                out.events[(source, "dead_letter")] += 1
                out.dead_letters.append(
                    (dead_letter_key(event.key),
                     self._letter(event, uid, exc.reason, str(exc), wall_ms))
                )
            else:
                out.events[(source, "accepted")] += 1
                self._collect(partition, step, out, wall_ms)
            new = list(applied) if applied is not None else [NO_OFFSET, NO_OFFSET]
            new[index] = event.offset
            touched[uid] = new
        self._writes(part, partition, touched, out)
        out.clock_changed = join.guard_changes != guard_changes
        return out

    def tick(self, partition: int, wall_ms: int) -> Outcome:
        """Idle watermark advance on wall time (call only when nothing is queued)."""
        part = self._parts[partition]
        out = Outcome(partition)
        self._collect(partition, part.join.tick(wall_ms), out, wall_ms)
        self._writes(part, partition, {}, out)
        return out

    # -- helpers -------------------------------------------------------------------------

    def _collect(self, partition: int, step: JoinStep, out: Outcome, wall_ms: int) -> None:
        if not step:
            return
        out.feedback.extend(step.feedback)
        out.late_clicks += len(step.late_clicks)
        for click, ref in step.orphans:
            letter = self._returned_letter(
                partition, click, ref, "orphan_click", orphan_click_error(click), wall_ms
            )
            out.dead_letters.append((click.user_id.encode("utf-8"), letter))
        for held, ref in step.future:
            letter = self._returned_letter(
                partition, held, ref, "future_ts", future_ts_error(held), wall_ms
            )
            out.dead_letters.append((held.user_id.encode("utf-8"), letter))

    def _returned_letter(
        self,
        partition: int,
        event: Impression | Click,
        ref: object,
        reason: str,
        error: str,
        wall_ms: int,
    ) -> DeadLetter:
        # An event the join handed back with the ref given to it: its original message.
        offset, payload = unpack_ref(ref, event.to_dict())
        topic = self._names.impressions if isinstance(event, Impression) else self._names.clicks
        return make_dead_letter(
            topic, partition, offset, event.user_id, reason, error, payload, wall_ms,
            DLQ_MAX_PAYLOAD_BYTES, DLQ_MAX_KEY_CHARS,
        )

    def _writes(
        self, part: _Partition, partition: int, touched: dict[str, list[int]], out: Outcome
    ) -> None:
        join = part.join
        offsets = part.offsets
        dirty = join.dirty_users()
        # Users changed only through the watermark first, the users whose own messages
        # were applied last: the changelog partition keeps this order, so a persisted
        # record of a message's user implies the whole batch was persisted before it.
        ordered = [uid for uid in dirty if uid not in touched]
        ordered.sort()
        ordered.extend(touched)
        for uid in ordered:
            state = join.export_user(uid)
            if state is None:
                if offsets.pop(uid, None) is not None:
                    out.writes[uid] = None
                continue
            applied = touched.get(uid) or offsets.get(uid) or [NO_OFFSET, NO_OFFSET]
            offsets[uid] = applied
            out.writes[uid] = user_record(partition, applied, state)

    def _letter(
        self, event: InputEvent, key: str | None, reason: str, error: str, wall_ms: int
    ) -> DeadLetter:
        return make_dead_letter(
            event.topic,
            event.partition,
            event.offset,
            key,
            reason,
            error,
            event.raw,
            wall_ms,
            DLQ_MAX_PAYLOAD_BYTES,
            DLQ_MAX_KEY_CHARS,
        )
