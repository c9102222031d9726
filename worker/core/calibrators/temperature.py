"""Temperature scaling: ``sigmoid(z / T)`` with T fitted by 1-D convex NLL (DESIGN §3, §5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.calibrators._numeric import (
    FloatArray,
    ScoreLike,
    ScoreOut,
    as_logits,
    dot,
    out,
    training_arrays,
)
from worker.core.calibrators.calibrator import Calibrator
from worker.core.errors import ConfigError
from worker.core.mathfn import sigmoid_array

# Fitted temperatures are kept in [0.01, 100]: beyond that the model's logits carry no usable
# signal (T -> inf, or negative when scores are anti-correlated with labels) or the data are
# separable (T -> 0); either way the clamped value is the constrained optimum because the NLL
# is convex in 1/T.
T_MIN = 0.01
T_MAX = 100.0
_MAX_ITER = 100
_TOL = 1e-12


class TemperatureCalibrator(Calibrator):
    """Calibrated probability = ``sigmoid(z / T)``; params ``{"temperature": T}``, T > 0.

    ``fit`` minimises the weighted NLL over ``u = 1/T``, where it is a one-coefficient
    logistic regression without intercept and hence convex: safeguarded Newton (bisection
    fallback inside a sign-changing bracket of the gradient) to ``|du| <= 1e-12 u``; T is
    clamped to [0.01, 100]. T > 1 softens an over-confident model, T < 1 sharpens.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> true_z = rng.normal(-1.5, 1.0, 50_000)
    >>> y = rng.random(50_000) < 1 / (1 + np.exp(-true_z))
    >>> cal = TemperatureCalibrator.fit(2.0 * true_z, y)   # model twice over-confident
    >>> round(cal.temperature, 1)
    2.0
    >>> TemperatureCalibrator.from_params({"temperature": 0.5}).apply_logit(1.0) > 0.8
    True
    """

    method = "temperature"

    def __init__(self, temperature: float) -> None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float, np.integer, np.floating))
            or not math.isfinite(float(temperature))
            or not float(temperature) > 0.0
        ):
            raise ConfigError(f"temperature must be a finite number > 0; got {temperature!r}")
        self._t = float(temperature)

    @property
    def temperature(self) -> float:
        """The temperature T."""
        return self._t

    def params(self) -> dict[str, Any]:
        """``{"temperature": T}``."""
        return {"temperature": self._t}

    def apply_logit(self, z: ScoreLike) -> ScoreOut:
        """``sigmoid(z / T)``."""
        za, scalar = as_logits(z)
        return out(self._apply_logit_unchecked(za), scalar)

    def _apply_logit_unchecked(self, z: FloatArray) -> FloatArray:
        return sigmoid_array(z / self._t)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TemperatureCalibrator:
        """From ``{"temperature": T}``."""
        if not isinstance(params, Mapping) or set(params) != {"temperature"}:
            raise ConfigError(f"temperature params must be {{'temperature': T}}; got {params!r}")
        return cls(params["temperature"])

    @classmethod
    def fit(
        cls, z: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
    ) -> TemperatureCalibrator:
        """Weighted NLL-optimal temperature for logits ``z`` and labels ``y``."""
        za, ya, wa = training_arrays(z, y, weights)
        return cls(1.0 / _fit_inverse_temperature(za, ya, wa))


def _grad_hess(u: float, z: FloatArray, y: FloatArray, w: FloatArray) -> tuple[float, float]:
    p = sigmoid_array(u * z)
    g = dot(w * z, p - y)
    h = dot(w * z * z, p * (1.0 - p))
    return g, h


def _fit_inverse_temperature(z: FloatArray, y: FloatArray, w: FloatArray) -> float:
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    if not dot(w, z * z) > 0.0:
        # All logits 0: every temperature gives the same NLL.
        return 1.0
    g_lo, _ = _grad_hess(lo, z, y, w)
    if g_lo >= 0.0:
        return lo
    g_hi, _ = _grad_hess(hi, z, y, w)
    if g_hi <= 0.0:
        return hi
    # The gradient is increasing in u (convexity) and changes sign in (lo, hi).
    u = 1.0
    for _ in range(_MAX_ITER):
        g, h = _grad_hess(u, z, y, w)
        if g > 0.0:
            hi = u
        else:
            lo = u
        step = g / h if h > 0.0 else math.inf
        if abs(step) <= _TOL * u:
            return u
        u_new = u - step
        if not lo < u_new < hi:
            # Newton left the bracket (far from the optimum): bisect instead.
            u_new = 0.5 * (lo + hi)
        if hi - lo <= _TOL * u_new:
            return u_new
        u = u_new
    return u
