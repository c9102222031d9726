"""The streaming join agrees with the batch oracle on every stream within the lateness."""

from __future__ import annotations

from hypothesis import given, settings

from tests.unit.core.join.strategies import Stream, streams
from tests.unit.core.join.support import check_counters
from worker.core.join.attribution_join import AttributionJoin
from worker.core.records.feedback import Feedback
from worker.core.records.impression import Impression
from worker.sim.join_oracle import oracle_feedback, oracle_labels


@settings(max_examples=300, deadline=None)
@given(streams())
def test_stream_matches_the_oracle(stream: Stream) -> None:
    j = AttributionJoin(window_ms=stream.window, allowed_lateness_ms=stream.lateness)
    emitted: list[Feedback] = []
    orphans = []
    late = []
    arrived: dict[tuple[str, str], Impression] = {}
    labeled: set[tuple[str, str]] = set()
    for event, ref in zip(stream.events, stream.refs, strict=True):
        key = (event.user_id, event.impression_id)
        if isinstance(event, Impression):
            step = j.add_impression(event)
            arrived.setdefault(key, event)
        else:
            step = j.add_click(event, ref=ref)
        for fb in step.feedback:
            fb_key = (fb.impression.user_id, fb.impression.impression_id)
            if fb.label == 1:
                # Positives come out with the arrival that completed the pair.
                assert fb_key == key
            else:
                assert j.watermark > fb.impression.ts + stream.window
            assert fb_key not in labeled
            labeled.add(fb_key)
        emitted.extend(step.feedback)
        orphans.extend(step.orphans)
        late.extend(step.late_clicks)
        # Nothing matures late: every impression past its deadline has its label.
        for k, i in arrived.items():
            assert k in labeled or i.ts + stream.window >= j.watermark
        check_counters(j)
    final = j.finish()
    emitted.extend(final.feedback)
    orphans.extend(final.orphans)
    check_counters(j)

    # Exactly one feedback per distinct impression, equal to the oracle's.
    keys = [(f.impression.user_id, f.impression.impression_id) for f in emitted]
    assert len(keys) == len(set(keys))
    assert set(emitted) == oracle_feedback(stream.events, stream.window)
    assert {k: f.label for k, f in zip(keys, emitted, strict=True)} == oracle_labels(
        stream.events, stream.window
    )

    # No state left, counters consistent with the stream.
    s = j.stats
    assert (s.pending_impressions, s.pending_clicks, s.tombstones, j.state_size()) == (0, 0, 0, 0)
    impressions = [e for e in stream.events if isinstance(e, Impression)]
    clicks = [e for e in stream.events if not isinstance(e, Impression)]
    unique = {(e.user_id, e.impression_id) for e in impressions}
    assert s.feedback_positive + s.feedback_negative == len(unique) == len(emitted)
    assert s.duplicate_impressions == len(impressions) - len(unique)
    assert s.late_impressions == 0
    click_keys = {(c.user_id, c.impression_id) for c in clicks}
    assert s.duplicate_clicks == len(clicks) - len(click_keys)
    # Orphans are exactly the clicks without an impression, each once, with its ref.
    assert sorted((c.user_id, c.impression_id) for c, _ in orphans) == sorted(click_keys - unique)
    first_ref: dict[object, object] = {}
    for e, r in zip(stream.events, stream.refs, strict=True):
        first_ref.setdefault(e, r)
    for c, ref in orphans:  # the ref of the first arrival of that very click
        assert ref == first_ref[c]
    # Late clicks: once per impression whose click is beyond the window.
    first = {f"{i.user_id}/{i.impression_id}": i.ts for i in reversed(impressions)}
    late_keys = {
        (c.user_id, c.impression_id)
        for c in clicks
        if f"{c.user_id}/{c.impression_id}" in first
        and c.ts - first[f"{c.user_id}/{c.impression_id}"] > stream.window
    }
    assert sorted((c.user_id, c.impression_id) for c in late) == sorted(late_keys)
    assert s.late_clicks == len(late_keys) and s.orphan_clicks == len(orphans)


@settings(max_examples=100, deadline=None)
@given(streams(max_impressions=12))
def test_output_is_a_function_of_the_arrival_order(stream: Stream) -> None:
    def run() -> list[object]:
        j = AttributionJoin(window_ms=stream.window, allowed_lateness_ms=stream.lateness)
        out: list[object] = []
        for event, ref in zip(stream.events, stream.refs, strict=True):
            if isinstance(event, Impression):
                out.append(j.add_impression(event))
            else:
                out.append(j.add_click(event, ref=ref))
        out.append(j.finish())
        out.append(j.stats)
        return out

    assert run() == run()
