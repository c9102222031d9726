"""Array and argument checks shared by the conformal classes (private)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.checks import MAX_TS, is_real, timestamp
from worker.core.errors import ConfigError, InvalidInputError

# MAX_TS, is_real and timestamp are the core's (worker.core.checks); re-exported for _checks.X.
__all__ = ["MAX_TS", "alpha", "is_real", "labels", "probabilities", "qhat", "timestamp"]


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

