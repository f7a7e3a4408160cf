"""Calls whose media is anchored on a relay: the SIP side of SDP rewriting, in virtual time.

The relay is the real rtp_relay `Relay` behind its ng `ControlCore`, in process (no sockets); the
B2BUA's ng client talks to it over the fake wire, so every offer/answer below really allocated
ports, and a dropped relay is really silent.
"""

from __future__ import annotations

from b2bua.sip.address import Address
from b2bua.sip.parser import parse_message
from rtp_relay.sdp import SessionDescription

from .test_call_flows import cancel_for
from .wire import CALLER, PBX, SDP, Wire, in_dialog, invite, origin, response_to

CALLER_SDP = SDP  # caller media at 127.0.0.1:4000
CALLEE_SDP = SDP.replace("m=audio 4000", "m=audio 6000").replace("o=- 1 1", "o=- 77 5")


def media_port(body: bytes) -> tuple[str, int]:
    sdp = SessionDescription.parse(body)
    conn = sdp.connection_for(0)
    assert conn is not None
    return conn.address, sdp.media[0].port


def relay_ports(w: Wire) -> set[int]:
    assert w.rtp is not None
    return {p.port for p in w.rtp.live_ports()}


def establish(w: Wire, *, offer: bool = True, source: Address = CALLER):
    """An answered call from the caller (sending from `source`) to bob: (a200, b_inv, b200)."""
    text, _ = invite()
    w.inject(text, source, body=CALLER_SDP if offer else "")
    [b_inv] = w.requests(PBX, "INVITE")
    b200_text = response_to(b_inv, 200, "OK", extra="Content-Type: application/sdp")
    w.inject(b200_text, PBX, body=CALLEE_SDP)
    [a200] = w.responses(source, 200)
    w.inject(in_dialog("ACK", a200, cseq=1, branch="z9hG4bKack1", from_side_is_to=False,
                       extra="" if offer else "Content-Type: application/sdp"), source,
             body="" if offer else CALLER_SDP)
    b200 = parse_message((b200_text.replace("\n", "\r\n") + "\r\nContent-Length: 0\r\n\r\n").encode())
    return a200, b_inv, b200


def bye_from_caller(w: Wire, a200) -> None:
    w.inject(in_dialog("BYE", a200, cseq=2, branch="z9hG4bKbye1", from_side_is_to=False))
    [b_bye] = w.requests(PBX, "BYE")
    w.inject(response_to(b_bye, 200, "OK", to_tag=None), PBX)


def test_both_legs_see_only_relay_ports_and_the_call_end_releases_them():
    w = Wire(relay=True)
    a200, b_inv, _ = establish(w)
    to_callee, to_caller = media_port(b_inv.body), media_port(a200.body)
    # Each party is told to send to a relay port, never to the other party's own address.
    assert to_callee[0] == to_caller[0] == "127.0.0.1"
    assert {to_callee[1], to_caller[1]} <= relay_ports(w) and to_callee[1] != to_caller[1]
    assert 4000 not in (to_callee[1], to_caller[1]) and 6000 not in (to_callee[1], to_caller[1])
    # The relay knows where each party receives: its signalled addresses are the real ones.
    assert w.rtp is not None and len(w.rtp.calls) == 1
    [rcall] = w.rtp.calls.values()
    signalled = {ep.signalled_rtp for st in rcall.streams for ep in (st.a, st.b)}
    assert signalled == {("127.0.0.1", 4000), ("127.0.0.1", 6000)}
    # o= belongs to each leg (not the far party's session id 77).
    assert origin(a200.body)[1] != "77" and origin(b_inv.body)[1] != "1"
    bye_from_caller(w, a200)
    assert not w.rtp.calls and w.rtp.ports.ports_in_use == 0
    assert w.core.relays is not None and w.core.relays.relays[0].sessions == 0


