"""Platt scaling: ``sigmoid(a * z + b)``, a weighted logistic regression on the logit."""

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

# A ridge of 1e-10 per unit of weight keeps the optimum finite on separable data (tiny users,
# one-class windows) while moving non-separable fits by ~1e-10: invisible next to sklearn's
# unregularised solution.
_RIDGE = 1e-10
_MAX_ITER = 100
_TOL = 1e-12


class PlattCalibrator(Calibrator):
    """Calibrated probability = ``sigmoid(a * z + b)``; params ``{"a": a, "b": b}``.

    ``fit`` is weighted logistic regression of the labels on the model logit with an
    intercept (Newton/IRLS with backtracking, in numpy), agreeing with scikit-learn's
    ``LogisticRegression(penalty=None)`` to ~1e-8. ``a`` is not constrained to be positive:
    a negative slope means the scores rank backwards, which the caller should treat as a
    broken model rather than a calibration (the policy never publishes one, see
    ``is_monotone_increasing``).

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> z = rng.normal(-2.0, 1.0, 50_000)
    >>> y = rng.random(50_000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    >>> cal = PlattCalibrator.fit(z, y)
    >>> round(cal.a, 1), round(cal.b, 1)
    (0.5, -1.0)
    >>> PlattCalibrator(1.0, 0.0).apply(0.3)
    0.3
    """

    method = "platt"

    def __init__(self, a: float, b: float) -> None:
        for name, v in (("a", a), ("b", b)):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
                or not math.isfinite(float(v))
            ):
                raise ConfigError(f"platt {name} must be a finite number; got {v!r}")
        self._a = float(a)
        self._b = float(b)

    @property
    def a(self) -> float:
        """Slope on the model logit."""
        return self._a

    @property
    def b(self) -> float:
        """Intercept."""
        return self._b

    def params(self) -> dict[str, Any]:
        """``{"a": a, "b": b}``."""
        return {"a": self._a, "b": self._b}

    def apply_logit(self, z: ScoreLike) -> ScoreOut:
        """``sigmoid(a * z + b)``."""
        za, scalar = as_logits(z)
        return out(self._apply_logit_unchecked(za), scalar)

    def _apply_logit_unchecked(self, z: FloatArray) -> FloatArray:
        return sigmoid_array(self._a * z + self._b)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PlattCalibrator:
        """From ``{"a": a, "b": b}``."""
        if not isinstance(params, Mapping) or set(params) != {"a", "b"}:
            raise ConfigError(f"platt params must be {{'a': a, 'b': b}}; got {params!r}")
        return cls(params["a"], params["b"])

    @classmethod
    def fit(cls, z: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None) -> PlattCalibrator:
        """Weighted maximum-likelihood ``(a, b)`` for logits ``z`` and labels ``y``."""
        za, ya, wa = training_arrays(z, y, weights)
        theta = fit_logistic(za, ya, wa, np.array([1.0, 0.0]), _RIDGE * wa.sum() * np.eye(2))
        return cls(float(theta[0]), float(theta[1]))


def fit_logistic(
    z: FloatArray,
    y: FloatArray,
    w: FloatArray,
    center: FloatArray,
    precision: FloatArray,
    *,
    intercept: bool = True,
) -> FloatArray:
    """Minimise ``sum w * logloss(y, sigmoid(a z + b)) + 0.5 (t - c)' P (t - c)`` over t.

    ``t = (a, b)`` with an intercept, ``t = (a,)`` without. Damped Newton: the objective is
    convex, so backtracking on the objective converges from any start; it starts at
    ``center``. Shared with the hierarchical shrinkage (a Gaussian prior is ``precision``).
    The 2x2 algebra is done on Python floats: per-user fits are tiny and numpy's linalg
    call overhead would dominate them.
    """
    c_a = float(center[0])
    c_b = float(center[1]) if intercept else 0.0
    p_aa = float(precision[0, 0])
    p_ab = float(precision[0, 1]) if intercept else 0.0
    p_bb = float(precision[1, 1]) if intercept else 0.0
    wz = w * z

    def objective(a: float, b: float) -> float:
        eta = a * z + b
        nll = dot(w, np.logaddexp(0.0, eta) - y * eta)
        da, db = a - c_a, b - c_b
        return nll + 0.5 * (p_aa * da * da + 2.0 * p_ab * da * db + p_bb * db * db)

    a, b = c_a, c_b
    f = objective(a, b)
    for _ in range(_MAX_ITER):
        p = sigmoid_array(a * z + b)
        r = p - y
        s = w * p * (1.0 - p)
        sz = s * z
        da, db = a - c_a, b - c_b
        g_a = dot(wz, r) + p_aa * da + p_ab * db
        h_aa = dot(sz, z) + p_aa
        if intercept:
            g_b = dot(w, r) + p_ab * da + p_bb * db
            h_ab = float(sz.sum()) + p_ab
            h_bb = float(s.sum()) + p_bb
            det = h_aa * h_bb - h_ab * h_ab
            if not det > 1e-300:
                break
            step_a = (h_bb * g_a - h_ab * g_b) / det
            step_b = (h_aa * g_b - h_ab * g_a) / det
        else:
            g_b = step_b = 0.0
            if not h_aa > 0.0:
                break
            step_a = g_a / h_aa
        decrement = g_a * step_a + g_b * step_b
        # Below this the objective cannot improve in float64; coefficients are converged to
        # ~sqrt(decrement / curvature).
        if not (math.isfinite(decrement) and decrement > 1e-18 * max(1.0, abs(f))):
            break
        lam = 1.0
        a_new, b_new = a - step_a, b - step_b
        f_new = objective(a_new, b_new)
        # Backtracking (Armijo); Newton's full step is accepted near the optimum.
        while not f_new <= f - 1e-4 * lam * decrement and lam > 1e-10:
            lam *= 0.5
            a_new, b_new = a - lam * step_a, b - lam * step_b
            f_new = objective(a_new, b_new)
        if not f_new <= f:
            break
        moved = max(abs(a_new - a), abs(b_new - b))
        a, b, f = a_new, b_new, f_new
        if moved <= _TOL * max(1.0, abs(a), abs(b)):
            break
    return np.array([a, b]) if intercept else np.array([a])
