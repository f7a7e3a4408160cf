"""The B2BUA call path, driven through the sans-IO core in virtual time (no sockets, no sleeps)."""

from __future__ import annotations

from b2bua.sip.parser import parse_message

from .wire import CALLER, PBX, SDP, Wire, in_dialog, invite, origin, response_to, same_sdp


def cancel_for(invite_text: str) -> str:
    """The caller's CANCEL for its INVITE (RFC 3261 §9.1: same Via, From, To, Call-ID, CSeq number)."""
    inv = parse_message((invite_text.replace("\n", "\r\n") + "\r\n\r\n").encode())
    return f"""CANCEL {inv.uri} SIP/2.0
Via: {inv.headers.get("Via")}
From: {inv.headers.get("From")}
To: {inv.headers.get("To")}
Call-ID: {inv.call_id}
CSeq: {inv.cseq.seq} CANCEL
Max-Forwards: 70"""


def _b_invite(w: Wire):
    [b_inv] = w.requests(PBX, "INVITE")
    return b_inv


def ringing(w: Wire):
    """A call the callee is ringing: returns (the caller's INVITE text, the B leg's INVITE)."""
    text, _ = invite()
    w.inject(text, body=SDP)
    b_inv = _b_invite(w)
    w.inject(response_to(b_inv, 180, "Ringing"), PBX)
    return text, b_inv


def establish(w: Wire, *, offer: bool = True):
    """Caller INVITE -> 180 -> 200 -> ACK. Returns (a_200, b_invite, b_200)."""
    text, _ = invite()
    w.inject(text, body=SDP if offer else "")
    b_inv = _b_invite(w)
    w.inject(response_to(b_inv, 180, "Ringing"), PBX)
    b200_text = response_to(b_inv, 200, "OK", extra="Content-Type: application/sdp")
    w.inject(b200_text, PBX, body=SDP)
    [a200] = w.responses(CALLER, 200)
    w.inject(in_dialog("ACK", a200, cseq=1, branch="z9hG4bKack1", from_side_is_to=False,
                       extra="" if offer else "Content-Type: application/sdp"),
             body="" if offer else SDP)
    return a200, b_inv, parse_message(
        (b200_text.replace("\n", "\r\n") + "\r\nContent-Length: 0\r\n\r\n").encode())


def test_basic_call_relays_both_legs_and_ends_cleanly():
    w = Wire()
    a200, b_inv, b200 = establish(w)
    # The B leg is a new dialog: its own Call-ID and tags, our Contact, Max-Forwards decremented.
    assert b_inv.call_id != a200.call_id
    assert b_inv.from_tag != a200.from_tag
    assert b_inv.headers.get("Max-Forwards") == "69"
    assert "b2bua@127.0.0.1:5060" in b_inv.headers.get("Contact")
    assert str(b_inv.uri) == "sip:bob@127.0.0.1:5080"
    # Header policy: end-to-end identity and X- headers cross, unknown others do not.
    assert b_inv.headers.get("X-Account") == "42"
    assert b_inv.headers.get("P-Asserted-Identity") == "<sip:+15550001@127.0.0.1>"
    assert b_inv.headers.get("Secret-Header") is None
    assert same_sdp(b_inv.body, SDP)
    # The caller saw 180 and 200 with one To tag of ours, and the callee's SDP.
    [a180] = w.responses(CALLER, 180)
    assert a180.to_tag == a200.to_tag and a200.to_tag != "btag"
    assert same_sdp(a200.body, SDP)
    # The callee got exactly one ACK for its 2xx, in its dialog.
    [b_ack] = w.requests(PBX, "ACK")
    assert b_ack.call_id == b_inv.call_id and b_ack.to_tag == "btag" and b_ack.cseq.seq == 1
    # Caller hangs up: 200 at once, BYE to the callee; the call ends when the callee answers it.
    w.inject(in_dialog("BYE", a200, cseq=2, branch="z9hG4bKbye1", from_side_is_to=False))
    assert [r.cseq.method for r in w.responses(CALLER, 200)] == ["INVITE", "BYE"]
    [b_bye] = w.requests(PBX, "BYE")
    assert w.core.active_calls == 1
    w.inject(response_to(b_bye, 200, "OK"), PBX)
    assert w.core.active_calls == 0
    assert w.core.stats.calls["answered"] == 1
    w.advance(40)  # every transaction timer (Timer K/J/L/M, 64*T1 = 32 s) runs out
    assert len(w.core.tl) == 0
    assert not w.core._legs and not w.core._tx_owner


