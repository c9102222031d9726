"""Everything one ``Pipeline`` call produced, by destination, each list in emission order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from worker.core.join.join_step import FROZEN_EMPTY
from worker.core.records.feedback import Feedback


class Rejection(NamedTuple):
    """An input the partition will not process: the runtime turns it into a dead letter.

    ``ref`` is the runtime's own reference to the input (``InputBatch``); ``clock_ms`` is the
    partition's event-time clock when it was rejected, as epoch ms (the epoch before the first
    event): replay stamps ``received_at`` with it, so its outputs stay deterministic.
    """

    ref: Any
    key: str | None
    reason: str
    error: str
    clock_ms: int


@dataclass(slots=True)
class Outputs:
    """Records to publish, by destination (DESIGN §3), each list in emission order.

    - ``feedback``: mature labels (``Feedback``) for ``recal.feedback`` / ``feedback.jsonl``.
    - ``dead_letters``: ``Rejection`` s, decoder rejections and the join's (``orphan_click``,
      ``late_impression``, ...) in input/emission order.
    - ``calibrators``: calibrator version messages (global and segment ones carry
      ``conformal``).
    - ``alerts``: alert events (firing and resolved).
    - ``tier_changes``: ``{"type": "tier_change", ...}`` user tier changes.
    - ``posteriors``: posterior snapshots (only from ``Pipeline.finish`` and
      ``Pipeline.drain_posteriors``).

    >>> out = Outputs()
    >>> bool(out), out.total
    (False, 0)
    >>> out.extend(Outputs(alerts=[{"status": "firing"}]))
    >>> bool(out), out.total
    (True, 1)
    """

    #: Shared by the calls that produced nothing (most calls on the hot path); its lists
    #: refuse to grow, so a caller that appended to it would fail loudly.
    EMPTY: ClassVar[Outputs]

    feedback: list[Feedback] = field(default_factory=list)
    dead_letters: list[Rejection] = field(default_factory=list)
    calibrators: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    tier_changes: list[dict[str, Any]] = field(default_factory=list)
    posteriors: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s records after this one's."""
        self.feedback.extend(other.feedback)
        self.dead_letters.extend(other.dead_letters)
        self.calibrators.extend(other.calibrators)
        self.alerts.extend(other.alerts)
        self.tier_changes.extend(other.tier_changes)
        self.posteriors.extend(other.posteriors)

    @property
    def total(self) -> int:
        """Number of records in all lists."""
        return (
            len(self.feedback) + len(self.dead_letters) + len(self.calibrators)
            + len(self.alerts) + len(self.tier_changes) + len(self.posteriors)
        )

    def __bool__(self) -> bool:
        return self.total > 0


Outputs.EMPTY = Outputs(*([FROZEN_EMPTY] * 6))
