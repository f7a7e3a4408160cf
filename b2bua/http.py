"""The daemon's HTTP side: Prometheus `/metrics` and `/healthz` (aiohttp, on the SIP event loop).

How this works: handlers read the core's plain counters at request time (see metrics.py), so a
scrape costs the daemon one pass over a few dicts. `/healthz` is 200 while the daemon accepts calls
and 503 once it is draining, so a load balancer stops sending new calls before shutdown. The control
API (b2bua/api/) is mounted on the same app under /v1 by the daemon. The listener's address is
`http.listen`, 127.0.0.1:9090 by default: loopback, so neither the metrics nor an API without a
token are reachable from elsewhere unless the operator binds it wider.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry


def make_http_app(registry: CollectorRegistry, healthy: Callable[[], bool]) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "draining"}, status=503)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
