"""`recal demo` end to end (its own broker and worker, the oracle check, nothing left
behind), and `recal simulate --to-kafka` against the session broker.

The demo starts its own broker (not the session fixture's). Both run the console entry
point in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from worker.localkafka import TopicSpec, create_topics
from worker.localkafka.broker import pid_alive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _demo(
    tmp_path: Path, *flags: str, timeout_s: float = 150
) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "demo", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its worker and broker on SIGTERM
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"demo did not finish in {timeout_s:.0f} s\n{out}\n{err}") from None
    return proc, out, err


def _assert_nothing_left(report: dict) -> None:
    procs = report["processes"]
    pids = [*procs["worker_pids"], procs["broker_pid"]]
    assert len(pids) == report["settings"]["workers"] + 1, procs
    for pid in pids:
        assert isinstance(pid, int) and pid > 0, procs
        assert not pid_alive(pid), f"pid {pid} is still running"
    assert procs["workers_alive"] == [] and procs["broker_alive"] is False


def test_demo_runs_the_loop_on_two_workers_and_cleans_up(tmp_path: Path) -> None:
    """The demo as `make demo` runs it (its defaults: two workers, the realistic scenario),
    checked through its JSON report and the files it leaves."""
    started = time.monotonic()
    report_path = tmp_path / "report.json"
    html = tmp_path / "demo.html"
    proc, out, err = _demo(tmp_path, "--json-report", str(report_path), "--report", str(html),
                           timeout_s=240)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"{out}\n{err}"
    report = orjson.loads(report_path.read_bytes())
    assert report["status"] == "ok" and report["error"] is None
    assert report["settings"]["workers"] == 2
    assert report["checks"] and all(report["checks"].values()), report["checks"]
    assert report["feedback_equals_oracle"] is True
    oracle = report["oracle"]
    assert oracle["labels"] == report["settings"]["events"]
    assert oracle["missing"] == oracle["extra"] == oracle["different"] == 0
    assert oracle["duplicates"] == 0 and 0 < oracle["positives"] < oracle["labels"]
    assert report["dead_letters"]["match"] is True
    assert report["dead_letters"]["got"].get("orphan_click", 0) > 0
    # Both workers did part of the work (one consumer group, two partitions).
    assert all(n > 0 for n in report["worker_metrics"]["processed_by_worker"])
    # The published calibrators improved the served scores, prequentially.
    overall = report["calibration"]["overall"]
    assert overall["recal"]["ece"] < overall["raw"]["ece"]
    assert overall["recal"]["n"] == oracle["labels"]
    assert report["calibrators"]["by_scope"].get("global", 0) > 0
    assert report["posteriors"]["mismatched"] == 0 and report["posteriors"]["pairs"] > 0
    assert report["processes"]["worker_exits"] == [0, 0]
    _assert_nothing_left(report)
    # A temporary data directory is removed after a successful run; the HTML report stays.
    assert not Path(report["data_dir"]).exists()
    assert report["html_report"] == str(html) and html.stat().st_size > 10_000
    # The human summary says the same.
    assert "vs oracle     EQUAL" in out and "result        OK" in out
    assert f"report        {html}" in out
    assert "FAIL" not in out
    print(f"demo took {elapsed:.1f} s")


def test_demo_reports_a_stalled_worker_and_still_cleans_up(tmp_path: Path) -> None:
    """The worker stops moving (SIGSTOP) while the stream is sent: the demo gives up after
    --timeout seconds without progress, exits 1 with the reason and the worker's log tail,
    and still stops the worker and the broker."""
    report_path = tmp_path / "report.json"
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "demo", "--events", "3000", "--timeout", "3",
         "--workers", "1",
         "--data-dir", str(data_dir), "--json-report", str(report_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    seen: list[str] = []
    worker_pid = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            match = re.search(r"worker 0 starting \(pid (\d+)\)", line)
            if match:
                worker_pid = int(match.group(1))
            if "sending the stream" in line:
                break
        assert worker_pid is not None, "".join(seen)
        os.kill(worker_pid, signal.SIGSTOP)  # the demo's child, which it reports
        time.sleep(8)  # the demo gives up after 3 s without progress and sends SIGTERM
        os.kill(worker_pid, signal.SIGCONT)  # ... which the worker handles once resumed
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "".join(seen) + rest
    assert proc.returncode == 1, out
    report = orjson.loads(report_path.read_bytes())
    assert report["status"] == "failed"
    assert report["error"].startswith("no progress for 3 s"), report["error"]
    assert "last 30 lines of worker 0's log" in out
    _assert_nothing_left(report)
    assert (data_dir / "worker-0.log").exists()  # kept for the post-mortem


def test_demo_refuses_a_used_data_dir(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("x")
    proc, _out, err = _demo(tmp_path, "--data-dir", str(tmp_path / "used"), timeout_s=60)
    assert proc.returncode == 2
    assert "is not empty" in err


def test_demo_interrupted_midway_stops_worker_and_broker(tmp_path: Path) -> None:
    """Ctrl-C while the stream is processed: exit 130, nothing left running. (SIGTERM takes
    the same path: the demo turns it into KeyboardInterrupt.)"""
    report_path = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "demo", "--events", "20000",
         "--json-report", str(report_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            seen.append(line)
            if "sending the stream" in line or time.monotonic() > deadline:
                break
        assert any("sending the stream" in line for line in seen), "".join(seen)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # the demo itself hung: end it (it is our child)
            proc.kill()
            proc.wait(10)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    report = orjson.loads(report_path.read_bytes())
    assert report["status"] == "interrupted"
    _assert_nothing_left(report)


async def test_simulate_to_kafka_sends_the_stream_keyed_and_in_order(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaConsumer

    prefix = unique_topic("sim") + "."
    topics = {"impression": f"{prefix}impressions", "click": f"{prefix}clicks"}
    await create_topics(kafka_bootstrap, [TopicSpec(t, 2) for t in topics.values()])
    out = tmp_path / "ev.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "simulate", "--events", "800", "--seed", "3",
         "--duplicates", "0.02", "--malformed", "0.02", "--orphans", "0.02",
         "--out", str(out), "--to-kafka", kafka_bootstrap, "--topic-prefix", prefix],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    info = orjson.loads(proc.stderr.strip().splitlines()[-1])
    lines = out.read_bytes().split(b"\n")[:-1]
    assert info["kafka"]["messages"] == info["lines"] == len(lines)

    def target(raw: bytes) -> str:
        # Every line names its type, broken JSON included (cut after the first field).
        return "click" if raw.startswith(b'{"type":"click"') else "impression"

    consumer = AIOKafkaConsumer(
        *topics.values(), bootstrap_servers=kafka_bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    got: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = defaultdict(list)
    try:
        deadline = time.monotonic() + 60
        while sum(map(len, got.values())) < len(lines) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                got[(tp.topic, tp.partition)].extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    assert sum(map(len, got.values())) == len(lines)
    for (topic, _partition), records in got.items():
        values = [v for _k, v in records]
        mine = set(values)
        # Each partition holds its messages in the stream's order.
        assert values == [
            raw for raw in lines if topics[target(raw)] == topic and raw in mine
        ]
        for key, value in records:
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:  # a malformed line: still under its user's key
                continue
            if key is not None and "user_id" in obj:
                assert key.decode() == obj["user_id"]
            else:  # the generator's "missing_user_id" lines: no user, no key
                assert key is None and "user_id" not in obj


def test_simulate_to_kafka_without_topics_says_so(kafka_bootstrap: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "simulate", "--events", "10",
         "--to-kafka", kafka_bootstrap, "--topic-prefix", "no-such-prefix."],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 1
    assert "no-such-prefix.impressions, no-such-prefix.clicks do not exist" in proc.stderr
