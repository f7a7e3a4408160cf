"""`POST /v1/calls/{id}/transfer`: transfers the B2BUA starts itself, by re-bridging or by REFER.

How this works: the body (bodies.py `TransferBody`) names the type, the party transferred (the
transferee; default a, the caller: a customer transferred away from an agent; the other party is
released), and the method (default `api.transfer_method`). Inside the core (the gate) the call and
the party are checked (call/transfer_request.py: 409 with the reason), the consultation call of an
attended or early transfer is picked (404 for an unknown id, 409 when it cannot serve), the call
(and the consultation) are marked busy in the registry for as long as the transfer runs (a hold or a
second transfer then gets 409), and then:
- rebridge: `start_transfer` (call/transfer.py) with an `EventSink`: the B2BUA calls the target (or
  takes over the consultation's target leg), re-INVITEs, releases the other party. Answered 202 at
  once; progress is on the event stream (`transfer_progress` with the sipfrag status line, then
  `transfer_completed` or `transfer_failed`).
- refer: `ReferOut` (call/refer_out.py) sends REFER to the transferee, with a Refer-To back through
  the B2BUA (blind: the target's user at our address; attended: with an escaped Replaces naming the
  transferor's leg of the consultation call, which the transferee is granted to replace). The
  answer waits for the REFER's final response: 2xx is 202; 403/405/501 fall back to rebridge when
  `api.refer_fallback` is on (RFC 5589 §7.4; the answer says so in `fallback`); any other refusal is
  502 with `sip_status`, no answer in time 504. Early completion cannot be done by endpoints (they
  answer an early dialog's Replaces 481, RFC 3891), so `early` is always carried out by rebridge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..call.call import Call
from ..call.consultation import Consultation
from ..call.leg import Leg
from ..call.refer import refer_to_with_replaces
from ..call.refer_out import ReferOut
from ..call.transfer import start_transfer
from ..call.transfer_request import pick_consultation, transfer_refusal
from ..call.transfer_sink import EventSink, TransferTarget
from ..sip.address import Address
from ..sip.headers import parse_name_addr
from ..sip.uri import SipUri, Uri, unescape
from .bodies import TransferBody, read_body
from .context import CONTEXT, ApiContext
from .errors import ApiError
from .targets import bad_field, resolve
from .views import TransferStarted, call_view

_FALLBACK_STATUSES = (403, 405, 501)


@dataclass
class _Plan:
    """What the handler learnt before entering the core."""

    body: TransferBody
    method: str
    target: Uri | None = None  # blind
    hop: Address | None = None  # blind
    consult: Call | None = None  # attended, early
    fallback: str | None = None


@dataclass
class _Outcome:
    method: str
    fallback: str | None = None
    error: ApiError | None = None


def _json(view: TransferStarted, status: int = 202) -> web.Response:
    return web.Response(text=view.model_dump_json(), status=status, content_type="application/json")


def _plan(ctx: ApiContext, body: TransferBody) -> _Plan:
    method = body.method or ctx.settings.transfer_method
    plan = _Plan(body, method)
    if body.type == "blind":
        if body.target is None:
            raise bad_field("target", "required for a blind transfer")
        if body.consult_call_id is not None:
            raise bad_field("consult_call_id", "not used by a blind transfer")
        plan.target, plan.hop = resolve(ctx.core, body.target, "target")
        return plan
    if body.consult_call_id is None:
        raise bad_field("consult_call_id", f"required for an {body.type} transfer")
    if body.target is not None:
        raise bad_field("target", f"not used by an {body.type} transfer (the consultation call has the target)")
    plan.consult = ctx.registry.find(body.consult_call_id)
    if plan.consult is None:
        raise ApiError(404, f"no call with id {body.consult_call_id!r} (consult_call_id)")
    if body.type == "early" and method == "refer":
        plan.method = "rebridge"
        plan.fallback = "early completion cannot be done by endpoints (RFC 3891: 481); done by rebridge"
    return plan


def _party_uri(leg: Leg) -> Uri | None:
    if leg.dialog is None:
        return None
    try:
        return parse_name_addr(leg.dialog.remote_party).uri
    except ValueError:
        return None


async def transfer_call(request: web.Request) -> web.Response:
    ctx = request.config_dict[CONTEXT]
    call = ctx.call_for(request)
    body = await read_body(request, TransferBody, ctx.settings.max_body_bytes)
    plan = _plan(ctx, body)
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[_Outcome] = loop.create_future()
    what = f"transfer ({body.type})"

    def settle(outcome: _Outcome) -> None:
        if not answered.done():
            answered.set_result(outcome)

    def call_ended() -> None:
        settle(_Outcome(plan.method, error=ApiError(409, "the call ended")))

    def finished(*_: Any) -> None:
        ctx.registry.finish(call, call_ended)
        if plan.consult is not None:
            ctx.registry.finish(plan.consult, _nothing)

    def act() -> tuple[Any, str]:
        if call not in ctx.core.calls:
            raise ApiError(404, "the call has ended")
        transferee = call.a if body.party == "a" else call.b
        why = transfer_refusal(call, transferee)
        if why is not None:
            raise ApiError(409, why)
        consultation: Consultation | None = None
        if plan.consult is not None:
            if plan.consult not in ctx.core.calls:
                raise ApiError(404, f"no call with id {body.consult_call_id!r} (consult_call_id)")
            picked = pick_consultation(call, plan.consult, body.consult_target, body.type == "early")
            if isinstance(picked, str):
                raise ApiError(409, picked)
            consultation = picked
            busy = ctx.registry.entry(plan.consult).busy
            if busy is not None:
                raise ApiError(409, f"the API is busy with a {busy} on the consultation call")
        busy = ctx.registry.begin(call, what, call_ended)
        if busy is not None:
            raise ApiError(409, f"the API is busy with a {busy} on this call")
        if plan.consult is not None:
            ctx.registry.begin(plan.consult, f"{what}: consultation", _nothing)
        try:
            if plan.method == "rebridge":
                target = _rebridge(call, transferee, plan, consultation, finished)
                settle(_Outcome("rebridge", plan.fallback))
            else:
                target = _refer(ctx, call, transferee, plan, consultation, finished, settle)
        except BaseException:
            finished()
            raise
        return ctx.registry.entry(call), target

    entry, target = ctx.gate.run(act)
    try:
        outcome = await asyncio.wait_for(asyncio.shield(answered), ctx.operation_timeout)
    except TimeoutError:
        raise ApiError(504, f"no answer to the REFER within {ctx.operation_timeout:g} s") from None
    if outcome.error is not None:
        raise outcome.error
    return _json(TransferStarted(
        call=call_view(call, entry), type=body.type, method=outcome.method,
        party=body.party, target=target, consult_call_id=body.consult_call_id, fallback=outcome.fallback))


def _rebridge(call: Call, transferee: Leg, plan: _Plan, consultation: Consultation | None,
              finished: Callable[..., None]) -> str:
    body = plan.body
    if consultation is None:
        assert plan.target is not None
        target = TransferTarget(plan.target)
    else:
        uri = _party_uri(consultation.target)
        target = TransferTarget(uri if uri is not None else SipUri(host=consultation.target.peer.host))
    fields = {"source": "api", "method": "rebridge", "transferee": body.party}
    if plan.fallback:
        fields["fallback"] = plan.fallback
    start_transfer(call, transferee, target, EventSink(call, fields, finished), hop=plan.hop,
                   consultation=consultation)
    return str(target.target)


def _refer(ctx: ApiContext, call: Call, transferee: Leg, plan: _Plan, consultation: Consultation | None,
           finished: Callable[..., None], settle: Callable[[_Outcome], None]) -> str:
    core = ctx.core
    body = plan.body
    expires = float(max(core.transfers.notify_expires_s, core.no_answer_timeout + 30))
    if consultation is None:
        assert plan.target is not None
        shown = str(plan.target)
        refer_to = f"<{_via_us(core, transferee, plan.target)}>"
    else:
        if core.transfers.replaces_policy == "never":
            raise ApiError(409, "attended transfers by REFER need Replaces (transfers.replaces_policy is never)")
        named = consultation.transferor_leg
        assert named.dialog is not None and named.dialog.remote_tag is not None
        uri = _party_uri(consultation.target)
        shown = str(uri) if uri is not None else "the consultation's target"
        # The transferee's INVITE with Replaces takes the transferor's place in the consultation call.
        named.replaceable_from = (transferee.peer.host, core.now() + expires)
        refer_to = refer_to_with_replaces(_via_us(core, transferee, uri), named.call_id, named.local_tag,
                                          named.dialog.remote_tag)

    def on_answer(status: int, reason: str) -> bool:
        if 200 <= status < 300:
            settle(_Outcome("refer"))
            return True
        if status in _FALLBACK_STATUSES and ctx.settings.refer_fallback:
            why = transfer_refusal(call, transferee)
            if why is None and (consultation is None or not isinstance(
                    pick_consultation(call, consultation.call, body.consult_target, False), str)):
                note = f"the transferee answered the REFER {status} {reason}".strip()
                fallback = _Plan(body, "rebridge", plan.target, plan.hop, plan.consult, note)
                _rebridge(call, transferee, fallback, consultation, finished)
                settle(_Outcome("rebridge", note))
                return True
        settle(_Outcome("refer", error=ApiError(502, f"the transferee answered the REFER {status} {reason}".strip(),
                                                sip_status=status)))
        return False

    wait = body.refer_wait or ctx.settings.refer_wait
    refer = ReferOut(call, transferee, refer_to, body.type, attended=wait == "attended", expires=expires,
                     on_answer=on_answer, fields={"transferee": body.party, "refer_wait": wait}, on_end=finished)

    def abandon() -> None:
        refer.abandon()
        finished()

    ctx.registry.entry(call).on_end.append(abandon)
    refer.start()
    return shown


def _via_us(core: Any, leg: Leg, target: Uri | None) -> str:
    """A SIP URI for `target`'s user at our own address as `leg`'s peer reaches us: the INVITE the
    transferee sends to the Refer-To comes through the B2BUA and is routed by that user."""
    if isinstance(target, SipUri):
        user = target.user
    elif target is not None:
        user = unescape(target.raw.split(":", 1)[-1].split(";", 1)[0])
    else:
        user = None
    return str(core.contact_for(leg.peer, user=user or None)).strip("<>")


def _nothing() -> None:
    pass


def add_routes(app: web.Application) -> None:
    app.router.add_post("/calls/{id}/transfer", transfer_call)
