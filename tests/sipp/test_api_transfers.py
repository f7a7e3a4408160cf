"""Transfers the control API starts, end to end: the daemon as a process, SIPp as the three parties.

alice (the UAC, party a, the transferee) calls bob (the UAS at the daemon's next hop, party b, the
agent); carol (a UAS on a port of her own, reached through a ``routing.rules`` entry) is the target.
The three agents run in a background thread (``TransferRig.run``) while the test waits for the call
to be answered, drives ``POST /v1/calls/{id}/transfer``, and reads ``/v1/events`` in a thread of its
own. Then it judges what each agent heard, the RTP alice and carol played after the transfer (it
must reach the other through relay ports only, and nothing reaches bob), the event stream, and the
daemon's counters (no call, no relay session left). The scenarios play pcap files and a sniffer
counts RTP on ``lo``: both need root or CAP_NET_RAW, as in test_media.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import rtp
from .harness import Daemon, TracedMessage, TrioResult
from .test_api import EventReader, api, wait_for_call
from .transfers import AFTER_TRANSFER, TransferRig, assert_talking, heard, received, sent, start_rig

pytestmark = [pytest.mark.sipp, pytest.mark.time_limit(60)]


@pytest.fixture(autouse=True)
def _needs_raw_sockets() -> None:
    if not rtp.raw_sockets_available():
        pytest.skip("SIPp's pcap player and the loopback sniffer need root or CAP_NET_RAW")


@pytest.fixture
def rig(start_daemon: Callable[..., Daemon], tmp_path: Path, needs_daemon) -> Callable[..., TransferRig]:
    def make(extra: str = "") -> TransferRig:
        return start_rig(start_daemon, tmp_path, extra)

    return make


@contextlib.contextmanager
def running(r: TransferRig, target: str, uas: str, uac: str, **opts: object) -> Iterator[Callable[[], TrioResult]]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(r.run, target, uas, uac, recv_timeout_ms=20000, timeout_s=30, **opts)
    try:
        yield lambda: future.result(timeout=45)
    finally:
        pool.shutdown(wait=True)  # bounded: the agents are killed after timeout_s + 5 s at the latest


def transfer(r: TransferRig, call_id: str, **body: object) -> tuple[int, dict]:
    return api(r.daemon, "POST", f"/v1/calls/{call_id}/transfer", body, timeout=30)


def names(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def progress(events: list[dict]) -> list[object]:
    return [e["fields"].get("stage", e["fields"].get("status")) for e in events if e["event"] == "transfer_progress"]


def assert_nothing_left(r: TransferRig) -> None:
    m = r.daemon.settled()
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m
    assert api(r.daemon, "GET", "/v1/calls") == (200, {"calls": []})


def test_blind_rebridge_moves_alice_to_carol_and_releases_bob(rig):
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_blind_target.xml", "api_uas_agent.xml",
                                       "uac_attended_unheld_transferee.xml") as verdict:
        call = wait_for_call(r.daemon)
        status, body = transfer(r, call["id"], type="blind", target="carol")
        assert status == 202, body
        assert (body["method"], body["party"], body["target"]) == ("rebridge", "a", "sip:carol@127.0.0.1")
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    assert heard(carol.message_file) == ["INVITE", "ACK", "BYE"], heard(carol.message_file)
    [c_inv] = received(carol.message_file, "INVITE")
    assert "sip:alice@" in (c_inv.header("From") or ""), c_inv.text  # carol sees alice calling
    r.assert_on_relay(c_inv)
    [a_moved] = received(alice.message_file, "INVITE")
    r.assert_on_relay(a_moved)
    [b_bye] = received(bob.message_file, "BYE")
    assert b_bye.header("Reason") == 'SIP;cause=200;text="call transferred"', b_bye.text
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    seen = events.wait()
    assert progress(seen) == [100, 180, 200], seen
    assert names(seen)[-1] == "call_ended" and "transfer_completed" in names(seen)
    done = next(e for e in seen if e["event"] == "transfer_completed")
    assert done["fields"]["method"] == "rebridge" and done["fields"]["source"] == "api"
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="blind", result="completed") == 1, m
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert_nothing_left(r)


@pytest.mark.parametrize("case", ["busy", "reject", "ringout"])
def test_blind_rebridge_to_a_target_that_does_not_answer_leaves_the_call(rig, case):
    r = rig('[calls]\nno_answer_timeout_s = 3\n' if case == "ringout" else "")
    expected = {"busy": 486, "reject": 603, "ringout": 408}[case]
    with running(r, f"api_uas_target_{case}.xml", "api_uas_agent.xml", "api_uac_hung_up.xml") as verdict:
        call = wait_for_call(r.daemon)
        status, body = transfer(r, call["id"], type="blind", target="sip:carol@example.com")
        assert status == 202, body
        events = EventReader(r.daemon, stop_after="transfer_failed")
        failed = events.wait(timeout=15)[-1]
        assert failed["event"] == "transfer_failed" and failed["fields"]["status"] == expected, failed
        status, body = api(r.daemon, "GET", f"/v1/calls/{call['id']}")
        assert status == 200 and body["state"] == "confirmed" and body["transfer_in_progress"] is False
        assert api(r.daemon, "DELETE", f"/v1/calls/{call['id']}")[0] == 202
        result = verdict()
    # alice and bob were never touched until the hang-up: one BYE each, nothing else.
    assert heard(result.uac.message_file)[-1] == "BYE"
    assert "INVITE" not in heard(result.uac.message_file)
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="blind", result="failed") == 1, m
    assert_nothing_left(r)


def test_blind_by_refer_lets_alice_transfer_herself_through_the_daemon(rig):
    r = rig()
    events = EventReader(r.daemon, stop_after="transfer_completed")
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_blind_target.xml", "api_uas_agent.xml",
                                       "api_uac_refer_transferee.xml") as verdict:
        call = wait_for_call(r.daemon)
        status, body = transfer(r, call["id"], type="blind", target="carol", method="refer")
        assert status == 202 and body["method"] == "refer", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    [refer] = received(alice.message_file, "REFER")
    assert refer.header("Refer-To") == f"<sip:carol@127.0.0.1:{r.daemon.sip_port}>", refer.text
    # Her NOTIFYs were answered by the daemon and not passed on to bob.
    assert heard(bob.message_file) == ["INVITE", "ACK", "BYE"], heard(bob.message_file)
    [c_inv] = received(carol.message_file, "INVITE")
    r.assert_on_relay(c_inv)
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    seen = events.wait()
    assert progress(seen) == ["accepted", 100, 200], seen
    assert_nothing_left(r)
    m = r.daemon.metrics()
    assert m.get("b2bua_transfers_total", kind="blind", result="completed") == 1, m
    assert m.get("b2bua_calls_total", result="transferred") == 1, m  # call 1
    assert m.get("b2bua_calls_total", result="answered") == 1, m  # alice's call to carol


def consult(r: TransferRig, call_id: str, **body: object) -> tuple[int, dict]:
    return api(r.daemon, "POST", f"/v1/calls/{call_id}/consult", body, timeout=30)


def test_supervised_consult_start_then_complete(rig):
    """bob consults carol while alice waits on hold, parked on the daemon; complete joins alice to
    carol and releases bob."""
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_consult_target.xml", "api_uas_consulting_agent.xml",
                                       "api_uac_consulted.xml") as verdict:
        call = wait_for_call(r.daemon)
        status, body = consult(r, call["id"], action="start", target="carol")
        assert status == 200 and body["consult"] == "talking_to_target", body
        status, body = api(r.daemon, "POST", f"/v1/calls/{call['id']}/transfer", {"type": "blind", "target": "carol"})
        assert status == 409, body  # busy with the consultation
        status, body = consult(r, call["id"], action="complete")
        assert status == 200 and body["consult"] == "ended", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(carol.message_file)
    assert heard(bob.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(bob.message_file)
    [c_inv, c_moved] = received(carol.message_file, "INVITE")
    assert c_moved.header("Call-ID") == c_inv.header("Call-ID")  # her own dialog, re-INVITEd
    r.assert_on_relay(c_moved)
    [_, a_moved] = received(alice.message_file, "INVITE")
    r.assert_on_relay(a_moved)
    [b_bye] = received(bob.message_file, "BYE")
    assert b_bye.header("Reason") == 'SIP;cause=200;text="call transferred"', b_bye.text
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    seen = events.wait()
    consult_events = [n for n in names(seen) if n.startswith("consult_")]
    assert consult_events == ["consult_started", "consult_connected", "consult_completed"], seen
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended", result="completed") == 1, m
    assert m.get("b2bua_transfers_total", kind="blind") == 0, m  # the start is not a transfer
    assert_nothing_left(r)


def wait_for_calls(r: TransferRig, count: int, timeout: float = 10.0) -> list[dict]:
    """The daemon's calls once `count` of them are answered."""
    import time  # noqa: PLC0415 - only here

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api(r.daemon, "GET", "/v1/calls")
        assert status == 200, body
        if len([c for c in body["calls"] if c["state"] == "confirmed"]) == count:
            return body["calls"]
        time.sleep(0.05)
    raise AssertionError(f"{count} answered calls not listed within {timeout}s\n{r.daemon.output_tail(3000)}")


