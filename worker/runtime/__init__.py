"""Runtime A: the faust-streaming worker (``recal worker``), thin around ``worker.core``.

- ``topics``: topic names, the start-up layout check (co-partitioning) and topic creation;
- ``merge``: event-time alignment of the two input topics of a partition;
- ``join_router``: decode → per-partition ``AttributionJoin`` → outputs and state records
  (pure, no I/O: unit-tested without Kafka);
- ``state``: the join-state table's record formats;
- ``join_agent``: the faust agent, timer, persist pipeline and recovery hook;
- ``app``: the app factory; ``web``: /healthz, /readyz, /metrics; ``metrics``: Prometheus;
- ``security``: SASL/TLS settings for faust and aiokafka; ``cli``: ``recal worker``.
"""
