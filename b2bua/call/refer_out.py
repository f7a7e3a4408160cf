"""The B2BUA as transferor: a REFER it sends to the transferee, and the NOTIFYs that answer it (RFC 3515).

How this works: a transfer the control API starts with `method = "refer"` lets the transferee's own
endpoint do the work, as a phone's transferor would have it do. `ReferOut` sends REFER in the
transferee's dialog with a Refer-To built by the caller (pointing back at the B2BUA, so that the
transferee's INVITE comes through us: to the target, routed like any call, or for an attended
transfer with an escaped Replaces naming the consultation leg that the transferee is then granted
to replace, as passthrough mode does). It reports the REFER's final answer once to `on_answer`
(which may fall back to re-bridging on 403/405/501, RFC 5589 §7.4). After a 2xx it follows the
implicit subscription: each NOTIFY of the refer event in that dialog (Event `refer`, with our
REFER's CSeq as `id` or none) is taken from the relay (`Call.intercepts`), answered 200 and
reported as a `transfer_progress` event with its sipfrag status line; after the subscription ended
(a final status, Subscription-State terminated, or our own give-up timer) such NOTIFYs get 481.

When the transfer counts as done depends on the semantics chosen (UCMA's words): `unattended` ends
our involvement on the 2xx to the REFER; `attended` waits for a NOTIFY with a 2xx sipfrag (a
failure there leaves the call as it was: RFC 5589 §6.2). Done means the call is over for us: both
of its legs are released with BYE (Reason: call transferred); the transferee's new call goes on
without this one. Every outcome is counted once in the transfer metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..sip.message import Request, Response, build_response
from ..sip.uri import UriError, find_param, parse_params
from .call import Call, CallState
from .leg import Leg
from .refer import parse_sipfrag

# on_answer(status, reason) -> True when the caller took over after a refusal (a fallback started).
OnAnswer = Callable[[int, str], bool]


class ReferOut:
    def __init__(self, call: Call, transferee: Leg, refer_to: str, kind: str, *, attended: bool,
                 expires: float, on_answer: OnAnswer, fields: dict[str, Any] | None = None,
                 on_end: Callable[[str], None] | None = None) -> None:
        self.call = call
        self.ctx = call.ctx
        self.transferee = transferee
        self.refer_to = refer_to
        self.kind = kind  # blind, attended, early (for the metrics)
        self.attended = attended  # wait for the final NOTIFY (else done on the 2xx)
        self.expires = expires
        self.fields = {"source": "api", "method": "refer", **(fields or {})}
        self._on_answer: OnAnswer | None = on_answer
        self._on_end = on_end
        self.event_id = ""
        self.accepted = False
        self.ended = False  # the subscription is over (NOTIFYs now get 481)
        self.result: str | None = None
        self._timer: Any = None
        self._started_at = self.ctx.now()

    def start(self) -> None:
        leg = self.transferee
        ctx = self.ctx
        headers = [("Refer-To", self.refer_to), ("Referred-By", ctx.contact_for(leg.peer)),
                   ("Contact", ctx.contact_for(leg.peer))]
        self.call.add_intercept(self._intercept)
        tx = self.call.send_own(leg, "REFER", b"", self._answered, headers)
        self.event_id = str(tx.request.cseq.seq)
        ctx.log_event(self.call, "transfer_started", kind=self.kind, refer_to=self.refer_to,
                      **{"transferee": leg.label, **self.fields})

    # -- the REFER's answer ------------------------------------------------------------------------

    def _answered(self, tx: Any, resp: Response | None) -> None:
        if resp is not None and resp.status < 200:
            return
        status, reason = (408, "no answer to the REFER") if resp is None else (resp.status, resp.reason or "")
        if resp is not None and resp.is_success and self.call.state is CallState.CONFIRMED:
            self.accepted = True
            self._event("transfer_progress", stage="accepted", status=status)
            self._answer(status, reason)
            if not self.attended:
                self._completed("the REFER was accepted (unattended)")
            elif not self.ended:
                self._timer = self.ctx.call_later(self.expires, self._expired)
            return
        self.ended = True
        self._drop_intercept()
        if not self._answer(status, reason):
            self._failed(status, f"the transferee answered the REFER {status} {reason}".strip())

    def _answer(self, status: int, reason: str) -> bool:
        on_answer, self._on_answer = self._on_answer, None
        return on_answer(status, reason) if on_answer is not None else False

    # -- the NOTIFYs ---------------------------------------------------------------------------------

    def _intercept(self, leg: Leg, tx: Any, req: Request) -> bool:
        if req.method != "NOTIFY" or leg is not self.transferee or not self._ours(req):
            return False
        if self.ended or not self.accepted:
            # RFC 6665 §4.1.3: no such subscription (any more).
            self.ctx.respond(tx, build_response(req, 481, "Subscription does not exist"))
            return True
        self.ctx.respond(tx, build_response(req, 200))
        frag = parse_sipfrag(req.body) if req.body else None
        terminated = (req.headers.get("Subscription-State") or "").strip().lower().startswith("terminated")
        if frag is not None:
            line = f"SIP/2.0 {frag[0]} {frag[1]}".rstrip()
            self._event("transfer_progress", status=frag[0], sipfrag=line)
        if frag is not None and frag[0] >= 200:
            if 200 <= frag[0] < 300:
                self._completed(f"the transferee reported {frag[0]}")
            else:
                self._failed(frag[0], f"the transferee reported {frag[0]} {frag[1]}".strip())
        elif terminated:
            self._failed(frag[0] if frag else 487, "the refer subscription ended without a final status")
        return True

    def _ours(self, req: Request) -> bool:
        """A NOTIFY of the refer event for our REFER (RFC 3515 §2.4.6: `id` is the REFER's CSeq)."""
        event = req.headers.get("Event") or ""
        package, _, text = event.partition(";")
        if package.strip().lower() != "refer":
            return False
        try:
            found, value = find_param(parse_params(text), "id")
        except UriError:
            return False
        return not found or (value or "").strip() == self.event_id

    # -- the end ------------------------------------------------------------------------------------

    def _completed(self, why: str) -> None:
        if self.result is not None:
            return
        self._end("completed")
        self._event("transfer_completed", kind=self.kind, reason=why)
        if self.call.state is CallState.CONFIRMED:
            self.call.result = "transferred"
            self.call.hangup(reason="call transferred")

    def _failed(self, status: int, reason: str) -> None:
        if self.result is not None:
            return
        self._end("failed")
        self._event("transfer_failed", kind=self.kind, status=status, reason=reason)

    def _expired(self) -> None:
        self._timer = None
        if self.result is None and self.call.state is not CallState.ENDED:
            self._failed(408, f"no final NOTIFY within {self.expires:g} s")

    def abandon(self) -> None:
        """The call ended first: the transfer is counted abandoned, nothing more is sent."""
        if self.result is None:
            self._end("abandoned")

    def _end(self, result: str) -> None:
        self.result = result
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ctx.transfer_ended(self.call, self.kind, result, self.ctx.now() - self._started_at)
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end(result)

    def _drop_intercept(self) -> None:
        self.call.remove_intercept(self._intercept)

    def _event(self, event: str, **fields: Any) -> None:
        if self.call.state is not CallState.ENDED:
            self.ctx.log_event(self.call, event, **{**self.fields, **fields})
