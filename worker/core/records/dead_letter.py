"""A rejected input message, kept whole so nothing is lost silently (DESIGN §3, §8)."""

from __future__ import annotations

import base64
import binascii
import hashlib
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
    #: What was cut to keep the letter under the producer's limit: the original sizes and
    #: SHA-256 digests (``payload_bytes``/``payload_sha256``, ``key_chars``/``key_sha256``).
    truncated: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The dead-letter message with the original payload base64-encoded."""
        out: dict[str, Any] = {
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "reason": self.reason,
            "error": self.error,
            "payload_b64": base64.b64encode(self.payload).decode("ascii"),
            "received_at": self.received_at,
        }
        if self.truncated is not None:
            out["truncated"] = dict(self.truncated)
        return out


#: Largest original payload a Kafka dead letter keeps whole. Base64 grows it by 4/3 and
#: Kafka's default message limit is 1 MB: a bigger dead letter would be refused by the broker
#: and crash the worker on every restart. A longer payload is cut (the error says so); the
#: letter's topic/partition/offset still point at the original message. Replay writes a file
#: and keeps every payload whole.
DLQ_MAX_PAYLOAD_BYTES = 256 * 1024
#: Largest key a Kafka dead letter carries whole, in its ``key`` field and as the Kafka
#: message key (each written once more): a 600 KB key would otherwise make a 1.2 MB letter.
DLQ_MAX_KEY_CHARS = 1024


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
    max_key_chars: int | None = None,
) -> DeadLetter:
    """The one way both runtimes build a dead letter (``received_ms``: epoch ms).

    With limits (the Kafka runtime's), an over-long payload or key is cut, the error says
    so, and ``truncated`` records the original size and SHA-256, so the letter always fits
    the producer's limit and the original can still be identified (its topic, partition
    and offset point at it).

    >>> dl = make_dead_letter("t", 0, 3, "u1", "schema", "bad", b"abcdef", 0, max_payload_bytes=4)
    >>> dl.payload, dl.received_at, dl.error
    (b'abcd', '1970-01-01T00:00:00.000Z', 'bad [payload cut to its first 4 of 6 bytes; the original is at source_topic/partition/offset]')
    >>> dl.truncated["payload_bytes"], dl.truncated["payload_sha256"][:12]
    (6, 'bef57ec7f53a')
    >>> make_dead_letter("t", 0, 3, "k" * 10, "schema", "bad", b"{}", 0, max_key_chars=4).key
    'kkkk'
    """  # noqa: E501
    truncated: dict[str, Any] = {}
    if max_payload_bytes is not None and len(payload) > max_payload_bytes:
        error = (
            f"{error} [payload cut to its first {max_payload_bytes} of {len(payload)} "
            "bytes; the original is at source_topic/partition/offset]"
        )
        truncated["payload_bytes"] = len(payload)
        truncated["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        payload = payload[:max_payload_bytes]
    if max_key_chars is not None and key is not None and len(key) > max_key_chars:
        error = f"{error} [key cut to its first {max_key_chars} of {len(key)} characters]"
        truncated["key_chars"] = len(key)
        truncated["key_sha256"] = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        key = key[:max_key_chars]
    return DeadLetter(
        source_topic, partition, offset, key, reason, error, payload, iso_utc_ms(received_ms),
        truncated or None,
    )


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka message key a dead letter is sent under: the original key, cut to
    ``DLQ_MAX_KEY_CHARS`` bytes (the letter's ``truncated`` block records the original).

    >>> dead_letter_key(b"u1"), len(dead_letter_key(b"k" * 600_000))
    (b'u1', 1024)
    """
    return key if key is None or len(key) <= DLQ_MAX_KEY_CHARS else key[:DLQ_MAX_KEY_CHARS]


def event_ref(offset: int | None, raw: bytes, source: str | None = None) -> list[Any]:
    """The opaque ``ref`` a runtime gives the join with an event it may hand back later
    (an orphan click, an unconfirmed far-future event): enough to dead-letter the original
    bytes. JSON-ready, because the join persists it while the event waits. ``source`` (the
    Kafka runtime's input topic, ``impressions`` or ``clicks``) rides along when given.

    >>> event_ref(7, b"{}")
    [7, 'e30=']
    >>> unpack_ref(event_ref(7, b"{}", "clicks"), {"x": 1}), ref_source(event_ref(7, b"", "clicks"))
    ((7, b'{}'), 'clicks')
    """
    out: list[Any] = [offset, base64.b64encode(raw).decode("ascii")]
    if source is not None:
        out.append(source)
    return out


def ref_source(ref: object) -> str | None:
    """The ``source`` an ``event_ref`` carries, or None."""
    if isinstance(ref, list) and len(ref) == 3 and isinstance(ref[2], str):
        return ref[2]
    return None


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
    if isinstance(ref, list) and len(ref) in (2, 3) and isinstance(ref[1], str):
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
