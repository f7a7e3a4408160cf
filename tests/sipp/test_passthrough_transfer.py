"""Transfers in passthrough mode (``transfers.mode = "passthrough"``), end to end.

The B2BUA does not carry out the transfer: it relays the transferor's REFER to the other party
(the transferee) with a Refer-To pointing back at itself, relays the transferee's 202 and NOTIFYs
back (the refer event's ``id`` translated to the transferor's REFER), and follows the INVITE the
transferee then sends through it: a new call routed to the target for a blind transfer, an
INVITE with Replaces naming the transferor's consultation leg for an attended one.

Three SIPp agents per test (``harness.run_sipp_trio``) and the real daemon: alice (the
transferee), bob (the transferor) and carol (the target, a UAS on a port of its own that the
daemon reaches through a ``routing.rules`` entry). Each agent plays all of its dialogs in ONE SIPp
call: SIPp matches messages to a scenario call by Call-ID only, so a party's second dialog (alice's
call to carol, bob's consultation call) reuses the Call-ID of its SIPp call with a new From tag
and no To tag; to the daemon that is a new dialog and a new call (a real phone would use a fresh
Call-ID). Each scenario checks what its party receives; the tests add what one scenario cannot see
(the daemon's port in the Refer-To, which dialog each BYE ended, that bob's and alice's Replaces
name the same dialog) and the daemon's counters. The ``start_daemon`` teardown checks that no
exception escaped and no call is left over.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest

from .harness import Daemon, Metrics, TracedMessage, TrioResult
from .transfers import TransferRig, heard, local_port, received, sent, sipfrag, start_rig, tag

pytestmark = pytest.mark.sipp

PASSTHROUGH = '[transfers]\nmode = "passthrough"\n'
BOB_REFER_CSEQ = "4711"  # what bob's scenarios put in their REFER's CSeq


@pytest.fixture
def rig(start_daemon: Callable[..., Daemon], tmp_path: Path, needs_daemon) -> Callable[..., TransferRig]:
    """``rig(transfers_toml)``: a daemon routing "carol" to the target agent's port."""

    def make(transfers: str = PASSTHROUGH) -> TransferRig:
        return start_rig(start_daemon, tmp_path, transfers)

    return make


# -- reading the traces -----------------------------------------------------------------------------


def cseq(msg: TracedMessage) -> str:
    return (msg.header("CSeq") or "").split()[0]


