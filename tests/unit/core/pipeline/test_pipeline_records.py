"""`Pipeline` state as changelog records: the changed keys persisted after every batch are
the whole state, a pipeline rebuilt from them continues byte for byte, the ``monitor``
record does not grow with users, and evicted users come out as deletes."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.core.pipeline.test_pipeline import CONFIG, SCENARIO, serialized, whole_batch
from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import ConfigError, StateError
from worker.core.pipeline import InputBatch, Outputs, Pipeline, PipelineConfig
from worker.core.records.impression import Impression
from worker.sim.streamrec import generate

# Small caps, so that users are evicted from the posterior store and the policy's buffers
# (and come back) inside the stream.
EVICTING = replace(
    CONFIG,
    monitor=replace(CONFIG.monitor, posteriors={"max_users": 40}),
    policy=replace(CONFIG.policy, max_users=40),
)
CONFIGS = {"default": CONFIG, "evicting": EVICTING}


def json_copy(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


class Changelog:
    """A compacted changelog as the Kafka runtime keeps it: after every batch the changed
    keys' records are written (None deletes the key), through JSON, then marked
    persisted."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}

    def persist(self, pipe: Pipeline) -> list[str]:
        keys = pipe.changed_keys()
        for key in keys:
            value = pipe.export(key)
            if value is None:
                self.records.pop(key, None)
            else:
                self.records[key] = json_copy(value)
        pipe.mark_persisted()
        return keys


def drive(
    config: PipelineConfig, parts: list[InputBatch], drains: list[bool], rebuild_at: int | None
) -> tuple[dict[str, bytes], list[list[dict[str, Any]]]]:
    """Process ``parts`` (draining the posterior snapshots after the batches ``drains``
    flags), persisting after every batch; before batch ``rebuild_at`` the pipeline is
    replaced by one rebuilt from the changelog. After every batch the changelog must
    equal the whole state."""
    pipe = Pipeline(config)
    log = Changelog()
    log.persist(pipe)  # the config record, written at start-up
    outs: list[Outputs] = []
    drained: list[list[dict[str, Any]]] = []
    for i, (part, drain) in enumerate(zip([*parts, None], [*drains, False], strict=True)):
        if i == rebuild_at:
            pipe = Pipeline.from_records(json_copy(log.records))
            assert pipe.changed_keys() == []
            assert json_copy(pipe.records()) == log.records
        outs.append(pipe.finish() if part is None else pipe.process(part))
        if drain:
            drained.append(pipe.drain_posteriors())
        log.persist(pipe)
        # Nothing changed was left out, nothing deleted was kept.
        assert log.records == json_copy(pipe.records())
    return serialized(outs), drained


@functools.cache
def uninterrupted(name: str) -> dict[str, bytes]:
    return drive(CONFIGS[name], [whole_batch()], [False], None)[0]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_changelog_records_rebuild_a_pipeline_that_continues_exactly(
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(sorted(CONFIGS)), label="config")
    batch = whole_batch()
    cuts = data.draw(st.lists(st.integers(1, len(batch) - 1), min_size=1, max_size=12),
                     label="cuts")
    parts = batch.split(*sorted(set(cuts)))
    drains = data.draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)),
                       label="drains")
    # len(parts): rebuilt after the last batch, before finish().
    at = data.draw(st.integers(0, len(parts)), label="rebuild_at")
    outputs, drained = drive(CONFIGS[name], parts, drains, at)
    assert outputs == uninterrupted(name)
    # The posterior snapshots drained on the way depend on the drain points, not on the
    # rebuild: compare with the same drains, uninterrupted.
    assert drained == drive(CONFIGS[name], parts, drains, None)[1]


def test_rebuild_before_any_input_and_after_finish() -> None:
    batch = whole_batch()
    assert drive(CONFIG, [batch], [True], 0)[0] == uninterrupted("default")
    pipe = Pipeline(CONFIG)
    pipe.process(batch)
    pipe.finish()
    again = Pipeline.from_records(json_copy(pipe.records()))
    assert again.snapshot() == pipe.snapshot()
    assert again.finish().posteriors == pipe.finish().posteriors


