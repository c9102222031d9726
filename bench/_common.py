"""Shared helpers of the benchmarks: cached generated inputs and a uniform figure printout."""

from __future__ import annotations

import asyncio
import hashlib
import platform
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import orjson

from worker.sim.scenario import Scenario
from worker.sim.streamrec import write_jsonl

DATA_DIR = Path(__file__).resolve().parent / "data"


def cached_stream(scenario: Scenario, name: str) -> Path:
    """Generate `scenario` to bench/data once; later runs reuse the file (keyed by its config)."""
    digest = hashlib.sha256(orjson.dumps(scenario.to_dict(), option=orjson.OPT_SORT_KEYS))
    path = DATA_DIR / f"{name}-{digest.hexdigest()[:12]}.jsonl"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_jsonl(scenario, partial, manifest=False)
        partial.rename(path)
    return path


def machine_line() -> str:
    """When and where a figure was measured, printed with every benchmark."""
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now} | commit {commit or '?'} | Python {platform.python_version()} | "
        f"load {' '.join(load)}"
    )


def run_on_broker(
    run: Callable[[str, Path], Awaitable[int]], bootstrap: str | None, prefix: str
) -> int:
    """``run(bootstrap, tmp_dir)`` against ``bootstrap``, or a fresh local broker (fetched once,
    started in the temporary directory, stopped afterwards); its exit status."""
    from worker.localkafka import LocalKafka

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_name:
        tmp = Path(tmp_name)
        if bootstrap:
            return asyncio.run(run(bootstrap, tmp))
        broker = LocalKafka(data_dir=tmp / "kafka")
        broker.fetch()
        try:
            return asyncio.run(run(broker.start(timeout_s=120.0), tmp))
        finally:
            broker.stop(timeout_s=30.0)
