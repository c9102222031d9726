"""write_jsonl, the summary and the expected-outcomes manifest."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import orjson

from tests.unit.sim.helpers import classify
from worker.sim.scenario import Scenario
from worker.sim.streamrec import (
    SimSummary,
    generate,
    manifest_path,
    read_manifest,
    write_jsonl,
)

SC = Scenario(n_events=6_000, n_users=300, seed=23, duplicate_share=0.02,
              reorder_within_ms=10_000, orphan_click_share=0.05, malformed_share=0.03)


def test_file_matches_generate_and_summary_matches_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    summary = write_jsonl(SC, path)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert lines == [e.raw for e in generate(SC)]
    assert summary.lines == len(lines) and summary.bytes == len(data)

    # Recount from the file alone (plus the independent classifier).
    reasons = Counter(r for r in map(classify, lines) if r is not None)
    assert summary.expected_reasons == dict(sorted(reasons.items()))
    valid = [orjson.loads(x) for x in lines if classify(x) is None]
    imp_ids = {o["impression_id"] for o in valid if o["type"] == "impression"}
    assert summary.impressions == len(imp_ids) == SC.n_events
    assert summary.duplicate_impressions == sum(o["type"] == "impression" for o in valid) - len(
        imp_ids
    )
    click_ids = [o["impression_id"] for o in valid if o["type"] == "click"]
    distinct = set(click_ids)
    assert summary.orphan_clicks == len(distinct - imp_ids)
    assert summary.clicks == len(distinct & imp_ids)
    assert summary.duplicate_clicks == len(click_ids) - len(distinct)
    ts = {o["impression_id"]: o["ts"] for o in valid if o["type"] == "impression"}
    delays = {o["impression_id"]: o["ts"] - ts[o["impression_id"]]
              for o in valid if o["type"] == "click" and o["impression_id"] in ts}
    assert summary.positives == sum(d <= SC.attribution_window_ms for d in delays.values())
    assert summary.late_clicks == sum(d > SC.attribution_window_ms for d in delays.values())

    manifest = read_manifest(path)
    assert manifest_path(path).name == "events.jsonl.expected.json"
    assert manifest["version"] == 1
    assert Scenario.from_dict(manifest["scenario"]) == SC
    assert manifest["expected_dlq"] == {**summary.expected_reasons,
                                        "orphan_click": summary.orphan_clicks}
    assert manifest["lines"] == summary.lines


def test_binary_file_object_and_no_manifest(tmp_path: Path) -> None:
    buf = io.BytesIO()
    summary = write_jsonl(Scenario(n_events=50, seed=1), buf)
    assert buf.getvalue().count(b"\n") == summary.lines
    path = tmp_path / "x.jsonl"
    write_jsonl(Scenario(n_events=50, seed=1), path, manifest=False)
    assert not manifest_path(path).exists()
    assert path.read_bytes() == buf.getvalue()


def test_progress_callback_reaches_the_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    write_jsonl(Scenario(n_events=40_000, seed=2), tmp_path / "p.jsonl",
                progress=lambda i, n: calls.append((i, n)))
    assert calls[-1][0] == 40_000
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_summary_add_and_add_many_agree() -> None:
    events = list(generate(SC))
    one, many = SimSummary(SC), SimSummary(SC)
    for e in events:
        one.add(e)
    many.add_many(events)
    assert one.to_dict() == many.to_dict()
