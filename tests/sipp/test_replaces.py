"""An incoming INVITE with Replaces (RFC 3891), end to end: a new caller takes a leg's place.

Two SIPp agents per test (``harness.run_sipp_pair``) and the real daemon. alice and bob have a call
through the B2BUA; carol, another phone on bob's host (the PBX finishing a transfer on its side, or
a colleague taking the call over), sends the B2BUA an INVITE whose Replaces names bob's leg.
bob's agent plays carol too: SIPp matches messages to a scenario call by Call-ID only, so carol's
INVITE reuses bob's Call-ID with a new From tag (a new dialog to the daemon), and offers media on
another port ([media_port+2]), as a phone of her own would.

What the daemon must do (b2bua/call/replacement.py): re-INVITE alice (who stays) with carol's offer
through a new relay session, answer carol 200 with alice's answer, then release bob's leg (BYE,
Reason: replaced); RTP then flows between alice and carol only. And refuse what must not replace
anything: 481 when the Replaces names no dialog of ours, 486 for ``early-only`` against a
confirmed dialog, 403 when it comes from another signalling peer than the dialog's (a raw socket on
127.0.0.2 here, which knows the identifiers from the control API: SIPp cannot name a dialog it is
not a party to from another address).

The scenarios check what each party receives; the tests add the order across the parties (SIPp's
trace timestamps: one clock), the media, the daemon's counters and events. The ``start_daemon``
teardown checks that no exception escaped and no call is left over.
"""

from __future__ import annotations

import pytest

from . import rtp
from .harness import AgentResult, Daemon, TracedMessage, traced_messages
from .transfers import AFTER_TRANSFER, assert_talking, heard, origin, received, sdp_line, sent, tag

pytestmark = [pytest.mark.sipp, pytest.mark.usefixtures("raw_sockets", "needs_daemon")]


def requests_heard(agent: AgentResult) -> list[str]:
    return [h for h in heard(agent.message_file) if not h.startswith("SIP/")]


def finals_heard(agent: AgentResult) -> list[str]:
    """What an agent heard without the provisional responses."""
    return [h for h in heard(agent.message_file) if not h.startswith("SIP/2.0 1")]


def media_port(msg: TracedMessage) -> int:
    return int(sdp_line(msg, "m").split()[1])


def assert_only_to(sniffer: rtp.LoopbackSniffer, ssrc: int, port: int, gone: int) -> None:
    """Every RTP packet of `ssrc` that reached the port `port` or `gone` reached `port`."""
    reached = [d for d in sniffer.snapshot() if d.rtp.ssrc == ssrc and d.dst[1] in (port, gone)]
    assert reached, f"no RTP of {ssrc:#x} reached port {port}"
    assert all(d.dst[1] == port for d in reached), [d for d in reached if d.dst[1] != port][:5]


@pytest.mark.parametrize("replaced", ["callee", "caller"])
def test_invite_with_replaces_takes_the_legs_place(daemon: Daemon, sipp_pair, replaced):
    """carol replaces bob (the callee of call 1, or its caller): alice is re-INVITEd onto carol's
    media first, then carol gets 200, then bob gets BYE (Reason: replaced); alice and carol talk
    through the relay, nothing reaches bob's media port; alice's hangup reaches carol."""
    if replaced == "callee":
        with rtp.sniffing() as sn:
            result = sipp_pair(daemon, "uas_replacing_callee.xml", "uac_attended_unheld_transferee.xml")
        alice, bob = result.uac, result.uas
    else:
        with rtp.sniffing() as sn:
            result = sipp_pair(daemon, "uas_attended_unheld_transferee.xml", "uac_replacing_caller.xml")
        alice, bob = result.uas, result.uac
    bob_tag = "SIPpTag01" if replaced == "callee" else "SIPpTag00"
    carol_tag = "SIPpTag12" if replaced == "callee" else "SIPpTag10"

    # alice heard call 1 and one re-INVITE (onto carol), nothing else; her BYE was answered.
    assert requests_heard(alice)[-2:] == ["INVITE", "ACK"], requests_heard(alice)
    assert len(requests_heard(alice)) == (2 if replaced == "callee" else 4), requests_heard(alice)
    moved = received(alice.message_file, "INVITE")[-1]
    assert "a=x-party:carol" in moved.text and "a=sendrecv" in moved.text, moved.text
    # the first SDP the daemon gave alice names her leg's o= line; the move goes on under it
    daemon_sdp = next(t for t in traced_messages(alice.message_file) if t.direction == "received" and "v=0" in t.text)
    assert origin(moved)[0] == origin(daemon_sdp)[0] and origin(moved)[1] > origin(daemon_sdp)[1], moved.text

    # bob's agent: call 1, then carol's 200 and bob's BYE, then alice's BYE to carol.
    got = finals_heard(bob)
    call1 = ["INVITE", "ACK"] if replaced == "callee" else ["SIP/2.0 200"]
    assert got == [*call1, "SIP/2.0 200", "BYE", "BYE"], got
    [carol_inv] = [t for t in sent(bob.message_file, "INVITE") if t.header("Replaces")]
    answer = received(bob.message_file, "SIP/2.0 200")[-1]
    assert "a=x-party:alice" in answer.text, answer.text
    assert answer.header("Call-ID") == carol_inv.header("Call-ID") and carol_tag in (answer.header("From") or "")
    bob_bye, carol_bye = received(bob.message_file, "BYE")
    assert bob_tag in tag(bob_bye.header("To")) and "replaced" in (bob_bye.header("Reason") or ""), bob_bye.text
    assert carol_tag in tag(carol_bye.header("To")), carol_bye.text
    for msg in (moved, answer):
        port = media_port(msg)
        assert port in daemon.relay_ports and sdp_line(msg, "c") == "IN IP4 127.0.0.1", msg.text

    # The order across the parties: alice's re-INVITE, then carol's 200, then bob's BYE.
    assert moved.at and answer.at and bob_bye.at
    assert moved.at <= answer.at <= bob_bye.at, (moved.at, answer.at, bob_bye.at)

    # Media: alice and carol hear each other through the relay; none of alice's reaches bob's port.
    assert_talking(sn, daemon, alice, bob, AFTER_TRANSFER)
    [bob_sdp] = [t for t in sent(bob.message_file, "INVITE") + sent(bob.message_file, "SIP/2.0 200")
                 if "a=x-party:bob" in t.text]
    bob_port = media_port(bob_sdp)
    assert_only_to(sn, rtp.SSRC_A, media_port(carol_inv), gone=bob_port)

    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_calls_total") == 1, m  # the replacement is the same call
    assert m.get("b2bua_transfers_total") == 0, m  # a replacement is not a transfer the daemon made
    assert m.relayed("INVITE") == (2, 2), m  # in: call 1, carol's; out: call 1's B leg, alice's re-INVITE
    assert m.relayed("BYE") == (1, 2), m  # in: alice's; out: bob's release, alice's to carol
    assert m.get("b2bua_active_calls") == 0 and m.get("b2bua_media_sessions") == 0, m
    events = [e.get("event") for e in daemon.events()]
    assert "replace_started" in events and "replace_completed" in events, events
    assert "replace_refused" not in events and "replaces_refused" not in events, events

