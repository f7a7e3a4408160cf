"""Attended, supervised and early-completion transfers (REFER with Replaces), end to end.

Three SIPp agents per test (``harness.run_sipp_trio``) and the real daemon: alice (the transferee),
bob (the transferor) and carol (the target, a UAS on a port of its own that the daemon reaches
through a ``routing.rules`` entry). bob is the callee of call 1 (the UAS at the daemon's next hop)
or its caller (the UAC, and alice is then the UAS).

bob's two dialogs are played by ONE SIPp agent: SIPp matches messages to a scenario call by Call-ID
only, so bob's consultation INVITE to carol reuses the Call-ID of his SIPp call with a new From tag
and no To tag. To the daemon that is a new dialog, and a new call, whose leg toward carol gets a
Call-ID of the daemon's own (a real phone would pick a fresh Call-ID; the daemon does not care).
bob's REFER on call 1 then names the consultation dialog in ``Refer-To: <sip:carol@...?Replaces=
CALLID%3Bto-tag%3DTAG%3Bfrom-tag%3DBOBTAG>`` (CALLID with '@' escaped as %40, TAG the daemon's tag
from its 200 (or 180) to bob, BOBTAG bob's consultation From tag).

Each party's scenario checks what it receives (the sipfrags and Subscription-State of the NOTIFYs,
the direction attributes and x-party markers of every SDP, the Reasons of the BYEs); the tests
add what one scenario cannot see (which of bob's dialogs each BYE ended, which relay ports each
party was given, that the RTP alice and carol play after the transfer reaches the other through
the relay, and nothing reaches bob), and the daemon's counters. The ``rig`` teardown (that of
conftest's ``start_daemon``) checks that no exception escaped and no call is left over.

The scenarios play pcap files (SIPp's play_pcap_audio) and a sniffer counts RTP on ``lo``: both
need root or CAP_NET_RAW, as in test_media.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import rtp
from .harness import Metrics, TracedMessage
from .transfers import AFTER_TRANSFER, assert_talking, heard, origin, received, sipfrag, tag

pytestmark = [pytest.mark.sipp, pytest.mark.usefixtures("raw_sockets")]  # rig: conftest


# -- reading the traces -----------------------------------------------------------------------------


def after(what: str, messages: list[str]) -> list[str]:
    assert what in messages, messages
    return messages[messages.index(what) :]


def sdp_attr(msg: TracedMessage, pattern: str) -> bool:
    return re.search(rf"(?m)^a={pattern}\s*$", msg.text) is not None


# -- checks shared by the flows -----------------------------------------------------------------------


def assert_bob_released(bob_file: Path, call1: str, consultation: str) -> None:
    """bob's NOTIFYs were 100 then 200 (terminated), then came a BYE on each of his dialogs.

    ``call1`` and ``consultation`` are bob's tags in those dialogs, as his scenario writes them
    (e.g. "SIPpTag01" and "SIPpTag11", followed by the call number). The daemon happens to end the
    consultation first; nothing requires that order, so it is not checked."""
    notifies = received(bob_file, "NOTIFY")
    assert [sipfrag(n) for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"], [n.text for n in notifies]
    assert (notifies[-1].header("Subscription-State") or "").startswith("terminated"), notifies[-1].text
    byes = received(bob_file, "BYE")
    ended = sorted(re.sub(r"^\d+", "", tag(b.header("To")))[: len(call1)] for b in byes)
    assert ended == sorted([consultation, call1]), [b.text for b in byes]


def assert_transferred(m: Metrics, kind: str) -> None:
    assert m.get("b2bua_transfers_total", kind=kind, result="completed") == 1, m
    assert m.get("b2bua_transfers_total") == 1, m
    assert m.get("b2bua_calls_total", result="transferred") == 1, m  # the consultation call
    assert m.get("b2bua_calls_total", result="answered") == 1, m  # call 1, alice-carol at the end
    assert m.get("b2bua_transfer_duration_seconds_count", kind=kind) == 1, m
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m


# -- the flows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hold", ["sendonly", "inactive"])
def test_attended_transfer_by_the_callee(rig, hold):
    """bob (callee of call 1) holds alice, consults carol through the daemon, REFERs alice to her
    with Replaces: carol is re-INVITEd onto alice's media, alice onto carol's, bob is released."""
    r = rig()
    held = {"sendonly": "recvonly", "inactive": "inactive"}[hold]
    with rtp.sniffing() as sn:
        result = r.run(
            "uas_attended_target.xml",
            "uas_attended_transferor.xml",
            "uac_attended_transferee.xml",
            uas_opts={"key_vals": {"hold": hold}},
            uac_opts={"key_vals": {"held": held}},
        )
    alice, bob, carol = result.uac, result.uas, result.target

    # The exact sequences each party heard (1xx from the daemon aside).
    assert after("SIP/2.0 200", heard(alice.message_file)) == [
        "SIP/2.0 200", "INVITE", "ACK", "INVITE", "ACK", "SIP/2.0 200"
    ], heard(alice.message_file)  # fmt: skip
    assert after("SIP/2.0 202", heard(bob.message_file)) == ["SIP/2.0 202", "NOTIFY", "NOTIFY", "BYE", "BYE"]
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(carol.message_file)

    [a_hold, a_moved] = received(alice.message_file, "INVITE")
    assert sdp_attr(a_hold, hold), a_hold.text
    # alice's session goes on under the o= line the daemon gave her leg, one version up per change.
    a_answer = received(alice.message_file, "SIP/2.0 200")[0]
    assert origin(a_moved)[0] == origin(a_answer)[0], (a_moved.text, a_answer.text)
    assert origin(a_moved)[1] > origin(a_hold)[1] > origin(a_answer)[1], (a_moved.text, a_answer.text)
    [c_inv, c_moved] = received(carol.message_file, "INVITE")
    assert c_moved.header("Call-ID") == c_inv.header("Call-ID"), "carol was called again"
    assert tag(c_moved.header("From")) == tag(c_inv.header("From"))  # in her dialog: a re-INVITE
    assert "SIPpTag02" in tag(c_moved.header("To")), c_moved.text
    assert not any(sdp_attr(c_moved, d) for d in ("sendonly", "recvonly", "inactive")), c_moved.text
    [c_bye] = received(carol.message_file, "BYE")
    assert c_bye.header("Call-ID") == c_inv.header("Call-ID")  # alice's hangup reached carol

    [b_inv] = received(bob.message_file, "INVITE")
    assert c_inv.header("Call-ID") != b_inv.header("Call-ID")  # carol's leg has a Call-ID of its own
    assert_bob_released(bob.message_file, "SIPpTag01", "SIPpTag11")
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)

    m = r.daemon.settled()
    assert_transferred(m, "attended")
    events = r.event_names()
    assert "transfer_completed" in events and "transfer_failed" not in events, events


def test_attended_transfer_by_the_caller(rig):
    """The same with bob as the caller of call 1 (the transferor on the A side): his consultation
    INVITE is a second INVITE of his UAC call, and alice, the callee, is moved to carol."""
    r = rig()
    with rtp.sniffing() as sn:
        result = r.run(
            "uas_attended_target.xml",
            "uas_attended_transferee.xml",
            "uac_attended_transferor.xml",
            uas_opts={"key_vals": {"held": "recvonly"}},
            uac_opts={"key_vals": {"hold": "sendonly"}},
        )
    alice, bob, carol = result.uas, result.uac, result.target

    [_, a_hold, a_moved] = received(alice.message_file, "INVITE")
    assert sdp_attr(a_hold, "sendonly") and sdp_attr(a_moved, "sendrecv"), (a_hold.text, a_moved.text)
    [c_inv, c_moved] = received(carol.message_file, "INVITE")
    assert tag(c_moved.header("From")) == tag(c_inv.header("From")), "carol was called again"
    assert not any(sdp_attr(c_moved, d) for d in ("sendonly", "recvonly", "inactive")), c_moved.text
    [c_bye] = received(carol.message_file, "BYE")
    assert c_bye.header("Call-ID") == c_inv.header("Call-ID")

    bob_call_id = received(bob.message_file, "SIP/2.0 200")[0].header("Call-ID")
    assert c_inv.header("Call-ID") != bob_call_id
    assert_bob_released(bob.message_file, "SIPpTag00", "SIPpTag10")
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)

    m = r.daemon.settled()
    assert_transferred(m, "attended")


@pytest.mark.parametrize(
    "target,transferor,transferee",
    [
        ("uas_attended_supervised_target.xml", "uas_attended_supervised_transferor.xml", "uac_attended_transferee.xml"),
        ("uas_attended_target.xml", "uas_attended_unheld_transferor.xml", "uac_attended_unheld_transferee.xml"),
    ],
    ids=["consultation-held", "no-hold"],
)
def test_supervised_transfer(rig, target, transferor, transferee):
    """Supervised: bob has both calls up and REFERs one party to the other. With the consultation
    held (bob re-INVITEd carol sendonly), the daemon's re-INVITE takes carol off hold (sendrecv);
    without any hold, the same join happens with no re-INVITE before the REFER."""
    r = rig()
    with rtp.sniffing() as sn:
        result = r.run(
            target,
            transferor,
            transferee,
            uas_opts={"key_vals": {"hold": "sendonly"}},
            uac_opts={"key_vals": {"held": "recvonly"}},
        )
    alice, bob, carol = result.uac, result.uas, result.target
    consultation_held = target == "uas_attended_supervised_target.xml"

    c_invites = received(carol.message_file, "INVITE")
    assert len(c_invites) == (3 if consultation_held else 2), [t.text for t in c_invites]
    if consultation_held:
        assert sdp_attr(c_invites[1], "sendonly"), c_invites[1].text  # bob's hold, through the daemon
    c_moved = c_invites[-1]
    assert tag(c_moved.header("From")) == tag(c_invites[0].header("From")), "carol was called again"
    assert not any(sdp_attr(c_moved, d) for d in ("sendonly", "recvonly", "inactive")), c_moved.text
    a_invites = received(alice.message_file, "INVITE")
    assert len(a_invites) == (2 if consultation_held else 1), [t.text for t in a_invites]
    assert sdp_attr(a_invites[-1], "sendrecv"), a_invites[-1].text

    assert_bob_released(bob.message_file, "SIPpTag01", "SIPpTag11")
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    m = r.daemon.settled()
    assert_transferred(m, "attended")


# Early completion cannot be left to the endpoints (they would answer 481: RFC 3891), so in
# passthrough mode too the daemon carries it out itself, exactly as in terminate mode: the REFER is
# not relayed to alice.
MODES = {"terminate": "", "passthrough": '[transfers]\nmode = "passthrough"\n'}


def assert_refer_not_relayed(m: Metrics, events: list[str]) -> None:
    assert m.relayed("REFER") == (1, 0), m
    assert m.relayed("NOTIFY") == (0, 2), m  # the daemon's own two, to bob
    assert "refer_relayed" not in events, events


@pytest.mark.parametrize("transferor", ["callee", "caller"])
@pytest.mark.parametrize("mode", MODES)
def test_early_completion_target_answers(rig, mode, transferor):
    """bob REFERs alice to carol while carol still rings (Replaces names the early dialog): bob is
    released at once (487 to his consultation INVITE, NOTIFY 200, BYE); when carol answers 1 s
    later the daemon ACKs her, re-INVITEs her onto alice's media and alice onto hers. bob is the
    callee of call 1, or its caller (his consultation is then a second INVITE of his UAC call)."""
    r = rig(MODES[mode])
    hold, held = {"key_vals": {"hold": "sendonly"}}, {"key_vals": {"held": "recvonly"}}
    with rtp.sniffing() as sn:
        if transferor == "callee":
            result = r.run("uas_early_target.xml", "uas_early_transferor.xml", "uac_attended_transferee.xml",
                           uas_opts=hold, uac_opts=held)
            alice, bob, bob_call1 = result.uac, result.uas, "SIPpTag01"
        else:
            result = r.run("uas_early_target.xml", "uas_attended_transferee.xml", "uac_early_transferor.xml",
                           uas_opts=held, uac_opts=hold)
            alice, bob, bob_call1 = result.uas, result.uac, "SIPpTag00"
    carol = result.target

    after_refer = after("SIP/2.0 202", heard(bob.message_file))
    assert after_refer == ["SIP/2.0 202", "NOTIFY", "SIP/2.0 487", "NOTIFY", "BYE"], after_refer
    notifies = received(bob.message_file, "NOTIFY")
    assert [sipfrag(n) for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"], [n.text for n in notifies]
    [bye] = received(bob.message_file, "BYE")
    assert bob_call1 in tag(bye.header("To")), bye.text  # call 1; the consultation ended with the 487

    [c_inv, c_moved] = received(carol.message_file, "INVITE")
    assert tag(c_moved.header("From")) == tag(c_inv.header("From")), "carol was called again"
    assert not any(sdp_attr(c_moved, d) for d in ("sendonly", "recvonly", "inactive")), c_moved.text
    assert "a=x-party:alice" in c_moved.text
    assert len(received(carol.message_file, "ACK")) == 2  # her 200 to the INVITE, then to the re-INVITE
    assert not received(carol.message_file, "CANCEL")
    a_invites = received(alice.message_file, "INVITE")
    assert len(a_invites) == (2 if transferor == "callee" else 3), [t.text for t in a_invites]  # hold, move
    assert "a=x-party:carol" in a_invites[-1].text

    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    m = r.daemon.settled()
    assert_transferred(m, "early")
    assert_refer_not_relayed(m, r.event_names())


@pytest.mark.parametrize("mode", MODES)
def test_early_completion_target_never_answers(rig, mode):
    """The same early REFER, but carol never answers: after calls.no_answer_timeout_s (3 s here,
    counted from bob's consultation INVITE) the daemon CANCELs her, and hangs alice up, since bob,
    whom she would go back to, was released at the REFER."""
    r = rig(MODES[mode] + "\n[calls]\nno_answer_timeout_s = 3\n")
    result = r.run(
        "uas_target_noanswer.xml",
        "uas_early_transferor.xml",
        "uac_early_transferee_abandoned.xml",
        uas_opts={"key_vals": {"hold": "sendonly"}},
        uac_opts={"key_vals": {"held": "recvonly"}},
    )
    alice, bob, carol = result.uac, result.uas, result.target

    after_refer = after("SIP/2.0 202", heard(bob.message_file))
    # bob hears nothing of the failure: he had left
    assert after_refer == ["SIP/2.0 202", "NOTIFY", "SIP/2.0 487", "NOTIFY", "BYE"], after_refer

    assert heard(carol.message_file) == ["INVITE", "CANCEL", "ACK"], heard(carol.message_file)
    [c_inv] = received(carol.message_file, "INVITE")
    assert "a=x-party:bob" in c_inv.text, c_inv.text  # bob's consultation call
    [cancel] = received(carol.message_file, "CANCEL")
    assert cancel.header("Call-ID") == c_inv.header("Call-ID")
    assert len(received(alice.message_file, "INVITE")) == 1  # bob's hold; no re-INVITE
    [a_bye] = received(alice.message_file, "BYE")
    assert "transferor has left" in (a_bye.header("Reason") or ""), a_bye.text

    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="early", result="failed") == 1, m
    assert m.get("b2bua_transfers_total") == 1, m
    assert m.get("b2bua_calls_total", result="transferred") == 1, m  # the consultation, handed over
    assert m.get("b2bua_active_calls") == 0 and m.get("b2bua_media_sessions") == 0, m
    events = r.event_names()
    assert "transfer_failed" in events and "transfer_completed" not in events, events
    assert_refer_not_relayed(m, events)


def test_target_refusing_the_join_leaves_both_calls_up(rig):
    """carol answers the daemon's re-INVITE 488: bob gets NOTIFY 488 (terminated) and nothing is
    torn down; bob then hangs up the consultation (carol gets the BYE) and call 1 (alice gets it)."""
    r = rig()
    result = r.run(
        "uas_attended_refusing_target.xml",
        "uas_attended_refused_transferor.xml",
        "uac_attended_stays.xml",
        uas_opts={"key_vals": {"hold": "sendonly"}},
        uac_opts={"key_vals": {"held": "recvonly"}},
    )
    alice, bob, carol = result.uac, result.uas, result.target

    notifies = received(bob.message_file, "NOTIFY")
    assert [sipfrag(n) for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 488 Not Acceptable Here"], [
        n.text for n in notifies
    ]
    assert (notifies[-1].header("Subscription-State") or "").startswith("terminated"), notifies[-1].text
    assert not received(bob.message_file, "BYE")  # the daemon released nothing
    [c_inv, c_moved] = received(carol.message_file, "INVITE")
    assert tag(c_moved.header("From")) == tag(c_inv.header("From"))
    [c_bye] = received(carol.message_file, "BYE")
    assert "SIPpTag02" in tag(c_bye.header("To")) and c_bye.header("Call-ID") == c_inv.header("Call-ID")
    assert len(received(alice.message_file, "INVITE")) == 1  # bob's hold; no re-INVITE
    assert len(received(alice.message_file, "BYE")) == 1  # bob's hangup

    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended", result="failed") == 1, m
    assert m.get("b2bua_transfers_total") == 1, m
    assert m.get("b2bua_calls_total", result="answered") == 2, m  # call 1 and the consultation
    assert m.get("b2bua_calls_total", result="transferred") == 0, m
    assert m.get("b2bua_active_calls") == 0 and m.get("b2bua_media_sessions") == 0, m
    assert m.relayed("BYE") == (2, 2), m  # bob's two, each passed on
    events = r.event_names()
    assert "transfer_failed" in events and "transfer_completed" not in events, events
