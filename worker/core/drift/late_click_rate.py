"""CUSUM on the share of late clicks (``late_clicks_high``, DESIGN §4 and §7)."""

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

_log = math.log


class LateClickRate(CusumReadout):
    """One-sided Bernoulli CUSUM: is the late-click share above the acceptable rate?

    Each click is late (beyond the attribution window, or after its impression was
    finalised) or not. The null is "late share ``<= acceptable``" (default 2 %), the
    alternative ``alternative`` (default twice the acceptable share). Per click
    ``S <- max(0, S + log(r1/r0))`` if late else ``S + log((1-r1)/(1-r0))``; the likelihood
    ratio has ``E[LR] <= 1`` for every late share ``<= r0``, so the whole composite null is
    covered. Threshold ``h = log(arl0 * KL(r0 || r1)) + margin`` (Siegmund, capped by Lorden's
    ``log(arl0)``; ``conservative=True`` uses Lorden's), with ``arl0`` counted in **clicks**
    (default 10^6) — far fewer than events, so per event the false-alarm rate is lower still.
    Assumption: clicks are late independently of each other.

    ``update_counts(clicks, late)`` takes a batch at once (one CUSUM step on its summed
    log-likelihood ratio: the CUSUM is then only restarted at batch boundaries, which can
    only delay an alarm, never add a false one). Alarms restart the sum and latch ``alarm``
    until ``reset()``. The alarm means "the attribution window is too short".

    >>> det = LateClickRate(acceptable=0.02)
    >>> round(det.threshold, 2)
    9.26
    >>> any(det.update(i % 25 == 0) for i in range(10_000))        # 4 % late
    True
    >>> det.alarm, det.clicks > 0, round(det.late_share, 2)
    (True, True, 0.04)
    >>> det.reset()
    >>> det.update_counts(1_000, 20), det.alarm                   # 2 % late
    (False, False)
    >>> LateClickRate.from_dict(det.to_dict()).to_dict() == det.to_dict()
    True
    """

    __slots__ = (
        "_acceptable",
        "_alternative",
        "_arl0",
        "_bank",
        "_clicks",
        "_conservative",
        "_inc",
        "_late",
        "_margin",
        "_threshold_override",
    )

    def __init__(
        self,
        acceptable: float = 0.02,
        alternative: float | None = None,
        arl0: float = DEFAULT_ARL0,
        margin: float = DEFAULT_MARGIN,
        threshold: float | None = None,
        conservative: bool = False,
    ) -> None:
        self._acceptable = check_real("acceptable", acceptable, 0.0, 1.0)
        if alternative is None:
            self._alternative = min(2.0 * self._acceptable, 0.5 * (1.0 + self._acceptable))
        else:
            self._alternative = check_real("alternative", alternative, 0.0, 1.0)
        r0 = self._acceptable
        r1 = self._alternative
        if r1 <= r0:
            raise ConfigError(f"alternative must exceed acceptable; got {r1!r} <= {r0!r}")
        self._arl0 = check_real("arl0", arl0, 1.0, math.inf)
        self._margin = check_real("margin", margin, -math.inf, math.inf)
        self._conservative = bool(conservative)
        self._threshold_override = (
            None if threshold is None else check_real("threshold", threshold, 0.0, math.inf)
        )
        # (increment of a punctual click, increment of a late click)
        self._inc = (_log((1.0 - r1) / (1.0 - r0)), _log(r1 / r0))
        if self._threshold_override is not None:
            h = self._threshold_override
        elif self._conservative:
            h = lorden_threshold(self._arl0, 1)
        else:
            kl = r0 * _log(r0 / r1) + (1.0 - r0) * _log((1.0 - r0) / (1.0 - r1))
            h = siegmund_threshold(self._arl0, [kl], self._margin)
        self._bank = CusumBank(("late_clicks_high",), h)
        self._clicks = 0
        self._late = 0

    @property
    def acceptable(self) -> float:
        """The late share that is acceptable (the null)."""
        return self._acceptable

    @property
    def alternative(self) -> float:
        """The late share the CUSUM is tuned to detect."""
        return self._alternative

    @property
    def clicks(self) -> int:
        """Clicks counted since ``reset()``."""
        return self._clicks

    @property
    def late(self) -> int:
        """Late clicks counted since ``reset()``."""
        return self._late

    @property
    def late_share(self) -> float:
        """Late clicks / clicks since ``reset()`` (NaN before any click)."""
        return self._late / self._clicks if self._clicks else math.nan

    def update(self, late: bool) -> bool:
        """Account for one click (``late``: whether it was late); True on an alarm."""
        if late is True or late == 1:
            self._late += 1
            self._clicks += 1
            return self._bank.step((self._inc[1],))
        if late is False or late == 0:
            self._clicks += 1
            return self._bank.step((self._inc[0],))
        raise InvalidInputError("schema", f"late must be a bool; got {late!r}")

    def update_many(self, late: ArrayLike) -> int:
        """Feed clicks' late flags in order; index of the first alarm among them, or -1."""
        arr = np.asarray(late).reshape(-1)
        if arr.dtype != np.bool_:
            ok = (arr == 0) | (arr == 1)
            if not ok.all():
                raise InvalidInputError("schema", f"late must be a bool; got {arr[~ok][0]!r}")
            arr = arr == 1
        if arr.shape[0] == 0:
            return -1
        self._clicks += arr.shape[0]
        self._late += int(np.count_nonzero(arr))
        return self._bank.run(np.where(arr, self._inc[1], self._inc[0])[None, :])

    def update_counts(self, clicks: int, late: int) -> bool:
        """Account for a batch of ``clicks`` of which ``late`` were late; True on an alarm."""
        if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 0:
            raise InvalidInputError("schema", f"clicks must be an integer >= 0; got {clicks!r}")
        if isinstance(late, bool) or not isinstance(late, int) or not 0 <= late <= clicks:
            raise InvalidInputError(
                "schema", f"late must be an integer in [0, clicks={clicks}]; got {late!r}"
            )
        if clicks == 0:
            return False
        self._clicks += clicks
        self._late += late
        return self._bank.step((late * self._inc[1] + (clicks - late) * self._inc[0],))

    def reset(self) -> None:
        """Clear the sum, the latched alarm, the evidence and the counts."""
        self._bank.reset()
        self._clicks = 0
        self._late = 0

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {
            "acceptable": self._acceptable,
            "alternative": self._alternative,
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
            "clicks": self._clicks,
            "late": self._late,
            **self._bank.state(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LateClickRate:
        """Inverse of ``to_dict``."""
        check_version("LateClickRate", data)
        out = cls(**data["config"])
        out._clicks = check_int("clicks", data["clicks"], 0)
        out._late = check_int("late", data["late"], 0)
        out._bank.load(data)
        return out
