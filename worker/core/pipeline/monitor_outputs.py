"""What one ``FeedbackMonitor`` call produced, in emission order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class MonitorOutputs:
    """Records to publish, by destination (each list in emission order).

    - ``calibrators``: calibrator version messages (DESIGN §3; global and segment versions
      carry ``conformal``) for ``recal.calibrators`` / ``calibrators.jsonl``.
    - ``alerts``: alert events (DESIGN §3 alert) for ``recal.alerts`` / ``alerts.jsonl``.
    - ``posteriors``: posterior snapshots (DESIGN §3, schema ``posterior_snapshot``), only from
      ``FeedbackMonitor.finish`` and ``drain_posteriors``.
    - ``tier_changes``: user tier changes ``{"type": "tier_change", "user_id", "segment",
      "from_tier", "to_tier", "event_ts", "cv", "uncertain_share", "n"}``; the ``type``
      field tells them apart from snapshots when both go to ``posteriors.jsonl``.

    >>> out = MonitorOutputs()
    >>> bool(out), out.total
    (False, 0)
    >>> out.extend(MonitorOutputs(alerts=[{"status": "firing"}]))
    >>> bool(out), out.total
    (True, 1)
    """

    calibrators: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    posteriors: list[dict[str, Any]] = field(default_factory=list)
    tier_changes: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: MonitorOutputs) -> None:
        """Append ``other``'s records after this one's."""
        self.calibrators.extend(other.calibrators)
        self.alerts.extend(other.alerts)
        self.posteriors.extend(other.posteriors)
        self.tier_changes.extend(other.tier_changes)

    @property
    def total(self) -> int:
        """Number of records in all lists."""
        return (
            len(self.calibrators) + len(self.alerts) + len(self.posteriors)
            + len(self.tier_changes)
        )

    def __bool__(self) -> bool:
        return bool(self.calibrators or self.alerts or self.posteriors or self.tier_changes)
