"""Blind transfers that fail because the target never answers or cannot be reached, end to end.

RFC 5589 §6.2: the transferor hears the failure in the final NOTIFY, and the transferee stays
connected to it. Three SIPp agents per test (``harness.run_sipp_trio``) and the real daemon
(``transfers.mode = terminate``): alice (the transferee), bob (the transferor: the callee of call 1,
or its caller) and carol (the target, a UAS on a port of its own reached through a
``routing.rules`` entry). bob holds alice and REFERs her to -key target; when the final NOTIFY
reports the failure he takes her back (re-INVITE a=sendrecv, relayed to her), they exchange RTP
through the relay, and alice hangs up.

- Never answers: carol only rings; after ``calls.no_answer_timeout_s`` (1.5 s here, counted from
  the REFER) the daemon CANCELs her and tells bob 408.
- Unreachable: the target's route is a port of 127.0.0.1 where nothing listens. Over UDP the
  ICMP port-unreachable is not reported to the transaction, so the INVITE times out (Timer B,
  64*T1; the test daemon runs with ``sip.t1_ms = 100``: 6.4 s instead of 32 s) and bob hears 408.
  Over TCP the refused connection ends the INVITE transaction at once with a transport error
  (RFC 3261 §17.1.4; b2bua/transport/tcp.py hands the unsent bytes back): bob hears 503.

Each party's scenario checks what it receives; the tests add the exact sequences from the traces,
the RTP (alice's and bob's media after the failure reach each other through the relay) and the
daemon's counters. The ``start_daemon`` teardown checks that no exception escaped and no call is
left over.
"""

from __future__ import annotations

import pytest

from . import rtp
from .harness import AgentResult, Metrics, TrioResult, free_port
from .transfers import TransferRig, assert_talking, heard, received, sipfrag

pytestmark = [pytest.mark.sipp, pytest.mark.usefixtures("raw_sockets")]  # rig: conftest

NO_ANSWER_S = 1.5
NO_ANSWER = f"[calls]\nno_answer_timeout_s = {NO_ANSWER_S}\n"
FAST_TIMER_B = "[sip]\nt1_ms = 100\n"  # Timer B = 64*T1 = 6.4 s
WAIT_FOR_TIMER_B_MS = 15_000  # how long bob and alice wait for what follows that timeout

# (bob's scenario, alice's scenario) and which agent each is, by who transfers
FLOWS = {
    "callee": ("uas_failed_transfer_transferor.xml", "uac_failed_transfer_transferee.xml"),
    "caller": ("uac_failed_transfer_transferor.xml", "uas_failed_transfer_transferee.xml"),
}
TALK = rtp.SCENARIO_MEDIA["basic"]  # after the failure alice plays rtp_a1.pcap, bob rtp_b1.pcap


def run_failed(r: TransferRig, transferor: str, target_scenario: str, target: str,
               **kwargs) -> tuple[TrioResult, AgentResult, AgentResult]:
    """The trio with bob as `transferor` ("callee" or "caller"); returns (result, alice, bob)."""
    bob_scen, alice_scen = FLOWS[transferor]
    uas, uac = (bob_scen, alice_scen) if transferor == "callee" else (alice_scen, bob_scen)
    bob_opts = {"key_vals": {"target": target}}
    result = r.run(target_scenario, uas, uac, **({"uas_opts": bob_opts} if transferor == "callee"
                                                  else {"uac_opts": bob_opts}), **kwargs)
    alice, bob = (result.uac, result.uas) if transferor == "callee" else (result.uas, result.uac)
    return result, alice, bob


def assert_bob_kept_alice(alice: AgentResult, bob: AgentResult, frags: list[str]) -> None:
    """bob heard 202, the NOTIFYs `frags` (the last one terminating the subscription), the answer to
    his resume and alice's BYE; alice heard bob's hold and resume and nothing of the transfer."""
    bob_heard = [h for h in heard(bob.message_file) if not h.startswith("SIP/2.0 1")]
    after_refer = bob_heard[bob_heard.index("SIP/2.0 202"):]
    assert after_refer == ["SIP/2.0 202", *["NOTIFY"] * len(frags), "SIP/2.0 200", "BYE"], bob_heard
    notifies = received(bob.message_file, "NOTIFY")
    assert [sipfrag(n) for n in notifies] == frags, [n.text for n in notifies]
    states = [n.header("Subscription-State") or "" for n in notifies]
    assert all(s.startswith("active;expires=") for s in states[:-1]), states
    assert states[-1] == "terminated;reason=noresource", states

    requests = [h for h in heard(alice.message_file) if not h.startswith("SIP/")]
    calls_in = requests.count("INVITE") - 2  # 1 if alice is the callee (bob's INVITE), else 0
    assert calls_in in (0, 1), requests
    assert requests[2 * calls_in:] == ["INVITE", "ACK", "INVITE", "ACK"], requests  # hold, resume


