"""The SIP transaction layer: the four machines of RFC 3261 §17 with the RFC 6026 corrections.

How this works: `TransactionLayer` sits between the transport (bytes in, bytes out) and the
transaction user (the core). Parsed messages come in through `receive(msg, source)`; the layer
matches them to a live transaction (§17.1.3 for responses, §17.2.3 for requests) and feeds the
transaction, which absorbs retransmissions and passes up only what the TU must see. New requests
create server transactions; the TU creates client transactions with `send_request`, which also
stamps our Via (new branch, `rport`) and picks UDP or TCP by size (§18.1.1). Every machine is a
small class with one method per event (`_on_response`, `_on_retransmission`, `_on_ack`, `respond`)
and one method per RFC timer (`timer_a`, `timer_b`...); timers live in the shared `Scheduler`, so
the layer never reads a clock and tests walk virtual time. A transaction that reaches TERMINATED
cancels its timers and leaves the tables at once. Transport errors (`send` raising OSError)
terminate the transaction and are reported on the next scheduler turn (`call_later(0)`), so the TU
is never called back from inside its own `send_request`/`respond`/`cancel` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ..randomness import random_hex
from .address import Address
from .headers import Via
from .message import Headers, Request, Response, build_response
from .scheduler import Scheduler, TimerHandle

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
UDP_SIZE_LIMIT = 1300  # RFC 3261 §18.1.1: larger requests go over a congestion-controlled transport
TRYING_DELAY = 0.2  # RFC 3261 §17.2.1: send 100 Trying if the TU is silent for 200 ms
_LEGACY = "rfc2543"  # first element of RFC 2543 server keys


class TxState(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


CALLING = TxState.CALLING
TRYING = TxState.TRYING
PROCEEDING = TxState.PROCEEDING
COMPLETED = TxState.COMPLETED
CONFIRMED = TxState.CONFIRMED
ACCEPTED = TxState.ACCEPTED
TERMINATED = TxState.TERMINATED


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 Table 4 (seconds). The properties are the unreliable-transport values; over a
    reliable transport D, I, J and K are zero (the machines apply that)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0  # "at least 32 s" for UDP

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 < 0 or self.d < 0:
            raise ValueError("timer values need 0 < T1 <= T2, T4 >= 0, D >= 0")

    @property
    def b(self) -> float:  # = F = H = J = L = M
        return 64 * self.t1

    # The aliases are spelled out: the compiled build (b2bua/native.py) takes no `f = b` in a class.
    @property
    def f(self) -> float:
        return self.b

    @property
    def h(self) -> float:
        return self.b

    @property
    def j(self) -> float:
        return self.b

    @property
    def l(self) -> float:  # noqa: E743 - RFC timer name
        return self.b

    @property
    def m(self) -> float:
        return self.b

    @property
    def i(self) -> float:  # = K
        return self.t4

    @property
    def k(self) -> float:
        return self.i


class TransactionError(Exception):  # not RuntimeError: compiled classes cannot derive from it
    """The TU asked for something a transaction cannot do in its state (a bug above us)."""


class TransactionUser(Protocol):
    def on_request(self, tx: ServerTransaction | None, request: Request, source: Address) -> None: ...
    def on_response(self, tx: ClientTransaction, response: Response) -> None: ...
    def on_stray_response(self, response: Response, source: Address) -> None: ...
    def on_timeout(self, tx: ClientTransaction | ServerTransaction) -> None: ...
    def on_transport_error(self, tx: ClientTransaction | ServerTransaction) -> None: ...
    # The transaction is over and the layer has let go of it; told once per transaction, after
    # any on_timeout or on_transport_error, so the TU can drop what it kept for it. The one call
    # that can come from inside the TU's own call: a final it sends on a non-INVITE server
    # transaction over TCP ends that transaction at once (Timer J = 0).
    def on_ended(self, tx: ClientTransaction | ServerTransaction) -> None: ...


# -- the machinery common to all four machines -----------------------------------------------------


class Transaction:
    __slots__ = ("layer", "request", "state", "last_response", "key", "_timers", "_interval")

    def __init__(self, layer: TransactionLayer, request: Request, key: tuple) -> None:
        self.layer = layer
        self.request = request
        self.key = key
        self.state = TERMINATED  # set by _start()
        self.last_response: Response | None = None
        self._timers: dict[str, TimerHandle] = {}
        self._interval = 0.0  # current retransmission interval (A, E, G or the 2xx timer)

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def _dest(self) -> Address:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.name} {self.key[0]}>"

    # timers: keyed by the handler's name, so `self._arm(self.timer_a, t)` re-arms Timer A
    def _arm(self, handler: Callable[[], None], delay: float) -> None:
        name = handler.__name__
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        self._timers[name] = self.layer.scheduler.call_later(delay, handler)

    def _disarm(self, *handlers: Callable[[], None]) -> None:
        for handler in handlers:
            old = self._timers.pop(handler.__name__, None)
            if old is not None:
                old.cancel()

    def _linger(self, handler: Callable[[], None], delay: float) -> None:
        """Wait in Completed/Confirmed for `delay` (Timer D, I, J, K); zero means terminate now."""
        if delay > 0:
            self._arm(handler, delay)
            self._shed()
        else:
            self._terminate()

    def _shed(self) -> None:
        """Entering a state that only absorbs retransmissions (Completed, Confirmed, Accepted) for
        up to 32 s: what is kept then is matched by key and resent as bytes, so the parsed views of
        the request and response can go (`Message.shed`). Under load most transactions alive are
        in these states, so this is most of what the cycle collector would otherwise walk."""
        self.request.shed()
        if self.last_response is not None:
            self.last_response.shed()

    def _retransmit_interval(self) -> float:
        """Double the interval, capped at T2 (Timers E, G and the 2xx retransmission)."""
        self._interval = min(self._interval * 2, self.layer.config.t2)
        return self._interval

    def _terminate(self, *, tell_tu: bool = True) -> None:
        """End here. `tell_tu=False`: the caller reports a failure first, then `_ended`."""
        if self.state is TERMINATED:
            return
        self.state = TERMINATED
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._release()
        self.layer._forget(self)
        if tell_tu:
            self._ended()

    def _ended(self) -> None:
        self.layer.tu.on_ended(self)  # type: ignore[arg-type]

    def _release(self) -> None:
        """Drop what only a live transaction uses: the TU may still hold a terminated transaction
        until it hears `on_ended`, and a parsed response with its cached views or a serialized
        message is half a kilobyte or more. `request` stays: the TU reads it in
        `on_timeout` and `on_transport_error`, which come after the end."""
        self.last_response = None

    def _time_out(self) -> None:
        self._terminate(tell_tu=False)
        self.layer.timeouts += 1
        try:
            self.layer.tu.on_timeout(self)  # type: ignore[arg-type]
        finally:
            self._ended()

    def _transport_failed(self) -> None:
        try:
            self.layer.tu.on_transport_error(self)  # type: ignore[arg-type]
        finally:
            self._ended()

    def _send(self, data: bytes) -> bool:
        """Hand bytes to the transport; on OSError the transaction ends (RFC 3261 §17.1.4)."""
        layer = self.layer
        try:
            layer._transport_send(data, self._dest)
            return True
        except OSError:
            if self.state is not TERMINATED:
                self._terminate(tell_tu=False)
                layer.transport_errors += 1
                layer.scheduler.call_later(0, self._transport_failed)
            return False


# -- client transactions (RFC 3261 §17.1) ----------------------------------------------------------


class ClientTransaction(Transaction):
    """A request we sent. `request` carries our Via; `dest` is where it actually went."""

    __slots__ = ("dest", "_wire")

    def __init__(self, layer: TransactionLayer, request: Request, key: tuple, dest: Address,
                 wire: bytes) -> None:
        super().__init__(layer, request, key)
        self.dest = dest
        self._wire = wire

    @property
    def _dest(self) -> Address:
        return self.dest

    @property
    def branch(self) -> str:
        return self.key[0]

    def _retransmit(self) -> None:
        self.layer.retransmissions += 1
        self._send(self._wire)

    def _release(self) -> None:
        super()._release()
        self._wire = b""

    def _shed(self) -> None:
        # Accepted or Completed: a final has come, so the request is never sent again.
        super()._shed()
        self._wire = b""

    def _deliver(self, response: Response) -> None:
        self.last_response = response
        self.layer.tu.on_response(self, response)

    def _start(self) -> None:
        raise NotImplementedError

    def _on_response(self, response: Response) -> None:
        raise NotImplementedError


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 Figure 5 as corrected by RFC 6026 Figure 3 (the Accepted state)."""

    __slots__ = ("cancel_tx", "_cancel_headers", "_ack_wire")

    def __init__(self, layer: TransactionLayer, request: Request, key: tuple, dest: Address,
                 wire: bytes) -> None:
        super().__init__(layer, request, key, dest, wire)
        self.cancel_tx: ClientTransaction | None = None
        self._cancel_headers: tuple[tuple[str, str], ...] | None = None  # CANCEL waiting for a 1xx
        self._ack_wire = b""

    def _release(self) -> None:
        super()._release()
        self._wire = self._ack_wire = b""

    def _start(self) -> None:
        self.state = CALLING
        if not self._send(self._wire):
            return
        cfg = self.layer.config
        if not self.dest.reliable:
            self._interval = cfg.t1
            self._arm(self.timer_a, cfg.t1)
        self._arm(self.timer_b, cfg.b)

    def _on_response(self, response: Response) -> None:
        state = self.state
        status = response.status
        if status < 200:
            if state is CALLING:
                self.state = PROCEEDING
                self._disarm(self.timer_a, self.timer_b)  # Timer B guards Calling only
                if self._cancel_headers is not None:  # RFC 3261 §9.1: CANCEL only after a 1xx
                    self.layer._send_cancel(self, self._cancel_headers)
            if self.state is PROCEEDING:
                self._deliver(response)
        elif status < 300:
            if state is CALLING or state is PROCEEDING:
                # RFC 6026 §7.2: wait in Accepted so 2xx retransmissions and other forks' 2xx
                # reach the TU (which sends the ACK), instead of being stray.
                self.state = ACCEPTED
                self._disarm(self.timer_a, self.timer_b, self.timer_cancel)
                self._arm(self.timer_m, self.layer.config.m)
                self._deliver(response)
                self._shed()
            elif state is ACCEPTED:
                self._deliver(response)
        elif state is CALLING or state is PROCEEDING:
            self.state = COMPLETED
            self._disarm(self.timer_a, self.timer_b, self.timer_cancel)
            self._ack_wire = self.layer._build_ack(self.request, response).serialize()
            sent = self._send(self._ack_wire)
            try:
                self._deliver(response)  # before Completed can end at once (TCP): `on_ended` comes last
            finally:  # even when the TU raised: the transaction must still end
                if sent:
                    self._linger(self.timer_d, 0 if self.dest.reliable else self.layer.config.d)
        elif state is COMPLETED:
            self.layer.retransmissions += 1  # §17.1.1.2: a retransmitted final gets the ACK again
            self._send(self._ack_wire)

    def timer_a(self) -> None:
        """§17.1.1.2: retransmit at T1, 2*T1, 4*T1... (no cap) until a response or Timer B."""
        if self.state is CALLING:
            self._retransmit()
            if self.state is CALLING:
                self._interval *= 2
                self._arm(self.timer_a, self._interval)

    def timer_b(self) -> None:
        if self.state is CALLING:
            self._time_out()

    def timer_cancel(self) -> None:
        """RFC 3261 §9.1: no final response 64*T1 after our CANCEL -> consider it cancelled."""
        if self.state is PROCEEDING or self.state is CALLING:
            self._time_out()

    def timer_d(self) -> None:
        self._terminate()

    def timer_m(self) -> None:
        self._terminate()


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 Figure 6."""

    __slots__ = ()

    def _start(self) -> None:
        self.state = TRYING
        if not self._send(self._wire):
            return
        cfg = self.layer.config
        if not self.dest.reliable:
            self._interval = cfg.t1
            self._arm(self.timer_e, cfg.t1)
        self._arm(self.timer_f, cfg.f)

    def _on_response(self, response: Response) -> None:
        if self.state is not TRYING and self.state is not PROCEEDING:
            return  # Completed absorbs retransmitted finals
        if response.status < 200:
            self.state = PROCEEDING
            self._deliver(response)
        else:
            self.state = COMPLETED
            self._disarm(self.timer_e, self.timer_f)
            try:
                self._deliver(response)  # before Completed can end at once (TCP): `on_ended` comes last
            finally:  # even when the TU raised: the transaction must still end
                self._linger(self.timer_k, 0 if self.dest.reliable else self.layer.config.k)

    def timer_e(self) -> None:
        """§17.1.2.2: T1 doubling up to T2 in Trying; every T2 in Proceeding."""
        if self.state is TRYING or self.state is PROCEEDING:
            self._retransmit()
            if self.state is PROCEEDING:
                self._interval = self.layer.config.t2
                self._arm(self.timer_e, self._interval)
            elif self.state is TRYING:
                self._arm(self.timer_e, self._retransmit_interval())

    def timer_f(self) -> None:
        if self.state is TRYING or self.state is PROCEEDING:
            self._time_out()

    def timer_k(self) -> None:
        self._terminate()


# -- server transactions (RFC 3261 §17.2) ----------------------------------------------------------


class ServerTransaction(Transaction):
    """A request we received. `request` is as stamped with received/rport; `source` is where it
    came from and `dest` where responses go (RFC 3261 §18.2.2, RFC 3581)."""

    __slots__ = ("source", "dest", "_wire")

    def __init__(self, layer: TransactionLayer, request: Request, key: tuple, source: Address) -> None:
        super().__init__(layer, request, key)
        self.source = source
        self.dest = response_destination(request.top_via, source)
        self._wire = b""

    @property
    def _dest(self) -> Address:
        return self.dest

    def respond(self, response: Response) -> None:
        """Send a response from the TU. Ignored once the transaction has terminated (for instance
        after a transport error not yet reported); raises TransactionError when the state does not
        allow it (a provisional or a second final after a final)."""
        raise NotImplementedError

    def _send_response(self, response: Response) -> bool:
        self.last_response = response
        self._wire = response.serialize()
        return self._send(self._wire)

    def _resend(self) -> None:
        self.layer.retransmissions += 1
        self._send(self._wire)

    def _release(self) -> None:
        super()._release()
        self._wire = b""

    def _refuse(self, response: Response) -> TransactionError:
        return TransactionError(f"cannot send {response.status} in state {self.state.name} of {self!r}")

    def _start(self) -> None:
        raise NotImplementedError

    def _on_retransmission(self) -> None:
        raise NotImplementedError


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 Figure 7 as corrected by RFC 6026 Figure 5, plus the UAS core's 2xx
    retransmission (§13.3.1.4), which lives here because it runs on the same clock."""

    __slots__ = ("ack_key", "acked")

    def __init__(self, layer: TransactionLayer, request: Request, key: tuple, source: Address) -> None:
        super().__init__(layer, request, key, source)
        self.ack_key: tuple | None = None  # (Call-ID, CSeq number, From tag, To tag of our 2xx)
        self.acked = False  # the ACK to our 2xx arrived

    def _start(self) -> None:
        self.state = PROCEEDING
        self._arm(self.timer_trying, TRYING_DELAY)

    def respond(self, response: Response) -> None:
        state = self.state
        if state is TERMINATED:
            return
        status = response.status
        cfg = self.layer.config
        if state is PROCEEDING:
            self._disarm(self.timer_trying)
            if status < 200:
                self._send_response(response)
            elif status < 300:
                self.state = ACCEPTED
                self.layer._expect_ack(self, response)
                if self._send_response(response):
                    if not self.dest.reliable:
                        self._interval = cfg.t1
                        self._arm(self.timer_2xx, cfg.t1)
                    self._arm(self.timer_l, cfg.l)
                    self._shed()
            else:
                self.state = COMPLETED
                if self._send_response(response):
                    if not self.dest.reliable:
                        self._interval = cfg.t1
                        self._arm(self.timer_g, cfg.t1)
                    self._arm(self.timer_h, cfg.h)
        elif state is ACCEPTED and 200 <= status < 300:
            self._send_response(response)  # RFC 6026 §8.5: the TU may send more 2xx
        else:
            raise self._refuse(response)

    def _on_retransmission(self) -> None:
        if self.state is PROCEEDING:
            if self.last_response is not None:
                self._resend()  # §17.2.1: the latest provisional
        elif self.state is COMPLETED:
            self._resend()
        # Accepted (RFC 6026 §7.1) and Confirmed absorb the INVITE.

    def _on_ack(self) -> bool:
        """An ACK matched this transaction; returns True when it must go up to the TU."""
        if self.state is COMPLETED:  # ACK to our non-2xx: §17.2.1
            self.state = CONFIRMED
            self._disarm(self.timer_g, self.timer_h)
            self._linger(self.timer_i, 0 if self.dest.reliable else self.layer.config.i)
            return False
        if self.state is ACCEPTED:  # ACK to our 2xx: RFC 6026 §7.1 passes it up
            self.acked = True
            self._disarm(self.timer_2xx)
            # The 2xx is never sent again (Accepted absorbs INVITE retransmissions): drop it
            # for the rest of Timer L, as a terminated transaction does.
            self._release()
            return True
        return False

    def timer_trying(self) -> None:
        if self.state is PROCEEDING and self.last_response is None:
            self._send_response(build_response(self.request, 100))

    def timer_g(self) -> None:
        if self.state is COMPLETED:
            self._resend()
            if self.state is COMPLETED:
                self._arm(self.timer_g, self._retransmit_interval())

    def timer_h(self) -> None:
        if self.state is COMPLETED:  # no ACK to our non-2xx
            self._time_out()

    def timer_i(self) -> None:
        self._terminate()

    def timer_2xx(self) -> None:
        """§13.3.1.4: the UAS retransmits its 2xx (UDP) at T1 doubling up to T2 until the ACK."""
        if self.state is ACCEPTED and not self.acked:
            self._resend()
            if self.state is ACCEPTED:
                self._arm(self.timer_2xx, self._retransmit_interval())

    def timer_l(self) -> None:
        if self.state is not ACCEPTED:
            return
        if self.acked:
            self._terminate()
        else:  # §13.3.1.4: no ACK for 64*T1 -> the TU should end the session
            self._time_out()


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 Figure 8."""

    __slots__ = ()

    def _start(self) -> None:
        self.state = TRYING

    def respond(self, response: Response) -> None:
        state = self.state
        if state is TERMINATED:
            return
        if state is COMPLETED:
            raise self._refuse(response)
        if response.status < 200:
            self.state = PROCEEDING
            self._send_response(response)
        else:
            self.state = COMPLETED
            if self._send_response(response):
                self._linger(self.timer_j, 0 if self.dest.reliable else self.layer.config.j)

    def _on_retransmission(self) -> None:
        if self.state is PROCEEDING or self.state is COMPLETED:
            self._resend()
        # Trying: nothing to resend yet, absorbed

    def timer_j(self) -> None:
        self._terminate()


# -- the layer -------------------------------------------------------------------------------------


class TransactionLayer:
    def __init__(
        self,
        scheduler: Scheduler,
        tu: TransactionUser,
        send: Callable[[bytes, Address], None],
        local: Callable[[Address], tuple[str, int]],
        config: TimerConfig = TimerConfig(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        self.scheduler = scheduler
        self.tu = tu
        self.config = config
        self._transport_send = send
        self._local = local
        self._clients: dict[tuple, ClientTransaction] = {}
        self._servers: dict[tuple, ServerTransaction] = {}
        self._accepted: dict[tuple, InviteServerTransaction] = {}  # ACK-to-2xx key -> tx
        # plain counters, read by the metrics layer at scrape time
        self.retransmissions = 0
        self.timeouts = 0
        self.stray_responses = 0
        self.transport_errors = 0
        self.malformed = 0

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def compact(self) -> None:
        """Rebuild the tables at their present size (a dict keeps its peak size; b2bua/trim.py)."""
        self._clients = dict(self._clients)
        self._servers = dict(self._servers)
        self._accepted = dict(self._accepted)

    # -- input ---------------------------------------------------------------------------------

    def receive(self, msg: Request | Response, source: Address) -> None:
        if isinstance(msg, Response):
            self._receive_response(msg, source)
        else:
            self._receive_request(msg, source)

    def _receive_response(self, response: Response, source: Address) -> None:
        try:
            key = (response.top_via.branch, response.cseq.method)
        except ValueError:
            self.malformed += 1
            return
        tx = self._clients.get(key)  # §17.1.3: top Via branch + CSeq method
        if tx is None:
            self.stray_responses += 1
            self.tu.on_stray_response(response, source)
        else:
            tx._on_response(response)

    def _receive_request(self, request: Request, source: Address) -> None:
        ack_key: tuple = ()
        try:
            request = _stamp_via(request, source)
            key = _server_key(request)
            if request.method == "ACK":
                ack_key = (request.call_id, request.cseq.seq, request.from_tag, request.to_tag)
        except ValueError:
            self.malformed += 1
            return
        tx = self._match_server(key, request)
        if request.method == "ACK":
            if tx is not None:
                if not isinstance(tx, InviteServerTransaction) or not tx._on_ack():
                    return  # absorbed: the ACK to a non-2xx (or a stray ACK in Proceeding)
            else:
                # RFC 6026 §7.1: the ACK to a 2xx has its own branch; match it to the Accepted
                # transaction by dialog and CSeq to stop retransmitting the 2xx.
                accepted = self._accepted.get(ack_key)
                if accepted is not None:
                    accepted._on_ack()
            self.tu.on_request(None, request, source)
            return
        if tx is not None:
            tx._on_retransmission()
            return
        cls = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        tx = cls(self, request, key, source)
        self._servers[key] = tx
        tx._start()
        self.tu.on_request(tx, request, source)

    def _match_server(self, key: tuple, request: Request) -> ServerTransaction | None:
        tx = self._servers.get(key)
        if tx is None or key[0] != _LEGACY:
            return tx
        # RFC 2543 matching (§17.2.3) also compares To tags: the request's for a retransmission
        # or a CANCEL, the tag of our response for an ACK.
        if request.method == "ACK" and tx.last_response is not None:
            expected = tx.last_response.to_tag
        else:
            expected = tx.request.to_tag
        return tx if request.to_tag == expected else None

    def find_invite_for_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        """RFC 3261 §9.2: the INVITE server transaction a CANCEL refers to (any state)."""
        try:
            key = _server_key(cancel, "INVITE")
        except ValueError:
            return None
        tx = self._match_server(key, cancel)
        return tx if isinstance(tx, InviteServerTransaction) else None

    # -- output --------------------------------------------------------------------------------

    def send_request(self, request: Request, dest: Address) -> ClientTransaction:
        """Start a client transaction. `request` has no Via yet; ours is added here."""
        if request.method in ("ACK", "CANCEL"):
            raise ValueError(f"use send_ack()/cancel() for {request.method}")
        request, dest, wire = self._add_via(request, dest)
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        return self._start_client(cls, request, dest, wire)

    def send_ack(self, ack: Request, dest: Address) -> tuple[bytes, Address]:
        """Send an ACK to a 2xx (no transaction; RFC 3261 §13.2.2.4): adds a Via with a new
        branch and sends it once. Returns the bytes sent and where they went: a retransmitted 2xx
        is answered with this same ACK (`send_wire`), not a new one. A transport error is counted
        only: the dialog notices a lost ACK through the peer's 2xx retransmissions or its BYE."""
        _, dest, wire = self._add_via(ack, dest)
        self.send_wire(wire, dest)
        return wire, dest

    def send_wire(self, wire: bytes, dest: Address) -> None:
        """Send bytes outside any transaction: an ACK to a 2xx, the first time or again."""
        try:
            self._transport_send(wire, dest)
        except OSError:
            self.transport_errors += 1

    def cancel(self, tx: ClientTransaction, headers: Iterable[tuple[str, str]] = ()
               ) -> ClientTransaction | None:
        """RFC 3261 §9.1: cancel a pending INVITE. The CANCEL is sent at once if a provisional
        arrived, else as soon as one does (never if a final comes first). Returns the CANCEL's
        transaction if it was sent now (or earlier), else None. `headers` (e.g. Reason) are added."""
        if not isinstance(tx, InviteClientTransaction):
            raise ValueError("only an INVITE can be cancelled")
        if tx.cancel_tx is not None or tx._cancel_headers is not None:
            return tx.cancel_tx
        if tx.state is PROCEEDING:
            return self._send_cancel(tx, tuple(headers))
        if tx.state is CALLING:
            tx._cancel_headers = tuple(headers)
        return None

    def _send_cancel(self, tx: InviteClientTransaction, extra: tuple[tuple[str, str], ...]
                     ) -> ClientTransaction:
        invite = tx.request
        items = [("Via", invite.headers.values("Via")[0])]  # the INVITE's top Via, same branch
        items += [("Route", r) for r in invite.headers.get_all("Route")]
        items += [
            ("Max-Forwards", "70"),
            ("From", invite.headers.get("From") or ""),
            ("To", invite.headers.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.seq} CANCEL"),
        ]
        items += extra
        cancel = Request("CANCEL", invite.uri, Headers(items))
        ctx = self._start_client(NonInviteClientTransaction, cancel, tx.dest, cancel.serialize())
        tx.cancel_tx = ctx
        tx._cancel_headers = None
        if tx.state is PROCEEDING:
            tx._arm(tx.timer_cancel, self.config.b)
        return ctx

    def _build_ack(self, invite: Request, response: Response) -> Request:
        """RFC 3261 §17.1.1.3: the ACK to a non-2xx final, built by the transaction."""
        items = [("Via", invite.headers.values("Via")[0])]
        items += [("Route", r) for r in invite.headers.get_all("Route")]
        items += [
            ("Max-Forwards", "70"),
            ("From", invite.headers.get("From") or ""),
            ("To", response.headers.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.seq} ACK"),
        ]
        return Request("ACK", invite.uri, Headers(items))

    def _start_client(self, cls: type[ClientTransaction], request: Request, dest: Address,
                      wire: bytes) -> ClientTransaction:
        key = (request.branch, request.method)
        tx = cls(self, request, key, dest, wire)
        self._clients[key] = tx
        tx._start()
        return tx

    def _add_via(self, request: Request, dest: Address) -> tuple[Request, Address, bytes]:
        """Put our Via on top and choose the transport (RFC 3261 §18.1.1, RFC 3581 rport)."""
        branch = MAGIC_COOKIE + random_hex(8)
        stamped = request.with_headers(request.headers.add("Via", self._via(dest, branch), first=True))
        wire = stamped.serialize()
        if dest.transport == "udp" and len(wire) > UDP_SIZE_LIMIT:
            dest = Address("tcp", dest.host, dest.port)
            stamped = request.with_headers(request.headers.add("Via", self._via(dest, branch), first=True))
            wire = stamped.serialize()
        return stamped, dest, wire

    def _via(self, dest: Address, branch: str) -> str:
        transport = dest.transport
        host, port = self._local(dest)
        if ":" in host:
            host = f"[{host}]"
        return f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport"

    # -- bookkeeping ---------------------------------------------------------------------------

    def _expect_ack(self, tx: InviteServerTransaction, response: Response) -> None:
        req = tx.request
        tx.ack_key = (req.call_id, req.cseq.seq, req.from_tag, response.to_tag)
        self._accepted[tx.ack_key] = tx

    def undeliverable(self, wires: list[bytes], dest: Address) -> int:
        """The transport could not deliver `wires` (the very bytes objects it was given) to `dest`,
        e.g. a TCP connection was refused: the client transactions that sent them end now with a
        transport error (RFC 3261 §17.1.4). Returns how many ended."""
        sent = {id(w) for w in wires}
        failed = [tx for tx in self._clients.values()
                  if id(tx._wire) in sent and tx.dest == dest and tx.state is not TERMINATED]
        for tx in failed:
            tx._terminate(tell_tu=False)
            self.transport_errors += 1
            tx._transport_failed()
        return len(failed)

    def _forget(self, tx: Transaction) -> None:
        if isinstance(tx, ClientTransaction):
            if self._clients.get(tx.key) is tx:
                del self._clients[tx.key]
            return
        if self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
        ack_key = getattr(tx, "ack_key", None)
        if ack_key is not None and self._accepted.get(ack_key) is tx:
            del self._accepted[ack_key]


