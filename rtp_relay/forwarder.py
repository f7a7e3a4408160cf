"""The hot path: one `RelayPort` per bound RTP or RTCP socket, read and forwarded in batches.

How this works: a media stream between parties A and B uses two relay ports for RTP (and two for
RTCP): A talks to one, B to the other, and each party sends to and receives from the same relay
port (symmetric RTP, RFC 4961). The two `RelayPort`s are peers. A datagram arriving on A's port
comes from A; it leaves through the peer's socket (B's port's socket) towards B's address
(`dest`). Latching: while `source` is None the port is learning, and the first datagram's source
address becomes `source` and, at the same time, the `dest` of the peer port, so B's media now
flows to where A really is (NAT friendly). From then on a datagram from any other address is
dropped and counted in `dropped` (no RTP bleed or injection). Only new signalling for the stream
reopens learning (`relatch`), which also points the peer at the newly signalled address until the
first packet arrives. Nothing on this path logs; counters are plain integers read at scrape or
query time, and `last activity` is derived by the session's once-a-second sweep from them moving.

Batches. A system call costs about as much as the work it does for one small datagram, so the
relay makes as few as it can: when the daemon's `Dispatcher` reports a socket readable, `readable`
takes what is queued there, up to BATCH datagrams, with one recvmmsg(2) and forwards them with one
sendmmsg(2). Python's socket module has neither: they are called through ctypes (as parent.py
calls prctl), on vectors prepared once (`_Buffers`). The datagrams land in slots of one shared
buffer and leave from the same slots: no Python object per packet, counters added per batch. The
latching check stays exact for every packet and costs one comparison per batch: the kernel writes
each datagram's source address beside it (msg_name), and a batch is accepted whole when those
addresses, end to end, equal the latched source's repeated. Anything else (learning, a foreign
source anywhere in the batch, a destination the batch path cannot address) goes packet by packet
through `datagram_received`, the reference path that the unit tests drive. A busy relay finds
many datagrams per socket at each wakeup, so its cost per packet falls as the load grows; and one
recvmmsg never ends with the empty read that draining a socket with recvfrom needs.

Connected twins. An unconnected socket makes the kernel look up the route and take the address
apart on every send. So an RTP port whose party's address is known (signalled or latched) gets a
second socket bound to the same port with SO_REUSEPORT and connected to that address (the `twin`):
the peer sends towards the party through it with no address at all, and the kernel delivers that
party's datagrams to the twin, whose connection matches them more closely than the first socket.
Everything from any other address still arrives on the first socket, so learning and hijack
counting are unchanged; both sockets feed the same `readable`. SO_REUSEPORT is on only while the
twin binds (cleared on both right after), so no third socket can join the port later. A twin follows
every change of the party's address, is closed when that becomes unknown (hold with `c=0.0.0.0`)
and with the port, and is only an optimisation: when the opener cannot give one (`TwinOpener`:
file descriptors running short, not Linux), packets leave through the first socket with an address.

Measured with bench/relay_bench.py (one core for the relay, 172-byte RTP, alternating turns), each
step against the one before: recvmmsg/sendmmsg batches raised the rate forwarded at < 0.1 % loss
from 150,000 to over 210,000 packets/s (the generator's limit on two cores) and cut CPU per packet
at 180,000 packets/s from 6.3 µs (with loss) to 5.6; twins saved 0.35 µs per packet at 1,000 and
2,000 streams of 50 packets/s, the Dispatcher 0.3 to 0.8 µs more. Tried and left out: reading with
recvfrom until EAGAIN from a loop reader per socket (10.4 µs per packet at 1,000 x 50 instead of
8.4, saturation 135,000 instead of 150,000: an exception and a Python call per datagram, and the
empty read); one recvfrom per ready socket from our own epoll set (12 % lost at 3,000 streams x 40,
which uvloop's transports forwarded whole); edge-triggered epoll (0.1 to 0.2 µs, within noise).

Sends never queue: a full send buffer (EAGAIN) drops the rest of the batch (late RTP is worthless)
and counts in `errors`, like any other send or ICMP error the kernel reports. The RTP statistics
see a sample (`STATS_EVERY`; stats.py tells how loss stays exact).
"""

