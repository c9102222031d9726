"""One test per rule of the event-time attribution join (DESIGN §4)."""

from __future__ import annotations

import math

import pytest

from tests.unit.core.join.support import check_counters, click, imp, labels
from worker.core.errors import ConfigError, InvalidInputError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.records.click import Click
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression

W = 1_000
L = 100


def make(**kwargs: int | None) -> AttributionJoin:
    params: dict[str, int | None] = {"window_ms": W, "allowed_lateness_ms": L}
    params.update(kwargs)
    return AttributionJoin(**params)  # type: ignore[arg-type]


def test_defaults_and_empty_state() -> None:
    j = AttributionJoin()
    assert j.config() == {
        "window_ms": 1_800_000,
        "allowed_lateness_ms": 60_000,
        "idle_timeout_ms": 30_000,
        "tombstone_retention_ms": 1_860_000,
        "max_clock_jump_ms": None,
        "clock_confirmations": 3,
    }
    assert j.watermark == -math.inf
    assert j.state_size() == 0
    assert j.stats.impressions == 0


# -- positives ---------------------------------------------------------------------------


def test_positive_is_emitted_when_the_click_arrives() -> None:
    j = make()
    a = imp("a", 1_000)
    assert j.add_impression(a) is JoinStep.EMPTY
    step = j.add_click(click("a", 1_300))
    assert step.feedback == [Feedback(a, 1, 1_300, 1_300, 300)]
    assert j.stats.feedback_positive == 1 and j.stats.pending_impressions == 0
    check_counters(j)


def test_positive_is_emitted_when_the_impression_arrives_after_its_click() -> None:
    j = make()
    assert j.add_click(click("a", 1_050)) is JoinStep.EMPTY
    assert j.stats.pending_clicks == 1
    a = imp("a", 1_000)
    assert j.add_impression(a).feedback == [Feedback(a, 1, 1_050, 1_050, 50)]
    assert j.stats.pending_clicks == 0
    check_counters(j)


@pytest.mark.parametrize("click_first", [False, True])
def test_click_stamped_before_its_impression_counts_as_delay_zero(click_first: bool) -> None:
    j = make()
    a = imp("a", 5_000)
    c = click("a", 4_950)
    if click_first:
        step = j.add_click(c)
        assert not step
        step = j.add_impression(a)
    else:
        assert not j.add_impression(a)
        step = j.add_click(c)
    assert step.feedback == [Feedback(a, 1, 5_000, 4_950, 0)]


def test_window_boundary_is_inclusive() -> None:
    j = make()
    j.add_impression(imp("a", 0))
    j.add_impression(imp("b", 0))
    assert labels(j.add_click(click("a", W))) == [("a", 1)]
    step = j.add_click(click("b", W + 1))
    assert step.feedback == [] and step.late_clicks == [click("b", W + 1)]
    assert labels(j.finish()) == [("b", 0)]


def test_window_boundary_when_the_click_arrives_first() -> None:
    j = make(allowed_lateness_ms=2 * W)  # a lateness beyond W lets such clicks arrive first
    j.add_click(click("a", W))
    j.add_click(click("b", W + 1))
    a, b = imp("a", 0), imp("b", 0)
    assert j.add_impression(a).feedback == [Feedback(a, 1, W, W, W)]
    step = j.add_impression(b)
    assert step.feedback == [] and step.late_clicks == [click("b", W + 1)]
    check_counters(j)


def test_join_key_includes_the_user() -> None:
    j = make()
    j.add_impression(imp("a", 0, user="u1"))
    assert not j.add_click(click("a", 10, user="u2"))  # same id, other user: waits
    step = j.finish()
    assert labels(step) == [("a", 0)]
    assert step.orphans == [(click("a", 10, user="u2"), None)]


# -- negatives and the watermark -----------------------------------------------------------


def test_negative_only_when_the_watermark_is_strictly_past_the_deadline() -> None:
    j = make()
    a = imp("a", 0)
    j.add_impression(a)
    # watermark = ts - L; the deadline is 0 + W
    assert not j.add_impression(imp("x", W + L))
    assert j.watermark == W
    step = j.add_impression(imp("y", W + L + 1))
    assert step.feedback == [Feedback(a, 0, W, None, None)]
    assert j.watermark == W + 1
    check_counters(j)


