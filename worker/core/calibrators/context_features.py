"""Context features of the ``contextual`` method: how a serving-time context mapping
becomes feature values, written once for the calibrator and its online learner.

A context is a mapping with ``ts`` (epoch ms) or ``hour`` (UTC hour of day in [0, 24)),
``position`` (int >= 0), ``segment`` and the configured fields of the impression's
``context`` object (numbers or strings). Anything absent or of the wrong type is *missing*:
its feature contributes nothing, so the map falls back towards the context-free one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from numbers import Real
from typing import Any

from worker.core.errors import ConfigError

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: Context keys filled from the impression itself, never from its ``context`` object.
RESERVED = ("ts", "hour", "position", "segment")
#: Longest string value that counts as a category (the ids' limit).
MAX_VALUE_CHARS = 128
#: A numeric field enters as ``sign(v) * log1p(|v|)`` clipped to this: counts, ages and
#: amounts of any magnitude then move the logit by a bounded amount.
NUMBER_CLIP = 10.0
_TWO_PI_OVER_DAY = 2.0 * math.pi / 24.0


def real(value: object) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None."""
    # Exact-type fast paths first: the ABC check below costs ~1 µs per value.
    t = type(value)
    if t is float:
        return value if math.isfinite(value) else None  # type: ignore[arg-type,return-value]
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    try:
        f = float(value)
    except OverflowError:  # an int beyond the largest double
        return None
    return f if math.isfinite(f) else None


def hour_of(context: Mapping[str, Any]) -> float | None:
    """The UTC hour of day in [0, 24): ``hour`` when given and valid, else from ``ts``."""
    h = real(context.get("hour"))
    if h is not None and 0.0 <= h < 24.0:
        return h
    ts = context.get("ts")
    if type(ts) is int and ts >= 0:
        return (ts % DAY_MS) / HOUR_MS
    t = real(ts)
    if t is not None and t >= 0.0:
        return (t % DAY_MS) / HOUR_MS
    return None


def hour_features(hour: float, harmonics: int) -> list[float]:
    """``[sin(k w h), cos(k w h)]`` for ``k = 1..harmonics``, ``w = 2 pi / 24``."""
    out = []
    for k in range(1, harmonics + 1):
        angle = k * _TWO_PI_OVER_DAY * hour
        out.append(math.sin(angle))
        out.append(math.cos(angle))
    return out


def position_bucket(context: Mapping[str, Any], edges: Sequence[int]) -> int | None:
    """Index of the first edge ``>= position`` (``len(edges)`` beyond the last), or None."""
    pos = context.get("position")
    if isinstance(pos, bool) or not isinstance(pos, (int, float)):
        return None
    if not (math.isfinite(float(pos)) and pos >= 0):
        return None
    for i, edge in enumerate(edges):
        if pos <= edge:
            return i
    return len(edges)


def category_of(value: object) -> str | None:
    """A string value usable as a category, else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_VALUE_CHARS:
        return value
    return None


def number_feature(value: object) -> float | None:
    """``sign(v) * log1p(|v|)`` clipped to ``+-NUMBER_CLIP``, or None when not a number."""
    v = real(value)
    if v is None:
        return None
    x = math.copysign(math.log1p(abs(v)), v)
    return NUMBER_CLIP if x > NUMBER_CLIP else (-NUMBER_CLIP if x < -NUMBER_CLIP else x)


def check_fields(name: str, fields: object) -> tuple[str, ...]:
    """Configured context field names: distinct strings of 1-128 characters, none reserved."""
    if isinstance(fields, str) or not isinstance(fields, (list, tuple)):
        raise ConfigError(f"{name} must be a list of field names; got {fields!r}")
    out = tuple(fields)
    for f in out:
        if not isinstance(f, str) or not 0 < len(f) <= MAX_VALUE_CHARS:
            raise ConfigError(f"{name} must hold strings of 1-128 characters; got {f!r}")
        if f in RESERVED:
            raise ConfigError(
                f"{name}: {f!r} is reserved (ts, hour, position and segment come from the "
                "impression itself)"
            )
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} must not repeat a field; got {list(out)!r}")
    return out


def check_edges(name: str, edges: object) -> tuple[int, ...]:
    """Position bucket edges: increasing integers >= 0 (a list or tuple, may be empty)."""
    out = tuple(edges) if isinstance(edges, (list, tuple)) else None
    if out is None or not all(
        isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in out
    ) or any(b <= a for a, b in pairwise(out)):
        raise ConfigError(f"{name} must be increasing integers >= 0; got {edges!r}")
    return out


def keeps(value: object) -> bool:
    """Whether an impression's ``context`` value is kept: a finite number or a category."""
    t = type(value)
    if t is str:
        return 0 < len(value) <= MAX_VALUE_CHARS  # type: ignore[arg-type]
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return real(value) is not None or category_of(value) is not None
