"""NgClient against a real rtp_relay ControlCore over a fake in-process wire, in virtual time."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from b2bua.media.ng_client import NgClient
from b2bua.sip.scheduler import Scheduler
from rtp_relay import bencode
from rtp_relay.control import ControlCore
from rtp_relay.ports import PortAllocator
from rtp_relay.session import Relay, RelayConfig

from .test_rtp_session import A, B, FakeOpener, sdp

Addr = tuple[str, int]

CLIENT = ("10.0.0.1", 5060)  # where the relays see the B2BUA's requests come from
R1 = ("127.0.0.1", 2223)
R2 = ("127.0.0.2", 2223)
R3 = ("127.0.0.3", 2223)
ADVERTISED = {R1: "203.0.113.1", R2: "203.0.113.2", R3: "203.0.113.3"}


class FakeWire:
    """UDP between one NgClient and real relays (ControlCore + session.Relay), in virtual time.

    With `delay` 0 a datagram is delivered inside `send` (synchronously, which also proves the
    client copes with a reply arriving before `request` returns); otherwise each direction takes
    `delay` seconds of scheduler time. A test can drop the next N requests or replies, duplicate
    replies, kill a relay (everything to and from it vanishes), make `send` raise OSError, make
    replies appear to come from another address, or rewrite reply bodies.
    """

    def __init__(self, relays: tuple[Addr, ...] = (R1,), **client_kw: Any) -> None:
        self.scheduler = Scheduler()
        self.cores: dict[Addr, ControlCore] = {
            addr: ControlCore(Relay(RelayConfig(ADVERTISED[addr]), PortAllocator(30000, 30099), FakeOpener()))
            for addr in relays
        }
        self.client = NgClient(self.scheduler, self.send, **client_kw)
        self.sent: list[tuple[float, bytes, Addr]] = []
        self.delay = 0.0
        self.drop_requests = 0
        self.drop_replies = 0
        self.duplicate = False
        self.dead: set[Addr] = set()
        self.unreachable: set[Addr] = set()
        self.reply_source: dict[Addr, Addr] = {}
        self.tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def send(self, data: bytes, addr: Addr) -> None:
        self.sent.append((self.scheduler.now, data, addr))
        if addr in self.unreachable:
            raise OSError(errno.EHOSTUNREACH, "No route to host")
        if addr in self.dead:
            return
        if self.drop_requests:
            self.drop_requests -= 1
            return
        self._after_delay(lambda: self._serve(data, addr))

    def _after_delay(self, deliver: Callable[[], None]) -> None:
        if self.delay:
            self.scheduler.call_later(self.delay, deliver)
        else:
            deliver()

    def _serve(self, data: bytes, addr: Addr) -> None:
        if addr in self.dead:
            return
        reply = self.cores[addr].receive(data, CLIENT, self.scheduler.now)
        assert reply is not None
        if self.drop_replies:
            self.drop_replies -= 1
            return
        if self.tamper is not None:
            cookie, _, body = reply.partition(b" ")
            reply = cookie + b" " + bencode.encode(self.tamper(bencode.decode(body)))
        source = self.reply_source.get(addr, addr)
        for _ in range(2 if self.duplicate else 1):
            self._after_delay(lambda: None if addr in self.dead else self.client.receive(reply, source))

    def times_sent(self, addr: Addr = R1) -> list[float]:
        return [t for t, _, a in self.sent if a == addr]

    def run(self, message: dict[str, Any], relay: Addr = R1) -> list[tuple[float, dict[str, Any] | None]]:
        """Start a request; the returned list fills with (time, reply) as done is called."""
        calls: list[tuple[float, dict[str, Any] | None]] = []
        self.client.request(relay, message, lambda reply: calls.append((self.scheduler.now, reply)))
        return calls


def offer(call_id: str, tag: str = "ta") -> dict[str, Any]:
    return {"command": "offer", "call-id": call_id, "from-tag": tag, "sdp": sdp(A, 4000)}


@pytest.fixture
def wire() -> FakeWire:
    return FakeWire(cookie_prefix="b2b")


# -- round trips through the real relay ------------------------------------------------------------


def test_ping_round_trip(wire: FakeWire) -> None:
    calls = wire.run({"command": "ping"})
    assert calls == [(0.0, {"result": "pong"})]
    assert wire.sent == [(0.0, b"b2b_1 d7:command4:pinge", R1)]
    c = wire.client
    assert (c.requests, c.replies, c.retransmissions, c.timeouts, c.bad_replies, c.in_flight) == (1, 1, 0, 0, 0, 0)
    assert len(wire.scheduler) == 0  # the retransmission timer was cancelled
    wire.scheduler.advance(10.0)
    assert len(wire.sent) == 1 and len(calls) == 1


def test_offer_answer_query_list_delete(wire: FakeWire) -> None:
    core = wire.cores[R1]
    [(_, r)] = wire.run(offer("call-1"))
    assert r is not None and r["result"] == "ok"
    assert isinstance(r["sdp"], bytes) and b"c=IN IP4 203.0.113.1\r\n" in r["sdp"]
    assert core.relay.ports.ports_in_use == 4

    [(_, r)] = wire.run({"command": "answer", "call-id": "call-1", "from-tag": "ta", "to-tag": "tb",
                         "sdp": sdp(B, 5000)})
    assert r is not None and r["result"] == "ok"
    assert isinstance(r["sdp"], bytes) and b"c=IN IP4 203.0.113.1\r\n" in r["sdp"]

    [(_, q)] = wire.run({"command": "query", "call-id": "call-1"})
    assert q is not None and q["result"] == "ok"
    # nested dictionaries and lists are text, integers stay integers
    assert q["tags"]["ta"]["tag"] == "ta" and q["tags"]["ta"]["in dialogue with"] == "tb"
    assert q["tags"]["tb"]["medias"][0]["type"] == "audio"
    assert q["tags"]["tb"]["medias"][0]["flags"] == []
    assert q["timed out"] == 0 and q["totals"]["RTP"]["packets"] == 0

    [(_, listed)] = wire.run({"command": "list", "limit": 10})
    assert listed == {"result": "ok", "calls": ["call-1"], "timed-out": []}

    [(_, d)] = wire.run({"command": "delete", "call-id": "call-1"})
    assert d is not None and d["result"] == "ok"
    assert core.relay.ports.ports_in_use == 0

    [(_, gone)] = wire.run({"command": "query", "call-id": "call-1"})
    assert gone == {"result": "error", "error-reason": "Unknown call-id"}
    assert wire.client.replies == 6 and wire.client.in_flight == 0


def test_cookies_are_unique_per_client_and_per_request() -> None:
    sent: list[bytes] = []
    a = NgClient(Scheduler(), lambda data, addr: sent.append(data))
    b = NgClient(Scheduler(), lambda data, addr: sent.append(data))
    for client in (a, b, a, b):
        client.request(R1, {"command": "ping"}, lambda reply: None)
    cookies = [d.partition(b" ")[0] for d in sent]
    assert len(set(cookies)) == 4
    prefix_a, prefix_b = (c.rpartition(b"_")[0] for c in cookies[:2])
    assert prefix_a != prefix_b and len(prefix_a) == 12
    assert [c.rpartition(b"_")[2] for c in cookies] == [b"1", b"1", b"2", b"2"]


# -- retransmission and give-up --------------------------------------------------------------------


def test_retransmits_identical_datagram_then_gives_up(wire: FakeWire) -> None:
    wire.dead.add(R1)
    calls = wire.run({"command": "ping"})
    wire.scheduler.advance(3.49)
    assert wire.times_sent() == [0.0, 0.5, 1.5]
    assert {data for _, data, _ in wire.sent} == {b"b2b_1 d7:command4:pinge"}
    assert calls == [] and wire.client.in_flight == 1
    wire.scheduler.advance(3.5)
    assert calls == [(3.5, None)]
    wire.scheduler.advance(100.0)
    assert calls == [(3.5, None)] and len(wire.sent) == 3
    c = wire.client
    assert (c.requests, c.retransmissions, c.timeouts, c.replies, c.in_flight) == (1, 2, 1, 0, 0)


def test_custom_retransmit_schedule() -> None:
    wire = FakeWire(retransmit=(0.1, 0.2, 0.4, 0.8))
    wire.dead.add(R1)
    calls = wire.run({"command": "ping"})
    wire.scheduler.advance(10.0)
    assert wire.times_sent() == pytest.approx([0.0, 0.1, 0.3, 0.7])
    assert calls == [(pytest.approx(1.5), None)]
    assert wire.client.retransmissions == 3 and wire.client.timeouts == 1


def test_lost_request_answered_on_retransmission(wire: FakeWire) -> None:
    wire.drop_requests = 1
    calls = wire.run(offer("c"))
    assert calls == []
    wire.scheduler.advance(0.5)
    assert [t for t, _ in calls] == [0.5] and calls[0][1] is not None and calls[0][1]["result"] == "ok"
    assert wire.cores[R1].retransmissions == 0  # the first copy never reached the relay
    wire.scheduler.advance(10.0)
    assert len(calls) == 1 and wire.client.retransmissions == 1 and wire.client.timeouts == 0


def test_lost_reply_answered_from_the_relay_cache(wire: FakeWire) -> None:
    wire.drop_replies = 1
    calls = wire.run(offer("c"))
    wire.scheduler.advance(0.5)
    assert len(calls) == 1 and calls[0][0] == 0.5
    reply = calls[0][1]
    assert reply is not None and reply["result"] == "ok" and isinstance(reply["sdp"], bytes)
    core = wire.cores[R1]
    assert core.retransmissions == 1  # the repeat was answered from the cache...
    assert core.relay.ports.ports_in_use == 4  # ...so the offer allocated once
    assert core.relay.commands[("offer", "ok")] == 1
    wire.scheduler.advance(10.0)
    assert len(calls) == 1


def test_slow_reply_crossing_a_retransmission_is_taken_once(wire: FakeWire) -> None:
    wire.delay = 0.4  # round trip 0.8 s, longer than the first retransmission delay
    calls = wire.run(offer("c"))
    wire.scheduler.advance(10.0)
    assert [t for t, _ in calls] == [pytest.approx(0.8)]
    assert wire.times_sent() == [0.0, 0.5]  # the first reply cancelled the timer before 1.5
    assert wire.cores[R1].retransmissions == 1
    assert wire.client.replies == 1 and wire.client.bad_replies == 1  # the cached copy came late
    assert wire.client.in_flight == 0 and wire.client.timeouts == 0


def test_duplicated_reply_calls_done_once(wire: FakeWire) -> None:
    wire.duplicate = True
    calls = wire.run({"command": "ping"})
    assert calls == [(0.0, {"result": "pong"})]
    assert wire.client.replies == 1 and wire.client.bad_replies == 1


def test_send_error_counts_as_a_lost_datagram(wire: FakeWire) -> None:
    wire.unreachable.add(R1)
    calls = wire.run({"command": "ping"})
    wire.scheduler.advance(1.0)
    assert wire.times_sent() == [0.0, 0.5] and calls == [] and wire.client.send_errors == 2
    wire.unreachable.clear()  # the route comes back before the next retransmission
    wire.scheduler.advance(1.5)
    assert calls == [(1.5, {"result": "pong"})]
    assert wire.client.timeouts == 0 and wire.client.send_errors == 2


def test_send_error_every_time_gives_up(wire: FakeWire) -> None:
    wire.unreachable.add(R1)
    calls = wire.run({"command": "ping"})
    wire.scheduler.advance(5.0)
    assert calls == [(3.5, None)] and wire.client.send_errors == 3 and wire.client.timeouts == 1


# -- replies that are not ours ---------------------------------------------------------------------


def test_reply_from_the_wrong_source_is_ignored(wire: FakeWire) -> None:
    wire.reply_source[R1] = ("127.0.0.9", 2223)
    calls = wire.run({"command": "ping"})
    wire.scheduler.advance(5.0)
    assert calls == [(3.5, None)]
    assert wire.client.bad_replies == 3 and wire.client.replies == 0 and wire.client.timeouts == 1


def test_reply_from_the_right_host_but_wrong_port_is_ignored(wire: FakeWire) -> None:
    wire.reply_source[R1] = (R1[0], R1[1] + 1)
    calls = wire.run({"command": "ping"})
    assert calls == [] and wire.client.bad_replies == 1


def test_garbage_and_unknown_cookies_are_counted_and_ignored(wire: FakeWire) -> None:
    wire.dead.add(R1)
    calls = wire.run({"command": "ping"})
    cookie = wire.sent[0][1].partition(b" ")[0]
    client = wire.client
    for data in (b"", b"garbage", b"b2b_99 d6:result4:ponge", cookie + b" not-bencode", cookie + b" i42e",
                 cookie + b" ", cookie + b"d6:result4:ponge", b" d6:result4:ponge", b"\xff\x00 \xff"):
        client.receive(data, R1)
    assert client.bad_replies == 9 and calls == [] and client.in_flight == 1
    client.receive(cookie + b" d6:result4:ponge", R1)  # still waiting: the real reply is taken
    assert calls == [(0.0, {"result": "pong"})] and client.replies == 1
    client.receive(cookie + b" d6:result4:ponge", R1)
    assert client.bad_replies == 10 and len(calls) == 1


def test_non_utf8_text_is_replaced_and_sdp_stays_bytes(wire: FakeWire) -> None:
    wire.tamper = lambda r: {**r, "error-reason": b"bad \xff byte", "sdp": b"v=0\r\n\xff"}
    [(_, reply)] = wire.run({"command": "ping"})
    assert reply == {"result": "pong", "error-reason": "bad \ufffd byte", "sdp": b"v=0\r\n\xff"}


def test_ipv6_source_with_flowinfo_and_scope_matches() -> None:
    sent: list[bytes] = []
    client = NgClient(Scheduler(), lambda data, addr: sent.append(data))
    calls: list[dict[str, Any] | None] = []
    client.request(("::1", 2223), {"command": "ping"}, calls.append)
    cookie = sent[0].partition(b" ")[0]
    client.receive(cookie + b" d6:result4:ponge", ("::1", 2223, 0, 0))
    assert calls == [{"result": "pong"}]


# -- callbacks that raise --------------------------------------------------------------------------


class Boom(Exception):
    pass


def raise_boom(reply: object) -> None:
    raise Boom


def test_raising_done_on_reply_leaves_the_client_clean(wire: FakeWire) -> None:
    wire.delay = 0.1
    wire.client.request(R1, {"command": "ping"}, raise_boom)
    with pytest.raises(Boom):
        wire.scheduler.advance(0.2)
    assert wire.client.in_flight == 0 and wire.client.replies == 1
    wire.scheduler.advance(10.0)  # no retransmission left armed
    assert len(wire.sent) == 1 and wire.client.timeouts == 0
    calls = wire.run({"command": "ping"})
    wire.scheduler.advance(10.5)
    assert calls == [(pytest.approx(10.2), {"result": "pong"})]


def test_raising_done_on_give_up_leaves_the_client_clean(wire: FakeWire) -> None:
    wire.dead.add(R1)
    wire.client.request(R1, {"command": "ping"}, raise_boom)
    with pytest.raises(Boom):
        wire.scheduler.advance(5.0)
    assert wire.client.in_flight == 0 and wire.client.timeouts == 1 and len(wire.scheduler) == 0


def test_unencodable_message_raises_and_leaves_nothing_pending(wire: FakeWire) -> None:
    with pytest.raises(bencode.BencodeError):
        wire.client.request(R1, {"command": object()}, lambda reply: None)
    assert wire.client.in_flight == 0 and wire.client.requests == 0 and wire.sent == []


@pytest.mark.parametrize("kw", [{"retransmit": ()}, {"retransmit": (0.5, 0.0)}, {"cookie_prefix": "a b"},
                                {"cookie_prefix": ""}])
def test_bad_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        NgClient(Scheduler(), lambda data, addr: None, **kw)
