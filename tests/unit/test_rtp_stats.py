"""RFC 3550 A.1 sequence tracking / loss and A.8 jitter, against hand-computed values; and sampled.

The relay port shows the stats two consecutive packets in every STATS_EVERY, with its exact packet
count; the first tests feed every packet (count 1, 2, 3, ...), where the stats are RFC 3550's
algorithms exactly, and the last ones check what sampling keeps: exact loss as of the latest sample
and the same jitter.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp_relay.forwarder import STATS_EVERY, RelayPort
from rtp_relay.stats import RtpReceiveStats


def rtp(seq: int, ts: int, ssrc: int = 0x1234, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + b"\x00" * 160


def feed(stats: RtpReceiveStats, seqs: list[int], start_ts: int = 1000) -> None:
    for i, seq in enumerate(seqs):
        stats.packet(rtp(seq, start_ts + 160 * seq), i * 0.02, i + 1)


def test_probation_then_no_loss() -> None:
    s = RtpReceiveStats()
    feed(s, list(range(10)))
    # RFC 3550 A.1: the first packet is probation; counting starts at the second (base_seq 1)
    assert (s.base_seq, s.received, s.expected, s.lost) == (1, 9, 9, 0)


def test_loss_with_gap() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2, 3, 6, 7, 8, 9])
    assert (s.received, s.expected, s.lost) == (7, 9, 2)


def test_reorder_is_not_loss() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2, 4, 3, 5])
    assert (s.max_seq, s.received, s.expected, s.lost) == (5, 5, 5, 0)


def test_late_packet_after_gap_reduces_loss() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2, 5, 6, 3])
    assert (s.received, s.expected, s.lost) == (5, 6, 1)


def test_sequence_wrap_extends_the_number() -> None:
    s = RtpReceiveStats()
    feed(s, [65534, 65535, 0, 1, 3])
    assert s.cycles == 65536 and s.extended_max == 65536 + 3
    assert (s.received, s.expected, s.lost) == (4, 5, 1)


def test_duplicates_make_loss_negative() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2, 2, 3])
    assert s.lost == -1


def test_large_jump_needs_two_sequential_packets() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2])
    s.packet(rtp(20000, 0), 1.0, 4)  # MAX_DROPOUT exceeded: ignored, remembered as bad_seq - 1
    assert s.received == 2 and s.max_seq == 2
    s.packet(rtp(20001, 160), 1.02, 5)  # confirms the restart
    assert (s.base_seq, s.max_seq, s.received) == (20001, 20001, 1)


def test_ssrc_change_restarts() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2, 3])
    s.packet(rtp(500, 0, ssrc=99), 1.0, 5)
    s.packet(rtp(501, 160, ssrc=99), 1.02, 6)
    assert (s.ssrc, s.ssrc_changes, s.base_seq, s.received) == (99, 1, 501, 1)


def test_jitter_hand_computed() -> None:
    s = RtpReceiveStats(clock_rate=8000)
    arrivals = [0.0, 0.02, 0.04, 0.07, 0.08]  # packet 3 arrives 10 ms (80 timestamp units) late
    for seq, t in enumerate(arrivals):
        s.packet(rtp(seq, 160 * seq), t, seq + 1)
    # D(2,3) = 240 - 160 = 80 -> J = 80/16 = 5; D(3,4) = |80 - 160| = 80 -> J = 5 + (80 - 5)/16
    assert s.jitter == pytest.approx(5 + 75 / 16)
    assert s.jitter_ms == pytest.approx((5 + 75 / 16) / 8)


def test_jitter_zero_for_perfect_pacing_across_timestamp_wrap() -> None:
    s = RtpReceiveStats()
    for i in range(50):
        s.packet(rtp(i, 0xFFFFFF00 + 160 * i), i * 0.02, i + 1)
    assert s.jitter == pytest.approx(0, abs=1e-6)


def test_non_rtp_is_ignored() -> None:
    s = RtpReceiveStats()
    s.packet(b"\x00\x01", 0, 1)  # too short
    s.packet(b"\x40" + b"\x00" * 20, 0, 2)  # version 1
    s.packet(struct.pack("!BBH", 0x81, 200, 6) + b"\x00" * 24, 0, 3)  # RTCP SR multiplexed (RFC 5761)
    assert s.ignored == 3 and s.ssrc is None and s.expected == 0


# -- sampled, as the relay port feeds it -----------------------------------------------------------


class Sink:
    def sendto(self, data: bytes, addr: object) -> None:
        pass


def relay_port() -> RelayPort:
    """A port whose packets go nowhere: only its counters and sampled stats matter here."""
    port, peer = RelayPort(30000, "rtp", RtpReceiveStats()), RelayPort(30002, "rtp")
    port.pair(peer)
    peer.attach(Sink())
    return port


@settings(max_examples=300, deadline=None)
@given(length=st.integers(2, 3000), first_seq=st.integers(0, 0xFFFF), losses=st.sets(st.integers(0, 2999)))
def test_sampled_loss_is_exact_as_of_the_latest_sample(length: int, first_seq: int, losses: set[int]) -> None:
    """At every sample, expected and lost are those of the packets from base_seq to the latest sample."""
    arrived = [i for i in range(length) if i not in losses]  # stream positions, in order
    port = relay_port()
    rx = port.rx
    assert rx is not None
    checked = 0
    for n, i in enumerate(arrived, start=1):
        port.datagram_received(rtp((first_seq + i) & 0xFFFF, 160 * i), ("192.0.2.1", 4000))
        if rx.expected and n == rx.last_count:  # this packet was a sample and counting has started
            checked += 1
            base = arrived[rx.base_count]  # the packet after base_count is base_seq's
            assert rx.base_seq == (first_seq + base) & 0xFFFF
            assert rx.expected == i - base + 1  # across sequence number wrap-arounds too
            assert rx.received == n - rx.base_count
            assert rx.lost == len([x for x in losses if base <= x <= i])
    assert port.packets == len(arrived)
    assert checked or losses or length < 2 * STATS_EVERY + 2  # a lossless stream is counted from its 17th packet


def test_sampled_loss_through_the_port_and_query_shape() -> None:
    port = relay_port()
    rx = port.rx
    assert rx is not None
    seqs = [s for s in range(1, 41) if s not in (20, 21)]  # 38 packets, 2 lost
    for seq in seqs:
        port.datagram_received(rtp(seq, 160 * seq), ("192.0.2.1", 4000))
    # samples: packet 1, packets 16/17 (seq 16, 17: probation ends at 17), packets 32/33 (seq 34, 35)
    assert (rx.base_seq, rx.max_seq, rx.expected, rx.received, rx.lost) == (17, 35, 19, 17, 2)
    assert port.packets == 38 and port.bytes == 38 * 172


def test_sampled_jitter_has_the_same_value() -> None:
    """Transit alternates 0 / +10 ms, so every D(i-1,i) is 80 units: both estimates converge to 80."""
    port, full = relay_port(), RtpReceiveStats()
    rx = port.rx
    assert rx is not None
    clock = [0.0]
    import rtp_relay.forwarder as forwarder

    real = forwarder._monotonic
    forwarder._monotonic = lambda: clock[0]
    try:
        for i in range(STATS_EVERY * 400):
            clock[0] = i * 0.02 + (0.01 if i % 2 else 0.0)
            data = rtp(i, 160 * i)
            port.datagram_received(data, ("192.0.2.1", 4000))
            full.packet(data, clock[0], i + 1)
    finally:
        forwarder._monotonic = real
    assert full.jitter == pytest.approx(80, rel=1e-3)
    assert rx.jitter == pytest.approx(80, rel=1e-3)