def test_deadlines_sharing_a_calendar_bucket_mature_one_by_one_in_order() -> None:
    j = AttributionJoin()  # W = 30 min: calendar buckets are 1_757 ms wide
    w, lateness = 1_800_000, 60_000
    base = 10_000_000  # deadlines base + W .. base + W + 3 share one bucket
    for iid, ts in [("c", base + 2), ("a", base), ("b", base + 1), ("a2", base)]:
        j.add_impression(imp(iid, ts))
    j.add_click(click("k1", base + 2))  # never gets an impression
    assert not j.add_impression(imp("x", base + w + lateness))  # watermark == a's deadline
    assert labels(j.add_impression(imp("y", base + w + lateness + 1))) == [("a", 0), ("a2", 0)]
    # Entries whose deadlines fall into the bucket being drained join it in order.
    j.add_impression(imp("d", base + 3))
    j.add_impression(imp("e", base + 1))
    j.add_click(click("k2", base + 1))
    step = j.add_impression(imp("z", base + w + lateness + 3))
    assert labels(step) == [("b", 0), ("e", 0), ("c", 0)]
    assert [c.impression_id for c, _ in step.orphans] == ["k2", "k1"]
    assert labels(j.finish())[:2] == [("d", 0), ("x", 0)]
    check_counters(j)


def test_watermark_never_moves_back() -> None:
    j = make()
    j.add_impression(imp("a", 10_000))
    j.add_impression(imp("b", 9_950))
    assert j.watermark == 10_000 - L


def test_negatives_of_one_advance_come_in_deadline_then_arrival_order() -> None:
    j = make()
    for iid, ts in [("c", 20), ("a", 10), ("b", 20), ("d", 10), ("e", 0)]:
        j.add_impression(imp(iid, ts))
    step = j.add_impression(imp("z", 5_000))
    assert labels(step) == [("e", 0), ("a", 0), ("d", 0), ("c", 0), ("b", 0)]


def test_event_output_comes_before_the_advance_output() -> None:
    j = make()
    j.add_impression(imp("old", 1_000))
    j.add_impression(imp("new", 2_000))  # watermark 1_900
    step = j.add_click(click("new", 2_150))  # watermark 2_050 finalizes "old"
    assert labels(step) == [("new", 1), ("old", 0)]


# -- late impressions ----------------------------------------------------------------------


def test_late_impression_raises_and_changes_no_state() -> None:
    j = make()
    j.add_impression(imp("a", 10_000))
    j.add_click(click("w", 8_950))  # waits, on the same key as the late impression below
    before = j.to_dict()
    with pytest.raises(InvalidInputError) as info:
        j.add_impression(imp("w", 8_899))  # deadline 9_899 < watermark 9_900
    assert info.value.reason == "late_impression"
    assert "8899" in str(info.value) and "9900" in str(info.value)
    after = j.to_dict()
    assert after["clock"]["counters"].pop("late_impressions") == 1
    assert after["clock"]["counters"].pop("impressions") == 2
    before["clock"]["counters"].pop("late_impressions")
    before["clock"]["counters"].pop("impressions")
    assert after == before
    check_counters(j)


def test_impression_whose_deadline_equals_the_watermark_is_joined() -> None:
    j = make()
    j.add_impression(imp("a", 10_000))
    b = imp("b", 8_900)  # deadline 9_900 == watermark
    assert not j.add_impression(b)
    assert j.finish().feedback == [
        Feedback(b, 0, 9_900, None, None),
        Feedback(imp("a", 10_000), 0, 11_000, None, None),
    ]


def test_impression_within_the_bound_joins_a_waiting_click() -> None:
    j = make()
    j.add_click(click("a", 9_000))
    j.add_impression(imp("z", 10_000))
    a = imp("a", 8_950)
    assert j.add_impression(a).feedback == [Feedback(a, 1, 9_000, 9_000, 50)]


# -- orphans -----------------------------------------------------------------------------


def test_orphan_after_the_window_with_its_ref() -> None:
    j = make()
    ref = [3, 41, "eyJ4IjoxfQ=="]
    assert not j.add_click(click("a", 0), ref=ref)
    assert not j.add_impression(imp("z", W + L))  # watermark == click.ts + W: still waits
    step = j.add_impression(imp("y", W + L + 1))
    assert step.orphans == [(click("a", 0), ref)]
    assert j.stats.orphan_clicks == 1 and j.stats.pending_clicks == 0
    check_counters(j)


def test_click_already_past_its_wait_is_an_orphan_at_once() -> None:
    j = make()
    j.add_impression(imp("z", 10_000))
    step = j.add_click(click("a", 100), ref="r")
    assert step.orphans == [(click("a", 100), "r")]
    check_counters(j)


