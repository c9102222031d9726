"""Shared helpers for the StreamRec generator tests."""

from __future__ import annotations

from typing import Any

import orjson

from worker.sim.streamrec import SimEvent

#: The decoder's size limit (64 KiB), restated here on purpose: tests check the generator
#: against an independent reading of the contract, not against its own constants.
LIMIT = 65_536


def classify(raw: bytes) -> str | None:
    """A minimal, independent dead-letter classifier: size, then JSON, then fields."""
    if len(raw) > LIMIT:
        return "too_large"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if not isinstance(obj, dict) or obj.get("type") not in ("impression", "click"):
        return "schema"
    if not isinstance(obj.get("user_id"), str) or not isinstance(obj.get("impression_id"), str):
        return "schema"
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        return "schema"
    if obj["type"] == "impression":
        if "logit" in obj:
            logit = obj["logit"]
            if isinstance(logit, bool) or not isinstance(logit, (int, float)):
                return "schema"
        else:
            score = obj.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                return "schema"
            if not 0.0 <= score <= 1.0:
                return "score_range"
    return None


def impressions(events: list[SimEvent], *, with_dups: bool = False) -> list[dict[str, Any]]:
    """The impression objects, in arrival order (duplicates dropped unless asked for)."""
    return [
        e.obj
        for e in events
        if e.kind == "impression" and e.obj is not None and (with_dups or not e.duplicate)
    ]


def index_of(impression_id: str) -> int:
    """The generation index encoded in an impression id ``imp-<seed>-<index>``."""
    return int(impression_id.rsplit("-", 1)[1])
