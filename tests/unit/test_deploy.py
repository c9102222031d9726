"""The deployment files: Prometheus alert rules (``promtool check rules`` and ``promtool
test rules``), docker-compose.yml and what it mounts, the Prometheus configuration
(``promtool check config``) and the Grafana provisioning, and that every metric name the
rules and the dashboard use is one the worker exports.

No Docker engine is needed: compose is read as YAML and cross-checked. promtool comes from
the Debian package ``prometheus`` (``.ci/run`` installs it); these tests fail without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from worker.runtime.metrics import RuntimeMetrics

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "recal.json"
JOB = "recal-worker"
_METRIC = re.compile(r"\brecal_[a-z0-9_]+\b")

#: Sample names each metric type exposes, from its family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe is not None, "promtool not found: install the Debian package 'prometheus'"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exported_names() -> set[str]:
    """Every sample name the worker's registry can expose."""
    names = set()
    for family in RuntimeMetrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to the repo)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = REPO / source
    return out


def host_path(mounts: dict[str, Path], container: str) -> Path:
    """The host file behind a container path of a bind-mounted directory or file."""
    path = PurePosixPath(container)
    for target, source in mounts.items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container} is not under any bind mount {sorted(mounts)}")


# --- alert rules -----------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_unit_tests_the_rules() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_cover_the_alerts_on_call_needs() -> None:
    rules = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert names == {
        "RecalWorkerDown", "RecalConsumerLagGrowing", "RecalDeadLetterRateHigh",
        "RecalFeedbackStalled", "RecalCalibrationDrift", "RecalEceAboveFloor",
    }
    tests = yaml.safe_load((PROM_DIR / "rules_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]
              if t["exp_alerts"]}
    assert tested == names, "every rule has a promtool test in which it fires"


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_names()
    # A sanity check of the reference itself: the names the rules need are there.
    assert {"recal_events_total", "recal_consumer_lag", "recal_calibration_ece",
            "recal_processing_seconds_bucket"} <= exported
    for path in (PROM_DIR / "rules.yml", PROM_DIR / "rules_test.yml", DASHBOARD):
        used = set(_METRIC.findall(path.read_text()))
        assert used, path
        assert used <= exported, f"{path.name} uses metrics the worker does not export: " \
                                 f"{sorted(used - exported)}"


# --- Grafana dashboard -----------------------------------------------------------------------


def test_dashboard_panels_query_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in datasources}
    titles = [p["title"] for p in dash["panels"]]
    assert len(set(titles)) == len(titles)
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
            assert target["expr"].strip(), panel["title"]
    wanted = ("Events/s", "lag", "Feedback", "Dead letters", "ECE", "Calibrator versions",
              "Alerts firing", "transactions", "restore")
    for word in wanted:
        assert any(word.lower() in t.lower() for t in titles), word
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)


# --- docker-compose --------------------------------------------------------------------------


def test_compose_services_and_mounted_files_exist() -> None:
    services = compose()["services"]
    assert set(services) >= {"kafka", "worker", "prometheus", "grafana"}
    worker = services["worker"]
    assert (REPO / worker["build"] / "Dockerfile").is_file()
    assert worker["deploy"]["replicas"] >= 2
    assert worker["environment"]["RECAL_BOOTSTRAP_SERVERS"] == "kafka:9092"
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
    # Named volumes are declared.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose().get("volumes", {}), f"{name}: volume {source}"


def test_compose_prometheus_config_is_valid_and_scrapes_the_workers() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prom["command"] if "=" in arg)
    config_path = host_path(bind_mounts(prom), flags["--config.file"])
    assert config_path.is_file()
    result = promtool("check", "config", str(config_path), cwd=config_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    config = yaml.safe_load(config_path.read_text())
    assert [(config_path.parent / f).resolve() for f in config["rule_files"]] == [
        (PROM_DIR / "rules.yml").resolve()]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    (sd,) = job["dns_sd_configs"]
    port = int(services["worker"]["environment"]["RECAL_WEB_PORT"])
    assert sd["names"] == ["worker"] and sd["port"] == port
    # The worker must listen beyond localhost in its container (the image sets it).
    assert "ENV RECAL_WEB_HOST=0.0.0.0" in (REPO / "Dockerfile").read_text()


def test_compose_grafana_provisioning_points_at_the_mounted_files() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = host_path(mounts, "/etc/grafana/provisioning")
    providers = yaml.safe_load(
        (provisioning / "dashboards" / "recal.yml").read_text())["providers"]
    (provider,) = providers
    assert host_path(mounts, provider["options"]["path"]) == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(mounts, home) == DASHBOARD
    (datasource,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host in services and port == "9090"
