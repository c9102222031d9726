"""Candidate scoring on a holdout and the paired publication test (private to the policy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.calibrators import Calibrator, ContextColumns, ContextualCalibrator
from worker.core.metrics import calibration_metrics

FloatArray = NDArray[np.float64]

# The probability floor of the log loss, as in ``calibration_metrics`` (so ``nll_before`` and
# ``nll_after`` of a version equal what the metrics module reports for the same events).
# Isotonic maps can output exactly 0 or 1: a click at p = 0 costs 34.5 nats, which is the
# honest price of serving such a map.
LOSS_EPS = 1e-15
# NLLs closer than this (nats per event) count as a tie, broken by ECE.
NLL_TIE = 1e-9


@dataclass(frozen=True)
class Candidate:
    """A fitted calibrator that could be published, with its training window."""

    name: str
    calibrator: Calibrator
    training: dict[str, Any]


@dataclass(frozen=True)
class Scored:
    """A candidate's per-event holdout log losses and predictions."""

    candidate: Candidate
    p: FloatArray
    losses: FloatArray

    @property
    def nll(self) -> float:
        return float(self.losses.mean())


def log_losses(p: FloatArray, y: FloatArray) -> FloatArray:
    """Per-event log loss with ``p`` floored at ``LOSS_EPS`` away from 0 and 1."""
    pc = np.clip(p, LOSS_EPS, 1.0 - LOSS_EPS)
    out: FloatArray = -(y * np.log(pc) + (1.0 - y) * np.log1p(-pc))
    return out


def score(
    cal: Calibrator, z: FloatArray, y: FloatArray, ctx: ContextColumns | None = None
) -> tuple[FloatArray, FloatArray]:
    """``(p, per-event log loss)`` of ``cal`` on holdout logits ``z`` and labels ``y``; a
    ``contextual`` map in each event's context ``ctx`` (None: the rings keep no context,
    and it is scored at the average context, its context-free map)."""
    if ctx is not None and isinstance(cal, ContextualCalibrator):
        p = cal.apply_columns(z, ctx)
    else:
        p = np.asarray(cal.apply_logit(z), dtype=np.float64)
    return p, log_losses(p, y)


def score_all(
    cands: list[Candidate], z: FloatArray, y: FloatArray, ctx: ContextColumns | None = None
) -> list[Scored]:
    out = []
    for c in cands:
        p, losses = score(c.calibrator, z, y, ctx)
        out.append(Scored(c, p, losses))
    return out


def ece(p: FloatArray, y: FloatArray, n_bins: int) -> float:
    return float(calibration_metrics(p, y, n_bins=n_bins).ece) if p.size else math.nan


def pick_best(scored: list[Scored], y: FloatArray, n_bins: int) -> Scored:
    """Lowest holdout NLL; candidates within ``NLL_TIE`` of it are separated by ECE, then by
    their order in ``scored`` (so the choice is deterministic)."""
    best_nll = min(s.nll for s in scored)
    tied = [s for s in scored if s.nll <= best_nll + NLL_TIE]
    if len(tied) == 1:
        return tied[0]
    eces = [ece(s.p, y, n_bins) for s in tied]
    return tied[int(np.argmin(eces))]


def improvement(loss_before: FloatArray, loss_after: FloatArray) -> tuple[float, float]:
    """Mean per-event log-loss improvement of "after" over "before", and its standard error
    (paired: the same holdout events, so their common noise cancels)."""
    d = loss_before - loss_after
    m = d.size
    if m < 2:
        return (float(d.mean()) if m else 0.0), math.inf
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(m))


def beats(
    loss_before: FloatArray, loss_after: FloatArray, z: float, min_n: int, min_mean: float
) -> bool:
    """``after`` is better than ``before`` beyond noise: mean improvement ``> z * SE`` and
    ``> min_mean`` (nats per event), on at least ``min_n`` events."""
    if loss_before.size < min_n:
        return False
    mean, se = improvement(loss_before, loss_after)
    return mean > min_mean and mean > z * se


def metrics_block(
    p_before: FloatArray, p_after: FloatArray, y: FloatArray, n_bins: int
) -> dict[str, Any]:
    """The version message's ``metrics``: before/after on the same holdout events."""
    if y.size == 0:
        return {"ece_before": None, "ece_after": None, "nll_before": None, "nll_after": None,
                "n_eval": 0, "ece_floor": None}
    before = calibration_metrics(p_before, y, n_bins=n_bins)
    after = calibration_metrics(p_after, y, n_bins=n_bins)
    return {
        "ece_before": _num(before.ece),
        "ece_after": _num(after.ece),
        "nll_before": _num(before.nll),
        "nll_after": _num(after.nll),
        "n_eval": int(y.size),
        "ece_floor": _num(after.ece_floor),
    }


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
