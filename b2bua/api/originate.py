"""`POST /v1/calls`: click-to-dial. The B2BUA calls party a, and once a answers, party b.

How this works: both parties are resolved first (targets.py: 422 naming the field, 403 for a target
the transfer policy denies); then, inside the core, an `OriginatedCall` (call/originate.py, where
the SIP flow and its limits are described) is created and started. The answer is 201 at once, with
the call (state `calling`) and its URL in Location: the parties' phones are ringing, and what
happens next (`party_ringing`, `party_answered`, `call_answered`, or `originate_failed` and
`call_ended` with the result) is on the event stream; `DELETE /v1/calls/{id}` abandons it. 503 while
the daemon drains or is at `calls.max_calls`.
"""

from __future__ import annotations

from aiohttp import web

from ..call.originate import OriginatedCall
from .bodies import OriginateBody, read_body
from .context import CONTEXT
from .errors import ApiError
from .targets import parse_target, resolve
from .views import call_view

ACK_MARGIN_S = 2.0  # b must answer this long before party a stops retransmitting its 200


async def originate(request: web.Request) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    body = await read_body(request, OriginateBody, ctx.settings.max_body_bytes)
    core = ctx.core
    a_uri, a_hop = resolve(core, body.a, "a")
    b_uri, b_hop = resolve(core, body.b, "b")
    caller_id = parse_target(body.caller_id, "caller_id", core.local_host) if body.caller_id else None
    ring = body.ring_timeout_s or core.no_answer_timeout
    window = 64 * core.settings.sip.t1_ms / 1000 - ACK_MARGIN_S

    def act() -> web.Response:
        call = OriginatedCall(core, a_uri, b_uri, a_hop, b_hop, ring_timeout=ring, answer_window=window,
                              caller_id=caller_id)
        if not core.add_call(call):
            raise ApiError(503, "not placing calls now (the daemon is draining or at calls.max_calls)",
                           {"Retry-After": "5"})
        entry = ctx.registry.entry(call)
        return web.Response(text=call_view(call, entry).model_dump_json(), status=201,
                            content_type="application/json", headers={"Location": f"/v1/calls/{entry.id}"})

    return ctx.gate.run(act)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/calls", originate)
