"""A rejected input message, kept whole so nothing is lost silently (DESIGN §3, §8)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


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
