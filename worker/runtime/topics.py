"""The worker's topics: names, the start-up layout check, and creation of missing topics.

At start the worker looks at the cluster and decides:

- impressions and clicks must be co-partitioned (DESIGN §2, §3): when both exist with
  different partition counts the worker refuses to start (``TopicLayoutError``, exit 2);
- the input partition count N is the existing inputs' count; when NEITHER input exists they
  are created with ``settings.partitions`` (a fresh deployment or the demo: creating them is
  what an operator would do by hand anyway, and producers that start later then find them);
  when only one exists, the other is created with its count, so they are co-partitioned;
- feedback is an output that downstream stages consume co-partitioned with the inputs, and
  the worker's state changelog holds partition p's state in its partition p: both must have
  N partitions (refuse otherwise) and are created with N when missing;
- the other outputs (dead letters, calibrators, alerts, posteriors) are created with N when
  missing; an existing one with another count is accepted (they are keyed by hash);
- calibrators, posteriors and state are compacted (latest record per key).

Topics the worker creates get replication factor min(3, brokers in the cluster): 1 on the
local single-node broker, 3 on a production cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.core.errors import ConfigError, RecalError
from worker.runtime.security import aiokafka_security_kwargs, bootstrap_list
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Short names of the topics this runtime uses (``settings.topic(short)`` is the full name).
INPUT_SOURCES = ("impressions", "clicks")
#: Every topic, in ``TopicNames`` field order.
ALL_TOPICS = (
    "impressions", "clicks", "feedback", "dlq", "calibrators", "alerts", "posteriors", "state"
)
#: The topics the worker writes for others (downstream consumers, the report, the demo).
OUTPUT_TOPICS = ("feedback", "calibrators", "alerts", "posteriors", "dlq")
MAX_REPLICATION = 3


class TopicLayoutError(ConfigError):
    """The cluster's topics cannot be used as they are (e.g. inputs not co-partitioned)."""


class BrokerUnavailableError(RecalError):
    """The Kafka cluster could not be reached or did not answer in time."""


@dataclass(frozen=True)
class TopicNames:
    """Full topic names of runtime A, with the configured prefix (DESIGN §3).

    ``state`` is the worker's own changelog (compacted, co-partitioned with the inputs):
    each partition's pipeline state, one record per ``Pipeline.changed_keys()`` key.

    >>> TopicNames.from_settings(Settings(topic_prefix="x.")).clicks
    'x.clicks'
    >>> TopicNames.from_prefix("x.").state
    'x.state'
    """

    impressions: str
    clicks: str
    feedback: str
    dlq: str
    calibrators: str = "recal.calibrators"
    alerts: str = "recal.alerts"
    posteriors: str = "recal.posteriors"
    state: str = "recal.state"

    @classmethod
    def from_prefix(cls, prefix: str) -> TopicNames:
        return cls(*(f"{prefix}{short}" for short in ALL_TOPICS))

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        return cls.from_prefix(settings.topic_prefix)

    def source_of(self, topic: str) -> str:
        """"impressions" or "clicks" for an input topic's full name."""
        if topic == self.impressions:
            return "impressions"
        if topic == self.clicks:
            return "clicks"
        raise ValueError(f"{topic!r} is not an input topic ({self.impressions}, {self.clicks})")

    def input_topic(self, source: str) -> str:
        return self.impressions if source == "impressions" else self.clicks

    def outputs(self) -> dict[str, str]:
        """Full name -> short name of every output topic, in ``OUTPUT_TOPICS`` order.

        >>> list(TopicNames.from_prefix("x.").outputs().values()) == list(OUTPUT_TOPICS)
        True
        """
        return {getattr(self, short): short for short in OUTPUT_TOPICS}


