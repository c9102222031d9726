"""Logit-affine calibrators as ``(a, b)`` pairs: ``p = sigmoid(a * z + b)`` (private).

Identity ``(1, 0)``, temperature ``(1 / T, 0)`` and Platt ``(a, b)`` are all of this form,
so they compose and invert in closed form. The policy uses this to carry a segment's offset
from the global across a global regime change (see ``RecalibrationPolicy._refit_model``).
"""

from __future__ import annotations

import math
from typing import Any

AFFINE_METHODS = ("identity", "temperature", "platt")

# A composed map is published as Platt; below this slope it would flatten every score to
# the base rate, which no finite sample supports: such a residual is not carried.
_MIN_SLOPE = 1e-3


def affine_of(cal: dict[str, Any]) -> tuple[float, float] | None:
    """``(a, b)`` of a ``{"method", "params"}`` dict, or None when it is not logit-affine."""
    method, params = cal["method"], cal["params"]
    if method == "identity":
        return 1.0, 0.0
    if method == "temperature":
        return 1.0 / float(params["temperature"]), 0.0
    if method == "platt":
        return float(params["a"]), float(params["b"])
    return None


def residual_of(child: dict[str, Any], parent: dict[str, Any]) -> tuple[float, float] | None:
    """``R`` with ``child = parent o R`` (R applied to the model logit first), or None.

    Why this order: a segment's miscalibration that lives in the model's inputs (an offset
    of its logits) is still there after the model as a whole turns over- or
    under-confident; ``parent_new o R`` keeps it under the new parent.
    """
    c, p = affine_of(child), affine_of(parent)
    if c is None or p is None or abs(p[0]) < _MIN_SLOPE:
        return None
    a, b = c[0] / p[0], (c[1] - p[1]) / p[0]
    if not (math.isfinite(a) and math.isfinite(b)) or a < _MIN_SLOPE:
        return None
    return a, b


def compose(parent: dict[str, Any], residual: tuple[float, float]) -> dict[str, Any] | None:
    """``parent o residual`` as a calibrator dict (Platt; the parent itself when the residual
    is the identity), or None when the parent is not logit-affine."""
    p = affine_of(parent)
    if p is None:
        return None
    ra, rb = residual
    if ra == 1.0 and rb == 0.0:
        return {"method": parent["method"], "params": dict(parent["params"])}
    return {"method": "platt", "params": {"a": p[0] * ra, "b": p[0] * rb + p[1]}}
