"""The ng control protocol over UDP: cookies, bencode, and a reply cache for retransmissions.

How this works: every request datagram is `<cookie> <bencoded dictionary>` and its reply is
`<cookie> <bencoded dictionary>`. ng clients (Kamailio, OpenSIPS, our B2BUA) retransmit a request
with the same cookie when a reply is lost, so `ControlCore` keeps each reply for `cache_ttl`
seconds keyed by (cookie, client address) and answers a retransmission from the cache without
executing the command again: a retried `offer` must not allocate twice, a retried `delete` must
not fail with "Unknown call-id". The cache is an insertion-ordered dict, so expiry pops from the
front and a flood of distinct cookies is bounded by `cache_max`. Malformed input (no cookie,
bad bencode, a non-dictionary) is answered with `result: error` whenever there is a cookie to
answer to, and counted; it never raises. `ControlCore` is sans-IO; `ControlProtocol` is the
asyncio adapter around it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from . import bencode
from .session import Relay

MAX_COOKIE = 256


class ControlCore:
    def __init__(self, relay: Relay, cache_ttl: float = 30.0, cache_max: int = 100_000) -> None:
        self.relay = relay
        self.cache_ttl = cache_ttl
        self.cache_max = cache_max
        self._cache: dict[tuple[bytes, Any], tuple[float, bytes]] = {}
        self.retransmissions = 0
        self.malformed: Counter[str] = Counter()

    def receive(self, data: bytes, addr: Any, now: float) -> bytes | None:
        """One request datagram in, the reply datagram out (None when there is nobody to answer)."""
        self._expire(now)
        cookie, space, body = data.partition(b" ")
        if not space or not cookie or len(cookie) > MAX_COOKIE:
            self.malformed["no_cookie"] += 1
            return None
        key = (cookie, addr)
        cached = self._cache.get(key)
        if cached is not None:
            self.retransmissions += 1
            return cached[1]
        try:
            message = bencode.decode(body)
        except bencode.BencodeError as exc:
            self.malformed["bencode"] += 1
            reply: dict[str, Any] = {"result": "error", "error-reason": f"Could not decode bencoded dictionary: {exc}"}
        else:
            reply = self.relay.handle(message, now)
        out = cookie + b" " + bencode.encode(reply)
        if len(self._cache) >= self.cache_max:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (now + self.cache_ttl, out)
        return out

    def _expire(self, now: float) -> None:
        cache = self._cache
        while cache:
            key = next(iter(cache))
            if cache[key][0] > now:
                break
            del cache[key]

    def __len__(self) -> int:
        return len(self._cache)


class ControlProtocol(asyncio.DatagramProtocol):
    def __init__(self, core: ControlCore, loop: asyncio.AbstractEventLoop, on_error: Any = None) -> None:
        self.core = core
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.escaped_exceptions = 0
        self._on_error = on_error

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self.core.receive(data, addr, self.loop.time())
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply, addr)
        except Exception as exc:  # a bug: count it and keep serving
            self.escaped_exceptions += 1
            if self._on_error is not None:
                self._on_error(exc)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for replies to clients that went away
