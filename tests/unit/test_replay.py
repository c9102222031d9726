"""`recal replay` end to end: the oracle's labels on a corrupted stream, dead letters with their
reasons, every output file schema-valid, and byte-identical outputs on a second run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.unit.core.codec.schema_support import validator
from worker.cli import main
from worker.core.codec.input_decoder import InputDecoder
from worker.core.pipeline import PipelineConfig
from worker.replay import run_replay
from worker.sim.join_oracle import oracle_labels
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate, write_jsonl

WINDOW_S = 600
SCENARIO = Scenario(
    n_events=6_000,
    n_users=300,
    n_items=200,
    seed=11,
    events_per_second=5,
    duplicate_share=0.05,
    reorder_within_ms=30_000,
    orphan_click_share=0.01,
    malformed_share=0.01,
    attribution_window_ms=WINDOW_S * 1000,
)


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("replay")
    events = root / "events.jsonl"
    write_jsonl(SCENARIO, events, manifest=False)
    out = root / "out"
    rc = main(["replay", str(events), "--out", str(out), "--attribution-window", str(WINDOW_S)])
    assert rc == 0
    return events, out


def test_feedback_equals_the_batch_oracle(replayed: tuple[Path, Path]) -> None:
    _, out = replayed
    decoder = InputDecoder()
    decoded = []
    for sim_event in generate(SCENARIO):
        if sim_event.kind != "malformed":
            decoded.append(decoder.decode_replay_line(sim_event.raw))
    expected = oracle_labels(decoded, WINDOW_S * 1000)
    feedback = _lines(out / "feedback.jsonl")
    got = Counter((fb["user_id"], fb["impression_id"]) for fb in feedback)
    assert max(got.values()) == 1, "an impression got two feedback events"
    assert {
        key: fb["label"] for fb in feedback for key in [(fb["user_id"], fb["impression_id"])]
    } == expected
    # The stream really exercised what the oracle is compared on.
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["join"]["duplicate_impressions"] > 0
    assert summary["join"]["orphan_clicks"] > 0
    assert 0 < sum(expected.values()) < len(expected)


def test_every_rejected_line_is_dead_lettered_with_its_reason(replayed: tuple[Path, Path]) -> None:
    _, out = replayed
    expected = Counter(e.expected_reason for e in generate(SCENARIO) if e.kind == "malformed")
    letters = _lines(out / "dlq.jsonl")
    got = Counter(dl["reason"] for dl in letters if dl["reason"] != "orphan_click")
    assert got == expected
    orphans = sum(dl["reason"] == "orphan_click" for dl in letters)
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert orphans == summary["join"]["orphan_clicks"] > 0
    check = validator("dead_letter")
    assert all(not list(check.iter_errors(dl)) for dl in letters)


def test_outputs_are_schema_valid(replayed: tuple[Path, Path]) -> None:
    _, out = replayed
    for name, schema in (
        ("feedback", "feedback"),
        ("calibrators", "calibrator_version"),
        ("alerts", "alert"),
    ):
        check = validator(schema)
        for record in _lines(out / f"{name}.jsonl"):
            errors = list(check.iter_errors(record))
            assert not errors, (name, errors[0].message)
    assert _lines(out / "calibrators.jsonl"), "a 6k-event stream publishes a bootstrap version"
    posteriors = _lines(out / "posteriors.jsonl")
    snapshots = [p for p in posteriors if "type" not in p]
    check = validator("posterior_snapshot")
    assert snapshots and all(not list(check.iter_errors(s)) for s in snapshots)
    arms_seen = {(fb["user_id"], fb["arm"]) for fb in _lines(out / "feedback.jsonl") if "arm" in fb}
    assert arms_seen <= {(s["user_id"], s["arm"]) for s in snapshots}
    changes = [p for p in posteriors if "type" in p]
    check = validator("tier_change")
    assert changes and all(not list(check.iter_errors(c)) for c in changes)


def test_replay_is_deterministic(replayed: tuple[Path, Path], tmp_path: Path) -> None:
    events, out = replayed
    again = tmp_path / "again"
    assert (
        main(["replay", str(events), "--out", str(again), "--attribution-window", str(WINDOW_S)])
        == 0
    )
    for name in ("feedback", "dlq", "calibrators", "alerts", "posteriors"):
        assert (again / f"{name}.jsonl").read_bytes() == (out / f"{name}.jsonl").read_bytes(), name


def test_missing_input_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_replay_keeps_the_configured_context_fields_and_nothing_otherwise(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(Scenario(n_events=600, n_users=50, n_items=20, seed=4, events_per_second=2,
                         attribution_window_ms=60_000, context_fields=True),
                events, manifest=False)
    run_replay(events, tmp_path / "kept", PipelineConfig(window_ms=60_000,
                                                         context_fields=("device",)))
    run_replay(events, tmp_path / "plain", PipelineConfig(window_ms=60_000))
    kept = [orjson.loads(x) for x in (tmp_path / "kept/feedback.jsonl").read_bytes().splitlines()]
    plain = [orjson.loads(x) for x in
             (tmp_path / "plain/feedback.jsonl").read_bytes().splitlines()]
    truth = {}
    for line in events.read_bytes().splitlines():
        obj = orjson.loads(line)
        if obj["type"] == "impression":
            truth[obj["impression_id"]] = obj["context"]["device"]
    assert len(kept) == len(plain) == 600
    assert all(r["context"] == {"device": truth[r["impression_id"]]} for r in kept)
    assert not any("context" in r for r in plain)
    check = validator("feedback")
    assert all(not list(check.iter_errors(r)) for r in kept[:50])
    # Apart from the kept context, the outputs are the same.
    assert [{k: v for k, v in r.items() if k != "context"} for r in kept] == plain
