"""Health, readiness and metrics endpoints of the worker (DESIGN §8), on aiohttp.

- ``/healthz``: liveness. 200 while the process runs and its consumer loop turns; 503 once
  the worker has crashed or its loop has been stuck for a session timeout.
- ``/readyz``: 200 while the worker owns its partitions with their state restored, 503 while
  starting or rebalancing (the body says why).
- ``/metrics``: Prometheus text exposition of the worker's own registry.

Nothing else is served (no state contents over HTTP). Binds ``settings.web_host``
(127.0.0.1 unless configured).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from worker.runtime.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from worker.runtime.group_worker import GroupWorker


async def start_web(worker: GroupWorker, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the endpoints; returns the runner (``await runner.cleanup()`` to stop) and the
    bound port (``port=0``: a free one)."""

    async def healthz(_request: web.Request) -> web.Response:
        alive, why = worker.liveness()
        return web.json_response(
            {"status": "ok" if alive else "failed", "detail": why}, status=200 if alive else 503
        )

    async def readyz(_request: web.Request) -> web.Response:
        ready, why = worker.readiness()
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "detail": why},
            status=200 if ready else 503,
        )

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=worker.metrics.exposition(), content_type=CONTENT_TYPE)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server  # the bound socket (port 0 resolves here)
    bound = int(server.sockets[0].getsockname()[1])
    return runner, bound
