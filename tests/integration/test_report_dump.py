"""``dump_topics`` against the real broker: a small replay's outputs produced to the output
topics (in committed transactions and plainly, with an aborted transaction, a calibrator
tombstone, and a transaction still open during the dump) read back as replay's files, and
the report built from the dump scores the feedback exactly as the one built from replay."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from worker.cli import main
from worker.core.errors import ConfigError
from worker.replay import run_replay
from worker.report import build_report, dump_topics
from worker.report.dump import DUMPED
from worker.report.load import load_directory
from worker.report.prequential import daily_table, prequential_scores
from worker.runtime.topics import TopicNames
from worker.sim.scenario import Scenario
from worker.sim.streamrec import write_jsonl

pytestmark = pytest.mark.integration

SCENARIO = Scenario(n_events=3_000, n_users=80, seed=3, events_per_second=0.2,
                    drift_at_event=1_500, drift_temperature=2.0, malformed_share=0.01)


def _key(short: str, obj: dict[str, Any]) -> bytes:
    if short == "calibrators":
        return f"{obj['model_id']}|{obj['scope']}".encode()
    if short == "posteriors" and "arm" in obj:
        return f"{obj['user_id']}|{obj['arm']}".encode()
    return str(obj.get("user_id") or obj.get("fingerprint") or obj.get("key") or "").encode()


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def _multiset(lines: list[bytes]) -> Counter[bytes]:
    # Canonical JSON: records of several partitions interleave in the dump.
    return Counter(orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS)
                   for line in lines)


async def _create(bootstrap: str, names: TopicNames, shorts: tuple[str, ...]) -> None:
    from worker.localkafka import TopicSpec, create_topics

    specs = [TopicSpec(getattr(names, s), partitions=3 if s == "feedback" else 2) for s in shorts]
    await create_topics(bootstrap, specs)


async def test_dump_reads_what_was_committed_in_replay_layout(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(SCENARIO, events, manifest=False)
    replayed = tmp_path / "replay"
    run_replay(events, replayed)
    lines = {short: _lines(replayed / f"{short}.jsonl") for short in DUMPED}
    assert all(lines[s] for s in DUMPED), {s: len(v) for s, v in lines.items()}

    prefix = unique_topic("r") + "."
    names = TopicNames.from_prefix(prefix)
    await _create(kafka_bootstrap, names, DUMPED)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                transactional_id=unique_topic("tx"), enable_idempotence=True)
    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    await plain.start()
    bogus = b'{"aborted": true}'
    try:
        # Half of each stream in one committed transaction, the rest plainly.
        async with producer.transaction():
            for short in DUMPED:
                for line in lines[short][: len(lines[short]) // 2]:
                    await producer.send(getattr(names, short), line,
                                        key=_key(short, orjson.loads(line)))
        for short in DUMPED:
            for line in lines[short][len(lines[short]) // 2:]:
                await plain.send(getattr(names, short), line, key=_key(short, orjson.loads(line)))
        # A tombstone of a key never published: withdraws nothing, so the dump's report
        # must score exactly as the replay's.
        tombstone_key = b"default|user:nobody"
        await plain.send_and_wait(names.calibrators, None, key=tombstone_key)
        await plain.send_and_wait(names.posteriors, None, key=b"gone|arm")
        # An aborted transaction, then one left open while the dump runs: neither is read,
        # and the open one does not keep the dump waiting (it stops at the start's LSO).
        await producer.begin_transaction()
        for short in DUMPED:
            await producer.send(getattr(names, short), bogus, key=b"x")
        await producer.abort_transaction()
        await producer.begin_transaction()
        for short in DUMPED:
            await producer.send(getattr(names, short), bogus, key=b"x")
        await producer.flush()

        out = tmp_path / "dump"
        got = await asyncio.to_thread(dump_topics, kafka_bootstrap, prefix, out, timeout_s=60.0)
        await producer.abort_transaction()
    finally:
        await producer.stop()
        await plain.stop()

    assert got == out
    for short in DUMPED:
        dumped = _lines(out / f"{short}.jsonl")
        assert bogus not in dumped, short
        want = list(lines[short])
        if short == "calibrators":
            want.append(orjson.dumps({"key": tombstone_key.decode(), "value": None}))
        assert _multiset(dumped) == _multiset(want), short

    # The report of the dump scores every event as the report of the replay does.
    report = build_report(out)
    assert report == out / "report.html"
    tables = []
    for directory in (replayed, out):
        inp = load_directory(directory)
        scored = prequential_scores(inp.feedback, inp.records("calibrators"))
        tables.append(daily_table(inp.feedback, scored.calibrated))
    # The same events and versions; the dump reads the partitions in another interleaving,
    # so sums over a day may differ in the last bit (feedback with equal ts keep file order).
    assert len(tables[0]) == len(tables[1])
    for mine, theirs in zip(tables[0], tables[1], strict=True):
        assert (mine.day_ms, mine.n, mine.positives) == (theirs.day_ms, theirs.n, theirs.positives)
        assert dataclasses.astuple(mine) == pytest.approx(dataclasses.astuple(theirs), rel=1e-12)
    assert len(tables[0]) >= 1


async def test_missing_topics_and_the_command_line(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = unique_topic("m") + "."
    with pytest.raises(ConfigError, match=re.escape(f"topic {prefix}feedback does not exist")):
        await asyncio.to_thread(dump_topics, kafka_bootstrap, prefix, tmp_path / "a",
                                timeout_s=30.0)
    names = TopicNames.from_prefix(prefix)
    await _create(kafka_bootstrap, names, ("feedback",))
    out = await asyncio.to_thread(dump_topics, kafka_bootstrap, prefix, tmp_path / "b",
                                  timeout_s=30.0)
    assert sorted(p.name for p in out.iterdir()) == ["feedback.jsonl"]
    assert (out / "feedback.jsonl").read_bytes() == b""

    # The command line: dump, then build, then print the report's path.
    cli_dir = tmp_path / "cli"
    argv = ["report", "--bootstrap-servers", kafka_bootstrap, "--topic-prefix", prefix,
            "--out-dir", str(cli_dir)]
    assert await asyncio.to_thread(main, argv) == 0
    assert capsys.readouterr().out.strip() == str(cli_dir / "report.html")
    assert "No alerts.jsonl in the source directory." in (cli_dir / "report.html").read_text()