def test_the_earliest_of_several_waiting_clicks_is_kept() -> None:
    j = make()
    j.add_click(click("a", 1_500), ref="late one")
    j.add_click(click("a", 600), ref="early one")
    j.add_click(click("a", 900), ref="middle")
    assert j.stats.pending_clicks == 1 and j.stats.duplicate_clicks == 2
    a = imp("a", 400)
    assert j.add_impression(a).feedback == [Feedback(a, 1, 600, 600, 200)]
    check_counters(j)


def test_an_earlier_click_already_past_its_wait_does_not_replace_a_waiting_one() -> None:
    j = make()
    j.add_click(click("a", 5_000), ref="keep")
    j.add_impression(imp("z", 5_500))  # watermark 5_400
    j.add_click(click("a", 4_000), ref="drop")  # its wait ended at 5_000
    assert j.finish().orphans == [(click("a", 5_000), "keep")]
    assert j.stats.duplicate_clicks == 1


# -- late clicks and duplicates --------------------------------------------------------------


def test_click_beyond_the_window_on_a_pending_impression_is_late() -> None:
    j = make()
    a = imp("a", 0)
    j.add_impression(a)
    late = click("a", W + 50)
    step = j.add_click(late)
    assert step.late_clicks == [late] and step.feedback == []
    assert not j.add_click(late)  # the same late click again: a duplicate
    assert j.stats.late_clicks == 1 and j.stats.duplicate_clicks == 1
    assert j.finish().feedback == [Feedback(a, 0, W, None, None)]
    check_counters(j)


def test_waiting_click_beyond_the_window_is_late_when_its_impression_arrives() -> None:
    j = make()
    j.add_click(click("a", 1_090))
    step = j.add_impression(imp("a", 60))
    assert step.late_clicks == [click("a", 1_090)] and step.feedback == []
    assert j.stats.late_clicks == 1 and j.stats.pending_impressions == 1
    check_counters(j)


def test_an_in_window_click_after_a_late_one_still_makes_the_label_positive() -> None:
    j = make()
    a = imp("a", 1_000)
    j.add_impression(a)
    j.add_click(click("a", 2_050))  # late (delay 1_050), still within the lateness
    assert j.add_click(click("a", 1_999)).feedback == [Feedback(a, 1, 1_999, 1_999, 999)]
    check_counters(j)


def test_click_after_a_negative_label_is_late_once_and_the_label_stays() -> None:
    j = make()
    j.add_impression(imp("a", 0))
    j.add_impression(imp("z", 1_500))  # finalizes "a" as 0
    assert j.stats.feedback_negative == 1 and j.stats.tombstones == 1
    late = click("a", 1_450)
    step = j.add_click(late)
    assert step.late_clicks == [late] and step.feedback == []
    assert not j.add_click(click("a", 1_460))
    assert j.stats.late_clicks == 1 and j.stats.duplicate_clicks == 1
    check_counters(j)


def test_second_click_on_a_positive_is_a_duplicate() -> None:
    j = make()
    j.add_impression(imp("a", 0))
    assert labels(j.add_click(click("a", 10))) == [("a", 1)]
    assert not j.add_click(click("a", 10))
    assert not j.add_click(click("a", 20))
    assert not j.add_click(click("a", 5_000))
    assert j.stats.duplicate_clicks == 3 and j.stats.late_clicks == 0
    check_counters(j)


@pytest.mark.parametrize("stage", ["pending", "positive", "negative"])
def test_duplicate_impression_counts_once(stage: str) -> None:
    j = make()
    a = imp("a", 0)
    j.add_impression(a)
    if stage == "positive":
        j.add_click(click("a", 5))
    if stage == "negative":
        j.add_impression(imp("z", 1_200))
    assert not j.add_impression(a)
    final = j.finish()
    assert j.stats.duplicate_impressions == 1
    unique = 2 if stage == "negative" else 1  # "z" moved the watermark
    assert j.stats.feedback_positive + j.stats.feedback_negative == unique
    expected = {"pending": [("a", 0)], "positive": [], "negative": [("z", 0)]}[stage]
    assert labels(final) == expected
    check_counters(j)


def test_duplicate_impression_is_not_late_while_its_tombstone_is_kept() -> None:
    j = make()
    a = imp("a", 0)
    j.add_impression(a)
    j.add_impression(imp("z", 2_000))  # watermark 1_900 > deadline 1_000
    assert not j.add_impression(a)  # behind the watermark, but a known duplicate
    assert j.stats.duplicate_impressions == 1 and j.stats.late_impressions == 0


# -- tombstones and bounded state ------------------------------------------------------------


