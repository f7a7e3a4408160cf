"""`POST /v1/calls/{id}/consult`: a supervised transfer, one step per request (call/consult.py does the SIP).

How this works: `start` resolves the target (targets.py), checks the call as a transfer would (409),
marks it busy in the registry for the whole consultation (other API operations on it get 409
until it is completed or cancelled, or the call ends), creates the call's `SupervisedConsult` and
waits for the target to answer and be connected to the other party (up to the ring time plus the
usual operation bound). `complete`, `cancel` and `swap` act on the consultation under way (409 if
there is none, or it is busy with another action) and answer once their re-INVITEs are done: 200
with the call and where the consultation stands; 502 with `sip_status` when a party or the target
refused; 504 when the outcome takes too long (it still happens; the event stream tells).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..call.call import Call
from ..call.consult import ConsultState, SupervisedConsult
from ..call.transfer_request import transfer_refusal
from .bodies import ConsultBody, read_body
from .context import CONTEXT, ApiContext
from .errors import ApiError
from .registry import Entry
from .targets import bad_field, resolve
from .views import ConsultView, call_view

WHAT = "consultation"


def _consult_of(ctx: ApiContext, call: Call) -> SupervisedConsult | None:
    consult = ctx.consults.get(call)
    if consult is not None and consult.state is ConsultState.ENDED:
        return None
    return consult


async def consult_call(request: web.Request) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    call = ctx.call_for(request)
    body = await read_body(request, ConsultBody, ctx.settings.max_body_bytes)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[str | None, int | None]] = loop.create_future()
    timeout = ctx.operation_timeout
    target = hop = None
    if body.action == "start":
        if body.target is None:
            raise bad_field("target", "required to start a consultation")
        target, hop = resolve(ctx.core, body.target, "target")
        timeout += ctx.core.no_answer_timeout
    elif body.target is not None:
        raise bad_field("target", f"not used by {body.action}")

    def settle(error: str | None, status: int | None) -> None:
        if not outcome.done():
            outcome.set_result((error, status))

    def call_ended() -> None:
        settle("the call ended", None)
        ctx.consults.pop(call, None)

    def finished() -> None:
        consult = ctx.consults.get(call)
        if consult is None or consult.state is ConsultState.ENDED:
            ctx.consults.pop(call, None)
            ctx.registry.finish(call, call_ended)

    def done(error: str | None, status: int | None) -> None:
        finished()
        settle(error, status)

    def act() -> Entry:
        if call not in ctx.core.calls:
            raise ApiError(404, "the call has ended")
        consult = _consult_of(ctx, call)
        if body.action == "start":
            if consult is not None:
                raise ApiError(409, "a consultation is already under way on this call")
            held = call.a if body.party == "a" else call.b
            why = transfer_refusal(call, held) or transfer_refusal(call, call.other(held))
            if why is not None:
                raise ApiError(409, why)
            busy = ctx.registry.begin(call, WHAT, call_ended)
            if busy is not None:
                raise ApiError(409, f"the API is busy with a {busy} on this call")
            assert target is not None and hop is not None
            consult = SupervisedConsult(call, held, target, hop, on_end=finished)
            ctx.consults[call] = consult
            consult.start(done)
            return ctx.registry.entry(call)
        if consult is None:
            raise ApiError(409, "no consultation is under way on this call")
        why = consult.refusal(body.action)
        if why is not None:
            raise ApiError(409, why)
        getattr(consult, body.action)(done)
        return ctx.registry.entry(call)

    entry = ctx.gate.run(act)
    try:
        error, status = await asyncio.wait_for(asyncio.shield(outcome), timeout)
    except TimeoutError:
        raise ApiError(504, f"no outcome of the {body.action} within {timeout:g} s") from None
    if error is not None:
        if status is not None and status >= 300:
            raise ApiError(502, error, sip_status=status)
        raise ApiError(409, error)
    consult = ctx.consults.get(call)
    where = consult.state.value if consult is not None and consult.state is not ConsultState.ENDED else "ended"
    view = ConsultView(call=call_view(call, entry), action=body.action, consult=where)
    return web.Response(text=view.model_dump_json(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/calls/{id}/consult", consult_call)

