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

import concurrent.futures
import json
import time
import urllib.request
from pathlib import Path

import pytest

from . import rtp
from .harness import LOOPBACK, AgentResult, Daemon, RawSip, TracedMessage, run_sipp_pair, traced_messages
from .transfers import AFTER_TRANSFER, assert_talking, heard, local_port, origin, received, sdp_line, sent, tag

pytestmark = [pytest.mark.sipp, pytest.mark.usefixtures("raw_sockets", "needs_daemon")]


def requests_heard(agent: AgentResult) -> list[str]:
    return [h for h in heard(agent.message_file) if not h.startswith("SIP/")]


def finals_heard(agent: AgentResult) -> list[str]:
    """What an agent heard without the provisional responses."""
    return [h for h in heard(agent.message_file) if not h.startswith("SIP/2.0 1")]


def media_port(msg: TracedMessage) -> int:
    return int(sdp_line(msg, "m").split()[1])


def assert_carol_heard_alice(sniffer: rtp.LoopbackSniffer, agent: AgentResult, carol_offer: TracedMessage) -> None:
    """The agent playing bob and carol got alice's RTP on carol's port ([media_port+2]) only, never
    on bob's ([media_port]): the relay sends to the party that took bob's place."""
    bob_port = local_port(agent.cmd, "-mp")
    assert media_port(carol_offer) == bob_port + 2, carol_offer.text
    reached = [d for d in sniffer.snapshot() if d.rtp.ssrc == rtp.SSRC_A and d.dst[1] in (bob_port, bob_port + 2)]
    assert reached, "none of alice's RTP reached the agent playing bob and carol"
    assert all(d.dst[1] == bob_port + 2 for d in reached), [d for d in reached if d.dst[1] == bob_port][:5]


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

    # The order across the parties: alice's re-INVITE, then carol's 200, then bob's BYE (the first
    # two are a round trip apart: alice's 200 comes between; the last two reach one agent in order).
    assert moved.at and answer.at and bob_bye.at
    assert moved.at <= answer.at <= bob_bye.at, (moved.at, answer.at, bob_bye.at)

    # Media: alice and carol hear each other through the relay; none of alice's reaches bob's port.
    assert_talking(sn, daemon, alice, bob, AFTER_TRANSFER)
    assert_carol_heard_alice(sn, bob, carol_inv)

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




def test_pickup_of_a_ringing_call(daemon: Daemon, sipp_pair):
    """alice calls bob, whose phone rings; carol picks up (INVITE with Replaces naming the early
    dialog): carol gets 200 (alice's media), alice gets 200 (carol's media), bob's ringing INVITE is
    CANCELled (487, ACKed); alice and carol talk through the relay, and alice's BYE reaches carol."""
    with rtp.sniffing() as sn:
        result = sipp_pair(daemon, "uas_picked_up_callee.xml", "uac_picked_up_caller.xml")
    alice, bob = result.uac, result.uas

    assert heard(alice.message_file)[-3:] == ["SIP/2.0 180", "SIP/2.0 200", "SIP/2.0 200"], heard(alice.message_file)
    assert requests_heard(alice) == [], requests_heard(alice)
    a_answer = received(alice.message_file, "SIP/2.0 200")[0]
    assert "a=x-party:carol" in a_answer.text and "a=sendrecv" in a_answer.text, a_answer.text

    assert finals_heard(bob) == ["INVITE", "SIP/2.0 200", "CANCEL", "ACK", "BYE"], finals_heard(bob)
    [bob_inv] = received(bob.message_file, "INVITE")
    [cancel] = received(bob.message_file, "CANCEL")
    assert cancel.header("Call-ID") == bob_inv.header("Call-ID"), cancel.text
    assert tag(cancel.header("From")) == tag(bob_inv.header("From")), cancel.text
    [carol_inv] = [t for t in sent(bob.message_file, "INVITE") if t.header("Replaces")]
    c_answer = received(bob.message_file, "SIP/2.0 200")[0]
    assert "a=x-party:alice" in c_answer.text, c_answer.text
    [bye] = received(bob.message_file, "BYE")
    assert "SIPpTag12" in tag(c_answer.header("From")) and "SIPpTag12" in tag(bye.header("To")), bye.text
    for msg in (a_answer, c_answer):
        assert media_port(msg) in daemon.relay_ports and sdp_line(msg, "c") == "IN IP4 127.0.0.1", msg.text

    assert_talking(sn, daemon, alice, bob, AFTER_TRANSFER)
    assert_carol_heard_alice(sn, bob, carol_inv)

    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_calls_total") == 1, m
    assert m.get("b2bua_transfers_total") == 0, m
    assert m.relayed("INVITE") == (2, 1), m  # alice's and carol's in; bob's leg out
    assert m.get("b2bua_sip_requests_total", method="CANCEL", direction="out") == 1, m
    assert m.get("b2bua_sip_responses_total", code="487", direction="in") == 1, m
    assert m.relayed("BYE") == (1, 1), m  # alice's, passed to carol
    assert m.get("b2bua_active_calls") == 0 and m.get("b2bua_media_sessions") == 0, m
    events = [e.get("event") for e in daemon.events()]
    assert "pickup_started" in events and "pickup_completed" in events, events
    assert "pickup_refused" not in events and "replaces_refused" not in events, events

