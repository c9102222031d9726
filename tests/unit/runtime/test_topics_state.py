"""Topic layout planning, table record formats, and their agreement with faust's naming."""

from __future__ import annotations

import orjson
import pytest

from worker.core.errors import ConfigError
from worker.runtime.state import (
    clock_of,
    clock_record,
    encode_key,
    encode_value,
    group_user_records,
    user_record,
)
from worker.runtime.topics import TopicLayoutError, TopicNames, changelog_topic_name, plan_topics
from worker.settings import Settings

NAMES = TopicNames("p.impressions", "p.clicks", "p.feedback", "p.dlq")


def test_names_carry_the_prefix() -> None:
    names = TopicNames.from_settings(Settings(topic_prefix="prod.recal."))
    assert (names.impressions, names.clicks, names.feedback, names.dlq) == (
        "prod.recal.impressions", "prod.recal.clicks", "prod.recal.feedback", "prod.recal.dlq")
    assert names.source_of("prod.recal.clicks") == "clicks"
    with pytest.raises(ValueError):
        names.source_of("prod.recal.feedback")


def test_fresh_cluster_creates_everything_with_the_configured_partitions() -> None:
    plan = plan_topics(NAMES, {}, default_partitions=6, n_brokers=5)
    assert plan.partitions == 6 and plan.replication_factor == 3
    assert plan.create == tuple((n, 6) for n in ("p.impressions", "p.clicks", "p.feedback",
                                                 "p.dlq"))


def test_existing_inputs_decide_the_partition_count() -> None:
    plan = plan_topics(NAMES, {"p.impressions": 4, "p.clicks": 4, "p.dlq": 9}, 1, 1)
    assert plan.partitions == 4 and plan.replication_factor == 1
    assert plan.create == (("p.feedback", 4),)  # an odd dlq count is fine
    one = plan_topics(NAMES, {"p.clicks": 3}, default_partitions=8, n_brokers=2)
    assert one.partitions == 3 and ("p.impressions", 3) in one.create


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ({"p.impressions": 2, "p.clicks": 3}, "not co-partitioned"),
        ({"p.impressions": 2, "p.clicks": 2, "p.feedback": 4}, "feedback must be co-partitioned"),
        ({"p.impressions": 2, "p.clicks": 2, "app-join-state-changelog": 3},
         "cannot be restored"),
    ],
)
def test_inconsistent_layouts_are_refused(existing: dict[str, int], message: str) -> None:
    with pytest.raises(TopicLayoutError, match=message) as info:
        plan_topics(NAMES, existing, 1, 1, internal=["app-join-state-changelog"])
    assert isinstance(info.value, ConfigError)  # the CLI exits 2 with the message


def test_changelog_names_match_faust() -> None:
    import faust

    app = faust.App("recal-x", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("join-state", partitions=2)
    assert table.changelog_topic.get_topic_name() == changelog_topic_name("recal-x", "join-state")


def test_records_round_trip_through_faust_json_codec() -> None:
    from faust.serializers import codecs

    record = user_record(1, [5, -1], {"v": 1, "user_id": "ü", "impressions": []})
    assert codecs.loads("json", encode_value(record)) == record
    assert codecs.loads("json", encode_key("ü")) == "ü"
    assert codecs.loads("json", encode_key(7)) == 7
    assert encode_value(None) is None
    assert encode_key("u1") == orjson.dumps("u1")


def test_group_user_records_by_partition() -> None:
    records = [("a", user_record(0, [1, 2], {})), ("b", user_record(1, [1, 2], {})),
               ("c", None), (0, clock_record(0, {"v": 1})), ("d", user_record(0, [3, 4], {}))]
    grouped = group_user_records(records, [0, 2])
    assert [r["o"] for r in grouped[0]] == [[1, 2], [3, 4]]
    assert grouped[2] == [] and 1 not in grouped


def test_unknown_record_versions_fail_loudly() -> None:
    with pytest.raises(ConfigError, match="record version 2"):
        group_user_records([("a", {"v": 2, "p": 0})], [0])
    with pytest.raises(ConfigError, match="clock record version"):
        clock_of({"v": 9})
    assert clock_of(None) is None
    assert clock_of(clock_record(3, {"v": 1})) == {"v": 1}
