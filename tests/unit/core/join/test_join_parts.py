"""Watermark, JoinStep, JoinStats, the batch oracle and the doctests of the join modules."""

from __future__ import annotations

import doctest
import math

import pytest

from tests.unit.core.join.support import click, imp
from worker.core.errors import ConfigError, StateError
from worker.core.join import attribution_join, join_stats, join_step, watermark
from worker.core.join.join_stats import JoinStats
from worker.core.join.join_step import JoinStep
from worker.core.join.watermark import Watermark
from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression
from worker.sim import join_oracle
from worker.sim.join_oracle import oracle_feedback, oracle_labels


@pytest.mark.parametrize(
    "module", [attribution_join, join_stats, join_step, watermark, join_oracle]
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0


def test_watermark_basics() -> None:
    wm = Watermark(allowed_lateness_ms=10, idle_timeout_ms=100)
    assert wm.value == -math.inf and wm.to_dict() == {"v": 1, "watermark": None, "max_ts": None}
    assert wm.observe(50) and not wm.observe(50) and not wm.observe(40)
    assert (wm.value, wm.max_ts) == (40, 50)
    wm.finish()
    assert wm.to_dict()["watermark"] == "inf"
    assert Watermark.from_dict(wm.to_dict(), allowed_lateness_ms=10).value == math.inf
    with pytest.raises(ConfigError, match="idle_timeout_ms must be a positive integer"):
        Watermark(idle_timeout_ms=0)
    with pytest.raises(StateError, match="version"):
        Watermark.from_dict({"v": 9, "watermark": None, "max_ts": None})


def test_join_step_equality_and_truth() -> None:
    fb = Feedback(imp("a", 0), 0, 10, None, None)
    assert JoinStep([fb]) == JoinStep([fb]) and JoinStep([fb]) != JoinStep()
    assert JoinStep() == JoinStep.EMPTY
    assert bool(JoinStep(orphans=[(click("a", 0), None)]))
    assert "late_clicks=[]" in repr(JoinStep())


def test_join_stats_to_dict() -> None:
    assert JoinStats(clicks=3).to_dict()["clicks"] == 3


def test_oracle_labels_and_feedback() -> None:
    w = 100
    a, b, c = imp("a", 1_000), imp("b", 1_000, user="u2"), imp("c", 1_000)
    events: list[Impression | Click] = [
        a,
        a,
        b,
        c,
        click("a", 1_100),
        click("b", 1_101, user="u2"),
        click("c", 500),
        click("zz", 1_000),
    ]
    assert oracle_labels(events, w) == {("u1", "a"): 1, ("u2", "b"): 0, ("u1", "c"): 1}
    assert oracle_feedback(events, w) == {
        Feedback(a, 1, 1_100, 1_100, 100),
        Feedback(b, 0, 1_100, None, None),
        Feedback(c, 1, 1_000, 500, 0),
    }
    with pytest.raises(ValueError, match="distinct clicks"):
        oracle_feedback([a, click("a", 1_001), click("a", 1_002)], w)
    # oracle_labels takes several distinct clicks: any one within the window wins.
    assert oracle_labels([a, click("a", 1_500), click("a", 1_001)], w) == {("u1", "a"): 1}