def test_callee_hangs_up():
    w = Wire()
    a200, _, b200 = establish(w)
    w.inject(in_dialog("BYE", b200, cseq=1, branch="z9hG4bKbbye", from_side_is_to=True,
                       via="127.0.0.1:5080"), PBX)
    assert w.responses(PBX, 200)[-1].cseq.method == "BYE"
    [a_bye] = w.requests(CALLER, "BYE")
    assert a_bye.call_id == a200.call_id and a_bye.to_tag == a200.from_tag
    w.inject(response_to(a_bye, 200, "OK", to_tag=None), CALLER)
    assert w.core.active_calls == 0 and w.core.stats.calls["answered"] == 1


def test_cancel_while_ringing():
    w = Wire()
    text, b_inv = ringing(w)
    w.inject(cancel_for(text))
    assert [r.status for r in w.responses(CALLER) if r.status >= 200] == [200, 487]
    [b_cancel] = w.requests(PBX, "CANCEL")
    assert b_cancel.branch == b_inv.branch
    w.inject(response_to(b_cancel, 200, "OK"), PBX)
    w.inject(response_to(b_inv, 487, "Request Terminated"), PBX)
    assert w.requests(PBX, "ACK"), "the 487 must be ACKed by the B leg's transaction"
    assert w.core.active_calls == 0 and w.core.stats.calls["cancelled"] == 1


def test_200_crossing_cancel_is_acked_and_hung_up():
    w = Wire()
    text, b_inv = ringing(w)
    w.inject(cancel_for(text))
    # The callee answers before it sees the CANCEL.
    w.inject(response_to(b_inv, 200, "OK"), PBX, body=SDP)
    # The caller already has its 487: the late 200 is not relayed; the callee is ACKed and hung up.
    assert [(r.status, r.cseq.method) for r in w.responses(CALLER) if r.status >= 200] == [
        (200, "CANCEL"), (487, "INVITE")]
    assert len(w.requests(PBX, "ACK")) == 1
    [bye] = w.requests(PBX, "BYE")
    w.inject(response_to(bye, 200, "OK"), PBX)
    assert w.core.active_calls == 0 and w.core.stats.calls["cancelled"] == 1


def test_busy_is_relayed_and_503_is_mapped():
    for status, reason, expect in ((486, "Busy Here", 486), (503, "Service Unavailable", 500)):
        w = Wire()
        text, _ = invite()
        w.inject(text, body=SDP)
        w.inject(response_to(_b_invite(w), status, reason), PBX)
        assert [r.status for r in w.responses(CALLER) if r.status >= 200] == [expect]
        assert w.core.stats.calls["rejected"] == 1 and w.core.active_calls == 0


def test_no_answer_timeout_cancels_and_answers_408():
    w = Wire({"calls": {"no_answer_timeout_s": 5}})
    _, b_inv = ringing(w)
    w.advance(4.9)
    assert not w.requests(PBX, "CANCEL")
    w.advance(0.2)
    [cancel] = w.requests(PBX, "CANCEL")
    assert [r.status for r in w.responses(CALLER) if r.status >= 200] == [408]
    w.inject(response_to(cancel, 200, "OK"), PBX)
    w.inject(response_to(b_inv, 487, "Request Terminated"), PBX)
    assert w.core.stats.calls["timeout"] == 1 and w.core.active_calls == 0


