"""Shared pieces of the online Newton step learners (``OnlinePlatt``, ``OnlineContextual``).

Private: the box projection of ``(a, b)`` in a quadratic norm, and the validation of a
labelled event, each written once for both learners.
"""

from __future__ import annotations

import math

import numpy as np

from worker.core.calibrators._numeric import FloatArray
from worker.core.checks import is_real
from worker.core.errors import InvalidInputError


def project_box(
    a: float, b: float, aa: float, ab: float, bb: float, lo: float, hi: float, bm: float
) -> tuple[float, float]:
    """``argmin (t - (a, b))' Q (t - (a, b))`` over ``[lo, hi] x [-bm, bm]``, with
    ``Q = [[aa, ab], [ab, bb]]`` symmetric positive definite.

    The minimiser lies inside or on one of the four edges, and on an edge the 1-D quadratic's
    minimiser clipped to the edge is exact, so the best of the four clipped edge minimisers
    is the projection (the generalised projection ONS's regret bound assumes).

    >>> project_box(0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 2.0, 1.0)
    (0.5, 0.0)
    """
    if lo <= a <= hi and -bm <= b <= bm:
        return a, b
    best = (math.inf, a, b)
    for fixed_a in (lo, hi):
        # Edge a = fixed_a: minimise over b, then clip (a 1-D convex quadratic).
        bb_opt = min(max(b - ab * (fixed_a - a) / bb, -bm), bm)
        best = min(best, (_quad(aa, ab, bb, fixed_a - a, bb_opt - b), fixed_a, bb_opt))
    for fixed_b in (-bm, bm):
        a_opt = min(max(a - ab * (fixed_b - b) / aa, lo), hi)
        best = min(best, (_quad(aa, ab, bb, a_opt - a, fixed_b - b), a_opt, fixed_b))
    return best[1], best[2]


def _quad(aa: float, ab: float, bb: float, da: float, db: float) -> float:
    """``d' Q d`` for ``d = (da, db)``."""
    return aa * da * da + 2.0 * ab * da * db + bb * db * db


def check_event(z: object, y: object) -> None:
    """One labelled event: a finite logit and a label in {0, 1}, else ``InvalidInputError``."""
    if not is_real(z):
        raise InvalidInputError("score_range", f"logit must be a finite number; got {z!r}")
    if not (is_real(y) and y in (0, 1)):
        raise InvalidInputError("schema", f"label must be 0 or 1; got {y!r}")


def check_events(z: object, y: object) -> tuple[FloatArray, FloatArray]:
    """A batch of labelled events as 1-D float arrays, all validated before any is used."""
    za = np.asarray(z, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if za.size != ya.size:
        raise InvalidInputError("schema", f"z and y must have one length; got {za.size}, {ya.size}")
    if not np.isfinite(za).all():
        bad = za[~np.isfinite(za)][0]
        raise InvalidInputError("score_range", f"logit must be a finite number; got {bad}")
    if ((ya != 0.0) & (ya != 1.0)).any():
        bad = ya[(ya != 0.0) & (ya != 1.0)][0]
        raise InvalidInputError("schema", f"label must be 0 or 1; got {bad}")
    return za, ya
