"""Transaction layer (RFC 3261 §17, RFC 6026), walked through virtual time.

Every test drives a `TransactionLayer` with a fake TU and a fake wire; what the layer sends is parsed
back with the real parser. Time only moves through `Scheduler.advance`.
"""

from __future__ import annotations

import pytest

from b2bua.sip.address import Address
from b2bua.sip.message import Headers, Request, Response, build_response
from b2bua.sip.parser import parse_message
from b2bua.sip.scheduler import Scheduler
from b2bua.sip.transaction import (
    UDP_SIZE_LIMIT,
    ClientTransaction,
    ServerTransaction,
    TimerConfig,
    TransactionError,
    TransactionLayer,
    TxState,
)
from b2bua.sip.uri import parse_uri

PEER = Address("udp", "192.0.2.10", 5060)
PEER_TCP = Address("tcp", "192.0.2.10", 5060)
LOCAL = {"udp": ("198.51.100.1", 5060), "tcp": ("198.51.100.1", 5070)}


# -- harness ---------------------------------------------------------------------------------------


class FakeTU:
    def __init__(self) -> None:
        self.requests: list[tuple[ServerTransaction | None, Request, Address]] = []
        self.responses: list[tuple[ClientTransaction, Response]] = []
        self.strays: list[Response] = []
        self.timeouts: list[object] = []
        self.errors: list[object] = []
        self.ended: list[object] = []
        self.answer: int | None = None  # respond synchronously from on_request

    def on_request(self, tx, request, source):
        self.requests.append((tx, request, source))
        if tx is not None and self.answer is not None:
            tx.respond(build_response(tx.request, self.answer, to_tag="uas"))

    def on_response(self, tx, response):
        self.responses.append((tx, response))

    def on_stray_response(self, response, source):
        self.strays.append(response)

    def on_timeout(self, tx):
        self.timeouts.append(tx)

    def on_transport_error(self, tx):
        self.errors.append(tx)

    def on_ended(self, tx):
        assert tx.state.name == "TERMINATED" and tx not in self.ended  # told once, once over
        self.ended.append(tx)


class Wire:
    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.sent: list[tuple[float, bytes, Address]] = []
        self.fail = False

    def __call__(self, data: bytes, dest: Address) -> None:
        if self.fail:
            raise OSError("network unreachable")
        self.sent.append((self.sched.now, data, dest))

    def msgs(self) -> list:
        return [parse_message(d) for _, d, _ in self.sent]

    def times(self) -> list[float]:
        return [t for t, _, _ in self.sent]

    def last(self):
        return parse_message(self.sent[-1][1])

    def clear(self) -> None:
        self.sent.clear()


class H:
    def __init__(self, config: TimerConfig | None = None) -> None:
        self.sched = Scheduler()
        self.tu = FakeTU()
        self.wire = Wire(self.sched)
        self.layer = TransactionLayer(self.sched, self.tu, self.wire, lambda dest: LOCAL[dest.transport],
                                      config or TimerConfig())

    def at(self, t: float) -> None:
        self.sched.advance(t)

    def feed(self, msg: Request | Response | str, source: Address = PEER) -> None:
        data = msg.encode() if isinstance(msg, str) else msg.serialize()
        self.layer.receive(parse_message(data), source)

    def reply(self, tx: ClientTransaction, status: int, to_tag: str | None = "callee") -> Response:
        return build_response(tx.request, status, to_tag=to_tag)


@pytest.fixture
def h() -> H:
    return H()


def outgoing(method: str = "INVITE", *, cseq: int = 1, route: tuple[str, ...] = (),
             body: bytes = b"", to_tag: str | None = None) -> Request:
    """A request from the TU: no Via yet."""
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    items = [(("Route", r)) for r in route] + [
        ("Max-Forwards", "70"),
        ("From", "<sip:alice@example.com>;tag=caller"),
        ("To", to),
        ("Call-ID", "call-1@example.com"),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", "<sip:alice@198.51.100.1>"),
    ]
    return Request(method, parse_uri("sip:bob@192.0.2.10"), Headers(items), body)


def incoming(method: str = "INVITE", *, branch: str | None = "z9hG4bKabc", cseq: int = 1,
             via_host: str = "192.0.2.10", via_port: int | None = 5060, rport: bool = False,
             via_params: str = "", to_tag: str | None = None, cseq_method: str | None = None,
             uri: str = "sip:carol@198.51.100.1", call_id: str = "in-1") -> str:
    """A request from a peer, as text."""
    hp = via_host if via_port is None else f"{via_host}:{via_port}"
    via = f"SIP/2.0/UDP {hp}"
    if branch is not None:
        via += f";branch={branch}"
    if rport:
        via += ";rport"
    via += via_params
    to = "<sip:carol@example.com>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:dave@example.org>;tag=dave1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )


# -- client transactions ---------------------------------------------------------------------------


def test_send_request_adds_our_via(h: H) -> None:
    tx = h.layer.send_request(outgoing("OPTIONS"), PEER)
    sent = h.wire.last()
    via = sent.top_via
    assert len(sent.vias) == 1
    assert (via.transport, via.host, via.port) == ("UDP", "198.51.100.1", 5060)
    assert via.branch.startswith("z9hG4bK") and len(via.branch) > 7 + 8
    assert via.has_param("rport") and via.param("rport") is None
    assert tx.request.branch == via.branch == tx.branch
    assert tx.dest == PEER and tx.method == "OPTIONS" and tx.state is TxState.TRYING
    other = h.layer.send_request(outgoing("OPTIONS", cseq=2), PEER)
    assert other.branch != tx.branch


