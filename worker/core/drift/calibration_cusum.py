"""CUSUM drift detector on the calibration of served probabilities (DESIGN §7)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

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
from worker.core.mathfn import sigmoid_array

_log = math.log

# Grid over which the worst-case per-event null KL of an alternative is taken (the threshold
# derivation of ``_cusum``): every admissible clipped probability, finely enough that the
# maximum is accurate to a fraction of a percent.
_KL_GRID = np.linspace(-LOGIT_MAX, LOGIT_MAX, 20001)


@functools.lru_cache(maxsize=256)
def _alternative_kl(kind: str, value: float) -> float:
    # Cached: detectors are built per segment, and the grid costs a millisecond.
    z = _KL_GRID
    q = sigmoid_array(z / value if kind == "t" else z + value)
    return float(bernoulli_kl(sigmoid_array(z), q).max())


class CalibrationCusum(CusumReadout):
    """Two-sided (or more) CUSUM on the Bernoulli likelihood of the served calibration.

    The null is "the served probability ``p`` is calibrated": ``y ~ Bernoulli(p)``
    independently per event. Each alternative rescales the served logit ``z``:
    a *temperature* ``tau`` says the true probability is ``sigmoid(z / tau)`` (``tau > 1``:
    the truth is less extreme, the served scores are **overconfident**; ``tau < 1``:
    **underconfident**); an optional *shift* ``delta`` adds two alternatives
    ``sigmoid(z +- delta)`` (true rate higher, ``rate_up``, or lower, ``rate_down``). Per event
    and alternative ``S <- max(0, S + log(p'(y) / p(y)))``; an alarm is raised when some
    ``S`` exceeds the threshold ``h``, and then every sum restarts from 0.

    ``h`` is set for an average run length ``arl0`` between false alarms on a calibrated
    stationary stream (default 10^6 events): ``h = log(arl0 * sum_j I_j) + margin`` where
    ``I_j`` is the largest per-event KL divergence of the null from alternative ``j``
    (Siegmund's approximation ``ARL0 ~ e^h / I``, capped by Lorden's rigorous bound
    ``ARL0 >= e^h / m``; see ``worker/core/drift/_cusum.py``). ``conservative=True`` uses
    Lorden's ``h = log(arl0 * m)`` (a guaranteed but ~50 times longer ARL0, and ~25 % slower
    detection). An explicit ``threshold`` overrides both. Assumptions: labels are independent
    given the scores, and ``p`` is the probability actually served by the current calibrator
    (call ``reset()`` when the calibrator changes).

    The latched ``alarm`` and ``direction`` stay set until ``reset()``; ``statistic`` is the
    largest current sum. ``update`` is plain float arithmetic (one ``pow`` and one ``log`` per
    temperature alternative); ``update_many`` is vectorised and gives the same alarms.
    ``e_value``, ``ville_p_value`` and ``cusum_p_value`` turn the evidence since the last
    ``reset()`` into inputs for ``SegmentFdr``.

    >>> det = CalibrationCusum()
    >>> round(det.threshold, 2), det.directions
    (11.69, ('overconfident', 'underconfident'))
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> true_p = rng.beta(2, 8, 20_000)
    >>> z = np.log(true_p / (1 - true_p))
    >>> served = 1 / (1 + np.exp(-1.6 * z))          # overconfident: logit 1.6x too large
    >>> y = rng.random(20_000) < true_p
    >>> first = det.update_many(served, y)
    >>> 0 < first < 1_000, det.alarm, det.direction
    (True, True, 'overconfident')
    >>> det.reset()
    >>> det.update(0.2, 0), det.alarm, round(det.statistic, 3)
    (False, False, 0.105)
    >>> CalibrationCusum.from_dict(det.to_dict()).to_dict() == det.to_dict()
    True
    """

    __slots__ = (
        "_alts",
        "_arl0",
        "_bank",
        "_conservative",
        "_fast",
        "_margin",
        "_shifts",
        "_temperatures",
        "_threshold_override",
    )

    def __init__(
        self,
        temperatures: Sequence[float] = (1.5, 1.0 / 1.5),
        shifts: Sequence[float] = (),
        arl0: float = DEFAULT_ARL0,
        margin: float = DEFAULT_MARGIN,
        threshold: float | None = None,
        conservative: bool = False,
    ) -> None:
        temps = tuple(check_real("temperature", t, 0.0, math.inf) for t in temperatures)
        if any(t == 1.0 for t in temps):
            raise ConfigError("a temperature alternative of 1 equals the null; use tau != 1")
        shs = tuple(check_real("shift", d, 0.0, math.inf) for d in shifts)
        if not temps and not shs:
            raise ConfigError("CalibrationCusum needs at least one temperature or shift")
        if len(set(temps)) != len(temps) or len(set(shs)) != len(shs):
            raise ConfigError("temperatures and shifts must not repeat")
        self._arl0 = check_real("arl0", arl0, 1.0, math.inf)
        self._margin = check_real("margin", margin, -math.inf, math.inf)
        self._conservative = bool(conservative)
        self._threshold_override = (
            None if threshold is None else check_real("threshold", threshold, 0.0, math.inf)
        )
        self._temperatures = temps
        self._shifts = shs
        # (is_temperature, parameter, extra increment when y == 0 ...) — see update().
        alts: list[tuple[bool, float, float]] = []
        directions: list[str] = []
        kls: list[float] = []
        for t in temps:
            alts.append((True, 1.0 / t, 1.0 / t - 1.0))
            directions.append("overconfident" if t > 1.0 else "underconfident")
            kls.append(_alternative_kl("t", t))
        for d in shs:
            for sign, name in ((1.0, "rate_up"), (-1.0, "rate_down")):
                alts.append((False, math.exp(-sign * d), -sign * d))
                directions.append(name if len(shs) == 1 else f"{name}:{d:g}")
                kls.append(_alternative_kl("s", sign * d))
        if len(set(directions)) != len(directions):
            # Two temperatures on one side: name them by value so the direction is unique.
            directions = [
                f"{name}:{t:g}" for name, t in zip(directions[: len(temps)], temps, strict=True)
            ] + directions[len(temps) :]
        self._alts = tuple(alts)
        self._fast: tuple[float, float, float, float] | None = None
        if len(alts) == 2 and alts[0][0] and alts[1][0]:
            self._fast = (alts[0][1], alts[0][2], alts[1][1], alts[1][2])
        if self._threshold_override is not None:
            h = self._threshold_override
        elif self._conservative:
            h = lorden_threshold(self._arl0, len(alts))
        else:
            h = siegmund_threshold(self._arl0, kls, self._margin)
        self._bank = CusumBank(directions, h)

    # ---- read-only results -------------------------------------------------------------
    @property
    def last_alarm_statistic(self) -> float:
        """The sum that crossed the threshold at the latest alarm (0 before any)."""
        return self._bank.last_alarm_statistic

    # ---- updates -----------------------------------------------------------------------
    def update(self, p: float, y: int) -> bool:
        """Account for one labelled event; True when it raised an alarm.

        ``p`` is the served calibrated probability in [0, 1] (clipped to [1e-6, 1 - 1e-6]
        like every score in recal), ``y`` the label (0/1 or a bool).
        """
        if not 0.0 <= p <= 1.0:  # NaN fails too
            raise bad_p(p)
        if p < P_MIN:
            p = P_MIN
        elif p > P_MAX:
            p = P_MAX
        if y == 1:
            positive = True
        elif y == 0:
            positive = False
        else:
            raise bad_y(y)
        # With u = exp(-z) = (1 - p) / p the log-likelihood ratios need no sigmoid:
        # temperature (a = 1/tau): l1 = -log(p (1 + u^a)), l0 = l1 + (a - 1) log u;
        # shift (c = exp(-delta)): l1 = -log(p (1 + c u)), l0 = l1 - delta.
        u = (1.0 - p) / p
        bank = self._bank
        fast = self._fast
        if fast is not None:
            # The default bank (two temperatures), unrolled: this is the per-event hot path.
            a1, e1, a2, e2 = fast
            l1 = -_log(p * (1.0 + u**a1))
            l2 = -_log(p * (1.0 + u**a2))
            if not positive:
                log_u = _log(u)
                l1 += e1 * log_u
                l2 += e2 * log_u
            s = bank.s
            cum = bank.cum
            cum_min = bank.cum_min
            v1 = s[0] + l1
            if v1 < 0.0:
                v1 = 0.0
            v2 = s[1] + l2
            if v2 < 0.0:
                v2 = 0.0
            s[0] = v1
            s[1] = v2
            c1 = cum[0] + l1
            c2 = cum[1] + l2
            cum[0] = c1
            cum[1] = c2
            if c1 > bank.max_log_lr:
                bank.max_log_lr = c1
            if c2 > bank.max_log_lr:
                bank.max_log_lr = c2
            if c1 < cum_min[0]:
                cum_min[0] = c1
            elif c1 - cum_min[0] > bank.peak:
                bank.peak = c1 - cum_min[0]
            if c2 < cum_min[1]:
                cum_min[1] = c2
            elif c2 - cum_min[1] > bank.peak:
                bank.peak = c2 - cum_min[1]
            bank.n += 1
            if v1 > bank.threshold or v2 > bank.threshold:
                if v1 >= v2:
                    bank.fire(0, v1)
                else:
                    bank.fire(1, v2)
                return True
            return False
        log_u = 0.0 if positive else _log(u)
        incs = []
        for is_temp, a, extra in self._alts:
            if is_temp:
                inc = -_log(p * (1.0 + u**a))
                if not positive:
                    inc += extra * log_u
            else:
                inc = -_log(p * (1.0 + a * u))
                if not positive:
                    inc += extra
            incs.append(inc)
        return bank.step(incs)

    def increments(self, p: ArrayLike, y: ArrayLike) -> np.ndarray:
        """The ``(m, n)`` matrix of per-event log-likelihood ratios (validated inputs)."""
        pa = as_probabilities(p)
        ya = as_labels(y, pa.shape[0])
        u = (1.0 - pa) / pa
        neg = ~ya
        log_u = np.log(u) if any(t for t, _, _ in self._alts) else None
        out = np.empty((len(self._alts), pa.shape[0]))
        for j, (is_temp, a, extra) in enumerate(self._alts):
            row = out[j]
            if is_temp:
                assert log_u is not None
                np.log(pa * (1.0 + u**a), out=row)
                np.negative(row, out=row)
                row += neg * (extra * log_u)
            else:
                np.log(pa * (1.0 + a * u), out=row)
                np.negative(row, out=row)
                row += neg * extra
        return out

    def update_many(self, p: ArrayLike, y: ArrayLike) -> int:
        """Feed events in order; index of the first alarm among them, or -1.

        Every event is processed (the sums restart after each alarm, as with ``update``);
        ``alarms`` counts them all.
        """
        inc = self.increments(p, y)
        if inc.shape[1] == 0:
            return -1
        return self._bank.run(inc)

    def reset(self) -> None:
        """Clear the sums, the latched alarm and the evidence since the last reset.

        Call it when the served calibrator changes: the null is about the new one.
        """
        self._bank.reset()

    # ---- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {
            "temperatures": list(self._temperatures),
            "shifts": list(self._shifts),
            "arl0": self._arl0,
            "margin": self._margin,
            "threshold": self._threshold_override,
            "conservative": self._conservative,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state with its configuration (``"v": 1``)."""
        return {"v": 1, "config": self.config(), **self._bank.state()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationCusum:
        """Inverse of ``to_dict``."""
        check_version("CalibrationCusum", data)
        out = cls(**data["config"])
        out._bank.load(data)
        return out
