"""The HTTP JSON control API: /v1 on the daemon's aiohttp app, on the SIP event loop.

How this works: `mount_api` adds a sub-application at /v1 to the app that serves /metrics and
/healthz. Its middlewares answer every error as JSON (errors.py) and check who is asking (auth.py:
a bearer token, or loopback only when none is configured). The routes:

    GET    /v1/calls                 calls.py      live calls, oldest first
    POST   /v1/calls                 originate.py  click-to-dial: call party a, then b, and bridge them
    GET    /v1/calls/{id}            calls.py      one call
    DELETE /v1/calls/{id}            calls.py      hang up (optional {"reason": ...})
    POST   /v1/calls/{id}/hold       calls.py      re-INVITE one party with sendonly ({"party": "a"|"b"})
    POST   /v1/calls/{id}/resume     calls.py      ... with sendrecv
    POST   /v1/calls/{id}/transfer   transfers.py  blind, attended, early; by rebridging or REFER
    POST   /v1/calls/{id}/consult    consult.py    supervised: start, complete, cancel, swap
    GET    /v1/events                stream.py     server-sent call events
    GET    /v1/openapi.json          openapi.py    this API described (kept equal to the router by a test)

Calls get short ids from the registry (registry.py), which, like the event hub (events.py), follows
the core through `Core.listeners`. Handlers act on the sans-IO core only through the gate
(gate.py), which moves the core's clock to now before and re-arms the loop timer after. To add a
route module: write its `add_routes(app)`, list it in `ROUTE_MODULES`, describe it in openapi.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..call.hold import GLARE_RETRY_DELAY_S
from ..config import Settings
from . import calls, consult, openapi, originate, stream, transfers
from .auth import auth_middleware
from .context import CONTEXT, ApiContext
from .errors import error_middleware
from .events import EventHub
from .gate import CoreGate
from .registry import CallRegistry

__all__ = ["CONTEXT", "ApiContext", "mount_api"]

ROUTE_MODULES = (calls, originate, transfers, consult, stream, openapi)


def mount_api(app: web.Application, core: Any, settings: Settings, log: Any, stats: Any, *,
              advance: Callable[[], object] | None = None, rearm: Callable[[], None] | None = None,
              wall: Callable[[], float] = time.time) -> ApiContext | None:
    """Serve /v1 on `app` for `core` (None when `api.enabled` is false). `advance`/`rearm`: see gate.py."""
    api = settings.api
    if not api.enabled:
        log.info("api_disabled")
        return None

    def on_bug(exc: BaseException, where: str) -> None:
        stats.escaped_exceptions += 1
        log.error("escaped_exception", where=where, exc_info=exc)

    # A hold may take two INVITE transactions (Timer B = 64·T1 each) around the 491 pause.
    timeout = 2 * 64 * settings.sip.t1_ms / 1000 + GLARE_RETRY_DELAY_S + 5
    registry = CallRegistry(lambda: core.calls, wall)
    core.compactors.append(registry.compact)
    ctx = ApiContext(
        core=core, settings=api, registry=registry,
        hub=EventHub(api.sse_queue_events, api.sse_max_clients, wall),
        gate=CoreGate(on_bug, advance, rearm), on_bug=on_bug, operation_timeout=timeout)
    token = api.token.get_secret_value() if api.token is not None else None
    v1 = web.Application(middlewares=[
        error_middleware(lambda exc, request: on_bug(exc, f"api {request.method} {request.path}")),
        auth_middleware(token),
    ])
    v1[CONTEXT] = ctx
    for module in ROUTE_MODULES:
        module.add_routes(v1)

    async def close_streams(_: web.Application) -> None:
        ctx.hub.close_all()

    async def detach(_: web.Application) -> None:
        if ctx.on_core_event in core.listeners:
            core.listeners.remove(ctx.on_core_event)

    v1.on_shutdown.append(close_streams)
    v1.on_cleanup.append(detach)
    core.listeners.append(ctx.on_core_event)
    app.add_subapp("/v1", v1)
    if token is None:
        log.info("api_enabled", auth="none", access="loopback clients only (set api.token to allow others)")
    else:
        log.info("api_enabled", auth="bearer token", access="any client with the token")
    return ctx
