"""Encode output messages (feedback, calibrator versions, alerts, ...) as compact JSON bytes.

orjson on its own writes ``NaN`` and infinities as ``null``, which would publish a message
that silently breaks its schema (a ``null`` score, a ``null`` ECE) for every consumer.
``encode_json`` refuses them instead: a non-finite number in an output is a bug in recal, not
bad input, so it raises ``ValueError`` and the worker crashes loudly (DESIGN §12). Values
orjson cannot serialise (numpy scalars, sets, ...) raise ``TypeError`` for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

__all__ = ["SupportsToDict", "dumps_sized", "dumps_sized_many", "encode_json"]


class SupportsToDict(Protocol):
    """Any record with a JSON-ready ``to_dict()`` (the core's records and state objects)."""

    def to_dict(self) -> dict[str, Any]: ...


def encode_json(value: SupportsToDict | dict[str, Any] | list[Any]) -> bytes:
    """Serialise a record (through its ``to_dict()``) or a plain JSON value to UTF-8 bytes.

    >>> from worker.core.records.click import Click
    >>> encode_json(Click("i1", "u1", 2_000, None))
    b'{"impression_id":"i1","user_id":"u1","ts":2000}'
    >>> encode_json({"ece": float("nan")})
    Traceback (most recent call last):
    ...
    ValueError: non-finite number at $.ece: nan
    """
    data = value.to_dict() if hasattr(value, "to_dict") else value
    _check_finite(data, "$")
    return orjson.dumps(data)


def dumps_sized(value: Any) -> bytes:
    """``orjson.dumps`` into an exactly sized ``bytes``: for bytes that are kept a while (a
    transaction's messages until it commits, a generated stream in memory).

    Why: orjson (3.12+) returns bytes whose allocation is rounded up and never shrunk, ~8 KB
    for a 300-byte feedback message (``sys.getsizeof`` does not show it; tracemalloc does).
    The Kafka runtime keeps a transaction's messages until the commit, so a watermark jump
    that matured 100k labels in one step held 740 MB of such buffers (2026-12-03). Joining
    with an empty bytes copies the text into an object of its own size (~0.3 µs).

    >>> import tracemalloc
    >>> tracemalloc.start()
    >>> kept = [dumps_sized({"impression_id": f"i{k}", "label": 1}) for k in range(1_000)]
    >>> tracemalloc.get_traced_memory()[0] < 100 * 1_000
    True
    >>> tracemalloc.stop()
    >>> kept[0]
    b'{"impression_id":"i0","label":1}'
    """
    return b"".join((orjson.dumps(value), b""))


def dumps_sized_many(values: Iterable[Any]) -> list[bytes]:
    """``dumps_sized`` of each value, faster for many: one join and one split copy them
    right-sized in C (orjson's JSON text never holds a raw newline: it escapes control
    characters).

    >>> dumps_sized_many([{"a": "x y"}, [1, 2]])
    [b'{"a":"x y"}', b'[1,2]']
    >>> dumps_sized_many([])
    []
    """
    encoded = list(map(orjson.dumps, values))
    if not encoded:
        return []
    return b"\n".join(encoded).split(b"\n")


def _check_finite(value: Any, path: str) -> None:
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"non-finite number at {path}: {value!r}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite(item, f"{path}[{index}]")
