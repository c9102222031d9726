"""JoinRouter: the Kafka runtime's routing agrees with replay, and redelivery is idempotent."""

from __future__ import annotations

import base64
import random
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from worker.core.pipeline import PipelineConfig
from worker.core.records.feedback import Feedback
from worker.core.records.timefmt import iso_utc_ms
from worker.replay import Replay
from worker.runtime.join_router import JoinRouter, Outcome, RouterConfig
from worker.runtime.merge import InputEvent
from worker.runtime.state import group_user_records
from worker.runtime.topics import TopicNames

NAMES = TopicNames("imp", "clk", "fb", "dlq")
W = 10_000
L = 2_000
FLUSH = "zz-flush"


def make_router(**kw: Any) -> JoinRouter:
    config = RouterConfig(window_ms=W, allowed_lateness_ms=L, **kw)
    return JoinRouter(config, NAMES)


def stream(seed: int, n: int = 400) -> list[tuple[str, dict[str, Any]]]:
    """(source, object) in arrival order: jitter < L, duplicates, orphans, skew, late clicks."""
    rng = random.Random(seed)
    timed: list[tuple[float, int, str, dict[str, Any]]] = []
    for i in range(n):
        user = f"u{rng.randrange(12)}"
        ts = 1_000_000 + i * 100
        imp = {"impression_id": f"i{i}", "user_id": user, "item_id": "x", "ts": ts,
               "score": round(rng.random(), 4)}
        timed.append((ts + rng.uniform(0, L / 2), len(timed), "impressions", imp))
        u = rng.random()
        if u < 0.35:
            c_ts = ts + rng.randrange(-3_000, W) if u < 0.3 else ts + W + rng.randrange(1, W)
            click = {"impression_id": f"i{i}", "user_id": user, "ts": c_ts}
            timed.append((c_ts + rng.uniform(0, L / 2), len(timed), "clicks", click))
        if rng.random() < 0.03:
            ghost = {"impression_id": f"g{i}", "user_id": user, "ts": ts}
            timed.append((ts, len(timed), "clicks", ghost))
    for item in list(timed):
        if rng.random() < 0.05:
            timed.append((item[0] + rng.uniform(0, 500), len(timed), item[2], item[3]))
    timed.sort(key=lambda t: (t[0], t[1]))
    out = [(source, obj) for _, _, source, obj in timed]
    last = max(obj["ts"] for _, obj in out)
    out.append(("impressions", {"impression_id": "flush", "user_id": FLUSH, "item_id": "x",
                                "ts": last + W + L + 1_000, "score": 0.5}))
    return out


def as_events(items: list[tuple[str, dict[str, Any]]], partition: int = 0) -> list[InputEvent]:
    offsets: Counter[str] = Counter()
    out = []
    for source, obj in items:
        raw = orjson.dumps(obj)
        out.append(InputEvent(source, NAMES.input_topic(source), partition, offsets[source],
                              obj["user_id"].encode(), raw, 0))
        offsets[source] += 1
    return out


class Table:
    """What the changelog would hold: the users' records and the clock."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.clock: dict[str, Any] | None = None

    def apply(self, outcome: Outcome) -> None:
        for key, record in outcome.writes.items():
            if record is None:
                self.users.pop(key, None)
            else:
                self.users[key] = record


def run(router: JoinRouter, events: list[InputEvent], table: Table | None = None,
        partition: int = 0) -> list[Outcome]:
    """One message at a time, in arrival order (draining: no alignment waits)."""
    outcomes = []
    for ev in events:
        ev.decoded = ev.error = None
        router.offer(ev)
        out = router.process(partition, router.ready(partition, 0, drain=True), wall_ms=0)
        if table is not None:
            table.apply(out)
        outcomes.append(out)
    return outcomes


def feedback_of(outcomes: list[Outcome]) -> list[Feedback]:
    return [fb for out in outcomes for fb in out.feedback
            if fb.impression.user_id != FLUSH]


def orphans_of(outcomes: list[Outcome]) -> list[tuple[str, str, bytes]]:
    return [(letter.key, orjson.loads(letter.payload)["impression_id"], letter.payload)
            for out in outcomes for _k, letter in out.dead_letters
            if letter.reason == "orphan_click"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_agrees_with_replay_on_the_same_sequence(seed: int) -> None:
    items = stream(seed)
    router = make_router()
    router.assign(0, None, [])
    outcomes = run(router, as_events(items))

    replay_out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    replay = Replay(PipelineConfig(window_ms=W, allowed_lateness_ms=L),
                    lambda name, obj: replay_out[name].append(obj))
    for n, (source, obj) in enumerate(items[:-1]):  # replay's finish() replaces the flush
        kind = "impression" if source == "impressions" else "click"
        replay.process_line(orjson.dumps({**obj, "type": kind}), n)
    replay.finish()

    got = sorted(orjson.dumps(fb.to_dict(), option=orjson.OPT_SORT_KEYS)
                 for fb in feedback_of(outcomes))
    want = sorted(orjson.dumps(fb, option=orjson.OPT_SORT_KEYS) for fb in replay_out["feedback"])
    assert got == want
    assert len(got) == len({(fb.impression.user_id, fb.impression.impression_id)
                            for fb in feedback_of(outcomes)})
    orphans = orphans_of(outcomes)
    assert sorted((k, i) for k, i, _ in orphans) == sorted(
        (d["key"], orjson.loads(base64.b64decode(d["payload_b64"]))["impression_id"])
        for d in replay_out["dlq"]
    )
    assert orphans, "the stream must exercise orphan clicks"


# One flush event that jumps the clock by many windows: the clock guard would hold it, so
# these tests about what a jump does turn the guard's bound up out of the way.
NO_GUARD = 2**53


def test_orphan_dead_letter_carries_the_original_message() -> None:
    router = make_router(max_clock_jump_ms=NO_GUARD)
    router.assign(3, None, [])
    raw = b'{"user_id": "u1", "impression_id": "ghost", "ts": 1000, "extra": true}'
    router.offer(InputEvent("clicks", "clk", 3, 41, b"u1", raw, 0))
    router.process(3, router.ready(3, 0, drain=True), wall_ms=0)
    flush = b'{"impression_id":"f","user_id":"u2","item_id":"x","ts":100000,"score":0.5}'
    router.offer(InputEvent("impressions", "imp", 3, 0, b"u2", flush, 0))
    out = router.process(3, router.ready(3, 0, drain=True), wall_ms=5_000)
    [(key, letter)] = out.dead_letters
    assert key == b"u1"
    assert (letter.source_topic, letter.partition, letter.offset, letter.key, letter.reason) == (
        "clk", 3, 41, "u1", "orphan_click")
    assert letter.payload == raw and letter.received_at == iso_utc_ms(5_000)


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_restart_from_persisted_state_loses_and_repeats_nothing(seed: int) -> None:
    """Crash at a random point, restore from the table, redeliver from an earlier offset."""
    rng = random.Random(seed)
    items = stream(seed)
    reference = run_ok(items)

    events = as_events(items)
    crash_at = rng.randrange(len(events) // 4, len(events) * 3 // 4)
    committed = rng.randrange(crash_at // 2, crash_at)  # messages [committed, crash_at) redeliver
    table = Table()
    router = make_router()
    router.assign(0, None, [])
    before = run(router, events[:crash_at], table)
    # A clock written a while before the crash: restoring an older clock must be safe.
    replay_router = make_router()
    replay_router.assign(0, None, [])
    run(replay_router, as_events(items)[:committed])
    clock_at_commit = replay_router.clock_record(0)["clock"]

    restarted = make_router()
    grouped = group_user_records(table.users.items(), [0])
    restarted.assign(0, clock_at_commit, grouped[0])
    after = run(restarted, as_events(items)[committed:], table)

    redelivered = sum(n for out in after for (src, what), n in out.events.items()
                      if what == "redelivered")
    assert redelivered > 0
    fb = feedback_of(before) + feedback_of(after)
    keys = [(f.impression.user_id, f.impression.impression_id) for f in fb]
    assert len(keys) == len(set(keys)), "no feedback twice"
    assert sorted(map(_fb_bytes, fb)) == sorted(map(_fb_bytes, reference))
    assert sorted(orphans_of(before) + orphans_of(after)) == sorted(orphans_of_ok(items))


def run_ok(items: list[tuple[str, dict[str, Any]]]) -> list[Feedback]:
    router = make_router()
    router.assign(0, None, [])
    return feedback_of(run(router, as_events(items)))


def orphans_of_ok(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, bytes]]:
    router = make_router()
    router.assign(0, None, [])
    return orphans_of(run(router, as_events(items)))


def _fb_bytes(fb: Feedback) -> bytes:
    return orjson.dumps(fb.to_dict(), option=orjson.OPT_SORT_KEYS)


def test_lost_state_writes_repeat_outputs_but_lose_none() -> None:
    """The last step's records never reached Kafka: its outputs come again, identical."""
    items = stream(9)
    reference = run_ok(items)
    events = as_events(items)
    table = Table()
    router = make_router()
    router.assign(0, None, [])
    cut = len(events) // 2
    before = run(router, events[:cut])  # outputs sent...
    for out in before[:-5]:
        table.apply(out)  # ...but the records of the last 5 steps were lost
    restarted = make_router()
    restarted.assign(0, None, group_user_records(table.users.items(), [0])[0])
    after = run(restarted, as_events(items)[cut - 5:], table)
    fb = feedback_of(before) + feedback_of(after)
    assert set(map(_fb_bytes, fb)) == set(map(_fb_bytes, reference))
    assert len(fb) >= len(reference)


