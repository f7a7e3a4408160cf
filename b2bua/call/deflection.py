"""Call deflection: the ringing callee sends REFER in its early dialog (`transfers.reject_early_dialog_refer = false`).

How this works: a phone that rings may pass the call on before answering (a "deflect" or "forward"
key) by sending REFER in the early dialog of the INVITE that makes it ring. The caller has no
answer yet, so nothing has to be re-bridged: the B2BUA answers 202 in that early dialog, sends
NOTIFY 100 Trying, and calls the Refer-To target itself (the same target policy and routing as a
blind transfer) with the caller's offer anchored on a new relay session, while the deflecting phone
goes on ringing and the caller goes on hearing it.
- The target answers: it is ACKed, the deflecting phone gets NOTIFY 200 (terminated) and then a
  CANCEL, the target's leg takes its place in the call and the caller is answered 200 with the
  relay's SDP facing it on the new session (the same ending as a call pickup, `Call.picked_up`).
  Early media the caller heard from the deflecting phone came through the old session's ports.
- The target refuses, does not answer or cannot be reached: NOTIFY carries its status and the
  deflecting phone simply rings on (it is still the callee).
- The deflecting phone gives up meanwhile (a final failure, typically 486/603 right after its REFER):
  that failure is held back from the caller while the target is called; if the target fails too,
  the caller gets the target's status.
- The deflecting phone answers after all: it keeps the call and the target's INVITE is cancelled.
- The caller gives up (CANCEL, the call's no-answer timeout, shutdown): the target's INVITE is
  cancelled; a 200 that crosses the CANCEL is ACKed and ended.
Only a blind target can be deflected to (a Replaces names a dialog the caller has nothing to do
with: 403), and only a call whose INVITE carried an offer (501 otherwise: we would have no offer
for the target). A REFER from the caller before the answer is refused (it has nobody to hand over).
Each deflection is counted once as `b2bua_transfers_total{kind="deflection"}`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..media.leg_sdp import SdpError
from ..sip.address import Address
from ..sip.dialog import Dialog
from ..sip.headers import NameAddr
from ..sip.message import Request, Response
from .leg import Leg, Side
from .outgoing_invite import outgoing_invite
from .refer import ReferNotify, ReferRequest, ReferSubscription

if TYPE_CHECKING:
    from .call import Call


class Deflection:
    kind = "deflection"

    def __init__(self, call: Call, callee: Leg, early: Dialog, refer: ReferRequest, hop: Address,
                 expires: int) -> None:
        self.call = call
        self.ctx = call.ctx
        self.callee = callee  # the ringing phone's leg (the call's first B leg)
        self.early = early  # its early dialog the REFER came in: our NOTIFYs go there
        self.refer = refer
        self.hop = hop
        self.started_at = self.ctx.now()
        self.sub = ReferSubscription(refer.cseq, self.ctx.now(), expires, wanted=refer.subscription_wanted)
        self.target = Leg(call, Side.B, self.ctx.new_call_id(), self.ctx.new_tag(), hop)
        self.media = self.ctx.new_media(call, self.target.call_id)
        self.invite: Request | None = None
        self.invite_tx: Any = None
        self.invite_final = False  # the target's INVITE has its final response (or was never sent)
        self.active = True  # the target may still take the call
        self.callee_failure: tuple[int, str | None] | None = None  # the phone gave up meanwhile
        self.result: str | None = None

    @property
    def finished(self) -> bool:
        """Nothing of the deflection is outstanding (the call may end)."""
        return not self.active and (self.invite_tx is None or self.invite_final)

    def start(self) -> None:
        self._notify(self.sub.progress(100, self.ctx.now()))
        self.ctx.log_event(self.call, "deflection_started", target=str(self.refer.target),
                           b_call_id=self.target.call_id)
        self.call.add_leg(self.target)
        a = self.call.a
        self.media.offer(a.local_tag, self.target.local_tag, self.call.a_invite.body, self._send_invite)

    def _send_invite(self, body: bytes | None, error: str | None) -> None:
        if not self.active:
            self.media.delete()
            return
        if body is None:
            self._fail(503, f"Service Unavailable (media relay: {error})")
            return
        try:
            body = self.target.sdp.outgoing(body)
        except SdpError:
            self._fail(503, "Service Unavailable (media relay returned bad SDP)")
            return
        a_invite = self.call.a_invite
        target = self.refer.target
        a_from = a_invite.from_
        mf = a_invite.max_forwards
        extra = self.ctx.policy.request_headers(a_invite)  # with the caller's Content-Type
        if self.refer.referred_by:
            extra.append(("Referred-By", self.refer.referred_by))  # RFC 3892 §3
        # The target sees the caller calling, on a dialog of our own.
        self.invite = outgoing_invite(
            target, self.hop, from_=str(NameAddr(a_from.uri, a_from.display, (("tag", self.target.local_tag),))),
            to=str(NameAddr(target)), call_id=self.target.call_id, contact=self.ctx.contact_for(self.hop),
            body=body, content_type=None, max_forwards=(mf if mf is not None else 70) - 1, extra=extra)
        self.target.invite_tx = self.invite_tx = self.ctx.send_request(self.target, self.invite, self.hop)

    # -- the target's answer -----------------------------------------------------------------------

    def on_invite_response(self, resp: Response) -> None:
        status = resp.status
        if status == 100:
            return
        if status < 200:
            if self.active:
                self._notify(self.sub.progress(status, self.ctx.now(), resp.reason))
            return
        if status >= 300:
            self.invite_final = True
            if self.active:
                self._fail(status, resp.reason)
            self.call.deflection_settled(self)
            return
        self._on_answered(resp)

    def on_invite_failed(self, transport_error: bool) -> None:
        self.invite_final = True
        if self.active:
            self._fail(503 if transport_error else 408, None)
        self.call.deflection_settled(self)

    def _on_answered(self, resp: Response) -> None:
        assert self.invite is not None
        if self.target.dialog is not None:
            if resp.to_tag == self.target.dialog.remote_tag:
                self.call.resend_ack(self.target, resp)  # a retransmitted 2xx: our ACK was lost
            else:
                self.call.reject_fork(self.target, self.invite, resp)
            return
        self.invite_final = True
        dialog = self.target.take_early(resp.to_tag or "") or Dialog.from_response(self.invite, resp)
        dialog.confirm(resp)
        self.target.dialog = dialog
        self.call.ack(self.target, self.invite.cseq.seq, b"")  # we made the offer: the ACK is empty
        if not self.active:
            # The caller gave up, or the deflecting phone answered, while the target rang.
            self.call.release_leg(self.target, "call completed elsewhere")
            self.call.deflection_settled(self)
            return
        try:
            self.target.sdp.incoming(resp.body)
        except SdpError:
            self.call.release_leg(self.target, "bad SDP")
            self._fail(488, "Not Acceptable Here (the target's SDP is unreadable)")
            self.call.deflection_settled(self)
            return
        a = self.call.a
        self.media.answer(a.local_tag, self.target.local_tag, resp.body, self._caller_answer)

    def _caller_answer(self, body: bytes | None, error: str | None) -> None:
        if not self.active or body is None or not self.call.ringing_for_deflection():
            if self.target.confirmed:
                self.call.release_leg(self.target, "call completed elsewhere")
            if self.active:
                self._fail(503, f"Service Unavailable (media relay: {error})")
            self.call.deflection_settled(self)
            return
        self.active = False
        # The phone hears how it ended before its INVITE is cancelled (the dialog ends with it).
        self._notify(self.sub.final(200, "OK"))
        old_media = self.call.swap_leg(self.callee, self.target, self.media)
        old_media.delete()
        self.call.picked_up(body, how="deflection")
        self._report("completed")
        self.call.deflection_settled(self)

    # -- failures ----------------------------------------------------------------------------------

    def _fail(self, status: int, reason: str | None) -> None:
        """The target will not take the call: say so; the call rings on at the phone (if it still does)."""
        self.active = False
        self.media.delete()
        self._notify(self.sub.final(status, reason))
        self.ctx.log_event(self.call, "deflection_failed", status=status, reason=reason)
        self._report("failed")
        if self.callee_failure is not None:
            self.call.deflection_failed_after_callee(status, reason)

    def abandon(self, why: str) -> None:
        """The caller gave up, or the phone answered itself: stop calling the target."""
        if not self.active:
            return
        self.active = False
        self.media.delete()
        self._notify(self.sub.final(487, "Request Terminated"))
        self.ctx.log_event(self.call, "deflection_abandoned", why=why)
        self._report("abandoned")
        if self.invite_tx is not None and not self.invite_final:
            self.ctx.cancel(self.invite_tx)

    def callee_gave_up(self, status: int, reason: str | None) -> None:
        """The deflecting phone's INVITE ended while the target is called: hold its status back."""
        self.callee_failure = (status, reason)

    def _report(self, result: str) -> None:
        if self.result is None:
            self.result = result
            self.ctx.transfer_ended(self.call, self.kind, result, self.ctx.now() - self.started_at)

    def _notify(self, notify: ReferNotify | None) -> None:
        if notify is None or self.callee_failure is not None:
            return  # the phone's early dialog is over: nobody to tell
        headers = [*notify.headers, ("Contact", self.ctx.contact_for(self.callee.peer))]
        request = self.early.create_request("NOTIFY", headers, notify.body)
        dest = self.early.next_hop() or self.callee.peer
        self.call.send_own_request(self.callee, request, dest, _ignore)


def _ignore(*_: Any) -> None:
    pass
