"""Which dialog a Replaces names, and whether the requester may replace it (RFC 3891, RFC 5589 §7).

How this works: an attended transfer's REFER carries `Refer-To: <target?Replaces=call-id;to-tag;
from-tag>`, naming the consultation dialog the transferor has with the target. When that dialog
went through this B2BUA, the transferor's side of it is one of our legs: its Call-ID is the leg's,
its to-tag our own tag (RFC 3891 §3 names the dialog as its recipient knows it, and for the
transferor's leg the recipient is us), its from-tag the transferor's. `find_consultation` looks the
leg up and returns a `Consultation`: the consultation call, the transferor's leg in it, and the
leg toward the target, which the transfer joins to the transferee directly instead of calling the
target again. It refuses (status, reason) what must not be replaced:
- a dialog of another peer: Replaces is honoured only for dialogs the requester is a party to. At a
  B2BUA's level a party is a signalling peer (a phone, or the PBX that fronts many), so the named
  leg must face the host the REFER came from; the 48 random bits of our tag already make the
  identifiers unguessable, this stops one peer from using identifiers it learnt from another;
- the dialog the REFER itself arrived on; a call busy with a transfer, a replacement, a re-INVITE or
  any request still waiting for its answer across the legs (491: lending the legs would strand it);
- `early-only` naming a confirmed dialog (486, as RFC 3891 §3 has for INVITE);
- an early dialog the transferor did not place (it rings at the transferor: 501, not supported).
A Replaces that names no dialog of ours returns None: the caller decides (policy `any` sends the
Replaces on to the target; `own_dialogs` refuses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sip.address import Address
from ..sip.dialog import DialogState
from ..sip.headers import Replaces
from .leg import Leg

if TYPE_CHECKING:
    from .call import Call

Lookup = Callable[[str, str], "Leg | None"]  # (Call-ID, our tag) -> the leg (the core's index)


@dataclass(frozen=True, slots=True)
class Consultation:
    call: Call  # the consultation call (through this B2BUA)
    transferor_leg: Leg  # the transferor's leg in it: released when the transfer completes
    target: Leg  # the leg toward the target: joined to the transferee
    early: bool  # the target still rings (early completion, RFC 5589 §7.4)


def find_leg(lookup: Lookup, call_id: str, local_tag: str, remote_tag: str) -> Leg | None:
    """The leg whose dialog is (call_id, our tag, the peer's tag), early or confirmed; else None."""
    leg = lookup(call_id, local_tag)
    if leg is None:
        return None
    dialog = leg.dialog
    if dialog is not None and dialog.remote_tag == remote_tag and dialog.state is not DialogState.TERMINATED:
        return leg
    if remote_tag in leg.early:
        return leg
    return None


def same_peer_address(leg: Leg, source: Address) -> bool:
    """A request from `source` comes from the signalling peer `leg` faces (see same_peer)."""
    return source.host in _peer_hosts(leg)


def same_peer(a: Leg, b: Leg) -> bool:
    """Both legs face the same signalling peer: the host of the transport peer or of the Contact."""
    return bool(_peer_hosts(a) & _peer_hosts(b))


def _peer_hosts(leg: Leg) -> set[str]:
    hosts = {leg.peer.host}
    target = leg.dialog.remote_target if leg.dialog is not None else None
    host = getattr(target, "host_bare", None)
    if host:
        hosts.add(host)
    return hosts


def find_consultation(lookup: Lookup, requester: Leg, replaces: Replaces) -> Consultation | tuple[int, str] | None:
    """The consultation a REFER's Replaces names (see the module docstring), a refusal, or None."""
    named = find_leg(lookup, replaces.call_id, replaces.to_tag, replaces.from_tag)
    if named is None:
        return None
    call = named.call
    if named is requester or call is requester.call:
        return (403, "Forbidden (Replaces names the dialog of the call being transferred)")
    if not same_peer(named, requester):
        return (403, "Forbidden (Replaces names a dialog of another party)")
    if call.busy():
        return (491, "Request Pending (the consultation call is busy: a transfer or a re-INVITE)")
    if call.state_is_confirmed():
        if replaces.early_only:
            return (486, "Busy Here (early-only names a confirmed dialog)")
        if not (call.a.confirmed and call.b.confirmed):
            return (481, "Call/Transaction Does Not Exist (the consultation call is ending)")
        return Consultation(call, named, call.other(named), early=False)
    if call.ringing() and named is call.a:
        if call.b_invite is None or not call.b_invite.body:
            # The target's 200 would carry the offer and our ACK the answer: not done (yet).
            return (501, "Not Implemented (early completion of a call placed without an SDP offer)")
        return Consultation(call, named, call.first_b, early=True)
    if call.ringing():
        return (501, "Not Implemented (Replaces names a call that rings at the transferor)")
    return (481, "Call/Transaction Does Not Exist (the consultation call is ending)")
