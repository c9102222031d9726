"""A real Prometheus server scrapes a running `recal worker` (real local broker): the
worker's series arrive in Prometheus (up, events, ECE with its floor and n, calibrator
versions, consumer lag, posterior counts) and deploy/prometheus/rules.yml loads.

Prometheus is the Debian package's server (``.ci/run`` installs it), started on a free
port with a 1 s scrape interval and its data in a temporary directory; both processes are
stopped by their pid.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_worker_join import WorkerProcess, produce, topic_names
from tests.integration.test_worker_outputs import as_lines, worker_flags
from worker.localkafka import TopicSpec, create_topics
from worker.runtime.topics import OUTPUT_TOPICS
from worker.sim.scenario import Scenario
from worker.sim.streamrec import generate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
JOB = "recal-worker"
# Long enough in event time (1,000 s at 5 events/s, window 600 s) for labels to mature and
# the calibrators to be fitted and scored.
SCENARIO = Scenario(n_events=5_000, n_users=60, n_items=30, seed=11, events_per_second=5,
                    attribution_window_ms=600_000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """``prometheus`` scraping one target every second, with the recal rules loaded."""

    def __init__(self, target: str, tmp: Path) -> None:
        exe = shutil.which("prometheus")
        assert exe is not None, "prometheus not found: install the Debian package 'prometheus'"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }))
        self.port = free_port()
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read())
        except OSError:
            return None  # not listening yet
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return [] if data is None else list(data["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def wait_until(
    check: Callable[[], Any], what: str, worker: WorkerProcess, prom: PrometheusServer,
    timeout_s: float = 120.0,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        for name, proc in (("worker", worker.proc), ("prometheus", prom.proc)):
            if proc.poll() is not None:
                pytest.fail(f"{name} exited {proc.returncode} waiting for {what}\n"
                            f"{worker.log_tail()}\n--- prometheus ---\n{prom.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{worker.log_tail()}\n"
                        f"--- prometheus ---\n{prom.log_tail()}")
        time.sleep(0.5)


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


async def test_prometheus_scrapes_the_worker_and_loads_the_rules(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    raws = [event.raw for event in generate(SCENARIO)]
    prefix = unique_topic("recal") + "."
    topics = topic_names(prefix) | {s: f"{prefix}{s}" for s in OUTPUT_TOPICS}
    # One partition: partition 0 publishes the model-wide versions, so it reports the ECE.
    await create_topics(
        kafka_bootstrap, [TopicSpec(topics["impressions"], 1), TopicSpec(topics["clicks"], 1)]
    )
    n_inputs = len(raws)
    await produce(kafka_bootstrap, topics, as_lines(raws))
    worker = WorkerProcess(worker_flags(kafka_bootstrap, prefix, unique_topic("app")),
                           tmp_path / "worker.log")
    prom: PrometheusServer | None = None
    try:
        port = worker.wait_ready()
        prom = PrometheusServer(f"127.0.0.1:{port}", tmp_path)
        p = prom
        up = wait_until(lambda: values(p.query(f'up{{job="{JOB}"}}')), "up", worker, p)
        assert up == [1.0]
        # Every input processed, as Prometheus sees it.
        wait_until(lambda: values(p.query("sum(recal_events_total)")) == [float(n_inputs)],
                   f"{n_inputs} events counted", worker, p)
        assert values(p.query('sum(recal_feedback_total)'))[0] > 0
        # The lag series of both input topics, down to zero once everything is taken.
        lag = wait_until(
            lambda: (r := p.query("recal_consumer_lag")) and len(r) == 2
            and all(v == 0 for v in values(r)) and r,
            "consumer lag series at 0", worker, p,
        )
        assert {(s["metric"]["partition"], s["metric"]["topic"]) for s in lag} == {
            ("0", "impressions"), ("0", "clicks")}
        # ECE with its floor and n per scope; the served calibrators' versions.
        ece = wait_until(lambda: p.query("recal_calibration_ece"), "ECE series", worker, p)
        scopes = {s["metric"]["scope"] for s in ece}
        assert "global" in scopes
        floors = p.query("recal_calibration_ece_floor")
        assert {s["metric"]["scope"] for s in floors} == scopes
        assert all(0 <= v < 1 for v in values(ece) + values(floors))
        assert all(v > 0 for v in values(p.query("recal_calibration_n")))
        versions = wait_until(lambda: p.query("recal_calibrator_version"), "versions",
                              worker, p)
        assert all(s["metric"]["method"] in ("identity", "temperature", "platt", "isotonic")
                   and float(s["value"][1]) >= 1 for s in versions)
        assert values(p.query("sum(recal_posterior_users)"))[0] > 0
        assert len(p.query("recal_alerts_firing")) == 6
        # The alert rules are loaded and evaluated without errors.
        groups = wait_until(lambda: (d := p.api("rules")) and d["groups"], "rules", worker, p)
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} == {
            "RecalWorkerDown", "RecalConsumerLagGrowing", "RecalDeadLetterRateHigh",
            "RecalFeedbackStalled", "RecalCalibrationDrift", "RecalEceAboveFloor"}
        wait_until(lambda: all(r.get("health") == "ok" for r in p.api("rules")["groups"][0]
                               ["rules"]), "rules evaluated", worker, p)
        assert not [a for a in p.api("alerts")["alerts"] if a["labels"]["alertname"]
                    == "RecalWorkerDown"]
    finally:
        if prom is not None:
            prom.stop()
        code = worker.stop()
    assert code == 0, worker.log_tail()
