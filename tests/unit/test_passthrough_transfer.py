"""Passthrough transfers (transfers.mode = passthrough): the REFER goes to the other party, in virtual time.

Call 1: alice (the transferee, from 127.0.0.7) -> bob (the transferor, behind the PBX). bob's REFER
is relayed to alice with a Refer-To that points back at the B2BUA; alice's answer and NOTIFYs come
back to bob with the refer event's id translated; alice's own INVITE (with Replaces for an attended
transfer) then comes through the B2BUA.
"""

from __future__ import annotations

from b2bua.sip.address import Address
from b2bua.sip.message import Request, Response
from b2bua.sip.uri import unescape

from .test_attended_transfer import answer, consult, reinvites
from .test_call_media import CALLEE_SDP, CALLER_SDP, establish
from .test_transfer import TARGET, wire
from .wire import PBX, Wire, in_dialog, invite, response_to

ALICE = Address("udp", "127.0.0.7", 5070)
ALICE_CONTACT = Address("udp", "127.0.0.1", 5070)  # where requests to alice go (her Contact)


def establish_from_alice(w: Wire) -> tuple[Response, Request, Response]:
    return establish(w, source=ALICE)


def bob_refers(w: Wire, b200: Response, refer_to: str) -> None:
    w.inject(in_dialog("REFER", b200, cseq=7, branch="z9hG4bKpref", from_side_is_to=True, via="127.0.0.1:5080",
                       extra=f"Refer-To: {refer_to}\nReferred-By: <sip:bob@127.0.0.1>\n"
                             "Contact: <sip:bob@127.0.0.1:5080>"), PBX)


def alice_notifies(w: Wire, refer: Request, cseq: int, frag: str, state: str) -> None:
    w.inject(in_dialog("NOTIFY", refer, cseq=cseq, branch=f"z9hG4bKpn{cseq}", from_side_is_to=True,
                       via="127.0.0.7:5070",
                       extra=f"Event: refer;id={refer.cseq.seq}\nSubscription-State: {state}\n"
                             "Content-Type: message/sipfrag\nContact: <sip:alice@127.0.0.1:5070>"),
             ALICE, body=frag)


def test_a_blind_refer_is_relayed_and_its_notifies_come_back_translated():
    w = wire(transfers={"mode": "passthrough"})
    a200, b_inv, b200 = establish_from_alice(w)
    w.take()
    bob_refers(w, b200, "<sip:carol@example.com>")
    [refer] = w.requests(ALICE_CONTACT, "REFER")
    assert refer.headers.get("Refer-To") == "<sip:carol@127.0.0.1:5060>"  # back through us
    assert refer.headers.get("Referred-By") == "<sip:bob@127.0.0.1>"
    assert not w.requests(TARGET, "INVITE")  # the B2BUA places no call itself
    w.inject(response_to(refer, 202, "Accepted", to_tag=None), ALICE)
    [accepted] = w.responses(PBX, 202)
    assert accepted.cseq.seq == 7
    alice_notifies(w, refer, 2, "SIP/2.0 100 Trying\r\n", "active;expires=60")
    [notify] = w.requests(PBX, "NOTIFY")
    assert notify.headers.get("Event") == "refer;id=7"  # bob's REFER, not ours
    assert notify.headers.get("Subscription-State") == "active;expires=60"
    assert notify.body == b"SIP/2.0 100 Trying\r\n"
    w.inject(response_to(notify, 200, "OK", to_tag=None), PBX)
    assert [r.status for r in w.responses(ALICE) if r.cseq.method == "NOTIFY"] == [200]
    assert not w.core.stats.transfers
    alice_notifies(w, refer, 3, "SIP/2.0 486 Busy Here\r\n", "terminated;reason=noresource")
    assert w.core.stats.transfers[("blind", "failed")] == 1  # counted from the final sipfrag
    # alice calls carol through us, as a new call routed like any other.
    text, _ = invite(user="carol")
    w.inject(text, ALICE, body=CALLER_SDP)
    assert w.requests(TARGET, "INVITE")


def test_a_denied_target_is_refused_before_anything_is_relayed():
    w = wire(transfers={"mode": "passthrough", "deny": [{"user": "carol"}]})
    _, _, b200 = establish_from_alice(w)
    bob_refers(w, b200, "<sip:carol@example.com>")
    assert w.responses(PBX, 403) and not w.requests(ALICE_CONTACT, "REFER")


