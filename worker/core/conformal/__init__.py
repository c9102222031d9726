"""Split-conformal binary prediction sets and their online coverage (DESIGN §5)."""

from worker.core.conformal.conformal_threshold import (
    ConformalThreshold,
    fit_qhat,
    is_uncertain,
    prediction_set,
    prediction_sets,
)
from worker.core.conformal.coverage_tracker import CoverageTracker

__all__ = [
    "ConformalThreshold",
    "CoverageTracker",
    "fit_qhat",
    "is_uncertain",
    "prediction_set",
    "prediction_sets",
]
