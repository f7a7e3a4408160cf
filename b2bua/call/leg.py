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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..media.leg_sdp import LegSdp
from ..sip.address import Address
from ..sip.dialog import Dialog, DialogState
from .small_tables import EMPTY, with_entry

if TYPE_CHECKING:
    from .call import Call


class _Ended:
    """Stands for an INVITE transaction that has ended and that the call has let go of (`ENDED`).

    Not None, so "was this INVITE ever sent" still reads yes; the same as no live transaction, so
    identity checks against a live one fail; answering through it does nothing, as answering
    through a terminated transaction does."""

    __slots__ = ()

    def respond(self, response: object) -> None:
        pass

    def __repr__(self) -> str:
        return "<ended transaction>"


ENDED = _Ended()


class Side(enum.Enum):
    A = "a"  # toward the caller: we are UAS
    B = "b"  # toward the callee: we are UAC


class Leg:
    """One leg. Its `call` is a strong reference, and a call and its legs make a reference cycle
    while the call is up. The call breaks it one turn after it ends (`Call.let_go_of_legs`, which
    calls `let_go` on each), so an ended call is freed by reference counting the moment its last
    transaction lets go of it, not by the cycle collector (which the daemon runs only every ten
    minutes: collector.py). A weak reference would need no such step, but a compiled class
    (native.py) cannot be weakly referenced. After the break `call` raises LookupError: code that
    may meet a leg of an ended call (the core's bookkeeping of transactions) reads `owner`."""

    __slots__ = ("_call", "side", "call_id", "local_tag", "peer", "dialog", "early", "invite_tx",
                 "reinvite_pending", "ack", "ack_for", "sdp", "replaceable_from")

    def __init__(self, call: Call, side: Side, call_id: str, local_tag: str, peer: Address) -> None:
        self._call: Call | None = call
        self.side = side
        self.call_id = call_id
        self.local_tag = local_tag
        self.peer = peer  # where the first request came from / went to
        self.dialog: Dialog | None = None
        self.early: Mapping[str, Dialog] = EMPTY  # B leg forks, by remote tag (add_early; small_tables.py)
        self.invite_tx: Any = None  # the initial INVITE's server (A) or client (B) transaction; ENDED once over
        # A re-INVITE we sent on this leg and have not finished (RFC 3261 §14.1: 491 on glare).
        self.reinvite_pending = False
        # The last ACK we sent on this leg (its bytes, where they went): sent again, as it is, when
        # the 2xx it answered comes again. Bytes, not a Request: a call keeps it for its whole life.
        self.ack: tuple[bytes, Address] | None = None
        self.ack_for: tuple[int, str] | None = None  # (CSeq, to-tag) the stored ACK answers
        self.sdp = LegSdp()  # our o= line and the last SDP each way
        # A passthrough attended transfer told another peer to replace this leg: (its host, until when).
        self.replaceable_from: tuple[str, float] | None = None

    @property
    def call(self) -> Call:
        """The call this leg belongs to now (an attended transfer may move it to another)."""
        call = self._call
        if call is None:
            raise LookupError(f"leg {self.call_id};tag={self.local_tag}: its call has ended")
        return call

    @call.setter
    def call(self, call: Call) -> None:
        self._call = call

    @property
    def owner(self) -> Call | None:
        """The call this leg belongs to now, or None once that call has ended and let go of it."""
        return self._call

    def let_go(self, call: Call) -> None:
        """`call` has ended: drop the reference to it, unless the leg has moved to another call."""
        if self._call is call:
            self._call = None

    def add_early(self, remote_tag: str, dialog: Dialog) -> None:
        self.early = with_entry(self.early, remote_tag, dialog)

    def take_early(self, remote_tag: str) -> Dialog | None:
        """The early dialog `remote_tag` names, if one was seen; the others are forgotten (a 2xx
        has picked the dialog the leg goes on with)."""
        dialog = self.early.get(remote_tag)
        self.early = EMPTY
        return dialog

    def __repr__(self) -> str:
        return f"Leg({self.side.value}, {self.call_id!r}, tag={self.local_tag!r})"

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
