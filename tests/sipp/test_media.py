"""Calls with real RTP through the B2BUA and its media relay: every packet, both ways, counted.

SIPp plays known pcap files on each side (tests/sipp/rtp.py says what each holds); a sniffer on
`lo` records every RTP datagram, so a test can tell what each side sent, what reached the other
side's own port, and that it went through the relay's ports (each side is given only relay
addresses). The relay is either the daemon's embedded one, a separately started `rtp_relay`
process whose counters we read over HTTP, or Debian's rtpengine.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay.harness import RelayProcess

from . import rtp
from .harness import free_port

pytestmark = pytest.mark.sipp


@pytest.fixture(autouse=True)
def _needs_raw_sockets() -> None:
    if not rtp.raw_sockets_available():
        pytest.skip("SIPp's pcap player and the loopback sniffer need root or CAP_NET_RAW")


def relay_env(*relays: RelayProcess, **extra: str) -> dict[str, str]:
    env = {"B2BUA_MEDIA__RELAYS": ",".join(f"{r.control[0]}:{r.control[1]}" for r in relays)}
    env.update(extra)
    return env


def through_relay(d: rtp.MediaDelivery, first: int, last: int) -> None:
    """Each side was given only addresses of the relay's port range, never the other side's."""
    for addr in (*d.media.a.peer, *d.media.b.peer):
        assert addr[0] == "127.0.0.1" and first <= addr[1] <= last, d.describe()
    assert not set(d.media.a.peer) & set(d.media.b.own) and not set(d.media.b.peer) & set(d.media.a.own)


@pytest.fixture
def relay() -> Iterator[RelayProcess]:
    proc = RelayProcess(pairs=40).start()
    yield proc
    escaped = proc.metrics().get("rtp_relay_escaped_exceptions_total")
    rc, out, err = proc.stop()
    assert rc == 0, err
    assert escaped == 0, out


def test_every_packet_arrives_both_ways_and_the_relay_counts_the_same(start_daemon, sipp_pair, relay):
    daemon = start_daemon(env=relay_env(relay))
    with rtp.sniffing() as sn:
        result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
    d = rtp.media_delivery(sn, result, "basic")
    rtp.assert_media_delivered(d)
    through_relay(d, *relay.port_range)
    hops = rtp.relay_hops(sn, d.media)
    assert hops == {"a_to_relay": 50, "relay_to_b": 50, "b_to_relay": 40, "relay_to_a": 40}, hops
    m = relay.metrics()
    assert m['rtp_relay_packets_total{direction="in",kind="rtp"}'] == 90, m
    assert m['rtp_relay_packets_total{direction="out",kind="rtp"}'] == 90, m
    assert m['rtp_relay_dropped_total{kind="rtp",reason="hijack"}'] == 0, m
    assert m["rtp_relay_sessions"] == 0 and m["rtp_relay_ports_in_use"] == 0, m  # deleted at call end
    metrics = daemon.settled()
    assert metrics.get("b2bua_calls_total", result="answered") == 1
    assert metrics.get("b2bua_media_sessions") == 0


def test_embedded_relay_carries_media_by_default(daemon, sipp_pair):
    with rtp.sniffing() as sn:
        result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
    d = rtp.media_delivery(sn, result, "basic")
    rtp.assert_media_delivered(d)
    through_relay(d, daemon.relay_ports[0], daemon.relay_ports[-1])
    assert daemon.settled().get("b2bua_media_relays_alive") == 1


def test_hold_and_resume_media_follows_each_phase(daemon, sipp_pair):
    with rtp.sniffing() as sn:
        result = sipp_pair(daemon, "uas_rtp_hold.xml", "uac_rtp_hold.xml")
    d = rtp.media_delivery(sn, result, "hold")
    rtp.assert_media_delivered(d)  # 130 caller packets (with 30 of music on hold), 80 callee packets
    assert len(d.a_to_b.delivered) == 130 and len(d.b_to_a.delivered) == 80, d.describe()
    assert daemon.settled().get("b2bua_calls_total", result="answered") == 1


def test_reinvite_to_a_new_port_moves_the_media(daemon, sipp_pair):
    with rtp.sniffing() as sn:
        result = sipp_pair(daemon, "uas_rtp_reinvite_port.xml", "uac_rtp_reinvite_port.xml")
    d = rtp.media_delivery(sn, result, "reinvite_port")
    rtp.assert_media_delivered(d)
    # The callee's second phase reached the caller's new port: the relay followed the re-INVITE.
    phases = rtp.by_phase(d.b_to_a.delivered, by="dst")
    assert len(phases) == 2 and all(sum(c.values()) == 40 for c in phases.values()), phases
    assert len({addr for c in phases.values() for addr in c}) == 2, phases


def test_rtp_from_another_address_reaches_nobody_and_is_counted(start_daemon, sipp_pair, relay):
    daemon = start_daemon(env=relay_env(relay))
    with rtp.sniffing() as sn:
        hj = rtp.Hijacker(sn, victim_ssrc=rtp.SSRC_A, after=5, count=20).start()
        result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
        hj.join()
    assert hj.error is None and hj.sent == 20, hj.error
    d = rtp.media_delivery(sn, result, "basic")
    rtp.assert_media_delivered(d)  # the real media still arrives, all of it
    hijacked = [x for x in sn.rtp(ssrc=rtp.SSRC_HIJACK) if any(x.dst == own for own in d.media.b.own)]
    assert not hijacked, hijacked
    m = relay.metrics()
    assert m['rtp_relay_dropped_total{kind="rtp",reason="hijack"}'] == 20, m


@pytest.mark.time_limit(60)
def test_media_timeout_ends_a_silent_call_with_bye_on_both_legs(start_daemon, sipp_pair):
    daemon = start_daemon(env={"B2BUA_MEDIA__TIMEOUT_S": "3", "B2BUA_MEDIA__CHECK_INTERVAL_S": "1"})
    started = time.monotonic()
    sipp_pair(daemon, "uas_rtp_silent.xml", "uac_rtp_silent.xml", timeout_s=40)
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed  # ended by the timeout (3 s + checks), not by SIPp's 120 s wait
    m = daemon.settled()
    assert m.get("b2bua_media_events_total", event="timeout") == 1, m
    assert m.get("b2bua_sip_requests_total", method="BYE", direction="out") == 2, m


@pytest.mark.time_limit(90)
def test_a_relay_killed_mid_call_ends_its_calls_and_the_other_relay_serves_on(start_daemon, sipp_pair, tmp_path):
    relays = [RelayProcess(pairs=20).start(), RelayProcess(pairs=20).start()]
    try:
        # Down after 0.5 s + 3.5 s of silence; the survivors' calls end by media timeout much later.
        daemon = start_daemon(env=relay_env(*relays, B2BUA_MEDIA__TIMEOUT_S="15", B2BUA_MEDIA__CHECK_INTERVAL_S="1",
                                            B2BUA_MEDIA__PING_INTERVAL_S="0.5"))
        outcome: dict[str, object] = {}

        def calls() -> None:  # four silent calls: each waits for the B2BUA's BYE
            try:
                outcome["result"] = sipp_pair(daemon, "uas_rtp_silent.xml", "uac_rtp_silent.xml", calls=4,
                                              rate=10, timeout_s=60)
            except BaseException as exc:  # reported below, from the test's thread
                outcome["error"] = exc

        runner = threading.Thread(target=calls, daemon=True)
        runner.start()
        daemon.wait_metric("b2bua_media_sessions", 4, timeout=10)
        # The calls are spread over both relays (fewest sessions first); kill the busier one.
        sessions = [r.metrics()["rtp_relay_sessions"] for r in relays]
        assert sum(sessions) == 4, sessions
        if sessions[1] > sessions[0]:
            relays.reverse()
            sessions.reverse()
        on_victim = sessions[0]
        relays[0].proc.send_signal(signal.SIGKILL)
        relays[0].proc.wait(5)
        # The victim's calls end at once (BYE both legs); the others later, by media timeout.
        m = daemon.wait_metric("b2bua_media_events_total", on_victim, timeout=8, event="call_ended")
        assert m.get("b2bua_media_events_total", event="relay_down") == 1, m
        assert m.get("b2bua_media_events_total", event="timeout") == 0, m
        runner.join(60)
        assert "error" not in outcome, outcome.get("error")
        m = daemon.settled()
        assert m.get("b2bua_media_events_total", event="timeout") == 4 - on_victim, m
        assert m.get("b2bua_media_relays_alive") == 1, m
        # New calls still get media, on the surviving relay.
        with rtp.sniffing() as sn:
            result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
        d = rtp.media_delivery(sn, result, "basic")
        rtp.assert_media_delivered(d)
        through_relay(d, *relays[1].port_range)
    finally:
        for r in relays:
            r.stop()


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[tuple[str, int]]:
    binary = shutil.which("rtpengine")
    if binary is None:
        pytest.skip("Debian's rtpengine is not installed (apt-get install rtpengine-daemon; make test does it)")
    ng_port = free_port()
    with open(tmp_path / "rtpengine.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "--config-file=none", "--foreground", "--log-stderr", "--log-level=5", "--table=-1",
             "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{ng_port}", "--port-min=26000", "--port-max=26999",
             f"--pidfile={tmp_path / 'rtpengine.pid'}", "--timeout=60", "--delete-delay=0"],
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while True:
                assert proc.poll() is None, (tmp_path / "rtpengine.log").read_text()[-3000:]
                s.sendto(b"p1 d7:command4:pinge", ("127.0.0.1", ng_port))
                try:
                    if b"pong" in s.recv(1000):
                        break
                except TimeoutError:
                    assert time.monotonic() < deadline, "rtpengine did not answer ping"
        yield ("127.0.0.1", ng_port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rtpengine_as_the_relay_carries_the_same_call(start_daemon, sipp_pair, rtpengine):
    daemon = start_daemon(env={"B2BUA_MEDIA__RELAYS": f"{rtpengine[0]}:{rtpengine[1]}"})
    with rtp.sniffing() as sn:
        result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
    d = rtp.media_delivery(sn, result, "basic")
    rtp.assert_media_delivered(d)
    through_relay(d, 26000, 26999)
    assert rtp.relay_hops(sn, d.media) == {"a_to_relay": 50, "relay_to_b": 50, "b_to_relay": 40, "relay_to_a": 40}
    assert daemon.settled().get("b2bua_media_events_total", event="offer_failed") == 0
