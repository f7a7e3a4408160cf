"""An INVITE with Replaces naming one of our legs takes its place (RFC 3891), in virtual time.

Call 1: alice (CALLER) -> bob (behind the PBX). The PBX then sends a new INVITE whose Replaces
names our dialog with bob (an attended transfer completed on the PBX side): alice is re-INVITEd
onto the new caller's media and bob's dialog is released.
"""

from __future__ import annotations

from b2bua.sip.address import Address
from b2bua.sip.message import Request, Response

from .test_attended_transfer import answer, reinvites
from .test_call_media import CALLER_SDP, establish, media_port, relay_ports
from .test_transfer import ROUTES, wire
from .wire import CALLER, PBX, SDP, Wire, in_dialog, invite, response_to

DAVE_SDP = SDP.replace("m=audio 4000", "m=audio 6200").replace("o=- 1 1", "o=- 88 1")


def invite_with_replaces(w: Wire, b_inv: Request, *, source: Address = PBX, params: str = "",
                         call_id: str = "dave-1@127.0.0.1", tags: tuple[str, str] | None = None,
                         body: str = DAVE_SDP) -> None:
    to_tag, from_tag = tags or (b_inv.from_tag, "btag")
    text = f"""INVITE sip:alice@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP {source.host}:{source.port};branch=z9hG4bKrepl-{call_id}
From: <sip:dave@127.0.0.1>;tag=davetag
To: <sip:alice@127.0.0.1:5060>
Call-ID: {call_id}
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:dave@{source.host}:{source.port}>
Replaces: {b_inv.call_id};to-tag={to_tag};from-tag={from_tag}{params}
Require: replaces""" + ("\nContent-Type: application/sdp" if body else "")
    w.inject(text, source, body=body)


def final(w: Wire, dest: Address = PBX, call_id: str = "dave-1@127.0.0.1"):
    return [r for r in w.responses(dest) if r.call_id == call_id and r.status >= 200]


def test_an_invite_with_replaces_takes_the_named_legs_place():
    w = wire()
    a200, b_inv, b200 = establish(w)
    w.take()
    invite_with_replaces(w, b_inv)
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    assert media_port(a_reinv.body)[1] in relay_ports(w)
    assert not final(w)  # dave is answered only once alice has taken the new media
    answer(w, a_reinv, CALLER, CALLER_SDP)
    [ok] = final(w)
    assert ok.status == 200 and media_port(ok.body)[1] in relay_ports(w)
    [bye] = [r for r in w.requests(PBX, "BYE") if r.call_id == b_inv.call_id]
    assert "replaced" in bye.headers.get("Reason")
    answer(w, bye, PBX)
    w.inject(in_dialog("ACK", ok, cseq=1, branch="z9hG4bKdack", from_side_is_to=False, via="127.0.0.1:5080"), PBX)
    assert len(w.core.calls) == 1 and w.rtp is not None and len(w.rtp.calls) == 1
    # alice's BYE now reaches dave's dialog.
    w.take()
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    [d_bye] = w.requests(PBX, "BYE")
    assert d_bye.call_id == "dave-1@127.0.0.1"
    answer(w, d_bye, PBX)
    assert not w.core.calls and not w.rtp.calls and not w.core._legs


def test_refusals():
    w = wire()
    _, b_inv, _ = establish(w)
    invite_with_replaces(w, b_inv, call_id="r1@x", tags=("nope", "btag"))
    assert [r.status for r in final(w, call_id="r1@x")] == [481]
    invite_with_replaces(w, b_inv, call_id="r2@x", params=";early-only")
    assert [r.status for r in final(w, call_id="r2@x")] == [486]
    other = Address("udp", "127.0.0.9", 5080)
    invite_with_replaces(w, b_inv, call_id="r3@x", source=other)
    assert [r.status for r in final(w, other, call_id="r3@x")] == [403]
    invite_with_replaces(w, b_inv, call_id="r4@x", body="")
    assert [r.status for r in final(w, call_id="r4@x")] == [488]
    assert len(w.core.calls) == 1 and not w.requests(CALLER, "INVITE")
    w2 = wire(transfers={"replaces_policy": "never"})
    _, b_inv, _ = establish(w2)
    invite_with_replaces(w2, b_inv)
    assert [r.status for r in final(w2)] == [403]


def test_a_refused_reinvite_leaves_the_call_as_it_was():
    w = wire()
    a200, b_inv, _ = establish(w)
    invite_with_replaces(w, b_inv)
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    answer(w, a_reinv, CALLER, status=488, reason="Not Acceptable Here")
    assert [r.status for r in final(w)] == [488]
    assert not w.requests(PBX, "BYE") and len(w.core.calls) == 1
    assert w.rtp is not None and len(w.rtp.calls) == 1


