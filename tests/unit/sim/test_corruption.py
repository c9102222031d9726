"""Corruption: bounded reordering, duplicates, orphans and malformed lines with their reasons."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import pytest

from tests.unit.sim.helpers import LIMIT, classify
from worker.sim.corruption import MALFORMED_KINDS, ReorderBuffer, make_malformed
from worker.sim.scenario import Scenario
from worker.sim.streamrec import SimEvent, generate

CORRUPT = Scenario(
    n_events=25_000,
    n_users=1_000,
    seed=17,
    duplicate_share=0.03,
    reorder_within_ms=30_000,
    orphan_click_share=0.05,
    malformed_share=0.04,
    score_field="mixed",
)


@pytest.fixture(scope="module")
def corrupt_events() -> list[SimEvent]:
    return list(generate(CORRUPT))


def _ts_of_valid(events: list[SimEvent]) -> list[int]:
    return [e.obj["ts"] for e in events if e.kind != "malformed" and e.obj is not None]


@pytest.mark.parametrize("reorder_ms", [0, 1_000, 30_000])
def test_no_line_arrives_more_than_reorder_ms_behind(reorder_ms: int) -> None:
    sc = Scenario(n_events=15_000, n_users=500, seed=18, reorder_within_ms=reorder_ms,
                  duplicate_share=0.02, skew_share=0.05)
    ts = np.array(_ts_of_valid(list(generate(sc))))
    behind = np.maximum.accumulate(ts) - ts
    assert behind.max() <= reorder_ms
    if reorder_ms >= 1_000:
        # It really is shuffled, not merely allowed to be.
        assert behind.max() > reorder_ms * 0.8
        assert (behind > 0).mean() > 0.3


def test_without_reordering_the_file_is_in_event_time_order() -> None:
    ts = _ts_of_valid(list(generate(Scenario(n_events=5_000, seed=19, skew_share=0.1))))
    assert ts == sorted(ts)


def test_corrupt_stream_keeps_the_reorder_bound(corrupt_events: list[SimEvent]) -> None:
    ts = np.array(_ts_of_valid(corrupt_events))
    assert (np.maximum.accumulate(ts) - ts).max() <= CORRUPT.reorder_within_ms


def test_duplicates_are_exact_copies_at_the_configured_share(
    corrupt_events: list[SimEvent],
) -> None:
    originals = [e.raw for e in corrupt_events if e.kind != "malformed" and not e.duplicate]
    assert len(set(originals)) == len(originals)  # originals are unique lines
    original_set = set(originals)
    dups = [e.raw for e in corrupt_events if e.kind != "malformed" and e.duplicate]
    # Under reordering a copy may overtake its original, but both are in the file.
    assert all(raw in original_set for raw in dups)
    n_orig, n_dup = len(originals), len(dups)
    assert n_dup / n_orig == pytest.approx(CORRUPT.duplicate_share, abs=0.004)
    raw_counts = Counter(e.raw for e in corrupt_events if e.kind != "malformed")
    assert max(raw_counts.values()) == 2
    assert sum(c - 1 for c in raw_counts.values()) == n_dup
    dup_kinds = Counter(e.kind for e in corrupt_events if e.duplicate)
    assert dup_kinds["impression"] > 0 and dup_kinds["click"] > 0


def test_malformed_share_and_reasons(corrupt_events: list[SimEvent]) -> None:
    bad = [e for e in corrupt_events if e.kind == "malformed"]
    assert len(bad) / len(corrupt_events) == pytest.approx(CORRUPT.malformed_share, abs=0.004)
    for e in bad:
        # The expected reason is what an independent check of the raw bytes says.
        assert e.expected_reason == classify(e.raw), (e.tag, e.raw[:200])
        assert e.target in ("impression", "click")
    kinds = Counter(e.tag for e in bad)
    assert set(kinds) == {k.name for k in MALFORMED_KINDS}
    reasons = Counter(e.expected_reason for e in bad)
    assert set(reasons) == {"invalid_json", "schema", "score_range", "too_large"}
    # Well-formed lines all pass the same check.
    assert all(classify(e.raw) is None for e in corrupt_events if e.kind != "malformed")


def test_malformed_lines_use_their_own_ids(corrupt_events: list[SimEvent]) -> None:
    for e in corrupt_events:
        if e.kind == "malformed" and e.obj is not None and "impression_id" in e.obj:
            assert e.obj["impression_id"].startswith("bad-17-")


@pytest.mark.parametrize("kind", [k.name for k in MALFORMED_KINDS])
def test_each_malformed_kind_is_broken_in_exactly_its_way(kind: str) -> None:
    rng = np.random.default_rng(0)
    imp = {"type": "impression", "impression_id": "b1", "user_id": "u1", "item_id": "it1",
           "ts": 1_767_225_600_000, "model_id": "default", "score": 0.25, "logit": -1.1}
    click = {"type": "click", "impression_id": "b2", "user_id": "u2", "ts": 1_767_225_600_500}
    spec = next(k for k in MALFORMED_KINDS if k.name == kind)
    for template in (imp, click):
        if template["type"] not in spec.targets:
            continue
        for _ in range(20):
            line = make_malformed(kind, template, rng)
            assert classify(line.raw) == spec.reason == line.reason
            if line.obj is not None:
                assert orjson.loads(line.raw) == line.obj
            else:
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(line.raw)
    if kind == "oversize":
        assert len(make_malformed(kind, imp, rng).raw) > LIMIT
    if kind == "missing_user_id":
        assert make_malformed(kind, imp, rng).key is None
    if kind == "logit_nan_literal":
        assert b"NaN" in make_malformed(kind, imp, rng).raw


def test_orphans_never_have_their_impression(corrupt_events: list[SimEvent]) -> None:
    imp_ids = {e.obj["impression_id"] for e in corrupt_events if e.kind == "impression"}
    orphans = [e for e in corrupt_events if e.tag == "orphan_click"]
    assert orphans
    for e in orphans:
        assert e.obj["impression_id"] not in imp_ids
        assert e.obj["impression_id"].removeprefix("ghost-") != e.obj["impression_id"]
    real = [e for e in corrupt_events
            if e.kind == "click" and e.tag != "orphan_click" and not e.duplicate]
    share = sum(not e.duplicate for e in orphans) / (len(real) + len(orphans))
    assert share == pytest.approx(CORRUPT.orphan_click_share, abs=0.01)
    for e in real:
        assert e.obj["impression_id"] in imp_ids


def test_reorder_buffer_releases_in_key_then_seq_order() -> None:
    buf = ReorderBuffer(2)
    assert buf.pop_before(1.0) == []

    def names(*xs: str) -> np.ndarray:
        return np.array(list(xs), dtype=object)

    buf.push(np.array([5.0, 1.0, 5.0]), np.array([0, 1, 2]),
             [np.array([0, 1, 2]), names("a", "b", "c")])
    codes, got = buf.pop_before(1.0)
    assert codes.tolist() == [] and got.tolist() == []
    buf.push(np.array([3.0]), np.array([3]), [np.array([3]), names("d")])
    codes, got = buf.pop_before(5.0)
    assert codes.tolist() == [1, 3] and got.tolist() == ["b", "d"]
    codes, got = buf.pop_before(6.0)
    assert codes.tolist() == [0, 2] and got.tolist() == ["a", "c"]
    assert len(buf) == 0
    with pytest.raises(ValueError, match="one length"):
        buf.push(np.array([1.0]), np.array([1, 2]), [np.array([1]), names("x")])
    with pytest.raises(ValueError, match="expected 2 columns"):
        buf.push(np.array([1.0]), np.array([1]), [names("x")])


def test_expected_reasons_agree_with_the_input_decoder(corrupt_events: list[SimEvent]) -> None:
    # The contract check end to end: the worker's own decoder gives every line the reason
    # the generator recorded (None: accepted), and the keys match the user ids.
    codec = pytest.importorskip("worker.core.codec.input_decoder")
    from worker.core.errors import InvalidInputError

    decoder = codec.InputDecoder()
    mismatches = []
    for e in corrupt_events:
        key = e.key.encode() if e.key is not None else None
        try:
            decoder.decode_replay_line(e.raw)
            if e.kind == "impression":
                decoder.decode_impression(e.raw, key=key)
            elif e.kind == "click":
                decoder.decode_click(e.raw, key=key)
            got = None
        except InvalidInputError as err:
            got = err.reason
        if got != e.expected_reason:
            mismatches.append((e.tag, e.expected_reason, got, e.raw[:120]))
    assert mismatches == []