def test_ipv6_local_address_bracketed_in_via() -> None:
    h = H()
    h.layer._local = lambda dest: ("2001:db8::1", 5060)
    h.layer.send_request(outgoing("OPTIONS"), Address("udp", "2001:db8::2", 5060))
    assert h.wire.last().top_via.host == "[2001:db8::1]"


def test_ack_and_cancel_not_accepted_by_send_request(h: H) -> None:
    with pytest.raises(ValueError):
        h.layer.send_request(outgoing("ACK"), PEER)
    with pytest.raises(ValueError):
        h.layer.send_request(outgoing("CANCEL"), PEER)


def test_invite_client_timer_a_and_b_over_udp(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    assert tx.state is TxState.CALLING
    h.at(31.99)
    assert h.wire.times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles, never capped
    assert all(d == h.wire.sent[0][1] for _, d, _ in h.wire.sent)  # identical retransmissions
    assert h.tu.timeouts == []
    h.at(32.0)
    assert h.tu.timeouts == [tx] and tx.state is TxState.TERMINATED
    assert h.layer.retransmissions == 6 and h.layer.timeouts == 1
    assert len(h.layer) == 0 and len(h.sched) == 0
    h.at(100)
    assert len(h.wire.sent) == 7


def test_invite_client_over_tcp_no_retransmission(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER_TCP)
    assert h.wire.last().top_via.transport == "TCP"
    assert h.wire.last().top_via.port == 5070
    h.at(31.9)
    assert len(h.wire.sent) == 1
    h.at(32)
    assert h.tu.timeouts == [tx] and len(h.layer) == 0


def test_invite_client_provisional_stops_timer_a_and_b(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.at(0.6)  # one retransmission
    h.feed(h.reply(tx, 100, to_tag=None))
    h.feed(h.reply(tx, 180))
    assert tx.state is TxState.PROCEEDING
    assert [r.status for _, r in h.tu.responses] == [100, 180]
    h.at(200)
    assert h.wire.times() == [0.0, 0.5]
    assert h.tu.timeouts == [] and tx.state is TxState.PROCEEDING  # the TU's no-answer timer rules
    assert tx.last_response.status == 180


def test_invite_client_non_2xx_generates_ack(h: H) -> None:
    tx = h.layer.send_request(outgoing(route=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")), PEER)
    invite = h.wire.last()
    h.feed(h.reply(tx, 180))
    h.wire.clear()
    h.at(1)
    busy = h.reply(tx, 486)
    h.feed(busy)
    assert tx.state is TxState.COMPLETED
    assert [r.status for _, r in h.tu.responses] == [180, 486]
    (_, data, dest), = h.wire.sent
    ack = parse_message(data)
    # RFC 3261 §17.1.1.3
    assert ack.method == "ACK" and str(ack.uri) == str(invite.uri) and dest == PEER
    assert ack.headers.values("Via") == [invite.headers.values("Via")[0]]
    assert ack.branch == invite.branch
    assert ack.call_id == invite.call_id
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.headers.get("To") == busy.headers.get("To") and ack.to_tag == "callee"
    assert (ack.cseq.seq, ack.cseq.method) == (invite.cseq.seq, "ACK")
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    assert ack.body == b""
    # a retransmitted final: the same ACK again, not passed up
    h.at(5)
    h.feed(busy)
    assert len(h.wire.sent) == 2 and h.wire.sent[1][1] == data
    assert len(h.tu.responses) == 2 and h.layer.retransmissions == 1
    # Timer D: 32 s over UDP
    h.at(1 + 32 - 0.01)
    assert len(h.layer) == 1
    h.at(1 + 32)
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0
    assert h.tu.timeouts == []
    h.feed(busy)  # too late: stray
    assert h.tu.strays[-1].status == 486 and len(h.tu.responses) == 2


def test_invite_client_non_2xx_over_tcp_timer_d_zero(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER_TCP)
    h.feed(h.reply(tx, 603), PEER_TCP)
    assert h.wire.last().method == "ACK"
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0
    assert h.tu.responses[-1][1].status == 603


def test_invite_client_final_in_calling_goes_to_completed(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.feed(h.reply(tx, 404))
    assert tx.state is TxState.COMPLETED and h.wire.last().method == "ACK"
    h.at(10)
    assert [m.method for m in h.wire.msgs()] == ["INVITE", "ACK"]  # Timer A stopped


def test_invite_client_2xx_accepted_and_timer_m(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.feed(h.reply(tx, 180))
    h.at(2)
    ok = h.reply(tx, 200)
    h.feed(ok)
    assert tx.state is TxState.ACCEPTED
    assert h.wire.msgs()[-1].method == "INVITE"  # the layer does not ACK a 2xx
    h.at(3)
    h.feed(ok)  # retransmission
    h.feed(h.reply(tx, 200, to_tag="fork2"))  # another fork
    statuses = [(r.status, r.to_tag) for _, r in h.tu.responses]
    assert statuses == [(180, "callee"), (200, "callee"), (200, "callee"), (200, "fork2")]
    assert all(t is tx for t, _ in h.tu.responses)
    h.feed(h.reply(tx, 486))  # a non-2xx in Accepted is dropped (RFC 6026)
    assert len(h.tu.responses) == 4
    h.at(2 + 32 - 0.01)
    assert len(h.layer) == 1
    h.at(2 + 32)  # Timer M
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0 and h.tu.timeouts == []
    h.feed(ok)
    assert h.tu.strays[-1].status == 200


def test_non_invite_client_timer_e_capped_at_t2_and_timer_f(h: H) -> None:
    tx = h.layer.send_request(outgoing("OPTIONS"), PEER)
    h.at(31.99)
    assert h.wire.times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    h.at(32)
    assert h.tu.timeouts == [tx] and tx.state is TxState.TERMINATED and len(h.layer) == 0
    assert h.layer.timeouts == 1 and h.layer.retransmissions == 10


def test_non_invite_client_proceeding_retransmits_every_t2(h: H) -> None:
    tx = h.layer.send_request(outgoing("REGISTER"), PEER)
    h.at(0.6)  # retransmission at 0.5, next due at 1.5
    h.feed(h.reply(tx, 100, to_tag=None))
    assert tx.state is TxState.PROCEEDING
    h.at(12)
    assert h.wire.times() == [0.0, 0.5, 1.5, 5.5, 9.5]
    h.at(32)
    assert h.tu.timeouts == [tx]  # Timer F runs in Proceeding too


def test_non_invite_client_completed_timer_k(h: H) -> None:
    tx = h.layer.send_request(outgoing("BYE"), PEER)
    h.at(1)
    ok = h.reply(tx, 200)
    h.feed(ok)
    assert tx.state is TxState.COMPLETED and h.tu.responses == [(tx, h.tu.responses[0][1])]
    h.feed(ok)  # retransmission absorbed
    assert len(h.tu.responses) == 1
    h.at(40)
    assert h.wire.times() == [0.0, 0.5]  # E and F stopped
    assert h.tu.timeouts == []
    assert len(h.layer) == 0


def test_non_invite_client_timer_k_exact(h: H) -> None:
    tx = h.layer.send_request(outgoing("BYE"), PEER)
    h.feed(h.reply(tx, 200))
    h.at(4.99)
    assert len(h.layer) == 1
    h.at(5)
    assert len(h.layer) == 0


def test_non_invite_client_over_tcp(h: H) -> None:
    tx = h.layer.send_request(outgoing("BYE"), PEER_TCP)
    h.at(10)
    assert len(h.wire.sent) == 1
    h.feed(h.reply(tx, 200), PEER_TCP)
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0  # Timer K = 0


def test_response_matching_by_branch_and_method(h: H) -> None:
    tx = h.layer.send_request(outgoing("INFO"), PEER)
    resp = h.reply(tx, 200)
    wrong_method = resp.with_headers(resp.headers.set("CSeq", "1 OPTIONS"))
    h.feed(wrong_method)
    assert h.tu.responses == [] and h.tu.strays[0].cseq.method == "OPTIONS"
    foreign = resp.with_headers(resp.headers.set("Via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKother"))
    h.feed(foreign)
    assert len(h.tu.strays) == 2 and h.layer.stray_responses == 2
    h.feed(resp)
    assert h.tu.responses[0][0] is tx


def test_size_rule_switches_to_tcp(h: H) -> None:
    small = h.layer.send_request(outgoing("MESSAGE", body=b"x" * 100), PEER)
    assert small.dest == PEER
    big = h.layer.send_request(outgoing("MESSAGE", cseq=2, body=b"x" * UDP_SIZE_LIMIT), PEER)
    assert big.dest == Address("tcp", PEER.host, PEER.port)
    _, data, dest = h.wire.sent[-1]
    assert dest == big.dest and len(data) > UDP_SIZE_LIMIT
    via = parse_message(data).top_via
    assert (via.transport, via.port) == ("TCP", 5070)
    assert big.request.top_via.transport == "TCP"
    h.at(10)
    assert len(h.wire.sent) == 2 + 4  # only the small one retransmits (0.5, 1.5, 3.5, 7.5)


def test_size_rule_boundary(h: H) -> None:
    def padded(cseq: int, pad: int) -> Request:
        req = outgoing("MESSAGE", cseq=cseq)
        return req.with_headers(req.headers.add("X-Pad", "p" * pad))

    probe = h.layer.send_request(padded(1, 1), PEER)
    pad = UDP_SIZE_LIMIT - len(h.wire.sent[-1][1]) + 1
    exact = h.layer.send_request(padded(2, pad), PEER)
    assert len(h.wire.sent[-1][1]) == UDP_SIZE_LIMIT and exact.dest.transport == "udp"
    over = h.layer.send_request(padded(3, pad + 1), PEER)
    assert len(h.wire.sent[-1][1]) > UDP_SIZE_LIMIT and over.dest.transport == "tcp"
    assert probe.dest.transport == "udp"


def test_send_ack_for_2xx(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.feed(h.reply(tx, 200))
    ack_in = outgoing("ACK", to_tag="callee")
    wire, dest = h.layer.send_ack(ack_in, PEER)
    wire_ack = h.wire.last()
    assert dest == PEER and h.wire.sent[-1][1] == wire
    assert wire_ack.method == "ACK" and wire_ack.branch != tx.branch
    assert len(wire_ack.vias) == 1
    # RFC 3261 §13.2.2.4: a retransmitted 2xx gets the same ACK again (same Via branch), not a new one.
    h.layer.send_wire(wire, dest)
    assert h.wire.sent[-1][1] == wire
    h.at(60)
    assert [m.method for m in h.wire.msgs()] == ["INVITE", "ACK", "ACK"]  # no retransmission
    assert len(h.layer) == 0


def test_send_ack_transport_error_is_counted(h: H) -> None:
    h.wire.fail = True
    h.layer.send_ack(outgoing("ACK", to_tag="x"), PEER)
    assert h.layer.transport_errors == 1 and len(h.layer) == 0


# -- CANCEL (client side) --------------------------------------------------------------------------


def test_cancel_waits_for_a_provisional(h: H) -> None:
    tx = h.layer.send_request(outgoing(route=("<sip:p1.example.com;lr>",)), PEER)
    invite = h.wire.last()
    assert h.layer.cancel(tx) is None
    assert h.layer.cancel(tx) is None  # idempotent
    assert [m.method for m in h.wire.msgs()] == ["INVITE"]
    h.at(0.7)
    h.feed(h.reply(tx, 180))
    cancel = h.wire.last()
    assert cancel.method == "CANCEL"
    ctx = tx.cancel_tx
    assert ctx is not None and ctx.method == "CANCEL" and ctx.dest == tx.dest
    # RFC 3261 §9.1
    assert str(cancel.uri) == str(invite.uri)
    assert cancel.headers.values("Via") == [invite.headers.values("Via")[0]]
    assert cancel.call_id == invite.call_id
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.headers.get_all("Route") == invite.headers.get_all("Route")
    assert h.layer.cancel(tx) is ctx
    # the CANCEL's 200 goes to the CANCEL transaction, the INVITE's 487 to the INVITE's
    h.feed(build_response(ctx.request, 200, to_tag="callee"))
    h.feed(h.reply(tx, 487))
    assert [(t.method, r.status) for t, r in h.tu.responses] == [
        ("INVITE", 180), ("CANCEL", 200), ("INVITE", 487)]
    assert h.wire.last().method == "ACK"
    h.at(100)
    assert len(h.layer) == 0 and h.tu.timeouts == []


def test_cancel_in_proceeding_is_sent_at_once_with_extra_headers(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.feed(h.reply(tx, 183))
    ctx = h.layer.cancel(tx, [("Reason", 'SIP;cause=480;text="No answer"')])
    assert ctx is not None and ctx.state is TxState.TRYING
    assert h.wire.last().headers.get("Reason") == 'SIP;cause=480;text="No answer"'
    h.at(0.5)
    assert h.wire.last().method == "CANCEL"  # the CANCEL retransmits over UDP (Timer E)


def test_cancel_not_sent_when_final_arrives_first(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    assert h.layer.cancel(tx) is None
    h.feed(h.reply(tx, 200))
    assert [m.method for m in h.wire.msgs()] == ["INVITE"]
    assert h.layer.cancel(tx) is None and tx.cancel_tx is None
    tx2 = h.layer.send_request(outgoing(cseq=2), PEER)
    h.feed(h.reply(tx2, 486))
    assert h.layer.cancel(tx2) is None
    assert "CANCEL" not in [m.method for m in h.wire.msgs()]


def test_cancel_pending_then_timer_b(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.layer.cancel(tx)
    h.at(32)
    assert h.tu.timeouts == [tx] and len(h.layer) == 0
    assert "CANCEL" not in [m.method for m in h.wire.msgs()]


def test_cancelled_invite_without_final_times_out(h: H) -> None:
    # RFC 3261 §9.1: no final response 64*T1 after the CANCEL -> the INVITE is given up
    tx = h.layer.send_request(outgoing(), PEER_TCP)
    h.feed(h.reply(tx, 180), PEER_TCP)
    h.at(10)
    ctx = h.layer.cancel(tx)
    h.feed(build_response(ctx.request, 200, to_tag="callee"), PEER_TCP)
    h.at(41.9)
    assert tx.state is TxState.PROCEEDING
    h.at(42)
    assert h.tu.timeouts == [tx] and len(h.layer) == 0


def test_cancel_only_for_invite(h: H) -> None:
    tx = h.layer.send_request(outgoing("OPTIONS"), PEER)
    with pytest.raises(ValueError):
        h.layer.cancel(tx)


# -- server transactions ---------------------------------------------------------------------------


def test_invite_server_passes_new_request_up_and_sends_100_after_200ms(h: H) -> None:
    h.feed(incoming())
    (tx, req, source), = h.tu.requests
    assert tx.state is TxState.PROCEEDING and tx.request is req and source == PEER
    assert tx.method == "INVITE" and tx.source == PEER and tx.dest == PEER
    h.feed(incoming())  # retransmission before any provisional: absorbed silently
    assert len(h.tu.requests) == 1 and h.wire.sent == []
    h.at(0.19)
    assert h.wire.sent == []
    h.at(0.2)
    trying = h.wire.last()
    assert trying.status == 100 and trying.to_tag is None
    assert trying.top_via.branch == "z9hG4bKabc" and tx.last_response.status == 100
    h.feed(incoming())  # now the retransmission gets the 100 again
    assert [m.status for m in h.wire.msgs()] == [100, 100]
    assert h.layer.retransmissions == 1


def test_invite_server_no_100_when_tu_answers_quickly(h: H) -> None:
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    h.at(0.1)
    tx.respond(build_response(tx.request, 180, to_tag="uas"))
    h.at(1)
    assert [m.status for m in h.wire.msgs()] == [180]
    h.feed(incoming())
    assert [m.status for m in h.wire.msgs()] == [180, 180]  # latest provisional resent


def test_invite_server_non_2xx_timer_g_and_h(h: H) -> None:
    h.tu.answer = 486
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    assert tx.state is TxState.COMPLETED
    h.at(31.99)
    assert h.wire.times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(m.status == 486 for m in h.wire.msgs())
    h.feed(incoming())  # retransmitted INVITE in Completed -> the final again
    assert h.wire.last().status == 486 and len(h.wire.sent) == 12
    assert len(h.tu.requests) == 1
    h.at(32)  # Timer H
    assert h.tu.timeouts == [tx] and tx.state is TxState.TERMINATED and len(h.layer) == 0
    assert h.layer.timeouts == 1 and h.layer.retransmissions == 11


def test_invite_server_ack_confirms_and_timer_i(h: H) -> None:
    h.tu.answer = 480
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    h.at(1)
    h.feed(incoming("ACK", to_tag="uas"))
    assert tx.state is TxState.CONFIRMED
    assert len(h.tu.requests) == 1  # the ACK to a non-2xx is not passed up
    h.feed(incoming("ACK", to_tag="uas"))  # retransmitted ACK absorbed
    h.feed(incoming())  # and the INVITE too
    assert len(h.tu.requests) == 1
    h.at(5.99)
    assert h.wire.times() == [0.0, 0.5]  # Timer G stopped at the ACK
    assert len(h.layer) == 1
    h.at(6)  # Timer I = T4
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0 and h.tu.timeouts == []


def test_invite_server_over_tcp_no_g_and_timer_i_zero(h: H) -> None:
    h.tu.answer = 404
    h.feed(incoming(), PEER_TCP)
    tx = h.tu.requests[0][0]
    h.at(10)
    assert len(h.wire.sent) == 1 and h.wire.sent[0][2] == PEER_TCP
    h.feed(incoming("ACK", to_tag="uas"), PEER_TCP)
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0


def test_invite_server_tcp_timer_h(h: H) -> None:
    h.tu.answer = 404
    h.feed(incoming(), PEER_TCP)
    h.at(32)
    assert len(h.tu.timeouts) == 1 and len(h.wire.sent) == 1


def test_invite_server_2xx_retransmitted_until_ack_with_new_branch(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    assert tx.state is TxState.ACCEPTED
    h.at(8)
    assert h.wire.times() == [0.0, 0.5, 1.5, 3.5, 7.5]  # §13.3.1.4: T1 doubling...
    h.at(16)
    assert h.wire.times()[-2:] == [11.5, 15.5]  # ...capped at T2
    h.feed(incoming())  # retransmitted INVITE in Accepted: absorbed
    assert len(h.wire.sent) == 7 and len(h.tu.requests) == 1
    ack = incoming("ACK", branch="z9hG4bKdifferent", to_tag="uas", uri="sip:carol@198.51.100.1:5060")
    h.feed(ack)
    assert tx.acked and tx.state is TxState.ACCEPTED
    ack_tx, ack_req, _ = h.tu.requests[-1]
    assert ack_tx is None and ack_req.method == "ACK"
    h.at(31.9)
    assert len(h.wire.sent) == 7  # retransmissions stopped
    h.feed(ack)  # a second ACK is still passed up
    assert len(h.tu.requests) == 3
    h.at(32)  # Timer L: no timeout since the ACK came
    assert tx.state is TxState.TERMINATED and h.tu.timeouts == [] and len(h.layer) == 0
    assert h.layer.timeouts == 0 and h.layer.retransmissions == 6


def test_invite_server_2xx_ack_with_same_branch_also_stops(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming())
    h.feed(incoming("ACK", to_tag="uas"))
    tx = h.tu.requests[0][0]
    assert tx.acked and h.tu.requests[-1][0] is None
    h.at(10)
    assert len(h.wire.sent) == 1


def test_invite_server_ack_for_wrong_to_tag_does_not_stop_2xx(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming())
    h.feed(incoming("ACK", branch="z9hG4bKx", to_tag="someone-else"))
    tx = h.tu.requests[0][0]
    assert not tx.acked and h.tu.requests[-1][0] is None  # still passed up (it's the TU's call)
    h.at(2)
    assert len(h.wire.sent) == 3


def test_invite_server_timer_l_without_ack_times_out(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    h.at(31.99)
    assert tx.state is TxState.ACCEPTED
    h.at(32)
    assert h.tu.timeouts == [tx] and tx.state is TxState.TERMINATED and len(h.layer) == 0
    assert h.layer.timeouts == 1
    assert h.wire.times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_invite_server_2xx_over_tcp_not_retransmitted(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming(), PEER_TCP)
    h.at(31)
    assert len(h.wire.sent) == 1
    h.feed(incoming("ACK", branch="z9hG4bKack", to_tag="uas"), PEER_TCP)
    h.at(32)
    assert h.tu.timeouts == [] and len(h.layer) == 0


def test_invite_server_more_2xx_allowed_in_accepted(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    tx.respond(build_response(tx.request, 200, to_tag="uas"))
    assert len(h.wire.sent) == 2
    with pytest.raises(TransactionError):
        tx.respond(build_response(tx.request, 180, to_tag="uas"))
    with pytest.raises(TransactionError):
        tx.respond(build_response(tx.request, 486, to_tag="uas"))


def test_invite_server_final_after_final_is_a_tu_bug(h: H) -> None:
    h.tu.answer = 486
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    with pytest.raises(TransactionError):
        tx.respond(build_response(tx.request, 200, to_tag="uas"))


def test_ack_matching_nothing_goes_up_with_no_transaction(h: H) -> None:
    h.feed(incoming("ACK", to_tag="t"))
    (tx, req, _), = h.tu.requests
    assert tx is None and req.method == "ACK" and len(h.layer) == 0


def test_non_invite_server_absorbs_and_resends(h: H) -> None:
    h.feed(incoming("OPTIONS"))
    tx = h.tu.requests[0][0]
    assert tx.state is TxState.TRYING
    h.feed(incoming("OPTIONS"))  # Trying: absorbed, nothing to send
    assert h.wire.sent == [] and len(h.tu.requests) == 1
    h.at(1)
    assert h.wire.sent == []  # no automatic 100 for non-INVITE
    tx.respond(build_response(tx.request, 100))
    assert tx.state is TxState.PROCEEDING
    h.feed(incoming("OPTIONS"))
    assert [m.status for m in h.wire.msgs()] == [100, 100]
    tx.respond(build_response(tx.request, 200, to_tag="uas"))
    assert tx.state is TxState.COMPLETED
    h.feed(incoming("OPTIONS"))
    assert [m.status for m in h.wire.msgs()] == [100, 100, 200, 200]
    assert h.layer.retransmissions == 2 and len(h.tu.requests) == 1
    with pytest.raises(TransactionError):
        tx.respond(build_response(tx.request, 500, to_tag="uas"))
    h.at(1 + 31.99)
    assert len(h.layer) == 1
    h.at(1 + 32)  # Timer J = 64*T1
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0 and h.tu.timeouts == []
    h.feed(incoming("OPTIONS"))  # after Timer J it is a new transaction
    assert len(h.tu.requests) == 2


def test_non_invite_server_over_tcp_timer_j_zero(h: H) -> None:
    h.tu.answer = 200
    h.feed(incoming("BYE", to_tag="uas"), PEER_TCP)
    assert h.tu.requests[0][0].state is TxState.TERMINATED and len(h.layer) == 0


def test_server_matching_uses_method_and_sent_by(h: H) -> None:
    h.feed(incoming("INVITE"))
    h.feed(incoming("INVITE", via_host="192.0.2.11"))  # same branch, other sent-by: new tx
    h.feed(incoming("CANCEL"))  # same branch, CANCEL: its own transaction
    methods = [r.method for _, r, _ in h.tu.requests]
    assert methods == ["INVITE", "INVITE", "CANCEL"] and len(h.layer) == 3


# -- CANCEL (server side) --------------------------------------------------------------------------


def test_find_invite_for_cancel(h: H) -> None:
    h.feed(incoming())
    invite_tx = h.tu.requests[0][0]
    h.feed(incoming("CANCEL"))
    cancel_tx, cancel, _ = h.tu.requests[1]
    assert cancel_tx is not invite_tx and cancel_tx.method == "CANCEL"
    assert h.layer.find_invite_for_cancel(cancel) is invite_tx
    other = parse_message(incoming("CANCEL", branch="z9hG4bKnot-it").encode())
    assert h.layer.find_invite_for_cancel(other) is None
    # the usual answer: 200 to the CANCEL, 487 to the INVITE
    cancel_tx.respond(build_response(cancel, 200, to_tag="uas"))
    invite_tx.respond(build_response(invite_tx.request, 487, to_tag="uas"))
    assert [m.status for m in h.wire.msgs()] == [200, 487]
    h.feed(incoming("ACK", to_tag="uas"))
    assert invite_tx.state is TxState.CONFIRMED
    h.at(40)
    assert len(h.layer) == 0


# -- RFC 2543 fallback -----------------------------------------------------------------------------


def test_rfc2543_matching_without_magic_cookie(h: H) -> None:
    h.feed(incoming(branch=None))
    tx = h.tu.requests[0][0]
    h.at(0.3)
    h.feed(incoming(branch=None))  # retransmission matched by URI/tags/Call-ID/CSeq/Via
    assert len(h.tu.requests) == 1 and [m.status for m in h.wire.msgs()] == [100, 100]
    h.feed(incoming(branch=None, cseq=2))  # other CSeq: a new transaction
    assert len(h.tu.requests) == 2
    cancel = parse_message(incoming("CANCEL", branch=None).encode())
    assert h.layer.find_invite_for_cancel(cancel) is tx
    tx.respond(build_response(tx.request, 486, to_tag="uas"))
    h.feed(incoming("ACK", branch=None, to_tag="wrong"))  # To tag must be our response's
    assert tx.state is TxState.COMPLETED and h.tu.requests[-1][0] is None
    h.feed(incoming("ACK", branch=None, to_tag="uas"))
    assert tx.state is TxState.CONFIRMED


def test_rfc2543_old_style_branch_and_stamped_via(h: H) -> None:
    # a branch without the cookie plus rport: stamping must not break matching
    h.feed(incoming(branch="1234", rport=True), Address("udp", "203.0.113.5", 40000))
    h.feed(incoming(branch="1234", rport=True), Address("udp", "203.0.113.5", 40000))
    assert len(h.tu.requests) == 1


# -- received / rport and response routing ---------------------------------------------------------


def test_received_stamped_when_sent_by_differs(h: H) -> None:
    src = Address("udp", "203.0.113.7", 5060)
    h.feed(incoming("OPTIONS", via_host="10.0.0.5"), src)
    tx, req, _ = h.tu.requests[0]
    assert req.top_via.param("received") == "203.0.113.7"
    assert not req.top_via.has_param("rport")
    tx.respond(build_response(req, 200, to_tag="x"))
    resp = h.wire.last()
    assert resp.top_via.param("received") == "203.0.113.7"
    assert h.wire.sent[-1][2] == Address("udp", "203.0.113.7", 5060)  # received + sent-by port


def test_no_received_when_sent_by_matches(h: H) -> None:
    h.feed(incoming("OPTIONS"))
    req = h.tu.requests[0][1]
    assert not req.top_via.has_param("received")
    assert str(req.top_via) == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc"


def test_rport_filled_and_received_always_added(h: H) -> None:
    src = Address("udp", "192.0.2.10", 34567)
    h.feed(incoming("OPTIONS", rport=True), src)
    tx, req, _ = h.tu.requests[0]
    via = req.top_via
    assert via.param("rport") == "34567" and via.param("received") == "192.0.2.10"  # RFC 3581 §4
    assert tx.dest == src


def test_rport_behind_nat_routes_to_source_port(h: H) -> None:
    src = Address("udp", "203.0.113.9", 61000)
    h.feed(incoming("OPTIONS", via_host="10.1.1.1", via_port=5062, rport=True), src)
    tx = h.tu.requests[0][0]
    tx.respond(build_response(tx.request, 200, to_tag="x"))
    assert h.wire.sent[-1][2] == src


def test_only_top_via_is_stamped(h: H) -> None:
    text = incoming("OPTIONS", via_host="10.0.0.1", rport=True).replace(
        ";rport", ";rport, SIP/2.0/UDP p.example;branch=z9hG4bKp", 1)
    h.feed(text, Address("udp", "203.0.113.1", 7000))
    req = h.tu.requests[0][1]
    assert len(req.vias) == 2
    assert req.vias[0].param("rport") == "7000" and req.vias[0].param("received") == "203.0.113.1"
    assert str(req.vias[1]) == "SIP/2.0/UDP p.example;branch=z9hG4bKp"


@pytest.mark.parametrize(
    ("via_port", "via_params", "rport", "source", "expected"),
    [
        (None, "", False, Address("udp", "192.0.2.10", 5060), Address("udp", "192.0.2.10", 5060)),
        (5080, "", False, Address("udp", "192.0.2.10", 9999), Address("udp", "192.0.2.10", 5080)),
        (5080, "", True, Address("udp", "192.0.2.10", 9999), Address("udp", "192.0.2.10", 9999)),
        (5080, ";maddr=239.255.255.1", False, Address("udp", "192.0.2.10", 9999),
         Address("udp", "239.255.255.1", 5080)),
        (None, ";maddr=192.0.2.50", False, Address("udp", "192.0.2.10", 9999),
         Address("udp", "192.0.2.50", 5060)),
        (5080, "", True, Address("tcp", "192.0.2.10", 40001), Address("tcp", "192.0.2.10", 40001)),
        (5080, ";maddr=192.0.2.50", False, Address("tcp", "192.0.2.10", 40001),
         Address("tcp", "192.0.2.10", 40001)),
    ],
)
def test_response_routing(h: H, via_port, via_params, rport, source, expected) -> None:
    h.feed(incoming("OPTIONS", via_port=via_port, via_params=via_params, rport=rport), source)
    tx = h.tu.requests[0][0]
    assert tx.dest == expected
    tx.respond(build_response(tx.request, 200, to_tag="x"))
    assert h.wire.sent[-1][2] == expected


# -- transport errors ------------------------------------------------------------------------------


def test_transport_error_on_first_send_is_reported_later(h: H) -> None:
    h.wire.fail = True
    tx = h.layer.send_request(outgoing(), PEER)
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0
    assert h.tu.errors == []  # never from inside the TU's own call
    h.at(0)
    assert h.tu.errors == [tx] and h.layer.transport_errors == 1
    h.at(100)
    assert h.tu.timeouts == [] and len(h.sched) == 0


def test_undeliverable_bytes_end_only_the_transactions_that_sent_them(h: H) -> None:
    """A refused TCP connection: the transport hands back the very bytes it could not send."""
    tcp = Address("tcp", "127.0.0.1", 5099)
    lost = h.layer.send_request(outgoing(), tcp)
    other = h.layer.send_request(outgoing(cseq=2), tcp)  # went out on an earlier connection
    elsewhere = h.layer.send_request(outgoing(cseq=3), PEER)
    [(_, lost_wire, _)] = [s for s in h.wire.sent if s[1] is lost._wire]
    assert h.layer.undeliverable([lost_wire], tcp) == 1
    assert h.tu.errors == [lost] and lost.state is TxState.TERMINATED
    assert other.state is not TxState.TERMINATED and elsewhere.state is not TxState.TERMINATED
    copy = bytes(bytearray(other._wire))
    assert copy == other._wire and copy is not other._wire
    assert h.layer.undeliverable([copy], tcp) == 0  # equal bytes, but not what was handed over
    assert other.state is not TxState.TERMINATED
    assert h.layer.transport_errors == 1


def test_transport_error_on_retransmission(h: H) -> None:
    tx = h.layer.send_request(outgoing("OPTIONS"), PEER)
    h.wire.fail = True
    h.at(0.5)
    assert h.tu.errors == [tx] and tx.state is TxState.TERMINATED and len(h.layer) == 0
    h.at(100)
    assert h.tu.timeouts == []


def test_transport_error_on_response(h: H) -> None:
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    h.wire.fail = True
    tx.respond(build_response(tx.request, 486, to_tag="uas"))
    assert tx.state is TxState.TERMINATED and len(h.layer) == 0
    tx.respond(build_response(tx.request, 486, to_tag="uas"))  # ignored once terminated
    h.at(0.01)
    assert h.tu.errors == [tx]
    h.at(100)
    assert h.tu.timeouts == [] and h.layer.retransmissions == 0


def test_transport_error_on_ack(h: H) -> None:
    tx = h.layer.send_request(outgoing(), PEER)
    h.wire.fail = True
    h.feed(h.reply(tx, 486))
    assert h.tu.responses[-1][1].status == 486  # the response still reaches the TU
    h.at(0)
    assert h.tu.errors == [tx] and len(h.layer) == 0


def test_transport_error_on_automatic_100(h: H) -> None:
    h.feed(incoming())
    tx = h.tu.requests[0][0]
    h.wire.fail = True
    h.at(0.2)
    assert h.tu.errors == [tx] and len(h.layer) == 0


# -- malformed input and leaks ---------------------------------------------------------------------


def test_malformed_messages_are_counted_not_raised(h: H) -> None:
    bad = Response(200, "OK", Headers([("Via", "garbage"), ("CSeq", "1 INVITE")]))
    h.layer.receive(bad, PEER)
    bad_via = Request("OPTIONS", parse_uri("sip:x@y"), Headers([("Via", "garbage")]))
    h.layer.receive(bad_via, PEER)
    bad_ack = Request("ACK", parse_uri("sip:x@y"), Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")]))
    h.layer.receive(bad_ack, PEER)  # no Call-ID/CSeq (the parser would have refused it)
    assert h.layer.malformed == 3 and h.tu.requests == [] and h.tu.strays == []


def test_timer_config_validation_and_derived_values() -> None:
    cfg = TimerConfig(t1=0.1, t2=1.0, t4=2.0)
    assert (cfg.b, cfg.f, cfg.h, cfg.j, cfg.l, cfg.m) == (6.4,) * 6
    assert (cfg.i, cfg.k, cfg.d) == (2.0, 2.0, 32.0)
    with pytest.raises(ValueError):
        TimerConfig(t1=0)
    with pytest.raises(ValueError):
        TimerConfig(t1=5.0, t2=4.0)


def test_custom_t1_scales_timers() -> None:
    h = H(TimerConfig(t1=0.1, t2=0.4))
    tx = h.layer.send_request(outgoing("OPTIONS"), PEER)
    h.at(6.4)
    assert h.wire.times()[:5] == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.1])
    assert h.tu.timeouts == [tx]


def test_two_stacks_over_a_lossy_wire_leave_nothing_behind() -> None:
    """A UAC layer and a UAS layer back to back; the first copy of each kind of message is lost
    (the 100, the 200, the first ACK... the ACK to a 2xx has a new branch each time)."""
    sched = Scheduler()
    uac_tu, uas_tu = FakeTU(), FakeTU()
    a = Address("udp", "198.51.100.1", 5060)
    b = Address("udp", "192.0.2.10", 5060)
    seen: set[tuple[Address, str, str]] = set()
    layers: dict[Address, TransactionLayer] = {}

    def wire_from(src: Address):
        def send(data: bytes, dest: Address) -> None:
            msg = parse_message(data)
            kind = (src, data.split(b"\r\n", 1)[0].decode(), str(msg.cseq))
            if kind not in seen:  # drop the first copy of every kind of message
                seen.add(kind)
                return
            layers[dest].receive(msg, src)
        return send

    uac = TransactionLayer(sched, uac_tu, wire_from(a), lambda t: (a.host, a.port))
    uas = TransactionLayer(sched, uas_tu, wire_from(b), lambda t: (b.host, b.port))
    layers[a], layers[b] = uac, uas

    def uas_on_request(tx, request, source):
        uas_tu.requests.append((tx, request, source))
        if tx is not None:
            tx.respond(build_response(tx.request, 200, to_tag="uas"))
    uas_tu.on_request = uas_on_request  # type: ignore[method-assign]

    def uac_on_response(tx, response):
        uac_tu.responses.append((tx, response))
        if tx.method == "INVITE" and response.status == 200:
            uac.send_ack(outgoing("ACK", to_tag="uas"), b)
    uac_tu.on_response = uac_on_response  # type: ignore[method-assign]

    invite_tx = uac.send_request(outgoing(), b)
    sched.advance(5)
    assert invite_tx.state is TxState.ACCEPTED
    uas_tx = uas_tu.requests[0][0]
    assert uas_tx.acked
    bye_tx = uac.send_request(outgoing("BYE", cseq=2, to_tag="uas"), b)
    sched.advance(10)
    assert bye_tx.state is TxState.COMPLETED
    assert [r.status for _, r in uac_tu.responses if _.method == "BYE"] == [200]
    sched.advance(100)
    assert len(uac) == 0 and len(uas) == 0 and len(sched) == 0
    assert uac_tu.timeouts == uas_tu.timeouts == []
    assert uac.retransmissions >= 2 and uas.retransmissions >= 1


# -- on_ended: once per transaction, after everything else the TU hears about it ----------------------


class _OrderTU(FakeTU):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def on_response(self, tx, response):
        super().on_response(tx, response)
        self.order.append(f"response {response.status}")

    def on_timeout(self, tx):
        super().on_timeout(tx)
        self.order.append("timeout")

    def on_transport_error(self, tx):
        super().on_transport_error(tx)
        self.order.append("transport error")

    def on_ended(self, tx):
        super().on_ended(tx)
        self.order.append("ended")


@pytest.fixture
def ho() -> H:
    h = H()
    h.tu = _OrderTU()
    h.layer.tu = h.tu
    return h


def test_a_final_over_tcp_is_delivered_before_the_end(ho: H) -> None:
    bye = ho.layer.send_request(outgoing("BYE"), PEER_TCP)
    ho.feed(ho.reply(bye, 200), PEER_TCP)  # Timer K = 0: Completed ends at once
    invite = ho.layer.send_request(outgoing(cseq=2), PEER_TCP)
    ho.feed(ho.reply(invite, 486), PEER_TCP)  # Timer D = 0
    assert ho.tu.order == ["response 200", "ended", "response 486", "ended"]
    assert ho.tu.ended == [bye, invite]


def test_a_timeout_is_reported_before_the_end(ho: H) -> None:
    tx = ho.layer.send_request(outgoing("OPTIONS"), PEER)
    ho.at(40)
    assert ho.tu.order == ["timeout", "ended"] and ho.tu.ended == [tx]


def test_a_transport_error_is_reported_before_the_end(ho: H) -> None:
    ho.wire.fail = True
    tx = ho.layer.send_request(outgoing("OPTIONS"), PEER)
    assert ho.tu.order == []  # reported on the next turn, not inside send_request
    ho.at(0)
    assert ho.tu.order == ["transport error", "ended"] and ho.tu.ended == [tx]


def test_lingering_transactions_end_once_their_timers_run_out(ho: H) -> None:
    invite = ho.layer.send_request(outgoing(), PEER)
    ho.feed(ho.reply(invite, 200))  # Accepted: Timer M
    ho.feed(incoming("BYE", cseq=2))
    [(server, _, _)] = ho.tu.requests
    server.respond(build_response(server.request, 200))  # Completed: Timer J
    assert ho.tu.ended == []
    ho.at(40)
    assert sorted(map(id, ho.tu.ended)) == sorted(map(id, [invite, server]))