def test_attended_rebridge_joins_alice_to_bobs_consultation_with_carol(rig):
    """bob consulted carol through the daemon on a call of his own; the API joins alice (party a of
    call 1) to carol's leg of that call: carol is re-INVITEd, not called again; bob is released."""
    r = rig()
    with rtp.sniffing() as sn, running(r, "uas_attended_target.xml", "api_uas_attended_agent.xml",
                                       "uac_attended_unheld_transferee.xml") as verdict:
        calls = wait_for_calls(r, 2)
        [call1] = [c for c in calls if c["callee"]["uri"].startswith("sip:bob@")]
        [consultation] = [c for c in calls if c["callee"]["uri"].startswith("sip:carol@")]
        status, body = transfer(r, call1["id"], type="attended", consult_call_id=consultation["id"])
        assert status == 202 and body["method"] == "rebridge", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(carol.message_file)
    [c_inv, c_moved] = received(carol.message_file, "INVITE")
    assert c_moved.header("Call-ID") == c_inv.header("Call-ID"), "carol was called again"
    r.assert_on_relay(c_moved)
    byes = received(bob.message_file, "BYE")
    assert len(byes) == 2 and all("call transferred" in (b.header("Reason") or "") for b in byes)
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended", result="completed") == 1, m
    assert m.get("b2bua_calls_total", result="transferred") == 1, m  # the consultation call
    assert_nothing_left(r)


