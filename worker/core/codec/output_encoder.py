"""Encode output messages (feedback, calibrator versions, alerts, ...) as compact JSON bytes.

orjson on its own writes ``NaN`` and infinities as ``null``, which would publish a message
that silently breaks its schema (a ``null`` score, a ``null`` ECE) for every consumer.
``encode_json`` refuses them instead: a non-finite number in an output is a bug in recal, not
bad input, so it raises ``ValueError`` and the worker crashes loudly (DESIGN §12). Values
orjson cannot serialise (numpy scalars, sets, ...) raise ``TypeError`` for the same reason.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import orjson

__all__ = ["SupportsToDict", "encode_json"]


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
