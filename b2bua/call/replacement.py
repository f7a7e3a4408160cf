"""An INVITE with Replaces that names one of our legs: the new caller takes that leg's place (RFC 3891).

How this works: a party that knows the identifiers of one of our confirmed dialogs (usually the PBX
completing an attended transfer on its side, or a phone it told) sends a new INVITE carrying
`Replaces: call-id;to-tag=<our tag>;from-tag=<the peer's tag>`. The core finds the leg (`find_leg`)
and, when policy allows, hands the INVITE to that leg's call, which starts a `Replacement`:
1. the new caller gets a leg of its own (we are its UAS) and a new relay session;
2. the party that stays (the other leg of the call) is re-INVITEd with the new caller's offer,
   rewritten by the relay, so its answer is an answer to that offer;
3. that answer, rewritten by the relay, answers the new caller's INVITE with 200;
4. the new leg takes the replaced leg's place in the call, the old session is deleted, and the
   replaced leg is released with BYE (Reason: replaced).
If the staying party refuses the re-INVITE, the new caller gets that status and nothing changes. If
the new caller cancels, or the call ends, before step 3, the INVITE is answered 487 / 480; if the
staying party had already moved to the new session, the call cannot go back and is ended.

An INVITE without an offer is refused 488 (we would have to send an offer of our own in the 200 and
wait for the ACK's answer before re-INVITEing the staying party; phones that send Replaces offer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtp_relay.sdp import SdpError

from ..sip.address import Address
from ..sip.dialog import Dialog, DialogState
from ..sip.message import Request, Response, build_response
from .capabilities import ALLOW
from .leg import Leg, Side

if TYPE_CHECKING:
    from .call import Call

GLARE_RETRIES = 3
GLARE_DELAY_S = 2.1  # RFC 3261 §14.1, as for transfers


class ReplacingInvite:
    """What an INVITE that takes a leg's place (Replacement, Pickup) needs: the new caller's own leg
    (we are its UAS), a new relay session, and one final answer to its INVITE, however it ends."""

    kind = "replace"  # names its log events: replace_refused, pickup_refused

    def __init__(self, call: Call, invite: Request, tx: Any, source: Address, side: Side) -> None:
        self.call = call
        self.ctx = call.ctx
        self.invite = invite
        self.tx = tx
        self.leg = Leg(call, side, invite.call_id, self.ctx.new_tag(), source)
        self.leg.invite_tx = tx
        self.leg.dialog = Dialog.from_request(invite, self.leg.local_tag)
        self.media = self.ctx.new_media(call, self.ctx.new_call_id())
        self.done = False  # the new caller's INVITE has its final response

    @property
    def finished(self) -> bool:
        return self.done

    def _answer(self, body: bytes) -> None:
        """200 to the new caller with `body` (relay SDP) under its leg's own o= line."""
        self.done = True
        assert self.leg.dialog is not None
        self.leg.dialog.state = DialogState.CONFIRMED
        headers = [("Contact", self.ctx.contact_for(self.leg.peer)), ("Allow", ALLOW),
                   ("Content-Type", "application/sdp")]
        self.ctx.respond(self.tx, build_response(self.invite, 200, to_tag=self.leg.local_tag, headers=headers,
                                                 body=self.leg.sdp.outgoing(body)))

    def _relay_reply(self, body: bytes | None) -> bytes | None:
        """The relay's SDP, or None when this reply ends the attempt: the INVITE was answered
        meanwhile, or the relay failed (answered 503 here)."""
        if self.done:
            return None
        if body is None:
            self._refuse(503, "Service Unavailable (media relay failed)")
        return body

    def cancelled(self) -> None:
        """CANCEL matched the new caller's INVITE (the core answered the CANCEL)."""
        self._refuse(487, None)

    def abandon(self) -> None:
        """The call is ending (or its caller gave up): nobody is left to join."""
        self._refuse(480, "Temporarily Unavailable (the call ended)")

    def _refuse(self, status: int, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.media.delete()
        assert self.leg.dialog is not None
        self.leg.dialog.state = DialogState.TERMINATED
        self.ctx.respond(self.tx, build_response(self.invite, status, reason, to_tag=self.leg.local_tag))
        self.ctx.log_event(self.call, f"{self.kind}_refused", status=status, reason=reason or "")
        self.call.replacement_settled(self)


class Replacement(ReplacingInvite):
    def __init__(self, call: Call, replaced: Leg, invite: Request, tx: Any, source: Address) -> None:
        super().__init__(call, invite, tx, source, Side.A)
        self.replaced = replaced
        self.staying = call.other(replaced)
        self._offer = b""
        self._pending: Any = None  # our re-INVITE to the staying party, until its final response
        self._retries = 0

    @property
    def finished(self) -> bool:
        return self.done and self._pending is None

    def start(self) -> None:
        self.call.add_leg(self.leg)
        self.ctx.log_event(self.call, "replace_started", replaced=self.replaced.label, new_call_id=self.invite.call_id)
        if not self.invite.body:
            self._refuse(488, "Not Acceptable Here (INVITE with Replaces needs an SDP offer)")
            return
        self.leg.sdp.incoming(self.invite.body)
        self.media.offer(self.leg.local_tag, self.staying.local_tag, self.invite.body, self._offer_ready)

    def _offer_ready(self, body: bytes | None, error: str | None) -> None:
        body = self._relay_reply(body)
        if body is None:
            return
        try:
            self._offer = self.staying.sdp.outgoing(body)
        except SdpError:
            self._refuse(503, "Service Unavailable (media relay returned bad SDP)")
            return
        self._reinvite()

    def _reinvite(self) -> None:
        if self.done or not self.staying.confirmed:
            self._refuse(480, "Temporarily Unavailable (the other party has left)")
            return
        self._pending = self.call.send_own(self.staying, "INVITE", self._offer, self._staying_answered,
                                           [("Content-Type", "application/sdp")])

    def _staying_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is not None and resp.status < 200:
            return
        self._pending = None
        if resp is not None and resp.status == 491 and self._retries < GLARE_RETRIES and not self.done:
            self._retries += 1
            self._pending = tx
            self.ctx.call_later(GLARE_DELAY_S, self._retry)
            return
        if resp is None or not resp.is_success:
            status = resp.status if resp is not None else 408
            self._refuse(status if status != 491 else 486, resp.reason if resp is not None else None)
            return
        if resp.body:
            self.staying.sdp.incoming(resp.body)
        if self.done:  # cancelled meanwhile: the staying party now points at a session nobody uses
            self.call.replacement_settled(self)
            self.call.hangup(reason="replacement cancelled")
            return
        self.media.answer(self.leg.local_tag, self.staying.local_tag, resp.body, self._answer_ready)

    def _retry(self) -> None:
        self._pending = None
        if self.done:
            self.call.replacement_settled(self)
        else:
            self._reinvite()

    def _answer_ready(self, body: bytes | None, error: str | None) -> None:
        if self.done:
            self.call.replacement_settled(self)
            return
        if body is None:
            self._refuse(503, "Service Unavailable (media relay failed)")
            self.call.hangup(reason=f"media relay failed: {error}")
            return
        self._answer(body)
        old_media = self.call.swap_leg(self.replaced, self.leg, self.media)
        old_media.delete()
        self.call.release_leg_if_up(self.replaced, "replaced")
        self.ctx.log_event(self.call, "replace_completed", new_call_id=self.invite.call_id)
        self.call.replacement_settled(self)
