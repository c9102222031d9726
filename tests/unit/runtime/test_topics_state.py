"""Topic names and the start-up layout plan of the worker."""

from __future__ import annotations

import pytest

from worker.core.errors import ConfigError
from worker.runtime.topics import TopicLayoutError, TopicNames, plan_topics
from worker.settings import Settings

NAMES = TopicNames.from_prefix("p.")
EVERY = ("p.impressions", "p.clicks", "p.feedback", "p.dlq", "p.calibrators", "p.alerts",
         "p.posteriors", "p.state")


def test_names_carry_the_prefix() -> None:
    names = TopicNames.from_settings(Settings(topic_prefix="prod.recal."))
    assert (names.impressions, names.clicks, names.feedback, names.dlq, names.state) == (
        "prod.recal.impressions", "prod.recal.clicks", "prod.recal.feedback", "prod.recal.dlq",
        "prod.recal.state")
    assert names.source_of("prod.recal.clicks") == "clicks"
    with pytest.raises(ValueError):
        names.source_of("prod.recal.feedback")


def test_fresh_cluster_creates_everything_with_the_configured_partitions() -> None:
    plan = plan_topics(NAMES, {}, default_partitions=6, n_brokers=5)
    assert plan.partitions == 6 and plan.replication_factor == 3
    assert [(name, n) for name, n, _ in plan.create] == [(name, 6) for name in EVERY]
    compacted = {name for name, _n, configs in plan.create
                 if dict(configs).get("cleanup.policy") == "compact"}
    assert compacted == {"p.calibrators", "p.posteriors", "p.state"}


def test_existing_inputs_decide_the_partition_count() -> None:
    existing = {"p.impressions": 4, "p.clicks": 4, "p.dlq": 9, "p.alerts": 1}
    plan = plan_topics(NAMES, existing, 1, 1)
    assert plan.partitions == 4 and plan.replication_factor == 1
    # Odd dlq / alerts counts are fine: they are keyed by hash, not co-partitioned.
    assert [name for name, _n, _c in plan.create] == [
        "p.feedback", "p.calibrators", "p.posteriors", "p.state"]
    one = plan_topics(NAMES, {"p.clicks": 3}, default_partitions=8, n_brokers=2)
    assert one.partitions == 3 and ("p.impressions", 3, ()) in one.create


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ({"p.impressions": 2, "p.clicks": 3}, "not co-partitioned"),
        ({"p.impressions": 2, "p.clicks": 2, "p.feedback": 4}, "feedback must be co-partitioned"),
        ({"p.impressions": 2, "p.clicks": 2, "p.state": 3}, "cannot be restored"),
    ],
)
def test_inconsistent_layouts_are_refused(existing: dict[str, int], message: str) -> None:
    with pytest.raises(TopicLayoutError, match=message) as info:
        plan_topics(NAMES, existing, 1, 1)
    assert isinstance(info.value, ConfigError)  # the CLI exits 2 with the message
