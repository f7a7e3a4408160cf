"""Call deflection: the ringing callee sends REFER in its early dialog (deflection.py), in virtual time.

The caller (127.0.0.1:5070) calls bob behind the PBX; bob's phone rings (180 with a To tag) and
sends REFER in that early dialog to pass the call to carol, who is routed to TARGET.
"""

from __future__ import annotations

from b2bua.sip.message import Request, Response
from b2bua.sip.parser import parse_message

from .test_call_flows import cancel_for
from .test_call_media import CALLER_SDP, media_port, relay_ports
from .test_transfer import TARGET, TARGET_SDP, sipfrags, wire
from .wire import CALLER, PBX, Wire, in_dialog, invite, response_to


def _parse(text: str) -> Response:
    return parse_message((text.replace("\n", "\r\n") + "\r\nContent-Length: 0\r\n\r\n").encode())


def ringing(w: Wire, *, offer: bool = True) -> tuple[str, Request, Response]:
    """A call from the caller ringing at bob: (the caller's INVITE as sent, the B leg's INVITE, bob's 180)."""
    text, _ = invite()
    w.inject(text, CALLER, body=CALLER_SDP if offer else "")
    [b_inv] = w.requests(PBX, "INVITE")
    b180 = response_to(b_inv, 180, "Ringing")
    w.inject(b180, PBX)
    assert w.responses(CALLER, 180)
    return text, b_inv, _parse(b180)


def bob_deflects(w: Wire, b180: Response, target: str = "<sip:carol@example.com>", cseq: int = 2,
                 extra: str = "") -> None:
    w.inject(in_dialog("REFER", b180, cseq=cseq, branch=f"z9hG4bKdefl{cseq}", from_side_is_to=True,
                       via="127.0.0.1:5080",
                       extra=f"Refer-To: {target}\nReferred-By: <sip:bob@127.0.0.1>\n"
                             f"Contact: <sip:bob@127.0.0.1:5080>{extra}"), PBX)


def target_answers(w: Wire, t_inv: Request) -> None:
    w.inject(response_to(t_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                         extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)


def test_the_target_answers_and_takes_the_phones_place():
    w = wire()
    _, b_inv, b180 = ringing(w)
    bob_deflects(w, b180)
    [accepted] = w.responses(PBX, 202)
    assert accepted.cseq.method == "REFER"
    [t_inv] = w.requests(TARGET, "INVITE")
    assert t_inv.headers.get("Referred-By") == "<sip:bob@127.0.0.1>"
    assert "alice" in (t_inv.headers.get("From") or "")  # the target sees the caller calling
    assert media_port(t_inv.body)[1] in relay_ports(w)  # the caller's offer, anchored on the relay
    assert t_inv.headers.get_all("Content-Type") == ["application/sdp"]  # the caller's, once
    assert t_inv.headers.get("X-Account") == "42"  # end-to-end headers cross as to any callee
    assert not w.requests(PBX, "CANCEL")  # bob rings on while carol is called
    w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag"), TARGET)
    target_answers(w, t_inv)
    assert w.requests(TARGET, "ACK")
    assert sipfrags(w) == [("SIP/2.0 100 Trying", "active;expires=150"),
                           ("SIP/2.0 180 Ringing", "active;expires=150"),
                           ("SIP/2.0 200 OK", "terminated;reason=noresource")]
    # NOTIFY 200 goes out before the CANCEL that ends bob's early dialog.
    order = [m.method for m, d in w.sent if d == PBX and isinstance(m, Request) and m.method in ("NOTIFY", "CANCEL")]
    assert order[-2:] == ["NOTIFY", "CANCEL"]
    [a200] = w.responses(CALLER, 200)
    assert media_port(a200.body)[1] in relay_ports(w)
    w.inject(response_to(b_inv, 487, "Request Terminated"), PBX)
    assert w.core.stats.transfers[("deflection", "completed")] == 1
    # The caller now talks to carol: its BYE reaches her.
    w.inject(in_dialog("BYE", a200, cseq=2, branch="z9hG4bKbye", from_side_is_to=False), CALLER)
    [bye] = w.requests(TARGET, "BYE")
    w.inject(response_to(bye, 200, "OK", to_tag=None), TARGET)
    assert not w.core.calls and not relay_ports(w)


def test_a_busy_target_leaves_the_phone_ringing_and_it_can_still_answer():
    w = wire()
    _, b_inv, b180 = ringing(w)
    bob_deflects(w, b180)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(t_inv, 486, "Busy Here", to_tag="ctag"), TARGET)
    assert sipfrags(w)[-1] == ("SIP/2.0 486 Busy Here", "terminated;reason=noresource")
    assert not w.requests(PBX, "CANCEL") and not w.responses(CALLER, 486)
    w.inject(response_to(b_inv, 200, "OK", extra="Content-Type: application/sdp"), PBX, body=TARGET_SDP)
    assert w.responses(CALLER, 200)
    assert w.core.stats.transfers[("deflection", "failed")] == 1


