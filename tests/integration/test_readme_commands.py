"""Every command in README.md runs: the fenced ``sh`` and ``python`` blocks, in README order,
as one bash script in a temporary directory (the local broker started by the README's own
``recal kafka start``), and the outputs the README claims are checked.

The script runs with ``.venv`` in the temporary directory pointing at this interpreter's
environment (``source .venv/bin/activate`` works as in a clone), ``PYTHONPATH`` at this
checkout, and ``RECAL_WEB_PORT`` at a free port (the README's commands use
``${RECAL_WEB_PORT:-6066}``), so parallel runs do not collide. Commands that cannot run
inside the suite are listed in ``NOT_RUN`` with the reason and the test that covers them; a
README command that is neither run nor listed cannot exist: every line of an ``sh`` block
that is not listed is run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme_support import ROOT, Block, blocks
from worker.settings import markdown_table

pytestmark = pytest.mark.integration

#: README commands not run here: command -> (why, what covers it instead).
NOT_RUN: dict[str, tuple[str, str]] = {
    "make demo": ("runs `recal demo` on its own broker (about a minute)",
                  "tests/integration/test_demo.py"),
    "make test": ("is the test suite itself", ".ci/run (runs make test)"),
    "make install": ("creates .venv at the repository root; the suite already runs in it",
                     ".ci/run (make test depends on it)"),
    "make lint": ("part of make test", ".ci/run (make test runs ruff)"),
    "make unit": ("part of make test", ".ci/run (make test runs tests/unit)"),
    "make integration": ("part of make test", ".ci/run (make test runs tests/integration)"),
    "docker compose up --build": ("no Docker engine on the development machines or CI",
                                  "tests/unit/test_deploy.py (the compose file, its mounts, "
                                  "the Prometheus config and metric names; not run)"),
    "docker compose up --build --scale worker=4": (
        "no Docker engine on the development machines or CI",
        "tests/unit/test_deploy.py (the compose file; not run)"),
}

TIMEOUT_S = 420
_MARK = "@@readme-block {}@@"


def _command(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _script(runnable: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for i, block in enumerate(runnable):
        parts.append(f"echo '{_MARK.format(i)}'")
        if block.lang == "python":
            assert "RECAL_PY" not in block.text
            parts.append(f"python - <<'RECAL_PY'\n{block.text}RECAL_PY")
            continue
        for line in block.text.splitlines():
            parts.append("" if _command(line) in NOT_RUN else line)
    return "\n".join(parts) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _outputs(stdout: str, n: int) -> list[str]:
    pieces = re.split(r"^@@readme-block (\d+)@@\n", stdout, flags=re.MULTILINE)
    out = [""] * n
    for index, text in zip(pieces[1::2], pieces[2::2], strict=True):
        out[int(index)] = text
    return out


def _claimed_prints(block: Block) -> list[str | None]:
    """Per ``print(`` line of a python block, the output its trailing comment claims (None
    for an ``e.g.`` comment or none)."""
    claims: list[str | None] = []
    for line in block.text.splitlines():
        if line.startswith("print("):
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            claims.append(None if not comment or comment.startswith("e.g.") else comment)
    return claims


def test_not_run_list_is_current() -> None:
    commands = {_command(line) for b in blocks() if b.lang == "sh" for line in b.text.splitlines()}
    for command, (_why, covered_by) in NOT_RUN.items():
        assert command in commands, f"{command!r} is no longer in README.md; drop it from NOT_RUN"
        path = covered_by.split(" ", 1)[0]
        assert (ROOT / path).exists(), covered_by


def test_every_readme_command_runs(tmp_path: Path) -> None:
    runnable = [b for b in blocks() if b.lang in ("sh", "python")]
    assert len(runnable) >= 6
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    script = tmp_path / "readme.sh"
    script.write_text(_script(runnable), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECAL_") or k == "RECAL_KAFKA_HOME"}
    env.update(PYTHONPATH=str(ROOT), RECAL_WEB_PORT=str(_free_port()), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        ["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"README commands timed out after {TIMEOUT_S}s:\n{stdout[-4000:]}")
    finally:
        # Whatever the script left behind (the README's background worker, its broker).
        subprocess.run([sys.executable, "-m", "worker.cli", "kafka", "stop", "--data-dir",
                        str(tmp_path / ".kafka")], env=env, capture_output=True, timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    (tmp_path / "readme.out").write_text(stdout)  # for a look after a failure
    worker_log = tmp_path / "worker.log"
    tail = worker_log.read_text(errors="replace")[-3000:] if worker_log.exists() else ""
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{stdout[-6000:]}\n{tail}"
    out = _outputs(stdout, len(runnable))

    def output_of(needle: str) -> str:
        (index,) = [i for i, b in enumerate(runnable) if needle in b.text]
        return out[index]

    # Your first replay: the claims of the paragraph after it.
    replay = tmp_path / "replay-out"
    summary = json.loads((replay / "summary.json").read_text())
    assert (summary["impressions"], summary["feedback"]) == (20_000, 20_000)
    assert summary["dead_letters_total"] == 0 and (replay / "dlq.jsonl").read_text() == ""
    versions = [json.loads(line) for line in (replay / "calibrators.jsonl").open()]
    assert len(versions) == 18 and all(v["scope"] == "global" for v in versions)
    temperatures = [v["params"]["temperature"] for v in versions if v["method"] == "temperature"]
    # A contextual map's ``a`` is its slope at the average context.
    slopes = [v["params"]["a"] for v in versions if v["method"] == "contextual"]
    assert [v["method"] for v in versions[:2]] == ["temperature", "temperature"]
    assert len(temperatures) + len(slopes) == 18
    assert all(1.55 <= t <= 1.61 for t in temperatures), temperatures
    assert all(0.585 <= a <= 0.68 for a in slopes), slopes
    alerts = [json.loads(line) for line in (replay / "alerts.jsonl").open()]
    firing = {(a["kind"], a["scope"]) for a in alerts if a["status"] == "firing"}
    assert firing == {("calibration_drift", "global"), ("calibration_drift", "segment:web"),
                      ("calibration_drift", "segment:app"), ("base_rate_shift", "global")}
    for a in alerts:
        if a["status"] == "firing":  # every episode ends
            assert any(b["fingerprint"] == a["fingerprint"] and b["status"] == "resolved"
                       and b["event_ts"] >= a["event_ts"] for b in alerts), a
    shown = output_of("cat replay-out/summary.json")  # after the simulator's own summary line
    assert json.loads(shown[shown.rindex("\n{\n") + 1:]) == summary

    # First deployment: the broker's address, the worker's metrics, the subscribed client.
    deploy = output_of("recal kafka start")
    assert re.search(r"^127\.0\.0\.1:\d+$", deploy, re.MULTILINE), deploy
    for series in ("recal_feedback_total{label=", "recal_calibrator_versions_total{reason="):
        assert series in deploy, deploy
    served, probability = output_of("client.subscribe(").splitlines()
    assert re.fullmatch(r"(global|segment:\w+) \d+ (temperature|platt|isotonic|contextual)",
                        served)
    assert 0.0 < float(probability) < 1.0
    # The last line: the broker's log line goes to stderr, merged here.
    assert output_of("recal kafka stop --json").splitlines()[-1] == '{"stopped": true}'

    # Every python block's commented prints, and the generated settings table.
    for i, block in enumerate(runnable):
        if block.lang != "python":
            continue
        lines = out[i].splitlines()
        claims = _claimed_prints(block)
        assert len(lines) == len(claims), (block.line, out[i])
        for got, claim in zip(lines, claims, strict=True):
            assert claim is None or got == claim, (block.line, got, claim)
    assert output_of("python -m worker.settings --markdown") == markdown_table()
    assert (tmp_path / "replay-strict" / "summary.json").exists()
    assert (tmp_path / "calibrator-snapshot" / "store.json").exists()
