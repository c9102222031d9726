"""Synthetic score/label streams for the drift tests (numpy only, vectorised)."""

from __future__ import annotations

import numpy as np

# True click probabilities ~ Beta(a, b): CTR 0.2 and CTR 0.04.
CTRS = {"ctr20": (2.0, 8.0), "ctr04": (1.0, 24.0)}


def calibrated(seed: int, n: int, ctr: str) -> tuple[np.ndarray, np.ndarray]:
    """Served p equal to the true probability; labels Bernoulli(p)."""
    a, b = CTRS[ctr]
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, n)
    return p, rng.random(n) < p


def overconfident(
    seed: int, n: int, ctr: str, change: int, temperature: float = 1.6
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated until ``change``; then the served logit is ``temperature`` x the true one."""
    a, b = CTRS[ctr]
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, n)
    y = rng.random(n) < p
    z = np.log(p / (1.0 - p))
    z[change:] *= temperature
    return 1.0 / (1.0 + np.exp(-z)), y


def logits(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1.0 - q))


def scalar_hits(det, p: np.ndarray, y: np.ndarray, offset: int = 0) -> list[int]:
    """Feed events one by one through ``det.update(p, y)``; indices (+offset) of alarms."""
    update = det.update
    return [
        offset + i
        for i, (pi, yi) in enumerate(zip(p.tolist(), y.tolist(), strict=True))
        if update(pi, yi)
    ]
