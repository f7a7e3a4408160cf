"""A transfer the B2BUA carries out itself: REFER in `terminate` mode (RFC 3515, RFC 5589 §6-7), or
started without any REFER (the control API, a recall).

How this works: when one party of a confirmed call (the transferor) sends REFER, the call hands it to
a `Transfer`. The transfer answers 202, keeps the implicit refer subscription toward the transferor
(`NotifySink` around a `ReferSubscription`: NOTIFY 100 Trying at once, then the target's provisional
and final status as message/sipfrag), and connects the transferee to the target in one of three ways
(`kind`):
- blind: the target is called on a new leg, as the transferee would call it. The INVITE carries
  the transferee's last SDP (made sendrecv again, since the transferor usually held it first)
  offered through a new media session, so the target answers toward relay ports at once and its
  2xx is ACKed without waiting. A Replaces that names no dialog of ours (policy `any`) is copied
  into that INVITE: the target replaces its own dialog with the transferor.
- attended: the Replaces names the transferor's leg of a consultation call through this B2BUA
  (`Consultation`; supervised transfers take the same path). The target is not called again: the
  consultation call lends both its legs to this transfer, and the target's existing leg is
  re-INVITEd with the transferee's SDP on the new media session. If the target refuses, the legs
  go back and the consultation call goes on as it was.
- early: the Replaces names a consultation call that still rings at the target (early completion,
  RFC 5589 §7.4). The ringing INVITE is taken over, the transferor's two legs are released at once
  (487 to its consultation INVITE, NOTIFY 200, BYE), and when the target answers it is ACKed and
  re-INVITEd as in the attended case. Endpoints answer 481 here; the B2BUA absorbs it.
Once the target has answered toward the new session, the call is re-bridged: the target's leg takes
the transferor's place, the transferee is re-INVITEd with the target's SDP (under the transferee
leg's own o= line), the old media session is deleted and the transferor's legs are released with
BYE. When the target refuses, does not answer (`calls.no_answer_timeout_s`) or cannot be reached,
the NOTIFY carries that status and nothing else changes: the transferee stays with the transferor
(RFC 5589 §6.2). If the transferor hangs up after the 202 the transfer goes on (and a failure then
hangs up the transferee, who has nobody left); if the transferee hangs up, the target's leg is
cancelled or ended. Every transfer reports its kind, result and duration once (`transfer_ended`).

Where progress goes is the transfer's `sink` (a `TransferSink`), and what to call comes from a
`TransferTarget` (the target URI, Referred-By, a foreign Replaces: a `ReferRequest` has the same
fields). A transfer nobody REFERred is started with `start_transfer(call, transferee, target,
sink, ...)`, usually with an `EventSink` (progress as call events for the API's stream, the outcome
to a callback). There the "transferor" is simply the other party of the call: it is released when
the transfer completes, if it is still there (a transfer with nobody to release, e.g. a recall of a
transferor who has left, works the same, and hangs the transferee up if it fails: nobody is left).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from rtp_relay.sdp import SdpError, SessionDescription

from ..sip.address import Address
from ..sip.dialog import Dialog, DialogState
from ..sip.headers import NameAddr
from ..sip.message import Request, Response, build_response
from .consultation import Consultation
from .leg import Leg, Side
from .outgoing_invite import outgoing_invite
from .refer import ReferRequest
from .transfer_sink import NotifySink, TransferSink, TransferTarget

if TYPE_CHECKING:
    from .call import Call


REINVITE_GLARE_RETRIES = 3
REINVITE_GLARE_DELAY_S = 2.1  # RFC 3261 §14.1: we own neither Call-ID, so 2.1-4 s; the low end


class TransferState(enum.Enum):
    CALLING = "calling"  # connecting the target: INVITE (blind), re-INVITE (attended), ringing (early)
    BRIDGING = "bridging"  # the target answered: re-INVITE of the transferee under way
    DONE = "done"  # the transferee talks to the target
    FAILED = "failed"  # the target did not answer (the call is as it was), or the transfer was abandoned


def start_transfer(call: Call, transferee: Leg, target: TransferTarget, sink: TransferSink, *,
                   hop: Address | None = None, consultation: Consultation | None = None) -> Transfer:
    """Start a transfer nobody REFERred: `transferee` (one of the call's two legs) is connected to
    `target`, called on a new leg through `hop` (blind), or to the consultation's target leg
    (attended, early). The call's other leg is released on success if it is still up. The caller
    checks first that the call may be transferred now (confirmed, nothing else under way)."""
    transfer = Transfer(call, call.other(transferee), target, hop, consultation=consultation, sink=sink)
    call.transfer = transfer
    transfer.start()
    return transfer


class Transfer:
    def __init__(self, call: Call, transferor: Leg, refer: ReferRequest | TransferTarget, hop: Address | None,
                 expires: int = 60, consultation: Consultation | None = None, *,
                 sink: TransferSink | None = None, park: Any = None) -> None:
        self.call = call
        self.ctx = call.ctx
        self.transferor = transferor
        self.transferee = call.other(transferor)
        self.refer = refer
        self.hop = hop
        self.consultation = consultation
        self.kind = "blind" if consultation is None else ("early" if consultation.early else "attended")
        self.state = TransferState.CALLING
        self.started_at = self.ctx.now()
        if sink is None:
            assert isinstance(refer, ReferRequest), "a transfer without a REFER needs a sink"
            sink = NotifySink(call, transferor, refer.cseq, expires, wanted=refer.subscription_wanted)
        self.sink: TransferSink = sink
        # park(transferor, its media session): keep the transferor aside instead of releasing it (a
        # supervised consultation, consult.py); such a move is not counted as a transfer.
        self.park = park
        if consultation is None:
            assert hop is not None
            self.target = Leg(call, Side.B, self.ctx.new_call_id(), self.ctx.new_tag(), hop)
        else:
            self.target = consultation.target
        # A new relay session; the consultation's own (keyed by its Call-ID) lives until the join.
        self.media = self.ctx.new_media(call, self.target.call_id if consultation is None else self.ctx.new_call_id())
        self.invite: Request | None = None  # the INVITE that calls the target (blind, early)
        self.invite_tx: Any = None
        self.invite_final = False  # that INVITE got its final response
        # The transferor sent BYE after the 202 (or was released: early), or was gone from the start.
        self.transferor_gone = not transferor.confirmed
        self.recall_due = False  # failed after the transferor left: call it back (recall.py)
        self.result: str | None = None  # completed, failed, abandoned, bridge_failed (reported once)
        self._ring_timer: Any = None
        self._rang_out = False  # we cancelled the target's INVITE for want of an answer
        self._glare_retries = 0
        self._target_offer = b""  # the re-INVITE's SDP toward the target, sent again after a 491
        self._target_reinvite: Any = None  # that re-INVITE while it has no final response
        self._transferee_offer = b""  # the re-INVITE's SDP toward the transferee, sent again after a 491

    @property
    def finished(self) -> bool:
        """Nothing of the transfer is outstanding (the call may end)."""
        return (self.state in (TransferState.DONE, TransferState.FAILED)
                and (self.invite_tx is None or self.invite_final) and self._target_reinvite is None)

    @property
    def moving(self) -> bool:
        """The legs are being re-bridged (an offer relayed now would land on the wrong session)."""
        return self.state is TransferState.BRIDGING or (
            self.state is TransferState.CALLING and self.kind != "blind" and self.target.confirmed)

    @property
    def lent_legs(self) -> tuple[Leg, ...]:
        """The consultation call's legs while this transfer holds them (attended)."""
        c = self.consultation
        if c is None or c.early or c.call.lent is not self.call:
            return ()
        return (c.transferor_leg, c.target)

    # -- start -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.sink.start(self)
        self.ctx.log_event(self.call, "transfer_started", kind=self.kind, transferor=self.transferor.label,
                           target=str(self.refer.target), b_call_id=self.target.call_id, **self.sink.fields)
        c = self.consultation
        if c is None:
            self.call.add_leg(self.target)
            self._offer_to_target(self._send_invite)
            self._arm_ring_timer()
        elif c.early:
            self._take_over_ringing_target(c)
        else:
            c.call.lend_legs(self.call)
            self._offer_to_target(self._send_target_reinvite)

    def _offer_to_target(self, then: Any) -> None:
        offer = self._offer_sdp()
        if offer is None:
            self._fail(488, "the transferee's media is unknown")
            return
        self.media.offer(self.transferee.local_tag, self.target.local_tag, offer, then)

    def _offer_sdp(self) -> bytes | None:
        """The transferee's last SDP, every stream made sendrecv (it was probably held for the REFER)."""
        return sendrecv_offer(self.transferee.sdp.remote)

    def _send_invite(self, body: bytes | None, error: str | None) -> None:
        """Blind: call the target on our new leg, as the transferee."""
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
        assert hop is not None
        target = self.refer.target
        assert self.transferee.dialog is not None
        headers: list[tuple[str, str]] = []
        if self.refer.referred_by:
            headers.append(("Referred-By", self.refer.referred_by))  # RFC 3892 §3
        if self.refer.replaces is not None:
            # Not a dialog of ours (policy `any`): the target replaces its dialog with the transferor.
            headers += [("Replaces", str(self.refer.replaces)), ("Require", "replaces")]
        # The target sees the transferee calling (RFC 5589 §6), on a dialog of our own.
        self.invite = outgoing_invite(
            target, hop, from_=f"{self.transferee.dialog.remote_party};tag={self.target.local_tag}",
            to=str(NameAddr(target)), call_id=self.target.call_id, contact=ctx.contact_for(hop), body=body,
            extra=headers)
        self.target.invite_tx = self.invite_tx = ctx.send_request(self.target, self.invite, hop)

    def _take_over_ringing_target(self, c: Consultation) -> None:
        """Early completion: the consultation INVITE becomes ours; the transferor leaves at once."""
        self.invite = c.call.b_invite
        self.invite_tx = c.call.b_invite_tx
        c.call.hand_over_ringing_target(self.call)
        self._arm_ring_timer(already=self.ctx.now() - c.call.started_at)
        # From the transferor's side the replacement took effect: report success and release it.
        self.sink.transferor_released()
        self.transferor_gone = True
        if self.transferor.confirmed:
            self.call.release_leg(self.transferor, "call transferred")

    def _arm_ring_timer(self, already: float = 0.0) -> None:
        delay = max(0.0, self.ctx.no_answer_timeout - already)
        self._ring_timer = self.ctx.call_later(delay, self._rang_too_long)

    def _rang_too_long(self) -> None:
        self._ring_timer = None
        if self.state is TransferState.CALLING and self.invite_tx is not None and not self.invite_final:
            self._rang_out = True
            self.ctx.cancel(self.invite_tx)

    def _cancel_ring_timer(self) -> None:
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None

    # -- the target's answer to our INVITE (blind, early) ------------------------------------------

    def on_invite_response(self, resp: Response) -> None:
        status = resp.status
        if status == 100:
            return
        if status < 200:
            if self.state is TransferState.CALLING:
                self.sink.provisional(status, resp.reason)
            return
        if status >= 300:
            self.invite_final = True
            self._cancel_ring_timer()
            if self.state is TransferState.CALLING:
                if self._rang_out:
                    self._fail(408, "Request Timeout (no answer)")
                else:
                    self._fail(status, resp.reason)
            self.call.transfer_settled(self)
            return
        self._on_target_answered(resp)

    def _on_target_answered(self, resp: Response) -> None:
        assert self.invite is not None
        if self.target.dialog is not None:
            if resp.to_tag == self.target.dialog.remote_tag:
                self.call.resend_ack(self.target, resp)  # a retransmitted 2xx: our ACK was lost
            else:
                self.call.reject_fork(self.target, self.invite, resp)  # a second fork answered too
            return
        self.invite_final = True
        self._cancel_ring_timer()
        tag = resp.to_tag or ""
        dialog = self.target.take_early(tag) or Dialog.from_response(self.invite, resp)
        dialog.confirm(resp)
        self.target.dialog = dialog
        self.call.ack(self.target, self.invite.cseq.seq, b"")  # we made the offer: the ACK is empty
        if self.state is not TransferState.CALLING:
            # The transferee hung up while the target rang: take the answer and end it.
            self.call.release_leg(self.target, "transfer abandoned")
            self.call.transfer_settled(self)
            return
        if self.kind == "early":
            # It answered the consultation's offer: move it onto the transferee's media.
            self.target.sdp.incoming(resp.body)
            self._offer_to_target(self._send_target_reinvite)
            return
        self._target_answered(resp.status, resp.reason, resp.body)

    def on_invite_failed(self, transport_error: bool) -> None:
        """No final response from the target (Timer B) or it could not be reached."""
        self.invite_final = True
        self._cancel_ring_timer()
        if self.state is TransferState.CALLING:
            self._fail(503 if transport_error else 408, None)
        self.call.transfer_settled(self)

    # -- the target's answer to our re-INVITE (attended, early) ------------------------------------

    def _send_target_reinvite(self, body: bytes | None, error: str | None) -> None:
        if self.state is not TransferState.CALLING:
            return  # abandoned while the relay prepared the offer (abandon() deleted the session)
        if body is None:
            self._fail(503, f"media relay: {error}")
            return
        try:
            self._target_offer = self.target.sdp.outgoing(body)
        except SdpError:
            self._fail(503, "media relay returned bad SDP")
            return
        self._reinvite_target()

    def _reinvite_target(self) -> None:
        if self.state is not TransferState.CALLING or not self.target.confirmed:
            self._fail(481, "the target's dialog ended")
            return
        self._target_reinvite = self.call.send_own(self.target, "INVITE", self._target_offer,
                                                   self._target_reinvite_answered,
                                                   [("Content-Type", "application/sdp")])

    def _target_reinvite_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is not None and resp.status < 200:
            return
        self._target_reinvite = None
        if resp is not None and resp.status == 491 and self._glare_retries < REINVITE_GLARE_RETRIES:
            self._glare_retries += 1
            self._target_reinvite = tx  # still outstanding, as far as finishing is concerned
            self.ctx.call_later(REINVITE_GLARE_DELAY_S, self._retry_target_reinvite)
            return
        if self.state is not TransferState.CALLING:
            self._abandoned_target_answered(resp)
            return
        if resp is None:
            self._fail(408, "the target did not answer the re-INVITE")
        elif not resp.is_success:
            self._fail(resp.status, resp.reason)
        else:
            self._target_answered(resp.status, resp.reason, resp.body)

    def _retry_target_reinvite(self) -> None:
        self._target_reinvite = None
        if self.state is TransferState.CALLING:
            self._reinvite_target()
        else:
            self._abandoned_target_answered(None)

    def _abandoned_target_answered(self, resp: Response | None) -> None:
        """The transferee left while the target was being re-INVITEd: give the consultation back.

        If the target took the new media, the consultation call cannot simply resume: end it."""
        moved = resp is not None and resp.is_success
        if self.lent_legs:
            self._return_consultation(hang_up=moved)
        else:
            self._release_unbridged_target()  # early completion: the target is ours alone
        self.call.transfer_settled(self)

    # -- re-bridging -------------------------------------------------------------------------------

    def _target_answered(self, status: int, reason: str | None, body: bytes) -> None:
        self.state = TransferState.BRIDGING
        self.sink.final(status, reason)
        if not body:
            self._bridge_failed("the target answered without SDP")
            return
        self.target.sdp.incoming(body)
        self.media.answer(self.transferee.local_tag, self.target.local_tag, body, self._rebridge)

    def _rebridge(self, body: bytes | None, error: str | None) -> None:
        if self.state is not TransferState.BRIDGING:
            return
        if body is None:
            self._bridge_failed(f"media relay: {error}")
            return
        if not self.target.confirmed:
            self._bridge_failed("the target hung up")
            return
        call = self.call
        c = self.consultation
        if c is not None and not c.early:
            c.call.surrender_legs()
            call.release_leg_if_up(c.transferor_leg, "call transferred")
        old_media = call.swap_leg(self.transferor, self.target, self.media)
        if self.park is not None:
            self.park(self.transferor, old_media)
        else:
            old_media.delete()
            call.release_leg_if_up(self.transferor, "call transferred")
        self.ctx.log_event(call, "transfer_bridged", kind=self.kind, target=str(self.refer.target),
                           **self.sink.fields)
        self._reinvite_transferee(body)

    def _reinvite_transferee(self, body: bytes) -> None:
        try:
            self._transferee_offer = self.transferee.sdp.outgoing(body)
        except SdpError:
            self._bridge_failed("media relay returned bad SDP")
            return
        self._send_reinvite()

    def _send_reinvite(self) -> None:
        if self.state is not TransferState.BRIDGING or not self.transferee.confirmed:
            return
        self.call.send_own(self.transferee, "INVITE", self._transferee_offer, self._transferee_answered,
                           [("Content-Type", "application/sdp")])

    def _transferee_answered(self, tx: Any, resp: Response | None) -> None:
        if self.state is not TransferState.BRIDGING:
            return
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
        self.sink.close()
        if resp.body:
            self.transferee.sdp.incoming(resp.body)
            # The transferee's answer may name a new address: the relay learns it (ports unchanged).
            self.media.offer(self.transferee.local_tag, self.target.local_tag, resp.body, _ignore)
        self.ctx.log_event(self.call, "transfer_completed", kind=self.kind, target=str(self.refer.target),
                           **self.sink.fields)
        self._report("completed")
        self.call.transfer_settled(self)

    def _bridge_failed(self, reason: str) -> None:
        """The target answered but the call cannot be joined to it: end everything, cleanly."""
        self.state = TransferState.FAILED
        self.sink.close()
        self.ctx.log_event(self.call, "transfer_bridge_failed", kind=self.kind, reason=reason, **self.sink.fields)
        self._report("bridge_failed")
        if self.lent_legs:
            self._return_consultation(hang_up=True)
        if self.target.confirmed and self.target not in (self.call.a, self.call.b):
            self.call.release_leg(self.target, reason)
        self.media.delete()
        self.call.transfer_settled(self)
        self.call.hangup(reason=f"transfer failed: {reason}")

    # -- failure and abandon -----------------------------------------------------------------------

    def _fail(self, status: int, reason: str | None) -> None:
        """The target could not be reached: tell the transferor; the call stays as it was."""
        self.state = TransferState.FAILED
        self.sink.close()
        self._cancel_ring_timer()
        self.sink.final(status, reason)
        self.media.delete()
        self.ctx.log_event(self.call, "transfer_failed", kind=self.kind, status=status, reason=reason or "",
                           **self.sink.fields)
        self._report("failed")
        if self.lent_legs:
            self._return_consultation(hang_up=False)
        if self.transferor_gone and self.call.state_is_confirmed():
            # RFC 5589 §6.2 would return the transferee to the transferor, who has gone.
            if self.kind != "recall" and self.ctx.transfers.recall_transferor:
                self.recall_due = True  # Call.transfer_settled calls it back once this one is over
                self.ctx.call_later(0, lambda: self.call.transfer_settled(self))
            else:
                self.call.hangup(reason="transfer failed and the transferor has left")

    def _return_consultation(self, hang_up: bool) -> None:
        c = self.consultation
        if c is not None and self.lent_legs:
            c.call.take_back_legs(hang_up)

    def abandon(self) -> None:
        """The call is ending (the transferee hung up): cancel or end what reaches the target."""
        if self.state in (TransferState.DONE, TransferState.FAILED):
            return
        calling = self.state is TransferState.CALLING
        self.state = TransferState.FAILED
        self.sink.close()
        self._cancel_ring_timer()
        self.sink.abandon()
        self.media.delete()  # whatever the target answers now, it will not be bridged
        self._report("abandoned")
        if calling and self.invite_tx is not None and not self.invite_final:
            self.ctx.cancel(self.invite_tx)
        elif self._target_reinvite is not None:
            pass  # its answer decides (_abandoned_target_answered)
        elif self.lent_legs:
            # Still on the consultation's media (CALLING), or already moved to ours (BRIDGING).
            self._return_consultation(hang_up=not calling)
        else:
            self._release_unbridged_target()

    def _release_unbridged_target(self) -> None:
        if self.target.confirmed and self.target not in (self.call.a, self.call.b):
            self.call.release_leg(self.target, "transfer abandoned")

    def transferor_left(self) -> None:
        """The transferor sent BYE after the 202 (some phones do within 300 ms): go on without it."""
        self.transferor_gone = True
        self.sink.transferor_left()

    def lent_leg_request(self, leg: Leg, tx: Any, req: Request) -> None:
        """A request on a consultation leg this transfer holds: BYE ends it; the rest must wait."""
        if req.method == "BYE":
            self.ctx.respond(tx, build_response(req, 200))
            assert leg.dialog is not None
            leg.dialog.state = DialogState.TERMINATED
            self.ctx.log_event(self.call, "bye_received", side=leg.label, consultation=True)
            return  # the target's BYE fails our re-INVITE with 481; the transferor's changes nothing
        status = 491 if req.method in ("INVITE", "UPDATE") else 500
        self.ctx.respond(tx, build_response(req, status, headers=[("Retry-After", "1")]))

    def _report(self, result: str) -> None:
        if self.result is None:
            self.result = result
            if self.park is None:
                self.ctx.transfer_ended(self.call, self.kind, result, self.ctx.now() - self.started_at)
            self.sink.ended(result)


def sendrecv_offer(remote: bytes | None) -> bytes | None:
    """A party's last SDP with every stream made sendrecv, to offer to a new peer; None when unknown
    or unusable (unreadable, or an RFC 2543 hold whose real address is unknown)."""
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
    if conn is not None and conn.is_null:
        return None
    return sdp.serialize()


def _ignore(*_: Any) -> None:
    pass
