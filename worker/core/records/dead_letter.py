"""A rejected input message, kept whole so nothing is lost silently (DESIGN §3, §8)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from worker.core.records.click import Click
from worker.core.records.impression import Impression
from worker.core.records.timefmt import iso_utc_ms


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter. ``received_at`` is an ISO 8601 UTC string supplied by the runtime.

    >>> dl = DeadLetter("recal.clicks", 0, 7, "u1", "invalid_json", "not JSON", b"{", "t")
    >>> dl.to_dict()["payload_b64"]
    'ew=='
    """

    source_topic: str
    partition: int | None
    offset: int | None
    key: str | None
    reason: str
    error: str
    payload: bytes
    received_at: str

    def to_dict(self) -> dict[str, Any]:
        """The dead-letter message with the original payload base64-encoded."""
        return {
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "reason": self.reason,
            "error": self.error,
            "payload_b64": base64.b64encode(self.payload).decode("ascii"),
            "received_at": self.received_at,
        }


#: Largest original payload a Kafka dead letter keeps whole. Base64 grows it by 4/3 and
#: Kafka's default message limit is 1 MB: a bigger dead letter would be refused by the broker
#: and crash the worker on every restart. A longer payload is cut (the error says so); the
#: letter's topic/partition/offset still point at the original message. Replay writes a file
#: and keeps every payload whole.
DLQ_MAX_PAYLOAD_BYTES = 256 * 1024


def make_dead_letter(
    source_topic: str,
    partition: int | None,
    offset: int | None,
    key: str | None,
    reason: str,
    error: str,
    payload: bytes,
    received_ms: int,
    max_payload_bytes: int | None = None,
) -> DeadLetter:
    """The one way both runtimes build a dead letter (``received_ms``: epoch ms).

    >>> dl = make_dead_letter("t", 0, 3, "u1", "schema", "bad", b"abcdef", 0, max_payload_bytes=4)
    >>> dl.payload, dl.received_at, dl.error
    (b'abcd', '1970-01-01T00:00:00.000Z', 'bad [payload cut to its first 4 of 6 bytes; the original is at source_topic/partition/offset]')
    """  # noqa: E501
    if max_payload_bytes is not None and len(payload) > max_payload_bytes:
        error = (
            f"{error} [payload cut to its first {max_payload_bytes} of {len(payload)} "
            "bytes; the original is at source_topic/partition/offset]"
        )
        payload = payload[:max_payload_bytes]
    return DeadLetter(
        source_topic, partition, offset, key, reason, error, payload, iso_utc_ms(received_ms)
    )


def event_ref(offset: int | None, raw: bytes) -> list[Any]:
    """The opaque ``ref`` a runtime gives the join with an event it may hand back later
    (an orphan click, an unconfirmed far-future event): enough to dead-letter the original
    bytes. JSON-ready, because the join persists it while the event waits.

    >>> event_ref(7, b"{}")
    [7, 'e30=']
    >>> unpack_ref(event_ref(7, b"{}"), {"x": 1})
    (7, b'{}')
    """
    return [offset, base64.b64encode(raw).decode("ascii")]


def unpack_ref(ref: object, fallback: Mapping[str, Any]) -> tuple[int | None, bytes]:
    """(offset, original payload) from ``event_ref`` output, or from an ``(offset, raw)``
    tuple (replay's cheaper ref: its state is never exported).

    >>> unpack_ref((3, b"{}"), {})
    (3, b'{}')

    Tolerant of a foreign ref shape (state written before refs carried the payload), because
    a dead letter must never be dropped: the payload is then rebuilt from ``fallback``, the
    event's ``to_dict()``.
    """
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[1], bytes):
        return (ref[0] if isinstance(ref[0], int) else None), ref[1]
    if isinstance(ref, list) and len(ref) == 2 and isinstance(ref[1], str):
        try:
            payload = base64.b64decode(ref[1], validate=True)
        except (binascii.Error, ValueError):
            payload = None
        if payload is not None:
            return (ref[0] if isinstance(ref[0], int) else None), payload
    return None, orjson.dumps(fallback)


def future_ts_error(event: Impression | Click) -> str:
    """The ``error`` text of a ``future_ts`` letter from the join's clock guard."""
    return (
        f"ts {event.ts} was further ahead of the partition's event time than one event may "
        "move it (max_clock_jump_ms), and later events did not confirm the jump"
    )


def orphan_click_error(click: Click) -> str:
    """The ``error`` text of an ``orphan_click`` letter."""
    return (
        f"click for impression {click.impression_id!r} of user {click.user_id!r} "
        "found no impression within the attribution window"
    )
