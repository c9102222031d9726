"""A served prediction: the model's score for one (user, item) at event time ``ts``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Impression:
    """A validated impression, always carrying both ``score`` and ``logit``.

    Build it with ``worker.core.codec.input_decoder.InputDecoder`` from raw input; this
    class itself trusts its arguments (the decoder has validated them).

    >>> imp = Impression("i1", "u1", "item", 1_000, "default", 0.5, 0.0, "default", None, None)
    >>> imp.to_dict()["logit"]
    0.0
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
        return out

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
        )