def test_messages_wait_for_the_relay_and_keep_their_order():
    w = Wire(relay=True, auto_pump=False)
    w.pump()  # the first ping: the relay is alive
    text, _ = invite()
    w.inject(text, body=CALLER_SDP)
    assert not w.requests(PBX, "INVITE")  # the offer is at the relay
    w.pump()
    [b_inv] = w.requests(PBX, "INVITE")
    w.inject(response_to(b_inv, 183, "Session Progress", extra="Content-Type: application/sdp"), PBX,
             body=CALLEE_SDP)
    w.inject(response_to(b_inv, 180, "Ringing"), PBX)
    w.inject(response_to(b_inv, 200, "OK", extra="Content-Type: application/sdp"), PBX, body=CALLEE_SDP)
    assert [r.status for r in w.responses(CALLER) if r.status > 100] == []
    w.pump()
    assert [r.status for r in w.responses(CALLER) if r.status > 100] == [183, 180, 200]
    statuses = [r for r in w.responses(CALLER) if r.status in (183, 200)]
    assert media_port(statuses[0].body) == media_port(statuses[1].body)  # one relay port for the caller


def test_cancel_while_the_relay_prepares_the_offer_leaves_nothing_behind():
    w = Wire(relay=True, auto_pump=False)
    w.pump()
    text, _ = invite()
    w.inject(text, body=CALLER_SDP)
    w.inject(cancel_for(text))
    assert w.responses(CALLER, 487)
    w.pump()
    assert not w.requests(PBX, "INVITE")  # the callee never rang
    assert w.rtp is not None and not w.rtp.calls  # the offer's ports were released again
    assert not w.core.calls and w.core.stats.calls["cancelled"] == 1


def test_late_offer_the_callees_offer_and_the_callers_answer_are_both_anchored():
    w = Wire(relay=True)
    a200, b_inv, _ = establish(w, offer=False)
    assert b_inv.body == b""
    assert media_port(a200.body)[1] in relay_ports(w)  # the callee's offer, rewritten
    [b_ack] = w.requests(PBX, "ACK")
    assert media_port(b_ack.body)[1] in relay_ports(w)  # the caller's answer, rewritten
    assert media_port(b_ack.body) != media_port(a200.body)


def test_reinvite_to_a_new_port_keeps_the_relay_ports_and_moves_the_relay_target():
    w = Wire(relay=True)
    a200, b_inv, b200 = establish(w)
    moved = CALLEE_SDP.replace("m=audio 6000", "m=audio 6100")
    w.inject(in_dialog("INVITE", b200, cseq=5, branch="z9hG4bKre1", from_side_is_to=True, via="127.0.0.1:5080",
                       extra="Content-Type: application/sdp\nContact: <sip:bob@127.0.0.1:5080>"), PBX, body=moved)
    [a_reinv] = w.requests(CALLER, "INVITE")
    assert media_port(a_reinv.body) == media_port(a200.body)  # the caller keeps sending to the same port
    assert int(origin(a_reinv.body)[2]) == int(origin(a200.body)[2])  # same SDP for the caller: no new version
    w.inject(response_to(a_reinv, 200, "OK", to_tag=None, contact="<sip:alice@127.0.0.1:5070>",
                         extra="Content-Type: application/sdp"), CALLER, body=CALLER_SDP)
    [reply] = [r for r in w.responses(PBX, 200) if r.cseq.method == "INVITE"]
    assert media_port(reply.body) == media_port(b_inv.body)
    assert w.rtp is not None
    [rcall] = w.rtp.calls.values()
    assert {ep.signalled_rtp for st in rcall.streams for ep in (st.a, st.b)} == {
        ("127.0.0.1", 4000), ("127.0.0.1", 6100)}


def test_bad_sdp_from_the_caller_is_refused_with_488_and_the_callee_never_rings():
    w = Wire(relay=True)
    text, _ = invite()
    w.inject(text, body="this is not sdp\r\n")
    [resp] = w.responses(CALLER, 488)
    assert "b2bua" in (resp.headers.get("Warning") or "")
    assert not w.requests(PBX, "INVITE") and not w.core.calls
    assert w.core.stats.calls["rejected"] == 1


def test_no_relay_answering_means_503_for_new_calls():
    w = Wire(relay=True)
    w.relay_down = True
    w.advance(10)  # pings go unanswered: the relay is declared down
    assert w.core.relays is not None and w.core.relays.alive_count == 0
    text, _ = invite()
    w.inject(text, body=CALLER_SDP)
    [resp] = w.responses(CALLER, 503)
    assert "media relay" in resp.reason
    assert not w.requests(PBX, "INVITE") and not w.core.calls


