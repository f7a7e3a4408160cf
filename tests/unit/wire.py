"""A fake wire for driving the sans-IO core in virtual time.

`Wire` owns a Scheduler and a Core whose `send` appends to a list; tests inject raw SIP text as if
it came from a peer address, and read back the parsed messages the core sent to each address.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from b2bua.config import load_settings
from b2bua.core import Core
from b2bua.sip.address import Address
from b2bua.sip.message import Request, Response
from b2bua.sip.parser import parse_message
from b2bua.sip.scheduler import Scheduler
from rtp_relay.control import ControlCore
from rtp_relay.ports import PortAllocator
from rtp_relay.session import Relay, RelayConfig

from .test_rtp_session import FakeOpener


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def info(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    debug = warning = error = info


CALLER = Address("udp", "127.0.0.1", 5070)
PBX = Address("udp", "127.0.0.1", 5080)
_counter = itertools.count(1)


RELAY = ("127.0.0.1", 2223)


@dataclass
class Wire:
    """`relay=True`: media goes through a real in-process rtp_relay (sans-IO `Relay` behind its ng
    `ControlCore`). With `auto_pump` the relay answers each ng datagram as it is sent; without,
    datagrams wait in `ng_out` until the test calls `pump()`."""

    overrides: dict = field(default_factory=dict)
    relay: bool = False
    auto_pump: bool = True

    def __post_init__(self) -> None:
        media = {"enabled": True, "relays": [f"{RELAY[0]}:{RELAY[1]}"]} if self.relay else {"enabled": False}
        settings = load_settings(environ={}, overrides={
            "sip": {"listen": ["127.0.0.1:5060"]},
            "routing": {"next_hop": "127.0.0.1:5080"},
            "media": media,
            **self.overrides,
        })
        self.sched = Scheduler(1000.0)
        self.sent: list[tuple[Request | Response, Address]] = []
        self.log = _Log()
        self.ng_out: list[tuple[bytes, tuple[str, int]]] = []
        self.relay_down = False  # drop every ng datagram, as if the relay process died
        self.rtp: Relay | None = None
        self.control: ControlCore | None = None
        if self.relay:
            self.rtp = Relay(RelayConfig("127.0.0.1"), PortAllocator(30000, 30099), FakeOpener())
            self.control = ControlCore(self.rtp)
        self.core = Core(settings, self.sched, self._send, self.log, send_ng=self._send_ng if self.relay else None)
        self.core.start()
        self._auto()

    def _send_ng(self, data: bytes, dest: tuple[str, int]) -> None:
        self.ng_out.append((data, dest))
        if self.auto_pump and len(self.ng_out) == 1:
            self.pump()  # the relay answers at once (pump is not re-entered from its own replies)

    def pump(self) -> int:
        """Deliver queued ng requests to the relay and its replies to the core; returns how many."""
        n = 0
        while self.ng_out and n < 1000:
            data, dest = self.ng_out.pop(0)
            n += 1
            if self.relay_down or dest != RELAY or self.control is None:
                continue
            reply = self.control.receive(data, ("127.0.0.1", 40000), self.sched.now)
            if reply is not None:
                self.core.receive_ng(reply, RELAY)
        return n

    def _auto(self) -> None:
        if self.auto_pump:
            self.pump()

    def _send(self, data: bytes, dest: Address) -> None:
        self.sent.append((parse_message(data), dest))

    def inject(self, text: str, source: Address = CALLER, body: str = "") -> None:
        head = text.strip("\n").replace("\n", "\r\n")
        raw = f"{head}\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}".encode()
        self.core.receive(raw, source)
        self._auto()

    def advance(self, seconds: float) -> None:
        self.sched.advance(self.sched.now + seconds)
        self._auto()

    def take(self, dest: Address | None = None) -> list[Request | Response]:
        """Messages sent (to `dest`) since the last take, oldest first."""
        out = [m for m, d in self.sent if dest is None or d == dest]
        self.sent = [(m, d) for m, d in self.sent if dest is not None and d != dest]
        return out

    def requests(self, dest: Address, method: str) -> list[Request]:
        return [m for m, d in self.sent if d == dest and isinstance(m, Request) and m.method == method]

    def responses(self, dest: Address, status: int | None = None) -> list[Response]:
        return [m for m, d in self.sent
                if d == dest and isinstance(m, Response) and (status is None or m.status == status)]


def same_sdp(body: bytes, sdp: str) -> bool:
    """Equal but for the o= line, which each leg writes as its own (RFC 3264 §8)."""
    def strip(text: str) -> list[str]:
        return [line for line in text.split("\r\n") if not line.startswith("o=")]
    return strip(body.decode()) == strip(sdp)


def origin(body: bytes) -> list[str]:
    """The o= line's fields: username, sess-id, sess-version, nettype, addrtype, address."""
    return next(line[2:].split() for line in body.decode().split("\r\n") if line.startswith("o="))


SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def invite(call_id: str | None = None, *, branch: str | None = None, extra: str = "", user: str = "bob",
           max_forwards: int = 70) -> tuple[str, str]:
    n = next(_counter)
    call_id = call_id or f"call-{n}@127.0.0.1"
    branch = branch or f"z9hG4bKinv{n}"
    text = f"""INVITE sip:{user}@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport
From: "Alice" <sip:alice@127.0.0.1:5070>;tag=atag{n}
To: <sip:{user}@127.0.0.1:5060>
Call-ID: {call_id}
CSeq: 1 INVITE
Max-Forwards: {max_forwards}
Contact: <sip:alice@127.0.0.1:5070>
Content-Type: application/sdp
X-Account: 42
P-Asserted-Identity: <sip:+15550001@127.0.0.1>
Secret-Header: nope{extra}"""
    return text, call_id


def response_to(req: Request, status: int, reason: str, *, to_tag: str | None = "btag",
                contact: str = "<sip:bob@127.0.0.1:5080>", extra: str = "") -> str:
    lines = [f"SIP/2.0 {status} {reason}"]
    for name, value in req.headers:
        if name in ("Via", "From", "Call-ID", "CSeq"):
            lines.append(f"{name}: {value}")
        elif name == "To":
            lines.append(f"To: {value}" + (f";tag={to_tag}" if to_tag and status > 100 else ""))
    if contact and status > 100:
        lines.append(f"Contact: {contact}")
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def in_dialog(method: str, msg: Request | Response, *, cseq: int, branch: str, from_side_is_to: bool,
              via: str = "127.0.0.1:5070", extra: str = "") -> str:
    """A request inside the dialog `msg` belongs to, sent by the peer.

    from_side_is_to: the peer is the party in `msg`'s To header (it sends with From=To swapped).
    """
    frm, to = (msg.headers.get("To"), msg.headers.get("From")) if from_side_is_to else (
        msg.headers.get("From"), msg.headers.get("To"))
    text = f"""{method} sip:b2bua@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP {via};branch={branch}
From: {frm}
To: {to}
Call-ID: {msg.call_id}
CSeq: {cseq} {method}
Max-Forwards: 70"""
    return text + (f"\n{extra}" if extra else "")