def test_attended_by_refer_lets_alice_replace_bob_in_his_consultation(rig):
    """The same transfer by REFER: alice gets a Refer-To with the escaped Replaces of bob's leg of the
    consultation, INVITEs the daemon with it and takes bob's place there; her NOTIFY 200 makes the
    daemon end call 1."""
    r = rig()
    events = EventReader(r.daemon, stop_after="transfer_completed")
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "uas_attended_target.xml", "api_uas_attended_agent.xml",
                                       "api_uac_refer_attended_transferee.xml") as verdict:
        calls = wait_for_calls(r, 2)
        [consultation] = [c for c in calls if c["callee"]["uri"].startswith("sip:carol@")]
        [call1] = [c for c in calls if c is not consultation]
        status, body = transfer(r, call1["id"], type="attended", consult_call_id=consultation["id"], method="refer")
        assert status == 202 and body["method"] == "refer", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    [refer] = received(alice.message_file, "REFER")
    [consult_leg] = [leg for leg in consultation["legs"] if leg["side"] == "a"]  # bob's leg of it
    escaped = (f"Replaces={consult_leg['sip_call_id'].replace('@', '%40')}%3Bto-tag%3D{consult_leg['local_tag']}"
               f"%3Bfrom-tag%3D{consult_leg['remote_tag']}")
    assert refer.header("Refer-To") == f"<sip:carol@127.0.0.1:{r.daemon.sip_port}?{escaped}>", refer.text
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(carol.message_file)
    reasons = sorted(b.header("Reason") or "" for b in received(bob.message_file, "BYE"))
    assert reasons == ['SIP;cause=200;text="call transferred"', 'SIP;cause=200;text="replaced"'], reasons
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    seen = events.wait()
    assert progress(seen) == ["accepted", 100, 200], seen
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended", result="completed") == 1, m
    assert_nothing_left(r)