def assert_failed_blind(m: Metrics) -> None:
    assert m.get("b2bua_transfers_total", kind="blind", result="failed") == 1, m
    assert m.get("b2bua_transfers_total") == 1, m
    assert m.get("b2bua_transfer_duration_seconds_count", kind="blind") == 1, m
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_calls_total") == 1, m  # the failed attempt is no call of its own
    assert m.relayed("REFER") == (1, 0), m
    assert m.get("b2bua_sip_responses_total", code="202", direction="out") == 1, m
    # in: call 1, bob's hold and resume; out: call 1's B leg, the target, the hold and the resume
    assert m.relayed("INVITE") == (3, 4), m
    assert m.relayed("BYE") == (1, 1), m  # alice's, passed to bob
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m  # the target's session was deleted too


@pytest.mark.parametrize("transferor", ["callee", "caller"])
def test_blind_transfer_target_never_answers(rig, transferor):
    """carol rings until calls.no_answer_timeout_s runs out: the daemon CANCELs her (she answers
    487, the daemon ACKs), bob hears NOTIFY 100, 180, then 408 (terminated), takes alice back, and
    they talk through the relay; carol hears nothing else."""
    r = rig(NO_ANSWER)
    with rtp.sniffing() as sn:
        result, alice, bob = run_failed(r, transferor, "uas_target_noanswer.xml", "carol")
    carol = result.target.message_file

    assert heard(carol) == ["INVITE", "CANCEL", "ACK"], heard(carol)
    [c_inv] = received(carol, "INVITE")
    assert "a=x-party:alice" in c_inv.text and "a=sendrecv" in c_inv.text, c_inv.text  # alice's SDP, un-held
    assert "sip:alice@" in (c_inv.header("From") or ""), c_inv.text
    assert (c_inv.header("Referred-By") or "").startswith("<sip:bob@"), c_inv.text
    r.assert_on_relay(c_inv)
    [cancel] = received(carol, "CANCEL")
    assert cancel.header("Call-ID") == c_inv.header("Call-ID"), cancel.text

    assert_bob_kept_alice(alice, bob, [
        "SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 408 Request Timeout (no answer)"])
    assert_talking(sn, r.daemon, alice, bob, TALK, left_out=result.target)

    m = r.daemon.settled()
    assert_failed_blind(m)
    assert m.get("b2bua_sip_requests_total", method="CANCEL", direction="out") == 1, m
    assert m.get("b2bua_sip_responses_total", code="487", direction="in") == 1, m
    assert m.relayed("NOTIFY") == (0, 3), m
    events = r.event_names()
    assert "transfer_failed" in events and "transfer_completed" not in events, events


@pytest.mark.time_limit(60)
@pytest.mark.parametrize(
    "transferor,transport", [("callee", "udp"), ("caller", "udp"), ("callee", "tcp")],
    ids=["callee-udp", "caller-udp", "callee-tcp-refused"],
)
def test_blind_transfer_to_an_unreachable_target(rig, transferor, transport):
    """The target's route leads to a port where nothing listens: bob hears NOTIFY 100 then the
    failure (terminated): 408 when the UDP INVITE times out (Timer B), 503 at once when the TCP
    connection is refused. He takes alice back; they talk through the relay. The target agent
    (routed elsewhere) receives nothing."""
    hop = f"127.0.0.1:{free_port()}" + (";transport=tcp" if transport == "tcp" else "")
    r = rig(FAST_TIMER_B, rules={"nobody": hop})
    with rtp.sniffing() as sn:
        result, alice, bob = run_failed(r, transferor, "uas_target_noanswer.xml", "nobody",
                                        target_calls=0, recv_timeout_ms=WAIT_FOR_TIMER_B_MS, timeout_s=30)

    frags = [sipfrag(n) for n in received(bob.message_file, "NOTIFY")]
    failure = "SIP/2.0 503 Service Unavailable" if transport == "tcp" else "SIP/2.0 408 Request Timeout"
    assert frags == ["SIP/2.0 100 Trying", failure], frags
    assert_bob_kept_alice(alice, bob, ["SIP/2.0 100 Trying", failure])
    assert_talking(sn, r.daemon, alice, bob, TALK)

    m = r.daemon.settled()
    assert_failed_blind(m)
    assert m.get("b2bua_sip_requests_total", method="CANCEL", direction="out") == 0, m
    assert m.relayed("NOTIFY") == (0, 2), m
    events = r.event_names()
    assert "transfer_failed" in events and "transfer_completed" not in events, events
