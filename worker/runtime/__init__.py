"""Runtime A: the Kafka consumer-group worker (``recal worker``), thin around ``worker.core``.

- ``topics``: topic names, the start-up layout check (co-partitioning) and topic creation;
- ``merge``: event-time alignment of the two input topics of a partition;
- ``partition_task``: one partition's pipeline and the messages of its next transaction
  (pure, no I/O: unit-tested without Kafka);
- ``group_worker``: the aiokafka consumer group, per-partition transactional producers,
  rebalances, restore from the state changelog;
- ``web``: /healthz, /readyz, /metrics; ``metrics``: Prometheus;
- ``security``: SASL/TLS settings for aiokafka; ``cli``: ``recal worker``.
"""
