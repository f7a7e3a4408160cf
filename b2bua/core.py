"""The B2BUA core: from bytes received to calls, with no I/O of its own.

How this works: the I/O shell hands every datagram or stream frame to `Core.receive(data, source)`
after moving the shared `Scheduler` to the current time. The core parses it (a malformed request
that can be answered gets its 400/505 here, statelessly; anything else malformed is counted and
dropped), feeds it to the transaction layer, and receives back, as the layer's transaction user,
new requests, responses, and timeouts. Requests that belong to a leg (by Call-ID and our tag) go to
that leg's `Call`; new INVITEs pass the admission checks (416, 420, 483, 503 while draining or full,
404 without a route) and become calls; OPTIONS is answered here. Everything the core sends leaves
through the `send(data, address)` callable the shell gave it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .call.call import Call, release_requests
from .call.capabilities import ALLOW, SUPPORTED
from .call.consultation import find_leg, same_peer_address
from .call.header_policy import HeaderPolicy
from .call.leg import Leg
from .call.transfer_policy import ReferRateLimiter, TargetPolicy
from .config import Settings, parse_hostport
from .media.ng_client import NgClient
from .media.relay_pool import Relay, RelayPool
from .media.session import MediaSession, PassThroughMedia
from .metrics import Stats
from .randomness import random_hex
from .routing.static import StaticRouter
from .sip.address import Address
from .sip.headers import HeaderError, parse_replaces
from .sip.message import Request, Response, build_response, reason_for
from .sip.parser import ParseError, parse_message
from .sip.scheduler import Scheduler
from .sip.transaction import TimerConfig, TransactionLayer, response_destination
from .sip.uri import AbsoluteUri, SipUri, forget_parsed

SUPPORTED_EXTENSIONS = SUPPORTED  # option tags we implement (RFC 3261 §8.2.2.3)
KNOWN_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "UPDATE", "INFO",
                           "MESSAGE", "NOTIFY", "SUBSCRIBE", "REFER", "PRACK", "PUBLISH"})


class Core:
    def __init__(self, settings: Settings, scheduler: Scheduler, send: Callable[[bytes, Address], None],
                 log: Any, stats: Stats | None = None,
                 send_ng: Callable[[bytes, tuple[str, int]], None] | None = None) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.stats = stats or Stats()
        self.log = log
        self._send = send
        sip = settings.sip
        # What we write in Via and Contact: a listen address of the destination's family (so an
        # IPv6 peer is never told to reach us at an IPv4 address), or the advertised host.
        self._listen = [parse_hostport(item) for item in sip.listen]
        self.local_host, self.local_port = self._listen[0]
        self._advertised = sip.advertised_host
        self.tl = TransactionLayer(
            scheduler, self, self._send, self._local,
            TimerConfig(t1=sip.t1_ms / 1000, t2=sip.t2_ms / 1000, t4=sip.t4_ms / 1000),
        )
        self.router = StaticRouter(settings.routing)
        self.policy = HeaderPolicy(settings.calls.pass_headers)
        self.no_answer_timeout = settings.calls.no_answer_timeout_s
        self.transfers = settings.transfers
        self.target_policy = TargetPolicy(settings.transfers)
        self.refer_limiter = ReferRateLimiter.from_settings(settings.transfers)
        media = settings.media
        self.media_timeout = media.timeout_s
        self.media_check_interval = media.check_interval_s
        self.ng: NgClient | None = None
        self.relays: RelayPool | None = None
        # ng call-ids start with this, so that a restarted daemon can find and release what it left.
        self.media_prefix = f"{media.instance_id or f'b2bua-{self.local_host}:{self.local_port}'}/"
        if media.enabled:
            if send_ng is None or not media.relays:
                raise ValueError("media relaying is on: the core needs relay addresses and a way to reach them")
            self.ng = NgClient(scheduler, send_ng, tuple(d / 1000 for d in media.ng_retransmit_ms))
            self.relays = RelayPool(self.ng, scheduler, [parse_hostport(r, 2223) for r in media.relays],
                                    on_relay_down=self._relay_down, on_relay_up=self._relay_up,
                                    ping_interval=media.ping_interval_s)
        self.accepting = True
        self.calls: set[Call] = set()
        self._legs: dict[tuple[str, str], Leg] = {}
        self._tx_owner: dict[Any, Leg] = {}  # transactions a call is waiting on -> its leg
        self._call_txs: dict[Call, list[Any]] = {}
        self._a_invites: dict[Any, Call] = {}  # caller's INVITE server tx -> call (CANCEL matching)
        self.compactors: list[Callable[[], None]] = []  # other tables of calls to shrink (`compact`)
        # Called with (call, event, fields) for every call event the log gets (the API's event stream).
        self.listeners: list[Callable[[Call, str, dict[str, Any]], None]] = []

    # -- input from the shell ------------------------------------------------------------------

    def receive(self, data: bytes, source: Address) -> None:
        try:
            msg = parse_message(data)
        except ParseError as exc:
            self.stats.malformed[exc.kind] += 1
            if exc.answerable and exc.request is not None and exc.request.method != "ACK":
                resp = build_response(exc.request, exc.status, f"{reason_for(exc.status)} ({exc.reason})")
                self.stats.responses_out[exc.status] += 1
                self._send(resp.serialize(), response_destination(exc.request.top_via, source))
            return
        if isinstance(msg, Request):
            self.stats.requests_in[msg.method] += 1
        else:
            self.stats.responses_in[msg.status] += 1
        self.tl.receive(msg, source)

    def receive_ng(self, data: bytes, source: tuple[str, int]) -> None:
        """A datagram on the media relay control socket (an ng reply)."""
        if self.ng is not None:
            self.ng.receive(data, source)

    # -- TransactionUser ---------------------------------------------------------------------------

    def on_request(self, tx: Any, request: Request, source: Address) -> None:
        method = request.method
        if method == "ACK":
            leg = self._legs.get((request.call_id, request.to_tag or ""))
            if leg is not None:
                leg.call.on_ack(leg, request)
            return
        if method == "CANCEL":
            invite_tx = self.tl.find_invite_for_cancel(request)
            call = self._a_invites.get(invite_tx) if invite_tx is not None else None
            self.respond(tx, build_response(request, 200 if call is not None else 481))
            if call is not None:
                call.on_cancel(invite_tx)
            return
        to_tag = request.to_tag
        if to_tag:
            leg = self._legs.get((request.call_id, to_tag))
            if leg is not None:
                leg.call.on_request(leg, tx, request)
            elif method == "OPTIONS":
                self._answer_options(tx, request)
            else:
                self.respond(tx, build_response(request, 481))
            return
        self._new_request(tx, request, source)

    def _new_request(self, tx: Any, request: Request, source: Address) -> None:
        method = request.method
        uri = request.uri
        if not isinstance(uri, SipUri) and not (isinstance(uri, AbsoluteUri) and uri.scheme == "tel"):
            self.respond(tx, build_response(request, 416))
            return
        unknown = [t for t in request.option_tags("Require") if t not in SUPPORTED_EXTENSIONS]
        if unknown and method != "CANCEL":
            self.respond(tx, build_response(request, 420, headers=[("Unsupported", ", ".join(unknown))]))
            return
        if method == "OPTIONS":
            self._answer_options(tx, request)
        elif method == "INVITE":
            self._new_call(tx, request, source)
        elif method in ("BYE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"):
            self.respond(tx, build_response(request, 481))  # in-dialog methods without a dialog
        elif method in KNOWN_METHODS:
            self.respond(tx, build_response(request, 405, headers=[("Allow", ALLOW)]))
        else:
            self.respond(tx, build_response(request, 501))

    def _new_call(self, tx: Any, invite: Request, source: Address) -> None:
        if not self.accepting:
            self.respond(tx, build_response(invite, 503, "Service Unavailable (shutting down)",
                                            headers=[("Retry-After", "30")]))
            return
        if len(self.calls) >= self.settings.calls.max_calls:
            self.respond(tx, build_response(invite, 503, "Service Unavailable (call limit)",
                                            headers=[("Retry-After", "5")]))
            return
        mf = invite.max_forwards
        if mf is not None and mf <= 0:
            self.respond(tx, build_response(invite, 483))
            return
        if invite.headers.get("Replaces") is not None:
            self._invite_with_replaces(tx, invite, source)
            return
        route = self.router.decide(invite.uri)
        if route is None:
            self.respond(tx, build_response(invite, 404, "Not Found (no route)"))
            return
        call = Call(self, invite, tx, source, route.next_hop, transfer_mode=route.transfer_mode)
        self.calls.add(call)
        self._call_txs[call] = [tx]
        self._tx_owner[tx] = call.a
        self._a_invites[tx] = call
        call.start()

    def add_call(self, call: Call) -> bool:
        """Take on a call the B2BUA places itself (the control API's click-to-dial) and start it;
        False, and nothing started, while draining or at `calls.max_calls`."""
        if not self.accepting or len(self.calls) >= self.settings.calls.max_calls:
            call.let_go_of_legs()
            return False
        self.calls.add(call)
        self._call_txs[call] = []
        call.start()
        return True

    def _invite_with_replaces(self, tx: Any, invite: Request, source: Address) -> None:
        """RFC 3891: the INVITE takes the place of the leg its Replaces names (replacement.py)."""
        values = invite.headers.get_all("Replaces")
        refusal: tuple[int, str] | None = None
        replaces = None
        try:
            if len(values) != 1:
                raise HeaderError("several Replaces")
            replaces = parse_replaces(values[0])
        except HeaderError:
            refusal = (400, "Bad Request (malformed or repeated Replaces)")
        policy = self.transfers.replaces_policy
        leg = None
        if refusal is None and policy == "never":
            refusal = (403, "Forbidden (Replaces is not accepted)")
        elif refusal is None and replaces is not None:
            leg = find_leg(self.find_leg, replaces.call_id, replaces.to_tag, replaces.from_tag)
            if leg is None:
                refusal = (481, "Call/Transaction Does Not Exist (Replaces names no dialog of ours)")
            elif policy == "own_dialogs" and not (same_peer_address(leg, source) or _granted(leg, source, self.now())):
                refusal = (403, "Forbidden (Replaces names a dialog of another party)")
        if refusal is None and leg is not None and replaces is not None:
            call = leg.call
            started = call.accept_replacement(leg, invite, tx, source, replaces)
            if not isinstance(started, tuple):
                self._call_txs[call].append(tx)
                self._tx_owner[tx] = started.leg
                self._a_invites[tx] = call
                started.start()
                return
            refusal = started
        assert refusal is not None
        self.respond(tx, build_response(invite, refusal[0], refusal[1]))
        self.log.info("replaces_refused", call_id=invite.call_id, status=refusal[0], reason=refusal[1])

    def _answer_options(self, tx: Any, request: Request) -> None:
        self.respond(tx, build_response(request, 200, headers=[
            ("Allow", ALLOW), ("Accept", "application/sdp"), ("Server", self.settings.sip.user_agent)]))

    def on_response(self, tx: Any, response: Response) -> None:
        leg = self._tx_owner.get(tx)
        if leg is None:
            if response.is_success and tx.request.method == "INVITE":
                self._release_orphan_answer(tx, response)
            return
        call = leg.call
        if tx is call.b_invite_tx:
            call.on_invite_response(tx, response)
        else:
            call.on_response(leg, tx, response)

    def _release_orphan_answer(self, tx: Any, response: Response) -> None:
        """A 2xx to an INVITE whose call has ended: ACK it, and hang up a late fork of an initial
        INVITE (a re-INVITE's dialog was ended by the call's own BYE: only the ACK is due)."""
        ack, bye, dest = release_requests(tx.request, response, tx.dest)
        self.stats.requests_out["ACK"] += 1
        self.tl.send_ack(ack, dest)
        if tx.request.to_tag is None:
            self.stats.requests_out["BYE"] += 1
            self.tl.send_request(bye, dest)

    def on_stray_response(self, response: Response, source: Address) -> None:
        # A 2xx to our INVITE retransmitted after its transaction ended: repeat the ACK (§13.2.2.4).
        try:
            if response.is_success and response.cseq.method == "INVITE":
                leg = self._legs.get((response.call_id, response.from_tag or ""))
                if leg is not None:
                    leg.call.resend_ack(leg, response)
        except ValueError:
            self.stats.malformed["stray-response"] += 1

    def on_timeout(self, tx: Any) -> None:
        self._transaction_failed(tx, transport_error=False)

    def on_ended(self, tx: Any) -> None:
        """A transaction is over: nothing more will come of it, so it leaves our tables, and its
        call may let go of what it kept for it (a call lasts far longer than its transactions)."""
        self._a_invites.pop(tx, None)
        leg = self._tx_owner.pop(tx, None)
        if leg is None:
            return
        call = leg.owner
        if call is None:
            return  # its call has ended and let go of it (leg.py)
        txs = self._call_txs.get(call)
        if txs is not None and tx in txs:
            txs.remove(tx)
        call.transaction_ended(tx)

    def undeliverable(self, wires: list[bytes], dest: Address) -> None:
        """The transport dropped these messages to `dest` (a refused TCP connection)."""
        self.tl.undeliverable(wires, dest)

    def on_transport_error(self, tx: Any) -> None:
        self._transaction_failed(tx, transport_error=True)

    def _transaction_failed(self, tx: Any, transport_error: bool) -> None:
        leg = self._tx_owner.get(tx)
        if leg is None:
            return
        call = leg.call
        if tx is call.a_invite_tx:
            if not transport_error:
                call.on_a_invite_timeout()  # no ACK came (Timer H / L)
        elif tx is call.b_invite_tx:
            call.on_invite_failed(transport_error)
        else:
            call.on_timeout(leg, tx, transport_error)

    # -- CallContext -------------------------------------------------------------------------------

    def new_tag(self) -> str:
        return random_hex(6)

    def new_call_id(self) -> str:
        return f"{random_hex(12)}@{self.local_host}"

    def new_media(self, call: Call, key: str) -> MediaSession | PassThroughMedia:
        if self.relays is None:
            return PassThroughMedia()
        return MediaSession(self.relays, self.media_prefix + key)

    def now(self) -> float:
        return self.scheduler.now

    def route(self, uri: Any) -> Address | None:
        return self.router.route(uri)

    def check_transfer_target(self, uri: Any) -> str | None:
        return self.target_policy.check(uri)

    def refer_allowed(self, leg: Leg) -> bool:
        return self.refer_limiter.allow(leg.key, self.scheduler.now)

    def find_leg(self, call_id: str, local_tag: str) -> Leg | None:
        return self._legs.get((call_id, local_tag))

    def transfer_ended(self, call: Call, kind: str, result: str, seconds: float) -> None:
        self.stats.transfer_ended(kind, result, seconds)

    def media_event(self, call: Call, event: str, reason: str) -> None:
        self.stats.media_events[event] += 1
        self.log.warning("media_" + event, call_id=call.call_id, reason=reason)

    def _relay_down(self, relay: Relay) -> None:
        self.stats.media_events["relay_down"] += 1
        carried = [c for c in self.calls if c.media.relay is relay]
        self.log.error("media_relay_down", relay=relay.name, calls=len(carried))
        for call in carried:
            call.media_failed(f"relay {relay.name} stopped answering")

    def _relay_up(self, relay: Relay) -> None:
        self.stats.media_events["relay_up"] += 1
        self.log.info("media_relay_up", relay=relay.name)

    def contact_for(self, dest: Address, user: str | None = "b2bua") -> str:
        """`<sip:user@our address for dest>`: our Contact, or (another user) a URI that routes
        back through us, as a passthrough REFER's Refer-To does."""
        host, port = self._local(dest)
        if ":" in host:
            host = f"[{host}]"
        suffix = "" if dest.transport == "udp" else f";transport={dest.transport}"
        at = f"{user}@" if user else ""
        return f"<sip:{at}{host}:{port}{suffix}>"

    def send_request(self, leg: Leg, request: Request, dest: Address) -> Any:
        tx = self.tl.send_request(request, dest)
        self.stats.requests_out[request.method] += 1
        self._own(leg, tx)
        return tx

    def send_ack(self, leg: Leg, ack: Request, dest: Address) -> tuple[bytes, Address]:
        self.stats.requests_out["ACK"] += 1
        return self.tl.send_ack(ack, dest)

    def resend_ack(self, sent: tuple[bytes, Address]) -> None:
        self.stats.requests_out["ACK"] += 1
        self.tl.send_wire(*sent)

    def cancel(self, tx: Any) -> None:
        leg = self._tx_owner.get(tx)
        cancel_tx = self.tl.cancel(tx)
        if cancel_tx is not None:
            self.stats.requests_out["CANCEL"] += 1
            if leg is not None:
                self._own(leg, cancel_tx)

    def respond(self, tx: Any, response: Response) -> None:
        self.stats.responses_out[response.status] += 1
        tx.respond(response)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return self.scheduler.call_later(delay, callback)

    def register_leg(self, leg: Leg) -> None:
        self._legs[leg.key] = leg

    def call_ended(self, call: Call, result: str) -> None:
        self.calls.discard(call)
        for leg in call.all_legs():
            if leg.owner is not call:
                continue  # an attended transfer took it into another call, which goes on
            if self._legs.get(leg.key) is leg:
                del self._legs[leg.key]
            self.refer_limiter.forget(leg.key)
        for tx in self._call_txs.pop(call, ()):
            owner_leg = self._tx_owner.get(tx)
            owner_call = owner_leg.owner if owner_leg is not None else None
            if owner_call is not None and owner_call is not call and owner_call in self._call_txs:
                self._call_txs[owner_call].append(tx)  # a taken-over leg's transaction: still awaited
                continue
            self._tx_owner.pop(tx, None)
            self._a_invites.pop(tx, None)
        self.stats.calls[result] += 1
        self.log_event(call, "call_ended", result=result, b_call_id=call.first_b.call_id,
                       peer=str(call.first_b.peer), seconds=round(self.scheduler.now - call.started_at, 3))

    def log_event(self, call: Call, event: str, **fields: Any) -> None:
        # The steps every call takes are logged at debug: at info a call is one line, `call_ended`
        # (the per-call cost the benchmarks measure; a JSON line is ~10 us). Listeners (the API's
        # event stream) get every event whatever the level.
        log = self.log.debug if event in _ROUTINE_EVENTS else self.log.info
        log(event, call_id=call.call_id, **fields)
        for listener in self.listeners:
            listener(call, event, fields)

    def _own(self, leg: Leg, tx: Any) -> None:
        owner = leg.owner
        txs = self._call_txs.get(owner) if owner is not None else None
        if txs is None:
            return  # the call has ended (e.g. the BYE to a late fork): its answers need no owner
        self._tx_owner[tx] = leg
        txs.append(tx)

    def _local(self, dest: Address) -> tuple[str, int]:
        v6 = ":" in dest.host
        for host, port in self._listen:
            if (":" in host) == v6:
                return self._advertised or host, port
        return self._advertised or self.local_host, self.local_port

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start pinging the media relays and release sessions a previous run of ours left there."""
        if self.relays is not None:
            self.relays.start()
            self.relays.cleanup(self.media_prefix, self._cleaned_up)

    def _cleaned_up(self, count: int) -> None:
        if count:
            self.log.info("media_sessions_released", count=count, reason="left by a previous run")

    def stop(self) -> None:
        if self.relays is not None:
            self.relays.stop()

    # -- shutdown ----------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def hangup_all(self, reason: str) -> None:
        for call in list(self.calls):
            call.hangup(reason=reason)

    def compact(self) -> None:
        """Rebuild the tables at their present size (a dict keeps its peak size; trim.py), and
        forget the remembered parses (uri.forget_parsed): the peak's last calls' objects."""
        forget_parsed()
        self.calls = set(self.calls)
        self._legs = dict(self._legs)
        self._tx_owner = dict(self._tx_owner)
        self._call_txs = dict(self._call_txs)
        self._a_invites = dict(self._a_invites)
        self.refer_limiter.compact()
        self.scheduler.purge()
        self.tl.compact()
        for compact in self.compactors:
            compact()

    @property
    def load(self) -> int:
        """Calls plus transactions: what the daemon's memory follows."""
        return len(self.calls) + len(self.tl)

    @property
    def active_calls(self) -> int:
        return len(self.calls)


_ROUTINE_EVENTS = frozenset({"call_started", "call_answered", "bye_received"})


def _granted(leg: Leg, source: Address, now: float) -> bool:
    """A passthrough attended transfer sent `source`'s peer a Replaces naming `leg` (call.py)."""
    grant = leg.replaceable_from
    return grant is not None and grant[0] == source.host and now <= grant[1]
