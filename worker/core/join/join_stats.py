"""Read-only counters of the attribution join (for metrics and tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class JoinStats:
    """A snapshot of the join's counters and state sizes.

    Event counters count every arrival handed to the join, so that for impressions
    ``impressions = duplicate_impressions + late_impressions + feedback_positive +
    feedback_negative + pending_impressions`` and for clicks ``clicks = duplicate_clicks +
    late_clicks + orphan_clicks + feedback_positive + pending_clicks`` hold at every step
    (each positive label consumes exactly one click). ``tombstones`` is the number of
    finalized impression keys still remembered for deduplication. Events the clock guard
    holds (``held_events``) or rejected (``future_events``) are not counted above: they never
    reached the join proper; a held event that is confirmed is counted when it is applied.

    >>> s = JoinStats(impressions=3, duplicate_impressions=1, feedback_negative=2)
    >>> s.impressions - s.duplicate_impressions == s.feedback_positive + s.feedback_negative
    True
    >>> JoinStats().to_dict()["orphan_clicks"]
    0
    """

    impressions: int = 0
    duplicate_impressions: int = 0
    late_impressions: int = 0
    clicks: int = 0
    duplicate_clicks: int = 0
    late_clicks: int = 0
    orphan_clicks: int = 0
    feedback_positive: int = 0
    feedback_negative: int = 0
    pending_impressions: int = 0
    pending_clicks: int = 0
    tombstones: int = 0
    held_events: int = 0
    future_events: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters as a plain dict (metric name -> value)."""
        return asdict(self)
