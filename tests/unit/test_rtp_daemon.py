"""The daemon's asyncio shell around the forwarder: SocketOpener on a real loop, escaped exceptions.

Sockets are bound on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from rtp_relay.config import load_settings
from rtp_relay.daemon import RelayDaemon, SocketOpener
from rtp_relay.forwarder import RelayPort
from rtp_relay.stats import RtpReceiveStats

HOST = "127.0.0.1"


def free_pair() -> int:
    """An even port whose odd neighbour is free too (best effort, retried)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1] & ~1
        probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            for probe, p in zip(probes, (port, port + 1, port + 2, port + 3), strict=True):
                probe.bind((HOST, p))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return port
    raise RuntimeError("no free port pair")


async def exchange() -> None:
    loop = asyncio.get_running_loop()
    opener = SocketOpener(loop, HOST)
    base = free_pair()
    a_rtp, a_rtcp = RelayPort(base, "rtp", RtpReceiveStats()), RelayPort(base + 1, "rtcp")
    b_rtp, b_rtcp = RelayPort(base + 2, "rtp", RtpReceiveStats()), RelayPort(base + 3, "rtcp")
    opener.open(a_rtp, a_rtcp)
    opener.open(b_rtp, b_rtcp)
    await opener.settle()  # the transports are attached
    a_rtp.pair(b_rtp)
    a_rtcp.pair(b_rtcp)
    party_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    party_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    party_a.bind((HOST, 0))
    party_b.bind((HOST, 0))
    party_b.setblocking(False)
    try:
        b_rtp.relatch(party_b.getsockname())  # signalled: what arrives from A goes to B
        for seq in range(3):
            party_a.sendto(bytes([0x80, 0, 0, seq]) + bytes(168), (HOST, base))
        got = []
        for _ in range(200):  # up to 2 s
            try:
                data, source = party_b.recvfrom(2048)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            got.append(data)
            assert source == (HOST, base + 2)  # symmetric: B hears the relay port B talks to
            if len(got) == 3:
                break
        assert [d[3] for d in got] == [0, 1, 2]
        assert a_rtp.packets == 3 and a_rtp.source == party_a.getsockname()
        assert b_rtp.dest == party_a.getsockname()  # latched: B's media now goes to where A is
        socks = [port.sock for port in (a_rtp, a_rtcp, b_rtp, b_rtcp)]
        for port in (a_rtp, a_rtcp, b_rtp, b_rtcp):
            opener.close(port)
            port.close()
            assert port.sock is None and port.transport is None
        assert all(p.out is None for p in (a_rtp, a_rtcp, b_rtp, b_rtcp))
        await asyncio.sleep(0.05)  # transports close on the next loop iteration
        assert all(sock.fileno() == -1 for sock in socks)
        party_a.sendto(b"late", (HOST, base))  # nobody listens any more: nothing raises
        await asyncio.sleep(0.05)
    finally:
        party_a.close()
        party_b.close()


def test_socket_opener_forwards_and_releases() -> None:
    uvloop.run(asyncio.wait_for(exchange(), timeout=10))


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
