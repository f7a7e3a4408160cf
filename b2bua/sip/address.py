"""Where a message came from or goes to: transport, host and port.

How this works: the core names peers with `Address` values only; the I/O shell maps an Address to a
socket (UDP) or to a connection (TCP, keyed by the peer's host and port, so a response sent to the
Address a request came from goes back on the same connection, RFC 3261 §18.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

RELIABLE = frozenset({"tcp", "tls", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class Address:
    transport: str  # lower case: "udp" or "tcp"
    host: str  # bare host, no IPv6 brackets
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE

    @property
    def host_for_uri(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return f"{self.transport}:{self.host_for_uri}:{self.port}"
