"""Drift detectors with a controlled false-alarm rate (DESIGN §7).

Labelled calibration (``CalibrationCusum``), click rate (``BaseRateShift``), score
distribution without labels (``ScoreShift``), label flow (``FeedbackStall``), late clicks
(``LateClickRate``), ECE significance (``EceHigh``) and false-discovery-rate control across
segments (``SegmentFdr``). The shared threshold derivation is in ``_cusum``.
"""

from worker.core.drift.base_rate_shift import BaseRateShift
from worker.core.drift.calibration_cusum import CalibrationCusum
from worker.core.drift.ece_high import EceHigh
from worker.core.drift.feedback_stall import FeedbackStall
from worker.core.drift.late_click_rate import LateClickRate
from worker.core.drift.score_shift import ScoreShift
from worker.core.drift.segment_fdr import SegmentFdr

__all__ = [
    "BaseRateShift",
    "CalibrationCusum",
    "EceHigh",
    "FeedbackStall",
    "LateClickRate",
    "ScoreShift",
    "SegmentFdr",
]
