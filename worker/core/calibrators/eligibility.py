"""Whether a per-user calibrator may be published at all (DESIGN §5, eligibility gates)."""

from __future__ import annotations

import math
from numbers import Real

from worker.core.errors import ConfigError, InvalidInputError


class EligibilityGate:
    """Minimum labeled events, days of history, positives and negatives for a user version.

    Shrinkage already makes a small user's calibrator close to its parent; the gate avoids
    publishing (and serving, and churning) versions that cannot differ from the parent
    meaningfully, and keeps a user seen on one day only — a bot, a burst — from getting one.
    ``check`` reports every unmet minimum, so operators see the whole story.

    >>> gate = EligibilityGate()
    >>> gate.check(n=500, n_days=3, positives=40, negatives=460)
    (True, '')
    >>> gate.check(n=150, n_days=1, positives=40, negatives=110)
    (False, 'events 150 < 200; days 1 < 2')
    """

    def __init__(
        self,
        min_events: int = 200,
        min_days: float = 2,
        min_positives: int = 10,
        min_negatives: int = 10,
    ) -> None:
        for name, value in (
            ("min_events", min_events),
            ("min_days", min_days),
            ("min_positives", min_positives),
            ("min_negatives", min_negatives),
        ):
            if not _is_count(value):
                raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
        self._min_events = min_events
        self._min_days = min_days
        self._min_positives = min_positives
        self._min_negatives = min_negatives

    @property
    def min_events(self) -> float:
        """Minimum labeled events."""
        return self._min_events

    @property
    def min_days(self) -> float:
        """Minimum days with labeled events."""
        return self._min_days

    @property
    def min_positives(self) -> float:
        """Minimum positive labels."""
        return self._min_positives

    @property
    def min_negatives(self) -> float:
        """Minimum negative labels."""
        return self._min_negatives

    def check(
        self, n: float, n_days: float, positives: float, negatives: float
    ) -> tuple[bool, str]:
        """``(eligible, reason)``; ``reason`` lists the unmet minimums ("" when eligible).

        ``n_days`` is the number of distinct (or spanned) days with labeled events, as the
        caller counts them; counts may be fractional (decayed weights).
        """
        values = (("n", n), ("n_days", n_days), ("positives", positives), ("negatives", negatives))
        for name, value in values:
            if not _is_count(value):
                raise InvalidInputError(
                    "schema", f"{name} must be a finite number >= 0; got {value!r}"
                )
        problems = []
        if n < self.min_events:
            problems.append(f"events {n} < {self.min_events}")
        if n_days < self.min_days:
            problems.append(f"days {n_days} < {self.min_days}")
        if positives < self.min_positives:
            problems.append(f"positives {positives} < {self.min_positives}")
        if negatives < self.min_negatives:
            problems.append(f"negatives {negatives} < {self.min_negatives}")
        return (not problems, "; ".join(problems))

    def __repr__(self) -> str:
        return (
            f"EligibilityGate(min_events={self.min_events}, min_days={self.min_days}, "
            f"min_positives={self.min_positives}, min_negatives={self.min_negatives})"
        )


def _is_count(value: object) -> bool:
    return (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) >= 0.0
    )