def scenario_batch(n_users: int) -> InputBatch:
    decoder = InputDecoder()
    batch = InputBatch()
    scenario = replace(SCENARIO, n_events=6_000, n_users=n_users, malformed_share=0.0,
                       new_user_share=0.0)
    for n, raw in enumerate(e.raw for e in generate(scenario)):
        event = decoder.decode_replay_line(raw)
        if isinstance(event, Impression):
            batch.add_impression(event, n)
        else:
            batch.add_click(event, n)
    return batch


def test_the_monitor_record_does_not_grow_with_users() -> None:
    sizes = {}
    for n_users in (50, 2_000):
        pipe = Pipeline(CONFIG)
        pipe.process(scenario_batch(n_users))
        keys = pipe.changed_keys()
        sizes[n_users] = len(orjson.dumps(pipe.export("monitor")))
        posts = [k for k in keys if k.startswith("post:")]
        pusers = [k for k in keys if k.startswith("puser:")]
        # The users are in records of their own.
        assert len(posts) == pipe.monitor.posteriors.n_users > 0.8 * min(n_users, 1_000)
        assert len(pusers) == pipe.monitor.policy.user_count()
    assert sizes[2_000] < 1.2 * sizes[50], sizes


def test_scenario_stream_has_the_segments_and_arms_of_both_sizes() -> None:
    # The size comparison is fair: the same models, segments and arms either way.
    seen = []
    for n_users in (50, 2_000):
        events = [e for e in scenario_batch(n_users).events if isinstance(e, Impression)]
        seen.append(({e.segment for e in events}, {e.arm for e in events}))
    assert seen[0] == seen[1]


def test_evicted_users_are_deleted() -> None:
    pipe = Pipeline(EVICTING)
    log = Changelog()
    deleted: set[str] = set()
    for part in whole_batch().split(*range(500, len(whole_batch()), 500)):
        pipe.process(part)
        for key in log.persist(pipe):
            if pipe.export(key) is None:
                deleted.add(key)
    store = pipe.monitor.posteriors
    assert store.n_users == 40 and pipe.monitor.policy.user_count() == 40
    posts = {k for k in log.records if k.startswith("post:")}
    assert posts == {f"post:{uid}" for uid in store.users()}
    gone = {k for k in deleted if k.startswith("post:")} - posts
    assert len(gone) > 40  # deleted and not back (others came back: written again)
    # The policy keeps a user's record while it holds a buffer or a user version.
    assert any(k.startswith("puser:") for k in deleted)
    # Evicted pairs wait for their tombstones in records of their own until drained.
    pending = [k for k in log.records if k.startswith("pevict:")]
    assert pending and {k.removeprefix("pevict:") for k in pending} == set(
        store.evicted_users()
    )
    evicted = store.drain_evicted()
    assert {u for u, _ in evicted} == {k.removeprefix("pevict:") for k in pending}
    keys = log.persist(pipe)
    assert set(pending) <= set(keys)
    assert all(pipe.export(k) is None for k in pending)
    assert not [k for k in log.records if k.startswith("pevict:")]
    assert log.records == json_copy(pipe.records())


def test_one_event_changes_only_the_records_of_the_users_it_touches() -> None:
    pipe = Pipeline(CONFIG)
    batch = whole_batch()
    first, rest = batch.split(4_000)
    out = pipe.process(first)
    labelled = {fb.impression.user_id for fb in out.feedback}
    pipe.changed_keys()
    pipe.mark_persisted()
    assert pipe.changed_keys() == []
    seen = set()
    for one in rest.split(*range(1, 300))[:299]:
        out = pipe.process(one)
        keys = set(pipe.changed_keys())
        pipe.mark_persisted()
        seen |= keys
        # The monitor's per-user records: the posteriors of the users whose labels matured
        # in the batch; the policy's of users with labels so far (a label can release
        # another user's positive held for its cohort).
        touched = {fb.impression.user_id for fb in out.feedback}
        labelled |= touched
        allowed = {"clock", "monitor"}
        allowed |= {f"parm:{fb.impression.arm}" for fb in out.feedback}
        allowed |= {f"post:{uid}" for uid in touched}
        allowed |= {f"puser:{uid}" for uid in labelled}
        # The join's: the event's user, users whose clicks became orphans or whose
        # tombstones expired as the watermark moved.
        assert {k for k in keys if not k.startswith("join:")} <= allowed, keys - allowed
        if one.kinds == [2]:  # a rejected line changes nothing
            assert keys == set()
    assert {k.split(":")[0] for k in seen} == {"clock", "monitor", "join", "post", "puser",
                                               "parm"}


