"""Argument checks shared by the posterior classes (private)."""

from __future__ import annotations

import math
from numbers import Integral

from worker.core.checks import MAX_TS, is_real, timestamp
from worker.core.errors import ConfigError, InvalidInputError

# MAX_TS, is_real and timestamp are the core's (worker.core.checks); re-exported for _checks.X.
__all__ = [
    "MAX_TS", "config_half_life", "config_positive", "config_unit_open", "identifier",
    "is_real", "label", "timestamp", "weight",
]


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


def identifier(name: str, value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise InvalidInputError(
            "schema", f"{name} must be a string of 1-128 characters; got {value!r}"
        )
    return value