def test_the_phone_declining_after_its_refer_waits_for_the_target():
    w = wire()
    _, b_inv, b180 = ringing(w)
    bob_deflects(w, b180)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(b_inv, 603, "Decline"), PBX)
    assert not w.responses(CALLER, 603)  # held back: carol may still answer
    target_answers(w, t_inv)
    [a200] = w.responses(CALLER, 200)
    assert not w.requests(PBX, "CANCEL")  # bob's INVITE is already over
    assert w.core.stats.transfers[("deflection", "completed")] == 1
    assert len(w.core.calls) == 1


def test_the_phone_and_the_target_both_declining_gives_the_caller_the_targets_status():
    w = wire()
    _, b_inv, b180 = ringing(w)
    bob_deflects(w, b180)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(b_inv, 603, "Decline"), PBX)
    w.inject(response_to(t_inv, 486, "Busy Here", to_tag="ctag"), TARGET)
    assert w.responses(CALLER, 486) and not w.responses(CALLER, 603)
    assert not w.core.calls and not relay_ports(w)


def test_the_caller_giving_up_cancels_the_target_too_and_a_crossing_200_is_ended():
    w = wire()
    a_inv, b_inv, b180 = ringing(w)
    bob_deflects(w, b180)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag"), TARGET)  # CANCEL waits for a 1xx
    w.inject(cancel_for(a_inv), CALLER)
    assert w.responses(CALLER, 487)
    assert w.requests(PBX, "CANCEL") and w.requests(TARGET, "CANCEL")
    assert sipfrags(w)[-1] == ("SIP/2.0 487 Request Terminated", "terminated;reason=noresource")
    w.inject(response_to(b_inv, 487, "Request Terminated"), PBX)
    assert w.core.calls  # the target's INVITE is still open
    target_answers(w, t_inv)  # crossed our CANCEL
    assert w.requests(TARGET, "ACK")
    [bye] = w.requests(TARGET, "BYE")
    w.inject(response_to(bye, 200, "OK", to_tag=None), TARGET)
    assert not w.core.calls and not relay_ports(w)
    assert w.core.stats.transfers[("deflection", "abandoned")] == 1


def test_the_phone_answering_after_all_cancels_the_target():
    w = wire()
    _, b_inv, b180 = ringing(w)
    bob_deflects(w, b180)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag"), TARGET)
    w.inject(response_to(b_inv, 200, "OK", extra="Content-Type: application/sdp"), PBX, body=TARGET_SDP)
    assert w.responses(CALLER, 200)
    assert w.requests(TARGET, "CANCEL")
    w.inject(response_to(t_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
    assert w.core.stats.transfers[("deflection", "abandoned")] == 1
    assert len(w.core.calls) == 1


def test_refusals():
    w = wire(transfers={"reject_early_dialog_refer": True})
    _, _, b180 = ringing(w)
    bob_deflects(w, b180)
    [refused] = w.responses(PBX, 403)
    assert "before the call is answered" in (refused.reason or "")
    assert not w.requests(TARGET, "INVITE")

    w = wire()
    _, _, b180 = ringing(w)
    bob_deflects(w, b180, target="<sip:carol@example.com?Replaces=abc%3Bto-tag%3Dx%3Bfrom-tag%3Dy>")
    assert w.responses(PBX, 403) and not w.requests(TARGET, "INVITE")

    w = wire(transfers={"deny": [{"user": "carol"}]})
    _, _, b180 = ringing(w)
    bob_deflects(w, b180)
    assert w.responses(PBX, 403) and not w.requests(TARGET, "INVITE")

    w = wire()
    _, _, b180 = ringing(w, offer=False)
    bob_deflects(w, b180)
    assert w.responses(PBX, 501) and not w.requests(TARGET, "INVITE")

    w = wire()
    _, _, b180 = ringing(w)
    bob_deflects(w, b180)
    bob_deflects(w, b180, cseq=3)
    assert w.responses(PBX, 491)
    assert len(w.requests(TARGET, "INVITE")) == 1


def test_the_caller_cannot_transfer_a_call_nobody_has_answered():
    w = wire()
    ringing(w)
    [a180] = w.responses(CALLER, 180)
    w.inject(in_dialog("REFER", a180, cseq=2, branch="z9hG4bKarefer", from_side_is_to=False,
                       extra="Refer-To: <sip:carol@example.com>\nContact: <sip:alice@127.0.0.1:5070>"), CALLER)
    [refused] = w.responses(CALLER, 403)
    assert "before the call is answered" in (refused.reason or "")
    assert not w.requests(TARGET, "INVITE")
