"""SIP over TCP: listening, connecting, framing, connection reuse and idle close.

How this works: every connection, accepted or opened by us, is indexed by the peer's (host, port),
so a response sent to the Address a request came from goes back on the same connection
(RFC 3261 §18.2.2) and later requests to the same peer reuse it. Bytes are cut into messages by
`StreamFramer` (Content-Length framing); a stream that cannot be framed is closed, since nothing
after the error can be trusted. Sending to a peer with no connection starts one and queues the data
until it is up; if connecting fails the data is dropped and handed to `on_unsent`, so the
transactions that sent it end at once with a transport error (RFC 3261 §17.1.4: a refused
connection is reported now, not after Timer B's 32 s). Connections idle longer than
`idle_timeout` are closed by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..sip.address import Address
from ..sip.parser import FramingError, StreamFramer

OnData = Callable[[bytes, Address], None]
Key = tuple[str, int]


class TcpConnection(asyncio.Protocol):
    def __init__(self, pool: TcpTransport) -> None:
        self._pool = pool
        self._framer = StreamFramer(pool.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Address("tcp", host, port)
        self._pool._register(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            frames = self._framer.feed(data)
        except FramingError:
            self._pool.framing_errors += 1
            self.close()
            return
        assert self.peer is not None
        for frame in frames:
            if frame is StreamFramer.KEEPALIVE_PING:
                self.write(b"\r\n")  # RFC 5626 §4.4.1 pong
            else:
                self._pool.on_data(frame, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool._unregister(self)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise OSError("TCP connection closed")
        self.last_active = time.monotonic()
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpTransport:
    def __init__(self, on_data: OnData, max_message_size: int = 65535, idle_timeout: float = 300.0,
                 on_unsent: Callable[[list[bytes], Address], None] | None = None) -> None:
        self._on_unsent = on_unsent
        self.on_data = on_data
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self._conns: dict[Key, TcpConnection] = {}
        self._connecting: dict[Key, list[bytes]] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.framing_errors = 0
        self.connect_failures = 0
        self.opened = 0

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: TcpConnection(self), host, port, reuse_address=True)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def send(self, data: bytes, dest: Address) -> None:
        key = (dest.host, dest.port)
        conn = self._conns.get(key)
        if conn is not None:
            conn.write(data)
            return
        queued = self._connecting.get(key)
        if queued is not None:
            queued.append(data)
            return
        self._connecting[key] = [data]
        asyncio.get_running_loop().create_task(self._connect(key))

    async def _connect(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: TcpConnection(self), key[0], key[1]), timeout=10)
        except (TimeoutError, OSError):
            self.connect_failures += 1
            dropped = self._connecting.pop(key, [])
            if self._on_unsent is not None and dropped:
                self._on_unsent(dropped, Address("tcp", key[0], key[1]))
            return
        for data in self._connecting.pop(key, []):
            conn.write(data)

    def _register(self, conn: TcpConnection) -> None:
        assert conn.peer is not None
        self.opened += 1
        self._conns[(conn.peer.host, conn.peer.port)] = conn

    def _unregister(self, conn: TcpConnection) -> None:
        if conn.peer is not None and self._conns.get((conn.peer.host, conn.peer.port)) is conn:
            del self._conns[(conn.peer.host, conn.peer.port)]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.idle_timeout / 2))
            cutoff = time.monotonic() - self.idle_timeout
            for conn in [c for c in self._conns.values() if c.last_active < cutoff]:
                conn.close()

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self._conns.values()):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