# -- helpers -----------------------------------------------------------------------------------------


def _server_key(request: Request, method: str | None = None) -> tuple:
    """RFC 3261 §17.2.3. An ACK belongs to the INVITE transaction; `method` overrides (CANCEL)."""
    via = request.top_via
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    # RFC 2543 fallback: Request-URI, From tag, Call-ID, CSeq, top Via (To tag checked apart).
    # The Via is compared without received/rport, which we stamp ourselves.
    via_id = (via.transport, via.host.lower(), via.port,
              tuple(p for p in via.params if p[0].lower() not in ("received", "rport")))
    return (_LEGACY, str(request.uri), request.from_tag, request.call_id, request.cseq.seq, method, via_id)


def _stamp_via(request: Request, source: Address) -> Request:
    """RFC 3261 §18.2.1 `received`, RFC 3581 §4 `rport`: what the TU sees and responses copy."""
    via = request.top_via
    stamped = via
    force_received = False
    if via.has_param("rport") and via.param("rport") is None:
        stamped = stamped.with_param("rport", str(source.port))
        force_received = True  # RFC 3581 §4: received even when equal to sent-by
    if force_received or via.host_bare != source.host:
        stamped = stamped.with_param("received", source.host)
    if stamped is via:
        return request
    return request.with_top_via(stamped)


def response_destination(via: Via, source: Address) -> Address:
    """RFC 3261 §18.2.2 with RFC 3581 §4: where responses to a request go."""
    if source.reliable:
        return source  # back over the same connection
    port = via.port or 5060
    maddr = via.param("maddr")
    if maddr:
        return Address(source.transport, maddr.strip("[]"), port)
    if via.has_param("rport"):
        port = source.port
    return Address(source.transport, source.host, port)


__all__ = [
    "ACCEPTED", "CALLING", "COMPLETED", "CONFIRMED", "PROCEEDING", "TERMINATED", "TRYING",
    "ClientTransaction", "InviteClientTransaction", "InviteServerTransaction",
    "NonInviteClientTransaction", "NonInviteServerTransaction", "ServerTransaction",
    "TimerConfig", "Transaction", "TransactionError", "TransactionLayer", "TransactionUser",
    "TxState", "UDP_SIZE_LIMIT",
]
