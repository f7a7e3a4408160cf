"""The sans-IO relay: offer/answer/re-offer/delete/query, latching with fake sockets, timeouts."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from rtp_relay.forwarder import RelayPort
from rtp_relay.ports import PortAllocator
from rtp_relay.sdp import SessionDescription
from rtp_relay.session import CallExpired, MediaTimedOut, Relay, RelayConfig

RELAY_IP = "203.0.113.1"
A = "192.0.2.10"
B = "198.51.100.20"


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


class FakeOpener:
    """Binds nothing: attaches a FakeSocket at once, and can refuse chosen ports."""

    def __init__(self, busy: set[int] | None = None) -> None:
        self.busy = busy or set()
        self.open_ports: dict[int, RelayPort] = {}

    def open(self, rtp: RelayPort, rtcp: RelayPort) -> None:
        if rtp.port in self.busy or rtcp.port in self.busy:
            raise OSError(98, "Address already in use")
        for p in (rtp, rtcp):
            assert p.port not in self.open_ports
            self.open_ports[p.port] = p
            fake = FakeSocket()
            p.attach(fake)  # packets leave through it

    def close(self, port: RelayPort) -> None:
        del self.open_ports[port.port]

    def transport(self, port: int) -> FakeSocket:
        """What left through relay port `port`."""
        return self.open_ports[port].sock


def sdp(ip: str, port: int, direction: str = "sendrecv", extra: str = "", video: int | None = None) -> bytes:
    text = (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-15\r\na=x-unknown:keep me\r\na={direction}\r\n{extra}")
    if video is not None:
        text += f"m=video {video} RTP/AVP 99\r\na=rtpmap:99 H264/90000\r\n"
    return text.encode()


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xABCD) + b"\xff" * 160


@pytest.fixture
def relay() -> Relay:
    return Relay(RelayConfig(RELAY_IP, media_timeout=30, hold_timeout=600, timeout_delete=10),
                 PortAllocator(30000, 30099), FakeOpener())


def ng(relay: Relay, now: float = 0.0, **fields: Any) -> dict[str, Any]:
    msg = {k.replace("_", "-"): (v.encode() if isinstance(v, str) else v) for k, v in fields.items()}
    return relay.handle(msg, now)


def call(relay: Relay, call_id: str = "c1") -> tuple[SessionDescription, SessionDescription]:
    offer = ng(relay, command="offer", call_id=call_id, from_tag="ta", sdp=sdp(A, 4000))
    assert offer["result"] == "ok", offer
    answer = ng(relay, command="answer", call_id=call_id, from_tag="ta", to_tag="tb", sdp=sdp(B, 5000))
    assert answer["result"] == "ok", answer
    return SessionDescription.parse(offer["sdp"]), SessionDescription.parse(answer["sdp"])


def test_offer_answer_rewrites_and_keeps_everything_else(relay: Relay) -> None:
    to_b, to_a = call(relay)
    for out in (to_b, to_a):
        assert out.connection.address == RELAY_IP
        assert out.origin_address in (A, B)  # o= untouched without replace=origin
        text = out.to_text()
        assert "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=x-unknown:keep me\r\n" in text
    pb, pa = to_b.media[0].port, to_a.media[0].port  # B sends to pb, A sends to pa
    assert pb != pa and pb % 2 == 0 and pa % 2 == 0
    assert relay.ports.ports_in_use == 4
    # the SDP sent to B differs from A's only in the address and port
    assert to_b.to_text() == sdp(A, 4000).decode().replace(f"c=IN IP4 {A}", f"c=IN IP4 {RELAY_IP}").replace(
        "m=audio 4000", f"m=audio {pb}")


def test_replace_origin_and_a_rtcp(relay: Relay) -> None:
    r = ng(relay, command="offer", call_id="c", from_tag="x", replace=[b"origin", b"session-connection"],
           sdp=sdp(A, 4000, extra=f"a=rtcp:4001 IN IP4 {A}\r\n"))
    out = SessionDescription.parse(r["sdp"])
    assert out.origin_address == RELAY_IP
    assert out.media[0].attribute("rtcp") == f"{out.media[0].port + 1} IN IP4 {RELAY_IP}"


def test_media_flows_both_ways_and_latches(relay: Relay) -> None:
    to_b, to_a = call(relay)
    opener: FakeOpener = relay.opener  # type: ignore[assignment]
    pb, pa = to_b.media[0].port, to_a.media[0].port
    port_a, port_b = opener.open_ports[pa], opener.open_ports[pb]  # what A / B talk to
    # before any packet, A's packets go to B's signalled address, from B's port (symmetric)
    port_a.datagram_received(rtp(1), (A, 4000))
    assert opener.transport(pb).sent == [(rtp(1), (B, 5000))]
    # B is behind a NAT: its packets come from elsewhere; the relay learns that address
    port_b.datagram_received(rtp(1), ("192.0.2.99", 7777))
    assert opener.transport(pa).sent == [(rtp(1), (A, 4000))]
    port_a.datagram_received(rtp(2), (A, 4000))
    assert opener.transport(pb).sent[-1] == (rtp(2), ("192.0.2.99", 7777))
    # an injected packet from a third address is dropped and counted, nothing is sent
    port_b.datagram_received(b"evil", ("10.6.6.6", 1234))
    port_b.datagram_received(b"evil", (B, 5000))  # even from the signalled address, once latched
    assert len(opener.transport(pa).sent) == 1
    assert port_b.dropped == 2 and port_b.packets == 1 and port_a.packets == 2


def test_reoffer_keeps_ports_and_reopens_learning(relay: Relay) -> None:
    to_b, to_a = call(relay)
    opener: FakeOpener = relay.opener  # type: ignore[assignment]
    pb, pa = to_b.media[0].port, to_a.media[0].port
    port_a, port_b = opener.open_ports[pa], opener.open_ports[pb]
    port_b.datagram_received(rtp(1), (B, 5000))
    port_a.datagram_received(rtp(1), (A, 4000))
    # re-INVITE from B (B is now the offerer) moving B to a new port
    r = ng(relay, 5.0, command="offer", call_id="c1", from_tag="tb", to_tag="ta", sdp=sdp(B, 6000))
    assert SessionDescription.parse(r["sdp"]).media[0].port == pa  # A keeps talking to the same port
    assert port_b.source is None  # B learns again
    port_a.datagram_received(rtp(2), (A, 4000))
    assert opener.transport(pb).sent[-1] == (rtp(2), (B, 6000))
    port_b.datagram_received(rtp(2), (B, 6000))
    assert port_b.source == (B, 6000) and port_b.dropped == 0
    port_b.datagram_received(rtp(3), (B, 5000))  # the old address is now foreign
    assert port_b.dropped == 1
    r = ng(relay, 5.0, command="answer", call_id="c1", from_tag="tb", to_tag="ta", sdp=sdp(A, 4000))
    assert SessionDescription.parse(r["sdp"]).media[0].port == pb
    assert relay.ports.ports_in_use == 4


def test_first_reinvite_from_offerer_same_ports(relay: Relay) -> None:
    to_b, to_a = call(relay)
    r = ng(relay, command="offer", call_id="c1", from_tag="ta", to_tag="tb", sdp=sdp(A, 4000, "sendonly"))
    assert SessionDescription.parse(r["sdp"]).media[0].port == to_b.media[0].port
    r = ng(relay, command="answer", call_id="c1", from_tag="ta", to_tag="tb", sdp=sdp(B, 5000, "recvonly"))
    assert SessionDescription.parse(r["sdp"]).media[0].port == to_a.media[0].port
    q = ng(relay, command="query", call_id="c1")
    assert q["tags"]["ta"]["medias"][0]["flags"] == ["on hold"]


def test_several_m_lines_and_port_zero(relay: Relay) -> None:
    r = ng(relay, command="offer", call_id="c", from_tag="x", sdp=sdp(A, 4000, video=4002))
    out = SessionDescription.parse(r["sdp"])
    assert [m.port != 0 for m in out.media] == [True, True]
    assert relay.ports.ports_in_use == 8
    r = ng(relay, command="answer", call_id="c", from_tag="x", to_tag="y", sdp=sdp(B, 5000, video=0))
    out = SessionDescription.parse(r["sdp"])
    assert out.media[1].port == 0  # rejected video stays rejected
    assert relay.ports.ports_in_use == 4  # and its ports are released
    relay.ports.check()


def test_tcp_media_passes_through(relay: Relay) -> None:
    extra = "m=message 2855 TCP/MSRP *\r\nc=IN IP4 192.0.2.10\r\na=path:msrp://x\r\n"
    r = ng(relay, command="offer", call_id="c", from_tag="x", sdp=sdp(A, 4000, extra=extra))
    assert "m=message 2855 TCP/MSRP *\r\nc=IN IP4 192.0.2.10\r\n" in r["sdp"].decode()


def test_hold_with_null_address_sends_nothing(relay: Relay) -> None:
    to_b, to_a = call(relay)
    opener: FakeOpener = relay.opener  # type: ignore[assignment]
    ng(relay, command="offer", call_id="c1", from_tag="ta", to_tag="tb", sdp=sdp("0.0.0.0", 4000))
    port_b = opener.open_ports[to_b.media[0].port]
    port_b.datagram_received(rtp(1), (B, 5000))
    assert port_b.undeliverable == 1 and opener.transport(to_a.media[0].port).sent == []


def test_sip_source_address_flag_uses_received_from(relay: Relay) -> None:
    ng(relay, command="offer", call_id="c", from_tag="x", flags=[b"SIP-source-address"],
       received_from=[b"IP4", b"192.0.2.77"], sdp=sdp("10.0.0.5", 4000))
    ng(relay, command="answer", call_id="c", from_tag="x", to_tag="y", sdp=sdp(B, 5000))
    q = ng(relay, command="query", call_id="c")
    assert q["tags"]["x"]["medias"][0]["streams"][0]["endpoint"] == {
        "family": "IPv4", "address": "192.0.2.77", "port": 4000}


def test_query_reports_per_stream_stats(relay: Relay) -> None:
    to_b, to_a = call(relay)
    opener: FakeOpener = relay.opener  # type: ignore[assignment]
    port_a = opener.open_ports[to_a.media[0].port]
    seqs = [seq for seq in range(1, 41) if seq not in (20, 21)]
    for seq in seqs:
        port_a.datagram_received(rtp(seq), (A, 4000))
    port_a.datagram_received(b"x", ("10.0.0.1", 9))
    relay.tick(1.0)
    q = ng(relay, 2.0, command="query", call_id="c1")
    assert q["result"] == "ok" and set(q["tags"]) == {"ta", "tb"}
    assert q["tags"]["ta"]["in dialogue with"] == "tb"
    rtp_stream = q["tags"]["ta"]["medias"][0]["streams"][0]
    assert rtp_stream["local port"] == to_a.media[0].port
    assert rtp_stream["stats"]["packets"] == 38 and rtp_stream["stats"]["bytes"] == 38 * 172
    assert rtp_stream["stats"]["dropped-hijack"] == 1
    # seq 20 and 21, counted at the latest sampled packet (the port's 33rd; see test_rtp_stats.py)
    assert rtp_stream["stats"]["lost"] == 2 and rtp_stream["stats"]["expected"] == 19
    assert rtp_stream["last packet"] == 1
    assert q["totals"]["RTP"]["packets"] == 38


def test_delete_releases_everything(relay: Relay) -> None:
    call(relay)
    call(relay, "c2")
    assert relay.ports.ports_in_use == 8
    r = ng(relay, command="delete", call_id="c1")
    assert r["result"] == "ok" and "totals" in r
    assert relay.ports.ports_in_use == 4
    assert ng(relay, command="list")["calls"] == ["c2"]
    r = ng(relay, command="delete", call_id="c2", from_tag="ta")
    assert r["result"] == "ok" and relay.ports.ports_in_use == 0 and not relay.calls
    assert not relay.opener.open_ports  # type: ignore[attr-defined]
    relay.ports.check()
    assert ng(relay, command="delete", call_id="c2")["error-reason"] == "Unknown call-id"


def test_exhaustion_is_an_error_and_rolls_back() -> None:
    relay = Relay(RelayConfig(RELAY_IP), PortAllocator(30000, 30005), FakeOpener())  # 3 pairs
    r = ng(relay, command="offer", call_id="c", from_tag="x", sdp=sdp(A, 4000, video=4002))  # needs 4
    assert r["result"] == "error" and "Ran out of ports" in r["error-reason"]
    assert relay.ports.ports_in_use == 0 and not relay.calls
    relay.ports.check()


def test_busy_ports_are_skipped() -> None:
    relay = Relay(RelayConfig(RELAY_IP), PortAllocator(30000, 30009), FakeOpener(busy={30001, 30004}))
    r = ng(relay, command="offer", call_id="c", from_tag="x", sdp=sdp(A, 4000))
    assert r["result"] == "ok"
    assert relay.ports.bind_failures == 2 and relay.ports.ports_in_use == 4


@pytest.mark.parametrize("msg, reason", [
    ({"command": b"offer", "call-id": b"c", "from-tag": b"x"}, "No SDP"),
    ({"command": b"offer", "call-id": b"c", "sdp": sdp(A, 4000)}, "No from-tag"),
    ({"command": b"offer", "from-tag": b"x", "sdp": sdp(A, 4000)}, "No call-id"),
    ({"command": b"offer", "call-id": b"c", "from-tag": b"x", "sdp": b"garbage"}, "Failed to parse SDP"),
    ({"command": b"answer", "call-id": b"nope", "from-tag": b"x", "to-tag": b"y", "sdp": sdp(A, 4000)},
     "Unknown call-id"),
    ({"command": b"answer", "call-id": b"c", "from-tag": b"x", "sdp": sdp(A, 4000)}, "No to-tag"),
    ({"command": b"query", "call-id": b"nope"}, "Unknown call-id"),
    ({"command": b"frobnicate"}, "Unrecognized command"),
    ({"call-id": b"c"}, "No command"),
    ([b"not a dict"], "not a dictionary"),
    ({"command": 5}, "command must be a string"),
])
def test_bad_requests_are_answered(relay: Relay, msg: Any, reason: str) -> None:
    r = relay.handle(msg, 0.0)
    assert r["result"] == "error" and reason in r["error-reason"]
    assert relay.internal_errors == 0


def test_answer_with_unknown_from_tag(relay: Relay) -> None:
    call(relay)
    r = ng(relay, command="answer", call_id="c1", from_tag="zz", to_tag="tb", sdp=sdp(B, 5000))
    assert r["result"] == "error" and "from-tag" in r["error-reason"]


def test_ping_and_list(relay: Relay) -> None:
    assert ng(relay, command="ping") == {"result": "pong"}
    call(relay)
    assert ng(relay, command="list") == {"result": "ok", "calls": ["c1"], "timed-out": []}


def test_media_timeout_then_expiry(relay: Relay) -> None:
    to_b, to_a = call(relay)
    opener: FakeOpener = relay.opener  # type: ignore[assignment]
    port_a = opener.open_ports[to_a.media[0].port]
    port_a.datagram_received(rtp(1), (A, 4000))
    assert relay.tick(10.0) == []
    assert relay.tick(39.0) == []  # last packet seen at 10 s, timeout 30 s
    assert relay.tick(40.0) == [MediaTimedOut("c1")]
    q = ng(relay, 41.0, command="query", call_id="c1")
    assert q["timed out"] == 1 and q["last activity"] == 10
    assert ng(relay, command="list")["timed-out"] == ["c1"]
    assert relay.tick(45.0) == []
    assert relay.tick(50.0) == [CallExpired("c1", 4)]
    assert not relay.calls and relay.ports.ports_in_use == 0


def test_media_resumes_clears_timeout(relay: Relay) -> None:
    to_b, to_a = call(relay)
    port_a = relay.opener.open_ports[to_a.media[0].port]  # type: ignore[attr-defined]
    assert relay.tick(30.0) == [MediaTimedOut("c1")]
    port_a.datagram_received(rtp(1), (A, 4000))
    relay.tick(31.0)
    assert not relay.calls["c1"].timed_out


def test_hold_uses_hold_timeout(relay: Relay) -> None:
    call(relay)
    ng(relay, 1.0, command="offer", call_id="c1", from_tag="ta", to_tag="tb", sdp=sdp(A, 4000, "inactive"))
    ng(relay, 1.0, command="answer", call_id="c1", from_tag="ta", to_tag="tb", sdp=sdp(B, 5000, "inactive"))
    assert relay.tick(100.0) == []  # no media, but on hold
    assert relay.tick(601.0) == [MediaTimedOut("c1")]


def test_new_signalling_restarts_media_timeout(relay: Relay) -> None:
    call(relay)
    relay.tick(20.0)
    ng(relay, 25.0, command="offer", call_id="c1", from_tag="ta", to_tag="tb", sdp=sdp(A, 4000))
    assert relay.tick(50.0) == []
    assert relay.tick(55.0) == [MediaTimedOut("c1")]


def test_unanswered_offer_times_out_and_is_released(relay: Relay) -> None:
    ng(relay, command="offer", call_id="c", from_tag="x", sdp=sdp(A, 4000))
    q = ng(relay, command="query", call_id="c")
    assert set(q["tags"]) == {"x", ""}  # the pending side has no tag yet
    assert relay.tick(30.0) == [MediaTimedOut("c")]
    assert relay.tick(40.0) == [CallExpired("c", 4)]
    assert relay.ports.ports_in_use == 0


def test_forked_answer_retags_pending_leg(relay: Relay) -> None:
    ng(relay, command="offer", call_id="c", from_tag="x", sdp=sdp(A, 4000))
    r1 = ng(relay, command="answer", call_id="c", from_tag="x", to_tag="y1", sdp=sdp(B, 5000))
    r2 = ng(relay, command="answer", call_id="c", from_tag="x", to_tag="y2", sdp=sdp(B, 5002))
    assert r1["sdp"] == r2["sdp"] or SessionDescription.parse(r2["sdp"]).media[0].port == \
        SessionDescription.parse(r1["sdp"]).media[0].port
    assert set(relay.calls["c"].legs) == {"x", "y2"}
    assert relay.ports.ports_in_use == 4
