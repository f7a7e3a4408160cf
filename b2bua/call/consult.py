"""A supervised transfer carried out inside the B2BUA: one party parked on hold while the other consults.

How this works: in a call between a held-to-be party H (say a customer) and the middle party M (the
agent), `start` puts H on hold (a sendonly re-INVITE, hold.py: there is no music on hold yet, H
hears silence) and then calls the target T exactly as a blind transfer of M would (transfer.py:
T's INVITE carries M's media on a new relay session, T sees M calling), except that H is not
released: the transfer's `park` hook keeps H's leg and its old relay session aside ("parked"),
while T takes H's place in the call. M then talks to T; the call's relaying, hold and hang-up work
on the pair (T, M) as on any call. M's place in the call never changes.

The other actions move parties between the call's free place and the parking spot with `Rejoin`:
two confirmed legs p and q are joined on a new relay session by re-INVITEing q with p's last SDP
(made sendrecv) and then p with q's answer, as an attended transfer joins its parties.
- complete: the parked party joins the one talking to M (H and T talk), M is released (BYE).
- cancel: T is released; if T was talking to M, H is rejoined to M first (H taken off hold).
- swap: the party talking to M is put on hold and parked; the parked one is rejoined to M.
If T hangs up while talking to M, H is rejoined to M by itself; if the parked party hangs up it is
simply gone (a later complete or swap is refused). A parked party's re-INVITE or UPDATE gets 491,
other requests 403 or 200 (OPTIONS); everything parked is released when the call ends (a
`Call.on_hangup` hook). When a rejoin fails half-way (q moved, p refused) the call cannot be put
back and is hung up. A completed consultation counts as an attended transfer in the metrics.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ..sip.address import Address
from ..sip.dialog import DialogState
from ..sip.message import Request, Response, build_response
from ..sip.uri import Uri
from .call import Call, CallState
from .hold import HoldOutcome, HoldReinvite
from .leg import Leg
from .transfer import Transfer, sendrecv_offer
from .transfer_sink import EventSink, TransferTarget

# done(error, sip_status): error None when the action succeeded, else why it did not (for a person).
Done = Callable[[str | None, int | None], None]


class ConsultState(enum.Enum):
    STARTING = "starting"  # holding H, calling T
    TALKING_TO_TARGET = "talking_to_target"  # M with T, H parked
    TALKING_TO_HELD = "talking_to_held"  # M with H, T parked (after a swap)
    ENDED = "ended"


class Rejoin:
    """Join confirmed legs p and q of `call` on a new relay session; `done(media or None, error, status)`."""

    def __init__(self, call: Call, p: Leg, q: Leg, done: Callable[[Any, str | None, int | None], None]) -> None:
        self.call = call
        self.ctx = call.ctx
        self.p, self.q = p, q
        self._done: Callable[[Any, str | None, int | None], None] | None = done
        self.media = self.ctx.new_media(call, self.ctx.new_call_id())
        self.q_moved = False

    def start(self) -> None:
        offer = sendrecv_offer(self.p.sdp.remote)
        if offer is None:
            self._finish(f"party {self.p.label}'s media is not known", None)
            return
        self.media.offer(self.p.local_tag, self.q.local_tag, offer, self._offer_to_q)

    def _offer_to_q(self, body: bytes | None, error: str | None) -> None:
        if not self._live(body, error):
            return
        assert body is not None
        self.call.send_own(self.q, "INVITE", self.q.sdp.outgoing(body), self._q_answered,
                           [("Content-Type", "application/sdp")])

    def _q_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is not None and resp.status < 200:
            return
        if resp is None or not resp.is_success or not resp.body:
            status = None if resp is None else resp.status
            self._finish(f"the re-INVITE was answered {status or 'with nothing'}", status)
            return
        self.q_moved = True
        self.q.sdp.incoming(resp.body)
        self.media.answer(self.p.local_tag, self.q.local_tag, resp.body, self._offer_to_p)

    def _offer_to_p(self, body: bytes | None, error: str | None) -> None:
        if not self._live(body, error):
            return
        assert body is not None
        self.call.send_own(self.p, "INVITE", self.p.sdp.outgoing(body), self._p_answered,
                           [("Content-Type", "application/sdp")])

    def _p_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is not None and resp.status < 200:
            return
        if resp is None or not resp.is_success:
            status = None if resp is None else resp.status
            self._finish(f"the re-INVITE was answered {status or 'with nothing'}", status)
            return
        if resp.body:
            self.p.sdp.incoming(resp.body)
            # p's answer may name a new address: the relay learns it (ports unchanged).
            self.media.offer(self.p.local_tag, self.q.local_tag, resp.body, _ignore)
        self._finish(None, resp.status)

    def _live(self, body: bytes | None, error: str | None) -> bool:
        if self._done is None:
            return False
        if self.call.state is not CallState.CONFIRMED or not (self.p.confirmed and self.q.confirmed):
            self._finish("the call changed meanwhile", None)
            return False
        if body is None:
            self._finish(f"media relay: {error}", None)
            return False
        return True

    def abandon(self) -> None:
        if self._done is not None:
            self._done = None
            self.media.delete()

    def _finish(self, error: str | None, status: int | None) -> None:
        done, self._done = self._done, None
        if error is not None:
            self.media.delete()
        if done is not None:
            done(self.media if error is None else None, error, status)


class SupervisedConsult:
    def __init__(self, call: Call, held: Leg, target: Uri, hop: Address,
                 on_end: Callable[[], None] | None = None) -> None:
        self.call = call
        self.ctx = call.ctx
        self.held = held  # H: the party put on hold at the start
        self.middle = call.other(held)  # M: the party that consults
        self.target_uri = target
        self.hop = hop
        self.state = ConsultState.STARTING
        self.target: Leg | None = None  # T, once called
        self.parked: Leg | None = None
        self.parked_media: Any = None
        self.busy = False  # an action is under way
        self._rejoin: Rejoin | None = None
        self._transfer: Transfer | None = None
        self._on_end = on_end
        call.add_intercept(self._intercept)
        call.add_hangup_hook(self._call_hangup)

    # -- start -------------------------------------------------------------------------------------

    def start(self, done: Done) -> None:
        self.busy = True
        self._event("consult_started", held=self.held.label, target=str(self.target_uri))
        if self.held.sdp.local_held:
            self._call_target(done)
            return

        def held(outcome: HoldOutcome) -> None:
            if not outcome.ok:
                self._end()
                self._reply(done, f"could not hold party {self.held.label}: {outcome.reason}", outcome.status)
                return
            self._call_target(done)

        HoldReinvite(self.call, self.held, True, held).start()

    def _call_target(self, done: Done) -> None:
        if self.call.state is not CallState.CONFIRMED:
            self._end()
            self._reply(done, "the call ended", None)
            return

        def ended(result: str, status: int | None, reason: str) -> None:
            if result == "completed":
                self.state = ConsultState.TALKING_TO_TARGET
                self.busy = False
                self._event("consult_connected", target=str(self.target_uri))
                self._reply(done, None, status)
            else:
                self._give_up_start(done, result, status, reason)

        sink = EventSink(self.call, {"source": "api", "consult": "start"}, ended)
        transfer = Transfer(self.call, self.held, TransferTarget(self.target_uri), self.hop, sink=sink,
                            park=self._park)
        self._transfer = transfer
        self.target = transfer.target
        self.call.transfer = transfer
        transfer.start()

    def _park(self, leg: Leg, media: Any) -> None:
        self.parked, self.parked_media = leg, media
        self.call.add_leg(leg)  # released with the call, unregistered at its end

    def _give_up_start(self, done: Done, result: str, status: int | None, reason: str) -> None:
        """The target did not answer (or the move failed): take the held party off hold again."""
        self._end()
        transfer = self._transfer
        if transfer is not None and self.call.transfer is transfer and transfer.finished:
            self.call.transfer_settled(transfer)  # now, so that the resume below is not refused
        why = f"the target answered {status} {reason}".strip() if status and status >= 300 else f"consult {result}"
        if self.call.state is not CallState.CONFIRMED or not self.held.confirmed or not self.held.sdp.local_held:
            self._reply(done, why, status)
            return
        HoldReinvite(self.call, self.held, False, lambda outcome: self._reply(done, why, status)).start()

    # -- complete, cancel, swap --------------------------------------------------------------------

    def refusal(self, action: str) -> str | None:
        if self.state is ConsultState.STARTING or self.busy:
            return "the consultation is busy (an action is under way)"
        if self.state is ConsultState.ENDED:
            return "the consultation has ended"
        if self.call.state is not CallState.CONFIRMED:
            return f"the call is {self.call.state.value}"
        if self.call.a.reinvite_pending or self.call.b.reinvite_pending:
            return "a re-INVITE is pending on this call"
        if action in ("complete", "swap") and (self.parked is None or not self.parked.confirmed):
            return "the parked party has hung up"
        return None

    def complete(self, done: Done) -> None:
        """The parked party and the one talking to M are joined; M is released."""
        assert self.parked is not None
        active, parked = self.call.other(self.middle), self.parked
        self.busy = True

        def joined(media: Any, error: str | None, status: int | None) -> None:
            rejoin, self._rejoin = self._rejoin, None
            if media is None:
                self._rejoin_failed(done, "complete", error, status, rejoin)
                return
            call = self.call
            call.swap_leg(self.middle, parked, media).delete()
            self.parked = None
            self._drop_parked_media()
            call.release_leg_if_up(self.middle, "call transferred")
            self.ctx.transfer_ended(call, "attended", "completed", 0.0)
            self._event("consult_completed")
            self._end()
            self._reply(done, None, status)

        self._rejoin = Rejoin(self.call, parked, active, joined)
        self._rejoin.start()

    def cancel(self, done: Done) -> None:
        """The target is released; the held party talks to M again."""
        self.busy = True
        target = self.target
        if self.state is ConsultState.TALKING_TO_HELD or target is None or not target.confirmed:
            if target is not None and target is self.parked:
                self._release_parked("consultation cancelled")
            self._event("consult_cancelled")
            self._end()
            self._reply(done, None, None)
            return
        self._reconnect_held(done, "consult_cancelled")

    def _reconnect_held(self, done: Done | None, event: str) -> None:
        """T talks to M (or just left): H is rejoined to M, T released."""
        target, held = self.target, self.parked
        assert target is not None
        if held is None or not held.confirmed:
            self.call.release_leg_if_up(target, "consultation cancelled")
            self._event(event, held_gone=True)
            self._end()
            self.call.hangup(reason="the held party has left")
            if done is not None:
                self._reply(done, None, None)
            return

        def joined(media: Any, error: str | None, status: int | None) -> None:
            rejoin, self._rejoin = self._rejoin, None
            if media is None:
                self._rejoin_failed(done, "cancel", error, status, rejoin)
                return
            self.call.swap_leg(target, held, media).delete()
            self.parked = None
            self._drop_parked_media()
            self.call.release_leg_if_up(target, "consultation cancelled")
            self._event(event)
            self._end()
            if done is not None:
                self._reply(done, None, status)

        self._rejoin = Rejoin(self.call, held, self.middle, joined)
        self._rejoin.start()

    def swap(self, done: Done) -> None:
        """The party talking to M is held and parked; the parked one talks to M."""
        assert self.parked is not None
        active, parked = self.call.other(self.middle), self.parked
        self.busy = True

        def held(outcome: HoldOutcome) -> None:
            if not outcome.ok:
                self.busy = False
                self._reply(done, f"could not hold party {active.label}: {outcome.reason}", outcome.status)
                return
            self._rejoin = Rejoin(self.call, parked, self.middle, joined)
            self._rejoin.start()

        def joined(media: Any, error: str | None, status: int | None) -> None:
            rejoin, self._rejoin = self._rejoin, None
            if media is None:
                self._rejoin_failed(done, "swap", error, status, rejoin)
                return
            old_media = self.call.swap_leg(active, parked, media)
            self._drop_parked_media()
            self.parked, self.parked_media = active, old_media
            self.call.add_leg(active)
            self.state = (ConsultState.TALKING_TO_HELD if parked is self.held else ConsultState.TALKING_TO_TARGET)
            self.busy = False
            self._event("consult_swapped", talking_to="held" if parked is self.held else "target")
            self._reply(done, None, status)

        HoldReinvite(self.call, active, True, held).start()

    def _rejoin_failed(self, done: Done | None, action: str, error: str | None, status: int | None,
                       rejoin: Rejoin | None) -> None:
        self.busy = False
        self._event("consult_failed", action=action, reason=error or "", status=status)
        if rejoin is not None and rejoin.q_moved and self.call.state is CallState.CONFIRMED:
            # One party already moved to the new session, the other refused: nothing to go back to.
            self.call.hangup(reason=f"consult {action} failed: {error}")
        elif action == "cancel" and self.call.state is CallState.CONFIRMED and (
                self.target is None or not self.target.confirmed):
            self.call.hangup(reason=f"consult {action} failed: {error}")  # M would be left with nobody
        if done is not None:
            self._reply(done, f"{action} failed: {error}", status)

    # -- requests and hang-ups --------------------------------------------------------------------

    def _intercept(self, leg: Leg, tx: Any, req: Request) -> bool:
        if self.state is ConsultState.ENDED:
            return False
        method = req.method
        if leg is self.parked and self.parked is not None:
            if method == "BYE":
                self.ctx.respond(tx, build_response(req, 200))
                assert leg.dialog is not None
                leg.dialog.state = DialogState.TERMINATED
                self._event("consult_party_left", side=leg.label, parked=True)
                if leg is self.target:
                    self._drop_parked_media()
                    self.parked = None
                    self._end()
                return True
            status = 200 if method == "OPTIONS" else 491 if method in ("INVITE", "UPDATE") else 403
            self.ctx.respond(tx, build_response(req, status, "Request Pending (the party is on hold, parked)"
                                                if status == 491 else None))
            return True
        if (method == "BYE" and leg is self.target and self.state is ConsultState.TALKING_TO_TARGET
                and not self.busy and leg is self.call.other(self.middle)):
            # The target hung up on M: M gets the held party back.
            self.ctx.respond(tx, build_response(req, 200))
            assert leg.dialog is not None
            leg.dialog.state = DialogState.TERMINATED
            self._event("consult_party_left", side=leg.label, parked=False)
            self.busy = True
            self._reconnect_held(None, "consult_cancelled")
            return True
        return False

    def _call_hangup(self, reason: str | None) -> None:
        if self._rejoin is not None:
            self._rejoin.abandon()
            self._rejoin = None
        if self.parked is not None:
            self._release_parked(reason or "call ended")
        self._end()

    def _release_parked(self, reason: str) -> None:
        leg, self.parked = self.parked, None
        if leg is not None and leg.confirmed:
            self.call.release_leg(leg, reason)
        self._drop_parked_media()

    def _drop_parked_media(self) -> None:
        media, self.parked_media = self.parked_media, None
        if media is not None:
            media.delete()

    def _end(self) -> None:
        if self.state is ConsultState.ENDED:
            return
        self.state = ConsultState.ENDED
        self.busy = False
        if self.parked is None:
            self.call.remove_intercept(self._intercept)
            self.call.remove_hangup_hook(self._call_hangup)
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end()

    def _reply(self, done: Done, error: str | None, status: int | None) -> None:
        done(error, status)

    def _event(self, name: str, **fields: Any) -> None:
        if self.call.state is not CallState.ENDED:
            self.ctx.log_event(self.call, name, **fields)


def _ignore(*_: Any) -> None:
    pass