def test_an_idle_advance_that_moves_the_watermark_changes_the_clock() -> None:
    pipe = Pipeline(PipelineConfig(window_ms=60_000, allowed_lateness_ms=0,
                                   idle_timeout_ms=1_000))
    batch = InputBatch(wall_ms=10_000)
    batch.add_impression(Impression("i1", "u1", "it", 1_000, "m", 0.2, -1.386, "web",
                                    "news", None))
    pipe.process(batch)
    assert pipe.changed_keys() == ["clock", "config", "join:u1", "monitor"]
    pipe.mark_persisted()
    pipe.advance(10_500)  # within the idle timeout: nothing moves
    assert pipe.changed_keys() == []
    pipe.advance(20_000)  # the watermark follows the wall clock; no label is due yet
    assert pipe.changed_keys() == ["clock"]
    before = pipe.snapshot()
    assert Pipeline.from_records(before["records"]).snapshot() == before


def test_changes_after_changed_keys_survive_mark_persisted() -> None:
    """``mark_persisted`` forgets the keys ``changed_keys`` returned, not what changed
    after it: a runtime that processes more input before marking loses nothing."""
    first, second, third = whole_batch().split(2_000, 2_300)
    pipe = Pipeline(CONFIG)
    log = Changelog()
    pipe.process(first)
    keys = pipe.changed_keys()
    for key in keys:
        value = pipe.export(key)
        if value is not None:
            log.records[key] = json_copy(value)
    out = pipe.process(second)  # between changed_keys() and mark_persisted()
    pipe.mark_persisted()
    later = set(pipe.changed_keys())
    assert {"clock", "monitor"} <= later
    assert {f"post:{fb.impression.user_id}" for fb in out.feedback} <= later
    log.persist(pipe)
    assert log.records == json_copy(pipe.records())
    pipe.process(third)
    log.persist(pipe)
    assert log.records == json_copy(pipe.records())


def test_malformed_records_raise_state_error() -> None:
    pipe = Pipeline(CONFIG)
    pipe.process(whole_batch().split(300)[0])
    good = json_copy(pipe.records())
    user = next(k for k in good if k.startswith("post:"))
    for bad in (
        {},  # no config record
        {k: v for k, v in good.items() if k != "config"},
        {**good, "config": {**good["config"], "v": 7}},
        {**good, "config": {**good["config"], "window_ms": "soon"}},
        {**good, "clock": {**good["clock"], "v": 7}},
        {**good, "monitor": {**good["monitor"], "v": 7}},
        {**good, "nobody:u": {"v": 1}},
        {**good, user: {**good[user], "user_id": "someone else"}},
        {**good, user: {**good[user], "touch": -1}},
        {**good, "join:x": {"v": 1, "user_id": "y"}},
    ):
        with pytest.raises(StateError):
            Pipeline.from_records(bad)
    with pytest.raises(StateError):
        Pipeline.restore({"v": 1, "records": good})
    with pytest.raises(StateError):
        pipe.export("nobody:u")
    # Deletes are skipped, as a compacted changelog may still hold them.
    assert Pipeline.from_records({**good, "post:gone": None}).snapshot() == pipe.snapshot()


def test_config_round_trips_and_rejects_unknown_settings() -> None:
    assert PipelineConfig.from_dict(json_copy(EVICTING.to_dict())) == EVICTING
    with pytest.raises(ConfigError):
        PipelineConfig.from_dict({"window": 5})
