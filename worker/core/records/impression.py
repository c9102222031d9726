"""A served prediction: the model's score for one (user, item) at event time ``ts``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Impression:
    """A validated impression, always carrying both ``score`` and ``logit``.

    Build it with ``worker.core.codec.input_decoder.InputDecoder`` from raw input; this
    class itself trusts its arguments (the decoder has validated them).

    ``context`` holds the configured fields of the message's ``context`` object that the
    decoder kept (numbers and short strings; DESIGN §3), or None when none is configured or
    none was usable: the ``contextual`` calibrator's inputs, with ``ts``, ``position`` and
    ``segment`` (``serving_context``).

    >>> imp = Impression("i1", "u1", "item", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> imp.to_dict()["logit"]
    0.0
    >>> imp = Impression("i1", "u1", "item", 1_000, "default", 0.5, 0.0, "web", None, 3,
    ...                  {"device": "mobile"})
    >>> imp.serving_context()
    {'ts': 1000, 'segment': 'web', 'position': 3, 'device': 'mobile'}
    """

    impression_id: str
    user_id: str
    item_id: str
    ts: int
    model_id: str
    score: float
    logit: float
    segment: str
    arm: str | None
    position: int | None
    # Left out of the hash (a dict is unhashable); equality still compares it.
    context: Mapping[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The impression's fields as a JSON-ready dict (optional fields only when set)."""
        out: dict[str, Any] = {
            "impression_id": self.impression_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "ts": self.ts,
            "model_id": self.model_id,
            "score": self.score,
            "logit": self.logit,
            "segment": self.segment,
        }
        if self.arm is not None:
            out["arm"] = self.arm
        if self.position is not None:
            out["position"] = self.position
        if self.context is not None:
            out["context"] = dict(self.context)
        return out

    def serving_context(self) -> dict[str, Any]:
        """The mapping a ``contextual`` calibrator reads: ``ts``, ``segment``, ``position``
        (when set) and the kept ``context`` fields (which never use those names)."""
        return serving_context(self.ts, self.segment, self.position, self.context)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Impression:
        """Inverse of ``to_dict`` for trusted (already validated) data, e.g. restored state."""
        return cls(
            impression_id=data["impression_id"],
            user_id=data["user_id"],
            item_id=data["item_id"],
            ts=data["ts"],
            model_id=data["model_id"],
            score=data["score"],
            logit=data["logit"],
            segment=data["segment"],
            arm=data.get("arm"),
            position=data.get("position"),
            context=data.get("context"),
        )


def serving_context(
    ts: int, segment: str, position: int | None, context: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``Impression.serving_context`` from the fields themselves (e.g. of a feedback message,
    which carries them all).

    >>> serving_context(7_200_000, "app", 2, {"device": "ios"})
    {'ts': 7200000, 'segment': 'app', 'position': 2, 'device': 'ios'}
    """
    out: dict[str, Any] = {"ts": ts, "segment": segment}
    if position is not None:
        out["position"] = position
    if context:
        out.update(context)
    return out
