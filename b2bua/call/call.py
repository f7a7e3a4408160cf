"""A bridged call: the state machine that relays between the A leg and the B leg.

How this works: the core creates a `Call` for each new INVITE it accepts and then feeds it events:
responses to the B leg's INVITE (`on_invite_response`), in-dialog requests arriving on either leg
(`on_request`), ACKs (`on_ack`), responses to requests the call sent (`on_response`), CANCEL from
the caller and timeouts. The call answers with actions through its `CallContext` (send a request,
respond, ACK, CANCEL), which the core implements on top of the transaction layer.

Relaying keeps every transaction on one leg paired with its twin on the other: a request arriving on
leg X as server transaction `sx` goes out on leg Y as client transaction `cy`, and `cy`'s final
response answers `sx`. 2xx responses to INVITE are ACKed end to end: when the INVITE carried an
offer we ACK the answering leg at once; when it did not (late offer) we wait for the other leg's ACK,
whose body is the answer, and relay it. A call ends when both legs are finished: BYE answered or
timed out, or the B leg's INVITE finally answered after a CANCEL; only then is it counted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..sip.address import Address
from ..sip.dialog import Dialog, DialogState
from ..sip.headers import NameAddr, Replaces
from ..sip.message import Request, Response, build_response
from ..sip.uri import UriError, find_param, format_params, parse_params, unescape
from .capabilities import ALLOW
from .consultation import Consultation, find_consultation
from .deflection import Deflection
from .header_policy import HeaderPolicy
from .leg import ENDED, Leg, Side
from .outgoing_invite import outgoing_invite
from .pickup import Pickup
from .recall import recall_transferor
from .refer import ReferError, ReferRequest, parse_refer, parse_sipfrag, refer_to_with_replaces
from .replacement import Replacement, ReplacingInvite
from .sdp_path import SdpPath
from .small_tables import EMPTY, with_entry, without_entry
from .transfer import Transfer, TransferState

# Requests a leg may relay within a dialog; the rest are answered 405 or handled specially.
RELAYED_METHODS = frozenset({"INVITE", "UPDATE", "INFO", "MESSAGE", "OPTIONS", "NOTIFY", "PRACK"})
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


class CallState(enum.Enum):
    CALLING = "calling"  # INVITE sent on the B leg, nothing heard yet
    EARLY = "early"  # a provisional response relayed to the caller
    CONFIRMED = "confirmed"  # the callee answered and the caller has the 2xx
    CANCELLING = "cancelling"  # the caller gave up: waiting for the B leg's INVITE to finish
    ENDING = "ending"  # BYE sent, waiting for the answers
    ENDED = "ended"


class CallContext(Protocol):
    """What a call needs from the core (implemented by `b2bua.core.Core`)."""

    policy: HeaderPolicy
    no_answer_timeout: float
    media_timeout: float  # 0: media is never checked
    media_check_interval: float
    transfers: Any  # TransferSettings

    def new_tag(self) -> str: ...
    def new_call_id(self) -> str: ...
    def new_media(self, call: Call, key: str) -> Any: ...
    def now(self) -> float: ...
    def route(self, uri: Any) -> Address | None: ...
    def check_transfer_target(self, uri: Any) -> str | None: ...
    def find_leg(self, call_id: str, local_tag: str) -> Leg | None: ...
    def transfer_ended(self, call: Call, kind: str, result: str, seconds: float) -> None: ...
    def refer_allowed(self, leg: Leg) -> bool: ...
    def contact_for(self, dest: Address, user: str | None = "b2bua") -> str: ...
    def send_request(self, leg: Leg, request: Request, dest: Address) -> Any: ...
    def send_ack(self, leg: Leg, ack: Request, dest: Address) -> tuple[bytes, Address]: ...
    def resend_ack(self, sent: tuple[bytes, Address]) -> None: ...
    def cancel(self, tx: Any) -> None: ...
    def respond(self, tx: Any, response: Response) -> None: ...
    def call_later(self, delay: float, callback: Any) -> Any: ...
    def register_leg(self, leg: Leg) -> None: ...
    def call_ended(self, call: Call, result: str) -> None: ...
    def log_event(self, call: Call, event: str, **fields: Any) -> None: ...
    def media_event(self, call: Call, event: str, reason: str) -> None: ...


# Status codes we change when relaying a final response to the caller.
_STATUS_MAP = {
    401: 403,  # we do not hold the caller's credentials for the callee's challenge
    407: 403,
    503: 500,  # RFC 3261 §16.7: a 503 from downstream must not make upstream think *we* are overloaded
}


def release_requests(invite: Request, resp: Response, fallback: Address) -> tuple[Request, Request, Address]:
    """ACK and BYE for a 2xx we do not want (RFC 3261 §13.2.2.4: every 2xx is ACKed, then ended)."""
    dialog = Dialog.from_response(invite, resp)
    dest = dialog.next_hop() or fallback
    ack = dialog.create_request("ACK", cseq=invite.cseq.seq)
    bye = dialog.create_request("BYE", [("Reason", 'SIP;cause=200;text="Call completed elsewhere"')])
    return ack, bye, dest


class Call:
    # Slots: a call lives for minutes and there are thousands at once; its attribute dict was the
    # largest single block a held call kept (1.6 KB of ~12.7 KB traced, bench/heap.py).
    __slots__ = ("ctx", "transfer_mode", "state", "result", "a_invite", "a", "a_invite_tx", "b", "first_b",
                 "b_invite", "b_invite_tx", "a_answered", "b_final", "_relays", "_byes", "_ack_wait",
                 "_no_answer_timer", "_released_forks", "media", "sdp", "_media_timer", "_media_packets",
                 "_media_quiet_since", "transfer", "deflection", "_own", "_extra_legs", "started_at", "lent",
                 "replacement", "_relayed_refers", "_hangup_while_lent", "intercepts", "on_hangup")

    def __init__(self, ctx: CallContext, invite: Request, a_tx: Any, source: Address,
                 next_hop: Address, transfer_mode: str | None = None) -> None:
        self.ctx = ctx
        # How REFERs in this call are handled: its route's mode, else `transfers.mode`.
        self.transfer_mode: str = transfer_mode or ctx.transfers.mode
        self.state = CallState.CALLING
        self.result: str | None = None
        self.a_invite = invite
        self.a = Leg(self, Side.A, invite.call_id, ctx.new_tag(), source)
        self.a.invite_tx = self.a_invite_tx = a_tx
        self.a.dialog = Dialog.from_request(invite, self.a.local_tag)
        self.b = Leg(self, Side.B, ctx.new_call_id(), ctx.new_tag(), next_hop)
        self.first_b = self.b  # the callee's leg: a transfer may put another leg in `b`
        self.b_invite: Request | None = None
        self.b_invite_tx: Any = None
        self.a_answered = False  # a final response was sent to the caller's INVITE
        self.b_final = False  # the B leg's INVITE got its final response (or timed out)
        self._relays: dict[Any, Any] = {}  # client tx on one leg -> server tx on the other (None: done)
        self._byes: dict[Any, None] = {}  # our BYEs not yet answered (a dict: an empty set is 216 B)
        self._ack_wait: Mapping[Leg, tuple[Leg, int]] = EMPTY  # leg whose ACK we await -> (leg to ACK, cseq)
        self._no_answer_timer: Any = None
        # (Call-ID, to-tag) of a fork we released -> the ACK we sent it (bytes, where)
        self._released_forks: Mapping[tuple[str, str], tuple[bytes, Address]] = EMPTY
        self.media = ctx.new_media(self, self.b.call_id)
        self.sdp = SdpPath(self.media)
        self._media_timer: Any = None
        self._media_packets: int | None = None  # the relay's packet total at the last query
        self._media_quiet_since = 0.0  # when that total last moved (or the call was answered/held)
        self.transfer: Transfer | None = None
        self.deflection: Deflection | None = None  # the ringing callee passes the call on (REFER)
        self._own: dict[Any, Any] = {}  # requests the call originates itself -> handler(tx, response)
        self._extra_legs: tuple[Leg, ...] = ()  # legs transfers added (registered with the core until the end)
        self.started_at = ctx.now()
        # A consultation call whose legs an attended transfer in another call holds: that call.
        self.lent: Call | None = None
        self.replacement: ReplacingInvite | None = None  # an INVITE with Replaces taking a leg's place
        # passthrough: (leg, our REFER's CSeq) -> the REFER we relayed (the id the transferor knows, ...)
        self._relayed_refers: Mapping[tuple[tuple[str, str], str], RelayedRefer] = EMPTY
        self._hangup_while_lent: str | None = None
        # In-dialog requests something other than the relay must see first (the NOTIFYs of a REFER
        # the B2BUA sent, a parked party's requests): each returns True when it took the request.
        # Hooks are tuples, changed through add_/remove_ methods: most calls never have one, and
        # the empty tuple is shared (an empty list is 56 B per call).
        self.intercepts: tuple[Callable[[Leg, Any, Request], bool], ...] = ()  # add_intercept
        self.on_hangup: tuple[Callable[[str | None], None], ...] = ()  # hangup(reason) hooks: parked legs go too

    @property
    def call_id(self) -> str:
        return self.a.call_id

    def other(self, leg: Leg) -> Leg:
        return self.b if leg is self.a else self.a

    # -- setting up ------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.register_leg(self.a)
        self.ctx.register_leg(self.b)
        self._no_answer_timer = self.ctx.call_later(self.ctx.no_answer_timeout, self._no_answer)
        self.sdp.carry("offer", self.a, self.b, self.a_invite, self._send_b_invite, self._initial_offer_failed)

    def _initial_offer_failed(self, reason: str, bad_sdp: bool) -> None:
        if self.state is not CallState.CALLING:
            return  # the caller gave up meanwhile
        self.ctx.media_event(self, "offer_failed", reason)
        if bad_sdp:
            self._respond_a(488, "Not Acceptable Here", [("Warning", f'399 b2bua "{_quote(reason)}"')])
            self.result = "rejected"
        else:
            self._respond_a(503, "Service Unavailable (media relay unavailable)", [("Retry-After", "5")])
            self.result = "failed"
        self.b_final = True
        self._finish()

    def _send_b_invite(self, body: bytes) -> None:
        if self.state is not CallState.CALLING:
            return  # cancelled or timed out while the relay prepared the offer
        ctx = self.ctx
        invite = self.a_invite
        hop = self.b.peer
        a_from, a_to = invite.from_, invite.to
        mf = invite.max_forwards
        b_invite = outgoing_invite(
            invite.uri, hop, from_=str(NameAddr(a_from.uri, a_from.display, (("tag", self.b.local_tag),))),
            to=str(NameAddr(a_to.uri, a_to.display)), call_id=self.b.call_id, contact=ctx.contact_for(hop),
            body=body, content_type=None,  # the caller's Content-Type crosses with its body (header policy)
            max_forwards=(mf if mf is not None else 70) - 1, extra=ctx.policy.request_headers(invite))
        self.b.invite_tx = self.b_invite_tx = ctx.send_request(self.b, b_invite, hop)
        self.b_invite = self.b_invite_tx.request  # the INVITE as sent (our Via on top): one copy, not two
        ctx.log_event(self, "call_started", b_call_id=self.b.call_id, next_hop=str(hop))

    def _no_answer(self) -> None:
        self._no_answer_timer = None
        if self.a_answered or self.state in (CallState.CANCELLING, CallState.ENDED):
            return
        self._respond_a(408, "Request Timeout (no answer)")
        self._give_up("timeout")

    # -- the B leg's INVITE ------------------------------------------------------------------------

    def on_invite_response(self, tx: Any, resp: Response) -> None:
        status = resp.status
        if status == 100:
            return
        if status < 200:
            self._on_b_provisional(resp)
        elif status < 300:
            self._on_b_success(resp)
        else:
            self._on_b_failure(resp)

    def _on_b_provisional(self, resp: Response) -> None:
        tag = resp.to_tag
        if tag and tag not in self.first_b.early and self.b_invite is not None:
            self.first_b.add_early(tag, Dialog.from_response(self.b_invite, resp))
        if self.a_answered or self.state is not CallState.CALLING and self.state is not CallState.EARLY:
            return
        self.state = CallState.EARLY
        headers = self.ctx.policy.response_headers(resp)
        if tag:
            headers.append(("Contact", self.ctx.contact_for(self.a.peer)))

        def relay(body: bytes) -> None:
            if not self.a_answered:
                self.ctx.respond(self.a.invite_tx, build_response(
                    self.a_invite, resp.status, resp.reason, to_tag=self.a.local_tag, headers=headers, body=body))

        self.sdp.carry(self._b_sdp_kind(), self.first_b, self.a, resp, relay, self._media_failed_on_answer)

    def _b_sdp_kind(self) -> str:
        """SDP from the callee answers our offer, or is the offer when our INVITE had none."""
        assert self.b_invite is not None
        return "answer" if self.b_invite.body else "offer"

    def _on_b_success(self, resp: Response) -> None:
        assert self.b_invite is not None
        tag = resp.to_tag or ""
        if self.first_b.dialog is not None:
            if self.first_b.dialog.remote_tag == tag:
                self.resend_ack(self.first_b, resp)  # a retransmitted 2xx: our ACK was lost
            else:
                self._reject_fork(resp)  # RFC 3261 §13.2.2.4: a second fork answered too
            return
        self.b_final = True
        self._cancel_no_answer()
        dialog = self.first_b.take_early(tag) or Dialog.from_response(self.b_invite, resp)
        dialog.confirm(resp)
        self.first_b.dialog = dialog
        if self.first_b is not self.b and self.state is CallState.CONFIRMED:
            # Picked up elsewhere while it rang: this 200 crossed our CANCEL. Take it and end it.
            self.ack(self.first_b, self.b_invite.cseq.seq, b"")
            self.release_leg(self.first_b, "Call completed elsewhere")
            return
        if self.deflection is not None:
            self.deflection.abandon("the callee answered")  # it keeps the call after all
        if self.state is CallState.CANCELLING or self.a_answered:
            # The 200 crossed our CANCEL (or the caller is gone): take the call and hang it up.
            self.ack(self.first_b, self.b_invite.cseq.seq, b"")
            self._send_bye(self.first_b)
            self._maybe_finish()
            return
        if self.b_invite.body:
            self.ack(self.first_b, self.b_invite.cseq.seq, b"")
        else:
            self._ack_wait = with_entry(self._ack_wait, self.a, (self.first_b, self.b_invite.cseq.seq))  # late offer
        headers = self.ctx.policy.response_headers(resp)
        headers.append(("Contact", self.ctx.contact_for(self.a.peer)))
        headers.append(("Allow", ALLOW))

        def answer_caller(body: bytes) -> None:
            if self.a_answered or self.state not in (CallState.CALLING, CallState.EARLY):
                return  # the caller cancelled while the relay worked: _give_up has hung up the B leg
            self.a_answered = True
            assert self.a.dialog is not None
            self.a.dialog.state = DialogState.CONFIRMED
            self.state = CallState.CONFIRMED
            self.result = "answered"
            self.ctx.respond(self.a.invite_tx, build_response(
                self.a_invite, resp.status, resp.reason, to_tag=self.a.local_tag, headers=headers, body=body))
            self.ctx.log_event(self, "call_answered")
            self._watch_media(answered=True)

        self.sdp.carry(self._b_sdp_kind(), self.first_b, self.a, resp, answer_caller, self._media_failed_on_answer)

    def _reject_fork(self, resp: Response) -> None:
        assert self.b_invite is not None
        self.reject_fork(self.first_b, self.b_invite, resp)

    def reject_fork(self, leg: Leg, invite: Request, resp: Response) -> None:
        """A 2xx from a second fork of `invite` (ours, on `leg`): ACK it and end that dialog."""
        tag = resp.to_tag or ""
        released = self._released_forks.get((invite.call_id, tag))
        if released is not None:
            self.ctx.resend_ack(released)  # its 2xx again: our ACK was lost; BYE is under way
            return
        ack, bye, dest = release_requests(invite, resp, leg.peer)
        sent = self.ctx.send_ack(leg, ack, dest)
        self._released_forks = with_entry(self._released_forks, (invite.call_id, tag), sent)
        self._byes[self.ctx.send_request(leg, bye, dest)] = None

    def _on_b_failure(self, resp: Response) -> None:
        self.b_final = True
        if self._deflecting():
            assert self.deflection is not None
            self.deflection.callee_gave_up(resp.status, resp.reason)  # the target may still answer
            return
        self._cancel_no_answer()
        if self.state is CallState.CANCELLING or self.a_answered:
            self._maybe_finish()
            return
        status = _STATUS_MAP.get(resp.status, resp.status)
        reason = resp.reason if status == resp.status else None
        headers = self.ctx.policy.response_headers(resp)
        if 300 <= status < 400:
            headers.extend(("Contact", c) for c in resp.headers.values("Contact"))
        self._respond_a(status, reason, headers, resp.body)
        self.result = "rejected"
        self._finish()

    def on_invite_failed(self, transport_error: bool) -> None:
        """The B leg's INVITE got no final response (Timer B), or could not be sent at all."""
        self.b_final = True
        if self._deflecting():
            assert self.deflection is not None
            self.deflection.callee_gave_up(503 if transport_error else 408, None)
            return
        self._cancel_no_answer()
        if not self.a_answered and self.state is not CallState.CANCELLING:
            if transport_error:
                self._respond_a(503, "Service Unavailable (next hop unreachable)")
            else:
                self._respond_a(408, "Request Timeout (next hop did not answer)")
            self.result = "failed"
        self._maybe_finish(force=True)

    # -- the caller gives up -----------------------------------------------------------------------

    def on_cancel(self, invite_tx: Any = None) -> None:
        """CANCEL matched the caller's INVITE (the core has already answered it 200), or the INVITE
        with Replaces of a replacement under way."""
        if self.replacement is not None and invite_tx is self.replacement.tx:
            self.replacement.cancelled()
            return
        if self.a_answered:
            return  # too late: the 2xx is on its way (RFC 3261 §9.2), the call goes on
        self._respond_a(487, None)
        self._give_up("cancelled")

    def _give_up(self, result: str) -> None:
        self.result = result
        self._cancel_no_answer()
        if self.deflection is not None:
            self.deflection.abandon("the caller gave up")
        if self.replacement is not None:
            self.replacement.abandon()  # a pickup under way: the caller it would answer is gone
        if self.b.invite_tx is None:
            self.b_final = True  # the relay still prepares the offer: nothing was sent to the callee
        if self.b_final:
            if self.b.confirmed:
                self._send_bye(self.b)
            self._maybe_finish(force=not self.b.confirmed)
            return
        self.state = CallState.CANCELLING
        if self.b.invite_tx is not None:
            self.ctx.cancel(self.b.invite_tx)

    def on_a_invite_timeout(self) -> None:
        """The caller never ACKed our 2xx (Timer L), or never ACKed a failure (Timer H)."""
        if self.state is CallState.CONFIRMED:
            self.result = "failed"
            self.hangup(reason="no ACK from caller")

    # -- in-dialog requests ------------------------------------------------------------------------

    def on_request(self, leg: Leg, tx: Any, req: Request) -> None:
        method = req.method
        dialog = leg.dialog
        if dialog is None and method == "REFER" and leg is self.first_b:
            early = leg.early.get(req.from_tag or "")
            if early is not None:  # the ringing callee deflects the call (deflection.py)
                if early.check_remote_cseq(req):
                    self._on_early_refer(leg, early, tx, req)
                else:
                    self.ctx.respond(tx, build_response(req, 500, "Out of order CSeq"))
                return
        if dialog is None or dialog.state is DialogState.TERMINATED:
            self.ctx.respond(tx, build_response(req, 481))
            return
        if not dialog.check_remote_cseq(req):
            self.ctx.respond(tx, build_response(req, 500, "Out of order CSeq"))
            return
        if any(intercept(leg, tx, req) for intercept in list(self.intercepts)):
            return
        if self.transfer is not None and leg in self.transfer.lent_legs:
            self.transfer.lent_leg_request(leg, tx, req)  # the consultation call's legs, for now
            return
        if method == "BYE":
            self.ctx.respond(tx, build_response(req, 200))
            self.ctx.log_event(self, "bye_received", side=leg.label)
            transfer = self.transfer
            if leg is not self.a and leg is not self.b:
                dialog.state = DialogState.TERMINATED  # a leg a transfer already released
            elif transfer is not None and leg is transfer.transferor and transfer.state is TransferState.CALLING:
                dialog.state = DialogState.TERMINATED
                transfer.transferor_left()  # RFC 5589 §6.1: the transfer goes on without it
            else:
                self.hangup(from_leg=leg)
            return
        if method == "REFER":
            self._on_refer(leg, tx, req)
            return
        if method not in RELAYED_METHODS:
            self.ctx.respond(tx, build_response(req, 405, headers=[("Allow", ALLOW)]))
            return
        other = self.other(leg)
        if not other.confirmed or self.state is not CallState.CONFIRMED:
            self.ctx.respond(tx, build_response(req, 491 if method == "INVITE" else 500, None,
                                                headers=[("Retry-After", "1")]))
            return
        moving = self.replacement is not None or (self.transfer is not None and self.transfer.moving)
        if method in TARGET_REFRESH and moving:
            # The legs are being re-bridged: an offer relayed now would land on the wrong session.
            self.ctx.respond(tx, build_response(req, 491, headers=[("Retry-After", "2")]))
            return
        if method == "INVITE" and (leg.reinvite_pending or other.reinvite_pending):
            self.ctx.respond(tx, build_response(req, 491))  # RFC 3261 §14.2: glare
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self.ctx.respond(tx, build_response(req, 483))
            return
        if method in TARGET_REFRESH:
            dialog.refresh_target(req)
        headers = self.ctx.policy.request_headers(req)
        if method in TARGET_REFRESH:
            headers.append(("Contact", self.ctx.contact_for(other.peer)))
        if method == "INVITE":
            other.reinvite_pending = True
        if method == "NOTIFY":
            headers.extend(self._notify_headers(leg, req))

        def send(body: bytes) -> None:
            if self.state is not CallState.CONFIRMED or not other.confirmed:
                other.reinvite_pending = False
                self.ctx.respond(tx, build_response(req, 481))
                return
            assert other.dialog is not None
            out = other.dialog.create_request(method, headers, body)
            # RFC 7332: a B2BUA decrements Max-Forwards across legs instead of resetting it.
            out = out.with_headers(out.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1)))
            ctx_tx = self.ctx.send_request(other, out, other.destination())
            self._relays[ctx_tx] = (tx, leg)

        def refuse(reason: str, bad_sdp: bool) -> None:
            other.reinvite_pending = False
            if bad_sdp:
                self.ctx.respond(tx, build_response(req, 488, headers=[("Warning", f'399 b2bua "{_quote(reason)}"')]))
            else:
                self.ctx.respond(tx, build_response(req, 500, "Server Internal Error (media relay failed)",
                                                    headers=[("Retry-After", "1")]))
                self.media_failed(reason)

        kind = "offer" if method in TARGET_REFRESH else None
        self.sdp.carry(kind, leg, other, req, send, refuse)

    def _notify_headers(self, leg: Leg, req: Request) -> list[tuple[str, str]]:
        """Event and Subscription-State of a NOTIFY we relay (they belong to the subscription, which
        crosses with the REFER or SUBSCRIBE that made it); a refer event's id is translated back."""
        out = [(n, v) for n, v in req.headers if n.lower() == "subscription-state"]
        event = req.headers.get("Event")
        if event is not None:
            package, _, text = event.partition(";")
            try:
                params = parse_params(text)
            except UriError:
                return out  # an Event we cannot read is not sent on half-understood
            found, their_id = find_param(params, "id")
            relayed = self._relayed_refers.get((leg.key, (their_id or "").strip())) if found else None
            if relayed is not None:
                self._refer_progress(relayed, req)
                params = tuple((k, relayed.their_id if k.lower() == "id" else v) for k, v in params)
            out.append(("Event", package.strip() + format_params(params)))
        return out

    def _refer_progress(self, relayed: RelayedRefer, notify: Request) -> None:
        """A relayed refer's final NOTIFY counts the passthrough transfer (by the target's status)."""
        frag = parse_sipfrag(notify.body) if notify.body else None
        if relayed.reported or frag is None or frag[0] < 200:
            return
        relayed.reported = True
        result = "completed" if frag[0] < 300 else "failed"
        self.ctx.transfer_ended(self, relayed.kind, result, self.ctx.now() - relayed.started_at)

    def transaction_ended(self, tx: Any) -> None:
        """One of this call's transactions is over (the core says so after any timeout report).
        A call lasts minutes and its transactions seconds, so what the call kept for one goes now:
        a relayed request's entry once it was answered (it was kept for 2xx retransmissions, which
        now come as strays), a request of its own, and an INVITE transaction, replaced by
        `ENDED`. Once both INVITEs are over and the call is up, the INVITEs themselves shrink to
        their skeleton (From, To, Call-ID, CSeq): about two kilobytes less per call held."""
        if tx in self._relays and self._relays[tx] is None:
            del self._relays[tx]
        self._own.pop(tx, None)  # a request of our own (a re-INVITE, a REFER): answered long ago
        for leg in (self.a, self.b, self.first_b):
            if leg.invite_tx is tx:
                leg.invite_tx = ENDED
        if tx is self.a_invite_tx:
            self.a_invite_tx = ENDED
        elif tx is self.b_invite_tx:
            self.b_invite_tx = ENDED
        else:
            return
        a_over = self.a_invite_tx is None or self.a_invite_tx is ENDED  # None: a call we placed
        if a_over and self.b_invite_tx is ENDED and self.state is CallState.CONFIRMED:
            self.a_invite = self.a_invite.skeleton()
            if self.b_invite is not None:
                self.b_invite = self.b_invite.skeleton()

    def on_ack(self, leg: Leg, ack: Request) -> None:
        # An ACK ends an INVITE exchange: the INVITEs the call keeps for its whole life need not
        # keep their parsed views (memory per call, and objects for the cycle collector to walk).
        self.a_invite.shed()
        if self.b_invite is not None:
            self.b_invite.shed()
        waiting = self._ack_wait.get(leg)
        if waiting is None:
            return
        self._ack_wait = without_entry(self._ack_wait, leg)
        target, cseq = waiting
        content_type = ack.headers.get("Content-Type")

        def send(body: bytes) -> None:
            self.ack(target, cseq, body, content_type)

        def failed(reason: str, bad_sdp: bool) -> None:
            self.ack(target, cseq, b"")  # a 2xx is ACKed whatever happens (RFC 3261 §13.2.2.4)
            self.media_failed(reason)

        # The ACK completes a late offer: its SDP answers the offer the other leg made in its 2xx.
        self.sdp.carry("answer", leg, target, ack, send, failed)

    # -- responses to requests this call sent (other than the B leg's INVITE) ---------------------

    def on_response(self, leg: Leg, tx: Any, resp: Response) -> None:
        if self.transfer is not None and tx is self.transfer.invite_tx:
            self.transfer.on_invite_response(resp)
            return
        if self.deflection is not None and tx is self.deflection.invite_tx:
            self.deflection.on_invite_response(resp)
            return
        if tx in self._own:
            self._on_own_response(leg, tx, resp)
            return
        if tx in self._byes:
            if resp.status >= 200:
                del self._byes[tx]
                self._maybe_finish()
            return
        if tx not in self._relays:
            return
        pair = self._relays[tx]
        if pair is None:
            # Already relayed its final: a 2xx retransmission to a re-INVITE; repeat our ACK.
            if resp.is_success and tx.request.method == "INVITE":
                self.resend_ack(leg, resp)
            return
        stx, from_leg = pair
        if resp.status == 100:
            return
        method = tx.request.method
        if resp.status >= 200 and (leg not in (self.a, self.b) or from_leg not in (self.a, self.b)):
            self._relay_stale(leg, tx, stx, resp)
            return
        if resp.status >= 200:
            self._relays[tx] = None  # answered; kept to recognise 2xx retransmissions
            if method == "INVITE":
                leg.reinvite_pending = False
            if resp.is_success and method in TARGET_REFRESH:
                assert leg.dialog is not None
                leg.dialog.refresh_target(resp)
            if method == "INVITE" and resp.is_success:
                if tx.request.body:
                    self.ack(leg, tx.request.cseq.seq, b"")
                else:
                    self._ack_wait = with_entry(self._ack_wait, from_leg, (leg, tx.request.cseq.seq))
        headers = self.ctx.policy.response_headers(resp)
        if method in TARGET_REFRESH and resp.status < 300:
            headers.append(("Contact", self.ctx.contact_for(from_leg.peer)))

        def relay_response(body: bytes) -> None:
            self.ctx.respond(stx, build_response(stx.request, resp.status, resp.reason, headers=headers, body=body))

        def failed(reason: str, bad_sdp: bool) -> None:
            self.ctx.respond(stx, build_response(stx.request, 500, "Server Internal Error (media relay failed)"))
            self.media_failed(reason)

        kind = None
        if method in TARGET_REFRESH and resp.status < 300:
            kind = "answer" if tx.request.body else "offer"
        self.sdp.carry(kind, leg, from_leg, resp, relay_response, failed)
        if resp.status in (408, 481) and self.state is CallState.CONFIRMED:
            # RFC 3261 §12.2.1.2: the dialog is gone on that side; end the call on both.
            self.hangup(reason=f"{resp.status} to in-dialog {method}")

    def _relay_stale(self, leg: Leg, tx: Any, stx: Any, resp: Response) -> None:
        """The final answer to a request relayed before a transfer re-bridged the call: one of its
        legs has left. ACK a 2xx to INVITE; tell the sender the request failed, SDP never crosses."""
        self._relays[tx] = None
        method = tx.request.method
        if method == "INVITE":
            leg.reinvite_pending = False
            if resp.is_success:
                self.ack(leg, tx.request.cseq.seq, b"")
        status = resp.status if not resp.is_success else 500
        reason = resp.reason if not resp.is_success else "Server Internal Error (the call was transferred meanwhile)"
        self.ctx.respond(stx, build_response(stx.request, status, reason))

    def on_timeout(self, leg: Leg, tx: Any, transport_error: bool = False) -> None:
        """A request this call sent got no final response (Timer B/F) or hit a transport error."""
        if self.transfer is not None and tx is self.transfer.invite_tx:
            self.transfer.on_invite_failed(transport_error)
            return
        if self.deflection is not None and tx is self.deflection.invite_tx:
            self.deflection.on_invite_failed(transport_error)
            return
        handler = self._own.pop(tx, None)
        if handler is not None:
            if tx.request.method == "INVITE":
                leg.reinvite_pending = False
            handler(tx, None)
            return
        if tx in self._byes:
            del self._byes[tx]
            self._maybe_finish()
            return
        relay = self._relays.pop(tx, None)
        if relay is not None:
            stx, _ = relay
            if tx.request.method == "INVITE":
                leg.reinvite_pending = False
            self.ctx.respond(stx, build_response(stx.request, 408))
            if self.state is CallState.CONFIRMED:
                self.result = self.result or "failed"
                self.hangup(reason=f"timeout of in-dialog {tx.request.method}")

    # -- ending ------------------------------------------------------------------------------------

    def hangup(self, from_leg: Leg | None = None, reason: str | None = None) -> None:
        """End the call: BYE every confirmed leg except the one that sent BYE; cancel what rings."""
        if self.state in (CallState.ENDING, CallState.ENDED):
            return
        if self.lent is not None:
            # An attended transfer holds our legs: it gives them back (then we end) or takes them.
            self._hangup_while_lent = reason or "call ended"
            return
        if from_leg is not None and from_leg.dialog is not None:
            from_leg.dialog.state = DialogState.TERMINATED
        if not self.a_answered and from_leg is not self.b:
            # The caller used BYE before the answer (treated as CANCEL), or we shut down while ringing.
            self._respond_a(487 if from_leg is self.a else 480, None)
            self._give_up(self.result or "cancelled")
            return
        self.state = CallState.ENDING
        if self.transfer is not None:
            self.transfer.abandon()
        if self.replacement is not None:
            self.replacement.abandon()
        for leg in (self.a, self.b):
            if leg is not from_leg and leg.confirmed:
                self._send_bye(leg, reason)
        for hook in list(self.on_hangup):
            hook(reason)
        if not self.b_final and self.b_invite_tx is not None:
            self.ctx.cancel(self.b_invite_tx)
        self._maybe_finish()

    def _send_bye(self, leg: Leg, reason: str | None = None) -> None:
        self.release_leg(leg, reason)
        self.state = CallState.ENDING if self.state is not CallState.CANCELLING else self.state

    def release_leg(self, leg: Leg, reason: str | None = None) -> None:
        """BYE one leg (the call goes on when it is not one of the two bridged)."""
        assert leg.dialog is not None
        headers = [("Reason", f'SIP;cause=200;text="{reason}"')] if reason else []
        bye = leg.dialog.create_request("BYE", headers)
        leg.dialog.state = DialogState.TERMINATED
        self._byes[self.ctx.send_request(leg, bye, leg.destination())] = None

    def _maybe_finish(self, force: bool = False) -> None:
        if self.state is CallState.ENDED:
            return
        if self._byes:
            return
        if self.transfer is not None and not self.transfer.finished:
            return  # the target's INVITE is still being cancelled
        if self.deflection is not None and not self.deflection.finished:
            return  # likewise
        if not self.b_final and not force:
            return
        if self.state in (CallState.ENDING, CallState.CANCELLING) or force:
            self._finish()

    def _finish(self) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        self._cancel_no_answer()
        if self._media_timer is not None:
            self._media_timer.cancel()
            self._media_timer = None
        self.media.delete()
        self.ctx.call_ended(self, self.result or "failed")
        # Next turn, when whatever ended the call has returned: let go of the helpers (a transfer,
        # its REFER subscription, a deflection...) and of our legs. Each points back at the call,
        # and these cycles would wait for the cycle collector's ten-minute pass (collector.py).
        self.ctx.call_later(0, self._release_helpers)

    def _release_helpers(self) -> None:
        self.let_go_of_legs()
        self.transfer = self.deflection = self.replacement = None
        self._own.clear()
        self._relayed_refers = EMPTY
        self.intercepts = self.on_hangup = ()

    # -- transfers ---------------------------------------------------------------------------------

    def _on_refer(self, leg: Leg, tx: Any, req: Request) -> None:
        """REFER from one party: refuse it, relay it (passthrough), or carry the transfer out
        (terminate), per the call's `transfer_mode`."""
        try:
            if self.transfer_mode == "reject":
                raise _Refused(403, "Forbidden (transfers are disabled)")
            if self.state is not CallState.CONFIRMED or not leg.confirmed:
                raise _Refused(403, "Forbidden (no transfer before the call is answered)")
            if self.transfer is not None or self.lent is not None or self.replacement is not None:
                raise _Refused(491, "Request Pending (a transfer is in progress)")
            if self.intercepts:
                raise _Refused(491, "Request Pending (an operator transfer or consultation is in progress)")
            if self.a.reinvite_pending or self.b.reinvite_pending:
                raise _Refused(491, "Request Pending (a re-INVITE is in progress)")
            refer = self._parse_refer(leg, req)
            if self.transfer_mode == "passthrough" and self._pass_refer(leg, tx, req, refer):
                return
            hop, consultation = self._plan_transfer(leg, refer)
        except _Refused as refusal:
            self._refuse_refer(leg, tx, req, refusal)
            return
        self.transfer = Transfer(self, leg, refer, hop, self._refer_expiry(), consultation)
        self._accept_refer(leg, tx, req, refer)
        self.transfer.start()

    def _on_early_refer(self, leg: Leg, early: Dialog, tx: Any, req: Request) -> None:
        """REFER in the ringing callee's early dialog: deflect the call to its target (deflection.py)."""
        ctx = self.ctx
        try:
            if self.transfer_mode == "reject":
                raise _Refused(403, "Forbidden (transfers are disabled)")
            if ctx.transfers.reject_early_dialog_refer:
                raise _Refused(403, "Forbidden (no REFER before the call is answered)")
            if not self.ringing() or self.first_b is not self.b:
                raise _Refused(481, "Call/Transaction Does Not Exist (the call no longer rings)")
            if self.deflection is not None or self.replacement is not None:
                raise _Refused(491, "Request Pending (the call is already being passed on)")
            refer = self._parse_refer(leg, req)
            if refer.replaces is not None:
                raise _Refused(403, "Forbidden (an unanswered call can only be passed to a new target)")
            if not self.a_invite.body:
                raise _Refused(501, "Not Implemented (deflecting a call whose INVITE had no SDP offer)")
            hop, _ = self._plan_transfer(leg, refer)
            assert hop is not None
        except _Refused as refusal:
            self._refuse_refer(leg, tx, req, refusal)
            return
        self.deflection = Deflection(self, leg, early, refer, hop, self._refer_expiry())
        self._accept_refer(leg, tx, req, refer)
        self.deflection.start()

    def _parse_refer(self, leg: Leg, req: Request) -> ReferRequest:
        """The REFER's content, once the dialog's REFER rate allows it. Raises _Refused."""
        if not self.ctx.refer_allowed(leg):
            raise _Refused(403, "Forbidden (too many REFERs in this dialog)")
        refer = parse_refer(req)
        if isinstance(refer, ReferError):
            raise _Refused(refer.status, refer.reason)
        return refer

    def _refuse_refer(self, leg: Leg, tx: Any, req: Request, refusal: _Refused) -> None:
        self.ctx.respond(tx, build_response(req, refusal.status, refusal.reason))
        self.ctx.log_event(self, "refer_refused", side=leg.label, status=refusal.status, reason=refusal.reason)

    def _refer_expiry(self) -> int:
        """The refer subscription outlives the target's ringing (RFC 3515 §2.4.6 lets us choose)."""
        return int(max(self.ctx.transfers.notify_expires_s, self.ctx.no_answer_timeout + 30))

    def _accept_refer(self, leg: Leg, tx: Any, req: Request, refer: ReferRequest) -> None:
        self.ctx.respond(tx, build_response(req, 202, headers=[*refer.accept_headers(),
                                                               ("Contact", self.ctx.contact_for(leg.peer))]))

    def _deflecting(self) -> bool:
        """A deflection may still answer the caller (the phone's own failure must wait for it)."""
        d = self.deflection
        return d is not None and d.active and self.ringing_for_deflection()

    def ringing_for_deflection(self) -> bool:
        """The caller still waits for an answer (the deflecting phone may have given up)."""
        return not self.a_answered and self.state in (CallState.CALLING, CallState.EARLY)

    def deflection_settled(self, deflection: Deflection) -> None:
        if self.deflection is not deflection or not deflection.finished:
            return
        self.deflection = None
        # A caller already answered with a failure (or gone) and nothing else left: the call ends.
        self._maybe_finish(force=self.a_answered and self.state is not CallState.CONFIRMED)

    def deflection_failed_after_callee(self, status: int, reason: str | None) -> None:
        """Both the deflecting phone and the target declined: the caller hears the target's status."""
        if not self.ringing_for_deflection():
            return
        self._cancel_no_answer()
        mapped = _STATUS_MAP.get(status, status)
        self._respond_a(mapped, reason if mapped == status else None)
        self.result = "rejected"
        self._finish()

    def _pass_refer(self, leg: Leg, tx: Any, req: Request, refer: ReferRequest) -> bool:
        """`transfers.mode = passthrough`: relay the REFER to the other party, which then transfers
        itself. The Refer-To points back at us, so its INVITE comes through the B2BUA: to the target
        (routed like any call), or, for an attended transfer, with a Replaces naming the
        transferor's consultation leg (which that party is then allowed to replace). The answer and
        the NOTIFYs come back through `_relays` and `on_request`. An early completion cannot be done
        by endpoints (RFC 3891: 481), so the B2BUA does it as in terminate mode: returns False.
        Raises _Refused."""
        ctx = self.ctx
        other = self.other(leg)
        assert other.dialog is not None
        if refer.replaces is not None:
            policy = ctx.transfers.replaces_policy
            if policy == "never":
                raise _Refused(403, "Forbidden (attended transfers are disabled)")
            found = find_consultation(ctx.find_leg, leg, refer.replaces)
            if isinstance(found, Consultation):
                if found.early:
                    return False
                named = found.transferor_leg
                assert named.dialog is not None and named.dialog.remote_tag is not None
                named.replaceable_from = (other.peer.host, ctx.now() + ctx.transfers.notify_expires_s)
                refer_to = refer_to_with_replaces(self._via_us(other, refer.target), named.call_id,
                                                  named.local_tag, named.dialog.remote_tag)
            elif found is not None:
                raise _Refused(*found)
            elif policy == "any":
                refer_to = str(refer.refer_to)  # a dialog elsewhere: the party reaches it directly
            else:
                raise _Refused(403, "Forbidden (Replaces names no dialog of this B2BUA)")
        else:
            if getattr(refer.target, "scheme", "sip") == "sips":
                raise _Refused(416, "Unsupported URI Scheme (sips: no TLS here)")
            denied = ctx.check_transfer_target(refer.target)
            if denied is not None:
                raise _Refused(403, f"Forbidden ({denied})")
            if ctx.route(refer.target) is None:
                raise _Refused(404, "Not Found (no route to the transfer target)")
            refer_to = f"<{self._via_us(other, refer.target)}>"
        headers = [("Refer-To", refer_to), ("Contact", ctx.contact_for(other.peer))]
        if refer.referred_by:
            headers.append(("Referred-By", refer.referred_by))
        if refer.refer_sub is False:
            headers.append(("Refer-Sub", "false"))
        if refer.norefersub:
            headers.append(("Supported", "norefersub"))
        headers.extend(ctx.policy.request_headers(req))
        out = other.dialog.create_request("REFER", headers)
        ctx_tx = ctx.send_request(other, out, other.destination())
        self._relays[ctx_tx] = (tx, leg)
        # The other party's NOTIFYs name our REFER's CSeq in Event's id; the transferor expects its own.
        kind = "blind" if refer.replaces is None else "attended"
        self._relayed_refers = with_entry(self._relayed_refers, (other.key, str(out.cseq.seq)),
                                     RelayedRefer(str(req.cseq.seq), kind, ctx.now()))
        ctx.log_event(self, "refer_relayed", side=leg.label, attended=refer.replaces is not None)
        return True

    def _via_us(self, leg: Leg, target: Any) -> str:
        """A SIP URI for `target`'s user at our own address as `leg`'s peer reaches us."""
        user = target.user if hasattr(target, "user") else unescape(target.raw[4:].split(";", 1)[0])
        return self.ctx.contact_for(leg.peer, user=user or None).strip("<>")

    def _plan_transfer(self, leg: Leg, refer: ReferRequest) -> tuple[Address | None, Consultation | None]:
        """Where a REFER takes the transferee: a consultation call of ours (attended, early), or a
        next hop to call (blind, or a Replaces for a dialog elsewhere). Raises _Refused."""
        ctx = self.ctx
        policy = ctx.transfers.replaces_policy
        if refer.replaces is not None:
            if policy == "never":
                raise _Refused(403, "Forbidden (attended transfers are disabled)")
            found = find_consultation(ctx.find_leg, leg, refer.replaces)
            if isinstance(found, Consultation):
                return None, found  # no new call is placed: the target policy has nothing to check
            if found is not None:
                raise _Refused(*found)
            if policy != "any":
                raise _Refused(403, "Forbidden (Replaces names no dialog of this B2BUA)")
        if getattr(refer.target, "scheme", "sip") == "sips":
            raise _Refused(416, "Unsupported URI Scheme (sips: no TLS here)")
        denied = ctx.check_transfer_target(refer.target)
        if denied is not None:
            raise _Refused(403, f"Forbidden ({denied})")
        hop = ctx.route(refer.target)
        if hop is None:
            raise _Refused(404, "Not Found (no route to the transfer target)")
        return hop, None

    def add_leg(self, leg: Leg) -> None:
        """A new leg of this call (a transfer target): known to the core until the call ends."""
        self._extra_legs = (*self._extra_legs, leg)
        self.ctx.register_leg(leg)

    def remove_leg(self, leg: Leg) -> None:
        """A leg lent by a consultation call goes back to it."""
        self._extra_legs = tuple(x for x in self._extra_legs if x is not leg)

    def add_intercept(self, intercept: Callable[[Leg, Any, Request], bool]) -> None:
        """In-dialog requests go to `intercept` before the relay; it returns True when it took one."""
        self.intercepts = (*self.intercepts, intercept)

    def remove_intercept(self, intercept: Callable[[Leg, Any, Request], bool]) -> None:
        self.intercepts = tuple(i for i in self.intercepts if i != intercept)

    def add_hangup_hook(self, hook: Callable[[str | None], None]) -> None:
        self.on_hangup = (*self.on_hangup, hook)

    def remove_hangup_hook(self, hook: Callable[[str | None], None]) -> None:
        self.on_hangup = tuple(h for h in self.on_hangup if h != hook)

    def busy(self) -> bool:
        """Something is under way that lending our legs to a transfer would break."""
        return (self.transfer is not None or self.lent is not None or self.replacement is not None
                or self.deflection is not None or bool(self.intercepts)
                or self.a.reinvite_pending or self.b.reinvite_pending
                or any(pair is not None for pair in self._relays.values()))

    def ringing(self) -> bool:
        """The callee has not answered and the caller has not given up."""
        return (self.state in (CallState.CALLING, CallState.EARLY) and not self.a_answered
                and self.b_invite_tx is not None and not self.b_final)

    def lend_legs(self, to: Call) -> None:
        """An attended transfer in `to` joins our target to its transferee: our legs go there and
        requests on them reach that call until the transfer gives them back or keeps them."""
        self.lent = to
        for leg in (self.a, self.b):
            leg.call = to
            to.add_leg(leg)

    def take_back_legs(self, hang_up: bool) -> None:
        """The transfer failed: the consultation call goes on (or ends, if it must or was asked to)."""
        to = self.lent
        assert to is not None
        self.lent = None
        for leg in (self.a, self.b):
            leg.call = self
            to.remove_leg(leg)
        ended = next((leg for leg in (self.a, self.b) if not leg.confirmed), None)
        if hang_up or ended is not None or self._hangup_while_lent:
            self.hangup(from_leg=ended, reason=self._hangup_while_lent or "transfer abandoned")

    def surrender_legs(self) -> None:
        """The transfer completed: our legs stay with it, and this call ends, counted transferred."""
        self.lent = None
        self.result = "transferred"
        self._finish()

    def hand_over_ringing_target(self, to: Call) -> None:
        """Early completion: our callee's ringing INVITE now belongs to a transfer in `to`. The
        caller (the transferor) is told its INVITE ended, and this call ends."""
        target = self.first_b
        target.call = to
        to.add_leg(target)
        self.b_final = True  # no longer ours to cancel or answer
        self._respond_a(487, "Request Terminated (call transferred)",
                        [("Reason", 'SIP;cause=200;text="Call completed elsewhere"')])
        self.result = "transferred"
        self._finish()

    def accept_replacement(self, replaced: Leg, invite: Request, tx: Any, source: Address,
                           replaces: Replaces) -> Replacement | Pickup | tuple[int, str]:
        """An INVITE with Replaces names `replaced`: start replacing it, or say why not."""
        if replaces.early_only and replaced.confirmed:
            return (486, "Busy Here (early-only names a confirmed dialog)")
        if self.ringing() and not replaced.confirmed:
            if replaced is not self.first_b or self.replacement is not None or self.deflection is not None:
                return (481, "Call/Transaction Does Not Exist (only the ringing side can be picked up)")
            self.replacement = Pickup(self, replaced, invite, tx, source)
            return self.replacement
        if (self.state is not CallState.CONFIRMED or not replaced.confirmed
                or replaced not in (self.a, self.b) or not self.other(replaced).confirmed):
            return (481, "Call/Transaction Does Not Exist (the named dialog is not in a call)")
        if (self.transfer is not None or self.lent is not None or self.replacement is not None
                or self.a.reinvite_pending or self.b.reinvite_pending):
            return (491, "Request Pending (the call is busy with a transfer)")
        self.replacement = Replacement(self, replaced, invite, tx, source)
        return self.replacement

    def picked_up(self, body: bytes, how: str = "pickup") -> None:
        """A pickup (or deflection) joined the caller to a new party: answer the caller, stop the
        phone that rang."""
        self._cancel_no_answer()
        self.a_answered = True
        assert self.a.dialog is not None
        self.a.dialog.state = DialogState.CONFIRMED
        self.state = CallState.CONFIRMED
        self.result = "answered"
        headers = [("Contact", self.ctx.contact_for(self.a.peer)), ("Allow", ALLOW),
                   ("Content-Type", "application/sdp")]
        self.ctx.respond(self.a.invite_tx, build_response(
            self.a_invite, 200, to_tag=self.a.local_tag, headers=headers, body=self.a.sdp.outgoing(body)))
        if not self.b_final and self.b_invite_tx is not None:
            self.ctx.cancel(self.b_invite_tx)
        self.ctx.log_event(self, "call_answered", answered_by=how)
        self._watch_media(answered=True)

    def replacement_settled(self, replacement: ReplacingInvite) -> None:
        if self.replacement is replacement and replacement.finished:
            self.replacement = None

    def release_leg_if_up(self, leg: Leg, reason: str) -> None:
        if leg.confirmed:
            self.release_leg(leg, reason)

    def transfer_settled(self, transfer: Transfer) -> None:
        """A transfer reached its end (success, failure, or abandoned and its INVITE finished)."""
        if self.transfer is transfer and transfer.finished:
            self.transfer = None
            if transfer.recall_due and not recall_transferor(self, transfer):
                self.hangup(reason="transfer failed and the transferor could not be recalled")
            self._maybe_finish()

    def state_is_confirmed(self) -> bool:
        return self.state is CallState.CONFIRMED

    def swap_leg(self, old: Leg, new: Leg, media: Any) -> Any:
        """Bridge `new` where `old` was, with `media` as the call's session; returns the old session."""
        if old is self.a:
            self.a = new
        else:
            self.b = new
        self._ack_wait = without_entry(self._ack_wait, old)
        old_media, self.media = self.media, media
        self.sdp = SdpPath(media)
        return old_media

    def send_own(self, leg: Leg, method: str, body: bytes, handler: Any,
                 headers: list[tuple[str, str]] | None = None) -> Any:
        """Send a request the call itself originates on `leg`; `handler(tx, response or None)`."""
        assert leg.dialog is not None
        extra = list(headers or [])
        if method == "INVITE":
            extra.append(("Contact", self.ctx.contact_for(leg.peer)))
            leg.reinvite_pending = True
        return self.send_own_request(leg, leg.dialog.create_request(method, extra, body), leg.destination(), handler)

    def send_own_request(self, leg: Leg, req: Request, dest: Address, handler: Any) -> Any:
        tx = self.ctx.send_request(leg, req, dest)
        self._own[tx] = handler
        return tx

    def _on_own_response(self, leg: Leg, tx: Any, resp: Response) -> None:
        handler = self._own[tx]
        is_invite = tx.request.method == "INVITE"
        if resp.status >= 200:
            if is_invite:
                leg.reinvite_pending = False
                if resp.is_success:
                    if leg.ack is not None and leg.ack_for == (resp.cseq.seq, resp.to_tag or ""):
                        self.resend_ack(leg, resp)  # a retransmitted 2xx
                        return
                    assert leg.dialog is not None
                    leg.dialog.refresh_target(resp)
                    self.ack(leg, tx.request.cseq.seq, b"")  # our re-INVITE carried the offer
            if not (is_invite and resp.is_success):
                del self._own[tx]
        handler(tx, resp)

    # -- media -------------------------------------------------------------------------------------

    def media_failed(self, reason: str) -> None:
        """The relay lost this call's media (it went down, or refused an update): end the call."""
        if self.state in (CallState.ENDING, CallState.ENDED, CallState.CANCELLING):
            return
        self.ctx.media_event(self, "call_ended", reason)
        if self.a_answered:
            self.hangup(reason=f"media relay failed: {reason}")
        else:
            self._respond_a(503, "Service Unavailable (media relay failed)", [("Retry-After", "5")])
            self._give_up("failed")

    def _media_failed_on_answer(self, reason: str, bad_sdp: bool) -> None:
        self.media_failed(f"bad SDP from the callee: {reason}" if bad_sdp else reason)

    @property
    def on_hold(self) -> bool:
        """A party put the call on hold, or the B2BUA held a party (control API): silence is expected."""
        return any(leg.sdp.peer_held or leg.sdp.local_held for leg in (self.a, self.b))

    def _watch_media(self, answered: bool = False) -> None:
        if self.media.active and self.ctx.media_timeout > 0:
            if answered:
                self._media_quiet_since = self.ctx.now()
            self._media_timer = self.ctx.call_later(self.ctx.media_check_interval, self._check_media)

    def _check_media(self) -> None:
        self._media_timer = None
        if self.state is not CallState.CONFIRMED:
            return
        self._watch_media()
        # Silence is expected on hold (RFC 3264) and while a transfer moves the media: no timeout.
        if self.on_hold or self.lent is not None or self.transfer is not None:
            self._media_quiet_since = self.ctx.now()
        else:
            self.media.query(self._media_checked)

    def _media_checked(self, reply: dict[str, Any] | None, error: str | None) -> None:
        """Judge the relay's answer to `query`: the call's media stopped, or the relay lost it."""
        if self.state is not CallState.CONFIRMED or self.on_hold or self.transfer is not None:
            return
        now = self.ctx.now()
        # rtpengine deletes a silent call after its own timeout; our relay flags it.
        timed_out = error is not None and "unknown call-id" in error.lower()
        if reply is not None and error is None:
            timed_out = str(reply.get("timed out", "0")) == "1"
            # Our own judgement, the same with any relay: the packet totals stood still that long.
            packets = _packets(reply)
            if packets is not None and packets != self._media_packets:
                self._media_packets = packets
                self._media_quiet_since = now
            elif packets is not None and now - self._media_quiet_since >= self.ctx.media_timeout:
                timed_out = True
        if timed_out:
            self.ctx.media_event(self, "timeout", "no media")
            self.hangup(reason="media timeout")

    # -- helpers -----------------------------------------------------------------------------------

    def _respond_a(self, status: int, reason: str | None, headers: list[tuple[str, str]] | None = None,
                   body: bytes = b"") -> None:
        if self.a_answered:
            return
        self.a_answered = True
        if self.a.dialog is not None:
            self.a.dialog.state = DialogState.TERMINATED
        self.ctx.respond(self.a.invite_tx, build_response(
            self.a_invite, status, reason, to_tag=self.a.local_tag, headers=headers or [], body=body))

    def ack(self, leg: Leg, cseq: int, body: bytes, content_type: str | None = None) -> None:
        assert leg.dialog is not None
        headers = [("Content-Type", content_type)] if body and content_type else []
        ack = leg.dialog.create_request("ACK", headers, body, cseq=cseq)
        leg.ack = self.ctx.send_ack(leg, ack, leg.destination())
        leg.ack_for = (cseq, leg.dialog.remote_tag or "")

    def resend_ack(self, leg: Leg, resp: Response) -> None:
        """RFC 3261 §13.2.2.4: a retransmitted 2xx gets the ACK we sent for it, byte for byte."""
        if leg.ack is not None and leg.ack_for == (resp.cseq.seq, resp.to_tag or ""):
            self.ctx.resend_ack(leg.ack)

    def _cancel_no_answer(self) -> None:
        if self._no_answer_timer is not None:
            self._no_answer_timer.cancel()
            self._no_answer_timer = None

    def let_go_of_legs(self) -> None:
        """Break the cycle between this call and its legs (leg.py): it has ended, or never started."""
        for leg in self.all_legs():
            leg.let_go(self)

    def all_legs(self) -> list[Leg]:
        """Every leg this call has registered: the bridged two, the callee's first, a transfer's."""
        legs = [self.a, self.b, self.first_b, *self._extra_legs]
        return list({id(leg): leg for leg in legs}.values())

    def transactions(self) -> list[Any]:
        return [*self._relays, *self._byes]


@dataclass
class RelayedRefer:
    """A REFER relayed in passthrough mode, as the NOTIFYs that answer it need it."""

    their_id: str  # the transferor's REFER CSeq: the id its NOTIFYs must carry
    kind: str  # blind or attended, for the transfer metrics
    started_at: float
    reported: bool = False


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _quote(text: str) -> str:
    """Text safe inside a quoted-string of a Warning header."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:100]


def _packets(reply: dict[str, Any]) -> int | None:
    """RTP + RTCP packets the relay saw for the call (`totals` in rtpengine's query reply)."""
    totals = reply.get("totals")
    if not isinstance(totals, dict):
        return None
    count = 0
    for kind in ("RTP", "RTCP"):
        part = totals.get(kind)
        if isinstance(part, dict) and isinstance(part.get("packets"), int):
            count += part["packets"]
    return count
