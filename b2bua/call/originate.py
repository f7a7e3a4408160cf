"""Click-to-dial: a call the B2BUA places itself, to party a first and, once a answers, to party b.

How this works (RFC 3725 §4.1, "Flow I", with our relay in the middle): an `OriginatedCall` is a
`Call` whose two legs are both ours as UAC. It sends party a an INVITE without SDP (a delayed
offer): a's phone rings, and its 200 carries the offer. That offer goes through the relay like any
caller's (a new media session, ports of its own on each side) into the INVITE to party b; b's 200
carries the answer, which the relay rewrites and which goes to a in the ACK of a's 200. From then
on the call is an ordinary bridged call (relay, hold, transfers, hang-up: all inherited).

Why this flow: the relay cannot invent an offer (it rewrites the parties' SDP), so one party must
offer first, and only a party that has answered can be asked to: the 200 of an offer-less INVITE.
No party ever receives SDP that is not an answer to its own offer or our relay's rewrite of the
other's, and no re-INVITE is needed. Its cost, stated by RFC 3725: a's 200 waits unACKed while b
rings, and a's phone gives up after 64·T1 (32 s) of retransmitting it. So b may ring at most
`answer_window` seconds (the caller passes 64·T1 less a margin, capped by the ring timeout); a
hears silence meanwhile (no ringback, no music: early media from b is not passed on).

Failures end the call cleanly and are reported as call events (`party_ringing`, `party_answered`,
`originate_failed` with the side, SIP status and reason, then the usual `call_answered` or
`call_ended` with its result): a refusing or not answering is the end; b refusing, not answering
or unreachable, or the relay failing, gets a's 200 ACKed with an answer that rejects every stream
(RFC 3261 §13.2.2.4: a 2xx's offer must be answered even when the call is not wanted; RFC 3264
§6: port 0) followed at once by BYE with a Reason naming b's status. A hang-up during the setup
cancels whichever INVITE is pending.
"""

from __future__ import annotations

from typing import Any

from rtp_relay.sdp import SdpError, SessionDescription

from ..media.leg_sdp import is_sdp
from ..sip.address import Address
from ..sip.dialog import Dialog, DialogState
from ..sip.headers import NameAddr
from ..sip.message import Response
from ..sip.uri import Uri
from .call import Call, CallContext, CallState
from .leg import Leg, Side
from .outgoing_invite import outgoing_invite

_SETUP = (CallState.CALLING, CallState.EARLY)


