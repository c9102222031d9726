"""Independent, loop-based reference computations for the metrics tests."""

from __future__ import annotations

import math

import numpy as np


def ref_bin(x: float, n_bins: int = 15) -> int:
    """First bin whose upper edge k/n_bins is >= x: right-closed bins, 0 in bin 0."""
    for b in range(n_bins):
        if x <= (b + 1) / n_bins:
            return b
    return n_bins - 1


def ref_metrics(p, y, w=None, n_bins: int = 15) -> dict:
    """Every metric by its textbook formula, event by event."""
    p = [float(v) for v in p]
    y = [float(v) for v in y]
    w = [1.0] * len(p) if w is None else [float(v) for v in w]
    W = [0.0] * n_bins
    Y = [0.0] * n_bins
    P = [0.0] * n_bins
    W2 = [0.0] * n_bins
    V = [0.0] * n_bins
    brier = nll = sp_num = sp_var = 0.0
    for pi, yi, wi in zip(p, y, w, strict=True):
        b = ref_bin(pi, n_bins)
        W[b] += wi
        Y[b] += wi * yi
        P[b] += wi * pi
        W2[b] += wi * wi
        V[b] += wi * wi * pi * (1 - pi)
        brier += wi * (yi - pi) ** 2
        pc = min(max(pi, 1e-15), 1 - 1e-15)
        nll += -wi * (yi * math.log(pc) + (1 - yi) * math.log(1 - pc))
        sp_num += wi * (yi - pi) * (1 - 2 * pi)
        sp_var += wi * wi * (1 - 2 * pi) ** 2 * pi * (1 - pi)
    n = sum(W)
    ece = sum(W[b] / n * abs(Y[b] / W[b] - P[b] / W[b]) for b in range(n_bins) if W[b] > 0)
    mce = max(abs(Y[b] / W[b] - P[b] / W[b]) for b in range(n_bins) if W[b] > 0)
    l2 = 0.0
    for b in range(n_bins):
        if W[b] <= 0:
            continue
        neff = W[b] ** 2 / W2[b]
        if neff >= 2 - 1e-9:
            rate = Y[b] / W[b]
            l2 += W[b] / n * ((rate - P[b] / W[b]) ** 2 - rate * (1 - rate) / (neff - 1))
    return {
        "n": n,
        "positives": sum(Y),
        "expected": sum(P),
        "ece": ece,
        "mce": mce,
        "brier": brier / n,
        "nll": nll / n,
        "ece_floor": math.sqrt(2 / math.pi) / n * sum(math.sqrt(v) for v in V),
        "debiased_l2_ece": l2,
        "citl_ratio": sum(Y) / sum(P),
        "citl_z": (sum(Y) - sum(P)) / math.sqrt(sum(V)),
        "spiegelhalter_z": sp_num / math.sqrt(sp_var),
        "bins": (W, Y, P),
    }


def direct_eces(p: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """ECE of each row of a (sims, n) label matrix, by explicit per-bin masks."""
    idx = np.array([ref_bin(v, n_bins) for v in p])
    out = np.zeros(labels.shape[0])
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out += np.abs(labels[:, m].sum(axis=1) - p[m].sum())
    return out / p.size
