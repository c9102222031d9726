"""The serving client's Kafka feed: a background aiokafka consumer of ``recal.calibrators``.

Imported lazily by ``CalibratorClient.subscribe`` so that ``import worker.client`` stays free
of aiokafka. The consumer runs its own event loop in a daemon thread, because serving code
is usually synchronous (or runs its own loop that must not be blocked by fetches).

No consumer group: every serving process needs every key, so each one reads all partitions
of the compacted topic from the beginning, and nothing is committed (a restart re-reads the
compacted topic, which holds about one record per key). ``read_committed`` because the
worker publishes versions in Kafka transactions: an aborted refit must never serve.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.core.errors import InvalidInputError

if TYPE_CHECKING:
    from worker.client import CalibratorClient

log = logging.getLogger(__name__)

_POLL_MS = 200
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 30.0


class CalibratorSubscription:
    """A running feed of one topic into one ``CalibratorClient`` (see ``subscribe``)."""

    def __init__(
        self,
        client: CalibratorClient,
        bootstrap: str,
        topic: str,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._bootstrap = bootstrap
        self._topic = topic
        self._config = dict(consumer_config or {})
        self._caught_up = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"recal-client-{topic}", daemon=True
        )
        # The last error of a failed attempt (the thread retries), for diagnostics.
        self.error: BaseException | None = None
        self._fatal = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the consumer and wait for its thread (at most ``timeout_s``)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def wait_caught_up(self, timeout_s: float | None = None) -> bool:
        """True once every record present at subscription was applied; False on timeout
        (``error`` then says why, if the consumer keeps failing, e.g. no broker)."""
        done = self._caught_up.wait(timeout_s)
        if self._fatal:
            raise RuntimeError(f"calibrator subscription stopped: {self.error!r}") from self.error
        return done

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff_s = _RETRY_MIN_S
        while not self._stopping.is_set():
            try:
                asyncio.run(self._consume())
            except BaseException as exc:
                if not isinstance(exc, (KafkaError, OSError)):
                    # Not the broker (a bad consumer option, a bug): stop loudly, and wake
                    # whoever waits so they hear it instead of timing out.
                    self.error, self._fatal = exc, True
                    log.exception("calibrator subscription to %s stopped", self._topic)
                    self._caught_up.set()
                    return
                # Serving keeps its versions while the broker is away; retry from the
                # beginning (re-read records are stale and ignored), with a capped backoff.
                self.error = exc
                log.warning("calibrator subscription to %s failed, retrying in %.1f s: %s",
                            self._topic, backoff_s, exc)
                self._stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, _RETRY_MAX_S)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **self._config,
        )
        # Without a group, subscribe assigns every partition (also ones added later), and
        # with nothing committed every partition starts at the beginning ("earliest").
        consumer.subscribe([self._topic])
        await consumer.start()
        try:
            targets: dict[TopicPartition, int] | None = None
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=_POLL_MS)
                for records in batches.values():
                    for record in records:
                        self._apply(record.key, record.value, record.offset)
                if self._caught_up.is_set():
                    continue
                assigned = consumer.assignment()
                if targets is None and assigned:
                    # "Caught up" is relative to the end at the first assignment: under
                    # read_committed the end offsets are the last stable offsets, which the
                    # position reaches once the records and markers before them are read.
                    targets = await consumer.end_offsets(list(assigned))
                if targets is not None and await _reached(consumer, targets):
                    self._caught_up.set()
        finally:
            await consumer.stop()

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        try:
            self._client.apply(key, value)
        except InvalidInputError as exc:
            # Counted by the client; the previous version keeps serving.
            log.warning("rejected calibrator record at %s offset %s: %s", self._topic, offset, exc)


async def _reached(consumer: AIOKafkaConsumer, targets: Mapping[TopicPartition, int]) -> bool:
    for tp, end in targets.items():
        if await consumer.position(tp) < end:
            return False
    return True
