"""Split-conformal binary prediction sets from calibrated click probabilities (DESIGN §5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from worker.core.conformal import _checks
from worker.core.errors import InvalidInputError, StateError

# With weights, (W + 1)(1 − α) is compared with float cumulative sums: relative slack far
# below one unit of weight absorbs rounding that would push the quantile one rank up.
_WEIGHT_SLACK = 1e-12


def fit_qhat(
    p: ArrayLike, y: ArrayLike, alpha: float = 0.1, weights: ArrayLike | None = None
) -> float:
    """The split-conformal threshold for calibration scores ``p`` (of a click) and labels ``y``.

    Nonconformity is ``s = 1 − p̂(y)``: ``1 − p`` for a click, ``p`` for a non-click.
    ``qhat`` is the ``⌈(n + 1)(1 − α)⌉``-th smallest score (the ⌈(n+1)(1−α)⌉/n empirical
    quantile); when that rank exceeds ``n`` (too few events) it is 1, the trivial threshold
    whose sets always hold both labels. Then, for a new exchangeable event,
    ``P(y ∈ set) ≥ 1 − α`` (and ``≤ 1 − α + 1/(n + 1)`` when scores have no ties).

    ``weights`` (≥ 0) generalise the rank to cumulative weight — the smallest score whose
    cumulative weight reaches ``(1 − α)(W + 1)`` — which is exact for integer counts (e.g.
    events aggregated per distinct score: per sketch bin, negatives at ``p`` and positives at
    ``1 − p``) and a heuristic for decayed weights.

    >>> fit_qhat([0.1, 0.2, 0.3, 0.9], [0, 0, 1, 1], alpha=0.4)  # 3rd of [.1, .1, .2, .7]
    0.2
    >>> fit_qhat([0.1, 0.2], [0, 0], alpha=0.1)  # rank 3 > n = 2
    1.0
    """
    a = _checks.alpha(alpha)
    pa = _checks.probabilities(p).ravel()
    ya = _checks.labels(y, pa.shape)
    s = np.where(ya == 1, 1.0 - pa, pa)
    if weights is None:
        n = s.size
        # Exact rational arithmetic on alpha's decimal form: (9 + 1)(1 − 0.1) is 9, whereas
        # in floats it is 9.000000000000002 and the rank would be 10.
        k = math.ceil((n + 1) * (1 - Fraction(repr(a))))
        if k > n:
            return 1.0
        return float(np.partition(s, k - 1)[k - 1])
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != pa.shape or not (np.isfinite(w).all() and (w >= 0).all()):
        raise InvalidInputError(
            "schema", f"weights must be {pa.size} finite numbers >= 0; got shape {w.shape}"
        )
    order = np.argsort(s, kind="stable")
    cum = np.cumsum(w[order])
    total = float(cum[-1]) if cum.size else 0.0
    need = (total + 1.0) * (1.0 - a) * (1.0 - _WEIGHT_SLACK)
    i = int(np.searchsorted(cum, need, side="left"))
    if i >= cum.size:
        return 1.0
    return float(s[order][i])


def prediction_sets(
    p: ArrayLike, qhat: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """``(has_0, has_1)``: whether each set ``{y : 1 − p̂(y) ≤ qhat}`` holds 0 and 1."""
    pa = _checks.probabilities(p)
    q = _checks.qhat(qhat)
    # The same expressions as in ``fit_qhat`` (p and 1 − p), so a calibration event's own
    # score compares exactly as it was ranked.
    return pa <= q, (1.0 - pa) <= q


def prediction_set(p: float, qhat: float) -> tuple[int, ...]:
    """The set for one score: ``()``, ``(0,)``, ``(1,)`` or ``(0, 1)``.

    >>> prediction_set(0.03, 0.05), prediction_set(0.5, 0.6), prediction_set(0.5, 0.3)
    ((0,), (0, 1), ())
    """
    has0, has1 = prediction_sets(p, qhat)
    return tuple(y for y, inside in ((0, bool(has0)), (1, bool(has1))) if inside)


def is_uncertain(p: ArrayLike, qhat: float) -> Any:
    """Whether the set is {0, 1} (the score cannot rule out either label); bool or array.

    >>> is_uncertain(0.5, 0.6), is_uncertain([0.1, 0.45], 0.6).tolist()
    (True, [False, True])
    """
    has0, has1 = prediction_sets(p, qhat)
    both = has0 & has1
    return bool(both) if both.ndim == 0 else both


class ConformalThreshold:
    """A published conformal threshold: ``alpha``, ``qhat`` and the calibration size ``n``.

    ``fit`` computes it from calibrated scores of a calibration split (see ``fit_qhat`` for
    the guarantee); ``block()`` is the calibrator version's ``conformal`` object
    ``{"alpha", "qhat"}``. Serving tests a prediction with ``prediction_set`` /
    ``is_uncertain``.

    A property of binary sets at low click rates: a ``qhat`` below 0.5 can never give the set
    {0, 1} (it would need both ``p ≤ qhat`` and ``1 − p ≤ qhat``). When the click rate is
    below ``alpha``, marginal coverage is reached by predicting {0} for most events, ``qhat``
    is small and *no* set is uncertain; high scores get the empty set. Coverage is marginal,
    not per label (clicks are mostly not covered then). The tracker reports coverage per label
    so this is visible.

    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0.2, 0.8, 2_000)
    >>> y = (rng.uniform(size=p.size) < p).astype(int)
    >>> ct = ConformalThreshold.fit(p, y, alpha=0.1)
    >>> ct.block()["alpha"], round(ct.qhat, 3), ct.n
    (0.1, 0.689, 2000)
    >>> ct.prediction_set(0.5), ct.prediction_set(0.9), ct.is_uncertain(0.4)
    ((0, 1), (1,), True)
    >>> ConformalThreshold.from_dict(ct.to_dict()) == ct
    True
    """

    __slots__ = ("_alpha", "_n", "_qhat")

    def __init__(self, alpha: float = 0.1, qhat: float = 1.0, n: int = 0) -> None:
        self._alpha = _checks.alpha(alpha)
        self._qhat = _checks.qhat(qhat)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInputError("schema", f"n must be an integer >= 0; got {n!r}")
        self._n = n

    @classmethod
    def fit(
        cls,
        p: ArrayLike,
        y: ArrayLike,
        alpha: float = 0.1,
        weights: ArrayLike | None = None,
    ) -> ConformalThreshold:
        """Fit on calibrated scores ``p`` and labels ``y`` of a calibration split."""
        q = fit_qhat(p, y, alpha, weights)
        n = int(np.asarray(p).size) if weights is None else round(float(np.sum(weights)))
        return cls(alpha, q, n)

    @property
    def alpha(self) -> float:
        """Target miscoverage."""
        return self._alpha

    @property
    def qhat(self) -> float:
        """The nonconformity threshold in [0, 1]."""
        return self._qhat

    @property
    def n(self) -> int:
        """Calibration events it was fitted on (rounded total weight when weighted)."""
        return self._n

    def prediction_set(self, p: float) -> tuple[int, ...]:
        """The set for one calibrated score."""
        return prediction_set(p, self._qhat)

    def prediction_sets(self, p: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """``(has_0, has_1)`` for many scores."""
        return prediction_sets(p, self._qhat)

    def is_uncertain(self, p: ArrayLike) -> Any:
        """Whether the set of ``p`` is {0, 1}."""
        return is_uncertain(p, self._qhat)

    def block(self) -> dict[str, float]:
        """The calibrator version's ``conformal`` object (DESIGN §3)."""
        return {"alpha": self._alpha, "qhat": self._qhat}

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> ConformalThreshold:
        """Read a calibrator version's ``conformal`` object (``n`` unknown: 0)."""
        try:
            return cls(block["alpha"], block["qhat"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError("schema", f"malformed conformal block: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """State with version field ``"v": 1``."""
        return {"v": 1, "alpha": self._alpha, "qhat": self._qhat, "n": self._n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConformalThreshold:
        """Inverse of ``to_dict``; a malformed dict raises ``StateError``."""
        try:
            if data.get("v") != 1:
                raise ValueError(f"unsupported conformal state version {data.get('v')!r}")
            return cls(data["alpha"], data["qhat"], data["n"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"malformed conformal state: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConformalThreshold):
            return NotImplemented
        return (self._alpha, self._qhat, self._n) == (other._alpha, other._qhat, other._n)

    def __hash__(self) -> int:
        return hash((self._alpha, self._qhat, self._n))

    def __repr__(self) -> str:
        return f"ConformalThreshold(alpha={self._alpha}, qhat={self._qhat:.6g}, n={self._n})"
