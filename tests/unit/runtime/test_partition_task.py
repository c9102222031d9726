"""`PartitionTask`: what one partition commits per transaction, and that a task rebuilt from
the committed state records continues exactly (the Kafka runtime's crash recovery)."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest

from worker.core.codec.input_decoder import InputDecoder
from worker.core.pipeline import MonitorConfig, Pipeline, PipelineConfig
from worker.core.policy import PolicyConfig
from worker.runtime.partition_task import OutMessage, PartitionTask, Transaction
from worker.runtime.topics import TopicNames
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate

NAMES = TopicNames.from_prefix("t.")
WINDOW_MS = 600_000
#: Arrival wall clock: after every event time of the scenario (no input is future_ts).
WALL_MS = 1_900_000_000_000
SCENARIO = Scenario(
    n_events=3_000, n_users=150, n_items=100, seed=5, events_per_second=5,
    drift_at_event=1_500, drift_temperature=2.0, duplicate_share=0.03,
    reorder_within_ms=20_000, orphan_click_share=0.01, malformed_share=0.01,
    attribution_window_ms=WINDOW_MS,
)
CONFIG = PipelineConfig(
    window_ms=WINDOW_MS, allowed_lateness_ms=30_000,
    monitor=MonitorConfig(check_every=50), policy=PolicyConfig(recalibrate_every=300),
)


@functools.cache
def inputs() -> list[tuple[str, int, bytes | None, bytes]]:
    """(source, offset, key, raw) in arrival order; malformed lines go to the clicks topic."""
    out = []
    offsets = {"impressions": 0, "clicks": 0}
    for event in generate(SCENARIO):
        try:
            obj = orjson.loads(event.raw)
        except orjson.JSONDecodeError:
            obj = None
        source = "impressions" if isinstance(obj, dict) and obj.get("type") == "impression" else (
            "clicks")
        user = obj.get("user_id") if isinstance(obj, dict) else None
        key = user.encode() if isinstance(user, str) else b"u0"
        out.append((source, offsets[source], key, event.raw))
        offsets[source] += 1
    return out


def new_task(records: dict[str, Any] | None = None) -> PartitionTask:
    return PartitionTask.from_records(3, records or {}, NAMES, InputDecoder(), CONFIG)


def run(cuts: set[int]) -> tuple[list[OutMessage], list[Transaction]]:
    """Every input offered and stepped one by one (the other topic read to its end); at each
    cut the transaction is taken, its state applied to a changelog dict, and the task is
    rebuilt from that dict."""
    task = new_task()
    changelog: dict[str, Any] = {}
    messages: list[OutMessage] = []
    txns: list[Transaction] = []

    def commit() -> None:
        txn = task.take_transaction()
        txns.append(txn)
        messages.extend(txn.messages)
        for record in txn.state:
            assert record.topic == NAMES.state and record.partition == 3
            key = record.key.decode()  # type: ignore[union-attr]
            if record.value is None:
                changelog.pop(key, None)
            else:
                changelog[key] = orjson.loads(record.value)

    for n, (source, offset, key, raw) in enumerate(inputs()):
        if n in cuts:
            commit()
            task = new_task(changelog)
        task.offer(source, offset, key, raw, received_ms=WALL_MS)
        task.step(0, backlog=lambda _source: False)
    commit()
    return messages, txns


def by_topic(messages: list[OutMessage]) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    out: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
    for m in messages:
        out.setdefault(m.topic, []).append((m.key, m.value))
    return out


@functools.cache
def reference() -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    return by_topic(run(set())[0])


def test_the_stream_produces_every_kind_of_output() -> None:
    ref = reference()
    assert {NAMES.feedback, NAMES.dlq, NAMES.calibrators, NAMES.alerts} <= set(ref)
    reasons = {orjson.loads(v)["reason"] for _k, v in ref[NAMES.dlq]}  # type: ignore[arg-type]
    assert {"orphan_click", "invalid_json"} <= reasons


@pytest.mark.parametrize("cuts", [{1}, {500, 1_700}, set(range(97, 4_000, 211))])
def test_a_task_rebuilt_from_committed_records_continues_exactly(cuts: set[int]) -> None:
    assert by_topic(run(cuts)[0]) == reference()


def test_offsets_are_one_past_the_last_processed_input() -> None:
    _messages, txns = run({10})
    first = txns[0].offsets
    sources = [source for source, _o, _k, _r in inputs()[:10]]
    assert first == {s: sources.count(s) for s in set(sources)}


def test_inputs_waiting_for_the_other_topic_are_not_committed() -> None:
    task = new_task()
    imp = (b'{"impression_id":"i1","user_id":"u1","item_id":"x","ts":100,"score":0.2}')
    task.offer("impressions", 0, b"u1", imp, 0)
    # Clicks may still be unread at the broker: the impression waits, and is not committed.
    task.step(0, backlog=lambda source: source == "clicks")
    assert task.buffered == 1 and task.waiting_for() == "clicks"
    assert task.take_transaction().offsets == {}
    task.step(10, backlog=lambda _source: False)
    assert task.take_transaction().offsets == {"impressions": 1}


def test_null_values_and_poisoned_inputs_are_dead_lettered_with_their_topic() -> None:
    task = new_task()
    task.poisoned[("impressions", 7)] = "processing raised KeyError: 'x' (3 attempts)"
    task.offer("clicks", 4, b"u1", None, 0)
    task.offer("impressions", 7, b"u1", b'{"impression_id":"i1","user_id":"u1","item_id":"x",'
               b'"ts":100,"score":0.2}', 0)
    task.step(0, backlog=lambda _source: False)
    letters = [orjson.loads(m.value) for m in task.take_transaction().messages]  # type: ignore[arg-type]
    assert sorted((d["source_topic"], d["offset"], d["reason"]) for d in letters) == [
        ("t.clicks", 4, "null_value"), ("t.impressions", 7, "processing_error")]
    assert any("KeyError" in d["error"] for d in letters)


def test_only_the_writer_partition_publishes_model_wide_versions_and_alerts() -> None:
    def topics_of(shared: bool) -> dict[str, int]:
        task = PartitionTask(3, Pipeline(CONFIG), NAMES, InputDecoder(), shared_scopes=shared)
        for source, offset, key, raw in inputs():
            task.offer(source, offset, key, raw, received_ms=WALL_MS)
            task.step(0, backlog=lambda _source: False)
        out: dict[str, int] = {}
        for m in task.take_transaction().messages:
            out[m.topic] = out.get(m.topic, 0) + 1
            if m.topic == NAMES.calibrators and not shared:
                assert m.key is not None and b"|user:" in m.key
        return out

    writer, other = topics_of(True), topics_of(False)
    assert writer[NAMES.alerts] > 0 and NAMES.alerts not in other
    assert writer[NAMES.calibrators] > other.get(NAMES.calibrators, 0)
    assert writer[NAMES.feedback] == other[NAMES.feedback]


def test_the_input_positions_go_into_the_state_and_come_back_with_it() -> None:
    """Every transaction that moves an input writes the partition's positions of both inputs
    (the changelog record ``input_positions``), so a restore can resume from the positions
    its state was made at, whatever the group's committed offsets say."""
    from worker.runtime.partition_task import POSITIONS_KEY

    task = new_task()
    task.start_at({"impressions": 40, "clicks": 7})
    imp = b'{"impression_id":"i1","user_id":"u1","item_id":"x","ts":100,"score":0.2}'
    task.offer("impressions", 40, b"u1", imp, 0)
    task.step(10, backlog=lambda _source: False)
    txn = task.take_transaction()
    saved = {m.key.decode(): m.value for m in txn.state}
    assert orjson.loads(saved[POSITIONS_KEY]) == {"impressions": 41, "clicks": 7}
    # No input moved: no positions record (nothing changed).
    assert POSITIONS_KEY not in {m.key.decode() for m in task.take_transaction().state}
    records = {key: orjson.loads(value) for key, value in saved.items() if value is not None}
    restored = PartitionTask.from_records(3, records, NAMES, InputDecoder(), CONFIG)
    assert restored.saved_positions == {"impressions": 41, "clicks": 7}
    assert restored.pipeline.records() == task.pipeline.records()
    assert new_task().saved_positions is None


def test_a_transaction_keeps_its_messages_at_their_own_size() -> None:
    # orjson's output sits in an over-allocated buffer (~8 KB for a 300-byte feedback
    # message); a transaction keeps its messages until the commit, so a step that matures
    # many labels at once held ~25x their size (1.9 GB peak RSS on a 100k-impression bench).
    import tracemalloc

    task = new_task()
    for source, offset, key, raw in inputs():
        task.offer(source, offset, key, raw, received_ms=WALL_MS)
    tracemalloc.start()
    try:
        task.step(0, backlog=lambda _source: False)
        txn = task.take_transaction()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # What the task itself allocated for the messages (the encoding, the message objects),
    # not the pipeline's state: allocations whose innermost frame is in these two files.
    encoding = snapshot.filter_traces([
        tracemalloc.Filter(True, "*/runtime/partition_task.py"),
        tracemalloc.Filter(True, "*/codec/output_encoder.py"),
    ])
    kept = sum(stat.size for stat in encoding.statistics("filename"))
    values = [m.value for m in (*txn.messages, *txn.state) if m.value is not None]
    assert len(txn.messages) > 2_000
    text = sum(len(v) for v in values)
    assert kept < 3 * text, (kept, text)