def wait_for_ringing_consultation(r: TransferRig, timeout: float = 10.0) -> tuple[dict, dict]:
    """(call 1, answered; the consultation call, still ringing at carol)."""
    import time  # noqa: PLC0415 - only here

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = api(r.daemon, "GET", "/v1/calls")[1]["calls"]
        ringing = [c for c in calls if c["state"] == "early" and c["callee"]["uri"].startswith("sip:carol@")]
        up = [c for c in calls if c["state"] == "confirmed"]
        if ringing and up:
            return up[0], ringing[0]
        time.sleep(0.05)
    raise AssertionError(f"no ringing consultation within {timeout}s\n{r.daemon.output_tail(3000)}")


@pytest.mark.parametrize("method", ["rebridge", "refer"])
def test_early_completion_joins_alice_to_carol_once_she_answers(rig, method):
    """bob's consultation still rings at carol when the API transfers alice to it: bob is let go at
    once, carol's late 200 is ACKed and she is re-INVITEd onto alice's media. Asked by REFER, it is
    done by rebridge all the same (endpoints cannot complete early: RFC 3891, 481)."""
    r = rig()
    with rtp.sniffing() as sn, running(r, "api_uas_early_target.xml", "api_uas_early_agent.xml",
                                       "uac_attended_unheld_transferee.xml") as verdict:
        call1, consultation = wait_for_ringing_consultation(r)
        status, body = transfer(r, call1["id"], type="early", consult_call_id=consultation["id"], method=method)
        assert status == 202 and body["method"] == "rebridge", body
        assert (body["fallback"] is None) == (method == "rebridge"), body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(carol.message_file)
    assert not received(alice.message_file, "REFER")
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="early", result="completed") == 1, m
    assert_nothing_left(r)


def direction(msg: TracedMessage) -> str:
    for d in ("sendonly", "recvonly", "inactive"):
        if f"a={d}" in msg.text:
            return d
    return "sendrecv"


def party(msg: TracedMessage) -> str:
    """Whose SDP `msg` carries: the scenarios mark theirs with ``a=x-party:<name>``."""
    return msg.text.split("a=x-party:", 1)[1].split()[0]


def consult_names(events: list[dict]) -> list[str]:
    return [n for n in names(events) if n.startswith("consult_")]


def consult_started(r: TransferRig) -> dict:
    """Call 1 answered, `consult start` to carol done (alice held and parked, bob talking to carol)."""
    call = wait_for_call(r.daemon)
    status, body = consult(r, call["id"], action="start", target="carol")
    assert status == 200 and body["consult"] == "talking_to_target", body
    return call