def test_cancel_after_the_staying_party_moved_ends_the_call():
    w = wire()
    a200, b_inv, _ = establish(w)
    invite_with_replaces(w, b_inv)
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    w.inject("""CANCEL sip:alice@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKrepl-dave-1@127.0.0.1
From: <sip:dave@127.0.0.1>;tag=davetag
To: <sip:alice@127.0.0.1:5060>
Call-ID: dave-1@127.0.0.1
CSeq: 1 CANCEL
Max-Forwards: 70""", PBX)
    assert [r.status for r in final(w)] == [200, 487]  # the CANCEL's 200, the INVITE's 487
    answer(w, a_reinv, CALLER, CALLER_SDP)  # alice moved to a session nobody uses: the call ends
    byes = {r.call_id for r in w.requests(CALLER, "BYE")} | {r.call_id for r in w.requests(PBX, "BYE")}
    assert byes == {a200.call_id, b_inv.call_id}
    for dest in (CALLER, PBX):
        for r in w.requests(dest, "BYE"):
            answer(w, r, dest)
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls


def ringing_call(w: Wire) -> tuple[Request, Response]:
    text, _ = invite()
    w.inject(text, CALLER, body=CALLER_SDP)
    [b_inv] = w.requests(PBX, "INVITE")
    w.inject(response_to(b_inv, 180, "Ringing"), PBX)
    [ringing] = w.responses(CALLER, 180)
    return b_inv, ringing


def test_pickup_answers_the_caller_and_the_picker_and_cancels_the_phone_that_rang():
    w = wire()
    b_inv, _ = ringing_call(w)
    w.take()
    invite_with_replaces(w, b_inv)  # names our early dialog with bob (to-tag ours, from-tag bob's)
    [a_ok] = w.responses(CALLER, 200)
    [d_ok] = final(w)
    assert d_ok.status == 200
    assert media_port(a_ok.body)[1] in relay_ports(w) and media_port(d_ok.body)[1] in relay_ports(w)
    assert media_port(a_ok.body)[1] != media_port(d_ok.body)[1]
    cancel = w.requests(PBX, "CANCEL")[0]
    answer(w, cancel, PBX)
    w.inject(response_to(b_inv, 487, "Request Terminated"), PBX)
    w.inject(in_dialog("ACK", a_ok, cseq=1, branch="z9hG4bKpack", from_side_is_to=False))
    assert len(w.core.calls) == 1 and w.rtp is not None and len(w.rtp.calls) == 1
    w.take()
    w.inject(in_dialog("BYE", a_ok, cseq=2, branch="z9hG4bKpbye", from_side_is_to=False))
    [d_bye] = w.requests(PBX, "BYE")
    assert d_bye.call_id == "dave-1@127.0.0.1"
    answer(w, d_bye, PBX)
    assert not w.core.calls and not w.rtp.calls and not w.core._legs
    assert w.core.stats.calls["answered"] == 1


def test_a_200_that_crosses_the_pickups_cancel_is_taken_and_ended():
    w = wire()
    b_inv, _ = ringing_call(w)
    invite_with_replaces(w, b_inv)
    w.take()
    w.inject(response_to(b_inv, 200, "OK", extra="Content-Type: application/sdp"), PBX, body=DAVE_SDP)
    assert [a.call_id for a in w.requests(PBX, "ACK")] == [b_inv.call_id]
    [bye] = w.requests(PBX, "BYE")
    assert bye.call_id == b_inv.call_id
    answer(w, bye, PBX)
    assert len(w.core.calls) == 1 and not w.requests(CALLER, "BYE")


def test_a_caller_who_cancels_during_the_pickup_leaves_the_picker_480():
    w = Wire(relay=True, overrides=ROUTES, auto_pump=False)
    w.pump()  # the first ping: the relay is alive
    text, _ = invite()
    w.inject(text, CALLER, body=CALLER_SDP)
    w.pump()
    [b_inv] = w.requests(PBX, "INVITE")
    w.inject(response_to(b_inv, 180, "Ringing"), PBX)
    w.pump()
    invite_with_replaces(w, b_inv)  # the relay has not answered yet when the caller gives up
    w.inject(text.replace("INVITE sip:", "CANCEL sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL"), CALLER)
    w.pump()
    assert [r.status for r in final(w)] == [480]
    assert 487 in [r.status for r in w.responses(CALLER)]
    cancel = w.requests(PBX, "CANCEL")[0]
    answer(w, cancel, PBX)
    w.inject(response_to(b_inv, 487, "Request Terminated"), PBX)
    w.pump()
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls
