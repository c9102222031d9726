"""Argument checks shared by the posterior classes (private)."""

from __future__ import annotations

import math
from numbers import Integral, Real

from worker.core.errors import ConfigError, InvalidInputError

MAX_TS = 9_007_199_254_740_991  # largest integer a JSON number carries exactly


def is_real(value: object) -> bool:
    # Exact-type fast paths first: the ABC checks below cost ~1 µs each on the hot path.
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is int:
        return True
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def config_positive(name: str, value: object) -> float:
    if not is_real(value) or float(value) <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def config_half_life(value: object) -> float | None:
    if value is None:
        return None
    return config_positive("half_life_ms", value)


def config_unit_open(name: str, value: object) -> float:
    if not is_real(value) or not 0.0 < float(value) < 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a number in (0, 1); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def label(value: object) -> int:
    if type(value) is int and (value == 0 or value == 1):
        return value
    # bool is accepted (True/False are the same labels); floats are not, so that 0.5 or a
    # probability passed by mistake is caught.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Integral) and int(value) in (0, 1):
        return int(value)
    raise InvalidInputError("schema", f"label must be 0 or 1; got {value!r}")


def weight(value: object) -> float:
    if type(value) is float and 0.0 < value < math.inf:
        return value
    if not is_real(value) or float(value) <= 0:  # type: ignore[arg-type]
        raise InvalidInputError("schema", f"weight must be a finite number > 0; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def timestamp(name: str, value: object) -> int:
    if type(value) is int and 0 <= value <= MAX_TS:
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) <= MAX_TS:
        raise InvalidInputError(
            "schema", f"{name} must be an integer epoch-ms timestamp >= 0; got {value!r}"
        )
    return int(value)


def identifier(name: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise InvalidInputError(
            "schema", f"{name} must be a string of 1-128 characters; got {value!r}"
        )
    return value