#: Topics whose consumers want the latest record per key (DESIGN §3): log compaction.
COMPACTED = ("calibrators", "posteriors", "state")
#: Largest state record (bytes) the changelog accepts: a partition's ``monitor`` record holds
#: the policy's training buffers and grows past Kafka's 1 MB default.
STATE_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Topics that must have the inputs' partition count: feedback is consumed co-partitioned
#: with them, the state changelog holds partition p's state in its partition p.
CO_PARTITIONED = ("feedback", "state")


@dataclass(frozen=True)
class TopicPlan:
    """What the worker runs with: the partition count N, the replication factor of topics it
    creates, and the topics it must create as (name, partitions, topic configs)."""

    partitions: int
    replication_factor: int
    create: tuple[tuple[str, int, tuple[tuple[str, str], ...]], ...] = ()


def plan_topics(
    names: TopicNames,
    existing: Mapping[str, int],
    default_partitions: int,
    n_brokers: int,
) -> TopicPlan:
    """Check the layout of ``existing`` (topic -> partition count) and plan what to create.

    Inputs must be co-partitioned; their count N (else ``default_partitions``) is the count
    of every topic the worker creates; ``feedback`` and the ``state`` changelog must have N
    when they exist (state built for another layout cannot be restored). Calibrators,
    posteriors and state are created compacted.

    >>> names = TopicNames.from_prefix("")
    >>> [(n, p) for n, p, _ in plan_topics(names, {"impressions": 4}, 1, 1).create][:3]
    [('clicks', 4), ('feedback', 4), ('dlq', 4)]
    >>> dict(plan_topics(names, {}, 1, 1).create[-1][2])
    {'cleanup.policy': 'compact', 'max.message.bytes': '16777216'}
    >>> try:
    ...     plan_topics(names, {"impressions": 4, "clicks": 2}, 1, 1)
    ... except TopicLayoutError as err:
    ...     print(str(err)[:60])
    input topics are not co-partitioned: impressions has 4 parti
    """
    n_imp = existing.get(names.impressions)
    n_clk = existing.get(names.clicks)
    if n_imp is not None and n_clk is not None and n_imp != n_clk:
        raise TopicLayoutError(
            f"input topics are not co-partitioned: {names.impressions} has {n_imp} partitions, "
            f"{names.clicks} has {n_clk}; impressions and clicks must have the same partition "
            "count (they are joined per partition by user_id)"
        )
    partitions = n_imp if n_imp is not None else n_clk if n_clk is not None else default_partitions
    for short in CO_PARTITIONED:
        name = getattr(names, short)
        n_topic = existing.get(name)
        if n_topic is not None and n_topic != partitions:
            why = (
                "feedback must be co-partitioned with the inputs" if short == "feedback" else
                "that state was built for another layout and cannot be restored; use a new "
                "--topic-prefix (or delete the state topic)"
            )
            raise TopicLayoutError(
                f"topic {name} has {n_topic} partitions but the input topics have "
                f"{partitions}: {why}"
            )
    create = tuple(
        (getattr(names, short), partitions, _topic_configs(short))
        for short in ALL_TOPICS
        if getattr(names, short) not in existing
    )
    replication = max(1, min(MAX_REPLICATION, n_brokers))
    return TopicPlan(partitions=partitions, replication_factor=replication, create=create)


def _topic_configs(short: str) -> tuple[tuple[str, str], ...]:
    configs: list[tuple[str, str]] = []
    if short in COMPACTED:
        configs.append(("cleanup.policy", "compact"))
    if short == "state":
        configs.append(("max.message.bytes", str(STATE_MAX_MESSAGE_BYTES)))
    return tuple(configs)


async def start_client(
    client: Any, close: Callable[[], Awaitable[Any]], where: str, timeout_s: float
) -> None:
    """Start an aiokafka client (consumer, producer or admin); when Kafka cannot be reached
    within ``timeout_s``, close it and raise ``BrokerUnavailableError`` saying ``where``."""
    from aiokafka.errors import KafkaError

    try:
        await asyncio.wait_for(client.start(), timeout_s)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await close()
        raise BrokerUnavailableError(
            f"cannot reach Kafka at {where}: {type(exc).__name__}: {exc}"
        ) from None


