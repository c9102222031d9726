"""Isotonic calibration on the raw score, fitted with scikit-learn (DESIGN §3 ``isotonic``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.calibrators._numeric import (
    FloatArray,
    ScoreLike,
    ScoreOut,
    as_logits,
    as_scores,
    out,
    training_arrays,
)
from worker.core.calibrators.calibrator import Calibrator
from worker.core.errors import ConfigError
from worker.core.mathfn import sigmoid_array

if TYPE_CHECKING:
    from worker.core.sketches.logit_histogram import LogitHistogram


class IsotonicCalibrator(Calibrator):
    """Piecewise-linear non-decreasing map of the score; params ``{"x": [...], "y": [...]}``.

    ``x`` is strictly increasing in [0, 1], ``y`` non-decreasing in [0, 1], same length >= 1.
    ``apply(score) = np.interp(score, x, y)``: linear between breakpoints, clipped to the end
    values outside them. ``fit`` runs ``IsotonicRegression(out_of_bounds="clip",
    increasing=True)`` with ``sample_weight`` on the *scores* and keeps its compacted
    breakpoints (``X_thresholds_``, ``y_thresholds_``), so ``apply`` reproduces scikit-learn's
    ``predict``. Note: like scikit-learn, the end values can be exactly 0 or 1 (infinite log
    loss on a holdout event of the other class); holdout scoring must clip.

    >>> cal = IsotonicCalibrator([0.1, 0.5, 0.9], [0.0, 0.2, 0.6])
    >>> round(cal.apply(0.7), 12), cal.apply(0.95), cal.apply(0.0)
    (0.4, 0.6, 0.0)
    >>> fitted = IsotonicCalibrator.fit_scores([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    >>> fitted.params()
    {'x': [0.1, 0.2, 0.3, 0.4], 'y': [0.0, 0.5, 0.5, 1.0]}
    """

    method = "isotonic"

    def __init__(self, x: Sequence[float] | ArrayLike, y: Sequence[float] | ArrayLike) -> None:
        try:
            xa = np.asarray(x, dtype=np.float64)
            ya = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"isotonic x and y must be lists of numbers: {exc}") from exc
        if xa.ndim != 1 or ya.ndim != 1 or xa.size != ya.size or xa.size < 1:
            raise ConfigError(
                f"isotonic x and y must be non-empty lists of one length; got {xa.size}, {ya.size}"
            )
        if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
            raise ConfigError("isotonic x and y must be finite numbers")
        if xa.min() < 0.0 or xa.max() > 1.0 or ya.min() < 0.0 or ya.max() > 1.0:
            raise ConfigError("isotonic x and y must lie in [0, 1]")
        if (np.diff(xa) <= 0.0).any():
            raise ConfigError(f"isotonic x must be strictly increasing; got {xa.tolist()!r}")
        if (np.diff(ya) < 0.0).any():
            raise ConfigError(f"isotonic y must be non-decreasing; got {ya.tolist()!r}")
        self._x = xa
        self._y = ya
        self._x.flags.writeable = False
        self._y.flags.writeable = False

    @property
    def x(self) -> FloatArray:
        """Breakpoints on the score (read-only array)."""
        return self._x

    @property
    def y(self) -> FloatArray:
        """Calibrated probability at each breakpoint (read-only array)."""
        return self._y

    def params(self) -> dict[str, Any]:
        """``{"x": [...], "y": [...]}``."""
        return {"x": self._x.tolist(), "y": self._y.tolist()}

    def apply(self, scores: ScoreLike) -> ScoreOut:
        """``np.interp(score, x, y)`` (interp clips to the end values by itself)."""
        s, scalar = as_scores(scores)
        return out(np.interp(s, self._x, self._y), scalar)

    def apply_logit(self, z: ScoreLike) -> ScoreOut:
        """``apply(sigmoid(z))``: isotonic lives on the score scale."""
        za, scalar = as_logits(z)
        return out(np.interp(sigmoid_array(za), self._x, self._y), scalar)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> IsotonicCalibrator:
        """From ``{"x": [...], "y": [...]}``."""
        if not isinstance(params, Mapping) or set(params) != {"x", "y"}:
            raise ConfigError(f"isotonic params must be {{'x': [...], 'y': [...]}}; got {params!r}")
        return cls(params["x"], params["y"])

    @classmethod
    def fit(
        cls, z: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
    ) -> IsotonicCalibrator:
        """Fit on the scores ``sigmoid(z)`` (isotonic regression is on the score scale)."""
        za, ya, wa = training_arrays(z, y, weights)
        return cls._fit_on_scores(sigmoid_array(za), ya, wa)

    @classmethod
    def fit_scores(
        cls, scores: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
    ) -> IsotonicCalibrator:
        """Fit directly on raw scores in [0, 1] (no clipping, no logit round trip)."""
        s, _ = as_scores(scores)
        s = s.ravel()
        # training_arrays validates labels and weights; a zero logit stands in for the scores.
        _, ya, wa = training_arrays(np.zeros_like(s), y, weights)
        return cls._fit_on_scores(s, ya, wa)

    @classmethod
    def fit_sketch(cls, hist: LogitHistogram) -> IsotonicCalibrator:
        """One point per non-empty bin at its *mean score* ``sum_p / weight`` (the score-scale
        analogue of the bin-mean logit), with label ``positives / weight`` and weight
        ``weight`` — the same least-squares problem as the two-point form."""
        _, wb, pos, sp = hist.arrays()
        if not wb.sum() > 0.0:
            # Same error as every other method's empty fit.
            training_arrays(np.zeros(0), np.zeros(0), None)
        x = np.clip(sp / wb, 0.0, 1.0)
        frac = np.clip(pos / wb, 0.0, 1.0)
        return cls._fit_on_scores(x, frac, wb)

    @classmethod
    def _fit_on_scores(cls, s: FloatArray, y: FloatArray, w: FloatArray) -> IsotonicCalibrator:
        keep = w > 0.0
        # Imported here: serving (worker.client) applies isotonic maps but never fits one,
        # and scikit-learn is most of its import time.
        from sklearn.isotonic import IsotonicRegression

        ir = IsotonicRegression(out_of_bounds="clip", increasing=True)
        ir.fit(s[keep], y[keep], sample_weight=w[keep])
        xs = np.asarray(ir.X_thresholds_, dtype=np.float64)
        ys = np.asarray(ir.y_thresholds_, dtype=np.float64)
        # Pooled means are monotone in exact arithmetic; the accumulate only removes a
        # possible last-ulp wobble so the constructor's check cannot fail on a fitted map.
        ys = np.clip(np.maximum.accumulate(ys), 0.0, 1.0)
        if not math.isfinite(float(ys.sum())):
            raise ConfigError("isotonic fit produced non-finite values")
        return cls(xs, ys)
