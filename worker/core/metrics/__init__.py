"""Calibration metrics (DESIGN §5): batch functions, the report, the streaming accumulator."""

from worker.core.metrics.calibration_report import CalibrationReport
from worker.core.metrics.functions import (
    calibration_metrics,
    ece_bin_edges,
    ece_bin_index,
    ece_floor,
    ece_floor_quantile,
    ece_from_bins,
    rebin_to_ece_bins,
    simulate_null_ece,
)
from worker.core.metrics.online_ece import OnlineCalibration
from worker.core.metrics.reliability_bin import ReliabilityBin

__all__ = [
    "CalibrationReport",
    "OnlineCalibration",
    "ReliabilityBin",
    "calibration_metrics",
    "ece_bin_edges",
    "ece_bin_index",
    "ece_floor",
    "ece_floor_quantile",
    "ece_from_bins",
    "rebin_to_ece_bins",
    "simulate_null_ece",
]