def test_consult_cancel_hangs_up_carol_and_gives_bob_alice_back(rig):
    """start then cancel: carol is released, alice is re-INVITEd off hold onto a new relay session
    with bob (who is re-INVITEd onto it first), and alice and bob talk again through the relay."""
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_consult_cancelled_target.xml",
                                       "api_uas_consult_cancelling_agent.xml",
                                       "api_uac_consult_resumed.xml") as verdict:
        call = consult_started(r)
        status, body = consult(r, call["id"], action="cancel")
        assert status == 200 and body["consult"] == "ended", body
        assert body["call"]["transfer_in_progress"] is False, body
        status, body = consult(r, call["id"], action="cancel")
        assert (status, body) == (409, {"error": "no consultation is under way on this call"})
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    assert heard(carol.message_file) == ["INVITE", "ACK", "BYE"], heard(carol.message_file)
    [c_bye] = received(carol.message_file, "BYE")
    assert c_bye.header("Reason") == 'SIP;cause=200;text="consultation cancelled"', c_bye.text
    [a_hold, a_back] = received(alice.message_file, "INVITE")
    assert (direction(a_hold), direction(a_back)) == ("sendonly", "sendrecv")
    assert party(a_back) == "bob"
    r.assert_on_relay(a_back)
    [_, b_consult, b_back] = received(bob.message_file, "INVITE")
    assert (party(b_consult), party(b_back), direction(b_back)) == ("carol", "alice", "sendrecv")
    r.assert_on_relay(b_back)
    assert_talking(sn, r.daemon, alice, bob, AFTER_TRANSFER, left_out=carol)
    seen = events.wait()
    assert consult_names(seen) == ["consult_started", "consult_connected", "consult_cancelled"], seen
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended") == 0, m  # nothing was transferred
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert_nothing_left(r)


def test_consult_swap_then_complete_joins_alice_to_carol(rig):
    """start, swap, complete: the swap holds carol (sendonly) and parks her, then moves bob back onto
    alice's media and alice off hold (talking_to_held); complete joins alice to carol, alice
    re-INVITEd first, carol off hold onto alice's media, and releases bob."""
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_consult_swapped_target.xml", "api_uas_consult_swapping_agent.xml",
                                       "api_uac_consult_swapped.xml") as verdict:
        call = consult_started(r)
        status, body = consult(r, call["id"], action="swap")
        assert status == 200 and body["consult"] == "talking_to_held", body
        status, body = api(r.daemon, "POST", f"/v1/calls/{call['id']}/hold", {"party": "a"})
        assert status == 409, body  # the consultation still runs
        status, body = consult(r, call["id"], action="complete")
        assert status == 200 and body["consult"] == "ended", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    [a_hold, a_swapped, a_joined] = received(alice.message_file, "INVITE")
    assert [(party(m), direction(m)) for m in (a_hold, a_swapped, a_joined)] == [
        ("bob", "sendonly"), ("bob", "sendrecv"), ("carol", "sendrecv")]
    [_, b_consult, b_swapped] = received(bob.message_file, "INVITE")
    assert [(party(m), direction(m)) for m in (b_consult, b_swapped)] == [("carol", "sendrecv"), ("alice", "sendrecv")]
    r.assert_on_relay(b_swapped)
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "BYE"], \
        heard(carol.message_file)
    [c_inv, c_hold, c_joined] = received(carol.message_file, "INVITE")
    assert [(party(m), direction(m)) for m in (c_hold, c_joined)] == [("bob", "sendonly"), ("alice", "sendrecv")]
    assert c_joined.header("Call-ID") == c_inv.header("Call-ID")  # her own dialog, re-INVITEd
    r.assert_on_relay(c_joined)
    r.assert_on_relay(a_joined)
    [b_bye] = received(bob.message_file, "BYE")
    assert b_bye.header("Reason") == 'SIP;cause=200;text="call transferred"', b_bye.text
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    seen = events.wait()
    assert consult_names(seen) == ["consult_started", "consult_connected", "consult_swapped", "consult_completed"], seen
    swapped = next(e for e in seen if e["event"] == "consult_swapped")
    assert swapped["fields"]["talking_to"] == "held", swapped
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended", result="completed") == 1, m
    assert_nothing_left(r)