def test_dead_letters_for_undecodable_input() -> None:
    router = make_router(max_message_bytes=200)
    router.assign(1, None, [])
    good = {"impression_id": "i", "user_id": "u1", "item_id": "x", "ts": 5, "score": 0.5}
    cases = [
        (b"u1", b"{oops", "invalid_json"),
        (b"u1", orjson.dumps({**good, "score": 7}), "score_range"),
        (b"u1", orjson.dumps({k: v for k, v in good.items() if k != "ts"}), "schema"),
        (b"u1", orjson.dumps({**good, "context": {"p": "x" * 300}}), "too_large"),
        (b"other", orjson.dumps(good), "key_mismatch"),
        (None, orjson.dumps(good), "key_mismatch"),
        (b"\xff\xfe", orjson.dumps(good), "key_mismatch"),
    ]
    for offset, (key, raw, _) in enumerate(cases):
        router.offer(InputEvent("impressions", "imp", 1, offset, key, raw, 1_000))
    out = router.process(1, router.ready(1, 0, drain=True), wall_ms=2_000)
    assert [letter.reason for _k, letter in out.dead_letters] == [c[2] for c in cases]
    for (key, letter), (orig_key, raw, _) in zip(out.dead_letters, cases, strict=True):
        assert key == orig_key
        assert letter.payload == raw and letter.source_topic == "imp"
        assert letter.partition == 1 and letter.received_at == iso_utc_ms(2_000)
    assert out.dead_letters[-1][1].key == "\\xff\\xfe"
    assert out.dead_letters[-2][1].key is None and "no key" in out.dead_letters[-2][1].error
    assert out.events == Counter({("impressions", "dead_letter"): len(cases)})
    assert out.writes == {} and out.feedback == []


def test_huge_payloads_are_cut_in_the_dead_letter() -> None:
    from worker.runtime.join_router import DLQ_MAX_PAYLOAD_BYTES

    router = make_router(max_message_bytes=65_536)
    router.assign(0, None, [])
    raw = b"x" * (DLQ_MAX_PAYLOAD_BYTES + 10)
    router.offer(InputEvent("clicks", "clk", 0, 9, b"u", raw, 0))
    out = router.process(0, router.ready(0, 0, drain=True), wall_ms=0)
    [(_key, letter)] = out.dead_letters
    assert letter.reason == "too_large" and letter.payload == raw[:DLQ_MAX_PAYLOAD_BYTES]
    assert f"of {len(raw)} bytes" in letter.error and letter.offset == 9


