"""Attended, supervised and early-completion transfers (REFER with Replaces), in virtual time.

Call 1: alice (the transferee, CALLER) -> bob (the transferor, behind the PBX). The consultation
call 2: bob -> carol (the target) through the B2BUA. bob's REFER on call 1 names call 2 in its
Replaces; the B2BUA joins alice to carol's existing leg without calling carol again. The media relay
is the real in-process rtp_relay (see wire.py).
"""

from __future__ import annotations

from b2bua.sip.address import Address
from b2bua.sip.message import Request, Response

from .test_call_media import CALLEE_SDP, CALLER_SDP, establish, media_port, relay_ports
from .test_transfer import TARGET, TARGET_SDP, sipfrags, wire
from .wire import CALLER, PBX, SDP, Wire, in_dialog, response_to

BOB_SDP = SDP.replace("m=audio 4000", "m=audio 6100").replace("o=- 1 1", "o=- 55 1")
CAROL_SDP2 = TARGET_SDP.replace("m=audio 7000", "m=audio 7002")
OTHER_PBX = Address("udp", "127.0.0.9", 5080)


def consult(w: Wire, *, answer: bool = True, source: Address = PBX) -> tuple[Response, Request]:
    """bob calls carol through the B2BUA; returns (the 200 or 180 bob got, carol's INVITE)."""
    text = f"""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP {source.host}:5080;branch=z9hG4bKconsult
From: <sip:bob@127.0.0.1>;tag=bobtag2
To: <sip:carol@127.0.0.1:5060>
Call-ID: consult-1@127.0.0.1
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:bob@{source.host}:5080>
Content-Type: application/sdp"""
    w.inject(text, source, body=BOB_SDP)
    [c_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(c_inv, 180, "Ringing", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>"), TARGET)
    if not answer:
        [ringing] = w.responses(source, 180)
        return ringing, c_inv
    w.inject(response_to(c_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                         extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
    [ok] = [r for r in w.responses(source, 200) if r.cseq.method == "INVITE" and r.call_id.startswith("consult")]
    w.inject(in_dialog("ACK", ok, cseq=1, branch="z9hG4bKcack", from_side_is_to=False, via=f"{source.host}:5080"),
             source)
    return ok, c_inv


def refer_with_replaces(w: Wire, b200: Response, consult_msg: Response, *, cseq: int = 2, params: str = "") -> None:
    replaces = f"{consult_msg.call_id}%3Bto-tag%3D{consult_msg.to_tag}%3Bfrom-tag%3Dbobtag2{params}"
    w.inject(in_dialog("REFER", b200, cseq=cseq, branch=f"z9hG4bKaref{cseq}", from_side_is_to=True,
                       via="127.0.0.1:5080",
                       extra=f"Refer-To: <sip:carol@127.0.0.1?Replaces={replaces}>\n"
                             "Referred-By: <sip:bob@127.0.0.1>\nContact: <sip:bob@127.0.0.1:5080>"), PBX)


def answer(w: Wire, req: Request, dest: Address, body: str = "", status: int = 200, reason: str = "OK") -> None:
    extra = "Content-Type: application/sdp" if body else ""
    contact = {TARGET: "<sip:carol@127.0.0.1:5090>", CALLER: "<sip:alice@127.0.0.1:5070>"}.get(
        dest, "<sip:bob@127.0.0.1:5080>")
    w.inject(response_to(req, status, reason, to_tag=None, extra=extra, contact=contact), dest, body=body)


def ok_all(w: Wire, dest: Address, method: str) -> None:
    for req in w.requests(dest, method):
        answer(w, req, dest)


def reinvites(w: Wire, dest: Address, call_id: str) -> list[Request]:
    seen, out = set(), []
    for r in w.requests(dest, "INVITE"):
        if r.call_id == call_id and r.headers.get("To") and ";tag=" in r.headers.get("To") \
                and r.cseq.seq not in seen:
            seen.add(r.cseq.seq)
            out.append(r)
    return out


def bob_byes(w: Wire) -> set[str]:
    return {r.call_id for r in w.requests(PBX, "BYE")}


def test_attended_transfer_joins_the_transferee_to_the_consulted_target():
    attended_transfer(settled=False)


def test_an_attended_transfer_works_the_same_after_the_invite_transactions_have_ended():
    attended_transfer(settled=True)


def attended_transfer(settled: bool):
    w = wire()
    a200, b_inv, b200 = establish(w)
    c200, c_inv = consult(w)
    if settled:
        w.advance(40)  # both calls keep only their INVITEs' skeletons (Call.transaction_ended)
        assert all(call.b_invite is not None and not call.b_invite.body for call in w.core.calls)
    assert len(w.core.calls) == 2 and w.rtp is not None and len(w.rtp.calls) == 2
    w.take()
    refer_with_replaces(w, b200, c200)
    assert w.responses(PBX, 202)
    # carol is not called again: her existing dialog is re-INVITEd onto a new relay session.
    assert not [r for r in w.requests(TARGET, "INVITE") if ";tag=" not in r.headers.get("To")]
    [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
    assert media_port(t_reinv.body)[1] in relay_ports(w)
    answer(w, t_reinv, TARGET, CAROL_SDP2)
    assert [a.cseq.seq for a in w.requests(TARGET, "ACK")] == [t_reinv.cseq.seq]
    assert sipfrags(w) == [("SIP/2.0 100 Trying", "active;expires=150"),
                           ("SIP/2.0 200 OK", "terminated;reason=noresource")]
    # Both of bob's dialogs are released; alice is re-INVITEd onto carol's media.
    assert bob_byes(w) == {b_inv.call_id, c200.call_id}
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    assert media_port(a_reinv.body)[1] in relay_ports(w)
    answer(w, a_reinv, CALLER, CALLER_SDP)
    ok_all(w, PBX, "BYE")
    ok_all(w, PBX, "NOTIFY")
    # One call is left (alice-carol) on one relay session; the consultation ended as transferred.
    assert len(w.core.calls) == 1 and len(w.rtp.calls) == 1
    assert w.core.stats.calls["transferred"] == 1
    assert w.core.stats.transfers[("attended", "completed")] == 1
    # alice and carol now talk through the relay; a BYE from alice reaches carol's dialog.
    w.take()
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    [t_bye] = w.requests(TARGET, "BYE")
    assert t_bye.call_id == c_inv.call_id
    answer(w, t_bye, TARGET)
    assert not w.core.calls and not w.rtp.calls and not w.core._legs


def test_supervised_transfer_with_the_consultation_held_takes_the_target_off_hold():
    w = wire()
    a200, _, b200 = establish(w)
    c200, c_inv = consult(w)
    # bob holds carol (re-INVITE sendonly through the B2BUA), then transfers.
    w.inject(in_dialog("INVITE", c200, cseq=2, branch="z9hG4bKhold", from_side_is_to=False, via="127.0.0.1:5080",
                       extra="Content-Type: application/sdp\nContact: <sip:bob@127.0.0.1:5080>"),
             PBX, body=BOB_SDP + "a=sendonly\r\n")
    [hold] = reinvites(w, TARGET, c_inv.call_id)
    answer(w, hold, TARGET, TARGET_SDP + "a=recvonly\r\n")
    [held_ok] = [r for r in w.responses(PBX, 200) if r.cseq.seq == 2 and r.call_id == c200.call_id]
    w.inject(in_dialog("ACK", held_ok, cseq=2, branch="z9hG4bKhack", from_side_is_to=False, via="127.0.0.1:5080"),
             PBX)
    w.take()
    refer_with_replaces(w, b200, c200)
    [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
    assert not any(d in t_reinv.body.decode() for d in ("sendonly", "recvonly", "inactive"))  # sendrecv
    answer(w, t_reinv, TARGET, CAROL_SDP2)
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    answer(w, a_reinv, CALLER, CALLER_SDP)
    assert w.core.stats.transfers[("attended", "completed")] == 1


def test_a_target_refusing_the_reinvite_leaves_both_calls_as_they_were():
    w = wire()
    a200, b_inv, b200 = establish(w)
    c200, c_inv = consult(w)
    w.take()
    refer_with_replaces(w, b200, c200)
    [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
    answer(w, t_reinv, TARGET, status=488, reason="Not Acceptable Here")
    assert sipfrags(w)[-1] == ("SIP/2.0 488 Not Acceptable Here", "terminated;reason=noresource")
    assert not w.requests(PBX, "BYE") and not reinvites(w, CALLER, a200.call_id)
    assert len(w.core.calls) == 2 and w.rtp is not None and len(w.rtp.calls) == 2
    assert w.core.stats.transfers[("attended", "failed")] == 1
    # The consultation goes on: bob's BYE on it reaches carol, and call 1 stays up.
    w.take()
    w.inject(in_dialog("BYE", c200, cseq=2, branch="z9hG4bKcbye", from_side_is_to=False, via="127.0.0.1:5080"),
             PBX)
    [t_bye] = w.requests(TARGET, "BYE")
    answer(w, t_bye, TARGET)
    assert len(w.core.calls) == 1 and w.core.stats.calls["answered"] == 1
    # The consultation lets go of its legs (leg.py) one turn later; call 1, which sent the refused
    # re-INVITE on carol's leg, then ends cleanly when bob hangs it up too.
    w.advance(1)
    w.take()
    w.inject(in_dialog("BYE", b200, cseq=10, branch="z9hG4bKbbye", from_side_is_to=True, via="127.0.0.1:5080"),
             PBX)
    [a_bye] = w.requests(CALLER, "BYE")
    answer(w, a_bye, CALLER)
    assert not w.core.calls and w.core.stats.calls["answered"] == 2


def test_early_completion_releases_the_transferor_and_joins_the_target_when_it_answers():
    w = wire()
    a200, b_inv, b200 = establish(w)
    ringing, c_inv = consult(w, answer=False)
    w.take()
    refer_with_replaces(w, b200, ringing)
    assert w.responses(PBX, 202)
    # bob is released at once: his consultation INVITE ends 487, call 1 gets BYE after NOTIFY 200.
    [ended] = [r for r in w.responses(PBX, 487) if r.call_id == ringing.call_id]
    assert "elsewhere" in ended.headers.get("Reason")
    assert sipfrags(w) == [("SIP/2.0 100 Trying", "active;expires=150"),
                           ("SIP/2.0 200 OK", "terminated;reason=noresource")]
    assert bob_byes(w) == {b_inv.call_id}
    assert not w.requests(TARGET, "CANCEL")
    # carol answers the ringing INVITE: ACKed, then moved onto alice's media by a re-INVITE.
    w.inject(response_to(c_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                         extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
    assert [a.cseq.seq for a in w.requests(TARGET, "ACK")] == [1]
    [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
    answer(w, t_reinv, TARGET, CAROL_SDP2)
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    assert media_port(a_reinv.body)[1] in relay_ports(w)
    answer(w, a_reinv, CALLER, CALLER_SDP)
    ok_all(w, PBX, "BYE")
    assert w.core.stats.transfers[("early", "completed")] == 1
    assert len(w.core.calls) == 1 and w.rtp is not None and len(w.rtp.calls) == 1
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    [t_bye] = w.requests(TARGET, "BYE")
    answer(w, t_bye, TARGET)
    assert not w.core.calls and not w.rtp.calls and not w.core._legs


def test_early_completion_to_a_target_that_never_answers_hangs_up_the_transferee():
    w = wire()
    a200, _, b200 = establish(w)
    ringing, c_inv = consult(w, answer=False)
    refer_with_replaces(w, b200, ringing)
    ok_all(w, PBX, "BYE")
    w.take()
    w.advance(w.core.no_answer_timeout + 1)
    cancel = w.requests(TARGET, "CANCEL")[0]
    answer(w, cancel, TARGET)
    w.inject(response_to(c_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
    a_bye = w.requests(CALLER, "BYE")[0]  # (and its retransmissions)
    assert "transferor has left" in a_bye.headers.get("Reason")
    answer(w, a_bye, CALLER)
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls
    assert w.core.stats.transfers[("early", "failed")] == 1


def test_the_transferee_hanging_up_during_the_join_ends_everything():
    w = wire()
    a200, b_inv, b200 = establish(w)
    c200, c_inv = consult(w)
    refer_with_replaces(w, b200, c200)
    [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
    w.take()
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    assert w.responses(CALLER, 200)
    answer(w, t_reinv, TARGET, CAROL_SDP2)  # carol took the new media: the consultation cannot resume
    ok_all(w, PBX, "BYE")
    ok_all(w, TARGET, "BYE")
    assert bob_byes(w) == {b_inv.call_id, c200.call_id}
    assert [r.call_id for r in w.requests(TARGET, "BYE")] == [c_inv.call_id]
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs
    assert w.core.stats.transfers[("attended", "abandoned")] == 1


def test_replaces_refusals():
    w = wire()
    _, _, b200 = establish(w)
    c200, _ = consult(w, source=OTHER_PBX)
    refer_with_replaces(w, b200, c200, cseq=2)  # the consultation faces another peer
    assert w.responses(PBX, 403)[-1].reason == "Forbidden (Replaces names a dialog of another party)"
    w2 = wire()
    _, _, b200 = establish(w2)
    c200, _ = consult(w2)
    refer_with_replaces(w2, b200, c200, cseq=2, params="%3Bearly-only")
    assert w2.responses(PBX, 486)
    # A REFER naming the dialog it arrived on.
    own = f"{b200.call_id}%3Bto-tag%3D{b200.from_tag}%3Bfrom-tag%3D{b200.to_tag}"
    w2.inject(in_dialog("REFER", b200, cseq=3, branch="z9hG4bKself", from_side_is_to=True, via="127.0.0.1:5080",
                        extra=f"Refer-To: <sip:carol@127.0.0.1?Replaces={own}>\nContact: <sip:bob@127.0.0.1:5080>"),
              PBX)
    assert "the call being transferred" in w2.responses(PBX, 403)[-1].reason
    w3 = wire(transfers={"replaces_policy": "never"})
    _, _, b200 = establish(w3)
    c200, _ = consult(w3)
    refer_with_replaces(w3, b200, c200)
    assert w3.responses(PBX, 403)[-1].reason == "Forbidden (attended transfers are disabled)"
    assert len(w3.core.calls) == 2


def test_a_replaces_for_a_dialog_elsewhere_is_sent_on_to_the_target_under_policy_any():
    w = wire(transfers={"replaces_policy": "any"})
    _, _, b200 = establish(w)
    w.inject(in_dialog("REFER", b200, cseq=2, branch="z9hG4bKoref", from_side_is_to=True, via="127.0.0.1:5080",
                       extra="Refer-To: <sip:carol@example.com?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>\n"
                             "Contact: <sip:bob@127.0.0.1:5080>"), PBX)
    [t_inv] = w.requests(TARGET, "INVITE")
    assert t_inv.headers.get("Replaces") == "abc@host;to-tag=1;from-tag=2"
    assert t_inv.headers.get("Require") == "replaces"


def test_attended_transfer_when_the_target_had_called_the_transferor():
    """Supervised in the UCMA sense: carol called bob earlier; bob joins alice to that call."""
    w = wire()
    a200, b_inv, b200 = establish(w)
    w.inject("""INVITE sip:bob@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcarolcall
From: <sip:carol@127.0.0.1>;tag=caroltag
To: <sip:bob@127.0.0.1:5060>
Call-ID: carol-1@127.0.0.1
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:carol@127.0.0.1:5090>
Content-Type: application/sdp""", TARGET, body=TARGET_SDP)
    [to_bob] = [r for r in w.requests(PBX, "INVITE") if r.call_id != b_inv.call_id]
    w.inject(response_to(to_bob, 200, "OK", to_tag="bobtag3", extra="Content-Type: application/sdp"), PBX,
             body=BOB_SDP)
    [carol_ok] = [r for r in w.responses(TARGET, 200) if r.call_id == "carol-1@127.0.0.1"]
    w.inject(in_dialog("ACK", carol_ok, cseq=1, branch="z9hG4bKcarack", from_side_is_to=False,
                       via="127.0.0.1:5090"), TARGET)
    w.take()
    replaces = f"{to_bob.call_id.replace('@', '%40')}%3Bto-tag%3D{to_bob.from_tag}%3Bfrom-tag%3Dbobtag3"
    w.inject(in_dialog("REFER", b200, cseq=2, branch="z9hG4bKrevref", from_side_is_to=True, via="127.0.0.1:5080",
                       extra=f"Refer-To: <sip:carol@127.0.0.1?Replaces={replaces}>\n"
                             "Contact: <sip:bob@127.0.0.1:5080>"), PBX)
    assert w.responses(PBX, 202)
    [t_reinv] = reinvites(w, TARGET, "carol-1@127.0.0.1")  # on carol's own dialog, where we are UAS
    assert t_reinv.headers.get("To").endswith("tag=caroltag")
    answer(w, t_reinv, TARGET, CAROL_SDP2)
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    answer(w, a_reinv, CALLER, CALLER_SDP)
    assert bob_byes(w) == {b_inv.call_id, to_bob.call_id}
    ok_all(w, PBX, "BYE")
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    [t_bye] = w.requests(TARGET, "BYE")
    assert t_bye.call_id == "carol-1@127.0.0.1"
    answer(w, t_bye, TARGET)
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs


def _early_completion_that_rings_out(w: Wire):
    a200, b_inv, b200 = establish(w)
    ringing, c_inv = consult(w, answer=False)
    refer_with_replaces(w, b200, ringing)
    ok_all(w, PBX, "BYE")
    w.take()
    w.advance(w.core.no_answer_timeout + 1)
    answer(w, w.requests(TARGET, "CANCEL")[0], TARGET)
    w.inject(response_to(c_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
    w.advance(0)
    return a200, b_inv


def test_recall_calls_the_released_transferor_back_and_rejoins_the_transferee():
    w = wire(transfers={"recall_transferor": True})
    a200, b_inv = _early_completion_that_rings_out(w)
    assert not w.requests(CALLER, "BYE")  # alice is kept
    [recall] = [r for r in w.requests(PBX, "INVITE") if r.call_id not in (b_inv.call_id,)]
    assert str(recall.uri) == "sip:bob@127.0.0.1:5080"  # bob's Contact, through his dialog's hop
    assert "alice" in (recall.headers.get("From") or "")  # alice calls him back
    assert media_port(recall.body)[1] in relay_ports(w)
    w.inject(response_to(recall, 200, "OK", to_tag="recalled", extra="Content-Type: application/sdp"), PBX,
             body=CALLEE_SDP)
    assert [a for a in w.requests(PBX, "ACK") if a.call_id == recall.call_id]
    [a_reinv] = reinvites(w, CALLER, a200.call_id)
    answer(w, a_reinv, CALLER, CALLER_SDP)
    assert w.core.stats.transfers[("early", "failed")] == 1
    assert w.core.stats.transfers[("recall", "completed")] == 1
    events = [e for e, _ in w.log.events]
    assert "transferor_recalled" in events
    # alice and bob talk again: her BYE reaches him on the recall's dialog.
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    [bye] = [b for b in w.requests(PBX, "BYE") if b.call_id == recall.call_id]
    answer(w, bye, PBX)
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs


def test_a_recall_that_fails_hangs_up_the_transferee_once():
    w = wire(transfers={"recall_transferor": True})
    a200, b_inv = _early_completion_that_rings_out(w)
    [recall] = [r for r in w.requests(PBX, "INVITE") if r.call_id != b_inv.call_id]
    w.inject(response_to(recall, 486, "Busy Here", to_tag="recalled"), PBX)
    a_bye = w.requests(CALLER, "BYE")[0]
    assert "transferor has left" in a_bye.headers.get("Reason")
    answer(w, a_bye, CALLER)
    assert len([r for r in w.requests(PBX, "INVITE") if r.call_id != b_inv.call_id]) == 1  # no second recall
    assert w.core.stats.transfers[("recall", "failed")] == 1
    assert not w.core.calls and w.rtp is not None and not w.rtp.calls