def test_consult_swap_then_cancel_releases_the_parked_carol(rig):
    """start, swap, cancel: after the swap bob already talks to alice again, so the cancel only hangs
    up carol, parked on hold; no re-INVITE, and alice and bob talk through the relay."""
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_consult_swapped_out_target.xml",
                                       "api_uas_consult_cancelling_agent.xml",
                                       "api_uac_consult_resumed.xml") as verdict:
        call = consult_started(r)
        status, body = consult(r, call["id"], action="swap")
        assert status == 200 and body["consult"] == "talking_to_held", body
        status, body = consult(r, call["id"], action="cancel")
        assert status == 200 and body["consult"] == "ended", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    assert heard(carol.message_file) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], heard(carol.message_file)
    [_, c_hold] = received(carol.message_file, "INVITE")
    assert (party(c_hold), direction(c_hold)) == ("bob", "sendonly")
    [c_bye] = received(carol.message_file, "BYE")
    assert c_bye.header("Reason") == 'SIP;cause=200;text="consultation cancelled"', c_bye.text
    [a_hold, a_back] = received(alice.message_file, "INVITE")
    assert [(party(m), direction(m)) for m in (a_hold, a_back)] == [("bob", "sendonly"), ("bob", "sendrecv")]
    r.assert_on_relay(a_back)
    [_, _, b_back] = received(bob.message_file, "INVITE")
    assert (party(b_back), direction(b_back)) == ("alice", "sendrecv")
    assert_talking(sn, r.daemon, alice, bob, AFTER_TRANSFER, left_out=carol)
    seen = events.wait()
    assert consult_names(seen) == ["consult_started", "consult_connected", "consult_swapped", "consult_cancelled"], seen
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="attended") == 0, m
    assert_nothing_left(r)


def test_refer_refused_405_falls_back_to_rebridge(rig):
    """A transfer asked by REFER that alice refuses 405 is done by rebridge
    (api.refer_fallback, on by default): the answer says why in `fallback`, the B2BUA calls carol
    as alice would, moves alice onto carol's media and releases bob."""
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_blind_target.xml", "api_uas_agent.xml",
                                       "api_uac_refer_405_transferee.xml") as verdict:
        call = wait_for_call(r.daemon)
        status, body = transfer(r, call["id"], type="blind", target="carol", method="refer")
        assert status == 202, body
        assert (body["method"], body["fallback"]) == (
            "rebridge", "the transferee answered the REFER 405 Method Not Allowed"), body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    [refer] = received(alice.message_file, "REFER")
    assert refer.header("Refer-To") == f"<sip:carol@127.0.0.1:{r.daemon.sip_port}>", refer.text
    assert len(sent(alice.message_file, "SIP/2.0 405")) == 1  # no second REFER
    assert heard(carol.message_file) == ["INVITE", "ACK", "BYE"], heard(carol.message_file)
    [c_inv] = received(carol.message_file, "INVITE")
    assert "sip:alice@" in (c_inv.header("From") or ""), c_inv.text  # the B2BUA calls her as alice
    r.assert_on_relay(c_inv)
    [a_moved] = received(alice.message_file, "INVITE")
    assert (party(a_moved), direction(a_moved)) == ("carol", "sendrecv")
    r.assert_on_relay(a_moved)
    [b_bye] = received(bob.message_file, "BYE")
    assert b_bye.header("Reason") == 'SIP;cause=200;text="call transferred"', b_bye.text
    assert_talking(sn, r.daemon, alice, carol, AFTER_TRANSFER, left_out=bob)
    seen = events.wait()
    assert progress(seen) == [100, 180, 200], seen
    done = next(e for e in seen if e["event"] == "transfer_completed")
    assert done["fields"]["method"] == "rebridge", done
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="blind", result="completed") == 1, m
    assert m.get("b2bua_transfers_total", kind="blind", result="failed") == 0, m
    assert_nothing_left(r)


