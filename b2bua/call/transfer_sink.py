"""Where a transfer's progress goes, and what it calls: the pieces that differ between a transfer a
phone REFERred and one nobody did (the control API, a recall).

How this works: a `Transfer` (transfer.py) reports through a `TransferSink` at fixed points: it
started, the target sent a provisional or final answer, (early completion) the transferor was let go
before the target answered, the transferor hung up, the transfer is over, its result. `NotifySink`
turns these into the NOTIFYs of a REFER's implicit subscription toward the transferor (RFC 3515
§2.4.4-2.4.7, `ReferSubscription` decides which are due; its expiry timer lives here). `EventSink`
turns them into `transfer_progress` call events, each with the sipfrag status line a NOTIFY would
have carried, which the control API streams, and calls `on_end` once with the result. What to call
comes from a `TransferTarget`; a `ReferRequest` has the same fields, so a REFER's reading is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..sip.headers import Replaces
from ..sip.message import Response
from ..sip.uri import Uri
from .leg import Leg
from .refer import ReferNotify, ReferSubscription, sipfrag

if TYPE_CHECKING:
    from .call import Call
    from .transfer import Transfer


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """What a transfer calls (blind) or names (attended, early: for the logs): a `ReferRequest` has
    the same three fields, so a REFER's reading is one too."""

    target: Uri  # the Request-URI of the INVITE to place (blind)
    referred_by: str | None = None  # copied into that INVITE (RFC 3892 §3)
    replaces: Replaces | None = None  # a dialog elsewhere that the target replaces (policy `any`)


class TransferSink(Protocol):
    """Where a transfer's progress goes: NOTIFYs to a transferor (`NotifySink`), call events (`EventSink`)."""

    fields: dict[str, Any]  # added to the transfer's log events (none for phone-started transfers)

    def start(self, transfer: Transfer) -> None: ...  # the transfer has begun (NOTIFY 100 Trying)
    def provisional(self, status: int, reason: str | None) -> None: ...  # the target's 18x
    def final(self, status: int, reason: str | None) -> None: ...  # the target's final answer (or ours)
    def transferor_released(self) -> None: ...  # early completion: the transferor is let go at once
    def transferor_left(self) -> None: ...  # the transferor hung up: tell it nothing more
    def close(self) -> None: ...  # the transfer is over (or being abandoned): stop timers
    def abandon(self) -> None: ...  # the call is ending: say nothing more
    def ended(self, result: str) -> None: ...  # reported once: completed, failed, abandoned, bridge_failed


class NotifySink:
    """The implicit subscription of a REFER (RFC 3515): NOTIFYs with sipfrag toward the transferor."""

    def __init__(self, transfer_call: Call, transferor: Leg, event_id: int | None, expires: int,
                 wanted: bool = True) -> None:
        self.call = transfer_call
        self.ctx = transfer_call.ctx
        self.leg = transferor
        self.sub = ReferSubscription(event_id, self.ctx.now(), expires, wanted=wanted)
        self.fields: dict[str, Any] = {}
        self._gone = False
        self._expiry: Any = None

    def start(self, transfer: Transfer) -> None:
        self._notify(self.sub.progress(100, self.ctx.now()))
        at = self.sub.expires_at
        if at is not None:
            self._expiry = self.ctx.call_later(max(0.0, at - self.ctx.now()), self._expired)

    def provisional(self, status: int, reason: str | None) -> None:
        self._notify(self.sub.progress(status, self.ctx.now(), reason))

    def final(self, status: int, reason: str | None) -> None:
        self._notify(self.sub.final(status, reason))

    def transferor_released(self) -> None:
        # From the transferor's side the replacement took effect: report success (then it is released).
        self._notify(self.sub.final(200, "OK"))
        self._gone = True

    def transferor_left(self) -> None:
        self._gone = True
        self.sub.abandon()

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def abandon(self) -> None:
        self.sub.abandon()

    def ended(self, result: str) -> None:
        pass

    def _notify(self, notify: ReferNotify | None) -> None:
        leg = self.leg
        if notify is None or self._gone or not leg.confirmed:
            return
        headers = [*notify.headers, ("Contact", self.ctx.contact_for(leg.peer))]
        self.call.send_own(leg, "NOTIFY", notify.body, self._notify_answered, headers)

    def _notify_answered(self, tx: Any, resp: Response | None) -> None:
        if resp is None or resp.status in (481, 408):
            self.sub.abandon()  # RFC 6665 §4.1.3: the subscription is gone on the other side

    def _expired(self) -> None:
        self._expiry = None
        self._notify(self.sub.handle_timer(self.ctx.now()))


class EventSink:
    """Progress as call events (`transfer_progress`, with the sipfrag status line the target's answer
    would have in a NOTIFY), for transfers nobody REFERred; `on_end(result, status, reason)` once."""

    def __init__(self, call: Call, fields: dict[str, Any] | None = None,
                 on_end: Callable[[str, int | None, str], None] | None = None) -> None:
        self.call = call
        self.fields = dict(fields or {})
        self._on_end = on_end
        self._status: int | None = None
        self._reason = ""

    def start(self, transfer: Transfer) -> None:
        self._event(100, None)

    def provisional(self, status: int, reason: str | None) -> None:
        if status != self._status:
            self._event(status, reason)

    def final(self, status: int, reason: str | None) -> None:
        self._event(status, reason)

    def transferor_released(self) -> None:
        self.call.ctx.log_event(self.call, "transfer_progress", stage="transferor_released", **self.fields)

    def transferor_left(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def ended(self, result: str) -> None:
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end(result, self._status, self._reason)

    def _event(self, status: int, reason: str | None) -> None:
        frag = sipfrag(status, reason).decode("utf-8", "replace").rstrip("\r\n")
        self._status, self._reason = status, frag[12:]
        self.call.ctx.log_event(self.call, "transfer_progress", status=status, sipfrag=frag, **self.fields)
