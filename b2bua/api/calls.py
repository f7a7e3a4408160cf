"""The /v1/calls routes: list, show, hang up, hold and resume.

How this works: reads (`GET`) render the registry's live calls with views.py. Actions read and
validate their body first (bodies.py), then act inside the core through the gate, checking again
there that the call is still live (it may have ended while the body arrived). A hang-up answers 202
at once: BYEs (or, before the answer, the final response to the caller) are on their way and the
call's end shows on the event stream. A hold or resume waits for the party's answer to the
re-INVITE (call/hold.py) and answers 200 with the call, or: 409 when the call's state forbids it
(not up, a re-INVITE or a transfer under way, already held, another API operation on the call, 491
twice, the call ended meanwhile), 502 when the party refused (with `sip_status`), 504 when it never
answered. Routes added later (originate, transfers) follow the same pattern: `ctx.call_for`,
`read_body`, `ctx.gate.run`, `ctx.registry.begin` for anything that waits on SIP.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel

from ..call.call import Call, CallState
from ..call.hold import HoldOutcome, HoldReinvite, HoldResult, refusal
from .bodies import HangupBody, HoldBody, read_body
from .context import CONTEXT, ApiContext
from .errors import ApiError
from .registry import Entry
from .views import CallList, call_view

_ENDING = (CallState.CANCELLING, CallState.ENDING, CallState.ENDED)
_HOLD_STATUS = {HoldResult.CONFLICT: 409, HoldResult.REFUSED: 502, HoldResult.NO_ANSWER: 504}


def _json(view: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=view.model_dump_json(), status=status, content_type="application/json")


def _still_live(ctx: ApiContext, call: Call) -> Entry:
    entry = ctx.registry.entry(call) if call in ctx.core.calls else None
    if entry is None:
        raise ApiError(404, "the call has ended")
    return entry


async def list_calls(request: web.Request) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    registry = ctx.registry
    return _json(CallList(calls=[call_view(c, registry.entry(c)) for c in registry.calls()]))


async def get_call(request: web.Request) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    call = ctx.call_for(request)
    return _json(call_view(call, ctx.registry.entry(call)))


async def hangup_call(request: web.Request) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    call = ctx.call_for(request)
    body = await read_body(request, HangupBody, ctx.settings.max_body_bytes)

    def act() -> Entry:
        entry = _still_live(ctx, call)
        if call.state not in _ENDING:  # already ending: nothing more to do (DELETE is idempotent)
            ctx.core.log_event(call, "hangup_requested", source="api", reason=body.reason or "")
            call.hangup(reason=body.reason)
        return entry

    entry = ctx.gate.run(act)
    return _json(call_view(call, entry), status=202)


async def hold_call(request: web.Request) -> web.Response:
    return await _hold_or_resume(request, hold=True)


async def resume_call(request: web.Request) -> web.Response:
    return await _hold_or_resume(request, hold=False)


async def _hold_or_resume(request: web.Request, hold: bool) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    call = ctx.call_for(request)
    body = await read_body(request, HoldBody, ctx.settings.max_body_bytes)
    what = f"{'hold' if hold else 'resume'} of party {body.party}"
    outcome: asyncio.Future[HoldOutcome] = asyncio.get_running_loop().create_future()

    def settle(result: HoldOutcome) -> None:
        ctx.registry.finish(call, call_ended)
        if not outcome.done():
            outcome.set_result(result)

    def call_ended() -> None:
        settle(HoldOutcome(HoldResult.CONFLICT, "the call ended"))

    def act() -> Entry:
        entry = _still_live(ctx, call)
        leg = call.a if body.party == "a" else call.b
        why = refusal(call, leg, hold)
        if why is not None:
            raise ApiError(409, why)
        busy = ctx.registry.begin(call, what, call_ended)
        if busy is not None:
            raise ApiError(409, f"the API is busy with a {busy} on this call")
        HoldReinvite(call, leg, hold, settle).start()
        return entry

    entry = ctx.gate.run(act)
    try:
        result = await asyncio.wait_for(outcome, ctx.operation_timeout)
    except TimeoutError:
        raise ApiError(504, f"no outcome of the {what} within {ctx.operation_timeout:g} s") from None
    if not result.ok:
        status = _HOLD_STATUS[result.result]
        if result.status is not None:
            raise ApiError(status, result.reason, sip_status=result.status)
        raise ApiError(status, result.reason)
    return _json(call_view(call, entry))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/calls", list_calls, allow_head=False)
    app.router.add_get("/calls/{id}", get_call, allow_head=False)
    app.router.add_delete("/calls/{id}", hangup_call)
    app.router.add_post("/calls/{id}/hold", hold_call)
    app.router.add_post("/calls/{id}/resume", resume_call)
