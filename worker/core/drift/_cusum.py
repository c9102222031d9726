"""Shared machinery of the CUSUM drift detectors (private to ``worker.core.drift``).

Every detector here is a bank of one-sided CUSUMs on per-event log-likelihood ratios
``l = log(q(x) / p0(x))`` of an alternative ``q`` against the null ``p0`` (what a calibrated,
stationary stream looks like). ``S <- max(0, S + l)``; alarm when some ``S > h``.

Threshold (the false-alarm-rate derivation shared by all detectors)
------------------------------------------------------------------
*Lorden's bound* (rigorous): when ``E0[exp(l)] <= 1`` the Shiryaev-Roberts sum minus ``n`` is a
(super)martingale and dominates ``exp(S)``, so a bank of ``m`` CUSUMs has
``ARL0 >= exp(h) / m``. It is very conservative: simulation gives ``ARL0`` 40-200 times larger,
because the null drift ``-I`` (``I`` = per-event Kullback-Leibler divergence of the null from
the alternative) pulls ``S`` back to zero between excursions.
*Siegmund's approximation* (what we use): ``ARL0 ~ exp(h) / I`` per CUSUM (the measured ratio
``ARL0 * I / exp(h)`` is 1.05-1.35 over the score distributions in the tests; it tends to 1 in
the diffusion limit of small increments). For a bank the alarm rates add, so
``h = log(ARL0 * sum_j I_j) + margin`` with ``I_j`` the *largest* per-event null KL over every
admissible event (a stream's own ``I`` is an average, hence smaller, hence a longer ARL0), and
never above Lorden's ``log(ARL0 * m)``. The margin (default 0.5 nat) absorbs the
approximation error; the test suite verifies the resulting false-alarm rate by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.core.errors import ConfigError, InvalidInputError

P_MIN = 1e-6
P_MAX = 1.0 - 1e-6
LOGIT_MAX = math.log(P_MAX / P_MIN)
DEFAULT_ARL0 = 1e6
DEFAULT_MARGIN = 0.5
# Chunked scanning: short chunks right after an alarm (alarms cluster on a drifted stream,
# and each alarm discards the rest of the chunk), growing to bound the temporary arrays.
_CHUNK_MIN = 1024
_CHUNK_MAX = 65536
# exp() overflows past ~709; an e-value that large is "infinitely significant" anyway.
_EXP_CAP = 700.0


def check_real(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = True,
    high_open: bool = True,
) -> float:
    """A finite float in the interval, else ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number; got {value!r}")
    v = float(value)
    ok = math.isfinite(v) or (v == high == math.inf and not high_open)
    ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ConfigError(f"{name} must be a finite number in {lb}{low}, {high}{rb}; got {value!r}")
    return v


def bad_p(p: object) -> InvalidInputError:
    return InvalidInputError("score_range", f"p must be a finite number in [0, 1]; got {p!r}")


def bad_y(y: object) -> InvalidInputError:
    return InvalidInputError("schema", f"y must be 0 or 1; got {y!r}")


def as_probabilities(p: Any) -> np.ndarray:
    """Validated, clipped float64 array of probabilities."""
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    # NaN fails both comparisons, so this also rejects NaN.
    ok = (arr >= 0.0) & (arr <= 1.0)
    if not ok.all():
        raise bad_p(arr[~ok][0].item())
    return np.clip(arr, P_MIN, P_MAX)


def as_labels(y: Any, n: int) -> np.ndarray:
    """Validated boolean array of labels of length ``n``."""
    arr = np.asarray(y).reshape(-1)
    if arr.shape[0] != n:
        raise InvalidInputError(
            "schema", f"p and y must have the same length; got {n} and {arr.shape[0]}"
        )
    if arr.dtype == np.bool_:
        return arr
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        raise bad_y(arr[~ok][0].item())
    return arr == 1


