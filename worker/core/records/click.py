"""A click on a served impression, at event time ``ts``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Click:
    """A validated click.

    >>> Click("i1", "u1", 2_000, None).to_dict()
    {'impression_id': 'i1', 'user_id': 'u1', 'ts': 2000}
    """

    impression_id: str
    user_id: str
    ts: int
    item_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """The click's fields as a JSON-ready dict (``item_id`` only when set)."""
        out: dict[str, Any] = {
            "impression_id": self.impression_id,
            "user_id": self.user_id,
            "ts": self.ts,
        }
        if self.item_id is not None:
            out["item_id"] = self.item_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Click:
        """Inverse of ``to_dict`` for trusted (already validated) data, e.g. restored state."""
        return cls(data["impression_id"], data["user_id"], data["ts"], data.get("item_id"))
