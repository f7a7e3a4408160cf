"""The daemon's shell around the forwarder on a real loop and real sockets: SocketOpener, the
Dispatcher, batches read with recvmmsg, connected twins, escaped exceptions.

Sockets are bound on 127.0.0.1 (and 127.0.0.2 for a hijacker) only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import uvloop

from rtp_relay import daemon as daemon_module
from rtp_relay import forwarder
from rtp_relay.config import load_settings
from rtp_relay.daemon import RelayDaemon, SocketOpener, twin_budget
from rtp_relay.forwarder import BATCH, HAVE_MMSG, RelayPort, address, sockaddr
from rtp_relay.stats import RtpReceiveStats

HOST = "127.0.0.1"
needs_mmsg = pytest.mark.skipif(not HAVE_MMSG, reason="recvmmsg/sendmmsg (Linux) drive the batch path and twins")


def free_pair() -> int:
    """An even port whose odd neighbour is free too, and the next pair (best effort, retried)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1] & ~1
        if bindable(range(port, port + 4)):
            return port
    raise RuntimeError("no free port pair")


def bindable(ports: range) -> bool:
    probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in ports]
    try:
        for probe, p in zip(probes, ports, strict=True):
            probe.bind((HOST, p))
    except OSError:
        return False
    finally:
        for probe in probes:
            probe.close()
    return True


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, 0x4242) + bytes(160)


def party(host: str = HOST) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


async def receive(sock: socket.socket, count: int, timeout: float = 2.0) -> list[tuple[bytes, tuple[str, int]]]:
    """Up to `count` datagrams arriving on `sock` within `timeout`."""
    got: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(int(timeout / 0.01)):
        try:
            while len(got) < count:
                got.append(sock.recvfrom(2048))
        except BlockingIOError:
            pass
        if len(got) >= count:
            break
        await asyncio.sleep(0.01)
    return got


async def quiet(sock: socket.socket, wait: float = 0.2) -> bool:
    await asyncio.sleep(wait)
    try:
        sock.recvfrom(2048)
    except BlockingIOError:
        return True
    return False


@dataclass
class Stream:
    """One RTP/RTCP stream between parties A and B through four relay ports on a real opener."""

    opener: SocketOpener
    base: int
    a_rtp: RelayPort  # A talks to base, B to base + 2
    a_rtcp: RelayPort
    b_rtp: RelayPort
    b_rtcp: RelayPort

    @property
    def ports(self) -> tuple[RelayPort, ...]:
        return (self.a_rtp, self.a_rtcp, self.b_rtp, self.b_rtcp)

    def release(self) -> None:
        for port in self.ports:
            self.opener.close(port)
            port.close()


@asynccontextmanager
async def stream(max_twins: int) -> AsyncIterator[Stream]:
    opener = SocketOpener(asyncio.get_running_loop(), HOST, max_twins=max_twins)
    base = free_pair()
    s = Stream(opener, base, RelayPort(base, "rtp", RtpReceiveStats()), RelayPort(base + 1, "rtcp"),
               RelayPort(base + 2, "rtp", RtpReceiveStats()), RelayPort(base + 3, "rtcp"))
    opener.open(s.a_rtp, s.a_rtcp)
    opener.open(s.b_rtp, s.b_rtcp)
    s.a_rtp.pair(s.b_rtp)
    s.a_rtcp.pair(s.b_rtcp)
    try:
        yield s
    finally:
        s.release()
        opener.dispatcher.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(test(), timeout=10))


@pytest.mark.parametrize("max_twins", [0, 10])
def test_socket_opener_forwards_both_ways_and_releases(max_twins: int) -> None:
    async def main() -> None:
        a, b = party(), party()
        try:
            async with stream(max_twins) as s:
                s.b_rtp.relatch(b.getsockname())  # signalled: what arrives from A goes to B
                s.a_rtp.relatch(a.getsockname())
                for seq in range(3):
                    a.sendto(rtp(seq), (HOST, s.base))
                got = await receive(b, 3)
                assert [struct.unpack_from("!H", d, 2)[0] for d, _ in got] == [0, 1, 2]
                assert {src for _, src in got} == {(HOST, s.base + 2)}  # symmetric: B hears its own port
                assert s.a_rtp.packets == 3 and s.a_rtp.source == a.getsockname()
                assert s.b_rtp.dest == a.getsockname()  # latched: B's media now goes to where A is
                b.sendto(rtp(7), (HOST, s.base + 2))
                back = await receive(a, 1)
                assert back == [(rtp(7), (HOST, s.base))]
                assert s.opener.twins_open == (2 if max_twins and HAVE_MMSG else 0)
                socks = [sock for p in s.ports for sock in (p.sock, p.twin) if sock is not None]
            assert all(p.sock is None and p.twin is None and p.out is None for p in s.ports)
            assert all(sock.fileno() == -1 for sock in socks)
            assert s.opener.twins_open == 0
            assert bindable(range(s.base, s.base + 4))  # twins included: nothing holds the ports
        finally:
            a.close()
            b.close()

    run(main)


