"""Builders and checks shared by the join tests."""

from __future__ import annotations

from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.records.click import Click
from worker.core.records.impression import Impression


def imp(iid: str, ts: int, user: str = "u1", score: float = 0.25) -> Impression:
    return Impression(iid, user, f"item-{iid}", ts, "m", score, -1.0986, "seg", None, None)


def click(iid: str, ts: int, user: str = "u1") -> Click:
    return Click(iid, user, ts, None)


def labels(step: JoinStep) -> list[tuple[str, int]]:
    return [(f.impression.impression_id, f.label) for f in step.feedback]


def check_counters(join: AttributionJoin) -> None:
    """The accounting identities of ``JoinStats`` hold."""
    s = join.stats
    assert s.impressions == (
        s.duplicate_impressions
        + s.late_impressions
        + s.feedback_positive
        + s.feedback_negative
        + s.pending_impressions
    ), s
    assert s.clicks == (
        s.duplicate_clicks
        + s.late_clicks
        + s.orphan_clicks
        + s.feedback_positive
        + s.pending_clicks
    ), s
    assert join.state_size() == s.pending_impressions + s.pending_clicks + s.tombstones
    assert min(s.pending_impressions, s.pending_clicks, s.tombstones) >= 0
