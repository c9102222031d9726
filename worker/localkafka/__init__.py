"""The project's own single-node Apache Kafka broker (DESIGN §10), for the demo and the tests."""

from worker.localkafka.broker import (
    DEFAULT_VERSION,
    LocalKafka,
    LocalKafkaError,
    TopicSpec,
    create_topics,
    default_cache_dir,
    default_data_dir,
    new_cluster_id,
)

__all__ = [
    "DEFAULT_VERSION",
    "LocalKafka",
    "LocalKafkaError",
    "TopicSpec",
    "create_topics",
    "default_cache_dir",
    "default_data_dir",
    "new_cluster_id",
]
