"""SIP over UDP: an asyncio datagram protocol that only moves bytes.

How this works: every datagram goes to `on_data(data, Address)` (the daemon wraps the core so a bug
is counted, never raised into the loop); `send(data, address)` writes one datagram. Oversized
requests never reach here: the transaction layer switches them to TCP (RFC 3261 §18.1.1).

The socket's receive buffer is what carries the daemon through a pause (a collector pass, a burst
of timers): the kernel's default (208 KiB, charged at a few KiB per datagram) holds about a
hundred messages, 25 ms of traffic at 880 calls/s, and every datagram past it is dropped and
retransmitted 500 ms later. Measured at 880 calls/s with the default: 1,049 datagrams dropped at
our socket, 4.65 % retransmissions, while the daemon used 0.70 of a core. So `listen` asks for
`receive_buffer` bytes; the kernel caps the request at net.core.rmem_max, and `buffer_size`
reports what was granted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from ..sip.address import Address

OnData = Callable[[bytes, Address], None]


def ask_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask the kernel for a `size`-byte receive buffer on `sock` (0: leave its default)."""
    if size > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class UdpTransport:
    """The datagram protocol of one socket (asyncio's protocol interface, by its method names:
    a compiled class cannot subclass asyncio.DatagramProtocol, and the loop needs only the names)."""

    def __init__(self, on_data: OnData) -> None:
        self._on_data = on_data
        # uvloop's UDPTransport does not subclass asyncio.DatagramTransport; it has the same API.
        self._transport: Any = None
        self.errors = 0

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    # The loop calls these when its send buffer for the socket passes its high-water mark and
    # drains again. Nothing to hold back: SIP over UDP resends what is lost (RFC 3261 §17).
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # `addr` is (host, port) for IPv4 and (host, port, flowinfo, scope_id) for IPv6.
        self._on_data(data, Address("udp", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the transaction's own timers handle the consequence.
        self.errors += 1

    def send(self, data: bytes, dest: Address) -> None:
        if self._transport is None:
            raise OSError("UDP transport not ready")
        self._transport.sendto(data, (dest.host, dest.port))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def buffer_size(self) -> int:
        """The receive buffer the kernel granted (Linux reports twice the bytes it charges)."""
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) if sock is not None else 0

    @classmethod
    async def listen(cls, host: str, port: int, on_data: OnData, receive_buffer: int = 0) -> UdpTransport:
        """Bind `host:port`; `receive_buffer` > 0 asks the kernel for that receive buffer."""
        loop = asyncio.get_running_loop()
        # The loop asks only for the protocol's methods; typeshed asks for the asyncio base class,
        # which a compiled class cannot have.
        _, protocol = await loop.create_datagram_endpoint(  # type: ignore[type-var]
            lambda: cls(on_data), local_addr=(host, port))
        sock = protocol._transport.get_extra_info("socket") if protocol._transport is not None else None
        if sock is not None:
            ask_receive_buffer(sock, receive_buffer)
        return protocol
