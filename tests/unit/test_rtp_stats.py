"""RFC 3550 A.1 sequence tracking / loss and A.8 jitter, against hand-computed values."""

import struct

import pytest

from rtp_relay.stats import RtpReceiveStats


def rtp(seq: int, ts: int, ssrc: int = 0x1234, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + b"\x00" * 160


def feed(stats: RtpReceiveStats, seqs: list[int], start_ts: int = 1000) -> None:
    for i, seq in enumerate(seqs):
        stats.packet(rtp(seq, start_ts + 160 * seq), i * 0.02)


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
    s.packet(rtp(20000, 0), 1.0)  # MAX_DROPOUT exceeded: ignored, remembered as bad_seq - 1
    assert s.received == 2 and s.max_seq == 2
    s.packet(rtp(20001, 160), 1.02)  # confirms the restart
    assert (s.base_seq, s.max_seq, s.received) == (20001, 20001, 1)


def test_ssrc_change_restarts() -> None:
    s = RtpReceiveStats()
    feed(s, [0, 1, 2, 3])
    s.packet(rtp(500, 0, ssrc=99), 1.0)
    s.packet(rtp(501, 160, ssrc=99), 1.02)
    assert (s.ssrc, s.ssrc_changes, s.base_seq, s.received) == (99, 1, 501, 1)


def test_jitter_hand_computed() -> None:
    s = RtpReceiveStats(clock_rate=8000)
    arrivals = [0.0, 0.02, 0.04, 0.07, 0.08]  # packet 3 arrives 10 ms (80 timestamp units) late
    for seq, t in enumerate(arrivals):
        s.packet(rtp(seq, 160 * seq), t)
    # D(2,3) = 240 - 160 = 80 -> J = 80/16 = 5; D(3,4) = |80 - 160| = 80 -> J = 5 + (80 - 5)/16
    assert s.jitter == pytest.approx(5 + 75 / 16)
    assert s.jitter_ms == pytest.approx((5 + 75 / 16) / 8)


def test_jitter_zero_for_perfect_pacing_across_timestamp_wrap() -> None:
    s = RtpReceiveStats()
    for i in range(50):
        s.packet(rtp(i, 0xFFFFFF00 + 160 * i), i * 0.02)
    assert s.jitter == pytest.approx(0, abs=1e-6)


def test_non_rtp_is_ignored() -> None:
    s = RtpReceiveStats()
    s.packet(b"\x00\x01", 0)  # too short
    s.packet(b"\x40" + b"\x00" * 20, 0)  # version 1
    s.packet(struct.pack("!BBH", 0x81, 200, 6) + b"\x00" * 24, 0)  # RTCP SR multiplexed (RFC 5761)
    assert s.ignored == 3 and s.ssrc is None and s.expected == 0