@needs_mmsg
def test_twins_are_connected_to_each_party_and_hijack_still_counts() -> None:
    async def main() -> None:
        a, b, evil = party(), party(), party("127.0.0.2")
        try:
            async with stream(max_twins=10) as s:
                s.b_rtp.relatch(b.getsockname())
                s.a_rtp.relatch(a.getsockname())
                # Each RTP port has a twin on its own port, connected to its party (the signalled
                # address); each side sends through the other side's twin.
                assert s.a_rtp.twin.getpeername() == a.getsockname()
                assert s.b_rtp.twin.getpeername() == b.getsockname()
                assert s.a_rtp.twin.getsockname() == (HOST, s.base)
                assert s.a_rtp.out_connected and s.b_rtp.out_connected
                assert s.a_rtcp.twin is None  # RTCP gets none
                for seq in range(5):
                    a.sendto(rtp(seq), (HOST, s.base))
                assert len(await receive(b, 5)) == 5
                evil.sendto(rtp(99), (HOST, s.base))  # not A: reaches the first socket, dropped
                assert await quiet(b)
                assert (s.a_rtp.packets, s.a_rtp.dropped) == (5, 1)
                # No other socket can bind the port, even one asking to share it.
                intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                with pytest.raises(OSError):
                    intruder.bind((HOST, s.base))
                intruder.close()
        finally:
            for sock in (a, b, evil):
                sock.close()

    run(main)


@needs_mmsg
def test_new_signalling_moves_the_twin_and_learning_takes_the_first_sender() -> None:
    async def main() -> None:
        a, b, a2 = party(), party(), party()
        try:
            async with stream(max_twins=10) as s:
                s.b_rtp.relatch(b.getsockname())
                s.a_rtp.relatch(a.getsockname())
                a.sendto(rtp(1), (HOST, s.base))
                assert len(await receive(b, 1)) == 1
                s.a_rtp.relatch(a2.getsockname())  # re-INVITE: A moved
                assert s.a_rtp.twin.getpeername() == a2.getsockname()
                assert s.b_rtp.dest == a2.getsockname()
                # Learning: whoever speaks first is latched. The old address does, so it wins again
                # and the twin follows it back.
                a.sendto(rtp(2), (HOST, s.base))
                assert len(await receive(b, 1)) == 1
                assert s.a_rtp.source == a.getsockname()
                assert s.a_rtp.twin.getpeername() == a.getsockname()
                a2.sendto(rtp(3), (HOST, s.base))
                assert await quiet(b)
                assert s.a_rtp.dropped == 1
                s.a_rtp.relatch(None)  # hold with c=0.0.0.0: nothing is sent to A, no twin
                assert s.a_rtp.twin is None and s.opener.twins_open == 1
                b.sendto(rtp(4), (HOST, s.base + 2))
                await asyncio.sleep(0.1)
                assert s.b_rtp.undeliverable == 1
        finally:
            for sock in (a, b, a2):
                sock.close()

    run(main)


