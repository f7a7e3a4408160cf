"""Hold and resume started by the B2BUA (b2bua/call/hold.py), in virtual time over the fake wire."""

from __future__ import annotations

import pytest

from b2bua.call.call import Call
from b2bua.call.hold import HoldOutcome, HoldReinvite, HoldResult, refusal
from b2bua.call.replacement import Replacement
from b2bua.call.transfer import Transfer
from b2bua.media.leg_sdp import LegSdp, SdpError

from .test_call_flows import establish, ringing
from .wire import CALLER, PBX, SDP, Wire, in_dialog, origin, response_to

HELD_ANSWER = SDP + "a=recvonly\r\n"


def _call(w: Wire) -> Call:
    [call] = w.core.calls
    return call


def _directions(body: bytes) -> list[str]:
    return [line[2:] for line in body.decode().split("\r\n")
            if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")]


def reply(w: Wire, req, status: int, reason: str = "OK", body: str = "") -> None:
    """The party's answer to our re-INVITE (its Contact unchanged)."""
    to_caller = req.call_id != _call(w).b.call_id
    contact = "<sip:alice@127.0.0.1:5070>" if to_caller else "<sip:bob@127.0.0.1:5080>"
    extra = "Content-Type: application/sdp" if body else ""
    w.inject(response_to(req, status, reason, to_tag=None, contact=contact, extra=extra),
             CALLER if to_caller else PBX, body=body)


def start(w: Wire, party: str = "a", hold: bool = True) -> list[HoldOutcome]:
    call = _call(w)
    leg = call.a if party == "a" else call.b
    assert refusal(call, leg, hold) is None
    outcomes: list[HoldOutcome] = []
    HoldReinvite(call, leg, hold, outcomes.append).start()
    return outcomes


# -- LegSdp: the SDP a hold re-offers --------------------------------------------------------------


def test_redirected_holds_and_resumes_per_rfc3264_8_4_under_the_same_origin():
    sdp = LegSdp()
    first = sdp.outgoing(SDP.encode())
    o1 = origin(first)
    held = sdp.redirected(hold=True)
    assert _directions(held) == ["sendonly"]
    o2 = origin(held)
    assert o2[:2] == o1[:2] and int(o2[2]) == int(o1[2]) + 1  # same session, version + 1
    assert sdp.local_held and sdp.local is held
    resumed = sdp.redirected(hold=False)
    assert _directions(resumed) == ["sendrecv"] and int(origin(resumed)[2]) == int(o1[2]) + 2
    assert not sdp.local_held
    # A stream the peer already holds (we answered recvonly) becomes inactive, and back.
    sdp.outgoing((SDP + "a=recvonly\r\n").encode())
    assert _directions(sdp.redirected(hold=True)) == ["inactive"]
    assert _directions(sdp.redirected(hold=False)) == ["recvonly"]


def test_redirected_leaves_disabled_streams_and_needs_a_previous_sdp():
    sdp = LegSdp()
    with pytest.raises(SdpError):
        sdp.redirected(hold=True)
    two = SDP + "m=video 0 RTP/AVP 96\r\n"
    sdp.outgoing(two.encode())
    held = sdp.redirected(hold=True).decode()
    assert held.endswith("m=video 0 RTP/AVP 96\r\n")  # a port-zero stream is left alone
    assert "a=sendonly" in held.split("m=video")[0]


def test_restore_undoes_a_refused_offer():
    sdp = LegSdp()
    first = sdp.outgoing(SDP.encode())
    before = sdp.snapshot()
    sdp.redirected(hold=True)
    sdp.restore(before)
    assert sdp.local is first and not sdp.local_held
    assert origin(sdp.outgoing(SDP.encode()))[2] == origin(first)[2]  # nothing changed: same version


# -- the re-INVITE ---------------------------------------------------------------------------------


def test_hold_then_resume_the_caller():
    w = Wire()
    a200, _, _ = establish(w)
    w.take()
    outcomes = start(w, "a")
    [reinv] = w.requests(CALLER, "INVITE")
    assert reinv.call_id == a200.call_id and reinv.headers.get("Content-Type") == "application/sdp"
    assert _directions(reinv.body) == ["sendonly"]
    assert origin(reinv.body)[:2] == origin(a200.body)[:2]
    assert int(origin(reinv.body)[2]) == int(origin(a200.body)[2]) + 1
    assert not w.requests(PBX, "INVITE"), "only the chosen party is re-INVITEd"
    assert outcomes == []
    reply(w, reinv, 200, body=HELD_ANSWER)
    assert [o.result for o in outcomes] == [HoldResult.DONE] and outcomes[0].status == 200
    [ack] = w.requests(CALLER, "ACK")
    assert ack.cseq.seq == reinv.cseq.seq
    call = _call(w)
    assert call.a.sdp.local_held and call.a.sdp.remote == HELD_ANSWER.encode()
    assert not call.a.reinvite_pending
    assert refusal(call, call.a, True) == "party a is already on hold"
    assert ("party_held", {"call_id": a200.call_id, "side": "a"}) in w.log.events
    w.take()
    outcomes = start(w, "a", hold=False)
    [resume] = w.requests(CALLER, "INVITE")
    assert _directions(resume.body) == ["sendrecv"]
    assert int(origin(resume.body)[2]) == int(origin(a200.body)[2]) + 2
    reply(w, resume, 200, body=SDP)
    assert outcomes[0].ok and not call.a.sdp.local_held
    assert refusal(call, call.a, False) == "party a is not on hold"


def test_hold_the_callee():
    w = Wire()
    establish(w)
    w.take()
    outcomes = start(w, "b")
    [reinv] = w.requests(PBX, "INVITE")
    assert _directions(reinv.body) == ["sendonly"] and reinv.to_tag == "btag"
    reply(w, reinv, 200, body=HELD_ANSWER)
    assert outcomes[0].ok and _call(w).b.sdp.local_held


def test_glare_is_retried_once_after_2_1_s_then_reported_as_a_conflict():
    w = Wire()
    a200, _, _ = establish(w)
    w.take()
    outcomes = start(w, "a")
    [first] = w.requests(CALLER, "INVITE")
    reply(w, first, 491, "Request Pending")
    assert outcomes == [] and not _call(w).a.sdp.local_held  # the refused offer changed nothing
    w.advance(2.0)
    assert len(w.requests(CALLER, "INVITE")) == 1
    w.advance(0.2)
    second = w.requests(CALLER, "INVITE")[1]
    assert second.body == first.body, "the same change is offered again, same version"
    assert second.cseq.seq == first.cseq.seq + 1
    reply(w, second, 491, "Request Pending")
    assert [(o.result, o.status) for o in outcomes] == [(HoldResult.CONFLICT, 491)]
    assert "491" in outcomes[0].reason
    w.advance(5)
    assert len(w.requests(CALLER, "INVITE")) == 2  # retried once only
    assert len(w.core.calls) == 1


def test_glare_retry_succeeds():
    w = Wire()
    establish(w)
    w.take()
    outcomes = start(w, "a")
    [first] = w.requests(CALLER, "INVITE")
    reply(w, first, 491, "Request Pending")
    w.advance(2.2)
    second = w.requests(CALLER, "INVITE")[1]
    reply(w, second, 200, body=HELD_ANSWER)
    assert outcomes[0].ok


def test_a_refused_hold_leaves_the_session_as_it_was():
    w = Wire()
    a200, _, _ = establish(w)
    w.take()
    outcomes = start(w, "a")
    [reinv] = w.requests(CALLER, "INVITE")
    reply(w, reinv, 488, "Not Acceptable Here")
    assert [(o.result, o.status) for o in outcomes] == [(HoldResult.REFUSED, 488)]
    call = _call(w)
    assert not call.a.sdp.local_held and len(w.core.calls) == 1
    # The next offer on that leg is one version above what the caller accepted, as if nothing happened.
    start(w, "a")
    again = w.requests(CALLER, "INVITE")[1]
    assert origin(again.body)[2] == origin(reinv.body)[2]


@pytest.mark.parametrize("status", [481, 408])
def test_a_dead_dialog_ends_the_call(status):
    w = Wire()
    establish(w)
    w.take()
    outcomes = start(w, "a")
    [reinv] = w.requests(CALLER, "INVITE")
    reply(w, reinv, status, "Gone")
    assert outcomes[0].result is HoldResult.REFUSED
    assert w.requests(PBX, "BYE"), "RFC 3261 §12.2.1.2: the other leg is hung up"


def test_no_answer_is_reported_and_ends_the_call():
    w = Wire()
    establish(w)
    w.take()
    outcomes = start(w, "a")
    w.advance(33)  # Timer B = 64·T1
    assert [o.result for o in outcomes] == [HoldResult.NO_ANSWER]
    assert w.requests(PBX, "BYE")


def test_refusals():
    w = Wire()
    ringing(w)
    call = _call(w)
    assert refusal(call, call.a, True) == "the call is early, not answered and up"
    w = Wire()
    a200, _, _ = establish(w)
    call = _call(w)
    assert refusal(call, call.a, True) is None
    # A transfer, an attended one's consultation, Replaces (the attributes are typed: compiled,
    # the call accepts only the right classes).
    under_way = {"transfer": Transfer.__new__(Transfer), "lent": call,
                 "replacement": Replacement.__new__(Replacement)}
    for busy, helper in under_way.items():
        setattr(call, busy, helper)
        assert refusal(call, call.b, True) == "a transfer is in progress", busy
        setattr(call, busy, None)
    # The caller's own re-INVITE is under way (relayed to the callee, unanswered).
    w.inject(in_dialog("INVITE", a200, cseq=2, branch="z9hG4bKre", from_side_is_to=False,
                       extra="Content-Type: application/sdp\nContact: <sip:alice@127.0.0.1:5070>"), body=SDP)
    assert refusal(call, call.a, True) == "a re-INVITE is pending on this call"
    assert refusal(call, call.b, True) == "a re-INVITE is pending on this call"


def test_a_retry_that_finds_the_call_busy_gives_up():
    w = Wire()
    a200, _, _ = establish(w)
    w.take()
    outcomes = start(w, "a")
    [first] = w.requests(CALLER, "INVITE")
    reply(w, first, 491, "Request Pending")
    # Meanwhile the caller's own re-INVITE goes through the B2BUA to the callee.
    w.inject(in_dialog("INVITE", a200, cseq=2, branch="z9hG4bKre", from_side_is_to=False,
                       extra="Content-Type: application/sdp\nContact: <sip:alice@127.0.0.1:5070>"), body=SDP)
    w.advance(2.2)
    assert [(o.result, o.reason) for o in outcomes] == [(HoldResult.CONFLICT, "a re-INVITE is pending on this call")]
    assert len(w.requests(CALLER, "INVITE")) == 1
