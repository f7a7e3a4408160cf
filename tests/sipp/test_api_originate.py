"""Click-to-dial (`POST /v1/calls`) end to end: the daemon as a process, two SIPp UAS as the parties.

alice (party a) is a UAS at the daemon's next hop, carol (party b) a UAS on a port of her own that a
``routing.rules`` entry reaches; nobody calls in: the API makes the daemon call alice (an INVITE
without SDP), and once she answers, carol with alice's offer; carol's answer reaches alice in the
ACK. Both agents run in a background thread through the harness's agent helpers, while the test
drives the API and reads the event stream; then it judges what each agent heard, the RTP they
played (it must reach the other through relay ports only), the events and the daemon's counters.
"""

from __future__ import annotations

import concurrent.futures
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from . import harness, rtp
from .harness import Daemon, SippFailure, agent_problems
from .test_api import EventReader, api
from .test_attended_transfer import AFTER_TRANSFER
from .transfers import TransferRig, heard, received, start_rig

pytestmark = [pytest.mark.sipp, pytest.mark.time_limit(60)]


@pytest.fixture(autouse=True)
def _needs_raw_sockets() -> None:
    if not rtp.raw_sockets_available():
        pytest.skip("SIPp's pcap player and the loopback sniffer need root or CAP_NET_RAW")


@pytest.fixture
def rig(start_daemon: Callable[..., Daemon], tmp_path: Path, needs_daemon) -> TransferRig:
    return start_rig(start_daemon, tmp_path)


def run_two_uas(r: TransferRig, a_scen: str, b_scen: str, timeout_s: int = 20) -> types.SimpleNamespace:
    """alice's UAS at the next hop and carol's at the target port, each for one call; bounded."""
    common = dict(call_count=1, limit=1, recv_timeout=15000, timeout=f"{timeout_s}s", rate=10, transport="u1")
    specs = []
    for role, scen, port in (("a", a_scen, r.daemon.next_hop_port), ("b", b_scen, r.target_port)):
        where = r.workdir / role
        where.mkdir(parents=True, exist_ok=True)
        agent, files = harness._make_agent("uas", scen, where, local_port=port, media_port=harness.free_port_block(),
                                           **common)
        specs.append((role, agent, files, port))
    runners: list = []
    results = {}
    try:
        for role, agent, files, port in specs:
            runner = harness._launch(agent, timeout_s + 5)
            runners.append((role, runner, files))
            (proc,) = runner._procs.values()
            harness.wait_port_bound(port, "udp", timeout=5, alive=lambda p=proc: p.poll() is None)
        for role, runner, files in runners:
            results[role] = harness._collect(role, runner, files, timeout=timeout_s + 5)
    finally:
        harness._kill_all([runner for _, runner, _ in runners])
    problems = [p for role in ("a", "b") for p in agent_problems(results[role], 1)]
    if problems:
        raise SippFailure("; ".join(problems) + "\n" + "\n".join(results[k].describe() for k in ("a", "b"))
                          + "\n" + r.daemon.output_tail(3000))
    return types.SimpleNamespace(a=results["a"], b=results["b"])


def dial(r: TransferRig, a_scen: str, b_scen: str, body: dict) -> tuple[types.SimpleNamespace, dict]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        future = pool.submit(run_two_uas, r, a_scen, b_scen)
        harness.wait_port_bound(r.target_port, "udp", timeout=5)
        harness.wait_port_bound(r.daemon.next_hop_port, "udp", timeout=5)
        status, created = api(r.daemon, "POST", "/v1/calls", body)
        assert status == 201, created
        return future.result(timeout=45), created
    finally:
        pool.shutdown(wait=True)


def test_click_to_dial_connects_alice_and_carol_through_the_relay(rig):
    events = EventReader(rig.daemon)
    rig.daemon.wait_metric("b2bua_api_event_streams", 1)
    with rtp.sniffing() as sn:
        result, created = dial(rig, "api_uas_dial_a.xml", "api_uas_dial_b.xml", {"a": "alice", "b": "carol"})
    assert created["state"] == "calling" and created["originated"] is True
    assert heard(result.a.message_file) == ["INVITE", "ACK", "SIP/2.0 200"], heard(result.a.message_file)
    assert heard(result.b.message_file) == ["INVITE", "ACK", "BYE"], heard(result.b.message_file)
    [ack] = received(result.a.message_file, "ACK")
    rig.assert_on_relay(ack)
    [b_inv] = received(result.b.message_file, "INVITE")
    rig.assert_on_relay(b_inv)
    pair = types.SimpleNamespace(uac=result.a, uas=result.b)
    delivery = rtp.media_delivery(sn, pair, AFTER_TRANSFER)
    rtp.assert_media_delivered(delivery)
    for addr in (*delivery.media.a.peer, *delivery.media.b.peer):
        assert addr[0] == "127.0.0.1" and addr[1] in rig.daemon.relay_ports, delivery.describe()
    seen = events.wait()
    assert [e["event"] for e in seen] == [
        "originate_started", "party_ringing", "party_answered", "party_ringing", "party_answered",
        "call_answered", "bye_received", "call_ended"], seen
    assert {e["call"] for e in seen} == {created["id"]}
    m = rig.daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_media_sessions") == 0, m
    assert api(rig.daemon, "GET", "/v1/calls") == (200, {"calls": []})


def test_click_to_dial_to_a_busy_party_b_lets_alice_go(rig):
    events = EventReader(rig.daemon)
    rig.daemon.wait_metric("b2bua_api_event_streams", 1)
    result, created = dial(rig, "api_uas_dial_a_dropped.xml", "api_uas_dial_b_busy.xml", {"a": "alice", "b": "carol"})
    assert heard(result.a.message_file) == ["INVITE", "ACK", "BYE"], heard(result.a.message_file)
    seen = events.wait()
    failed = next(e for e in seen if e["event"] == "originate_failed")
    assert failed["fields"] == {"side": "b", "status": 486, "reason": "Busy Here"}, failed
    assert seen[-1]["fields"]["result"] == "rejected"
    m = rig.daemon.settled()
    assert m.get("b2bua_calls_total", result="rejected") == 1, m
    assert m.get("b2bua_media_sessions") == 0, m