def test_a_relay_that_stops_answering_ends_its_calls_with_bye_on_both_legs():
    w = Wire(relay=True)
    a200, _, _ = establish(w)
    w.relay_down = True
    w.advance(6)  # 2 s ping interval + 3.5 s of retransmissions: declared down
    a_bye = w.requests(CALLER, "BYE")[0]  # (retransmitted until answered)
    b_bye = w.requests(PBX, "BYE")[0]
    assert "media relay failed" in (a_bye.headers.get("Reason") or "")
    w.inject(response_to(a_bye, 200, "OK", to_tag=None), CALLER)
    w.inject(response_to(b_bye, 200, "OK", to_tag=None), PBX)
    assert not w.core.calls
    assert w.core.stats.media_events["relay_down"] == 1 and w.core.stats.media_events["call_ended"] == 1
    # The relay comes back: new calls are served again.
    w.relay_down = False
    w.advance(3)
    assert w.core.relays is not None and w.core.relays.alive_count == 1
    w.take()
    establish(w)
    assert len(w.core.calls) == 1


def test_media_timeout_ends_the_call_unless_it_is_on_hold():
    w = Wire(relay=True, overrides={"media": {"enabled": True, "relays": ["127.0.0.1:2223"], "timeout_s": 30,
                                              "check_interval_s": 5}})
    assert w.rtp is not None
    a200, _, b200 = establish(w)
    # The caller puts the call on hold: silence is expected, no hangup however long it lasts.
    hold = CALLER_SDP.replace("m=audio 4000 RTP/AVP 0\r\n", "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n")
    w.inject(in_dialog("INVITE", a200, cseq=2, branch="z9hG4bKhold", from_side_is_to=False,
                       extra="Content-Type: application/sdp\nContact: <sip:alice@127.0.0.1:5070>"), body=hold)
    [b_reinv] = w.requests(PBX, "INVITE")[1:]
    w.inject(response_to(b_reinv, 200, "OK", to_tag=None, extra="Content-Type: application/sdp"), PBX,
             body=CALLEE_SDP.replace("RTP/AVP 0\r\n", "RTP/AVP 0\r\na=recvonly\r\n"))
    for _ in range(12):
        w.advance(5)
        w.rtp.tick(w.sched.now)
    assert not w.requests(CALLER, "BYE") and len(w.core.calls) == 1
    # Resumed, and still no packets: the relay flags the call and the B2BUA hangs up both legs.
    w.inject(in_dialog("INVITE", a200, cseq=3, branch="z9hG4bKresume", from_side_is_to=False,
                       extra="Content-Type: application/sdp\nContact: <sip:alice@127.0.0.1:5070>"), body=CALLER_SDP)
    [b_reinv2] = w.requests(PBX, "INVITE")[2:]
    w.inject(response_to(b_reinv2, 200, "OK", to_tag=None, extra="Content-Type: application/sdp"), PBX,
             body=CALLEE_SDP)
    for _ in range(5):  # 25 s of silence after the resume: within media.timeout_s = 30
        w.advance(5)
        w.rtp.tick(w.sched.now)
    assert not w.requests(CALLER, "BYE")
    for _ in range(3):  # the relay's packet totals stood still for 30 s (the relay itself flags at 60 s)
        w.advance(5)
        w.rtp.tick(w.sched.now)
    a_bye, b_bye = w.requests(CALLER, "BYE")[0], w.requests(PBX, "BYE")[0]
    assert "media timeout" in (a_bye.headers.get("Reason") or "")
    assert "media timeout" in (b_bye.headers.get("Reason") or "")
    assert w.core.stats.media_events["timeout"] == 1


def test_media_that_keeps_flowing_keeps_the_call_up():
    w = Wire(relay=True, overrides={"media": {"enabled": True, "relays": ["127.0.0.1:2223"], "timeout_s": 20,
                                              "check_interval_s": 5}})
    assert w.rtp is not None
    establish(w)
    [rcall] = w.rtp.calls.values()
    for _ in range(24):  # two minutes with a packet counted every 5 s, one way only
        rcall.streams[0].a.rtp.packets += 1
        w.advance(5)
        w.rtp.tick(w.sched.now)
    assert not w.requests(CALLER, "BYE") and len(w.core.calls) == 1
    for _ in range(5):  # then silence: the B2BUA's own 20 s judgement ends it
        w.advance(5)
    assert w.requests(CALLER, "BYE") and w.core.stats.media_events["timeout"] == 1