def test_next_hop_silent_gives_408_after_timer_b():
    w = Wire()
    text, _ = invite()
    w.inject(text, body=SDP)
    w.advance(31.9)
    assert not [r for r in w.responses(CALLER) if r.status >= 200]
    assert len(w.requests(PBX, "INVITE")) == 7  # 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5 s (Timer A)
    w.advance(0.2)
    assert [r.status for r in w.responses(CALLER) if r.status >= 200] == [408]
    assert w.core.stats.calls["failed"] == 1 and w.core.active_calls == 0


def test_second_fork_answering_is_acked_and_released():
    w = Wire()
    text, _ = invite()
    w.inject(text, body=SDP)
    b_inv = _b_invite(w)
    w.inject(response_to(b_inv, 200, "OK", to_tag="fork1"), PBX, body=SDP)
    w.inject(response_to(b_inv, 200, "OK", to_tag="fork2"), PBX, body=SDP)
    acks = w.requests(PBX, "ACK")
    assert sorted(a.to_tag for a in acks) == ["fork1", "fork2"]
    [bye] = w.requests(PBX, "BYE")
    assert bye.to_tag == "fork2"
    assert len(w.responses(CALLER, 200)) == 1
    # A retransmitted 2xx of either fork gets our ACK again, nothing else (no second BYE).
    w.inject(response_to(b_inv, 200, "OK", to_tag="fork1"), PBX, body=SDP)
    w.inject(response_to(b_inv, 200, "OK", to_tag="fork2"), PBX, body=SDP)
    acks = w.requests(PBX, "ACK")
    assert sorted(a.to_tag for a in acks) == ["fork1", "fork1", "fork2", "fork2"]
    for tag in ("fork1", "fork2"):  # the same ACK, Via branch and all (RFC 3261 §13.2.2.4)
        first, again = [a for a in acks if a.to_tag == tag]
        assert first.serialize() == again.serialize()
    assert len(w.requests(PBX, "BYE")) == 1
    # After the call ends, a late fork's 2xx is still ACKed and released, and nothing is left behind.
    a200 = w.responses(CALLER, 200)[0]
    w.inject(in_dialog("BYE", a200, cseq=2, branch="z9hG4bKbyeF", from_side_is_to=False))
    for bye in w.requests(PBX, "BYE"):
        w.inject(response_to(bye, 200, "OK"), PBX)
    assert w.core.active_calls == 0
    w.inject(response_to(b_inv, 200, "OK", to_tag="fork3"), PBX, body=SDP)
    assert [a.to_tag for a in w.requests(PBX, "ACK")].count("fork3") == 1
    [late_bye] = [b for b in w.requests(PBX, "BYE") if b.to_tag == "fork3"]
    w.inject(response_to(late_bye, 200, "OK"), PBX)
    w.advance(40)
    assert not w.core._tx_owner and not w.core._call_txs and len(w.core.tl) == 0


def test_late_offer_ack_carries_the_answer():
    w = Wire()
    a200, b_inv, _ = establish(w, offer=False)
    assert b_inv.body == b""
    [b_ack] = w.requests(PBX, "ACK")
    assert same_sdp(b_ack.body, SDP)
    assert b_ack.headers.get("Content-Type") == "application/sdp"


