"""A blind transfer the B2BUA carries out itself: REFER in `terminate` mode (RFC 3515, RFC 5589 §6).

How this works: when one party of a confirmed call (the transferor) sends REFER, the call hands it to
a `Transfer`. The transfer answers 202, keeps the implicit refer subscription toward the transferor
(`ReferSubscription`: NOTIFY 100 Trying at once, then the target's provisional and final status as
message/sipfrag), and calls the target itself on a new leg, as the transferee would. That INVITE
carries the transferee's last SDP (made sendrecv again, since the transferor usually held it
first) offered through a new media session, so the target answers toward relay ports at once and
its 2xx is ACKed without waiting. When the target answers, the call is re-bridged: the target's
leg takes the transferor's place, the transferee is re-INVITEd with the target's SDP (rewritten for
the new session, under the transferee leg's own o= line), the old media session is deleted and the
transferor's leg is released with BYE after the final NOTIFY. When the target refuses, does not
answer or cannot be reached, the NOTIFY carries that status and nothing else changes: the
transferee stays with the transferor (RFC 5589 §6.2). If the transferor hangs up after the 202 the
transfer goes on (and a failure then hangs up the transferee, who has nobody left); if the
transferee hangs up, the target's leg is cancelled or ended.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from rtp_relay.sdp import SdpError, SessionDescription

from ..sip.address import Address
from ..sip.dialog import Dialog
from ..sip.headers import NameAddr
from ..sip.message import Headers, Request, Response
from ..sip.uri import SipUri, parse_uri
from .capabilities import ALLOW
from .leg import Leg, Side
from .refer import ReferNotify, ReferRequest, ReferSubscription

if TYPE_CHECKING:
    from .call import Call

REINVITE_GLARE_RETRIES = 3
REINVITE_GLARE_DELAY_S = 2.1  # RFC 3261 §14.1: we own neither Call-ID, so 2.1-4 s; the low end


class TransferState(enum.Enum):
    CALLING = "calling"  # INVITE sent to the target
    BRIDGING = "bridging"  # the target answered: re-INVITE of the transferee under way
    DONE = "done"  # the transferee talks to the target
    FAILED = "failed"  # the target did not answer; the call is as it was


class Transfer:
    def __init__(self, call: Call, transferor: Leg, refer: ReferRequest, hop: Address, expires: int) -> None:
        self.call = call
        self.ctx = call.ctx
        self.transferor = transferor
        self.transferee = call.other(transferor)
        self.refer = refer
        self.hop = hop
        self.state = TransferState.CALLING
        self.sub = ReferSubscription(refer.cseq, self.ctx.now(), expires, wanted=refer.subscription_wanted)
        self.target = Leg(call, Side.B, self.ctx.new_call_id(), self.ctx.new_tag(), hop)
        self.media = self.ctx.new_media(call, self.target.call_id)
        self.invite: Request | None = None
        self.invite_tx: Any = None
        self.invite_final = False  # the target's INVITE got its final response
        self.transferor_gone = False  # the transferor sent BYE after the 202
        self._expiry: Any = None
        self._glare_retries = 0
        self._transferee_offer = b""  # the re-INVITE's SDP, sent again after a 491

    @property
    def finished(self) -> bool:
        """Nothing of the transfer is outstanding (the call may end)."""
        return self.state in (TransferState.DONE, TransferState.FAILED) and (
            self.invite_tx is None or self.invite_final)

    # -- start -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.call.add_leg(self.target)
        self._notify(self.sub.progress(100, self.ctx.now()))
        self._arm_expiry()
        offer = self._offer_sdp()
        if offer is None:
            self._fail(488, "the transferee's media is unknown")
            return
        self.media.offer(self.transferee.local_tag, self.target.local_tag, offer, self._send_invite)
        self.ctx.log_event(self.call, "transfer_started", transferor=self.transferor.label,
                           target=str(self.refer.target), b_call_id=self.target.call_id)

    def _offer_sdp(self) -> bytes | None:
        """The transferee's last SDP, every stream made sendrecv (it was probably held for the REFER)."""
        remote = self.transferee.sdp.remote
        if remote is None:
            return None
        try:
            sdp = SessionDescription.parse(remote)
        except SdpError:
            return None
        for m in sdp.media:
            if not m.disabled and m.direction is not None:
                m.set_direction("sendrecv")
        for line in sdp.session:
            if line.type == "a" and line.value in ("sendonly", "recvonly", "inactive"):
                line.value = "sendrecv"
        conn = sdp.connection
        if conn is not None and conn.is_null:  # RFC 2543 hold: the real address is unknown
            return None
        return sdp.serialize()

    def _send_invite(self, body: bytes | None, error: str | None) -> None:
        if self.state is not TransferState.CALLING:
            self.media.delete()
            return
        if body is None:
            self._fail(503, f"media relay: {error}")
            return
        try:
            body = self.target.sdp.outgoing(body)
        except SdpError:
            self._fail(503, "media relay returned bad SDP")
            return
        ctx, hop = self.ctx, self.hop
        target = self.refer.target
        user = target.user if isinstance(target, SipUri) else getattr(target, "number", None)
        ruri = f"sip:{user + '@' if user else ''}{hop.host_for_uri}:{hop.port}"
        if hop.transport != "udp":
            ruri += f";transport={hop.transport}"
        assert self.transferee.dialog is not None
        headers = [
            # The target sees the transferee calling (RFC 5589 §6), on a dialog of our own.
            ("From", f"{self.transferee.dialog.remote_party};tag={self.target.local_tag}"),
            ("To", str(NameAddr(target))),
            ("Call-ID", self.target.call_id),
            ("CSeq", "1 INVITE"),
            ("Max-Forwards", "70"),
            ("Contact", ctx.contact_for(hop)),
            ("Allow", ALLOW),
            ("Content-Type", "application/sdp"),
        ]
        if self.refer.referred_by:
            headers.append(("Referred-By", self.refer.referred_by))  # RFC 3892 §3
        self.invite = Request("INVITE", parse_uri(ruri), Headers(headers), body)
        self.target.invite_tx = self.invite_tx = ctx.send_request(self.target, self.invite, hop)

    # -- the target's answer -----------------------------------------------------------------------

    def on_invite_response(self, resp: Response) -> None:
        status = resp.status
        if status == 100:
            return
        if status < 200:
            if self.state is TransferState.CALLING:
                self._notify(self.sub.progress(status, self.ctx.now(), resp.reason))
            return
        if status >= 300:
            self.invite_final = True
            if self.state is TransferState.CALLING:
                self._fail(status, resp.reason)
            self.call.transfer_settled(self)
            return
        self._on_target_answered(resp)

    def _on_target_answered(self, resp: Response) -> None:
        assert self.invite is not None
        if self.target.dialog is not None:
            self.call.resend_ack(self.target, resp)  # a retransmitted 2xx: our ACK was lost
            return
        self.invite_final = True
        dialog = Dialog.from_response(self.invite, resp)
        dialog.confirm(resp)
        self.target.dialog = dialog
        self.call.ack(self.target, self.invite.cseq.seq, b"")  # we made the offer: the ACK is empty
        if self.state is not TransferState.CALLING:
            # The transferee hung up while the target rang: take the answer and end it.
            self.call.release_leg(self.target, "transfer abandoned")
            self.call.transfer_settled(self)
            return
        self.state = TransferState.BRIDGING
        self._notify(self.sub.final(resp.status, resp.reason))
        body = resp.body if resp.body else None
        if body is None:
            self._bridge_failed("the target answered without SDP")
            return
        self.target.sdp.incoming(body)
        self.media.answer(self.transferee.local_tag, self.target.local_tag, body, self._rebridge)

    def on_invite_failed(self, transport_error: bool) -> None:
        """No final response from the target (Timer B) or it could not be reached."""
        self.invite_final = True
        if self.state is TransferState.CALLING:
            self._fail(503 if transport_error else 408, None)
        self.call.transfer_settled(self)

    # -- re-bridging -------------------------------------------------------------------------------

    def _rebridge(self, body: bytes | None, error: str | None) -> None:
        if self.state is not TransferState.BRIDGING:
            return
        if body is None:
            self._bridge_failed(f"media relay: {error}")
            return
        call = self.call
        old_media = call.swap_leg(self.transferor, self.target, self.media)
        old_media.delete()
        if not self.transferor_gone:
            call.release_leg(self.transferor, "call transferred")
        self.ctx.log_event(call, "transfer_bridged", target=str(self.refer.target))
        self._reinvite_transferee(body)

    def _reinvite_transferee(self, body: bytes) -> None:
        try:
            self._transferee_offer = self.transferee.sdp.outgoing(body)
        except SdpError:
            self._bridge_failed("media relay returned bad SDP")
            return
        self._send_reinvite()

    def _send_reinvite(self) -> None:
        self.call.send_own(self.transferee, "INVITE", self._transferee_offer, self._transferee_answered,
                           [("Content-Type", "application/sdp")])

    def _transferee_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is None:
            self._bridge_failed("the transferee did not answer the re-INVITE")
            return
        if resp.status < 200:
            return
        if resp.status == 491 and self._glare_retries < REINVITE_GLARE_RETRIES:
            self._glare_retries += 1
            self.ctx.call_later(REINVITE_GLARE_DELAY_S, self._send_reinvite)  # the same offer again
            return
        if not resp.is_success:
            self._bridge_failed(f"the transferee refused the re-INVITE ({resp.status})")
            return
        self.state = TransferState.DONE
        self._cancel_expiry()
        if resp.body:
            self.transferee.sdp.incoming(resp.body)
            # The transferee's answer may name a new address: the relay learns it (ports unchanged).
            self.media.offer(self.transferee.local_tag, self.target.local_tag, resp.body, _ignore)
        self.ctx.log_event(self.call, "transfer_completed", target=str(self.refer.target))
        self.call.transfer_settled(self)

    def _bridge_failed(self, reason: str) -> None:
        """The target answered but the call cannot be joined to it: end everything, cleanly."""
        self.state = TransferState.FAILED
        self._cancel_expiry()
        self.ctx.log_event(self.call, "transfer_bridge_failed", reason=reason)
        if self.target.confirmed and self.target not in (self.call.a, self.call.b):
            self.call.release_leg(self.target, reason)
        self.call.transfer_settled(self)
        self.call.hangup(reason=f"transfer failed: {reason}")

    # -- failure and abandon -----------------------------------------------------------------------

    def _fail(self, status: int, reason: str | None) -> None:
        """The target could not be reached: tell the transferor; the call stays as it was."""
        self.state = TransferState.FAILED
        self._cancel_expiry()
        self._notify(self.sub.final(status, reason))
        self.media.delete()
        self.ctx.log_event(self.call, "transfer_failed", status=status, reason=reason or "")
        if self.transferor_gone and self.call.state_is_confirmed():
            # RFC 5589 §6.2 would return the transferee to the transferor, who has hung up.
            self.call.hangup(reason="transfer failed and the transferor has left")

    def abandon(self) -> None:
        """The call is ending (the transferee hung up): cancel or end the target's leg."""
        if self.state is TransferState.CALLING:
            self.state = TransferState.FAILED
            self._cancel_expiry()
            self.sub.abandon()
            self.media.delete()  # whatever the target answers now, it will not be bridged
            if self.invite_tx is not None and not self.invite_final:
                self.ctx.cancel(self.invite_tx)

    def transferor_left(self) -> None:
        """The transferor sent BYE after the 202 (some phones do within 300 ms): go on without it."""
        self.transferor_gone = True
        self.sub.abandon()

    # -- NOTIFY ------------------------------------------------------------------------------------

    def _notify(self, notify: ReferNotify | None) -> None:
        leg = self.transferor
        if notify is None or self.transferor_gone or not leg.confirmed:
            return
        headers = [*notify.headers, ("Contact", self.ctx.contact_for(leg.peer))]
        self.call.send_own(leg, "NOTIFY", notify.body, self._notify_answered, headers)

    def _notify_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is None or resp.status in (481, 408):
            self.sub.abandon()  # RFC 6665 §4.1.3: the subscription is gone on the other side

    def _arm_expiry(self) -> None:
        at = self.sub.expires_at
        if at is not None:
            self._expiry = self.ctx.call_later(max(0.0, at - self.ctx.now()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._notify(self.sub.handle_timer(self.ctx.now()))

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


def _ignore(*_: Any) -> None:
    pass
