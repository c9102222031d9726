"""One bin of a reliability diagram."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _num(x: float) -> float | None:
    # JSON has no NaN; an empty bin's means are "not defined", which null says plainly.
    return float(x) if math.isfinite(x) else None


def _unnum(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """Aggregates of one ECE bin ``(lo, hi]`` (the first bin also holds ``p == 0``).

    ``n`` is the (possibly weighted or decayed) weight in the bin, ``positives`` the weighted
    count of label 1, ``mean_p`` the weighted mean score and ``frac_pos`` the weighted fraction
    of positives; both means are NaN for an empty bin.

    >>> b = ReliabilityBin(0.0, 1 / 15, 4.0, 1.0, 0.05, 0.25)
    >>> b.gap
    0.2
    >>> ReliabilityBin.from_dict(b.to_dict()) == b
    True
    """

    lo: float
    hi: float
    n: float
    positives: float
    mean_p: float
    frac_pos: float

    @property
    def gap(self) -> float:
        """``frac_pos - mean_p``: positive when the scores are under-confident in this bin."""
        return self.frac_pos - self.mean_p

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN means become ``None``."""
        return {
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "positives": self.positives,
            "mean_p": _num(self.mean_p),
            "frac_pos": _num(self.frac_pos),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReliabilityBin:
        """Inverse of ``to_dict``."""
        return cls(
            float(data["lo"]),
            float(data["hi"]),
            float(data["n"]),
            float(data["positives"]),
            _unnum(data["mean_p"]),
            _unnum(data["frac_pos"]),
        )
