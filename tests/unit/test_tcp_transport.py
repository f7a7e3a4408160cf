"""SIP over TCP with real loopback sockets: framing, connection reuse, keep-alive pong, idle close."""

from __future__ import annotations

import asyncio
import socket

from b2bua.sip.address import Address
from b2bua.transport.tcp import TcpTransport

MSG = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKt\r\n"
       b"Content-Length: 3\r\n\r\nabc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_framing_reuse_pong_and_idle_close():
    async def scenario() -> None:
        got: list[tuple[bytes, Address]] = []
        pool = TcpTransport(lambda data, src: got.append((data, src)), idle_timeout=0.3)
        port = _free_port()
        await pool.listen("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Two messages split at an awkward place, then a keep-alive ping.
        writer.write(MSG + MSG[:10])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(MSG[10:] + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        assert [d for d, _ in got] == [MSG, MSG]
        peer = got[0][1]
        assert peer.transport == "tcp" and peer.port == writer.get_extra_info("sockname")[1]
        assert await asyncio.wait_for(reader.readexactly(2), 1) == b"\r\n"  # the pong
        # A response to that Address goes back on the same connection (RFC 3261 §18.2.2).
        pool.send(b"SIP/2.0 200 OK\r\n\r\n", peer)
        assert await asyncio.wait_for(reader.readexactly(18), 1) == b"SIP/2.0 200 OK\r\n\r\n"
        assert pool.connections == 1 and pool.opened == 1
        # Idle for longer than the timeout: the sweeper closes it.
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await asyncio.sleep(0.05)
        assert pool.connections == 0
        writer.close()
        await pool.close()

    asyncio.run(scenario())


def test_unframeable_stream_is_closed():
    async def scenario() -> None:
        pool = TcpTransport(lambda data, src: None)
        port = _free_port()
        await pool.listen("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1\r\n\r\n")  # no Content-Length
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        assert pool.framing_errors == 1
        writer.close()
        await pool.close()

    asyncio.run(scenario())
