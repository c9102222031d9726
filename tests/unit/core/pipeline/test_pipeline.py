"""`Pipeline`: batch cuts never change the outputs; snapshot/restore continues exactly;
changed keys name what changed (the changelog records: ``test_pipeline_records``)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.codec.input_decoder import InputDecoder
from worker.core.errors import ConfigError, InvalidInputError, StateError
from worker.core.pipeline import (
    InputBatch,
    MonitorConfig,
    Outputs,
    Pipeline,
    PipelineConfig,
)
from worker.core.policy import PolicyConfig
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate

WINDOW_MS = 600_000
# A drifting, corrupted stream with a short refit cadence: refits, drift alarms, drift
# refits, orphans, duplicates and rejected lines all happen inside it, so a cut can land on
# every kind of event that matters.
SCENARIO = Scenario(
    n_events=5_000,
    n_users=200,
    n_items=100,
    seed=3,
    events_per_second=5,
    drift_at_event=2_000,
    drift_temperature=2.0,
    duplicate_share=0.03,
    reorder_within_ms=20_000,
    orphan_click_share=0.01,
    malformed_share=0.01,
    attribution_window_ms=WINDOW_MS,
)
CONFIG = PipelineConfig(
    window_ms=WINDOW_MS,
    allowed_lateness_ms=30_000,
    monitor=MonitorConfig(check_every=50),
    policy=PolicyConfig(recalibrate_every=300),
)


@functools.cache
def whole_batch() -> InputBatch:
    decoder = InputDecoder()
    batch = InputBatch()
    for n, raw in enumerate(e.raw for e in generate(SCENARIO)):
        try:
            event = decoder.decode_replay_line(raw)
        except InvalidInputError as exc:
            batch.add_rejected(n, None, exc.reason, str(exc))
            continue
        if hasattr(event, "score"):
            batch.add_impression(event, n)
        else:
            batch.add_click(event, n)
    return batch


def serialized(outs: list[Outputs]) -> dict[str, bytes]:
    """Every output stream as bytes, in emission order."""
    streams: dict[str, list[Any]] = {
        "feedback": [], "dead_letters": [], "calibrators": [], "alerts": [],
        "tier_changes": [], "posteriors": [],
    }
    for out in outs:
        streams["feedback"] += [fb.to_dict() for fb in out.feedback]
        streams["dead_letters"] += [list(d) for d in out.dead_letters]
        for name in ("calibrators", "alerts", "tier_changes", "posteriors"):
            streams[name] += getattr(out, name)
    return {name: orjson.dumps(items) for name, items in streams.items()}


def run(batches: list[InputBatch]) -> dict[str, bytes]:
    pipe = Pipeline(CONFIG)
    outs = [pipe.process(b) for b in batches]
    outs.append(pipe.finish())
    return serialized(outs)


@functools.cache
def reference() -> dict[str, bytes]:
    return run([whole_batch()])


def test_the_stream_exercises_every_cut_point_that_matters() -> None:
    ref = {name: orjson.loads(data) for name, data in reference().items()}
    reasons = {msg["reason"] for msg in ref["calibrators"]}
    kinds = {(a["kind"], a["status"]) for a in ref["alerts"]}
    assert {"bootstrap", "scheduled", "drift"} <= reasons
    assert ("calibration_drift", "firing") in kinds
    assert {d[2] for d in ref["dead_letters"]} >= {"orphan_click", "invalid_json", "schema"}
    assert len(ref["feedback"]) > 4_000 and ref["tier_changes"] and ref["posteriors"]


@pytest.mark.parametrize("size", [1, 7, 1_000])
def test_fixed_batch_sizes_give_byte_identical_outputs(size: int) -> None:
    batch = whole_batch()
    assert run(batch.split(*range(size, len(batch), size))) == reference()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_cuts_give_byte_identical_outputs(data: st.DataObject) -> None:
    batch = whole_batch()
    cuts = data.draw(st.lists(st.integers(0, len(batch)), max_size=60))
    assert run(batch.split(*cuts)) == reference()


def test_snapshot_and_restore_mid_stream_continue_exactly() -> None:
    first, second, third = whole_batch().split(2_100, 4_000)
    pipe = Pipeline(CONFIG)
    outs = [pipe.process(first)]
    state = orjson.loads(orjson.dumps(pipe.snapshot()))  # through JSON, as persisted
    restored = Pipeline.restore(state)
    outs += [restored.process(second)]
    state = orjson.loads(orjson.dumps(restored.snapshot()))
    again = Pipeline.restore(state)
    outs += [again.process(third), again.finish()]
    assert serialized(outs) == reference()


def test_changed_keys_name_the_users_touched_since_the_last_persist() -> None:
    pipe = Pipeline(CONFIG)
    assert pipe.changed_keys() == ["clock", "config", "monitor"]  # never written yet
    assert pipe.changed_keys() == ["clock", "config", "monitor"]  # a read
    pipe.mark_persisted()
    assert pipe.changed_keys() == []
    first, second, third = whole_batch().split(50, 51)
    pipe.process(first)
    users = {e.user_id for e in first.events if not isinstance(e, tuple)}
    keys = pipe.changed_keys()
    assert {"clock", "monitor"} <= set(keys)
    assert {k.removeprefix("join:") for k in keys if k.startswith("join:")} <= users
    assert any(k.startswith("join:") for k in keys)
    for key in keys:
        record = pipe.export(key)
        assert record is None or orjson.loads(orjson.dumps(record)) == record
    pipe.mark_persisted()
    assert pipe.changed_keys() == []
    pipe.process(second)
    assert pipe.changed_keys() != []
    pipe.process(third)
    pipe.snapshot()  # persists everything: nothing is left to write
    assert pipe.changed_keys() == []


def test_rejected_inputs_come_back_in_input_order_with_their_refs() -> None:
    batch = whole_batch()
    out = Pipeline(CONFIG).process(batch)
    rejected = [ref for kind, ref in zip(batch.kinds, batch.refs, strict=True) if kind == 2]
    echoed = [d.ref for d in out.dead_letters if d.reason in ("invalid_json", "schema",
                                                              "score_range")]
    assert echoed == rejected and rejected


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        Pipeline("not a config")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Pipeline(replace(CONFIG, window_ms=0))
    with pytest.raises(StateError):
        Pipeline.restore({"v": 99})
