"""A replayed stream with global, segment and user calibrator versions, and the expected
serving probabilities computed from its ``calibrators.jsonl`` independently of the client."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from worker.core.calibrators import calibrator_from_dict
from worker.replay import run_replay
from worker.sim.scenario import Scenario
from worker.sim.streamrec import write_jsonl

# Few users over two days of event time, so some pass the user gate (200 events on two
# days); a temperature drift and a large new-user share give drift and segment versions.
SCENARIO = Scenario(
    n_events=40_000,
    n_users=60,
    seed=0,
    events_per_second=0.3,
    temperature=2.0,
    drift_at_event=25_000,
    drift_temperature=0.7,
    new_user_share=0.3,
)
LAST_IMPRESSIONS = 3_000

Row = tuple[str, str, str, float]  # model_id, user_id, segment, score


def replay_stream(root: Path) -> tuple[Path, list[Row]]:
    """Simulate and replay ``SCENARIO`` under ``root``; returns the calibrators.jsonl path
    and the (model, user, segment, score) of the stream's last impressions."""
    events = root / "events.jsonl"
    write_jsonl(SCENARIO, events, manifest=False)
    run_replay(events, root / "out")
    last: deque[Row] = deque(maxlen=LAST_IMPRESSIONS)
    with open(events, encoding="utf-8") as handle:
        for line in handle:
            obj = json.loads(line)
            if obj.get("type") == "impression" and isinstance(obj.get("score"), float):
                last.append((obj.get("model_id", "default"), obj["user_id"],
                             obj.get("segment", "default"), obj["score"]))
    return root / "out" / "calibrators.jsonl", list(last)


def final_versions(path: Path) -> dict[str, dict[str, Any]]:
    """Newest version per ``model_id|scope`` of a calibrators.jsonl."""
    newest: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        msg = json.loads(line)
        key = f"{msg['model_id']}|{msg['scope']}"
        if key not in newest or msg["version"] > newest[key]["version"]:
            newest[key] = msg
    return newest


def expected(versions: dict[str, dict[str, Any]], row: Row) -> float:
    """DESIGN §3 fallback: user:<id>, else segment:<name>, else global, else identity."""
    model, user, segment, score = row
    for scope in (f"user:{user}", f"segment:{segment}", "global"):
        msg = versions.get(f"{model}|{scope}")
        if msg is not None:
            return float(calibrator_from_dict(msg).apply(score))
    return score


def rows_per_scope(versions: dict[str, dict[str, Any]], rows: list[Row]) -> list[Row]:
    """``rows`` plus one row per user and segment that has a version, so every scope kind
    is exercised even if the last impressions miss it."""
    extra: list[Row] = []
    for msg in versions.values():
        kind, _, name = msg["scope"].partition(":")
        if kind == "user":
            extra.append((msg["model_id"], name, "default", 0.3))
        elif kind == "segment":
            extra.append((msg["model_id"], "nobody-with-a-version", name, 0.3))
    return rows + extra
