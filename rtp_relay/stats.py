"""Receive-side RTP statistics: sequence tracking, loss and interarrival jitter (RFC 3550).

How this works: `RtpReceiveStats.packet(data, arrival, count)` reads the fixed RTP header
(sequence number, timestamp, SSRC) of a packet a relay port accepted and applies the two
algorithms of RFC 3550's appendix: A.1 (`update_seq`, with the `probation`, `MAX_DROPOUT`,
`MAX_MISORDER` rules, extending the 16-bit sequence number with a cycle count) and A.8 (jitter
as a running average, gain 1/16, of the difference in relative transit time between consecutive
packets, in timestamp units). Loss is A.3's `expected - received` with `expected` counted from
the first sequence number after probation. A new SSRC starts the stats over. Datagrams that are
not RTP version 2, are shorter than the fixed header, or are RTCP multiplexed on the RTP port
(RFC 5761 §4: second byte 192..223) are ignored here. The arrival clock is passed in (seconds,
monotonic) so tests can feed exact times.

Sampling: parsing every header cost the relay about 1 µs of its ~9 µs per packet, so the relay
port shows the stats only a sample: two consecutive packets in every `forwarder.STATS_EVERY`
(see there). `count` is the port's own exact packet counter at the packet shown, and that keeps
the figures honest: `received` is the difference of two counts instead of a tally of the packets
seen, so loss is exact as of the latest sample (every datagram accepted in between counts as
received, as RFC 3550 counts duplicates; on a port that also carries RTCP, RFC 5761, its ~1 packet
in 250 counts too and hides as many losses); jitter is updated only from a pair whose counts are
consecutive, so each D(i-1,i) is RFC 3550's; the average then moves once per pair instead of once
per packet (the same expected value, following changes over ~16 samples, about 5 s at 50
packets/s). Fed every packet (`count` = 1, 2, 3, ...) this is A.1 and A.8 exactly.
"""

from __future__ import annotations

import struct

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2

_HEADER = struct.Struct("!xxHII")  # skip V/P/X/CC and M/PT; seq, timestamp, SSRC


class RtpReceiveStats:
    __slots__ = ("clock_rate", "ssrc", "max_seq", "cycles", "base_seq", "bad_seq", "probation",
                 "base_count", "last_count", "jitter", "_last_ts", "_last_arrival", "_last_count", "ignored",
                 "ssrc_changes")

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.probation = MIN_SEQUENTIAL
        self.base_count = 0  # the port's packet count just before base_seq arrived
        self.last_count = 0  # the port's packet count at the latest packet counted as received
        self.jitter = 0.0  # in timestamp units, as RFC 3550 reports it
        self._last_ts: int | None = None
        self._last_arrival = 0.0
        self._last_count = 0
        self.ignored = 0
        self.ssrc_changes = 0

    def packet(self, data: bytes | memoryview, arrival: float, count: int) -> None:
        """One packet; `count`: how many packets the port has accepted, this one included."""
        if len(data) < 12 or data[0] & 0xC0 != 0x80 or 192 <= data[1] <= 223:
            self.ignored += 1
            return
        seq, ts, ssrc = _HEADER.unpack_from(data)
        self.update(seq, ts, ssrc, arrival, count)

    def update(self, seq: int, ts: int, ssrc: int, arrival: float, count: int) -> None:
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.ssrc_changes += 1
            self._start(ssrc, seq, count)
        if self._update_seq(seq, count):
            self.last_count = count
            self._update_jitter(ts, arrival, count)

    # -- RFC 3550 A.1 --------------------------------------------------------------------------

    def _start(self, ssrc: int, seq: int, count: int) -> None:
        self.ssrc = ssrc
        self._init_seq(seq, count)
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self.jitter = 0.0
        self._last_ts = None

    def _init_seq(self, seq: int, count: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.base_count = self.last_count = count - 1  # A.1's `received = 0`, before this packet

    def _update_seq(self, seq: int, count: int) -> bool:
        """A.1's update_seq; True when the packet counts as received (A.1's `received++`)."""
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            # a source is valid once MIN_SEQUENTIAL packets arrive in sequence
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq, count)
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            # in order, with permissible gap
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # sequence number wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # a very large jump: restart only if two sequential packets confirm it
            if seq == self.bad_seq:
                self._init_seq(seq, count)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted as received
        return True

    # -- RFC 3550 A.8 --------------------------------------------------------------------------

    def _update_jitter(self, ts: int, arrival: float, count: int) -> None:
        last_ts = self._last_ts
        if last_ts is not None and count == self._last_count + 1:  # only from consecutive packets
            # D(i-1,i) = (Rj - Ri) - (Sj - Si), in timestamp units; the signed 32-bit difference
            # of the timestamps survives their wrap-around.
            dts = (ts - last_ts) & 0xFFFFFFFF
            if dts >= 0x80000000:
                dts -= 0x100000000
            d = (arrival - self._last_arrival) * self.clock_rate - dts
            if d < 0:
                d = -d
            self.jitter += (d - self.jitter) / 16.0
        self._last_ts = ts
        self._last_arrival = arrival
        self._last_count = count

    # -- RFC 3550 A.3 --------------------------------------------------------------------------

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def received(self) -> int:
        return self.last_count - self.base_count

    @property
    def expected(self) -> int:
        if self.ssrc is None or self.probation:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Packets expected but not received; negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate if self.clock_rate else 0.0
