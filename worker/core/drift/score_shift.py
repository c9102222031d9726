"""Label-free drift detector on the distribution of model scores (``score_shift``, DESIGN §7)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from worker.core.checks import check_int
from worker.core.drift._cusum import (
    DEFAULT_ARL0,
    DEFAULT_MARGIN,
    CusumBank,
    CusumReadout,
    check_real,
    check_version,
    lorden_threshold,
    siegmund_threshold,
)
from worker.core.errors import ConfigError, InvalidInputError

# The reference histogram: fixed bins on the logit axis. +-14 covers every clipped score
# (|logit(1e-6)| = 13.8); 0.02 is ~2.5 % of a typical logit standard deviation, fine enough
# that binning costs no measurable power, coarse enough for a compact state (1,400 counts).
_LO = -14.0
_HI = 14.0
_BINS_PER_UNIT = 50.0
_N_BINS = int((_HI - _LO) * _BINS_PER_UNIT)
_floor = math.floor


def _bad_logit(z: object) -> InvalidInputError:
    return InvalidInputError("schema", f"logit must be a finite number; got {z!r}")


class ScoreShift(CusumReadout):
    """Sequential test for a shift of the score distribution; needs no labels.

    A warm-up of ``warmup`` events fixes the reference distribution of the logits (a
    fine histogram). Afterwards each logit ``z`` is mapped to its reference probability
    integral transform ``u = F_ref(z)`` (mid-bin), which is Uniform(0, 1) while the
    distribution is unchanged — whatever its shape, so the false-alarm derivation needs no
    normality. Four CUSUMs run on exponentially tilted alternatives of the uniform
    (density ``exp(lam x) / M(lam)`` on ``[0, 1]``, ``M(lam) = sinh(lam/2) / (lam/2)``, an
    exact likelihood ratio under the null):

    - ``mean_up`` / ``mean_down``: ``x = u - 1/2`` (scores moved up / down);
    - ``spread_up`` / ``spread_down``: ``x = |2u - 1| - 1/2``, also uniform under the null
      (scores more extreme / more concentrated: a sharper or flatter model).

    Increment ``+-lam x - log M(lam)``; every CUSUM has null KL exactly ``log M(lam)`` per event,
    so ``h = log(arl0 * 4 log M(lam)) + margin`` (Siegmund; capped by Lorden's ``log(4 arl0)``;
    ``conservative=True`` uses Lorden's). ``tilt = lam = 1`` is tuned for PIT mean shifts of
    about 0.08 (a logit shift of ~0.2 standard deviations).

    Assumptions: events are independent and identically distributed while nothing changes
    (strong diurnal cycles or bursts of one user's traffic violate it and raise the false-alarm
    rate; feed a per-hour detector or a longer ``arl0`` there). The warm-up must be
    representative and long enough: the reference's own sampling error (~``1/sqrt(12 warmup)``
    on the mean of ``u``) would otherwise bias the increments, so each increment carries a
    slack of ``tilt * reference_z`` such standard errors (default 2: ~5 % of the null drift at
    the default warm-up; measured false alarms without it were twice as frequent, clustered
    on unlucky warm-ups). Binning makes ``u`` a conditional
    mean of a uniform, which only lowers the ``mean``/``spread_up`` false-alarm rates.
    Feed the model's raw logit (``logit(clip(score, 1e-6, 1 - 1e-6))``), not the calibrated one:
    a recalibration is not a score shift. ``rebaseline()`` learns a new reference (after a
    model release).

    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> det = ScoreShift(warmup=20_000)
    >>> round(det.threshold, 2)
    12.52
    >>> p = rng.beta(2, 8, 60_000)
    >>> z = np.log(p / (1 - p))
    >>> z[40_000:] += 0.3                      # scores shift up at event 40,000
    >>> first = det.update_many(z)
    >>> det.warmed_up, 40_000 < first < 42_000, det.direction
    (True, True, 'mean_up')
    >>> ScoreShift.from_dict(det.to_dict()).to_dict() == det.to_dict()
    True
    """

    __slots__ = (
        "_a",
        "_arl0",
        "_bank",
        "_conservative",
        "_counts",
        "_lam",
        "_margin",
        "_mid",
        "_mid_arr",
        "_n_warm",
        "_ref_z",
        "_spread",
        "_threshold_override",
        "_warmup",
    )

    def __init__(
        self,
        warmup: int = 50_000,
        tilt: float = 1.0,
        spread: bool = True,
        reference_z: float = 2.0,
        arl0: float = DEFAULT_ARL0,
        margin: float = DEFAULT_MARGIN,
        threshold: float | None = None,
        conservative: bool = False,
    ) -> None:
        self._warmup = check_int("warmup", warmup, 100)
        self._lam = check_real("tilt", tilt, 0.0, 20.0)
        self._spread = bool(spread)
        self._ref_z = check_real("reference_z", reference_z, 0.0, 10.0, low_open=False)
        self._arl0 = check_real("arl0", arl0, 1.0, math.inf)
        self._margin = check_real("margin", margin, -math.inf, math.inf)
        self._conservative = bool(conservative)
        self._threshold_override = (
            None if threshold is None else check_real("threshold", threshold, 0.0, math.inf)
        )
        lam = self._lam
        self._a = math.log(math.sinh(lam / 2.0) / (lam / 2.0))
        # Threshold from the exact null KL log M(lam) (the slack below only lengthens ARL0).
        kl = self._a
        # Slack for the reference's sampling error: the mean of u under the true distribution
        # is off 1/2 by about N(0, 1 / (12 warmup)); subtracting lam * reference_z of those
        # standard errors keeps E[LR] <= 1 unless the warm-up was unluckier than that.
        self._a += lam * self._ref_z / math.sqrt(12.0 * self._warmup)
        directions = ["mean_up", "mean_down"]
        if self._spread:
            directions += ["spread_up", "spread_down"]
        if self._threshold_override is not None:
            h = self._threshold_override
        elif self._conservative:
            h = lorden_threshold(self._arl0, len(directions))
        else:
            h = siegmund_threshold(self._arl0, [kl] * len(directions), self._margin)
        self._bank = CusumBank(directions, h)
        self._counts = [0] * _N_BINS
        self._n_warm = 0
        self._mid: list[float] | None = None
        self._mid_arr: np.ndarray | None = None

    # ---- read-only results -------------------------------------------------------------
    @property
    def warmed_up(self) -> bool:
        """Whether the reference is fixed and the CUSUMs run."""
        return self._mid is not None

    # ---- updates -----------------------------------------------------------------------
    def _finish_warmup(self) -> None:
        counts = np.asarray(self._counts, dtype=np.float64)
        before = np.cumsum(counts) - counts
        mid = (before + counts / 2.0) / counts.sum()
        self._mid_arr = mid
        self._mid = mid.tolist()

    def update(self, z: float) -> bool:
        """Account for one event's model logit; True when it raised an alarm."""
        if not -math.inf < z < math.inf:  # NaN fails too
            raise _bad_logit(z)
        # floor() equals int() on the positive value, and is a cheaper call.
        idx = _floor((z - _LO) * _BINS_PER_UNIT) if z > _LO else 0
        if idx >= _N_BINS:
            idx = _N_BINS - 1
        mid = self._mid
        if mid is None:
            self._counts[idx] += 1
            self._n_warm += 1
            if self._n_warm >= self._warmup:
                self._finish_warmup()
            return False
        lam = self._lam
        a = self._a
        x = mid[idx] - 0.5
        if not self._spread:
            return self._bank.step2(lam * x - a, -lam * x - a)
        w = abs(2.0 * x) - 0.5
        return self._bank.step4(lam * x - a, -lam * x - a, lam * w - a, -lam * w - a)

    def _bins(self, z: np.ndarray) -> np.ndarray:
        # Same float operations as update(), so both paths bin identically.
        idx = np.floor((np.maximum(z, _LO) - _LO) * _BINS_PER_UNIT).astype(np.int64)
        return np.minimum(idx, _N_BINS - 1)

    def update_many(self, z: ArrayLike) -> int:
        """Feed logits in order; index of the first alarm among them, or -1."""
        arr = np.asarray(z, dtype=np.float64).reshape(-1)
        bad = ~np.isfinite(arr)
        if bad.any():
            raise _bad_logit(arr[bad][0].item())
        idx = self._bins(arr)
        offset = 0
        if self._mid is None:
            take = min(self._warmup - self._n_warm, idx.shape[0])
            add = np.bincount(idx[:take], minlength=_N_BINS)
            self._counts = [c + int(a) for c, a in zip(self._counts, add, strict=True)]
            self._n_warm += take
            if self._n_warm >= self._warmup:
                self._finish_warmup()
            offset = take
            idx = idx[take:]
        if idx.shape[0] == 0:
            return -1
        assert self._mid_arr is not None
        lam = self._lam
        a = self._a
        x = self._mid_arr[idx] - 0.5
        rows = [lam * x - a, -lam * x - a]
        if self._spread:
            w = np.abs(2.0 * x) - 0.5
            rows += [lam * w - a, -lam * w - a]
        first = self._bank.run(np.vstack(rows))
        return first if first < 0 else first + offset

    def reset(self) -> None:
        """Clear the sums, the latched alarm and the evidence (the reference stays)."""
        self._bank.reset()

    def rebaseline(self) -> None:
        """``reset()`` and learn a new reference from the next ``warmup`` events."""
        self._bank.reset()
        self._counts = [0] * _N_BINS
        self._n_warm = 0
        self._mid = None
        self._mid_arr = None

    # ---- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {
            "warmup": self._warmup,
            "tilt": self._lam,
            "spread": self._spread,
            "reference_z": self._ref_z,
            "arl0": self._arl0,
            "margin": self._margin,
            "threshold": self._threshold_override,
            "conservative": self._conservative,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with its configuration (``"v": 1``); the histogram is sparse."""
        return {
            "v": 1,
            "config": self.config(),
            "warm_n": self._n_warm,
            "reference": [[i, c] for i, c in enumerate(self._counts) if c],
            **self._bank.state(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreShift:
        """Inverse of ``to_dict``."""
        check_version("ScoreShift", data)
        out = cls(**data["config"])
        counts = [0] * _N_BINS
        for i, c in data["reference"]:
            if not 0 <= int(i) < _N_BINS:
                raise ConfigError(f"reference bin {i!r} out of range in ScoreShift state")
            counts[int(i)] = int(c)
        if sum(counts) != int(data["warm_n"]):
            raise ConfigError("ScoreShift state: reference counts do not sum to warm_n")
        out._counts = counts
        out._n_warm = int(data["warm_n"])
        if out._n_warm >= out._warmup:
            out._finish_warmup()
        out._bank.load(data)
        return out
