"""Dialogs (RFC 3261 §12): creation on each side, route sets, CSeq rules, target refresh."""

from __future__ import annotations

from b2bua.sip.address import Address
from b2bua.sip.dialog import Dialog, DialogState
from b2bua.sip.parser import parse_message
from b2bua.sip.uri import parse_uri


def msg(text: str):
    return parse_message((text.strip("\n").replace("\n", "\r\n") + "\r\nContent-Length: 0\r\n\r\n").encode())


INVITE = msg("""INVITE sip:bob@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1
Record-Route: <sip:127.0.0.2:5060;lr>, <sip:127.0.0.3:5060;lr>
From: "A" <sip:alice@127.0.0.1>;tag=a1
To: <sip:bob@127.0.0.1>
Call-ID: d1
CSeq: 10 INVITE
Contact: <sip:alice@127.0.0.1:5070;transport=tcp>
Max-Forwards: 70""")

OK_TEXT = """SIP/2.0 200 OK
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1
Record-Route: <sip:127.0.0.2:5060;lr>, <sip:127.0.0.3:5060;lr>
From: "A" <sip:alice@127.0.0.1>;tag=a1
To: <sip:bob@127.0.0.1>;tag=b1
Call-ID: d1
CSeq: 10 INVITE
Contact: <sip:bob@127.0.0.4:5080>"""
OK = msg(OK_TEXT)


def test_uas_dialog_keeps_record_route_order_and_targets_contact():
    d = Dialog.from_request(INVITE, "b1")
    assert (d.call_id, d.local_tag, d.remote_tag, d.remote_seq) == ("d1", "b1", "a1", 10)
    assert d.route_set == ("<sip:127.0.0.2:5060;lr>", "<sip:127.0.0.3:5060;lr>")
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:alice@127.0.0.1:5070;transport=tcp"
    assert bye.headers.get_all("Route") == list(d.route_set)
    assert bye.from_tag == "b1" and bye.to_tag == "a1" and bye.cseq.seq == 1
    assert d.next_hop() == Address("udp", "127.0.0.2", 5060)


def test_uac_dialog_reverses_record_route_and_counts_cseq():
    d = Dialog.from_response(INVITE, OK)
    assert d.state is DialogState.CONFIRMED
    assert d.route_set == ("<sip:127.0.0.3:5060;lr>", "<sip:127.0.0.2:5060;lr>")
    assert [d.create_request("INFO").cseq.seq for _ in range(2)] == [11, 12]
    ack = d.create_request("ACK", cseq=10)
    assert ack.cseq.seq == 10 and ack.cseq.method == "ACK" and d.local_seq == 12


def test_strict_route_puts_target_last():
    d = Dialog.from_request(INVITE, "b1")
    d.route_set = ("<sip:127.0.0.9:5060>",)  # no ;lr: an RFC 2543 strict router
    req = d.create_request("BYE")
    assert str(req.uri) == "sip:127.0.0.9:5060"
    assert req.headers.get_all("Route") == ["<sip:alice@127.0.0.1:5070;transport=tcp>"]


def test_out_of_order_cseq_is_refused_and_ack_exempt():
    d = Dialog.from_request(INVITE, "b1")

    def request(method: str, seq: int):
        return msg(f"""{method} sip:bob@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{seq}
From: <sip:alice@127.0.0.1>;tag=a1
To: <sip:bob@127.0.0.1>;tag=b1
Call-ID: d1
CSeq: {seq} {method}""")

    assert d.check_remote_cseq(request("BYE", 9)) is False
    assert d.check_remote_cseq(request("ACK", 10)) is True  # ACK reuses the INVITE's number
    assert d.check_remote_cseq(request("BYE", 11)) is True
    assert d.remote_seq == 11


def test_target_refresh_replaces_remote_target():
    d = Dialog.from_response(INVITE, OK)
    reinvite_ok = msg(OK_TEXT.replace("127.0.0.4:5080", "127.0.0.5:5090"))
    d.refresh_target(reinvite_ok)
    assert str(d.remote_target) == "sip:bob@127.0.0.5:5090"


def test_host_names_from_peers_are_not_send_targets():
    # A Contact naming a host would need DNS on the event loop: the leg uses the source address.
    no_route = OK_TEXT.replace("Record-Route: <sip:127.0.0.2:5060;lr>, <sip:127.0.0.3:5060;lr>\n", "")
    d = Dialog.from_response(INVITE, msg(no_route.replace("127.0.0.4:5080", "pbx.example.invalid:5080")))
    assert d.route_set == () and d.next_hop() is None
    d.remote_target = parse_uri("sip:bob@[::1]:5090;transport=tcp")
    assert d.next_hop() == Address("tcp", "::1", 5090)