def test_tombstones_expire_after_the_retention() -> None:
    j = make(tombstone_retention_ms=500)
    j.add_impression(imp("a", 0))
    j.add_impression(imp("b", 0))
    j.add_click(click("b", 10))
    j.add_impression(imp("z", 1_600))  # watermark 1_500 == deadline + retention: kept
    assert j.stats.tombstones == 2
    j.add_impression(imp("y", 1_601))
    assert j.stats.tombstones == 0
    assert j.export_user("u1") is not None  # y and z are still pending
    # A click on the forgotten key waits and becomes an orphan (not late any more).
    j.add_click(click("a", 1_600))
    step = j.finish()
    assert [c.impression_id for c, _ in step.orphans] == ["a"]
    assert j.state_size() == 0
    check_counters(j)


def test_default_retention_classifies_clicks_up_to_two_windows_plus_lateness_as_late() -> None:
    j = make()
    j.add_impression(imp("a", 0))
    j.add_impression(imp("b", 0))
    assert j.add_click(click("a", 2 * W + L)).late_clicks == [click("a", 2 * W + L)]
    j.add_impression(imp("z", 2 * W + 2 * L + 1))  # past b's tombstone
    assert not j.add_click(click("b", 2 * W + L + 1))  # now unknown: it waits
    assert j.stats.pending_clicks == 1


def test_zero_retention_forgets_right_after_the_deadline() -> None:
    j = make(tombstone_retention_ms=0)
    j.add_impression(imp("a", 0))
    j.add_impression(imp("z", W + L + 1))
    assert j.stats.tombstones == 0 and j.stats.feedback_negative == 1


def test_state_stays_bounded_on_a_long_stream() -> None:
    w, lateness = 10_000, 1_000
    j = AttributionJoin(window_ms=w, allowed_lateness_ms=lateness)
    step_ms = 10  # one impression every 10 ms of event time
    events: list[tuple[int, int, Impression | Click]] = []
    for k in range(40_000):
        ts = k * step_ms
        uid = f"u{k % 97}"
        events.append((ts, len(events), imp(f"i{k}", ts, user=uid)))
        if k % 20 == 0:
            events.append((ts, len(events), imp(f"i{k}", ts, user=uid)))  # duplicate
        if k % 10 == 0:
            # delays 0 .. 3W: in the window, late, and beyond the tombstone (orphans)
            cts = ts + (k * 7919) % (3 * w)
            events.append((cts, len(events), click(f"i{k}", cts, user=uid)))
        if k % 50 == 0:
            events.append((ts, len(events), click(f"nope{k}", ts, user=uid)))  # no impression
    events.sort()
    peak_state = peak_scheduled = 0
    for _ts, _n, event in events:
        if isinstance(event, Impression):
            j.add_impression(event)
        else:
            j.add_click(event)
        peak_state = max(peak_state, j.state_size())
        peak_scheduled = max(peak_scheduled, j._scheduled())
    rate = 1 / step_ms
    # A key lives until the max ts passes ts + W + R + L, R = W + L by default.
    assert peak_state <= rate * (2 * w + 2 * lateness) * 1.1 + 100
    # Scheduled entries: every key until its tombstone expires, plus stale entries of
    # clicks that were matched (clicks are a tenth of the impressions) until their deadline.
    assert peak_scheduled <= rate * (2 * w + 2 * lateness) * 1.2 + 100
    assert j.stats.orphan_clicks > 0 and j.stats.late_clicks > 0
    check_counters(j)
    j.finish()
    assert j.state_size() == 0 and not j._users and j._scheduled() == 0
    check_counters(j)


# -- idle advance --------------------------------------------------------------------------


def test_idle_partition_advances_with_wall_time() -> None:
    j = make(idle_timeout_ms=5_000)
    a = imp("a", 1_000_000)
    j.add_impression(a, wall_ms=1_000_500)
    assert j.tick(1_004_000) is JoinStep.EMPTY  # not idle long enough
    assert j.watermark == 1_000_000 - L
    # idle: watermark = wall - idle_timeout - L = 1_006_000 - 5_000 - 100
    assert j.tick(1_006_000) is JoinStep.EMPTY
    assert j.watermark == 1_000_900
    step = j.tick(1_006_101)
    assert step.feedback == [Feedback(a, 0, 1_001_000, None, None)]
    assert j.watermark == 1_001_001


def test_an_event_restarts_the_idle_timer_and_tick_never_moves_back() -> None:
    j = make(idle_timeout_ms=5_000)
    j.add_impression(imp("a", 1_000_000), wall_ms=900_000)  # wall clock behind event time
    assert not j.tick(906_000)
    assert j.watermark == 1_000_000 - L  # wall-based candidate is lower: no change
    j.add_click(click("q", 1_000_000), wall_ms=1_010_000)
    j.tick(1_014_999)
    assert j.watermark == 1_000_000 - L


