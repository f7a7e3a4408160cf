"""One side of a bridged call: our dialog with one peer, and where to send to it.

How this works: a call has an A leg (we are the UAS: the caller's INVITE created it) and a B leg
(we are the UAC toward the next hop). Each leg has its own Call-ID and our own tag, which together
are the key the core indexes legs by; the peer's tag is learnt from the dialog. A B leg may see
several early dialogs when the callee forks (one per To tag); the first 2xx picks the one that
becomes `dialog`. A leg also remembers where its requests go (`destination`): the dialog's next hop,
or for a peer that reached us over TCP with no route set, the connection it came in on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..media.leg_sdp import LegSdp
from ..sip.address import Address
from ..sip.dialog import Dialog, DialogState

if TYPE_CHECKING:
    from .call import Call


class Side(enum.Enum):
    A = "a"  # toward the caller: we are UAS
    B = "b"  # toward the callee: we are UAC


@dataclass(eq=False, slots=True)  # slots: a call keeps two or more legs for its whole life
class Leg:
    call: Call
    side: Side
    call_id: str
    local_tag: str
    peer: Address  # where the first request came from / went to
    dialog: Dialog | None = None
    early: dict[str, Dialog] = field(default_factory=dict)  # B leg forks, by remote tag
    invite_tx: Any = None  # the initial INVITE's server (A) or client (B) transaction
    # A re-INVITE we sent on this leg and have not finished (RFC 3261 §14.1: 491 on glare).
    reinvite_pending: bool = False
    ack: Any = None  # (Request, Address) of the last ACK we sent on this leg, re-sent on 2xx retransmits
    ack_for: tuple[int, str] | None = None  # (CSeq, to-tag) the stored ACK answers
    sdp: LegSdp = field(default_factory=LegSdp)  # our o= line and the last SDP each way
    # A passthrough attended transfer told another peer to replace this leg: (its host, until when).
    replaceable_from: tuple[str, float] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)

    @property
    def confirmed(self) -> bool:
        return self.dialog is not None and self.dialog.state is DialogState.CONFIRMED

    def destination(self) -> Address:
        """Where in-dialog requests to this peer go."""
        if self.dialog is not None:
            if not self.dialog.route_set and self.peer.reliable:
                return self.peer  # reuse the peer's connection (RFC 3261 §18: connection reuse)
            hop = self.dialog.next_hop()
            if hop is not None:
                return hop
        return self.peer

    @property
    def label(self) -> str:
        return self.side.value
