"""The read-only result of a calibration evaluation (DESIGN §5 "Metrics")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from worker.core.errors import InvalidInputError
from worker.core.metrics.reliability_bin import ReliabilityBin

_SCALARS = (
    "n",
    "positives",
    "expected",
    "ece",
    "ece_debiased",
    "ece_floor",
    "ece_se",
    "ci_level",
    "mce",
    "brier",
    "nll",
    "debiased_l2_ece",
    "l2_ece_debiased",
    "citl_ratio",
    "citl_z",
    "spiegelhalter_z",
)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _unnum(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """Calibration metrics of scores ``p`` against labels ``y`` (weighted or decayed).

    Build it with ``calibration_metrics(p, y)`` or ``OnlineCalibration.report()``; metrics
    that are undefined (no data, no expected positives, ...) are NaN. Fields:

    - ``n``: effective weight sum (the event count when unweighted); ``positives``: weighted
      count of label 1; ``expected``: weighted sum of scores.
    - ``ece``: plug-in expected calibration error over ``n_bins`` equal-width bins,
      right-closed with ``p == 0`` in the first bin: ``sum_b |Y_b - P_b| / n``.
    - ``ece_debiased``: ``ece`` minus its estimated upward bias (clipped at 0);
      ``ece_ci = (lo, hi)`` its ``ci_level`` confidence interval. Method: analytic parametric
      bootstrap under the observed per-bin rates (see ``worker.core.metrics.functions``).
      ``ece_se``: the standard error of ``ece`` under the same model (the interval is wider:
      it also brackets the bias).
    - ``ece_floor``: the ECE expected from a perfectly calibrated predictor on these scores,
      ``sqrt(2/pi) / n * sum_b sqrt(sum_{i in b} w_i^2 p_i (1 - p_i))`` (DESIGN §5).
    - ``mce``: the largest ``|frac_pos - mean_p|`` over non-empty bins.
    - ``brier``: weighted mean of ``(y - p)^2``; ``nll``: weighted mean log loss, the
      probability given to the observed label floored at ``1e-15`` (scikit-learn < 1.5's
      clipping; 1.5+ clips at float64 eps, 2.2e-16, which differs only for such extremes).
    - ``debiased_l2_ece``: the *squared* L2-ECE with Kumar et al. (2019)'s per-bin variance
      correction (may be negative); ``l2_ece_debiased = sqrt(max(0, debiased_l2_ece))`` is on
      the same scale as ``ece``.
    - ``citl_ratio``: observed / expected positives; ``citl_z``: ``(O - E) / sqrt(sum w^2 p(1-p))``.
    - ``spiegelhalter_z``: ``sum w (y-p)(1-2p) / sqrt(sum w^2 (1-2p)^2 p(1-p))``.
    - ``reliability``: one ``ReliabilityBin`` per ECE bin, empty bins included.

    >>> from worker.core.metrics import calibration_metrics
    >>> r = calibration_metrics([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 0])
    >>> r.n, r.positives, round(r.ece, 3), round(r.mce, 3)
    (4.0, 1.0, 0.25, 0.4)
    >>> CalibrationReport.from_dict(r.to_dict()).to_dict() == r.to_dict()
    True
    """

    n: float
    positives: float
    expected: float
    n_bins: int
    ece: float
    ece_debiased: float
    ece_floor: float
    ece_ci: tuple[float, float]
    ece_se: float
    ci_level: float
    mce: float
    brier: float
    nll: float
    debiased_l2_ece: float
    l2_ece_debiased: float
    citl_ratio: float
    citl_z: float
    spiegelhalter_z: float
    reliability: tuple[ReliabilityBin, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``"v": 1``; NaN values become ``None``."""
        out: dict[str, Any] = {"v": 1, "n_bins": self.n_bins}
        for name in _SCALARS:
            out[name] = _num(getattr(self, name))
        out["ece_ci"] = [_num(self.ece_ci[0]), _num(self.ece_ci[1])]
        out["reliability"] = [b.to_dict() for b in self.reliability]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationReport:
        """Inverse of ``to_dict``."""
        if data.get("v") != 1:
            raise InvalidInputError(
                "schema", f"calibration report version must be 1; got {data.get('v')!r}"
            )
        scalars = {name: _unnum(data[name]) for name in _SCALARS}
        lo, hi = data["ece_ci"]
        return cls(
            n_bins=int(data["n_bins"]),
            ece_ci=(_unnum(lo), _unnum(hi)),
            reliability=tuple(ReliabilityBin.from_dict(b) for b in data["reliability"]),
            **scalars,
        )