from __future__ import annotations

import array
import ctypes
import errno
import mmap
import socket
import struct
import sys
import time
from typing import Any, Literal, Protocol

from .stats import RtpReceiveStats

Addr = tuple[Any, ...]  # what recvfrom gives and sendto takes: (host, port[, flowinfo, scope_id])

_monotonic = time.monotonic

# The RTP statistics are shown packets number 1 and k*STATS_EVERY, k*STATS_EVERY + 1 of each port:
# a consecutive pair (one jitter sample) in every STATS_EVERY packets. A power of two, so the
# per-packet test is one `&`.
STATS_EVERY = 16
_STATS_MASK = STATS_EVERY - 1

BATCH = 64  # datagrams taken from one socket per wakeup at most, so a busy port cannot starve the others
SLOT = 65536  # bytes per datagram in the shared buffer: the largest UDP datagram fits


class TwinOpener(Protocol):
    def open_twin(self, port: RelayPort) -> Any:
        """A non-blocking socket bound to `port.port` beside its first one, already watched by the
        loop (calling `port.readable` with its descriptor); None when none can be had."""

    def close_twin(self, sock: Any) -> None:
        """Stop watching `sock` and close it."""


# -- recvmmsg / sendmmsg through ctypes --------------------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc_mmsg() -> tuple[Any, Any]:
    if not sys.platform.startswith("linux"):
        return None, None
    try:
        # PyDLL keeps the GIL across the call: these calls never block (MSG_DONTWAIT) and the relay
        # has one thread, so releasing and taking it back would only cost time. No argtypes: the
        # arguments are Python ints (converted as C int) and prepared c_void_p, ctypes' fastest
        # path (with argtypes each call took about 0.4 µs more).
        libc = ctypes.PyDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None, None
    recvmmsg.restype = sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_recvmmsg, _sendmmsg = _libc_mmsg()
HAVE_MMSG = _recvmmsg is not None
_get_errno = ctypes.get_errno
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_TRY_LATER = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_NAMELEN: dict[int, int] = {socket.AF_INET: 16, socket.AF_INET6: 28}  # sizeof(struct sockaddr_in / sockaddr_in6)
# msg_len of datagram i in the receive vector, read as unsigned ints: word _LEN + _WORDS * i
_LEN = _Mmsghdr.msg_len.offset // ctypes.sizeof(ctypes.c_uint)
_WORDS = ctypes.sizeof(_Mmsghdr) // ctypes.sizeof(ctypes.c_uint)
# iov_len of datagram i in the send vector, read as size_t: word 1 + 2 * i
_SIZE_T: Literal["Q", "I"] = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"