@needs_mmsg
@pytest.mark.parametrize("max_twins", [0, 10])
def test_a_burst_is_one_batch_with_the_same_counts_and_statistics(max_twins: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst queued before the loop runs is read as batches; counters and sampled statistics
    come out as the packet-by-packet path would have them."""
    batches: list[int] = []
    real_sendmmsg = forwarder._sendmmsg

    def sendmmsg(fd: int, msgs: object, n: int, flags: int) -> int:
        batches.append(n)
        return int(real_sendmmsg(fd, msgs, n, flags))

    monkeypatch.setattr(forwarder, "_sendmmsg", sendmmsg)

    async def main() -> None:
        a, b = party(), party()
        reference = RelayPort(0, "rtp", RtpReceiveStats())  # no sockets: counts and statistics only
        reference.pair(RelayPort(2, "rtp"))
        try:
            async with stream(max_twins) as s:
                s.b_rtp.relatch(b.getsockname())
                s.a_rtp.relatch(a.getsockname())
                a.sendto(rtp(0), (HOST, s.base))  # latches A: the burst then takes the batch path
                assert len(await receive(b, 1)) == 1
                seqs = [seq for seq in range(1, 2 * BATCH + 40) if seq not in (20, 21, 100)]
                for seq in seqs:  # all queued before the loop gets to run: batches of BATCH and less
                    a.sendto(rtp(seq), (HOST, s.base))
                got = await receive(b, len(seqs))
                assert [struct.unpack_from("!H", d, 2)[0] for d, _ in got] == seqs
                for seq in [0, *seqs]:
                    reference.datagram_received(rtp(seq), a.getsockname())
                rx, ref = s.a_rtp.rx, reference.rx
                assert rx is not None and ref is not None
                assert (s.a_rtp.packets, s.a_rtp.bytes) == (reference.packets, reference.bytes)
                assert (rx.base_seq, rx.max_seq, rx.expected, rx.received, rx.lost) == \
                    (ref.base_seq, ref.max_seq, ref.expected, ref.received, ref.lost)
                assert rx.lost == 3
                assert max(batches) == BATCH and sum(batches) == len(seqs)
        finally:
            a.close()
            b.close()

    run(main)


@needs_mmsg
def test_a_batch_mixing_sources_is_judged_packet_by_packet() -> None:
    async def main() -> None:
        a, b, evil = party(), party(), party("127.0.0.2")
        try:
            async with stream(max_twins=0) as s:  # every datagram on the one socket: one batch
                s.b_rtp.relatch(b.getsockname())
                s.a_rtp.relatch(a.getsockname())
                a.sendto(rtp(0), (HOST, s.base))
                assert len(await receive(b, 1)) == 1
                for seq in range(1, 7):
                    (evil if seq % 3 == 0 else a).sendto(rtp(seq), (HOST, s.base))
                got = await receive(b, 4)
                assert [struct.unpack_from("!H", d, 2)[0] for d, _ in got] == [1, 2, 4, 5]
                assert await quiet(b)
                assert (s.a_rtp.packets, s.a_rtp.dropped) == (5, 2)
        finally:
            for sock in (a, b, evil):
                sock.close()

    run(main)


@needs_mmsg
def test_icmp_errors_on_a_connected_twin_are_counted_not_raised() -> None:
    async def main() -> None:
        a, b = party(), party()
        gone = party()
        gone_addr = gone.getsockname()
        gone.close()  # nobody listens there: sends to it come back as ICMP port unreachable
        try:
            async with stream(max_twins=10) as s:
                s.b_rtp.relatch(b.getsockname())
                s.a_rtp.relatch(gone_addr)  # B's media goes to a closed port, through A's twin
                for seq in range(3):
                    b.sendto(rtp(seq), (HOST, s.base + 2))
                    await asyncio.sleep(0.05)
                assert s.b_rtp.packets == 3
                assert s.a_rtp.errors + s.b_rtp.errors >= 1
        finally:
            a.close()
            b.close()

    run(main)


def test_sockaddr_round_trips() -> None:
    v4 = sockaddr(socket.AF_INET, ("192.0.2.7", 4000))
    assert v4 is not None and len(v4) == 16 and address(v4) == ("192.0.2.7", 4000)
    v6 = sockaddr(socket.AF_INET6, ("2001:db8::1", 5004, 0, 0))
    assert v6 is not None and len(v6) == 28 and address(v6) == ("2001:db8::1", 5004, 0, 0)
    assert sockaddr(socket.AF_INET6, ("2001:db8::1", 5004)) == v6  # a signalled address has no flowinfo
    for family, addr in ((socket.AF_INET, None), (socket.AF_INET, ("::1", 5)), (socket.AF_INET6, ("1.2.3.4", 5)),
                         (socket.AF_INET, ("example.com", 5)), (0, ("1.2.3.4", 5))):
        assert sockaddr(family, addr) is None  # such a destination is sent to one packet at a time


def test_twin_budget_leaves_room_for_every_port(monkeypatch: pytest.MonkeyPatch) -> None:
    def limit(soft: int) -> None:
        monkeypatch.setattr(daemon_module.resource, "getrlimit", lambda _: (soft, soft))

    limit(20000)
    assert twin_budget(5000) == 5000  # 10,000 ports + 5,000 twins + the reserve fit
    limit(12000)
    assert twin_budget(5000) == 12000 - 10000 - daemon_module.FD_RESERVE
    limit(1024)
    assert twin_budget(5000) == 0


def test_an_exception_escaping_into_the_loop_is_counted() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        daemon = RelayDaemon(load_settings({"control": f"{HOST}:{free_pair()}", "ports": "20000-20009"}))
        loop.set_exception_handler(daemon._on_loop_exception)

        def bug() -> None:
            raise ValueError("a bug in a callback")

        loop.call_soon(bug)
        await asyncio.sleep(0.01)
        return daemon.escaped_exceptions

    assert uvloop.run(asyncio.wait_for(main(), timeout=5)) == 1
