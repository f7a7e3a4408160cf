"""Blind transfers the B2BUA carries out itself (REFER, transfers.mode = terminate), in virtual time.

The media relay is the real in-process rtp_relay (see wire.py), so the re-anchoring is checked on
the ports the relay really allocated.
"""

from __future__ import annotations

import pytest

from b2bua.call.leg import ENDED
from b2bua.sip.address import Address
from b2bua.sip.message import Request
from rtp_relay.sdp import SessionDescription

from .test_call_media import CALLEE_SDP, CALLER_SDP, establish, media_port, relay_ports
from .wire import CALLER, PBX, Wire, in_dialog, origin, response_to

TARGET = Address("udp", "127.0.0.1", 5090)
TARGET_SDP = CALLEE_SDP.replace("m=audio 6000", "m=audio 7000").replace("o=- 77 5", "o=- 99 1")
ROUTES = {"routing": {"next_hop": "127.0.0.1:5080", "rules": [{"user_prefix": "carol", "next_hop": "127.0.0.1:5090"}]}}


def wire(**over) -> Wire:
    return Wire(relay=True, overrides={**ROUTES, **over})


def refer_from_callee(w: Wire, b200, *, cseq: int = 2, target: str = "<sip:carol@example.com>",
                      extra: str = "") -> None:
    w.inject(in_dialog("REFER", b200, cseq=cseq, branch=f"z9hG4bKref{cseq}", from_side_is_to=True,
                       via="127.0.0.1:5080",
                       extra=f"Refer-To: {target}\nReferred-By: <sip:bob@127.0.0.1>\n"
                             f"Contact: <sip:bob@127.0.0.1:5080>{extra}"), PBX)


def sipfrags(w: Wire, dest: Address = PBX) -> list[tuple[str, str]]:
    """(first line of the sipfrag, Subscription-State) of every NOTIFY sent to `dest`, answered 200."""
    out, seen = [], set()
    for n in w.requests(dest, "NOTIFY"):
        if n.cseq.seq not in seen:  # not the retransmissions
            seen.add(n.cseq.seq)
            out.append((n.body.decode().split("\r\n")[0], n.headers.get("Subscription-State") or ""))
    return out


def answer_all(w: Wire, dest: Address, method: str) -> None:
    for req in w.requests(dest, method):
        w.inject(response_to(req, 200, "OK", to_tag=None), dest)


