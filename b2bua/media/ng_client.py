"""The B2BUA's end of rtpengine's "ng" control protocol: cookies, retransmission, reply matching.

How this works: a request is one UDP datagram `<cookie> <bencoded dictionary>` and the relay
answers with the same cookie. UDP loses datagrams, so `NgClient` keeps every request in a table
keyed by cookie and sends the identical datagram again after each delay of `retransmit`; the
relay's reply cache (rtp_relay/control.py) answers a repeat without executing the command twice.
When the last delay runs out the request is given up and its `done` gets None. A reply is accepted
only when its cookie is pending and it comes from the address the request went to; anything else
(late duplicates, strangers, garbage) is counted and dropped, never raised. Cookies are a random
per-instance prefix plus a counter, so two B2BUAs (or two runs of one) sharing a relay never
collide in its reply cache. Like the rest of the core this is sans-IO: timers come from the
`Scheduler`, datagrams leave through the injected `send`, and the shell feeds replies to `receive`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from rtp_relay import bencode

from ..sip.scheduler import Scheduler, TimerHandle

Address = tuple[str, int]
Reply = dict[str, Any]
Done = Callable[[Reply | None], None]


class _Pending:
    __slots__ = ("relay", "datagram", "done", "attempt", "timer")

    def __init__(self, relay: Address, datagram: bytes, done: Done) -> None:
        self.relay = relay
        self.datagram = datagram
        self.done = done
        self.attempt = 0  # index into `retransmit` of the delay now running
        self.timer: TimerHandle | None = None


class NgClient:
    def __init__(self, scheduler: Scheduler, send: Callable[[bytes, Address], None],
                 retransmit: tuple[float, ...] = (0.5, 1.0, 2.0), cookie_prefix: str | None = None) -> None:
        if not retransmit or any(d <= 0 for d in retransmit):
            raise ValueError("retransmit needs at least one positive delay")
        if cookie_prefix is None:
            cookie_prefix = os.urandom(6).hex()
        elif not cookie_prefix or any(c.isspace() for c in cookie_prefix):
            # the cookie ends at the first space on the wire
            raise ValueError("cookie_prefix must be non-empty and contain no whitespace")
        self.scheduler = scheduler
        self.send = send
        self.retransmit = tuple(retransmit)
        self._prefix = cookie_prefix + "_"  # the separator keeps prefix+counter unambiguous
        self._counter = itertools.count(1)
        self._pending: dict[bytes, _Pending] = {}
        self.requests = 0
        self.retransmissions = 0
        self.timeouts = 0
        self.replies = 0
        self.bad_replies = 0
        self.send_errors = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def request(self, relay: Address, message: dict[str, Any], done: Done) -> None:
        """Send `message` to `relay`; `done` later gets the decoded reply, or None on give-up.

        `done` is called exactly once. It may be called before `request` returns when `send`
        delivers synchronously (an in-process relay), so callers set up their state first.
        """
        cookie = f"{self._prefix}{next(self._counter)}".encode()
        # Encode before registering: an unencodable message is our bug and must not leave a
        # pending entry behind.
        datagram = cookie + b" " + bencode.encode(message)
        pending = _Pending(relay, datagram, done)
        # Registered and timed before the first send, because the reply may arrive inside `send`.
        self._pending[cookie] = pending
        pending.timer = self.scheduler.call_later(self.retransmit[0], lambda: self._expired(cookie))
        self.requests += 1
        self._transmit(pending)

    def receive(self, data: bytes, source: tuple[Any, ...]) -> None:
        """One reply datagram from the network. Bad input is counted, never raised.

        An exception raised by a `done` callback propagates, after the request is forgotten.
        """
        cookie, space, body = bytes(data).partition(b" ")
        pending = self._pending.get(cookie) if space else None
        # asyncio reports IPv6 sources as 4-tuples (host, port, flowinfo, scope_id)
        if pending is None or tuple(source[:2]) != tuple(pending.relay[:2]):
            self.bad_replies += 1
            return
        try:
            decoded = bencode.decode(body)
        except bencode.BencodeError:
            decoded = None
        if not isinstance(decoded, dict):
            # Keep waiting: the relay may answer a retransmission properly (or we time out).
            self.bad_replies += 1
            return
        del self._pending[cookie]
        if pending.timer is not None:
            pending.timer.cancel()
        self.replies += 1
        pending.done(_texts(decoded))

    def _transmit(self, pending: _Pending) -> None:
        try:
            self.send(pending.datagram, pending.relay)
        except OSError:
            # e.g. ICMP unreachable surfacing on send: the same as a lost datagram, the timers decide
            self.send_errors += 1

    def _expired(self, cookie: bytes) -> None:
        pending = self._pending.get(cookie)
        if pending is None:
            return
        pending.attempt += 1
        if pending.attempt < len(self.retransmit):
            pending.timer = self.scheduler.call_later(self.retransmit[pending.attempt],
                                                      lambda: self._expired(cookie))
            self.retransmissions += 1
            self._transmit(pending)
            return
        del self._pending[cookie]
        self.timeouts += 1
        pending.done(None)


def _texts(value: Any, key: str | None = None) -> Any:
    """Byte strings to str, recursively; an SDP stays bytes since it goes back into SIP as is."""
    if isinstance(value, bytes):
        return value if key == "sdp" else value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _texts(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(item) for item in value]
    return value
