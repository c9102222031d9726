"""Health, readiness and metrics endpoints on faust's web server (DESIGN §8).

- ``/healthz``: liveness. 200 while the process and its event loop run (a blocked loop
  cannot answer); 503 once the runtime has crashed and is stopping.
- ``/readyz``: 200 once the join state is recovered and the worker owns its partitions, 503
  while recovering or rebalancing (body says why).
- ``/metrics``: Prometheus text exposition of the app's own registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.runtime.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from worker.runtime.join_agent import JoinRuntime


def register_web(app: Any, runtime: JoinRuntime) -> None:
    @app.page("/healthz", name="recal_healthz")
    async def healthz(self: Any, request: Any) -> Any:
        _ready, why = runtime.readiness()
        if why.startswith("crashed"):
            return self.json({"status": "failed", "detail": why}, status=503)
        return self.json({"status": "ok"})

    @app.page("/readyz", name="recal_readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ready, why = runtime.readiness()
        return self.json(
            {"status": "ready" if ready else "not_ready", "detail": why},
            status=200 if ready else 503,
        )

    @app.page("/metrics", name="recal_metrics")
    async def metrics(self: Any, request: Any) -> Any:
        return self.bytes(runtime.metrics.exposition(), content_type=CONTENT_TYPE)
