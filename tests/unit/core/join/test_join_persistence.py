"""A restored join continues exactly like the original (DESIGN §9: restarts lose nothing)."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.join.strategies import Stream, streams
from tests.unit.core.join.support import check_counters, click, imp
from worker.core.errors import StateError
from worker.core.join.attribution_join import AttributionJoin
from worker.core.join.join_step import JoinStep
from worker.core.records.click import Click
from worker.core.records.impression import Impression


def feed(j: AttributionJoin, event: object, ref: object) -> JoinStep:
    if isinstance(event, Impression):
        return j.add_impression(event)
    return j.add_click(event, ref=ref)  # type: ignore[arg-type]


def json_copy(data: Any) -> Any:
    return json.loads(json.dumps(data))


@settings(max_examples=150, deadline=None)
@given(streams(max_impressions=15), st.data())
def test_restore_from_per_user_table_continues_identically(
    stream: Stream, data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(stream.events)), label="split")
    original = AttributionJoin(window_ms=stream.window, allowed_lateness_ms=stream.lateness)
    copy = AttributionJoin(window_ms=stream.window, allowed_lateness_ms=stream.lateness)
    # The Kafka runtime's table: one value per user, rewritten when the user is dirty,
    # deleted when export_user returns None. Values go through JSON like a changelog.
    table: dict[str, Any] = {}
    pairs = list(zip(stream.events, stream.refs, strict=True))
    for event, ref in pairs[:split]:
        feed(copy, event, ref)
        for uid in copy.dirty_users():
            value = copy.export_user(uid)
            if value is None:
                table.pop(uid, None)
            else:
                table[uid] = json_copy(value)
    users = list(table.values())
    random.Random(split).shuffle(users)  # a table has no order
    restored = AttributionJoin(window_ms=stream.window, allowed_lateness_ms=stream.lateness)
    restored.restore(json_copy(copy.export_clock()), users)
    assert restored.to_dict() == copy.to_dict()
    assert restored.dirty_users() == set()

    for event, ref in pairs[:split]:
        feed(original, event, ref)
    for event, ref in pairs[split:]:
        assert feed(restored, event, ref) == feed(original, event, ref)
        check_counters(restored)
    assert restored.finish() == original.finish()
    assert restored.stats == original.stats


@settings(max_examples=100, deadline=None)
@given(streams(max_impressions=15))
def test_re_exports_are_byte_identical_to_a_first_export(stream: Stream) -> None:
    # ``export_user`` reuses each entry's converted dict; a join fed the same prefix and
    # exported only once (so converting everything anew) must write the same bytes.
    def fresh() -> AttributionJoin:
        return AttributionJoin(window_ms=stream.window, allowed_lateness_ms=stream.lateness)

    pairs = list(zip(stream.events, stream.refs, strict=True))
    j = fresh()
    for i, (event, ref) in enumerate(pairs):
        feed(j, event, ref)
        twin = fresh()
        for twin_event, twin_ref in pairs[: i + 1]:
            feed(twin, twin_event, twin_ref)
        for uid in sorted(j.dirty_users() | twin.dirty_users()):
            assert orjson.dumps(j.export_user(uid)) == orjson.dumps(twin.export_user(uid))


def test_re_export_converts_each_entry_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for cls in (Impression, Click):
        original = cls.to_dict

        def counting(self: Any, _original: Any = original) -> dict[str, Any]:
            calls.append(self.impression_id)
            return _original(self)  # type: ignore[no-any-return]

        monkeypatch.setattr(cls, "to_dict", counting)
    # The lateness keeps every deadline ahead of the watermark: nothing finalizes here.
    j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=5_000)
    j.add_impression(imp("a", 0))
    j.add_click(click("w", 100), ref=7)
    first = j.export_user("u1")
    assert sorted(calls) == ["a", "w"]
    j.add_impression(imp("b", 200))
    j.add_click(click("a", 1_500))  # late: changes a's flag, not its impression
    second = j.export_user("u1")
    assert sorted(calls) == ["a", "b", "w"]
    assert first is not None and second is not None
    assert second["impressions"][0] == {"seq": 0, "imp": first["impressions"][0]["imp"],
                                        "late": True}
    assert [item["imp"]["impression_id"] for item in second["impressions"]] == ["a", "b"]
    assert second["clicks"] == first["clicks"]


@settings(max_examples=100, deadline=None)
@given(streams(max_impressions=15), st.data())
def test_to_dict_round_trip_at_any_point(stream: Stream, data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(stream.events)), label="split")
    j = AttributionJoin(
        window_ms=stream.window, allowed_lateness_ms=stream.lateness, tombstone_retention_ms=37
    )
    pairs = list(zip(stream.events, stream.refs, strict=True))
    for event, ref in pairs[:split]:
        feed(j, event, ref)
    state = j.to_dict()
    assert json_copy(state) == state  # JSON-ready
    back = AttributionJoin.from_dict(json_copy(state))
    assert back.to_dict() == state
    assert back.config() == j.config()
    assert back.watermark == j.watermark
    for event, ref in pairs[split:]:
        assert feed(back, event, ref) == feed(j, event, ref)
    assert back.finish() == j.finish()
    assert back.to_dict() == j.to_dict()


def test_round_trip_of_empty_and_finished_joins() -> None:
    j = AttributionJoin()
    state = j.to_dict()
    assert state["clock"]["watermark"] is None and state["users"] == []
    assert AttributionJoin.from_dict(json_copy(state)).watermark == float("-inf")
    j.add_impression(imp("a", 0))
    j.finish()
    back = AttributionJoin.from_dict(json_copy(j.to_dict()))
    assert back.watermark == float("inf")
    assert back.stats == j.stats


def test_restore_positive_tombstone_before_and_after_its_deadline() -> None:
    # A positive's tombstone waits in the heap until its deadline, then in the retention
    # queue; restore must put it back in the right one.
    j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100, tombstone_retention_ms=500)
    j.add_impression(imp("a", 0))
    j.add_click(click("a", 10))
    for ts in (500, 1_200, 1_601):
        j.add_impression(imp(f"t{ts}", ts))
        r = AttributionJoin.from_dict(j.to_dict())
        late_click = click("a", ts + 1)
        assert r.add_click(late_click) == j.add_click(late_click)
        probe = imp(f"p{ts}", 1_650)
        assert r.add_impression(probe) == j.add_impression(probe)
        assert r.to_dict() == j.to_dict()


def test_restore_without_clock_and_with_none_values() -> None:
    j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100)
    j.add_impression(imp("a", 0))
    j.add_click(click("b", 5), ref="r")
    r = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100)
    r.restore(None, [j.export_user("u1"), None])
    assert r.watermark == float("-inf")
    assert r.stats.pending_impressions == 1 and r.stats.pending_clicks == 1
    # New events get arrival numbers after the restored ones.
    r.add_impression(imp("c", 0))
    step = r.finish()
    assert [f.impression.impression_id for f in step.feedback] == ["a", "c"]
    assert step.orphans == [(click("b", 5), "r")]


def test_restore_replaces_existing_state() -> None:
    j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100)
    j.add_impression(imp("a", 0))
    j.restore(AttributionJoin(window_ms=1_000, allowed_lateness_ms=100).export_clock(), [])
    assert j.state_size() == 0 and j.stats.impressions == 0


def test_replayed_input_after_restore_is_deduplicated() -> None:
    # At-least-once: events after the last saved state are delivered again.
    j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100)
    events = [imp("a", 0), click("a", 10), imp("b", 20), click("b", 2_000)]
    for e in events:
        feed(j, e, None)
    r = AttributionJoin.from_dict(j.to_dict())
    for e in events:
        step = feed(r, e, None)
        assert not step.feedback
    assert r.stats.duplicate_impressions == 2 and r.stats.duplicate_clicks == 2


def test_idle_timer_is_not_persisted() -> None:
    j = AttributionJoin(window_ms=1_000, allowed_lateness_ms=100, idle_timeout_ms=5_000)
    j.add_impression(imp("a", 0), wall_ms=0)
    r = AttributionJoin.from_dict(j.to_dict())
    assert j.tick(100_000).feedback  # the original had been idle for 100 s
    assert not r.tick(100_000)  # the restored one starts its timer now
    assert r.tick(105_000).feedback


@pytest.mark.parametrize("part", ["state", "clock", "user"])
def test_unknown_versions_are_refused(part: str) -> None:
    j = AttributionJoin()
    j.add_impression(imp("a", 0))
    state = j.to_dict()
    if part == "state":
        state["v"] = 2
    elif part == "clock":
        state["clock"]["v"] = 2
    else:
        state["users"][0]["v"] = 2
    with pytest.raises(StateError, match="version"):
        AttributionJoin.from_dict(state)
