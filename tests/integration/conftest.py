"""Integration fixtures: one real local Kafka broker per test session (DESIGN §10).

The broker gets a fresh data directory per session, so no state leaks between runs; tests
isolate themselves from each other through unique topic (and group) names instead of
restarting the broker, which would cost seconds per test.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Generator, Iterator

import pytest

from worker.localkafka import LocalKafka

log = logging.getLogger(__name__)

_BROKER_KEY = pytest.StashKey[LocalKafka]()
_LOG_TAIL_LINES = 80


@pytest.fixture(scope="session")
def kafka_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKafka]:
    """The session's running broker (for tests that need its status or log)."""
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"))
    # Stashed before start so a failing start still shows the broker log in the report.
    request.config.stash[_BROKER_KEY] = broker
    broker.fetch()
    broker.start(timeout_s=120.0)
    try:
        yield broker
    finally:
        broker.stop(timeout_s=30.0)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalKafka) -> str:
    """Bootstrap address "127.0.0.1:PORT" of the session's broker."""
    bootstrap = kafka_broker.status()["bootstrap"]
    assert bootstrap, f"session broker is not running; log tail:\n{kafka_broker.log_tail()}"
    return str(bootstrap)


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of names unique to this test: ``unique_topic("events")`` → "test-x-events-1a2b3c4d".

    For topics and consumer groups, so tests sharing the session broker never see each
    other's messages or offsets.
    """
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:80]

    def make(suffix: str = "t") -> str:
        return f"{base}-{suffix}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the broker log tail to the report of a failed integration test."""
    report = yield
    broker = item.config.stash.get(_BROKER_KEY, None)
    if report.failed and broker is not None and report.when in ("setup", "call"):
        report.sections.append(
            (
                f"kafka broker log (last {_LOG_TAIL_LINES} lines of {broker.log_file})",
                broker.log_tail(_LOG_TAIL_LINES),
            )
        )
    return report