class _Buffers:
    """The shared slots and the mmsghdr vectors around them, for one address family.

    One instance per family serves every port: a batch is read and forwarded before `readable`
    returns, and the relay has one thread. The views are prepared for every batch size, so a batch
    makes no slice objects of its own.
    """

    def __init__(self, family: int) -> None:
        self.stride = stride = _NAMELEN[family]
        self.mem = mmap.mmap(-1, BATCH * SLOT)  # anonymous: a page is backed once a datagram touches it
        self.data = memoryview(self.mem)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        names_in = (ctypes.c_char * (stride * BATCH))()
        names_out = (ctypes.c_char * (stride * BATCH))()
        iov_in, iov_out = (_Iovec * BATCH)(), (_Iovec * BATCH)()
        rx, tx, txc = (_Mmsghdr * BATCH)(), (_Mmsghdr * BATCH)(), (_Mmsghdr * BATCH)()
        for i in range(BATCH):
            iov_in[i].iov_base = iov_out[i].iov_base = base + i * SLOT
            iov_in[i].iov_len = SLOT
            for msgs, iov, names in ((rx, iov_in, names_in), (tx, iov_out, names_out), (txc, iov_out, None)):
                hdr = msgs[i].msg_hdr
                if names is not None:  # txc, for connected sockets, names no destination
                    hdr.msg_name = ctypes.addressof(names) + i * stride
                    hdr.msg_namelen = stride
                hdr.msg_iov = ctypes.pointer(iov[i])
                hdr.msg_iovlen = 1
        self._keep = (names_in, names_out, iov_in, iov_out, rx, tx, txc)  # what the pointers point into
        self.rx = ctypes.c_void_p(ctypes.addressof(rx))  # receive: slot i, its source in names_in
        self.tx = ctypes.c_void_p(ctypes.addressof(tx))  # send from slot i to the address in names_out
        self.txc = ctypes.c_void_p(ctypes.addressof(txc))  # send from slot i on a connected socket
        sources = memoryview(names_in).cast("B")
        dests = memoryview(names_out).cast("B")
        self.lengths = memoryview(rx).cast("B").cast("I")
        self.out_lengths = memoryview(iov_out).cast("B").cast(_SIZE_T)
        self.sources = [sources[:stride * n] for n in range(BATCH + 1)]
        self.dests = [dests[:stride * n] for n in range(BATCH + 1)]
        self.sizes = [self.lengths[_LEN:_LEN + _WORDS * n:_WORDS] for n in range(BATCH + 1)]
        self.out_sizes = [self.out_lengths[1:2 * n:2] for n in range(BATCH + 1)]

    def datagram(self, i: int) -> memoryview:
        return self.data[i * SLOT:i * SLOT + self.lengths[_LEN + _WORDS * i]]

    def source(self, i: int) -> bytes:
        return bytes(self.sources[i + 1][i * self.stride:])


_buffers: dict[int, _Buffers] = {}


def _buffers_for(family: int) -> _Buffers:
    buffers = _buffers.get(family)
    if buffers is None:
        buffers = _buffers[family] = _Buffers(family)
    return buffers


def sockaddr(family: int, addr: Addr | None) -> bytes | None:
    """`addr` as the kernel writes it into msg_name for a socket of `family`; None if it cannot be."""
    if addr is None:
        return None
    try:
        port = struct.pack("!H", addr[1])
        if family == socket.AF_INET:
            return struct.pack("=H", family) + port + socket.inet_pton(family, addr[0]) + bytes(8)
        if family == socket.AF_INET6:
            flowinfo, scope_id = (addr[2], addr[3]) if len(addr) == 4 else (0, 0)
            return (struct.pack("=H", family) + port + struct.pack("!I", flowinfo)
                    + socket.inet_pton(family, addr[0]) + struct.pack("=I", scope_id))
    except (OSError, ValueError, TypeError, IndexError, struct.error):
        pass
    return None


def address(raw: bytes) -> Addr:
    """The (host, port[, flowinfo, scope_id]) tuple recvfrom would give for the sockaddr `raw`."""
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return (socket.inet_ntop(family, raw[4:8]), port)
    (flowinfo,) = struct.unpack_from("!I", raw, 4)
    (scope_id,) = struct.unpack_from("=I", raw, 24)
    return (socket.inet_ntop(family, raw[8:24]), port, flowinfo, scope_id)


