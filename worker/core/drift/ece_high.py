"""Significance test for "ECE above its threshold" (``ece_high``, DESIGN §5 and §7)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from worker.core.checks import check_int
from worker.core.drift._cusum import check_real
from worker.core.errors import InvalidInputError

_NORMAL = NormalDist()


def _finite(name: str, value: object, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(
            "schema", f"{name} must be a finite number >= {low:g}; got {value!r}"
        )
    v = float(value)
    if not (math.isfinite(v) and v >= low):
        raise InvalidInputError(
            "schema", f"{name} must be a finite number >= {low:g}; got {value!r}"
        )
    return v


class EceHigh:
    """One-sided test: is the ECE, beyond its noise floor, significantly above ``threshold``?

    Inputs are plain floats from a calibration report: ``ece`` (15-bin plug-in ECE),
    ``ece_floor`` (its expectation for a perfectly calibrated predictor on the same scores,
    DESIGN §5), ``ece_se`` (the standard error of ``ece``: analytic, or from the report's
    confidence interval via ``se_from_interval``) and ``n`` (events).

    Test: ``H0: excess <= threshold`` with ``excess = ece - ece_floor`` (the floor is the
    upward bias of the plug-in ECE of a calibrated model and an upper bound of it otherwise, so
    ``excess`` never overstates the miscalibration). Reject — alert — when
    ``(ece - ece_floor - threshold) / ece_se > z_{1 - alpha}`` (normal approximation, good
    once a few hundred events spread over the bins); ``p_value`` is ``1 - Phi`` of that
    statistic. Reports with ``n < min_n`` never fire: raw ECE on few events is mostly noise
    (never alert on per-user ECE). ``alpha`` is per check: at one check per refit (every
    1,000 events by default) ``alpha = 1e-3`` keeps false alarms under 1 per 10^6 events
    even if the checks were independent (they are positively correlated, so fewer).

    Stateless apart from its configuration.

    >>> t = EceHigh(threshold=0.02, alpha=1e-3, min_n=1_000)
    >>> round(t.critical_z, 3)
    3.09
    >>> t.check(ece=0.045, ece_floor=0.012, ece_se=0.003, n=20_000)   # (0.013 / 0.003) > 3.09
    True
    >>> t.check(ece=0.035, ece_floor=0.012, ece_se=0.003, n=20_000)   # excess 0.023: not sure
    False
    >>> t.check(ece=0.2, ece_floor=0.06, ece_se=0.02, n=200)          # too few events
    False
    >>> round(EceHigh.se_from_interval(0.01, 0.03, level=0.95), 5)
    0.0051
    """

    __slots__ = ("_alpha", "_min_n", "_threshold", "_z")

    def __init__(self, threshold: float = 0.02, alpha: float = 1e-3, min_n: int = 1_000) -> None:
        self._threshold = check_real("threshold", threshold, 0.0, 1.0, low_open=False)
        self._alpha = check_real("alpha", alpha, 0.0, 0.5)
        self._min_n = check_int("min_n", min_n, 1)
        self._z = _NORMAL.inv_cdf(1.0 - self._alpha)

    @property
    def threshold(self) -> float:
        """The tolerated ECE beyond the noise floor."""
        return self._threshold

    @property
    def alpha(self) -> float:
        """Significance level of one check."""
        return self._alpha

    @property
    def critical_z(self) -> float:
        """``z_{1 - alpha}``: the standardised excess needed to fire."""
        return self._z

    def statistic(self, ece: float, ece_floor: float, ece_se: float) -> float:
        """``(ece - ece_floor - threshold) / ece_se`` (+-inf when ``ece_se`` is 0)."""
        e = _finite("ece", ece)
        f = _finite("ece_floor", ece_floor)
        se = _finite("ece_se", ece_se)
        excess = e - f - self._threshold
        if se == 0.0:
            return math.copysign(math.inf, excess) if excess != 0.0 else 0.0
        return excess / se

    def p_value(self, ece: float, ece_floor: float, ece_se: float, n: float) -> float:
        """One-sided p-value of ``H0: ece - floor <= threshold`` (1 when ``n < min_n``)."""
        stat = self.statistic(ece, ece_floor, ece_se)
        if _finite("n", n) < self._min_n:
            return 1.0
        if math.isinf(stat):
            return 0.0 if stat > 0 else 1.0
        return 1.0 - _NORMAL.cdf(stat)

    def check(self, ece: float, ece_floor: float, ece_se: float, n: float) -> bool:
        """True when the ECE excess is significantly above the threshold at level ``alpha``."""
        stat = self.statistic(ece, ece_floor, ece_se)
        return _finite("n", n) >= self._min_n and stat > self._z

    @staticmethod
    def se_from_interval(lo: float, hi: float, level: float = 0.95) -> float:
        """Standard error implied by a two-sided normal ``level`` interval ``(lo, hi)``."""
        lo_v = _finite("lo", lo)
        hi_v = _finite("hi", hi, lo_v)
        z = _NORMAL.inv_cdf(0.5 + check_real("level", level, 0.0, 1.0) / 2.0)
        return (hi_v - lo_v) / (2.0 * z)

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {"threshold": self._threshold, "alpha": self._alpha, "min_n": self._min_n}
