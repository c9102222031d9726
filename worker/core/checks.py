"""Argument checks shared across the core (and the simulator's scenario): the one owner.

Constructors validate hyper-parameters with these (``ConfigError``), and state readers
validate stored timestamps (``InvalidInputError``), so every class words the same mistake the
same way. Package-specific checks stay next to their package (``posteriors/_checks.py``,
``conformal/_checks.py``, ``drift/_cusum.py``).

>>> check_int("min_n", 3, 1), check_positive("half_life_ms", 2)
(3, 2.0)
>>> check_int("min_n", True, 1)
Traceback (most recent call last):
    ...
worker.core.errors.ConfigError: min_n must be an integer >= 1; got True
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from worker.core.errors import ConfigError, InvalidInputError

__all__ = ["MAX_TS", "check_int", "check_positive", "is_real", "timestamp"]

# 2^53 - 1: the largest integer a JSON number (and a float64) carries exactly.
MAX_TS = 9_007_199_254_740_991


def is_real(value: object) -> bool:
    """A finite real number, not a bool (``numbers.Real``: numpy scalars count)."""
    # Exact-type fast paths first: the ABC checks below cost ~1 µs each on the hot path.
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is int:
        return True
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def timestamp(name: str, value: object) -> int:
    """An integer epoch-ms time in ``[0, MAX_TS]``, else ``InvalidInputError``."""
    if type(value) is int and 0 <= value <= MAX_TS:
        return value
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) <= MAX_TS:
        raise InvalidInputError(
            "schema", f"{name} must be an integer epoch-ms timestamp >= 0; got {value!r}"
        )
    return int(value)


def check_int(name: str, value: object, minimum: int) -> int:
    """A Python int (not bool) at least ``minimum``, else ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """A finite int or float (not bool) above 0, as a float, else ``ConfigError``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(float(value)) and float(value) > 0.0):  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)  # type: ignore[arg-type]
