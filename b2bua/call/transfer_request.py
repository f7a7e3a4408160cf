"""May this call be transferred now, and to which consultation: the checks of a transfer nobody REFERred.

How this works: the control API asks before it starts anything, and turns each answer into 409 with
the reason (a string for a person). `transfer_refusal` says why a party of a call cannot be
transferred now: the call is not answered and up, the party is not one of the two bridged legs,
a transfer, an attended transfer lending this call's legs, an INVITE with Replaces, or a re-INVITE
is under way, or the party's media is unknown (a blind transfer offers the transferee's last SDP to
the target). `pick_consultation` turns "the consultation call" of an attended or early transfer into
the `Consultation` a `Transfer` joins (consultation.py has the REFER side of the same idea): its
target leg (by default its callee, party b: the transferor called the target) and the transferor's
leg in it (the other one), refusing a consultation that is this very call, is busy, has not been
answered (attended) or is no longer ringing (early), or was placed without an SDP offer (early: the
target's 200 would carry the offer, which the takeover does not handle, as for a REFER).
"""

from __future__ import annotations

from .call import Call, CallState
from .consultation import Consultation
from .hold import bridged_leg_refusal
from .leg import Leg


def transfer_refusal(call: Call, transferee: Leg) -> str | None:
    """Why `transferee` cannot be transferred away from the call's other party now; None if it can."""
    why = bridged_leg_refusal(call, transferee)
    if why is not None:
        return why
    if transferee.sdp.remote is None:
        return f"party {transferee.label}'s media is not known yet"
    return None


def pick_consultation(call: Call, consult: Call, target_side: str, early: bool) -> Consultation | str:
    """The consultation `consult` offers a transfer in `call`, or why it cannot be used."""
    if consult is call:
        return "the consultation call is the call being transferred"
    if consult.busy():
        return "the consultation call is busy (a transfer, a re-INVITE or a request under way)"
    if early:
        if not consult.ringing():
            return f"the consultation call is {consult.state.value}, not ringing (use an attended transfer)"
        if target_side != "b":
            return "in a ringing consultation call the target is party b, the callee"
        if consult.b_invite is None or not consult.b_invite.body:
            return "the consultation call was placed without an SDP offer (early completion needs one)"
        return Consultation(consult, consult.a, consult.first_b, early=True)
    if consult.state is not CallState.CONFIRMED:
        state = "still ringing (use an early transfer)" if consult.ringing() else f"{consult.state.value}"
        return f"the consultation call is {state}, not answered and up"
    if not (consult.a.confirmed and consult.b.confirmed):
        return "the consultation call is ending"
    target = consult.b if target_side == "b" else consult.a
    return Consultation(consult, consult.other(target), target, early=False)
