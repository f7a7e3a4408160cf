"""The hot path: one `RelayPort` (an asyncio DatagramProtocol) per bound RTP or RTCP socket.

How this works: a media stream between parties A and B uses two relay ports for RTP (and two for
RTCP): A talks to one, B to the other, and each party sends to and receives from the same relay
port (symmetric RTP, RFC 4961). The two `RelayPort`s are peers. A datagram arriving on A's port
comes from A; it leaves through the peer's socket (`out`, B's port's socket) towards B's address
(`dest`). Latching: while `source` is None the port is learning, and the first datagram's source
address becomes `source` and, at the same time, the `dest` of the peer port, so B's media now
flows to where A really is (NAT friendly). From then on a datagram from any other address is
dropped and counted in `dropped` (no RTP bleed or injection). Only new signalling for the stream
reopens learning (`relatch`), which also points the peer at the newly signalled address until the
first packet arrives. Per packet the path is one tuple compare, two integer increments, one bit
test and one `sendto`; nothing is logged, counters are read at scrape or query time, and `last
activity` is derived by the session's once-a-second sweep from the counters moving.

Receiving goes through the loop's datagram transport: uvloop reads each ready socket in C until
it is empty, which amortises the poll over several packets once the relay is busy. Two choices
keep the rest cheap, each measured with bench/relay_bench.py against the plainer way, in
alternating runs (µs of relay CPU per packet at 60,000 packets/s, of about 9):
- Packets leave through the peer port's plain socket (`sock.sendto`), not its asyncio transport,
  whose `sendto` converts the address and books the write on every call (-0.56 µs). A full send
  buffer (EAGAIN) drops the packet instead of queueing it (late RTP is worthless) and counts in
  `errors`, like any other send the kernel refuses.
- The RTP statistics see a sample (`STATS_EVERY`; stats.py tells how loss stays exact); reading
  every header cost about 1 µs per packet.
Tried and left out: reading one datagram per wakeup with `loop.add_reader` saves the empty read
(-0.5 µs at 60,000 packets/s) but lowers the saturation rate (120,000 instead of 150,000 packets/s:
a busy relay's sockets hold several packets per wakeup); trimming this method further (even to a
bare `sendto`) shows nothing at saturation: what remains is uvloop's and the kernel's per packet.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .stats import RtpReceiveStats

Addr = tuple[Any, ...]  # what the loop gives and sendto takes: (host, port[, flowinfo, scope_id])

_monotonic = time.monotonic

# The RTP statistics are shown packets number 1 and k*STATS_EVERY, k*STATS_EVERY + 1 of each port:
# a consecutive pair (one jitter sample) in every STATS_EVERY packets. A power of two, so the
# per-packet test is one `&`.
STATS_EVERY = 16
_STATS_MASK = STATS_EVERY - 1


class RelayPort(asyncio.DatagramProtocol):
    __slots__ = ("port", "kind", "source", "dest", "out", "peer", "sock", "transport", "rx", "closed",
                 "packets", "bytes", "dropped", "undeliverable", "errors")

    def __init__(self, port: int, kind: str = "rtp", rx: RtpReceiveStats | None = None) -> None:
        self.port = port
        self.kind = kind  # "rtp" or "rtcp"
        self.source: Addr | None = None  # latched address of the party that talks to this port
        self.dest: Addr | None = None  # where that party's packets go: the peer party's address
        self.out: Any = None  # the peer port's socket (anything with sendto): packets leave from there
        self.peer: RelayPort | None = None
        self.sock: Any = None  # this port's bound socket, from the opener
        self.transport: Any = None  # the loop's transport on `sock`: it delivers what arrives
        self.rx = rx
        self.closed = False
        self.packets = 0  # accepted (from the latched source)
        self.bytes = 0
        self.dropped = 0  # from a source other than the latched one
        self.undeliverable = 0  # accepted but nowhere to send yet (no address, on hold c=0.0.0.0)
        self.errors = 0  # ICMP errors and sends refused by the kernel

    # -- wiring (signalling time) ----------------------------------------------------------------

    def attach(self, sock: Any) -> None:
        """The opener bound `sock` for this port: the peer's packets will leave through it."""
        self.sock = sock
        if self.peer is not None:
            self.peer.out = sock

    def pair(self, other: RelayPort) -> None:
        self.peer = other
        other.peer = self
        self.out = other.sock
        other.out = self.sock

    def relatch(self, signalled: Addr | None) -> None:
        """New signalling for this party: learn its source again; meanwhile send to `signalled`."""
        self.source = None
        if self.peer is not None:
            self.peer.dest = signalled

    # -- asyncio.DatagramProtocol ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        if self.closed:  # released before the loop attached the socket
            transport.close()
            return
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        source = self.source
        if addr != source:
            if source is not None:
                self.dropped += 1
                return
            self.source = addr  # latch: first packet after signalling wins
            self.peer.dest = addr  # type: ignore[union-attr]
        n = self.packets = self.packets + 1
        self.bytes += len(data)
        if n & _STATS_MASK < 2:  # a sampled packet (see STATS_EVERY)
            rx = self.rx
            if rx is not None:
                rx.packet(data, _monotonic(), n)
        dest = self.dest
        out = self.out
        if dest is None or out is None:
            self.undeliverable += 1
            return
        try:
            out.sendto(data, dest)
        except OSError:  # EAGAIN: dropped, not queued (see above); or whatever else the kernel refuses
            self.errors += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away, and the like: counted, never raised.
        self.errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.sock = None  # the transport closed it
        if self.peer is not None:
            self.peer.out = None

    def close(self) -> None:
        self.closed = True
        transport = self.transport
        if transport is not None:
            transport.close()  # closes `sock` too
            self.transport = None
        self.sock = None
        if self.peer is not None:
            self.peer.out = None

    def __repr__(self) -> str:
        return f"RelayPort({self.port}, {self.kind}, source={self.source}, dest={self.dest})"
