"""The worker's topics: names, the start-up layout check, and creation of missing topics.

At start (before faust starts) the worker looks at the cluster and decides:

- impressions and clicks must be co-partitioned (DESIGN §2, §3): when both exist with
  different partition counts the worker refuses to start (``TopicLayoutError``, exit 2);
- the input partition count N is the existing inputs' count; when NEITHER input exists they
  are created with ``settings.partitions`` (a fresh deployment or the demo: creating them is
  what an operator would do by hand anyway, and producers that start later then find them);
  when only one exists, the other is created with its count, so they are co-partitioned;
- feedback is an output that downstream stages consume co-partitioned with the inputs, so it
  must have N partitions too (refuse otherwise) and is created with N when missing;
- the dead-letter topic is created with N when missing; an existing one with another count
  is accepted, because dead letters are partitioned by their key's hash, not co-partitioned;
- the join-state changelog topics (faust creates them) must have N partitions when they
  already exist: state built for another layout cannot be restored (refuse).

Topics the worker creates get replication factor min(3, brokers in the cluster): 1 on the
local single-node broker, 3 on a production cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.core.errors import ConfigError, RecalError
from worker.runtime.security import aiokafka_security_kwargs, bootstrap_list
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Short names of the topics this runtime uses (``settings.topic(short)`` is the full name).
INPUT_SOURCES = ("impressions", "clicks")
MAX_REPLICATION = 3


class TopicLayoutError(ConfigError):
    """The cluster's topics cannot be used as they are (e.g. inputs not co-partitioned)."""


class BrokerUnavailableError(RecalError):
    """The Kafka cluster could not be reached or did not answer in time."""


@dataclass(frozen=True)
class TopicNames:
    """Full topic names of runtime A, with the configured prefix.

    >>> TopicNames.from_settings(Settings(topic_prefix="x.")).clicks
    'x.clicks'
    """

    impressions: str
    clicks: str
    feedback: str
    dlq: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        return cls(
            impressions=settings.topic("impressions"),
            clicks=settings.topic("clicks"),
            feedback=settings.topic("feedback"),
            dlq=settings.topic("dlq"),
        )

    def source_of(self, topic: str) -> str:
        """"impressions" or "clicks" for an input topic's full name."""
        if topic == self.impressions:
            return "impressions"
        if topic == self.clicks:
            return "clicks"
        raise ValueError(f"{topic!r} is not an input topic ({self.impressions}, {self.clicks})")

    def input_topic(self, source: str) -> str:
        return self.impressions if source == "impressions" else self.clicks


def changelog_topic_name(app_id: str, table_name: str) -> str:
    """The changelog topic faust uses for a table (``{app_id}-{table}-changelog``)."""
    return f"{app_id}-{table_name}-changelog"


@dataclass(frozen=True)
class TopicPlan:
    """What the worker runs with: the partition count N, the replication factor of topics it
    creates, and the topics it must create as (name, partitions)."""

    partitions: int
    replication_factor: int
    create: tuple[tuple[str, int], ...] = ()


def plan_topics(
    names: TopicNames,
    existing: Mapping[str, int],
    default_partitions: int,
    n_brokers: int,
    internal: Sequence[str] = (),
) -> TopicPlan:
    """Check the layout of ``existing`` (topic -> partition count) and plan what to create.

    >>> names = TopicNames("i", "c", "f", "d")
    >>> plan_topics(names, {"i": 4}, default_partitions=1, n_brokers=1).create
    (('c', 4), ('f', 4), ('d', 4))
    >>> try:
    ...     plan_topics(names, {"i": 4, "c": 2}, 1, 1)
    ... except TopicLayoutError as err:
    ...     print(str(err)[:60])
    input topics are not co-partitioned: i has 4 partitions, c h
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
    n_feedback = existing.get(names.feedback)
    if n_feedback is not None and n_feedback != partitions:
        raise TopicLayoutError(
            f"output topic {names.feedback} has {n_feedback} partitions but the input topics "
            f"have {partitions}; feedback must be co-partitioned with the inputs"
        )
    for name in internal:
        n_internal = existing.get(name)
        if n_internal is not None and n_internal != partitions:
            raise TopicLayoutError(
                f"state changelog {name} has {n_internal} partitions but the input topics have "
                f"{partitions}: that state was built for another layout and cannot be restored; "
                "use a new --app-id (or delete the app's changelog topics)"
            )
    create = tuple(
        (name, partitions)
        for name in (names.impressions, names.clicks, names.feedback, names.dlq)
        if name not in existing
    )
    replication = max(1, min(MAX_REPLICATION, n_brokers))
    return TopicPlan(partitions=partitions, replication_factor=replication, create=create)


async def ensure_topics(
    settings: Settings,
    names: TopicNames,
    internal: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> TopicPlan:
    """Check the cluster's topic layout, create the missing topics; the plan run with."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_list(settings),
        request_timeout_ms=int(timeout_s * 1000),
        client_id=f"{settings.app_id}-admin",
        **aiokafka_security_kwargs(settings),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await admin.close()
        raise BrokerUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap_servers} "
            f"(security_protocol={settings.security_protocol}): {type(exc).__name__}: {exc}"
        ) from None
    try:
        existing, n_brokers = await _describe(admin)
        plan = plan_topics(names, existing, settings.partitions, n_brokers, internal)
        if plan.create:
            await _create(admin, plan, timeout_s)
            # Another worker may have created some of them concurrently: check again.
            existing, n_brokers = await _wait_for_leaders(
                admin, [name for name, _ in plan.create], timeout_s
            )
            plan = TopicPlan(
                plan_topics(names, existing, settings.partitions, n_brokers, internal).partitions,
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
            NewTopic(name=name, num_partitions=n, replication_factor=plan.replication_factor)
            for name, n in plan.create
        ],
        timeout_ms=int(timeout_s * 1000),
    )
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            log.warning(
                "created topic %s with %s partitions (replication factor %s)",
                name, dict(plan.create)[name], plan.replication_factor,
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
