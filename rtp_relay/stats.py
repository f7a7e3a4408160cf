"""Receive-side RTP statistics: sequence tracking, loss and interarrival jitter (RFC 3550).

How this works: `RtpReceiveStats.packet(data, arrival)` reads the fixed RTP header (sequence
number, timestamp, SSRC) of each packet a relay port accepts and applies the two algorithms of
RFC 3550's appendix verbatim: A.1 (`update_seq`, with the `probation`, `MAX_DROPOUT`,
`MAX_MISORDER` rules, extending the 16-bit sequence number with a cycle count) and A.8 (jitter
as a running average, gain 1/16, of the difference in relative transit time between consecutive
packets, in timestamp units). Loss is A.3's `expected - received` with `expected` counted from
the first sequence number after probation. A new SSRC starts the stats over. Datagrams that are
not RTP version 2, are shorter than the fixed header, or are RTCP multiplexed on the RTP port
(RFC 5761 §4: second byte 192..223) are ignored here and only counted by the relay port. The
arrival clock is passed in (seconds, monotonic) so tests can feed exact times.
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
                 "received", "jitter", "_last_ts", "_last_arrival", "ignored", "ssrc_changes")

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.base_seq = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.probation = MIN_SEQUENTIAL
        self.received = 0
        self.jitter = 0.0  # in timestamp units, as RFC 3550 reports it
        self._last_ts: int | None = None
        self._last_arrival = 0.0
        self.ignored = 0
        self.ssrc_changes = 0

    def packet(self, data: bytes, arrival: float) -> None:
        if len(data) < 12 or data[0] & 0xC0 != 0x80 or 192 <= data[1] <= 223:
            self.ignored += 1
            return
        seq, ts, ssrc = _HEADER.unpack_from(data)
        self.update(seq, ts, ssrc, arrival)

    def update(self, seq: int, ts: int, ssrc: int, arrival: float) -> None:
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.ssrc_changes += 1
            self._start(ssrc, seq)
        if self._update_seq(seq):
            self._update_jitter(ts, arrival)

    # -- RFC 3550 A.1 --------------------------------------------------------------------------

    def _start(self, ssrc: int, seq: int) -> None:
        self.ssrc = ssrc
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self.jitter = 0.0
        self._last_ts = None

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.received = 0

    def _update_seq(self, seq: int) -> bool:
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            # a source is valid once MIN_SEQUENTIAL packets arrive in sequence
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
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
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted as received
        self.received += 1
        return True

    # -- RFC 3550 A.8 --------------------------------------------------------------------------

    def _update_jitter(self, ts: int, arrival: float) -> None:
        last_ts = self._last_ts
        if last_ts is not None:
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

    # -- RFC 3550 A.3 --------------------------------------------------------------------------

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

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
