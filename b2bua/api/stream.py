"""`GET /v1/events`: the call events of the `EventHub` as a server-sent event stream (text/event-stream).

How this works: each stream subscribes a client to the hub (at most `api.sse_max_clients` at a time:
503 beyond) and then waits on that client's queue. Each event is one SSE frame: `id` (a sequence
number), `event` (the core's event name) and `data`, one JSON object:
`{"seq", "time", "event", "call" (the API id), "sip_call_id" (the caller's Call-ID), "fields"}`.
After `api.sse_keepalive_s` without an event the handler writes a `: keepalive` comment, so proxies
and clients see a live connection and a vanished client is noticed at the next write; a client that
does not take a write within a bound is given up. When the hub ends a client the handler writes the
last word (`stream_overflow` for a client dropped for falling behind, `stream_closed` at shutdown)
and returns. `?call=<id>` follows one call and ends after its `call_ended`.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .context import CONTEXT
from .errors import ApiError
from .events import FINAL, EventHub


def _final_frame(why: str | None, hub: EventHub) -> bytes | None:
    if why == "overflow":
        data = {"reason": f"this client fell more than {hub.queue_events} events behind and was dropped"}
        return f"event: stream_overflow\ndata: {json.dumps(data)}\n\n".encode()
    if why == "shutdown":
        return b'event: stream_closed\ndata: {"reason": "the daemon is shutting down"}\n\n'
    return None


async def stream_events(request: web.Request) -> web.StreamResponse:
    ctx = request.config_dict[CONTEXT]
    hub: EventHub = ctx.hub
    unknown = sorted(set(request.query) - {"call"})
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r} (only 'call' is known)")
    call = request.query.get("call")
    if call is not None and ctx.registry.find(call) is None:
        raise ApiError(404, f"no call with id {call!r}")
    client = hub.subscribe(call)
    if client is None:
        raise ApiError(503, f"too many event streams (api.sse_max_clients = {hub.max_clients})",
                       {"Retry-After": "5"})
    keepalive = ctx.settings.sse_keepalive_s
    write_timeout = max(10.0, 2 * keepalive)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})

    async def send(data: bytes) -> None:
        await asyncio.wait_for(resp.write(data), write_timeout)

    try:
        await resp.prepare(request)
        await send(b": b2bua call events\nretry: 3000\n\n")
        while True:
            try:
                frame = await asyncio.wait_for(client.queue.get(), keepalive)
            except TimeoutError:
                frame = b": keepalive\n\n"
            if frame is FINAL:
                break
            await send(frame)
        last = _final_frame(client.ending, hub)
        if last is not None:
            await send(last)
    except TimeoutError:
        hub.dropped += 1  # it stopped reading: nothing more can be told to it
    except ConnectionError:
        pass  # it left
    finally:
        hub.unsubscribe(client)
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/events", stream_events, allow_head=False)
