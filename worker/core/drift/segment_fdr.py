"""False-discovery-rate control across segments for drift alerts (DESIGN §7)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from worker.core.drift._cusum import check_real
from worker.core.errors import InvalidInputError


def _values(kind: str, values: Mapping[str, float], high: float) -> list[tuple[str, float]]:
    out = []
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidInputError("schema", f"{kind} of {key!r} must be a number; got {v!r}")
        f = float(v)
        if not (0.0 <= f <= high) or math.isnan(f):
            raise InvalidInputError(
                "schema", f"{kind} of {key!r} must be a number in [0, {high:g}]; got {v!r}"
            )
        out.append((key, f))
    return out


class SegmentFdr:
    """Which segments to alert on, with the false discovery rate controlled at ``q``.

    Each segment runs its own detector; at a report time its evidence is a p-value or an
    e-value, and this class picks the segments to alert on so that, in expectation, at most a
    fraction ``q`` of the alerted segments are false alarms:

    - ``select(p_values)``: Benjamini-Hochberg — reject the ``k`` smallest p-values, ``k`` the
      largest with ``p_(k) <= q k / K``. Valid for independent (or positively dependent)
      p-values, which segments with disjoint traffic are; ``arbitrary_dependence=True`` gives
      Benjamini-Yekutieli (``q / H_K``), valid under any dependence.
    - ``select_e(e_values)``: e-BH (Wang and Ramdas, 2022) — reject the ``k`` largest
      e-values, ``k`` the largest with ``e_(k) >= K / (q k)``. Valid under any dependence and
      at data-dependent report times when the e-values are (the detectors' ``e_value``:
      a mixture of likelihood-ratio martingales since their last reset).

    Where the p-values come from (each detector exposes them): ``cusum_p_value`` =
    ``min(1, n m exp(-peak))`` — Ville's inequality for each of the ``n`` start points and
    ``m`` alternatives, union-bounded — valid at a report time fixed in advance, and powerful
    for changes in mid-stream; ``ville_p_value`` = ``min(1, m / max_t LR_t)`` is anytime-valid
    (it may be computed at any time, e.g. when the detector alarms) but only accumulates
    evidence from the last reset on. Static helpers give the same for raw statistics.

    >>> fdr = SegmentFdr(q=0.1)
    >>> fdr.select({"a": 0.001, "b": 0.02, "c": 0.04, "d": 0.5, "e": 0.9})
    ['a', 'b', 'c']
    >>> fdr.adjusted({"a": 0.001, "b": 0.02, "c": 0.04, "d": 0.5})
    {'a': 0.004, 'b': 0.04, 'c': 0.05333333333333334, 'd': 0.5}
    >>> fdr.select_e({"a": 400.0, "b": 30.0, "c": 1.0})
    ['a', 'b']
    >>> SegmentFdr.cusum_p_value(peak=20.0, n=5_000, n_cusums=2) < 0.01
    True
    """

    __slots__ = ("_arbitrary", "_q")

    def __init__(self, q: float = 0.1, arbitrary_dependence: bool = False) -> None:
        self._q = check_real("q", q, 0.0, 1.0)
        self._arbitrary = bool(arbitrary_dependence)

    @property
    def q(self) -> float:
        """Target false discovery rate."""
        return self._q

    def _level(self, k: int) -> float:
        if not self._arbitrary:
            return self._q
        return self._q / sum(1.0 / i for i in range(1, k + 1))

    def select(self, p_values: Mapping[str, float]) -> list[str]:
        """Segments to alert on (most significant first) by BH (or BY) at level ``q``."""
        items = sorted(_values("p-value", p_values, 1.0), key=lambda kv: (kv[1], kv[0]))
        k_total = len(items)
        level = self._level(k_total)
        cut = 0
        for rank, (_, p) in enumerate(items, start=1):
            if p <= level * rank / k_total:
                cut = rank
        return [key for key, _ in items[:cut]]

    def adjusted(self, p_values: Mapping[str, float]) -> dict[str, float]:
        """BH (or BY) adjusted p-values: a segment is selected iff its value is ``<= q``."""
        items = sorted(_values("p-value", p_values, 1.0), key=lambda kv: (kv[1], kv[0]))
        k_total = len(items)
        factor = self._q / self._level(k_total) if k_total else 1.0
        out: dict[str, float] = {}
        running = 1.0
        for rank in range(k_total, 0, -1):
            key, p = items[rank - 1]
            running = min(running, p * k_total * factor / rank)
            out[key] = min(1.0, running)
        return {key: out[key] for key, _ in items}

    def select_e(self, e_values: Mapping[str, float]) -> list[str]:
        """Segments to alert on (largest e-value first) by e-BH at level ``q``."""
        items = sorted(_values("e-value", e_values, math.inf), key=lambda kv: (-kv[1], kv[0]))
        k_total = len(items)
        cut = 0
        for rank, (_, e) in enumerate(items, start=1):
            if e * self._q * rank >= k_total:
                cut = rank
        return [key for key, _ in items[:cut]]

    @staticmethod
    def cusum_p_value(peak: float, n: int, n_cusums: int = 1) -> float:
        """p-value of a CUSUM bank's largest (un-restarted) statistic over ``n`` events."""
        if n <= 0:
            return 1.0
        return min(1.0, n * n_cusums * math.exp(-min(peak, 700.0)))

    @staticmethod
    def ville_p_value(max_log_lr: float, n_alternatives: int = 1) -> float:
        """Anytime-valid p-value of the running maximum of a mixture likelihood ratio."""
        return min(1.0, n_alternatives * math.exp(-min(max_log_lr, 700.0)))

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, as accepted by the constructor."""
        return {"q": self._q, "arbitrary_dependence": self._arbitrary}
