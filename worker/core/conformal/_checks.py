"""Array and argument checks shared by the conformal classes (private)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.errors import ConfigError, InvalidInputError

MAX_TS = 9_007_199_254_740_991


def is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def alpha(value: object) -> float:
    if not is_real(value) or not 0.0 < float(value) < 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"alpha must be a number in (0, 1); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def qhat(value: object) -> float:
    if not is_real(value) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise InvalidInputError("schema", f"qhat must be a finite number in [0, 1]; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def probabilities(p: Any) -> NDArray[np.float64]:
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            "score_range", f"score must be a finite number in [0, 1]; got {p!r}"
        ) from exc
    bad = ~(np.isfinite(arr) & (arr >= 0.0) & (arr <= 1.0))
    if bad.any():
        first = arr.ravel()[int(np.flatnonzero(bad.ravel())[0])]
        raise InvalidInputError(
            "score_range", f"score must be a finite number in [0, 1]; got {first!r}"
        )
    return arr


def labels(y: Any, shape: tuple[int, ...]) -> NDArray[np.int8]:
    raw = np.asarray(y)
    if raw.dtype.kind not in "biuf":
        raise InvalidInputError("schema", f"labels must be 0 or 1; got {y!r}")
    ok = np.isin(raw, (0, 1))
    if not ok.all():
        first = raw.ravel()[int(np.flatnonzero(~ok.ravel())[0])]
        raise InvalidInputError("schema", f"label must be 0 or 1; got {first!r}")
    try:
        return np.broadcast_to(raw.astype(np.int8), shape)
    except ValueError as exc:
        raise InvalidInputError(
            "schema", f"labels of shape {raw.shape} do not match scores of shape {shape}"
        ) from exc


def timestamp(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) <= MAX_TS:
        raise InvalidInputError(
            "schema", f"{name} must be an integer epoch-ms timestamp >= 0; got {value!r}"
        )
    return int(value)
