"""The calibrator a scope serves, as a fast scalar function (private to the pipeline).

The monitor needs the served probability of every feedback event (and of every impression,
for the stall detector's arrival counts). ``Calibrator.apply`` goes through numpy for one
scalar (several microseconds); these closures are plain float arithmetic with the same
DESIGN §3 formulas, and are checked against ``calibrator_from_dict(msg).apply`` in the tests.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from typing import Any, Protocol

from worker.core.calibrators import ContextualCalibrator, calibrator_from_dict
from worker.core.mathfn import sigmoid
from worker.core.records.impression import Impression


class ServeFn(Protocol):
    """(score, clamped logit, the impression) -> calibrated probability; only a
    ``contextual`` map reads the impression (its serving context; None: context-free)."""

    def __call__(self, score: float, z: float, imp: Impression | None = None) -> float: ...


def _identity(score: float, z: float, imp: Impression | None = None) -> float:
    return score


def _contextual(cal: ContextualCalibrator) -> ServeFn:
    def serve(score: float, z: float, imp: Impression | None = None) -> float:
        a, b = cal.slope_intercept(None if imp is None else imp.serving_context())
        return sigmoid(a * z + b)

    return serve


def _isotonic(xs: list[float], ys: list[float]) -> ServeFn:
    n = len(xs)

    def serve(score: float, z: float, imp: Impression | None = None) -> float:
        # np.interp semantics: clipped to the end values outside [x0, x_last].
        if score <= xs[0]:
            return ys[0]
        if score >= xs[-1]:
            return ys[-1]
        i = bisect_right(xs, score) - 1
        if i >= n - 1:
            return ys[-1]
        x0, x1 = xs[i], xs[i + 1]
        t = (score - x0) / (x1 - x0)
        return ys[i] + t * (ys[i + 1] - ys[i])

    return serve


def serve_fn(msg: Mapping[str, Any] | None) -> ServeFn:
    """The scalar map of a version message (``None``: identity).

    The message is validated by building the real calibrator once, so a malformed message
    fails here exactly as it would in ``calibrator_from_dict``.
    """
    if msg is None:
        return _identity
    cal = calibrator_from_dict(msg)
    params = cal.params()
    if cal.method == "identity":
        return _identity
    if cal.method == "temperature":
        inv_t = 1.0 / float(params["temperature"])
        return lambda score, z, imp=None: sigmoid(z * inv_t)
    if cal.method == "platt":
        a = float(params["a"])
        b = float(params["b"])
        return lambda score, z, imp=None: sigmoid(a * z + b)
    if isinstance(cal, ContextualCalibrator):
        return _contextual(cal)
    return _isotonic([float(v) for v in params["x"]], [float(v) for v in params["y"]])


def calibrator_key(msg: Mapping[str, Any] | None) -> tuple[str, str]:
    """A hashable identity of a message's map (method and params), for "same calibrator"."""
    if msg is None:
        return ("identity", "{}")
    return (str(msg["method"]), repr(sorted(msg["params"].items())))
