"""CUSUM drift detector on the click rate (``base_rate_shift``, DESIGN §7)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.checks import check_int
from worker.core.drift._cusum import (
    DEFAULT_ARL0,
    DEFAULT_MARGIN,
    LOGIT_MAX,
    P_MAX,
    P_MIN,
    CusumBank,
    CusumReadout,
    as_labels,
    as_probabilities,
    bad_p,
    bad_y,
    bernoulli_kl,
    check_real,
    check_version,
    lorden_threshold,
    siegmund_threshold,
)
from worker.core.errors import ConfigError
from worker.core.mathfn import sigmoid, sigmoid_array

_log = math.log
_KL_GRID = np.linspace(-LOGIT_MAX, LOGIT_MAX, 20001)
_MODES = ("expected", "warmup")


@functools.lru_cache(maxsize=256)
def _shift_kl(shift: float) -> float:
    # Largest per-event KL of Bernoulli(p) from Bernoulli(sigmoid(logit p + shift)) over p.
    z = _KL_GRID
    return float(bernoulli_kl(sigmoid_array(z), sigmoid_array(z + shift)).max())


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class BaseRateShift(CusumReadout):
    """Two one-sided CUSUMs on the Bernoulli click rate: rate up and rate down.

    Two references for "no shift":

    - ``reference="expected"`` (default): the expected rate of the served probabilities.
      Null ``y ~ Bernoulli(p)``; alternatives ``sigmoid(logit(p) +- shift)`` — the observed
      clicks run above (``up``) or below (``down``) ``sum p`` by a factor ``exp(shift)`` in
      odds. This is calibration-in-the-large as a sequential test.
    - ``reference="warmup"``: the click rate itself, whatever the scores. The first
      ``warmup`` events fix the reference rate ``r``; to keep its estimation error from
      eating the false-alarm budget, the ``up`` CUSUM tests against the upper confidence bound
      ``r_hi = r + z se`` and the ``down`` CUSUM against ``r_lo = r - z se`` (``z =
      reference_z``). A Bernoulli likelihood ratio of ``sigmoid(logit(r_hi) + shift)``
      versus ``r_hi`` has ``E[LR] <= 1`` for every true rate ``<= r_hi``, so the false-alarm
      derivation holds for the whole composite null.

    Threshold as in ``CalibrationCusum``: ``h = log(arl0 * sum_j I_j) + margin`` with ``I_j``
    the worst-case per-event KL of the null from alternative ``j`` (about ``shift^2 / 8``),
    capped by Lorden's ``log(arl0 * 2)``; ``conservative=True`` uses Lorden's. Alarms restart
    the sums and latch ``alarm`` / ``direction`` until ``reset()``. Labels are assumed
    independent given the scores (``expected``) or identically distributed (``warmup``).

    >>> det = BaseRateShift(shift=0.25)
    >>> round(det.threshold, 2), det.directions
    (10.16, ('up', 'down'))
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> p = rng.beta(2, 8, 200_000)
    >>> y = rng.random(200_000) < np.minimum(1.0, 1.3 * p)   # 30 % more clicks than served
    >>> first = det.update_many(p, y)
    >>> 0 < first < 20_000, det.direction
    (True, 'up')
    >>> w = BaseRateShift(reference="warmup", warmup=1_000)
    >>> _ = w.update_many(np.full(1_000, 0.5), np.arange(1_000) % 5 == 0)
    >>> w.warmed_up, round(w.reference_rate, 3)
    (True, 0.2)
    >>> BaseRateShift.from_dict(w.to_dict()).to_dict() == w.to_dict()
    True
    """

    __slots__ = (
        "_arl0",
        "_bank",
        "_c_down",
        "_c_up",
        "_conservative",
        "_inc",
        "_margin",
        "_mode",
        "_n_warm",
        "_pos_warm",
        "_ref_z",
        "_shift",
        "_threshold_override",
        "_warmup",
    )

    def __init__(
        self,
        shift: float = 0.25,
        reference: str = "expected",
        warmup: int = 20_000,
        reference_z: float = 3.0,
        arl0: float = DEFAULT_ARL0,
        margin: float = DEFAULT_MARGIN,
        threshold: float | None = None,
        conservative: bool = False,
    ) -> None:
        self._shift = check_real("shift", shift, 0.0, 5.0)
        self._c_up = math.exp(-self._shift)
        self._c_down = math.exp(self._shift)
        if reference not in _MODES:
            raise ConfigError(f"reference must be one of {_MODES}; got {reference!r}")
        self._mode = reference
        self._warmup = check_int("warmup", warmup, 1)
        self._ref_z = check_real("reference_z", reference_z, 0.0, 10.0, low_open=False)
        self._arl0 = check_real("arl0", arl0, 1.0, math.inf)
        self._margin = check_real("margin", margin, -math.inf, math.inf)
        self._conservative = bool(conservative)
        self._threshold_override = (
            None if threshold is None else check_real("threshold", threshold, 0.0, math.inf)
        )
        if self._threshold_override is not None:
            h = self._threshold_override
        elif self._conservative:
            h = lorden_threshold(self._arl0, 2)
        else:
            # The worst case over every reference rate (the warm-up bounds are not known yet).
            kls = [_shift_kl(self._shift), _shift_kl(-self._shift)]
            h = siegmund_threshold(self._arl0, kls, self._margin)
        self._bank = CusumBank(("up", "down"), h)
        self._n_warm = 0
        self._pos_warm = 0
        # warmup mode: per-label increments ((up, down) for y=0, (up, down) for y=1).
        self._inc: tuple[tuple[float, float], tuple[float, float]] | None = None

    # ---- read-only results -------------------------------------------------------------
    @property
    def warmed_up(self) -> bool:
        """Whether the detector is monitoring (always True with ``reference="expected"``)."""
        return self._mode == "expected" or self._inc is not None

    @property
    def reference_rate(self) -> float | None:
        """The warm-up click rate (``warmup`` mode, once warmed up), else None."""
        if self._mode != "warmup" or self._inc is None:
            return None
        return self._pos_warm / self._n_warm

    # ---- updates -----------------------------------------------------------------------
    def _finish_warmup(self) -> None:
        n = self._n_warm
        # Keep the reference strictly inside (0, 1): a warm-up with no click must still give
        # a usable (and conservative) bound.
        r = min(max(self._pos_warm / n, 0.5 / n), 1.0 - 0.5 / n)
        se = math.sqrt(r * (1.0 - r) / n)
        hi = min(P_MAX, r + self._ref_z * se)
        lo = max(P_MIN, r - self._ref_z * se)
        up = sigmoid(_logit(hi) + self._shift)
        down = sigmoid(_logit(lo) - self._shift)
        self._inc = (
            (_log((1.0 - up) / (1.0 - hi)), _log((1.0 - down) / (1.0 - lo))),
            (_log(up / hi), _log(down / lo)),
        )

    def update(self, p: float, y: int) -> bool:
        """Account for one labelled event (``p``: served probability); True on an alarm.

        In ``warmup`` mode ``p`` is validated but not used.
        """
        if not 0.0 <= p <= 1.0:
            raise bad_p(p)
        if y == 1:
            positive = True
        elif y == 0:
            positive = False
        else:
            raise bad_y(y)
        if self._mode == "warmup":
            inc = self._inc
            if inc is None:
                self._n_warm += 1
                self._pos_warm += positive
                if self._n_warm >= self._warmup:
                    self._finish_warmup()
                return False
            return self._bank.step2(*inc[positive])
        if p < P_MIN:
            p = P_MIN
        elif p > P_MAX:
            p = P_MAX
        # Shift alternative sigmoid(z + d): l1 = -log(p (1 + e^-d u)), l0 = l1 - d, u = e^-z.
        u = (1.0 - p) / p
        d = self._shift
        up = -_log(p * (1.0 + self._c_up * u))
        down = -_log(p * (1.0 + self._c_down * u))
        if not positive:
            up -= d
            down += d
        return self._bank.step2(up, down)

    def update_many(self, p: ArrayLike, y: ArrayLike) -> int:
        """Feed events in order; index of the first alarm among them, or -1."""
        pa = as_probabilities(p)
        ya = as_labels(y, pa.shape[0])
        offset = 0
        if self._mode == "warmup":
            if self._inc is None:
                take = min(self._warmup - self._n_warm, ya.shape[0])
                self._n_warm += take
                self._pos_warm += int(np.count_nonzero(ya[:take]))
                if self._n_warm >= self._warmup:
                    self._finish_warmup()
                offset = take
                ya = ya[take:]
            if ya.shape[0] == 0:
                return -1
            assert self._inc is not None
            (u0, d0), (u1, d1) = self._inc
            inc = np.vstack([np.where(ya, u1, u0), np.where(ya, d1, d0)])
        else:
            if pa.shape[0] == 0:
                return -1
            d = self._shift
            u = (1.0 - pa) / pa
            neg = ~ya
            up = -np.log(pa * (1.0 + self._c_up * u)) - d * neg
            down = -np.log(pa * (1.0 + self._c_down * u)) + d * neg
            inc = np.vstack([up, down])
        first = self._bank.run(inc)
        return first if first < 0 else first + offset

    def reset(self) -> None:
        """Clear the sums, the latched alarm and the evidence (the warm-up reference stays)."""
        self._bank.reset()

    def rebaseline(self) -> None:
        """``reset()`` and, in ``warmup`` mode, learn a new reference rate from scratch."""
        self._bank.reset()
        self._n_warm = 0
        self._pos_warm = 0
        self._inc = None

    # ---- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {
            "shift": self._shift,
            "reference": self._mode,
            "warmup": self._warmup,
            "reference_z": self._ref_z,
            "arl0": self._arl0,
            "margin": self._margin,
            "threshold": self._threshold_override,
            "conservative": self._conservative,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with its configuration (``"v": 1``)."""
        return {
            "v": 1,
            "config": self.config(),
            "warm_n": self._n_warm,
            "warm_positives": self._pos_warm,
            "warmed_up": self._inc is not None,
            **self._bank.state(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseRateShift:
        """Inverse of ``to_dict``."""
        check_version("BaseRateShift", data)
        out = cls(**data["config"])
        out._n_warm = int(data["warm_n"])
        out._pos_warm = int(data["warm_positives"])
        if data["warmed_up"]:
            out._finish_warmup()
        out._bank.load(data)
        return out