class OriginatedCall(Call):
    def __init__(self, ctx: CallContext, a_uri: Uri, b_uri: Uri, a_hop: Address, b_hop: Address, *,
                 ring_timeout: float, answer_window: float, caller_id: Uri | None = None) -> None:
        self.party_a = NameAddr(a_uri)
        self.party_b = NameAddr(b_uri)
        call_id, tag = ctx.new_call_id(), ctx.new_tag()
        # Party a sees whom it is about to be connected to (or the caller id asked for).
        x_invite = outgoing_invite(a_uri, a_hop, from_=f"{NameAddr(caller_id or b_uri)};tag={tag}",
                                   to=str(self.party_a), call_id=call_id, contact=ctx.contact_for(a_hop))
        super().__init__(ctx, x_invite, None, a_hop, b_hop)
        # Both legs are ours as UAC: the A leg is not a caller's dialog but the one a's 200 makes.
        self.a = Leg(self, Side.A, call_id, tag, a_hop)
        self.a_answered = True  # there is no caller's INVITE to answer
        self.ring_timeout = ring_timeout
        self.answer_window = answer_window
        self._x_tx: Any = None
        self._x_final = False
        self._x_acked = False
        self._x_answered_at: float | None = None
        self._ring_timer: Any = None
        self._rang_out = False  # we cancelled a ringing INVITE for want of an answer
        self._ringing: dict[str, int] = {}  # side -> last provisional status reported
        self._aborted = False

    # -- setting up ------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.register_leg(self.a)
        self.ctx.register_leg(self.b)
        self.ctx.log_event(self, "originate_started", a=str(self.party_a.uri), b=str(self.party_b.uri),
                           a_call_id=self.a.call_id, b_call_id=self.b.call_id)
        self._x_tx = self.a.invite_tx = self.ctx.send_request(self.a, self.a_invite, self.a.peer)
        self._arm_ring_timer(self.ring_timeout)

    def ringing(self) -> bool:
        return False  # never a caller's ringing call: nothing to pick up or to complete early

    def _arm_ring_timer(self, delay: float) -> None:
        self._cancel_ring_timer()
        self._ring_timer = self.ctx.call_later(max(0.0, delay), self._rang_too_long)

    def _cancel_ring_timer(self) -> None:
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None

    def _rang_too_long(self) -> None:
        self._ring_timer = None
        tx = self._x_tx if not self._x_final else self.b_invite_tx if not self.b_final else None
        if tx is not None and self.state in _SETUP:
            self._rang_out = True
            self.ctx.cancel(tx)

    # -- party a's INVITE ----------------------------------------------------------------------------

    def on_response(self, leg: Leg, tx: Any, resp: Response) -> None:
        if tx is self._x_tx:
            self._on_x_response(resp)
        else:
            super().on_response(leg, tx, resp)

    def on_timeout(self, leg: Leg, tx: Any, transport_error: bool = False) -> None:
        if tx is self._x_tx:
            if not self._x_final:
                self._x_final = True
                self._failed("a", 503 if transport_error else 408,
                             "unreachable" if transport_error else "no answer to the INVITE",
                             "failed")
        else:
            super().on_timeout(leg, tx, transport_error)

    def _on_x_response(self, resp: Response) -> None:
        status = resp.status
        if status == 100:
            return
        if status < 200:
            if not self._x_final and self.state in _SETUP:
                self.state = CallState.EARLY
                self._report_ringing("a", status)
            return
        if status >= 300:
            if not self._x_final:
                self._x_final = True
                self._cancel_ring_timer()
                if self._rang_out:
                    self._failed("a", 408, "no answer", "timeout")
                else:
                    self._failed("a", status, resp.reason or "", "rejected")
            return
        if self.a.dialog is not None:
            if resp.to_tag == self.a.dialog.remote_tag:
                self.resend_ack(self.a, resp)  # a retransmitted 2xx (nothing to resend before the answer)
            else:
                self.reject_fork(self.a, self.a_invite, resp)
            return
        self._x_final = True
        self._x_answered_at = self.ctx.now()
        dialog = Dialog.from_response(self.a_invite, resp)
        dialog.confirm(resp)
        self.a.dialog = dialog
        offer = resp.body if is_sdp(resp.headers.get("Content-Type")) else b""
        if offer:
            self.a.sdp.incoming(offer)
        if self._aborted or self.state not in _SETUP:
            self._drop_x("call abandoned")
            self._maybe_finish()
            return
        self._cancel_ring_timer()
        self.ctx.log_event(self, "party_answered", side="a")
        if not offer:
            self._failed("a", 488, "party a answered without an SDP offer", "failed")
            return
        self.sdp.carry("offer", self.a, self.b, resp, self._send_y_invite, self._relay_failed)

    # -- party b's INVITE ----------------------------------------------------------------------------

    def _send_y_invite(self, body: bytes) -> None:
        if self._aborted or self.state not in _SETUP:
            return
        ctx, hop = self.ctx, self.b.peer
        self.b_invite = outgoing_invite(  # b sees a calling
            self.party_b.uri, hop, from_=f"{self.party_a};tag={self.b.local_tag}", to=str(self.party_b),
            call_id=self.b.call_id, contact=ctx.contact_for(hop), body=body)
        self.b.invite_tx = self.b_invite_tx = ctx.send_request(self.b, self.b_invite, hop)
        # b rings only as long as a keeps retransmitting its unACKed 200 (see the module docstring).
        left = self.answer_window - (self.ctx.now() - (self._x_answered_at or self.ctx.now()))
        self._arm_ring_timer(min(self.ring_timeout, left))

    def on_invite_response(self, tx: Any, resp: Response) -> None:
        status = resp.status
        if status == 100:
            return
        if status < 200:
            if not self.b_final and self.state in _SETUP:
                self._report_ringing("b", status)
            return
        if status >= 300:
            if not self.b_final:
                self.b_final = True
                self._cancel_ring_timer()
                if self._rang_out:
                    self._failed("b", 408, "no answer", "timeout")
                else:
                    self._failed("b", status, resp.reason or "", "rejected")
            return
        assert self.b_invite is not None
        if self.b.dialog is not None:
            if resp.to_tag == self.b.dialog.remote_tag:
                self.resend_ack(self.b, resp)
            else:
                self.reject_fork(self.b, self.b_invite, resp)
            return
        self.b_final = True
        self._cancel_ring_timer()
        dialog = Dialog.from_response(self.b_invite, resp)
        dialog.confirm(resp)
        self.b.dialog = dialog
        self.ack(self.b, self.b_invite.cseq.seq, b"")  # our INVITE carried the offer
        if self._aborted or self.state not in _SETUP:
            self.release_leg(self.b, "call abandoned")
            self._maybe_finish()
            return
        self.ctx.log_event(self, "party_answered", side="b")
        self.sdp.carry("answer", self.b, self.a, resp, self._answer_x, self._relay_failed)

    def on_invite_failed(self, transport_error: bool) -> None:
        if self.b_final:
            return
        self.b_final = True
        self._cancel_ring_timer()
        self._failed("b", 503 if transport_error else 408,
                     "unreachable" if transport_error else "no answer to the INVITE", "failed")

    def _answer_x(self, body: bytes) -> None:
        if self._aborted or self.state not in _SETUP or not self.a.confirmed:
            return
        self._x_acked = True
        self.ack(self.a, self.a_invite.cseq.seq, body, "application/sdp")
        self.state = CallState.CONFIRMED
        self.result = "answered"
        self.ctx.log_event(self, "call_answered")
        self._watch_media(answered=True)

    def _relay_failed(self, reason: str, bad_sdp: bool) -> None:
        if self._aborted or self.state not in _SETUP:
            return
        side = "a" if not self.b_invite_tx else "b"
        self._failed(side, 488 if bad_sdp else 503, f"media: {reason}", "failed")

    # -- ending ------------------------------------------------------------------------------------

    def hangup(self, from_leg: Leg | None = None, reason: str | None = None) -> None:
        if self.state in _SETUP:
            self.ctx.log_event(self, "originate_failed", side="-", status=487, reason=reason or "hung up")
            self._abort("cancelled", reason or "call abandoned")
            return
        super().hangup(from_leg, reason)

    def _failed(self, side: str, status: int, reason: str, result: str) -> None:
        if self._aborted or self.state not in _SETUP:
            self._maybe_finish()
            return
        self.ctx.log_event(self, "originate_failed", side=side, status=status, reason=reason)
        self._abort(result, f"party {side}: {status} {reason}".strip(), cause=status)

    def _abort(self, result: str, reason: str, cause: int = 200) -> None:
        """Give up the setup: cancel what rings, end what answered, finish when all is settled."""
        self._aborted = True
        self.result = result
        self.state = CallState.CANCELLING
        self._cancel_ring_timer()
        if not self._x_final and self._x_tx is not None:
            self.ctx.cancel(self._x_tx)
        if self.b_invite_tx is not None and not self.b_final:
            self.ctx.cancel(self.b_invite_tx)
        elif self.b_invite_tx is None:
            self.b_final = True  # b was never called
        self._drop_x(reason, cause)
        if self.b.confirmed:
            self.release_leg(self.b, reason)
        self._maybe_finish()

    def _drop_x(self, reason: str, cause: int = 200) -> None:
        """a answered but will not be connected: ACK its offer with a refusal, then BYE."""
        if self.a.dialog is None or not self.a.confirmed:
            return
        if not self._x_acked:
            self._x_acked = True
            body = _refusing_answer(self.a.sdp.remote or b"")
            if body:
                body = self.a.sdp.outgoing(body)
            self.ack(self.a, self.a_invite.cseq.seq, body, "application/sdp" if body else None)
        assert self.a.dialog is not None
        headers = [("Reason", f'SIP;cause={cause};text="{_quote(reason)}"')]
        bye = self.a.dialog.create_request("BYE", headers)
        self.a.dialog.state = DialogState.TERMINATED
        self._byes[self.ctx.send_request(self.a, bye, self.a.destination())] = None

    def _maybe_finish(self, force: bool = False) -> None:
        if not self._x_final:
            return  # a's INVITE is still being cancelled
        super()._maybe_finish(force)

    def _report_ringing(self, side: str, status: int) -> None:
        if self._ringing.get(side) != status:
            self._ringing[side] = status
            self.ctx.log_event(self, "party_ringing", side=side, status=status)


def _refusing_answer(offer: bytes) -> bytes:
    """An answer to `offer` that rejects every stream (port 0, RFC 3264 §6); b"" if unreadable."""
    try:
        sdp = SessionDescription.parse(offer)
        for m in sdp.media:
            m.port = 0
        return sdp.serialize()
    except (SdpError, ValueError):
        return b""


def _quote(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:100]
