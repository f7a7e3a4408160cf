"""SIP over UDP: an asyncio datagram protocol that only moves bytes.

How this works: every datagram goes to `on_data(data, Address)` (the daemon wraps the core so a bug
is counted, never raised into the loop); `send(data, address)` writes one datagram. Oversized
requests never reach here: the transaction layer switches them to TCP (RFC 3261 §18.1.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..sip.address import Address

OnData = Callable[[bytes, Address], None]


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, on_data: OnData) -> None:
        self._on_data = on_data
        self._transport: asyncio.DatagramTransport | None = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport does not subclass asyncio.DatagramTransport; it has the same API.
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
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

    @classmethod
    async def listen(cls, host: str, port: int, on_data: OnData) -> UdpTransport:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(lambda: cls(on_data), local_addr=(host, port))
        return protocol