# -- the refusals ------------------------------------------------------------------------------------

OTHER_PEER = "127.0.0.2"  # another signalling peer: same machine, another address
OFFER = (b"v=0\r\no=raw 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
         b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def api(daemon: Daemon, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One request to the control API on 127.0.0.1 (never through a proxy from the environment)."""
    req = urllib.request.Request(f"http://{LOOPBACK}:{daemon.http_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def wait_for_answered_call(daemon: Daemon, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = api(daemon, "GET", "/v1/calls")
        if body["calls"] and body["calls"][0]["state"] == "confirmed":
            [call] = body["calls"]
            return call
        time.sleep(0.05)
    raise AssertionError(f"no answered call within {timeout}s\n{daemon.output_tail(3000)}")


def test_invite_with_replaces_refused(daemon: Daemon, tmp_path: Path):
    """Nobody replaces a leg without the right: while call 1 is up, a phone on the caller's host
    names a dialog nobody has (481) and the call's own confirmed dialog with early-only (486); a
    peer on 127.0.0.2 names each leg of the call with its real identifiers (403: another party's
    dialog). Every attempt is refused with that reason and ACKed; neither party hears anything of
    them; the call goes on until the test hangs it up through the control API."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pair = pool.submit(run_sipp_pair, daemon, "uas_basic.xml", "uac_replaces_refused.xml", tmp_path / "sipp",
                       recv_timeout_ms=20_000, timeout_s=30)
    try:
        call = wait_for_answered_call(daemon)
        for leg in call["legs"]:
            with RawSip(daemon.listen_port, host=OTHER_PEER) as raw:
                replaces = f"{leg['sip_call_id']};to-tag={leg['local_tag']};from-tag={leg['remote_tag']}"
                msg, info = raw.request("INVITE", headers={"Replaces": replaces, "Content-Type": "application/sdp"},
                                        body=OFFER)
                raw.send(msg)
                resp = raw.recv_response(timeout=5)
                assert resp is not None, f"no answer to the INVITE with Replaces naming the {leg['side']} leg"
                assert (resp.code, resp.reason) == (403, "Forbidden (Replaces names a dialog of another party)"), resp
                raw.ack_for(info, resp)
        # the caller's own two attempts, then the operator ends the call
        daemon.wait_metric("b2bua_sip_responses_total", 1, timeout=15, code="486", direction="out")
        status, _ = api(daemon, "DELETE", f"/v1/calls/{call['id']}", {"reason": "test over"})
        assert status == 202
        result = pair.result(timeout=40)
    finally:
        pool.shutdown(wait=True)  # bounded: the agents are killed after timeout_s + 5 s at the latest

    caller_heard = finals_heard(result.uac)
    assert caller_heard == ["SIP/2.0 200", "SIP/2.0 481", "SIP/2.0 486", "BYE"], caller_heard
    assert finals_heard(result.uas) == ["INVITE", "ACK", "BYE"], finals_heard(result.uas)
    for agent in (result.uac, result.uas):
        [bye] = received(agent.message_file, "BYE")
        assert bye.header("Reason") == 'SIP;cause=200;text="test over"', bye.text

    m = daemon.settled()
    assert m.get("b2bua_calls_total") == 1, m
    assert m.get("b2bua_sip_responses_total", code="403", direction="out") == 2, m
    assert m.get("b2bua_sip_responses_total", code="481", direction="out") == 1, m
    assert m.get("b2bua_sip_responses_total", code="486", direction="out") == 1, m
    assert m.relayed("INVITE") == (5, 1), m  # call 1 and the four attempts in; only call 1's B leg out
    assert m.relayed("BYE") == (0, 2), m
    assert m.get("b2bua_active_calls") == 0 and m.get("b2bua_media_sessions") == 0, m
    refused = sorted(e.get("status") for e in daemon.events() if e.get("event") == "replaces_refused")
    assert refused == [403, 403, 481, 486], refused
    events = [e.get("event") for e in daemon.events()]
    assert "replace_started" not in events and "pickup_started" not in events, events
