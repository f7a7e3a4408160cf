"""Call pickup: an INVITE with Replaces naming the early dialog of a call that still rings (RFC 3891).

How this works: a phone picking up a call that rings elsewhere sends INVITE with `Replaces:
call-id;to-tag=<our tag>;from-tag=<the ringing phone's tag>` naming our leg toward the ringing
phone. Neither the caller nor the picker can be asked for anything yet: both have made an offer
and are waiting for an answer. So the B2BUA answers each offer itself from the other's SDP:
1. a new relay session learns both parties: the caller's offer (`offer`), then the picker's SDP as
   the other side (`answer`), which gives relay-port SDP for each side;
2. each party gets an answer made from the relay SDP facing it, cut down to the formats its offer
   allows (`answer_with`: common codecs in the offer's payload numbers, rejected streams port 0);
3. the caller's INVITE and the picker's INVITE are answered 200, the picker's leg takes the
   ringing leg's place, and the ringing phone's INVITE is cancelled (a 200 that crosses the CANCEL
   is ACKed and ended, as for any call the caller has stopped waiting for).
If the caller gives up first, the picker gets 487 (480 if the call ended otherwise). Limitation: the
relay forwards payload type numbers as they come, so a dynamic payload type (e.g. telephone-event)
numbered differently by the two parties reaches the other side under the sender's number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..media.answer import SdpError, answer_with
from ..sip.address import Address
from ..sip.message import Request
from .leg import Leg, Side
from .replacement import ReplacingInvite

if TYPE_CHECKING:
    from .call import Call


class Pickup(ReplacingInvite):
    kind = "pickup"

    def __init__(self, call: Call, ringing: Leg, invite: Request, tx: Any, source: Address) -> None:
        super().__init__(call, invite, tx, source, Side.B)
        self.ringing = ringing
        self._toward_picker = b""  # the relay's SDP facing the picker (the caller's media)

    def start(self) -> None:
        self.call.add_leg(self.leg)
        self.ctx.log_event(self.call, "pickup_started", new_call_id=self.invite.call_id)
        caller_offer = self.call.a_invite.body
        if not self.invite.body or not caller_offer:
            self._refuse(488, "Not Acceptable Here (pickup needs an SDP offer from both parties)")
            return
        self.leg.sdp.incoming(self.invite.body)
        self.media.offer(self.call.a.local_tag, self.leg.local_tag, caller_offer, self._caller_offered)

    def _caller_offered(self, body: bytes | None, error: str | None) -> None:
        body = self._relay_reply(body)
        if body is None:
            return
        self._toward_picker = body
        self.media.answer(self.call.a.local_tag, self.leg.local_tag, self.invite.body, self._picker_learnt)

    def _picker_learnt(self, body: bytes | None, error: str | None) -> None:
        body = self._relay_reply(body)
        if body is None:
            return
        try:
            to_picker = answer_with(self.invite.body, self._toward_picker)
            to_caller = answer_with(self.call.a_invite.body, body)
        except SdpError:
            self._refuse(488, "Not Acceptable Here (unreadable SDP)")
            return
        if not self.call.ringing():
            self._refuse(480, "Temporarily Unavailable (the call is no longer ringing)")
            return
        self._answer(to_picker)
        old_media = self.call.swap_leg(self.ringing, self.leg, self.media)
        old_media.delete()
        self.call.picked_up(to_caller)
        self.ctx.log_event(self.call, "pickup_completed", new_call_id=self.invite.call_id)
        self.call.replacement_settled(self)
