"""``recal simulate`` through its argparse registration."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from worker.sim import cli
from worker.sim.streamrec import generate, manifest_path


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recal")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["simulate", *argv])


def test_flags_map_onto_the_scenario() -> None:
    args = _parse("--events", "100", "--users", "7", "--seed", "3", "--temperature", "1.6",
                  "--drift-at", "50", "--drift-temperature", "0.8", "--ctr-alpha", "1",
                  "--ctr-beta", "24", "--duplicates", "0.01", "--reorder-ms", "30000",
                  "--malformed", "0.02", "--orphans", "0.03", "--score-field", "mixed",
                  "--no-arms")
    sc = cli.scenario_from_args(args)
    assert (sc.n_events, sc.n_users, sc.seed, sc.temperature) == (100, 7, 3, 1.6)
    assert (sc.drift_at_event, sc.drift_temperature) == (50, 0.8)
    assert (sc.ctr_alpha, sc.ctr_beta) == (1.0, 24.0)
    assert (sc.duplicate_share, sc.reorder_within_ms) == (0.01, 30_000)
    assert (sc.malformed_share, sc.orphan_click_share) == (0.02, 0.03)
    assert sc.score_field == "mixed" and sc.arms == ()
    assert args.func is cli.run


def test_run_writes_file_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev.jsonl"
    args = _parse("--events", "300", "--seed", "4", "--malformed", "0.05", "--out", str(out))
    assert cli.run(args) == 0
    lines = out.read_bytes().split(b"\n")[:-1]
    assert lines == [e.raw for e in generate(cli.scenario_from_args(args))]
    assert manifest_path(out).exists()
    info = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert info["lines"] == len(lines) and info["impressions"] == 300


def test_run_to_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert cli.run(_parse("--events", "20", "--quiet")) == 0
    captured = capsysbinary.readouterr()
    assert captured.out.count(b"\n") >= 20 and captured.err == b""


def test_invalid_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_parse("--events", "10", "--temperature", "-1")) == 2
    err = capsys.readouterr().err
    assert "recal simulate: error: temperature must be a finite number > 0; got -1.0" in err
