"""One small replay for the report tests: simulated, replayed and reported once per session.

The stream (``tests.unit.client_support.SCENARIO``: few users over two days of event time,
a temperature drift, many new users) gives global, segment and user calibrator versions,
drift alerts, tier changes and posteriors, and spans two UTC days.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.client_support import SCENARIO
from worker.cli import main
from worker.report import build_report
from worker.sim.streamrec import write_jsonl


@pytest.fixture(scope="session")
def replay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    events = root / "events.jsonl"
    write_jsonl(SCENARIO, events, manifest=False)
    out = root / "out"
    assert main(["replay", str(events), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def report_path(replay_dir: Path) -> Path:
    return build_report(replay_dir)