def target_answers(w: Wire, status: int = 200, reason: str = "OK") -> Request:
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>"), TARGET)
    extra = "Content-Type: application/sdp" if status == 200 else ""
    w.inject(response_to(t_inv, status, reason, to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>", extra=extra),
             TARGET, body=TARGET_SDP if status == 200 else "")
    return t_inv


def test_blind_transfer_by_the_callee_rebridges_the_caller_to_the_target():
    blind_transfer_by_the_callee(settled=False)


def test_a_blind_transfer_works_the_same_after_the_invite_transactions_have_ended():
    blind_transfer_by_the_callee(settled=True)


def blind_transfer_by_the_callee(settled: bool):
    w = wire()
    a200, _, b200 = establish(w)
    if settled:
        # 40 s on, the INVITE transactions have ended: the call let go of them and kept only its
        # INVITEs' skeletons (Call.transaction_ended). The transfer needs nothing more.
        w.advance(40)
        [call] = w.core.calls
        assert call.a_invite_tx is ENDED and call.b_invite_tx is ENDED and call.a.invite_tx is ENDED
        assert call.a_invite.body == b"" and len(call.a_invite.headers) == 4
        assert not w.core._tx_owner and not w.core._a_invites and w.core._call_txs[call] == []
    refer_from_callee(w, b200)
    [accepted] = w.responses(PBX, 202)
    assert accepted.headers.get("Contact")
    t_inv = w.requests(TARGET, "INVITE")[0]
    # The target is called as the transferee would: the caller's identity, Referred-By copied,
    # and an SDP offer on relay ports (the caller's media, re-anchored on a new session).
    assert "alice" in t_inv.headers.get("From")
    assert t_inv.headers.get("Referred-By") == "<sip:bob@127.0.0.1>"
    assert media_port(t_inv.body)[1] in relay_ports(w)
    target_answers(w)
    assert sipfrags(w) == [("SIP/2.0 100 Trying", "active;expires=150"),
                           ("SIP/2.0 180 Ringing", "active;expires=150"),
                           ("SIP/2.0 200 OK", "terminated;reason=noresource")]
    assert [a.to_tag for a in w.requests(TARGET, "ACK")] == ["ctag"]
    # The transferor is released; the caller is re-INVITEd onto the target's media.
    [b_bye] = w.requests(PBX, "BYE")
    assert "transferred" in b_bye.headers.get("Reason")
    [a_reinv] = w.requests(CALLER, "INVITE")
    assert media_port(a_reinv.body)[1] in relay_ports(w)
    assert origin(a_reinv.body)[1] == origin(a200.body)[1]  # the caller's session goes on (RFC 3264 §8)
    assert int(origin(a_reinv.body)[2]) > int(origin(a200.body)[2])
    w.inject(response_to(a_reinv, 200, "OK", to_tag=None, contact="<sip:alice@127.0.0.1:5070>",
                         extra="Content-Type: application/sdp"), CALLER, body=CALLER_SDP)
    assert len(w.requests(CALLER, "ACK")) == 1
    answer_all(w, PBX, "NOTIFY")
    answer_all(w, PBX, "BYE")
    # The relay now joins the caller (4000) and the target (7000); the callee's session is gone.
    assert w.rtp is not None and len(w.rtp.calls) == 1
    [rcall] = w.rtp.calls.values()
    assert {ep.signalled_rtp for st in rcall.streams for ep in (st.a, st.b)} == {
        ("127.0.0.1", 4000), ("127.0.0.1", 7000)}
    # The caller hangs up: the BYE goes to the target, and everything is released.
    w.inject(in_dialog("BYE", a200, cseq=9, branch="z9hG4bKbyeA", from_side_is_to=False))
    [t_bye] = w.requests(TARGET, "BYE")
    w.inject(response_to(t_bye, 200, "OK", to_tag=None), TARGET)
    assert not w.core.calls and not w.rtp.calls and w.rtp.ports.ports_in_use == 0
    assert not w.core._legs and not w.core._tx_owner


def test_blind_transfer_by_the_caller_works_the_same_way():
    w = wire()
    a200, _, b200 = establish(w)
    w.inject(in_dialog("REFER", a200, cseq=2, branch="z9hG4bKrefA", from_side_is_to=False,
                       extra="Refer-To: sip:carol@example.com\nContact: <sip:alice@127.0.0.1:5070>"))
    assert w.responses(CALLER, 202)
    target_answers(w)
    assert [f for f, _ in sipfrags(w, CALLER)] == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    assert w.requests(CALLER, "BYE")  # the transferor (the caller) is released
    [b_reinv] = w.requests(PBX, "INVITE")[1:]  # the callee is the transferee now
    w.inject(response_to(b_reinv, 200, "OK", to_tag=None, extra="Content-Type: application/sdp"), PBX,
             body=CALLEE_SDP)
    w.inject(in_dialog("BYE", b200, cseq=7, branch="z9hG4bKbyeB", from_side_is_to=True, via="127.0.0.1:5080"), PBX)
    assert w.requests(TARGET, "BYE")


@pytest.mark.parametrize("status,reason", [(486, "Busy Here"), (603, "Decline"), (480, "Temporarily Unavailable")])
def test_a_target_that_refuses_leaves_the_call_as_it_was(status, reason):
    w = wire()
    a200, _, b200 = establish(w)
    refer_from_callee(w, b200)
    target_answers(w, status, reason)
    assert sipfrags(w)[-1] == (f"SIP/2.0 {status} {reason}", "terminated;reason=noresource")
    assert not w.requests(PBX, "BYE") and not w.requests(CALLER, "INVITE")
    assert w.core.calls and w.rtp is not None and len(w.rtp.calls) == 1  # the target's session released
    # Still bridged to the transferor: the caller's BYE reaches the callee.
    w.inject(in_dialog("BYE", a200, cseq=9, branch="z9hG4bKbyeA", from_side_is_to=False))
    assert w.requests(PBX, "BYE") and not w.requests(TARGET, "BYE")


def test_a_target_that_never_answers_is_reported_408():
    w = wire()
    _, _, b200 = establish(w)
    refer_from_callee(w, b200)
    answer_all(w, PBX, "NOTIFY")
    w.advance(40)  # Timer B: 64*T1
    assert sipfrags(w)[-1] == ("SIP/2.0 408 Request Timeout", "terminated;reason=noresource")
    assert w.core.calls and not w.requests(CALLER, "INVITE")


def test_the_transfer_goes_on_when_the_transferor_hangs_up_right_after_the_202():
    w = wire()
    a200, _, b200 = establish(w)
    refer_from_callee(w, b200)
    w.inject(in_dialog("BYE", b200, cseq=3, branch="z9hG4bKbyeB", from_side_is_to=True, via="127.0.0.1:5080"), PBX)
    assert not w.requests(CALLER, "BYE")  # the caller is kept
    target_answers(w)
    assert not w.requests(PBX, "BYE")  # nothing more to say to the transferor
    [a_reinv] = w.requests(CALLER, "INVITE")
    w.inject(response_to(a_reinv, 200, "OK", to_tag=None, extra="Content-Type: application/sdp"), CALLER,
             body=CALLER_SDP)
    assert len(w.core.calls) == 1


def test_when_the_transferee_hangs_up_the_ringing_target_is_cancelled():
    w = wire()
    a200, _, b200 = establish(w)
    refer_from_callee(w, b200)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag"), TARGET)
    w.inject(in_dialog("BYE", a200, cseq=9, branch="z9hG4bKbyeA", from_side_is_to=False))
    assert w.requests(TARGET, "CANCEL") and w.requests(PBX, "BYE")
    answer_all(w, PBX, "BYE")
    assert w.core.calls  # waits for the target's INVITE to end
    w.inject(response_to(t_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls


def test_refusals():
    w = wire(transfers={"deny": [{"user": "900*"}]})
    _, _, b200 = establish(w)
    refer_from_callee(w, b200, cseq=2, target="<sip:9001234@example.com>")
    assert w.responses(PBX, 403)[-1].reason.startswith("Forbidden")
    refer_from_callee(w, b200, cseq=3, target="<sip:carol@example.com;method=BYE>")
    assert w.responses(PBX, 403)[-1].reason == "Only INVITE transfers are allowed"
    refer_from_callee(w, b200, cseq=4, target="<sip:carol@example.com?Replaces=x%3Bto-tag%3D1%3Bfrom-tag%3D2>")
    assert w.responses(PBX, 403)[-1].reason == "Forbidden (Replaces names no dialog of this B2BUA)"
    assert not w.requests(TARGET, "INVITE")  # a refused target receives nothing
    refer_from_callee(w, b200, cseq=5)
    refer_from_callee(w, b200, cseq=6)
    assert w.responses(PBX, 491)  # one transfer at a time


def test_transfers_can_be_switched_off():
    w = wire(transfers={"mode": "reject"})
    _, _, b200 = establish(w)
    refer_from_callee(w, b200)
    [resp] = w.responses(PBX, 403)
    assert "disabled" in resp.reason and not w.requests(TARGET, "INVITE")


def test_refer_rate_limit_per_dialog():
    w = wire(transfers={"max_refers_per_dialog": 2, "refer_window_s": 60})
    _, _, b200 = establish(w)
    for cseq in (2, 3, 4):
        refer_from_callee(w, b200, cseq=cseq, target="<sip:9001@example.com;method=BYE>")
    assert [r.status for r in w.responses(PBX) if r.cseq.method == "REFER"] == [403, 403, 403]
    assert "too many" in w.responses(PBX, 403)[-1].reason


def test_blind_transfer_without_a_relay_passes_the_sdp():
    w = Wire(overrides=ROUTES)
    a200, _, b200 = establish(w)
    refer_from_callee(w, b200)
    [t_inv] = w.requests(TARGET, "INVITE")
    offer = SessionDescription.parse(t_inv.body)
    assert offer.media[0].port == 4000 and offer.direction(0) == "sendrecv"
    target_answers(w)
    [a_reinv] = w.requests(CALLER, "INVITE")
    assert SessionDescription.parse(a_reinv.body).media[0].port == 7000


def test_glare_on_the_transferees_reinvite_is_retried_with_the_same_offer():
    w = wire()
    _, _, b200 = establish(w)
    refer_from_callee(w, b200)
    target_answers(w)
    [first] = w.requests(CALLER, "INVITE")
    w.inject(response_to(first, 491, "Request Pending", to_tag=None), CALLER)
    w.advance(1)
    assert len({r.cseq.seq for r in w.requests(CALLER, "INVITE")}) == 1  # RFC 3261 §14.1: wait first
    w.advance(2)
    second = [r for r in w.requests(CALLER, "INVITE") if r.cseq.seq != first.cseq.seq]
    assert second and second[0].body == first.body
    w.inject(response_to(second[0], 200, "OK", to_tag=None, contact="<sip:alice@127.0.0.1:5070>",
                         extra="Content-Type: application/sdp"), CALLER, body=CALLER_SDP)
    # The 491 was ACKed by its transaction, the 200 by the call.
    assert [a.cseq.seq for a in w.requests(CALLER, "ACK")] == [first.cseq.seq, second[0].cseq.seq]


def test_with_recall_a_failure_after_the_transferor_left_calls_it_back():
    w = wire(transfers={"recall_transferor": True})
    a200, b_inv, b200 = establish(w)
    refer_from_callee(w, b200)
    w.inject(in_dialog("BYE", b200, cseq=3, branch="z9hG4bKbyeB", from_side_is_to=True, via="127.0.0.1:5080"), PBX)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(t_inv, 486, "Busy Here", to_tag="ctag"), TARGET)
    w.advance(0)
    assert not w.requests(CALLER, "BYE")
    [recall] = [r for r in w.requests(PBX, "INVITE") if r.call_id != b_inv.call_id]
    assert str(recall.uri) == "sip:bob@127.0.0.1:5080"
    assert w.core.stats.transfers[("blind", "failed")] == 1
