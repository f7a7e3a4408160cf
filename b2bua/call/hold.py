"""Hold and resume that the B2BUA starts itself (the control API): a re-INVITE of one party.

How this works: to hold a party, the B2BUA re-INVITEs it with the SDP it last sent on that party's
leg, every active stream redirected (RFC 3264 §8.4: sendrecv becomes sendonly, recvonly becomes
inactive; resume does the reverse), under the leg's own o= line with the version bumped
(`LegSdp.redirected`). The party answers recvonly (or inactive) and stops sending. The media relay
is not told: its ports stay as they are, and what the other party sends still reaches the held one
(there is no music on hold yet). The answer is recorded as the party's last SDP.

`refusal` says why a party cannot be re-INVITEd now (the call is not up, a re-INVITE or a transfer
is under way, it is already on hold); the API turns that into 409. A `HoldReinvite` is one such
operation: it sends the re-INVITE through `Call.send_own` and reports one `HoldOutcome` to its
`done` callback. A 491 (glare, RFC 3261 §14.1) is retried once after 2.1 s, as the transfer does,
after checking again that nothing else started meanwhile; any refused offer puts the leg's SDP
bookkeeping back as it was (a rejected offer changes nothing, RFC 3264 §8). A 481 or 408, or no
answer at all, means the party's dialog is gone (RFC 3261 §12.2.1.2): the call is hung up, as it is
when a relayed in-dialog request meets the same fate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..media.leg_sdp import SdpError, SdpSnapshot, is_sdp
from ..sip.message import Response
from .call import Call, CallState
from .leg import Leg

GLARE_RETRIES = 1
GLARE_RETRY_DELAY_S = 2.1  # RFC 3261 §14.1; the low end of the Call-ID owner's range, as transfer.py


class HoldResult(enum.Enum):
    DONE = "done"  # the party accepted (2xx)
    CONFLICT = "conflict"  # the call's state forbids it now, or glare persisted (491 twice)
    REFUSED = "refused"  # the party answered with another final status
    NO_ANSWER = "no_answer"  # no final response (Timer B) or the party could not be reached


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    result: HoldResult
    reason: str
    status: int | None = None  # the party's final SIP status, when there was one

    @property
    def ok(self) -> bool:
        return self.result is HoldResult.DONE


def transfer_under_way(call: Call) -> bool:
    """A transfer of this call, a consultation call lent to one, or an INVITE with Replaces taking a leg."""
    return call.transfer is not None or call.lent is not None or call.replacement is not None


def bridged_leg_refusal(call: Call, leg: Leg) -> str | None:
    """Why nothing can be done to `leg` now (the call is not up, the leg has left or is not
    confirmed, a transfer or re-INVITE is under way); None if something can."""
    party = f"party {leg.label}"
    if call.state is not CallState.CONFIRMED:
        return f"the call is {call.state.value}, not answered and up"
    if leg is not call.a and leg is not call.b:
        return f"{party} is no longer in the call"
    if not leg.confirmed:
        return f"{party}'s dialog is not confirmed"
    if transfer_under_way(call):
        return "a transfer is in progress"
    if call.a.reinvite_pending or call.b.reinvite_pending:
        return "a re-INVITE is pending on this call"
    return None


def refusal(call: Call, leg: Leg, hold: bool) -> str | None:
    """Why `leg` (one of the call's two bridged legs) cannot be held (or resumed) now; None if it can."""
    why = bridged_leg_refusal(call, leg)
    if why is not None:
        return why
    party = f"party {leg.label}"
    if leg.sdp.local is None:
        return f"no SDP has been sent to {party} yet"
    if hold and leg.sdp.local_held:
        return f"{party} is already on hold"
    if not hold and not leg.sdp.local_held:
        return f"{party} is not on hold"
    return None


class HoldReinvite:
    """One hold (or resume) of one party; `done(outcome)` is called exactly once."""

    def __init__(self, call: Call, leg: Leg, hold: bool, done: Callable[[HoldOutcome], None],
                 retry_delay: float = GLARE_RETRY_DELAY_S) -> None:
        self.call = call
        self.leg = leg
        self.hold = hold
        self._done = done
        self._retry_delay = retry_delay
        self._retries = 0
        self._offer: bytes | None = None
        self._before: SdpSnapshot | None = None
        self._finished = False

    @property
    def action(self) -> str:
        return "hold" if self.hold else "resume"

    def start(self) -> None:
        self._send()

    def _send(self) -> None:
        if self._finished:
            return
        why = refusal(self.call, self.leg, self.hold)  # after a 491, the call may have moved on
        if why is not None:
            self._finish(HoldOutcome(HoldResult.CONFLICT, why))
            return
        sdp = self.leg.sdp
        self._before = sdp.snapshot()
        try:
            self._offer = sdp.redirected(self.hold)
        except SdpError as exc:
            self._finish(HoldOutcome(HoldResult.CONFLICT, f"the SDP last sent to party {self.leg.label} "
                                                          f"cannot be re-offered: {exc}"))
            return
        self.call.send_own(self.leg, "INVITE", self._offer, self._answered, [("Content-Type", "application/sdp")])

    def _answered(self, tx: Any, resp: Response | None) -> None:
        if self._finished or (resp is not None and resp.status < 200):
            return
        party = f"party {self.leg.label}"
        if resp is None:
            self._undo()
            self._finish(HoldOutcome(HoldResult.NO_ANSWER, f"{party} did not answer the re-INVITE"))
            self._dialog_gone("no answer to a hold re-INVITE")
            return
        if resp.is_success:
            if resp.body and is_sdp(resp.headers.get("Content-Type")):
                self.leg.sdp.incoming(resp.body)
            self.call.ctx.log_event(self.call, "party_held" if self.hold else "party_resumed", side=self.leg.label)
            self._finish(HoldOutcome(HoldResult.DONE, "ok", resp.status))
            return
        self._undo()
        if resp.status == 491 and self._retries < GLARE_RETRIES:
            self._retries += 1
            self.call.ctx.call_later(self._retry_delay, self._send)  # glare: the same change, later
            return
        status_text = f"{resp.status} {resp.reason}".strip()
        result = HoldResult.CONFLICT if resp.status == 491 else HoldResult.REFUSED
        self._finish(HoldOutcome(result, f"{party} answered the re-INVITE {status_text}", resp.status))
        if resp.status in (408, 481):
            self._dialog_gone(f"{resp.status} to a hold re-INVITE")

    def _undo(self) -> None:
        """The offer was refused: the leg's session is what it was (unless another SDP went out since)."""
        if self._offer is not None and self._before is not None and self.leg.sdp.local is self._offer:
            self.leg.sdp.restore(self._before)
        self._offer = None

    def _dialog_gone(self, reason: str) -> None:
        if self.call.state is CallState.CONFIRMED:
            self.call.hangup(reason=reason)

    def _finish(self, outcome: HoldOutcome) -> None:
        if self._finished:
            return
        self._finished = True
        if not outcome.ok and self.call.state is not CallState.ENDED:
            self.call.ctx.log_event(self.call, f"{self.action}_failed", side=self.leg.label,
                                    status=outcome.status, reason=outcome.reason)
        self._done(outcome)
