"""Where a message came from or goes to: transport, host and port.

How this works: the core names peers with `Address` values only; the I/O shell maps an Address to a
socket (UDP) or to a connection (TCP, keyed by the peer's host and port, so a response sent to the
Address a request came from goes back on the same connection, RFC 3261 §18.2.2).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from mypy_extensions import mypyc_attr

from ..value import Value

RELIABLE = frozenset({"tcp", "tls", "ws", "wss"})

_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\Z", re.ASCII)


def is_ip_literal(host: str) -> bool:
    """`host` (no IPv6 brackets) is an IPv4 or IPv6 address. Dotted-quad IPv4 is checked by one
    regular expression: `ipaddress` costs ~10x more, and this runs per dialog and per SDP."""
    if _IPV4.match(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@mypyc_attr(acyclic=True)
class Address(Value):
    __slots__ = ("transport", "host", "port")

    def __init__(self, transport: str, host: str, port: int) -> None:
        self.transport: Final = transport  # lower case: "udp" or "tcp"
        self.host: Final = host  # bare host, no IPv6 brackets
        self.port: Final = port

    def key(self) -> tuple[str, str, int]:
        return (self.transport, self.host, self.port)

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE

    @property
    def host_for_uri(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return f"{self.transport}:{self.host_for_uri}:{self.port}"
