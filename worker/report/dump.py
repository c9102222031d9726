"""``dump_topics``: the worker's output topics, as committed, into files of replay's layout.

Reads ``<prefix>feedback``, ``calibrators``, ``alerts``, ``posteriors`` and ``dlq`` (names
from ``TopicNames.from_prefix``, their one owner) from the beginning up to the end offsets
fetched at start, ``read_committed`` (the worker writes in transactions: an aborted one must
not show up in a report), with no consumer group and nothing committed. Each record's value
becomes one line of ``<short>.jsonl``; a tombstone on the calibrators topic becomes
``{"key": ..., "value": null}``, the line the serving client's ``from_jsonl`` reads as one.
A topic that does not exist gives no file (the report then says the stream is missing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import IO, Any

import orjson

from worker.core.errors import ConfigError
from worker.runtime.topics import (
    OUTPUT_TOPICS,
    BrokerUnavailableError,
    TopicNames,
    committed_consumer,
    start_client,
)

log = logging.getLogger(__name__)

#: The output topics dumped, by short name (each to ``<short>.jsonl``).
DUMPED = OUTPUT_TOPICS
_POLL_MS = 200
_MAX_RECORDS = 20_000


def dump_topics(
    bootstrap_servers: str,
    topic_prefix: str,
    out_dir: Path,
    *,
    timeout_s: float = 30.0,
    **client_options: Any,
) -> Path:
    """Dump the output topics into ``out_dir`` (created); returns ``out_dir``.

    ``client_options`` go to aiokafka's consumer (e.g. ``aiokafka_security_kwargs(settings)``
    for SASL/TLS). Raises ``ConfigError`` when the feedback topic does not exist and
    ``BrokerUnavailableError`` when the cluster cannot be reached or the records up to the
    end offsets are not read within ``timeout_s``.
    """
    out_dir = Path(out_dir)
    return asyncio.run(_dump(bootstrap_servers, topic_prefix, out_dir, timeout_s, client_options))


async def _dump(
    bootstrap: str, prefix: str, out_dir: Path, timeout_s: float, options: dict[str, Any]
) -> Path:
    from aiokafka.errors import KafkaError

    names = TopicNames.from_prefix(prefix)
    topics = names.outputs()
    deadline = time.monotonic() + timeout_s
    consumer = committed_consumer(
        bootstrap, "recal-report-dump", request_timeout_ms=max(int(timeout_s * 1000), 1000),
        **options,
    )
    await start_client(consumer, consumer.stop, f"{bootstrap} to dump the output topics",
                       timeout_s)
    files: dict[str, IO[bytes]] = {}
    try:
        existing = await consumer.topics()
        if names.feedback not in existing:
            raise ConfigError(
                f"topic {names.feedback} does not exist at {bootstrap}: is the topic prefix "
                f"{prefix!r} the worker's (RECAL_TOPIC_PREFIX)?"
            )
        wanted = [topic for topic in topics if topic in existing]
        # Subscribed only once known to exist: a metadata request naming a missing topic
        # would create it on clusters that auto-create topics. Without a group, subscribing
        # assigns every partition, read from the beginning (nothing is committed).
        consumer.subscribe(wanted)
        tps = await _assigned(consumer, wanted, deadline)
        # Under read_committed these are the last stable offsets: the dump ends at what was
        # committed when it started, so it terminates even while the worker keeps writing.
        ends = await consumer.end_offsets(list(tps))
        out_dir.mkdir(parents=True, exist_ok=True)
        for topic, short in topics.items():
            if topic in existing:
                # Closed together in the finally below.
                files[short] = open(out_dir / f"{short}.jsonl", "wb")  # noqa: SIM115
        counts = dict.fromkeys(files, 0)
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        last_note = time.monotonic()
        while pending:
            if time.monotonic() > deadline:
                left = {f"{tp.topic}[{tp.partition}]": ends[tp] for tp in pending}
                raise BrokerUnavailableError(
                    f"timed out after {timeout_s:g} s dumping the output topics; still "
                    f"reading up to end offsets {left}"
                )
            batches = await consumer.getmany(*pending, timeout_ms=_POLL_MS,
                                             max_records=_MAX_RECORDS)
            for tp, records in batches.items():
                short = topics[tp.topic]
                handle = files[short]
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    line = _line(short, record.key, record.value)
                    if line is not None:
                        handle.write(line)
                        counts[short] += 1
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if time.monotonic() - last_note > 5:
                last_note = time.monotonic()
                log.info("report: dumping %s", _counts_text(counts))
        log.info("report: dumped %s to %s", _counts_text(counts), out_dir)
    except KafkaError as exc:
        raise BrokerUnavailableError(
            f"Kafka error dumping the output topics from {bootstrap}: {exc}"
        ) from None
    finally:
        for handle in files.values():
            handle.close()
        await consumer.stop()
    return out_dir


async def _assigned(consumer: Any, topics: list[str], deadline: float) -> list[Any]:
    """Every partition of ``topics``, once the consumer's metadata and assignment have them."""
    while True:
        parts = {topic: consumer.partitions_for_topic(topic) for topic in topics}
        assigned = consumer.assignment()
        if all(parts.values()) and len(assigned) == sum(len(p) for p in parts.values()):
            return sorted(assigned)
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"timed out waiting for the partitions of {', '.join(topics)}"
            )
        await asyncio.sleep(0.05)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {short}" for short, n in counts.items())


def _line(short: str, key: bytes | None, value: bytes | None) -> bytes | None:
    """One JSONL line for a record (None: nothing to write).

    >>> _line("alerts", b"k", b'{"a":\\n 1}')
    b'{"a":  1}\\n'
    >>> _line("calibrators", b"m|global", None)
    b'{"key":"m|global","value":null}\\n'
    >>> _line("posteriors", b"u|arm", None) is None
    True
    """
    if value is None:
        if short != "calibrators" or key is None:
            return None  # a posterior tombstone only frees the key: nothing to report
        return orjson.dumps({"key": key.decode("utf-8", "replace"), "value": None}) + b"\n"
    # A line break in JSON is whitespace outside strings (inside them it is escaped), so a
    # space keeps the value and the one-record-per-line layout.
    return value.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"
