"""The join's clock guard: one far-future event changes nothing, a real gap still matures."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.join.support import check_counters, click, imp
from worker.core.errors import ConfigError, StateError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.clock_guard import ClockGuard
from worker.core.records.click import Click
from worker.core.records.impression import Impression

W = 60_000
L = 5_000
K = 3
T0 = 1_767_225_600_000

Event = Impression | Click


def guarded(**kw: Any) -> AttributionJoin:
    return AttributionJoin(
        window_ms=W, allowed_lateness_ms=L, max_clock_jump_ms=W, clock_confirmations=K, **kw
    )


@st.composite
def dense_streams(draw: st.DrawFn, start: int = T0, min_events: int = 1) -> list[Event]:
    """Impressions and their clicks, arrival gaps well under the bound, jitter under L."""
    n = draw(st.integers(min_events, 40))
    out: list[Event] = []
    t = start
    for k in range(n):
        t += draw(st.integers(0, W // 4))
        user = f"u{draw(st.integers(0, 3))}"
        jitter = draw(st.integers(-L // 2, 0))
        out.append(imp(f"i{k}-{start}", t + jitter, user))
        if draw(st.booleans()):
            out.append(click(f"i{k}-{start}", t + draw(st.integers(0, W // 2)), user))
    # Arrival in ts order (a real stream is roughly in event time; equal ts keep generation
    # order), so no arrival is more than W/2 ahead of the clock. A click later than that
    # with nothing in between would be a jump the guard holds, a different test.
    return sorted(out, key=lambda e: e.ts)


def run(
    join: AttributionJoin, events: list[Event], refs: list[Any] | None = None
) -> tuple[list[tuple[str, str, int, int]], list[Any]]:
    """(feedback as (user, impression, label, label_ts), rejected refs), finish included."""
    feedback: list[tuple[str, str, int, int]] = []
    future: list[Any] = []
    refs = refs if refs is not None else list(range(len(events)))
    for event, ref in zip(events, refs, strict=True):
        if isinstance(event, Impression):
            step = join.add_impression(event, ref=ref)
        else:
            step = join.add_click(event, ref=ref)
        feedback += [
            (f.impression.user_id, f.impression.impression_id, f.label, f.label_ts)
            for f in step.feedback
        ]
        future += [r for _, r in step.future]
        check_counters(join)
    step = join.finish()
    feedback += [
        (f.impression.user_id, f.impression.impression_id, f.label, f.label_ts)
        for f in step.feedback
    ]
    future += [r for _, r in step.future]
    return feedback, future


@settings(max_examples=200, deadline=None)
@given(dense_streams(), st.data())
def test_one_far_future_event_changes_no_valid_label(events: list[Event], data: Any) -> None:
    # From 1: the guard measures from the clock, and the partition's first event sets it
    # (nothing earlier to compare with; a known limit, see ClockGuard).
    at = data.draw(st.integers(1, len(events)), label="position")
    ahead = data.draw(st.integers(2 * W + L + 1, 10**10), label="ahead of the stream")
    top = max(e.ts for e in events)
    far: Event = data.draw(
        st.sampled_from([imp("far", top + ahead, "u1"), click("i0-" + str(T0), top + ahead)])
    )
    clean, clean_future = run(guarded(), events)
    dirty, dirty_future = run(guarded(), [*events[:at], far, *events[at:]])
    assert clean_future == []
    if len(events) - at >= K:
        # K later events, all far behind it, refute it.
        assert dirty == clean
        assert dirty_future == [at]
    else:
        # Too few later events to decide: finish() applies it last (ts order), after
        # every valid label has matured, so those are unchanged.
        assert dirty_future == []
        assert [fb for fb in dirty if fb[1] != "far"] == clean
    # On a dense stream the guard is invisible: the unguarded join gives the same labels.
    assert run(AttributionJoin(window_ms=W, allowed_lateness_ms=L), events)[0] == clean


@settings(max_examples=100, deadline=None)
@given(dense_streams(), dense_streams(start=T0 + 2 * 3_600_000, min_events=K + 1))
def test_a_real_gap_still_matures_negatives(before: list[Event], after: list[Event]) -> None:
    join = guarded()
    matured: set[str] = set()
    for event in [*before, *after]:
        step = (
            join.add_impression(event) if isinstance(event, Impression) else join.add_click(event)
        )
        matured |= {f.impression.impression_id for f in step.feedback}
        assert step.future == []
    # Before finish(): the stream resumed two hours later and confirmed the jump, so every
    # impression of the first burst got its label from the watermark, not from the end.
    assert {e.impression_id for e in before if isinstance(e, Impression)} <= matured
    assert join.stats.held_events == 0
    unguarded = AttributionJoin(window_ms=W, allowed_lateness_ms=L)
    assert sorted(run(guarded(), [*before, *after])[0]) == sorted(
        run(unguarded, [*before, *after])[0]
    )


@settings(max_examples=100, deadline=None)
@given(dense_streams(min_events=5))
def test_deterministic_and_state_round_trip_keeps_held_events(events: list[Event]) -> None:
    top = max(e.ts for e in events)
    # Two events after the far one: fewer votes than K, so it is still held at the snapshot
    # and finish() applies it last.
    stream = [*events[:-2], imp("far", top + 10 * W, "u2"), *events[-2:]]
    cut = len(events) - 1  # just after the far event
    refs = [[k, f"payload-{k}"] for k in range(len(stream))]
    whole = run(guarded(), stream, refs)
    assert whole == run(guarded(), stream, refs)

    first = guarded()
    head_fb: list[tuple[str, str, int, int]] = []
    for event, ref in zip(stream[:cut], refs[:cut], strict=True):
        step = (
            first.add_impression(event, ref=ref)
            if isinstance(event, Impression)
            else first.add_click(event, ref=ref)
        )
        head_fb += [
            (f.impression.user_id, f.impression.impression_id, f.label, f.label_ts)
            for f in step.feedback
        ]
    assert first.stats.held_events == 1
    state = orjson.loads(orjson.dumps(first.to_dict()))
    restored = AttributionJoin.from_dict(state)
    assert restored.to_dict() == state
    tail_fb, tail_future = run(restored, stream[cut:], refs[cut:])
    assert (head_fb + tail_fb, tail_future) == whole
    assert tail_future == []
    assert tail_fb[-1] == ("u2", "far", 0, top + 10 * W + W)


def test_held_event_is_released_with_the_jump_and_reported() -> None:
    j = guarded()
    j.add_impression(imp("a", T0))
    later = T0 + 2 * 3_600_000
    assert not j.add_impression(imp("b", later), ref="rb")  # held
    assert j.horizon < later and j.stats.held_events == 1 and j.stats.impressions == 1
    assert not j.add_impression(imp("c", later + 1))
    assert not j.add_impression(imp("d", later + 2))
    step = j.add_click(click("b", later + 3))
    assert [e.ts for e in step.released] == [later, later + 1, later + 2, later + 3]
    assert [(f.impression.impression_id, f.label) for f in step.feedback] == [("a", 0), ("b", 1)]
    check_counters(j)


def test_a_last_click_after_a_quiet_spell_is_applied_not_dead_lettered() -> None:
    # The replay fuzz test's case: a stream's last event, a click stamped more than the
    # bound after everything else, with nothing after it to vote.
    j = guarded()
    j.add_impression(imp("a", T0), ref="ra")
    j.add_impression(imp("b", T0 + 1_000), ref="rb")
    late = T0 + 2 * W
    assert not j.add_click(click("b", late), ref="cb")
    assert j.stats.held_events == 1
    step = j.finish()
    assert step.future == [] and [e.ts for e in step.released] == [late]
    # Outside b's window (W): a late click, not an orphan or a future_ts letter.
    assert [c.ts for c in step.late_clicks] == [late]
    assert [(f.impression.impression_id, f.label) for f in step.feedback] == [("a", 0), ("b", 0)]
    assert j.stats.held_events == 0
    check_counters(j)


def test_finish_applies_held_events_in_ts_order() -> None:
    # Two undecided events: the later-stamped one arrived first. In ts order the earlier
    # one is applied before the clock passes it, so its impression is not late.
    j = guarded()
    j.add_impression(imp("a", T0))
    j.add_impression(imp("far", T0 + 100 * W), ref="r1")
    j.add_impression(imp("near", T0 + 3 * W), ref="r2")
    assert j.stats.held_events == 2
    step = j.finish()
    assert step.future == []
    assert [e.impression_id for e in step.released] == ["near", "far"]  # type: ignore[union-attr]
    assert [f.impression.impression_id for f in step.feedback] == ["a", "near", "far"]
    check_counters(j)


def test_an_idle_advance_releases_what_it_brings_within_reach() -> None:
    j = AttributionJoin(
        window_ms=W, allowed_lateness_ms=L, idle_timeout_ms=1_000, max_clock_jump_ms=W,
        clock_confirmations=K,
    )
    j.add_impression(imp("a", T0), wall_ms=T0)
    ahead = T0 + 3 * W
    assert not j.add_impression(imp("b", ahead), wall_ms=T0 + 10, ref="rb")
    assert j.stats.held_events == 1
    # Wall time reaches the held event: the idle advance confirms it, before any later
    # advance could finalize it without its clicks.
    step = j.tick(ahead + 1_000 + L)
    assert [e.ts for e in step.released] == [ahead]
    assert j.stats.held_events == 0 and step.future == []
    assert [(f.impression.impression_id, f.label) for f in step.feedback] == [("a", 0)]
    clicked = j.add_click(click("b", ahead + 10), wall_ms=ahead + 1_100 + L).feedback
    assert [(f.impression.impression_id, f.label) for f in clicked] == [("b", 1)]
    check_counters(j)


def test_config_validation_and_malformed_held_state() -> None:
    with pytest.raises(ConfigError):
        ClockGuard(max_jump_ms=-1)
    with pytest.raises(ConfigError):
        ClockGuard(max_jump_ms=1, confirmations=0)
    with pytest.raises(StateError):
        ClockGuard(1).load([{"kind": "nope", "event": {}, "ref": None, "for": 0, "against": 0}])
    assert AttributionJoin().config()["max_clock_jump_ms"] is None