class RelayPort:
    __slots__ = ("port", "kind", "source", "dest", "out", "peer", "sock", "rx", "closed",
                 "packets", "bytes", "dropped", "undeliverable", "errors",
                 "fd", "family", "buffers", "source_raw", "dest_raw", "out_fd", "out_connected", "connected_send",
                 "twins", "twin", "twin_raw")

    def __init__(self, port: int, kind: str = "rtp", rx: RtpReceiveStats | None = None) -> None:
        self.port = port
        self.kind = kind  # "rtp" or "rtcp"
        self.source: Addr | None = None  # latched address of the party that talks to this port
        self.dest: Addr | None = None  # where that party's packets go: the peer party's address
        self.out: Any = None  # the peer port's socket (anything with sendto): packets leave from there
        self.peer: RelayPort | None = None
        self.sock: Any = None  # this port's bound socket, from the opener
        self.rx = rx
        self.closed = False
        self.packets = 0  # accepted (from the latched source)
        self.bytes = 0
        self.dropped = 0  # from a source other than the latched one
        self.undeliverable = 0  # accepted but nowhere to send yet (no address, on hold c=0.0.0.0)
        self.errors = 0  # ICMP errors and sends refused by the kernel
        # The batch path (real sockets on Linux only): `source` and `dest` as the kernel writes
        # them, and the descriptor the peer's packets leave through (connected: the twin).
        self.fd = -1
        self.family = 0
        self.buffers: _Buffers | None = None
        self.source_raw: bytes | None = None
        self.dest_raw: bytes | None = None
        self.out_fd = -1
        self.out_connected = False
        self.connected_send: Any = None  # the twin's send, when out_fd is the connected twin
        self.twins: TwinOpener | None = None  # set by an opener that can give this port a twin
        self.twin: Any = None  # a socket on this port connected to `twin_raw`, this port's party
        self.twin_raw: bytes | None = None

    # -- wiring (signalling time) ----------------------------------------------------------------

    def attach(self, sock: Any) -> None:
        """The opener bound `sock` for this port: the peer's packets will leave through it."""
        self.sock = sock
        family = getattr(sock, "family", None)
        if family in _NAMELEN:  # a real socket (the unit tests attach fakes)
            self.fd = sock.fileno()
            self.family = family
            if HAVE_MMSG:
                self.buffers = _buffers_for(family)
                self.dest_raw = sockaddr(family, self.dest)
        if self.peer is not None:
            self.peer.out = sock
            self.peer._route()

    def pair(self, other: RelayPort) -> None:
        self.peer = other
        other.peer = self
        self.out = other.sock
        other.out = self.sock
        self._route()
        other._route()

    def relatch(self, signalled: Addr | None) -> None:
        """New signalling for this party: learn its source again; meanwhile send to `signalled`."""
        self.source = None
        self.source_raw = None
        if self.peer is not None:
            self.peer._set_dest(signalled)

    def _set_dest(self, dest: Addr | None) -> None:
        """What arrives here goes to `dest` now (the peer's party): the peer's twin follows it."""
        self.dest = dest
        self.dest_raw = raw = sockaddr(self.family, dest) if self.buffers is not None else None
        if self.peer is not None:
            self.peer._aim(raw, dest)
        self._route()

    def _aim(self, raw: bytes | None, party: Addr | None) -> None:
        """Point this port's twin at `party` (`raw`: the same as sockaddr bytes), or drop it."""
        if self.twins is None or self.closed:
            return
        if raw is None:
            self._drop_twin()
            return
        if self.twin is not None and self.twin_raw == raw:
            return
        if self.twin is None:
            self.twin = self.twins.open_twin(self)
            if self.twin is None:
                return
        try:
            self.twin.connect(party)
        except OSError:
            self._drop_twin()
            return
        self.twin_raw = raw

    def _drop_twin(self) -> None:
        twin = self.twin
        if twin is not None:
            self.twin = self.twin_raw = None
            if self.twins is not None:
                self.twins.close_twin(twin)
            if self.peer is not None:
                self.peer._route()

    def _route(self) -> None:
        """Where the batch path sends: the peer's twin when it leads to `dest`, else its first socket."""
        peer = self.peer
        self.connected_send = None
        if self.dest_raw is None or peer is None or peer.fd < 0:
            self.out_fd, self.out_connected = -1, False
        elif peer.twin is not None and peer.twin_raw == self.dest_raw:
            self.out_fd, self.out_connected = peer.twin.fileno(), True
            self.connected_send = peer.twin.send
        else:
            self.out_fd, self.out_connected = peer.fd, False

    # -- packets ----------------------------------------------------------------------------------

    def datagram_received(self, data: Any, addr: Addr) -> None:
        """One datagram from `addr`: the reference path (learning, foreign sources, tests)."""
        source = self.source
        if addr != source:
            if source is not None:
                self.dropped += 1
                return
            self.source = addr  # latch: first packet after signalling wins
            if self.buffers is not None:
                self.source_raw = sockaddr(self.family, addr)
            self.peer._set_dest(addr)  # type: ignore[union-attr]
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

    def readable(self, fd: int) -> None:
        """Datagrams wait on `fd`, this port's socket or its twin: forward up to BATCH of them."""
        b = self.buffers
        if b is None:  # no recvmmsg here (nor twins): one datagram at a time
            self._read_one_by_one(self.sock)
            return
        n = _recvmmsg(fd, b.rx, BATCH, _MSG_DONTWAIT, None)
        if n == 1:
            # The usual case below saturation, the batch steps below with less machinery: a socket's
            # send (~0.3 µs cheaper than a sendmmsg of one) and no per-batch views.
            if b.sources[1] != self.source_raw:
                self._forward_one_by_one(b, 1)
                return
            size = b.lengths[_LEN]
            data = b.data[:size]
            last = self.packets = self.packets + 1
            self.bytes += size
            if last & _STATS_MASK < 2:
                rx = self.rx
                if rx is not None:
                    rx.packet(data, _monotonic(), last)
            send = self.connected_send
            if send is None:
                self._send_one_by_one(b, 1)
                return
            try:
                send(data)
            except OSError:  # EAGAIN: dropped, not queued; ECONNREFUSED: an ICMP error came back
                self.errors += 1
            return
        if n <= 0:
            if n < 0 and _get_errno() not in _TRY_LATER:
                self.errors += 1  # an ICMP error reported on a connected twin, and the like
            return
        source = self.source_raw
        if source is None or bytes(b.sources[n]) != source * n:  # bytes(): memcmp, not item by item
            self._forward_one_by_one(b, n)
            return
        before = self.packets
        last = self.packets = before + n
        sizes = b.sizes[n]
        self.bytes += sum(sizes)
        if last & ~_STATS_MASK >= before:  # a sampled packet in this batch (see STATS_EVERY)
            rx = self.rx
            if rx is not None:
                self._sample(rx, b, before, last)
        out_fd = self.out_fd
        if out_fd < 0:
            self._send_one_by_one(b, n)
            return
        b.out_sizes[n][:] = array.array(_SIZE_T, sizes)
        if self.out_connected:
            sent = _sendmmsg(out_fd, b.txc, n, _MSG_DONTWAIT)
        else:
            b.dests[n][:] = self.dest_raw * n  # out_fd >= 0: dest_raw is set
            sent = _sendmmsg(out_fd, b.tx, n, _MSG_DONTWAIT)
        if sent != n:  # the rest of the batch is dropped (EAGAIN, ICMP error): counted, not retried
            self.errors += n - max(sent, 0)

    def _sample(self, rx: RtpReceiveStats, b: _Buffers, before: int, last: int) -> None:
        """Show the statistics the sampled packets among numbers before+1 .. last."""
        now = _monotonic()
        k = (before + 1) & ~_STATS_MASK
        while k <= last:
            for count in (k, k + 1):
                if before < count <= last:
                    rx.packet(b.datagram(count - before - 1), now, count)
            k += STATS_EVERY

    def _forward_one_by_one(self, b: _Buffers, n: int) -> None:
        for i in range(n):
            self.datagram_received(bytes(b.datagram(i)), address(b.source(i)))

    def _send_one_by_one(self, b: _Buffers, n: int) -> None:
        """Accepted datagrams the batch send cannot take (no address yet, or one of another kind)."""
        dest, out = self.dest, self.out
        if dest is None or out is None:
            self.undeliverable += n
            return
        for i in range(n):
            try:
                out.sendto(b.datagram(i), dest)
            except OSError:
                self.errors += 1

    def _read_one_by_one(self, sock: Any) -> None:
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(SLOT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                continue
            self.datagram_received(data, addr)

    # -- releasing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this port's sockets (the opener has stopped watching them)."""
        self.closed = True
        self._drop_twin()
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.fd = -1
        if self.peer is not None:
            self.peer.out = None
            self.peer._route()

    def __repr__(self) -> str:
        return f"RelayPort({self.port}, {self.kind}, source={self.source}, dest={self.dest})"
