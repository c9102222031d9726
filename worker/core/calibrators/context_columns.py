"""Serving-time contexts of many events as columns: what a ``contextual`` map needs to score
a holdout ring at once (``ContextualCalibrator.apply_columns``) without a mapping per event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from worker.core.calibrators.context_features import DAY_MS, HOUR_MS

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class ContextColumns:
    """The contexts of ``n`` events, column by column (missing: NaN, or code -1).

    - ``hour``: UTC hour of day in [0, 24) (``from_ts``: from the impression ``ts``);
    - ``position``: the impression's position, -1 when absent;
    - ``categories``: per field (``segment`` included) ``(codes, vocabulary)``, the value
      of event ``i`` being ``vocabulary[codes[i]]``, missing when ``codes[i] < 0``;
    - ``numbers``: per field the raw number, NaN when absent or not a number.

    A field may be in both ``categories`` and ``numbers`` (strings on some events, numbers
    on others), as in an impression's ``context`` object.

    >>> cols = ContextColumns.from_ts(np.array([0, 3 * 3_600_000]), np.array([2, -1]))
    >>> cols.hour.tolist(), cols.position.tolist(), len(cols)
    ([0.0, 3.0], [2, -1], 2)
    >>> cols.contexts(1)
    {'hour': 3.0}
    """

    hour: FloatArray
    position: IntArray
    categories: Mapping[str, tuple[IntArray, Sequence[str]]] = field(default_factory=dict)
    numbers: Mapping[str, FloatArray] = field(default_factory=dict)

    @classmethod
    def from_ts(
        cls,
        ts: IntArray,
        position: IntArray,
        categories: Mapping[str, tuple[IntArray, Sequence[str]]] | None = None,
        numbers: Mapping[str, FloatArray] | None = None,
    ) -> ContextColumns:
        """Columns whose hour comes from epoch-ms impression times ``ts`` (>= 0)."""
        hour = (np.asarray(ts, dtype=np.int64) % DAY_MS).astype(np.float64) / HOUR_MS
        return cls(hour, np.asarray(position, dtype=np.int64), dict(categories or {}),
                   dict(numbers or {}))

    def __len__(self) -> int:
        return int(self.hour.size)

    def contexts(self, i: int) -> dict[str, Any]:
        """Event ``i``'s context as the mapping ``ContextualCalibrator.apply`` reads (for
        tests and debugging: the columns path must agree with it)."""
        out: dict[str, Any] = {}
        h = float(self.hour[i])
        if h == h:
            out["hour"] = h
        if self.position[i] >= 0:
            out["position"] = int(self.position[i])
        for name, values in self.numbers.items():
            v = float(values[i])
            if v == v:
                out[name] = v
        for name, (codes, vocab) in self.categories.items():
            if codes[i] >= 0:
                out[name] = vocab[int(codes[i])]
        return out

    def select(self, keep: NDArray[Any]) -> ContextColumns:
        """The columns of the events ``keep`` selects (a boolean mask or indices)."""
        return ContextColumns(
            self.hour[keep],
            self.position[keep],
            {k: (c[keep], v) for k, (c, v) in self.categories.items()},
            {k: v[keep] for k, v in self.numbers.items()},
        )