def test_replay_without_wall_times_starts_the_idle_timer_at_the_first_tick() -> None:
    j = make(idle_timeout_ms=5_000)
    j.add_impression(imp("a", 0))
    assert not j.tick(50_000)  # starts the timer, no jump
    assert j.watermark == -L
    assert labels(j.tick(55_000)) == [("a", 0)]


# -- finish ------------------------------------------------------------------------------------


def test_finish_flushes_everything_and_leaves_no_state() -> None:
    j = make()
    j.add_impression(imp("a", 0))
    j.add_impression(imp("b", 10))
    j.add_click(click("b", 20))
    j.add_click(click("c", 30), ref=7)
    step = j.finish()
    assert labels(step) == [("a", 0)]
    assert step.orphans == [(click("c", 30), 7)]
    assert j.watermark == math.inf
    assert j.state_size() == 0 and j.stats.tombstones == 0
    assert j.export_user("u1") is None
    assert j.dirty_users() == {"u1"}
    check_counters(j)
    # After the end every event is late.
    with pytest.raises(InvalidInputError):
        j.add_impression(imp("d", 40))
    assert j.add_click(click("e", 50), ref=8).orphans == [(click("e", 50), 8)]
    assert j.finish() is JoinStep.EMPTY


# -- outputs and persistence hooks -------------------------------------------------------------


def test_empty_step_is_shared_and_read_only() -> None:
    j = make()
    step = j.add_impression(imp("a", 0))
    assert step is JoinStep.EMPTY and not step
    with pytest.raises(TypeError):
        step.feedback.append(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        step.orphans.extend([])
    assert JoinStep.EMPTY.feedback == []


def test_dirty_users_and_export_user() -> None:
    j = make()
    j.add_impression(imp("a", 0, user="u1"))
    j.add_click(click("q", 0, user="u2"), ref={"offset": 3})
    assert j.dirty_users() == {"u1", "u2"}
    assert j.dirty_users() == set()
    j.add_impression(imp("a", 0, user="u1"))  # duplicate: nothing changed
    assert j.dirty_users() == set()
    exported = j.export_user("u2")
    assert exported is not None
    assert exported["clicks"] == [
        {"seq": 1, "click": click("q", 0, "u2").to_dict(), "ref": {"offset": 3}}
    ]
    assert j.export_user("nobody") is None
    j.add_impression(imp("z", 2_000, user="u3"))  # finalizes u1's a, orphans u2's click
    assert j.dirty_users() == {"u1", "u2", "u3"}
    assert j.export_user("u2") is None
    assert j.export_user("u1")["tombstones"] == [[0, "a", 0, 0, 0]]  # type: ignore[index]


def test_every_state_change_marks_the_user_dirty() -> None:
    j = make()
    changes = [
        lambda: j.add_click(click("a", 500), ref=1),  # waits
        lambda: j.add_click(click("a", 450), ref=2),  # an earlier click replaces it
        lambda: j.add_impression(imp("a", 400)),  # positive, tombstone
        lambda: j.add_impression(imp("b", 400)),  # pending
        lambda: j.add_impression(imp("f", 400)),  # pending
        lambda: j.add_click(click("b", 1_450)),  # late flag
        lambda: j.add_impression(imp("c", 1_800, user="u2")),  # finalizes b and f (negative)
        lambda: j.add_click(click("f", 1_750)),  # late flag on the tombstone
    ]
    before = j.export_user("u1")
    for change in changes:
        change()
        assert "u1" in j.dirty_users()
        after = j.export_user("u1")
        assert after != before
        before = after
    assert not j.add_click(click("b", 1_760)) and not j.dirty_users()  # duplicate: no change


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_ms": 0}, "window_ms must be a positive integer (milliseconds); got 0"),
        ({"window_ms": 1.5}, "window_ms must be a positive integer"),
        ({"window_ms": True}, "window_ms must be a positive integer"),
        ({"allowed_lateness_ms": -1}, "allowed_lateness_ms must be a non-negative integer"),
        ({"idle_timeout_ms": 0}, "idle_timeout_ms must be a positive integer"),
        ({"tombstone_retention_ms": -5}, "tombstone_retention_ms must be a non-negative"),
        ({"tombstone_retention_ms": "1"}, "tombstone_retention_ms must be a non-negative"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AttributionJoin(**kwargs)  # type: ignore[arg-type]


def test_zero_lateness_is_allowed() -> None:
    j = AttributionJoin(window_ms=10, allowed_lateness_ms=0)
    j.add_impression(imp("a", 0))
    assert labels(j.add_impression(imp("b", 11))) == [("a", 0)]