def assert_notifies_translated(transferor: Path, transferee: Path) -> None:
    """The transferor heard the transferee's NOTIFYs, 100 Trying then 200 OK (terminated), with the
    refer event's id naming its own REFER, while the transferee's named the REFER it received."""
    [refer] = received(transferee, "REFER")
    their_id = cseq(refer)
    assert their_id != BOB_REFER_CSEQ, refer.text  # else the translation would go unnoticed
    notified = sent(transferee, "NOTIFY")
    assert [t.header("Event") for t in notified] == [f"refer;id={their_id}"] * 2, [t.text for t in notified]
    notifies = received(transferor, "NOTIFY")
    assert [sipfrag(n) for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"], [n.text for n in notifies]
    assert [n.header("Event") for n in notifies] == [f"refer;id={BOB_REFER_CSEQ}"] * 2, [n.text for n in notifies]
    states = [n.header("Subscription-State") or "" for n in notifies]
    assert states[0].startswith("active") and states[1] == "terminated;reason=noresource", states


def assert_blind_metrics(m: Metrics) -> None:
    """Two calls (alice-bob, then alice-carol), one REFER relayed, two NOTIFYs relayed back."""
    assert m.get("b2bua_calls_total", result="answered") == 2, m
    assert m.get("b2bua_calls_total") == 2, m
    assert m.relayed("REFER") == (1, 1), m
    assert m.relayed("NOTIFY") == (2, 2), m
    assert m.get("b2bua_sip_responses_total", code="202", direction="in") == 1, m
    assert m.get("b2bua_sip_responses_total", code="202", direction="out") == 1, m
    assert m.relayed("INVITE") == (2, 2), m  # call 1 and alice's call to carol, nothing of our own
    assert m.relayed("BYE") == (2, 2), m
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m


# -- the flows ----------------------------------------------------------------------------------------


def assert_blind_transfer(r: TransferRig, result: TrioResult, alice: Path, bob: Path, bob_port: int) -> None:
    """What a passthrough blind transfer looks like from outside, whoever is the transferor."""
    [refer] = received(alice, "REFER")
    assert refer.header("Refer-To") == f"<sip:carol@127.0.0.1:{r.daemon.sip_port}>", refer.text  # back to us
    assert refer.header("Referred-By") == f"<sip:bob@127.0.0.1:{bob_port}>", refer.text
    assert_notifies_translated(bob, alice)
    assert heard(bob)[-4:] == ["SIP/2.0 202", "NOTIFY", "NOTIFY", "BYE"], heard(bob)

    carol = result.target.message_file
    [c_inv] = received(carol, "INVITE")
    assert c_inv.first_line.startswith(f"INVITE sip:carol@127.0.0.1:{r.target_port} "), c_inv.text
    assert "sip:alice@" in (c_inv.header("From") or ""), c_inv.text  # alice's own call, not one of ours
    [a_inv] = [t for t in sent(alice, "INVITE") if "carol" in t.first_line]
    assert c_inv.header("Call-ID") != a_inv.header("Call-ID")  # a B2BUA leg, with a Call-ID of its own
    assert len(received(carol, "BYE")) == 1  # alice's hangup

    m = r.daemon.settled()
    assert_blind_metrics(m)
    events = r.event_names()
    assert events.count("refer_relayed") == 1 and "transfer_started" not in events, events


def test_blind_transfer_by_the_callee(rig):
    """bob (callee of call 1) REFERs alice (caller) to carol: alice gets the REFER pointing back at the
    daemon, reports through NOTIFYs that bob hears with his own REFER's id, and calls carol herself."""
    r = rig()
    result = r.run("uas_passthrough_target.xml", "uas_passthrough_transferor.xml", "uac_passthrough_transferee.xml")
    assert_blind_transfer(r, result, result.uac.message_file, result.uas.message_file, local_port(result.uas.cmd))


def test_blind_transfer_by_the_caller(rig):
    """bob (caller of call 1) REFERs alice (callee, the daemon's next hop) to carol: the same, the
    other way round; alice's call to carol comes from the daemon's B side."""
    r = rig()
    result = r.run("uas_passthrough_target.xml", "uas_passthrough_transferee.xml", "uac_passthrough_transferor.xml")
    assert_blind_transfer(r, result, result.uas.message_file, result.uac.message_file, local_port(result.uac.cmd))


def assert_attended_transfer(r: TransferRig, result: TrioResult, alice: Path, bob: Path,
                             bob_tags: tuple[str, str]) -> None:
    """What a passthrough attended transfer looks like from outside, whoever is the transferor.
    ``bob_tags``: bob's From tags (as his scenario writes them) in call 1 and in the consultation."""
    carol = result.target.message_file
    [bob_refer] = sent(bob, "REFER")
    [refer] = received(alice, "REFER")
    refer_to = refer.header("Refer-To") or ""
    assert refer_to.startswith(f"<sip:carol@127.0.0.1:{r.daemon.sip_port}?Replaces="), refer.text
    named = unquote(refer_to.split("Replaces=", 1)[1].rstrip(">"))
    assert named == unquote((bob_refer.header("Refer-To") or "").split("Replaces=", 1)[1].rstrip(">")), named
    [a_repl] = [t for t in sent(alice, "INVITE") if t.header("Replaces")]
    assert a_repl.header("Replaces") == named, a_repl.text  # rebuilt unescaped from the pieces
    [b_consult] = [t for t in sent(bob, "INVITE") if "carol" in t.first_line]
    assert named.startswith(f"{b_consult.header('Call-ID')};to-tag="), (named, b_consult.text)
    assert named.endswith(f";from-tag={tag(b_consult.header('From'))}"), (named, b_consult.text)

    assert_notifies_translated(bob, alice)
    assert heard(bob)[-5:] == ["SIP/2.0 202", "NOTIFY", "BYE", "NOTIFY", "BYE"], heard(bob)
    byes = received(bob, "BYE")
    call1, consultation = bob_tags
    assert [re.sub(r"^\d+", "", tag(b.header("To")))[:9] for b in byes] == [consultation, call1], byes
    assert "replaced" in (byes[0].header("Reason") or ""), byes[0].text

    [c_inv, c_moved] = received(carol, "INVITE")
    assert c_moved.header("Call-ID") == c_inv.header("Call-ID"), "carol was called again"
    assert tag(c_moved.header("From")) == tag(c_inv.header("From")), c_moved.text  # a re-INVITE in her dialog
    [c_bye] = received(carol, "BYE")
    assert c_bye.header("Call-ID") == c_inv.header("Call-ID")  # alice's hangup of the new call

    m = r.daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 2, m  # call 1, and the consultation (now alice-carol)
    assert m.get("b2bua_calls_total") == 2, m
    assert m.relayed("REFER") == (1, 1), m
    assert m.relayed("NOTIFY") == (2, 2), m
    # in: alice's call 1, bob's consultation, alice's INVITE with Replaces; out: bob, carol, carol's re-INVITE
    assert m.relayed("INVITE") == (3, 3), m
    # in: alice's two; out: bob's consultation leg (replaced), bob's call 1, carol
    assert m.relayed("BYE") == (2, 3), m
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m
    events = r.event_names()
    assert events.count("refer_relayed") == 1 and "replace_completed" in events, events
    assert "transfer_started" not in events and "replace_refused" not in events, events


def test_attended_transfer_by_the_callee(rig):
    """bob (callee of call 1) consults carol through the daemon and REFERs alice with a Replaces naming
    his consultation leg: alice gets a Refer-To pointing back at the daemon and naming that same dialog,
    sends INVITE with Replaces; the daemon re-INVITEs carol onto alice's media, answers alice, and
    releases bob's consultation leg (BYE, Reason: replaced); alice then ends call 1 herself."""
    r = rig()
    result = r.run(
        "uas_passthrough_attended_target.xml",
        "uas_passthrough_attended_transferor.xml",
        "uac_passthrough_attended_transferee.xml",
    )
    assert_attended_transfer(r, result, result.uac.message_file, result.uas.message_file, ("SIPpTag01", "SIPpTag11"))


def test_attended_transfer_by_the_caller(rig):
    """The same with bob as the caller of call 1: the REFER goes to alice on the daemon's B side, and
    her INVITE with Replaces comes from there (with the Call-ID of the daemon's own leg toward her)."""
    r = rig()
    result = r.run(
        "uas_passthrough_attended_target.xml",
        "uas_passthrough_attended_transferee.xml",
        "uac_passthrough_attended_transferor.xml",
    )
    assert_attended_transfer(r, result, result.uas.message_file, result.uac.message_file, ("SIPpTag00", "SIPpTag11"))


def test_denied_target_is_refused_before_anything_is_relayed(rig):
    """``transfers.deny`` names carol: bob's REFER gets 403 from the daemon itself; alice receives no
    REFER and carol nothing (toll-fraud protection holds in passthrough mode too); the call goes on
    until bob hangs up."""
    r = rig(PASSTHROUGH + 'deny = [{user = "carol"}]\n')
    result = r.run(
        "uas_passthrough_target.xml", "uas_passthrough_denied.xml", "uac_passthrough_stays.xml", target_calls=0
    )

    alice_heard = heard(result.uac.message_file)
    assert [h for h in alice_heard if not h.startswith("SIP/")] == ["BYE"], alice_heard  # no REFER, bob's BYE
    assert not received(result.target.message_file, "INVITE")
    [forbidden] = received(result.uas.message_file, "SIP/2.0 403")
    assert "REFER" in (forbidden.header("CSeq") or ""), forbidden.text

    m = r.daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_calls_total") == 1, m
    assert m.relayed("REFER") == (1, 0), m  # b2bua_sip_requests_total{method="REFER",direction="out"} == 0
    assert m.get("b2bua_sip_responses_total", code="403", direction="out") == 1, m
    assert m.relayed("INVITE") == (1, 1), m
    assert m.relayed("NOTIFY") == (0, 0), m
    assert m.relayed("BYE") == (1, 1), m
    events = r.event_names()
    assert "refer_refused" in events and "refer_relayed" not in events, events
