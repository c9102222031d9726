"""Calibrators (DESIGN §3 method table, §5): fit, apply, serialise, shrink, gate."""

from worker.core.calibrators.calibrator import Calibrator
from worker.core.calibrators.context_columns import ContextColumns
from worker.core.calibrators.contextual import ContextualCalibrator
from worker.core.calibrators.eligibility import EligibilityGate
from worker.core.calibrators.factory import calibrator_from_dict
from worker.core.calibrators.hierarchical_shrinkage import HierarchicalShrinkage
from worker.core.calibrators.identity import IdentityCalibrator
from worker.core.calibrators.isotonic import IsotonicCalibrator
from worker.core.calibrators.monotone import is_monotone_increasing
from worker.core.calibrators.online_contextual import OnlineContextual
from worker.core.calibrators.online_platt import OnlinePlatt
from worker.core.calibrators.platt import PlattCalibrator
from worker.core.calibrators.temperature import TemperatureCalibrator

__all__ = [
    "Calibrator",
    "ContextColumns",
    "ContextualCalibrator",
    "EligibilityGate",
    "HierarchicalShrinkage",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "OnlineContextual",
    "OnlinePlatt",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "calibrator_from_dict",
    "is_monotone_increasing",
]