def test_a_poison_key_and_value_make_a_letter_under_the_producer_limit() -> None:
    """Issue 9: a 600 KB key and a 1 MB value once made a 1.2 MB letter (key written twice),
    refused by the producer: the worker died on it at every restart."""
    import hashlib

    router = make_router(max_message_bytes=65_536)
    router.assign(0, None, [])
    key = b"k" * 600_000
    raw = b"{" + b"x" * 1_000_000
    router.offer(InputEvent("clicks", "clk", 0, 5, key, raw, 0))
    out = router.process(0, router.ready(0, 0, drain=True), wall_ms=0)
    [(kafka_key, letter)] = out.dead_letters
    assert kafka_key is not None
    value = orjson.dumps(letter.to_dict())
    assert len(value) + len(kafka_key) < 1_000_000  # the producer's default limit is 1 MB
    assert letter.truncated == {
        "payload_bytes": len(raw), "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "key_chars": len(key), "key_sha256": hashlib.sha256(key).hexdigest(),
    }
    assert letter.reason == "too_large" and letter.offset == 5
    assert raw.startswith(letter.payload) and key.decode().startswith(letter.key)
    from tests.unit.core.codec.schema_support import validator

    assert list(validator("dead_letter").iter_errors(letter.to_dict())) == []


def test_future_timestamps_are_measured_against_the_arrival_wall_clock() -> None:
    router = make_router(max_future_ms=1_000)
    router.assign(0, None, [])
    raw = orjson.dumps({"impression_id": "i", "user_id": "u", "ts": 5_000})
    router.offer(InputEvent("clicks", "clk", 0, 0, b"u", raw, received_ms=3_000))
    router.offer(InputEvent("clicks", "clk", 0, 1, b"u", raw, received_ms=4_000))
    out = router.process(0, router.ready(0, 0, drain=True), wall_ms=9_000)
    assert [letter.reason for _k, letter in out.dead_letters] == ["future_ts"]


def test_late_impression_is_dead_lettered_under_its_user_key() -> None:
    router = make_router()
    router.assign(0, None, [])
    first = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": 100_000, "score": 0.1}
    late = {**first, "impression_id": "b", "ts": 1_000}
    run(router, as_events([("impressions", first), ("impressions", late)]))
    router.offer(InputEvent("impressions", "imp", 0, 2, b"u", orjson.dumps(late), 0))
    out = router.process(0, router.ready(0, 0, drain=True), wall_ms=0)
    [(key, letter)] = out.dead_letters
    assert (key, letter.reason, letter.key) == (b"u", "late_impression", "u")


def test_redelivered_message_is_skipped() -> None:
    router = make_router()
    router.assign(0, None, [])
    imp = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": 1, "score": 0.1}
    events = as_events([("impressions", imp), ("clicks", {"impression_id": "a",
                                                           "user_id": "u", "ts": 2})])
    first = run(router, events)
    assert [fb.label for fb in feedback_of(first)] == [1]
    again = run(router, as_events([("impressions", imp), ("clicks", {
        "impression_id": "a", "user_id": "u", "ts": 2})]))
    assert feedback_of(again) == []
    assert sum(again[0].events.values()) == 1 and again[0].events[("impressions",
                                                                   "redelivered")] == 1
    assert again[1].events[("clicks", "redelivered")] == 1


def test_records_carry_partition_offsets_and_the_join_state() -> None:
    router = make_router()
    router.assign(2, None, [])
    imp = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": 1, "score": 0.1}
    [out] = run(router, as_events([("impressions", imp)], partition=2), partition=2)
    record = out.writes["u"]
    assert record is not None
    assert (record["v"], record["p"], record["o"]) == (1, 2, [0, -1])
    assert record["s"]["user_id"] == "u" and len(record["s"]["impressions"]) == 1
    restored = make_router()
    restored.assign(2, None, [record])
    assert restored.state_size(2) == 1