def test_consult_start_to_a_busy_target_takes_alice_off_hold(rig):
    """start to carol, who answers 486: 502 with sip_status, alice is taken off hold on the same
    media (bob is never re-INVITEd) and alice and bob talk through the relay as before."""
    r = rig()
    events = EventReader(r.daemon)
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn, running(r, "api_uas_target_busy.xml", "api_uas_consult_untouched_agent.xml",
                                       "api_uac_consult_resumed.xml") as verdict:
        call = wait_for_call(r.daemon)
        status, body = consult(r, call["id"], action="start", target="carol")
        assert (status, body) == (502, {"error": "the target answered 486 Busy Here", "sip_status": 486})
        status, body = api(r.daemon, "GET", f"/v1/calls/{call['id']}")
        assert status == 200 and body["state"] == "confirmed" and body["transfer_in_progress"] is False, body
        assert [leg["held"] for leg in body["legs"]] == [False, False], body
        assert consult(r, call["id"], action="cancel")[0] == 409
        result = verdict()
    alice, bob = result.uac, result.uas
    [a_hold, a_back] = received(alice.message_file, "INVITE")
    assert [(party(m), direction(m)) for m in (a_hold, a_back)] == [("bob", "sendonly"), ("bob", "sendrecv")]
    assert rtp.sdp_audio(a_back.text) == rtp.sdp_audio(a_hold.text)  # the same relay port
    assert heard(bob.message_file) == ["INVITE", "ACK", "BYE"], heard(bob.message_file)
    assert_talking(sn, r.daemon, alice, bob, AFTER_TRANSFER)
    seen = events.wait()
    assert consult_names(seen) == ["consult_started"], seen
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total") == 0, m  # a consultation is not a transfer
    assert_nothing_left(r)


def test_early_completion_to_a_target_that_refuses_hangs_alice_up(rig):
    """bob's consultation rings at carol when the API transfers alice to it: bob is released at once
    (487 on his consultation, BYE on call 1); carol then answers 486. Nobody is left to return alice
    to, so the B2BUA hangs her up instead of leaving her in a call with nobody (README: a failure
    with the transferor gone hangs the transferee up); the transfer counts as failed."""
    r = rig()
    events = EventReader(r.daemon, stop_after="transfer_failed")
    r.daemon.wait_metric("b2bua_api_event_streams", 1)
    with running(r, "api_uas_early_target_rejects.xml", "api_uas_early_agent.xml",
                 "api_uac_abandoned_transferee.xml") as verdict:
        call1, consultation = wait_for_ringing_consultation(r)
        status, body = transfer(r, call1["id"], type="early", consult_call_id=consultation["id"])
        assert status == 202 and body["method"] == "rebridge", body
        result = verdict()
    alice, bob, carol = result.uac, result.uas, result.target
    finals = [h for h in heard(alice.message_file) if not h.startswith("SIP/2.0 1")]
    assert finals == ["SIP/2.0 200", "BYE"], heard(alice.message_file)  # no re-INVITE, then the BYE
    [a_bye] = received(alice.message_file, "BYE")
    assert a_bye.header("Reason") == 'SIP;cause=200;text="transfer failed and the transferor has left"', a_bye.text
    [b_bye] = received(bob.message_file, "BYE")
    assert b_bye.header("Reason") == 'SIP;cause=200;text="call transferred"', b_bye.text
    assert heard(carol.message_file) == ["INVITE", "ACK"], heard(carol.message_file)
    seen = events.wait()
    failed = seen[-1]
    assert failed["event"] == "transfer_failed" and failed["fields"]["status"] == 486, seen
    assert "transfer_completed" not in names(seen)
    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="early", result="failed") == 1, m
    assert m.get("b2bua_transfers_total", kind="early", result="completed") == 0, m
    assert_nothing_left(r)