def bernoulli_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(p) || Bernoulli(q)) in nats, elementwise."""
    return p * np.log(p / q) + (1.0 - p) * np.log((1.0 - p) / (1.0 - q))


def siegmund_threshold(arl0: float, null_kls: Sequence[float], margin: float) -> float:
    """``h`` for a bank whose CUSUM ``j`` has worst-case per-event null KL ``null_kls[j]``.

    Capped by Lorden's rigorous ``log(arl0 * m)``: whatever the KLs, never more conservative
    than a guarantee needs.
    """
    m = len(null_kls)
    siegmund = math.log(arl0 * sum(null_kls)) + margin
    return max(0.0, min(siegmund, math.log(arl0 * m)))


def lorden_threshold(arl0: float, m: int) -> float:
    """Rigorous ``h``: ``ARL0 >= exp(h) / m`` for any stream satisfying the null."""
    return math.log(arl0 * m)


class CusumBank:
    """The mutable state of ``m`` parallel one-sided CUSUMs (private helper).

    Besides the CUSUM sums it keeps, since the last ``reset()``: the cumulative log-likelihood
    ratio ``cum`` of each alternative (a martingale under the null: the basis of the e-value
    and of Ville's anytime-valid p-value), the largest of those ever seen, the running minimum
    ``cum_min`` of each (so ``cum - cum_min`` is the CUSUM *without* the restarts after
    alarms), the largest such value ``peak`` (for the fixed-horizon p-value: restarts would
    cap it near ``h`` and waste the evidence) and the number of events. Automatic restarts
    after an alarm clear only the sums.
    """

    __slots__ = (
        "alarm",
        "alarms",
        "cum",
        "cum_min",
        "direction",
        "directions",
        "last_alarm_statistic",
        "max_log_lr",
        "n",
        "peak",
        "s",
        "threshold",
    )

    def __init__(self, directions: Sequence[str], threshold: float) -> None:
        self.directions: tuple[str, ...] = tuple(directions)
        self.threshold = threshold
        m = len(self.directions)
        self.s: list[float] = [0.0] * m
        self.cum: list[float] = [0.0] * m
        self.cum_min: list[float] = [0.0] * m
        self.max_log_lr = 0.0
        self.peak = 0.0
        self.n = 0
        self.alarms = 0
        self.alarm = False
        self.direction: str | None = None
        self.last_alarm_statistic = 0.0

    def reset(self) -> None:
        m = len(self.directions)
        self.s = [0.0] * m
        self.cum = [0.0] * m
        self.cum_min = [0.0] * m
        self.max_log_lr = 0.0
        self.peak = 0.0
        self.n = 0
        self.alarm = False
        self.direction = None

    def step(self, incs: Sequence[float]) -> bool:
        """One event with per-CUSUM increments ``incs``; True when it raised an alarm."""
        s = self.s
        cum = self.cum
        cum_min = self.cum_min
        best = -1
        top = 0.0
        mx = self.max_log_lr
        peak = self.peak
        for j, inc in enumerate(incs):
            v = s[j] + inc
            if v < 0.0:
                v = 0.0
            s[j] = v
            if v > top:
                top = v
                best = j
            c = cum[j] + inc
            cum[j] = c
            if c > mx:
                mx = c
            if c < cum_min[j]:
                cum_min[j] = c
            elif c - cum_min[j] > peak:
                peak = c - cum_min[j]
        self.max_log_lr = mx
        self.peak = peak
        self.n += 1
        if top > self.threshold:
            self.fire(best, top)
            return True
        return False

    def step2(self, inc0: float, inc1: float) -> bool:
        """``step((inc0, inc1))`` for a bank of two, unrolled (the same arithmetic in the
        same order, so the same floats): the base-rate and score-shift detectors run it for
        every event of every scope."""
        s = self.s
        cum = self.cum
        cum_min = self.cum_min
        mx = self.max_log_lr
        peak = self.peak
        v0 = s[0] + inc0
        if v0 < 0.0:
            v0 = 0.0
        s[0] = v0
        v1 = s[1] + inc1
        if v1 < 0.0:
            v1 = 0.0
        s[1] = v1
        c = cum[0] + inc0
        cum[0] = c
        if c > mx:
            mx = c
        if c < cum_min[0]:
            cum_min[0] = c
        elif c - cum_min[0] > peak:
            peak = c - cum_min[0]
        c = cum[1] + inc1
        cum[1] = c
        if c > mx:
            mx = c
        if c < cum_min[1]:
            cum_min[1] = c
        elif c - cum_min[1] > peak:
            peak = c - cum_min[1]
        self.max_log_lr = mx
        self.peak = peak
        self.n += 1
        # step() keeps the first strict maximum above 0.0: the same choice here.
        if v1 > v0:
            if v1 > self.threshold:
                self.fire(1, v1)
                return True
        elif v0 > 0.0 and v0 > self.threshold:
            self.fire(0, v0)
            return True
        return False

    def step4(self, inc0: float, inc1: float, inc2: float, inc3: float) -> bool:
        """``step((inc0, inc1, inc2, inc3))`` for a bank of four, unrolled (the same
        arithmetic in the same order, so the same floats and the same alarm): the
        score-shift detector runs it for every impression of every scope."""
        s = self.s
        cum = self.cum
        cum_min = self.cum_min
        mx = self.max_log_lr
        peak = self.peak
        # The first strict maximum above 0.0, as in step().
        top = 0.0
        best = -1
        v = s[0] + inc0
        if v < 0.0:
            v = 0.0
        s[0] = v
        if v > top:
            top = v
            best = 0
        c = cum[0] + inc0
        cum[0] = c
        if c > mx:
            mx = c
        if c < cum_min[0]:
            cum_min[0] = c
        elif c - cum_min[0] > peak:
            peak = c - cum_min[0]
        v = s[1] + inc1
        if v < 0.0:
            v = 0.0
        s[1] = v
        if v > top:
            top = v
            best = 1
        c = cum[1] + inc1
        cum[1] = c
        if c > mx:
            mx = c
        if c < cum_min[1]:
            cum_min[1] = c
        elif c - cum_min[1] > peak:
            peak = c - cum_min[1]
        v = s[2] + inc2
        if v < 0.0:
            v = 0.0
        s[2] = v
        if v > top:
            top = v
            best = 2
        c = cum[2] + inc2
        cum[2] = c
        if c > mx:
            mx = c
        if c < cum_min[2]:
            cum_min[2] = c
        elif c - cum_min[2] > peak:
            peak = c - cum_min[2]
        v = s[3] + inc3
        if v < 0.0:
            v = 0.0
        s[3] = v
        if v > top:
            top = v
            best = 3
        c = cum[3] + inc3
        cum[3] = c
        if c > mx:
            mx = c
        if c < cum_min[3]:
            cum_min[3] = c
        elif c - cum_min[3] > peak:
            peak = c - cum_min[3]
        self.max_log_lr = mx
        self.peak = peak
        self.n += 1
        if top > self.threshold:
            self.fire(best, top)
            return True
        return False

    def fire(self, j: int, value: float) -> None:
        self.alarms += 1
        self.alarm = True
        self.direction = self.directions[j]
        self.last_alarm_statistic = value
        # Restart (renewal): the false-alarm rate is then alarms per event.
        self.s = [0.0] * len(self.directions)

    def run(self, inc: np.ndarray) -> int:
        """Feed an ``(m, n)`` increment matrix; index of the first alarm, or -1.

        Vectorised: with ``D = S0 + cumsum(l)``, the CUSUM is ``D - min(0, running min of D)``
        (Lindley's recursion in closed form); after an alarm the scan restarts at the next
        event from zero sums.
        """
        m, n = inc.shape
        h = self.threshold
        first = -1
        pos = 0
        chunk = _CHUNK_MIN
        s0 = np.array(self.s, dtype=np.float64)
        c0 = np.array(self.cum, dtype=np.float64)
        cmin0 = np.array(self.cum_min, dtype=np.float64)
        while pos < n:
            end = min(n, pos + chunk)
            d = np.cumsum(inc[:, pos:end], axis=1)
            cum = d + c0[:, None]
            d += s0[:, None]
            low = np.minimum.accumulate(d, axis=1)
            np.minimum(low, 0.0, out=low)
            d -= low
            hit = (d > h).any(axis=0)
            if hit.any():
                j = int(hit.argmax())
                last = j + 1
            else:
                j = -1
                last = end - pos
            cum = cum[:, :last]
            cmin = np.minimum.accumulate(cum, axis=1)
            np.minimum(cmin, cmin0[:, None], out=cmin)
            self.max_log_lr = max(self.max_log_lr, float(cum.max()))
            self.peak = max(self.peak, float((cum - cmin).max()))
            self.n += last
            c0 = cum[:, -1].copy()
            cmin0 = cmin[:, -1].copy()
            if j >= 0:
                col = d[:, j]
                k = int(col.argmax())
                self.fire(k, float(col[k]))
                s0 = np.zeros(m)
                if first < 0:
                    first = pos + j
                chunk = _CHUNK_MIN
            else:
                s0 = d[:, -1].copy()
                chunk = min(chunk * 4, _CHUNK_MAX)
            pos += last
        self.s = [float(v) for v in s0]
        self.cum = [float(v) for v in c0]
        self.cum_min = [float(v) for v in cmin0]
        return first

    @property
    def statistic(self) -> float:
        return max(self.s)

    def e_value(self) -> float:
        """Mean over alternatives of ``exp(cumulative log LR)``: an e-value at any stopping time."""
        return sum(math.exp(min(c, _EXP_CAP)) for c in self.cum) / len(self.cum)

    def ville_p_value(self) -> float:
        """``min(1, m / max_t LR_t)``: anytime-valid (Ville's inequality on the mixture)."""
        return min(1.0, len(self.cum) * math.exp(-min(self.max_log_lr, _EXP_CAP)))

    def cusum_p_value(self) -> float:
        """``min(1, n m exp(-peak))``: valid at the current (fixed) horizon ``n``.

        ``peak`` is the largest value of the un-restarted CUSUM, ``max_{k<=t<=n}`` of the log
        likelihood ratio from ``k`` to ``t``; Ville's inequality for each start ``k`` and
        alternative, and a union bound over the ``n m`` of them.
        """
        if self.n == 0:
            return 1.0
        return min(1.0, self.n * len(self.s) * math.exp(-min(self.peak, _EXP_CAP)))

    def state(self) -> dict[str, Any]:
        return {
            "s": list(self.s),
            "cum": list(self.cum),
            "cum_min": list(self.cum_min),
            "max_log_lr": self.max_log_lr,
            "peak": self.peak,
            "n": self.n,
            "alarms": self.alarms,
            "alarm": self.alarm,
            "direction": self.direction,
            "last_alarm_statistic": self.last_alarm_statistic,
        }

    def load(self, data: dict[str, Any]) -> None:
        m = len(self.directions)
        s = [float(v) for v in data["s"]]
        cum = [float(v) for v in data["cum"]]
        cum_min = [float(v) for v in data["cum_min"]]
        if len(s) != m or len(cum) != m or len(cum_min) != m:
            raise ConfigError(f"state has {len(s)} CUSUMs; this configuration has {m}")
        direction = data["direction"]
        if direction is not None and direction not in self.directions:
            raise ConfigError(f"unknown alarm direction {direction!r} in state")
        self.s = s
        self.cum = cum
        self.cum_min = cum_min
        self.max_log_lr = float(data["max_log_lr"])
        self.peak = float(data["peak"])
        self.n = int(data["n"])
        self.alarms = int(data["alarms"])
        self.alarm = bool(data["alarm"])
        self.direction = direction
        self.last_alarm_statistic = float(data["last_alarm_statistic"])


def check_version(kind: str, data: dict[str, Any]) -> None:
    if not isinstance(data, dict) or data.get("v") != 1:
        got = data.get("v") if isinstance(data, dict) else data
        raise ConfigError(f"unsupported {kind} state version {got!r}; want 1")


class CusumReadout:
    """Read-only views of a detector's ``CusumBank`` (``self._bank``), shared by the CUSUM
    detectors so each class only defines what differs."""

    _bank: CusumBank

    @property
    def threshold(self) -> float:
        """The alarm threshold ``h`` on each CUSUM sum."""
        return self._bank.threshold

    @property
    def directions(self) -> tuple[str, ...]:
        """The monitored directions, one CUSUM sum each."""
        return self._bank.directions

    @property
    def alarm(self) -> bool:
        """True from an alarm until ``reset()``."""
        return self._bank.alarm

    @property
    def direction(self) -> str | None:
        """The direction of the latest alarm since ``reset()``, else None."""
        return self._bank.direction

    @property
    def statistic(self) -> float:
        """The largest current CUSUM sum."""
        return self._bank.statistic

    @property
    def statistics(self) -> dict[str, float]:
        """Current CUSUM sum per direction."""
        return dict(zip(self._bank.directions, self._bank.s, strict=True))

    @property
    def alarms(self) -> int:
        """Alarms raised over the detector's life."""
        return self._bank.alarms

    @property
    def n(self) -> int:
        """Monitored events since the last ``reset()`` (warm-up events excluded)."""
        return self._bank.n

    @property
    def e_value(self) -> float:
        """Mean of the alternatives' likelihood ratios since ``reset()`` (an e-value)."""
        return self._bank.e_value()

    @property
    def ville_p_value(self) -> float:
        """Anytime-valid p-value of "no change since ``reset()``"."""
        return self._bank.ville_p_value()

    @property
    def cusum_p_value(self) -> float:
        """p-value from the largest CUSUM sum since ``reset()``, valid at the current ``n``."""
        return self._bank.cusum_p_value()