def test_reinvite_from_callee_is_relayed_with_max_forwards_decremented():
    w = Wire()
    a200, _, b200 = establish(w)
    hold = SDP.replace("m=audio 4000 RTP/AVP 0\r\n", "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n")
    w.inject(in_dialog("INVITE", b200, cseq=5, branch="z9hG4bKre1", from_side_is_to=True, via="127.0.0.1:5080",
                       extra="Content-Type: application/sdp\nContact: <sip:bob@127.0.0.1:5080>"), PBX, body=hold)
    [a_reinv] = w.requests(CALLER, "INVITE")
    assert a_reinv.call_id == a200.call_id and same_sdp(a_reinv.body, hold)
    # The caller's leg keeps its own session: same o= id, version up by one for the changed SDP.
    assert origin(a_reinv.body)[1] == origin(a200.body)[1]
    assert int(origin(a_reinv.body)[2]) == int(origin(a200.body)[2]) + 1
    assert a_reinv.headers.get("Max-Forwards") == "69"
    assert str(a_reinv.uri) == "sip:alice@127.0.0.1:5070"
    # Glare: the callee sends another re-INVITE while this one is pending -> 491.
    w.inject(in_dialog("INVITE", b200, cseq=6, branch="z9hG4bKre2", from_side_is_to=True, via="127.0.0.1:5080"),
             PBX, body=hold)
    assert w.responses(PBX, 491)
    w.inject(response_to(a_reinv, 200, "OK", to_tag=None, contact="<sip:alice@127.0.0.1:5070>",
                         extra="Content-Type: application/sdp"), CALLER, body=SDP)
    relayed = [r for r in w.responses(PBX, 200) if r.cseq.method == "INVITE" and r.cseq.seq == 5]
    assert relayed and same_sdp(relayed[0].body, SDP)
    assert len(w.requests(CALLER, "ACK")) == 1  # the re-INVITE had an offer: ACKed at once


def test_update_and_info_cross():
    w = Wire()
    a200, _, _ = establish(w)
    for n, method in enumerate(("UPDATE", "INFO"), start=2):
        w.inject(in_dialog(method, a200, cseq=n, branch=f"z9hG4bKm{n}", from_side_is_to=False,
                           extra="Content-Type: application/dtmf-relay"), body="Signal=5\r\n")
        [out] = w.requests(PBX, method)
        assert out.body == b"Signal=5\r\n"
        w.inject(response_to(out, 200, "OK", to_tag=None), PBX)
        assert any(r.cseq.method == method for r in w.responses(CALLER, 200))


def test_admission_checks():
    w = Wire()
    cases = [
        (invite(max_forwards=0)[0], 483),
        (invite(extra="\nRequire: fancy-ext")[0], 420),
        (invite()[0].replace("INVITE sip:bob@127.0.0.1:5060", "INVITE mailto:bob@example.invalid"), 416),
    ]
    for text, status in cases:
        w.inject(text, body=SDP)
        assert w.responses(CALLER)[-1].status == status, text
    assert w.responses(CALLER, 420)[0].headers.get("Unsupported") == "fancy-ext"
    assert not w.requests(PBX, "INVITE")
    w.core.stop_accepting()
    w.inject(invite()[0], body=SDP)
    assert w.responses(CALLER)[-1].status == 503


def test_unknown_dialog_and_options():
    w = Wire()
    a200, _, _ = establish(w)
    bogus = a200.headers.get("To").replace(a200.to_tag, "nosuchtag")
    w.inject(f"""BYE sip:b2bua@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx481
From: {a200.headers.get("From")}
To: {bogus}
Call-ID: {a200.call_id}
CSeq: 9 BYE
Max-Forwards: 70""")
    assert w.responses(CALLER)[-1].status == 481
    w.inject("""OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKopt
From: <sip:mon@127.0.0.1>;tag=1
To: <sip:127.0.0.1:5060>
Call-ID: opt-1
CSeq: 1 OPTIONS
Max-Forwards: 70""")
    resp = w.responses(CALLER)[-1]
    assert resp.status == 200 and "INVITE" in resp.headers.get("Allow")


def test_malformed_request_gets_400_naming_the_problem_and_is_counted():
    w = Wire()
    text, _ = invite()
    w.inject(text.replace("CSeq: 1 INVITE", "CSeq: 1 BYE"), body=SDP)
    resp = w.responses(CALLER)[-1]
    assert resp.status == 400 and "CSeq" in resp.reason
    w.core.receive(b"\x00\xffgarbage\r\n\r\n", CALLER)
    assert sum(w.core.stats.malformed.values()) == 2
    assert w.core.active_calls == 0
