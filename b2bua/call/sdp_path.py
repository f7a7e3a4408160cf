"""The path an SDP body takes from one leg of a call to the other: through the media relay, in order.

How this works: whenever the call relays a message that may carry SDP (the INVITE, its 18x and
2xx, a re-INVITE or UPDATE and their answers, the ACK of a late offer), it hands the body to
`SdpPath.carry` with what happens next (`then(body)`: send the message on the other leg) and what
happens if the relay refuses (`fail(reason, bad_sdp)`). An SDP offer goes to the relay as an ng
`offer` from the sending leg's tag; an answer as an ng `answer` naming the offerer (the receiving
leg) first, as rtpengine expects. The relay's rewritten SDP then gets the receiving leg's own o=
line (`LegSdp.outgoing`). Relay commands take a round trip, and a call must never reorder what it
relays (a 180 overtaking a 183 with SDP, a 200 overtaking both), so every message of the call
waits in one queue behind any pending relay command; a message without SDP passes at once when
nothing is pending. With relaying off the media session answers synchronously and this is a plain
function call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtp_relay.sdp import SessionDescription

from ..media.leg_sdp import SdpError, is_sdp
from ..sip.message import Request, Response
from .leg import Leg

Then = Callable[[bytes], None]
Fail = Callable[[str, bool], None]  # (reason, the SDP itself was bad)


class SdpPath:
    __slots__ = ("media", "_queue", "_running", "_waiting", "_sync_reply")

    def __init__(self, media: Any) -> None:
        self.media = media
        # A list, not a deque: it rarely holds more than one step, and an empty deque is a 600-byte
        # block that every call would keep for its whole life.
        self._queue: list[tuple[Callable[[Callable[[bytes | None, str | None], None]], None] | None,
                                Callable[[bytes | None, str | None], None]]] = []
        self._running = False
        self._waiting = False  # an op is being started: a reply now is synchronous
        self._sync_reply: tuple[bytes | None, str | None] | None = None

    def carry(self, kind: str | None, sender: Leg, receiver: Leg, msg: Request | Response,
              then: Then, fail: Fail) -> None:
        """Relay `msg`'s body from `sender` to `receiver`; `kind` is "offer", "answer" or None."""
        body = msg.body
        if kind is None or not body or not is_sdp(msg.headers.get("Content-Type")):
            self._push(None, lambda out, err: then(body))
            return
        try:
            parsed: SessionDescription | None = _validated(body)
            sender.sdp.incoming(body)
        except SdpError as exc:
            reason = f"bad SDP: {exc}"
            self._push(None, lambda out, err: fail(reason, True))
            return
        media = self.media
        if kind == "offer":
            def op(done: Callable[[bytes | None, str | None], None]) -> None:
                media.offer(sender.local_tag, receiver.local_tag, body, done)
        else:
            def op(done: Callable[[bytes | None, str | None], None]) -> None:
                media.answer(receiver.local_tag, sender.local_tag, body, done)

        def finished(out: bytes | None, error: str | None) -> None:
            if error is not None or out is None:
                fail(error or "relay gave no SDP", False)
                return
            nonlocal parsed
            # With relaying off the body comes back as it went: parsed already (once only: the
            # parse is changed by `outgoing`).
            reuse, parsed = (parsed if out is body else None), None
            try:
                stamped = receiver.sdp.outgoing(out, reuse)
            except SdpError as exc:
                fail(f"relay returned bad SDP: {exc}", False)
                return
            then(stamped)

        self._push(op, finished)

    # -- the queue -------------------------------------------------------------------------------

    def _push(self, op: Any, then: Callable[[bytes | None, str | None], None]) -> None:
        self._queue.append((op, then))
        if not self._running:
            self._run()

    def _run(self) -> None:
        """Run queued steps until one waits for the relay (its reply comes through `_reply`)."""
        self._running = True
        try:
            while self._queue:
                op, then = self._queue[0]
                if op is None:
                    self._queue.pop(0)
                    then(None, None)
                    continue
                self._waiting = True
                op(self._reply)
                self._waiting = False
                # Taken and cleared in one go, never set to None just before `op`: mypy would
                # take the attribute to be still None after that call, and the compiled build
                # (b2bua/native.py) trusts mypy's types.
                reply, self._sync_reply = self._sync_reply, None
                if reply is None:
                    return  # the relay answers later
                self._queue.pop(0)
                then(*reply)
        finally:
            self._running = False

    def _reply(self, out: bytes | None, error: str | None) -> None:
        if self._waiting:
            self._sync_reply = (out, error)  # answered at once (relaying off): `_run` goes on
            return
        if not self._queue:
            return
        _, then = self._queue.pop(0)
        self._running = True
        try:
            then(out, error)
        finally:
            self._running = False
        self._run()


def _validated(body: bytes) -> SessionDescription:
    sdp = SessionDescription.parse(body)
    if not any(line.type == "o" for line in sdp.session):
        raise SdpError("SDP has no o= line")
    if not sdp.media:
        raise SdpError("SDP has no m= line")
    return sdp
