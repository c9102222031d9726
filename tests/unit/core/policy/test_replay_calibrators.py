"""`recal replay` runs the policy on every feedback event and writes calibrators.jsonl."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.cli import main as cli_main
from worker.core.pipeline import PipelineConfig
from worker.replay import OUTPUT_FILES, run_replay
from worker.sim.scenario import Scenario
from worker.sim.streamrec import write_jsonl

from .streams import schema_validator

WINDOW_MS = 300_000
DRIFT_AT = 15_000


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sc = Scenario(
        n_events=30_000,
        n_users=3_000,
        n_items=300,
        seed=11,
        events_per_second=2.0,
        drift_at_event=DRIFT_AT,
        drift_temperature=1.6,
        new_user_share=0.1,
        new_users_from=0.2,
        new_user_model_bias=0.6,
        attribution_window_ms=WINDOW_MS,
        click_delay_mean_ms=20_000.0,
        late_click_share=0.0,
    )
    path = tmp_path_factory.mktemp("sim") / "events.jsonl"
    write_jsonl(sc, path)
    return path


@pytest.fixture(scope="module")
def replayed(events: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    run_replay(events, out, PipelineConfig(window_ms=WINDOW_MS))
    return out


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_calibrators_file_is_a_valid_version_stream(replayed: Path) -> None:
    assert "calibrators.jsonl" in OUTPUT_FILES
    msgs = read(replayed / "calibrators.jsonl")
    assert msgs, "a 30k-event stream with a drift must publish versions"
    validator = schema_validator()
    versions: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    last_event_ts = 0
    for m in msgs:
        errors = list(validator.iter_errors(m))
        assert not errors, (m, errors[0].message)
        versions[(m["model_id"], m["scope"])].append(m)
        # Emission order follows event time; created_at is the replay's event-time clock.
        assert m["event_ts"] >= last_event_ts
        last_event_ts = m["event_ts"]
        assert iso_ms(m["created_at"]) >= m["event_ts"]
        tr = m["training"]
        if tr["from_ts"] is not None:
            assert tr["from_ts"] <= tr["to_ts"] <= m["event_ts"]
            assert 0 <= tr["positives"] <= tr["n"]
        else:  # a mirror of the global: fitted on no data of its own
            assert tr["n"] == 0 and m["scope"] != "global"
    for key, ms in versions.items():
        numbers = [m["version"] for m in ms]
        assert numbers == list(range(1, len(ms) + 1)), key  # strictly increasing from 1
        assert ms[0]["reason"] == "bootstrap", key
        assert all(m["reason"] in ("scheduled", "drift") for m in ms[1:]), key
    assert ("default", "global") in versions
    assert versions[("default", "global")][0]["version"] == 1


def test_the_drift_is_answered_by_a_version_fitted_after_it(replayed: Path) -> None:
    feedback = read(replayed / "feedback.jsonl")
    drift_ts = min(f["ts"] for f in feedback if int(f["impression_id"].rsplit("-", 1)[1])
                   >= DRIFT_AT)
    glob = [m for m in read(replayed / "calibrators.jsonl") if m["scope"] == "global"]
    after = [m for m in glob if m["event_ts"] >= drift_ts]
    assert after
    # Within a few refits (a refit per 1,000 events at 2 events/s: ~500 s).
    assert after[0]["event_ts"] - drift_ts < 4 * 500_000
    assert after[0]["training"]["from_ts"] >= drift_ts - 100_000
    assert after[0]["metrics"]["nll_after"] < after[0]["metrics"]["nll_before"]


def test_summary_counts_the_versions(replayed: Path) -> None:
    summary = orjson.loads((replayed / "summary.json").read_bytes())
    msgs = read(replayed / "calibrators.jsonl")
    assert summary["calibrators_total"] == len(msgs)
    kinds: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    for m in msgs:
        kinds[m["scope"].split(":")[0]] += 1
        reasons[m["reason"]] += 1
    assert summary["calibrators"] == dict(sorted(kinds.items()))
    assert summary["calibrators_by_reason"] == dict(sorted(reasons.items()))


def test_replay_is_deterministic_and_honours_recalibrate_every(
    events: Path, replayed: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    run_replay(events, again, PipelineConfig(window_ms=WINDOW_MS))
    assert (again / "calibrators.jsonl").read_bytes() == (
        replayed / "calibrators.jsonl"
    ).read_bytes()
    # Through the command line: a longer cadence means a later first refit.
    slow = tmp_path / "slow"
    assert cli_main(["replay", str(events), "--out", str(slow), "--attribution-window",
                     str(WINDOW_MS // 1000), "--recalibrate-every", "7000"]) == 0
    slow_msgs = read(slow / "calibrators.jsonl")
    fast_msgs = read(replayed / "calibrators.jsonl")
    assert slow_msgs and fast_msgs
    first_slow = slow_msgs[0]["training"]["n"] + slow_msgs[0]["metrics"]["n_eval"]
    first_fast = fast_msgs[0]["training"]["n"] + fast_msgs[0]["metrics"]["n_eval"]
    assert first_slow > 5_000 > first_fast