def test_an_attended_refer_names_our_consultation_leg_and_lets_the_transferee_replace_it():
    w = wire(transfers={"mode": "passthrough"})
    a200, b_inv, b200 = establish_from_alice(w)
    c200, c_inv = consult(w)
    w.take()
    replaces = f"{c200.call_id.replace('@', '%40')}%3Bto-tag%3D{c200.to_tag}%3Bfrom-tag%3Dbobtag2"
    bob_refers(w, b200, f"<sip:carol@127.0.0.1?Replaces={replaces}>")
    [refer] = w.requests(ALICE_CONTACT, "REFER")
    refer_to = refer.headers.get("Refer-To")
    assert refer_to.startswith("<sip:carol@127.0.0.1:5060?Replaces=")
    named = unescape(refer_to.split("Replaces=", 1)[1].rstrip(">"))
    assert named == f"{c200.call_id};to-tag={c200.to_tag};from-tag=bobtag2"
    w.inject(response_to(refer, 202, "Accepted", to_tag=None), ALICE)
    # alice (another host than bob) sends the INVITE with Replaces: allowed, since we told her to.
    w.inject(f"""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.7:5070;branch=z9hG4bKalicerepl
From: "Alice" <sip:alice@127.0.0.1:5070>;tag=alicetag9
To: <sip:carol@127.0.0.1:5060>
Call-ID: alice-repl@127.0.0.1
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:alice@127.0.0.1:5070>
Replaces: {named}
Content-Type: application/sdp""", ALICE, body=CALLER_SDP)
    [t_reinv] = reinvites(w, TARGET, c_inv.call_id)  # carol moves onto alice's new call
    answer(w, t_reinv, TARGET, CALLEE_SDP)
    [ok] = [r for r in w.responses(ALICE) if r.call_id == "alice-repl@127.0.0.1" and r.status == 200]
    assert ok.body
    assert [r.call_id for r in w.requests(PBX, "BYE")] == [c200.call_id]  # bob's consultation leg
    # Another peer may not do the same without having been sent the REFER.
    w2 = wire()
    _, _, _ = establish_from_alice(w2)
    c200b, _ = consult(w2)
    w2.inject(f"""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.7:5070;branch=z9hG4bKsneaky
From: <sip:eve@127.0.0.7>;tag=evetag
To: <sip:carol@127.0.0.1:5060>
Call-ID: eve@127.0.0.7
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:eve@127.0.0.7:5070>
Replaces: {c200b.call_id};to-tag={c200b.to_tag};from-tag=bobtag2
Content-Type: application/sdp""", ALICE, body=CALLER_SDP)
    assert [r.status for r in w2.responses(ALICE) if r.call_id == "eve@127.0.0.7"] == [403]


def test_early_completion_in_passthrough_mode_is_done_by_the_b2bua():
    w = wire(transfers={"mode": "passthrough"})
    _, b_inv, b200 = establish_from_alice(w)
    ringing, _ = consult(w, answer=False)
    replaces = f"{ringing.call_id.replace('@', '%40')}%3Bto-tag%3D{ringing.to_tag}%3Bfrom-tag%3Dbobtag2"
    bob_refers(w, b200, f"<sip:carol@127.0.0.1?Replaces={replaces}>")
    assert w.responses(PBX, 202) and not w.requests(ALICE_CONTACT, "REFER")
    assert [r.call_id for r in w.responses(PBX, 487)] == [ringing.call_id]


def _bob_routed(mode: str) -> dict:
    """Calls to bob take a rule of their own with `transfer_mode`; transfers.mode stays terminate."""
    return {"routing": {"next_hop": "127.0.0.1:5080", "rules": [
        {"user_prefix": "bob", "next_hop": "127.0.0.1:5080", "transfer_mode": mode},
        {"user_prefix": "carol", "next_hop": "127.0.0.1:5090"}]}}


def test_a_routes_transfer_mode_overrides_the_global_mode():
    w = Wire(relay=True, overrides=_bob_routed("passthrough"))
    assert w.core.settings.transfers.mode == "terminate"
    _, _, b200 = establish_from_alice(w)
    bob_refers(w, b200, "<sip:carol@example.com>")
    [refer] = w.requests(ALICE_CONTACT, "REFER")  # relayed, as passthrough does
    assert refer.headers.get("Refer-To") == "<sip:carol@127.0.0.1:5060>"
    assert not w.requests(TARGET, "INVITE")


def test_a_route_can_refuse_transfers_while_others_carry_them_out():
    w = Wire(relay=True, overrides=_bob_routed("reject"))
    _, _, b200 = establish_from_alice(w)
    bob_refers(w, b200, "<sip:carol@example.com>")
    [refused] = w.responses(PBX, 403)
    assert "transfers are disabled" in (refused.reason or "")
    assert not w.requests(TARGET, "INVITE") and not w.requests(ALICE_CONTACT, "REFER")
