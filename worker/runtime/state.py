"""How the join state of a partition is kept in a faust table (memory store + changelog).

One table, ``join-state``, partitioned like the inputs: changelog partition p holds input
partition p's state, so it moves with the partition on a rebalance. Two kinds of keys:

- a user id (a JSON string) -> a *user record*
  ``{"v": 1, "p": partition, "o": [impressions_offset, clicks_offset], "s": state}`` where
  ``state`` is ``AttributionJoin.export_user(user_id)`` and ``o`` the offsets of the last
  impression and click of this user applied to that state (-1: none yet). A user without
  join state has no record (its key is deleted);
- the partition number (a JSON number, so it never collides with a user id) -> the
  partition's *clock record* ``{"v": 1, "p": partition, "clock": export_clock()}``, written
  at most about once a second: it changes with every message, and writing it per message
  would double the changelog traffic.

Both live on the same changelog partition and are written in processing order, so a
persisted clock never runs ahead of the persisted user records (a clock ahead of them could
turn a redelivered impression into a ``late_impression``: a lost label). An older clock is
safe: it only means a lower watermark after a restart, so labels mature a little later.

The offsets make redelivery idempotent (DESIGN §9): after a crash, Kafka redelivers every
message after the last committed offset, and a message whose offset is not above its user's
recorded offset was already applied to that user's persisted state, so it is skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson

from worker.core.errors import ConfigError

RECORD_VERSION = 1
STATE_TABLE = "join-state"
#: Offsets of a user with nothing applied yet from one of the two topics.
NO_OFFSET = -1


def user_record(partition: int, offsets: list[int], state: dict[str, Any]) -> dict[str, Any]:
    """The table value for one user.

    >>> user_record(3, [10, -1], {"v": 1})["o"]
    [10, -1]
    """
    return {"v": RECORD_VERSION, "p": partition, "o": [offsets[0], offsets[1]], "s": state}


def clock_record(partition: int, clock: dict[str, Any]) -> dict[str, Any]:
    """The table value for one partition's clock."""
    return {"v": RECORD_VERSION, "p": partition, "clock": clock}


def _check(record: Any, what: str) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
        version = record.get("v") if isinstance(record, dict) else type(record).__name__
        raise ConfigError(
            f"unsupported {what} record version {version!r} in the join state table; this "
            f"worker reads version {RECORD_VERSION} (state written by another recal version?)"
        )
    return record


def group_user_records(
    records: Iterable[tuple[Any, Any]], partitions: Iterable[int]
) -> dict[int, list[dict[str, Any]]]:
    """(key, record) pairs of the state table -> user records of each wanted partition.

    Clock records (integer keys) are skipped, and so are records of other partitions (the
    memory store may still hold a revoked partition's keys until its next recovery).

    >>> rec = user_record(1, [0, -1], {"v": 1})
    >>> group_user_records([("u", rec), ("w", user_record(2, [0, -1], {})), (1, {})], [1])
    {1: [{'v': 1, 'p': 1, 'o': [0, -1], 's': {'v': 1}}]}
    """
    wanted = set(partitions)
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in wanted:
        out[p] = []
    for key, record in records:
        if record is None or not isinstance(key, str):
            continue
        record = _check(record, "user")
        if record["p"] in wanted:
            out[record["p"]].append(record)
    return dict(out)


def clock_of(record: Any) -> dict[str, Any] | None:
    """The join clock inside a clock record (None when there is no record)."""
    if record is None:
        return None
    return _check(record, "clock")["clock"]  # type: ignore[no-any-return]


def encode_key(key: str | int) -> bytes:
    """A table key as faust's ``json`` key codec writes it (``"u1"`` -> ``b'"u1"'``)."""
    return orjson.dumps(key)


def encode_value(record: dict[str, Any] | None) -> bytes | None:
    """A table value as faust's ``json`` codec writes it; None stays None (a tombstone)."""
    return None if record is None else orjson.dumps(record)