def committed_consumer(
    bootstrap_servers: str, client_id: str, *topics: str, **options: Any
) -> Any:
    """An aiokafka consumer that reads topics as a downstream consumer sees them:
    ``read_committed`` (the worker writes in transactions, an aborted one must not show),
    from the beginning, with no consumer group and nothing committed (the output topics,
    the report's dump, the tests' and benchmarks' readers). ``topics`` may be empty
    (subscribe or assign later); ``options`` go to aiokafka (e.g. security, fetch sizes).
    Not started: start it (``start_client`` bounds the wait)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap_servers, client_id=client_id, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level="read_committed", **options,
    )


async def ensure_topics(
    settings: Settings, names: TopicNames, timeout_s: float = 30.0
) -> TopicPlan:
    """Check the cluster's topic layout, create the missing topics; the plan run with."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_list(settings),
        request_timeout_ms=int(timeout_s * 1000),
        client_id=f"{settings.app_id}-admin",
        **aiokafka_security_kwargs(settings),
    )
    await start_client(
        admin, admin.close,
        f"{settings.bootstrap_servers} (security_protocol={settings.security_protocol})",
        timeout_s,
    )
    try:
        existing, n_brokers = await _describe(admin)
        plan = plan_topics(names, existing, settings.partitions, n_brokers)
        if plan.create:
            await _create(admin, plan, timeout_s)
            # Another worker may have created some of them concurrently: check again.
            existing, n_brokers = await _wait_for_leaders(
                admin, [name for name, _n, _c in plan.create], timeout_s
            )
            plan = TopicPlan(
                plan_topics(names, existing, settings.partitions, n_brokers).partitions,
                plan.replication_factor,
                plan.create,
            )
        return plan
    finally:
        await admin.close()


async def _describe(admin: object) -> tuple[dict[str, int], int]:
    # All topics, not just ours: a metadata request naming a missing topic would auto-create
    # it with the broker's default partition count on clusters that allow that.
    topics = await admin.describe_topics()  # type: ignore[attr-defined]
    cluster = await admin.describe_cluster()  # type: ignore[attr-defined]
    existing = {
        t["topic"]: len(t["partitions"]) for t in topics if t.get("error_code", 0) == 0
    }
    return existing, len(cluster.get("brokers", ())) or 1


async def _create(admin: object, plan: TopicPlan, timeout_s: float) -> None:
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    response = await admin.create_topics(  # type: ignore[attr-defined]
        [
            NewTopic(name=name, num_partitions=n, replication_factor=plan.replication_factor,
                     topic_configs=dict(configs))
            for name, n, configs in plan.create
        ],
        timeout_ms=int(timeout_s * 1000),
    )
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            log.warning(
                "created topic %s with %s partitions (replication factor %s)",
                name, {t[0]: t[1] for t in plan.create}[name], plan.replication_factor,
            )
        elif code != TopicAlreadyExistsError.errno:
            message = entry[2] if len(entry) > 2 else None
            raise TopicLayoutError(
                f"cannot create topic {name!r}: {for_code(code).__name__} ({code}) {message or ''}"
            )


async def _wait_for_leaders(
    admin: object, names: Iterable[str], timeout_s: float
) -> tuple[dict[str, int], int]:
    """Wait until every partition of ``names`` has a leader (KRaft acknowledges a creation
    slightly before the broker serves the topic)."""
    wanted = set(names)
    deadline = time.monotonic() + timeout_s
    while True:
        topics = await admin.describe_topics()  # type: ignore[attr-defined]
        ready = {
            t["topic"]
            for t in topics
            if t["topic"] in wanted
            and t.get("error_code", 0) == 0
            and t["partitions"]
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
        }
        if ready == wanted:
            return await _describe(admin)
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"topics {sorted(wanted - ready)} have no leader after {timeout_s:.0f}s"
            )
        await asyncio.sleep(0.1)
