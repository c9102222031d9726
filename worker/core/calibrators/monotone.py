"""Whether a calibrator's map is monotone increasing in the score (DESIGN §3)."""

from __future__ import annotations

import math

import numpy as np

from worker.core.calibrators.calibrator import Calibrator
from worker.core.calibrators.contextual import ContextualCalibrator
from worker.core.calibrators.identity import IdentityCalibrator
from worker.core.calibrators.isotonic import IsotonicCalibrator
from worker.core.calibrators.platt import PlattCalibrator
from worker.core.calibrators.temperature import TemperatureCalibrator


def is_monotone_increasing(cal: Calibrator) -> bool:
    """Whether ``cal`` may be published: a higher score never gets a lower probability.

    Identity: yes. Temperature: ``T > 0`` and finite. Platt: ``a > 0`` and ``a``, ``b``
    finite (``a = 0`` maps every score to the base rate: not increasing, and a ranking
    signal thrown away). Isotonic: ``y`` non-decreasing. Contextual: ``a > 0`` (its slope
    ``a(x) = a exp(...)`` is then positive in every context). Any other class: no, until it
    says how (a method that cannot vouch for its map is not published).

    The constructors accept more than this on purpose (a Platt fit with ``a < 0`` is a
    valid estimate, and serving must still read any old message); this predicate is the
    policy's publication rule, kept here so there is one definition of it.

    >>> is_monotone_increasing(PlattCalibrator(0.8, -1.0))
    True
    >>> is_monotone_increasing(PlattCalibrator(-0.029, -3.1))
    False
    >>> is_monotone_increasing(IsotonicCalibrator([0.1, 0.9], [0.2, 0.2]))
    True
    """
    if isinstance(cal, IdentityCalibrator):
        return True
    if isinstance(cal, TemperatureCalibrator):
        return math.isfinite(cal.temperature) and cal.temperature > 0.0
    if isinstance(cal, PlattCalibrator):
        return math.isfinite(cal.a) and math.isfinite(cal.b) and cal.a > 0.0
    if isinstance(cal, ContextualCalibrator):
        # a(x) = a * exp(...) > 0 for every context; the constructor checked that a > 0 and
        # every weight is finite.
        return math.isfinite(cal.a) and math.isfinite(cal.b) and cal.a > 0.0
    if isinstance(cal, IsotonicCalibrator):
        return bool(np.isfinite(cal.y).all() and (np.diff(cal.y) >= 0.0).all())
    return False