def test_user_without_state_left_gets_its_record_deleted() -> None:
    router = make_router(max_clock_jump_ms=NO_GUARD)
    router.assign(0, None, [])
    imp = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": 1, "score": 0.1}
    later = {"impression_id": "b", "user_id": "v", "item_id": "x", "ts": 10 * W, "score": 0.1}
    outs = run(router, as_events([("impressions", imp), ("impressions", later)]))
    # Impression a matured (negative) and its tombstone expired: u has no state left.
    assert outs[1].writes["u"] is None
    assert [fb.label for fb in outs[1].feedback] == [0]
    assert list(outs[1].writes) == ["u", "v"]  # the message's own user is written last


def test_idle_tick_matures_negatives_on_wall_time() -> None:
    router = JoinRouter(RouterConfig(window_ms=1_000, allowed_lateness_ms=0,
                                     idle_timeout_ms=100), NAMES)
    router.assign(0, None, [])
    imp = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": 0, "score": 0.1}
    router.offer(as_events([("impressions", imp)])[0])
    router.process(0, router.ready(0, 0, drain=True), wall_ms=0)
    assert router.tick(0, 50).feedback == []
    assert router.tick(0, 1_000).feedback == []  # watermark 900: deadline 1000 not passed
    out = router.tick(0, 1_200)
    assert [(fb.label, fb.label_ts) for fb in out.feedback] == [(0, 1_000)]
    assert out.writes and out.events == Counter()


def test_assign_keeps_buffered_messages_and_revoke_returns_them() -> None:
    router = make_router()
    router.assign(0, None, [])
    imp = {"impression_id": "a", "user_id": "u", "item_id": "x", "ts": 1, "score": 0.1}
    router.offer(as_events([("impressions", imp)])[0])
    assert router.ready(0, 0) == []  # waiting for the clicks topic
    router.assign(0, None, [])
    assert router.buffered(0) == 1
    assert len(router.revoke(0)) == 1 and router.partitions == frozenset()
    with pytest.raises(KeyError):
        router.offer(as_events([("impressions", imp)])[0])


def _steady_with_one_far_future(at: int) -> list[InputEvent]:
    """Five impressions a second apart with one stamped far ahead inserted at ``at``: inside
    the decoder's wall-clock future bound (3,600 s), far ahead in event time."""
    items = [
        ("impressions", {"impression_id": f"i{k}", "user_id": "u", "item_id": "x",
                         "ts": 10_000 + k * 1_000, "score": 0.1})
        for k in range(5)
    ]
    far = {"impression_id": "far", "user_id": "u", "item_id": "x", "ts": 3_000_000, "score": 0.1}
    return as_events([*items[:at], ("impressions", far), *items[at:]])


def test_one_far_future_message_is_a_future_ts_dead_letter_with_its_bytes() -> None:
    router = make_router()
    router.assign(0, None, [])
    events = _steady_with_one_far_future(1)
    outs = run(router, events)
    letters = [letter for out in outs for _, letter in out.dead_letters]
    assert [(d.reason, d.offset, d.source_topic) for d in letters] == [
        ("future_ts", events[1].offset, events[1].topic)
    ]
    assert letters[0].payload == events[1].raw
    assert all(fb.label_ts < 3_000_000 for out in outs for fb in out.feedback)


def test_a_held_message_survives_a_restart_through_the_clock_record() -> None:
    router = make_router()
    router.assign(0, None, [])
    events = _steady_with_one_far_future(2)
    table = Table()
    outs = run(router, events[:3], table)
    # The outcome that took the far message says so: the runtime writes the clock with it.
    assert [out.clock_changed for out in outs] == [False, False, True]
    clock = orjson.loads(orjson.dumps(router.clock_record(0)["clock"]))

    restarted = make_router()
    restarted.assign(0, clock, list(table.users.values()))
    rest = run(restarted, events[3:], table)
    letters = [letter for out in rest for _, letter in out.dead_letters]
    assert [(d.reason, d.offset, d.payload) for d in letters] == [
        ("future_ts", events[2].offset, events[2].raw)
    ]
    assert rest[-1].clock_changed
