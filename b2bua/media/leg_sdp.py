"""Offer/answer bookkeeping for one leg: our own o= line and the last SDP each way (RFC 3264).

How this works: each leg shows its peer one continuous session, whatever happens on the other side
(the relay re-anchoring, a transfer to a new party). RFC 3264 §8 asks that every SDP sent in a
dialog keeps the o= username and session id, and that the version goes up by one exactly when the
description changed. So a `LegSdp` owns an origin (username `-`, a random session id, a version),
writes it into every SDP the leg sends (`outgoing`), and bumps the version only when the body
without its o= line differs from the one sent before. It also keeps the last SDP the peer sent
(`incoming`), from which `peer_held` tells whether the peer has put its streams on hold
(sendonly/inactive, or the RFC 2543 `c=0.0.0.0`), which is what turns the media timeout off.

When the B2BUA itself puts a party on hold (the control API), it re-offers the SDP it last sent that
leg with another direction (`redirected`, RFC 3264 §8.4: sendrecv becomes sendonly, recvonly becomes
inactive, and back on resume), under the same o= line with the version bumped; `local_held` tells
whether the last SDP we sent holds the party. An offer the party refuses leaves the session as it
was (RFC 3264 §8: a rejected offer changes nothing), so `snapshot`/`restore` put the bookkeeping back.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from rtp_relay.sdp import SdpError, SessionDescription

from ..randomness import random_bytes
from ..sip.address import is_ip_literal

__all__ = ["LegSdp", "SdpError", "SdpSnapshot", "is_sdp"]

# RFC 3264 §8.4: what a stream's direction becomes when we hold it, and when we take it off hold.
_HOLD = {"sendrecv": "sendonly", "recvonly": "inactive", "sendonly": "sendonly", "inactive": "inactive"}
_RESUME = {"sendonly": "sendrecv", "inactive": "recvonly", "sendrecv": "sendrecv", "recvonly": "recvonly"}


class SdpSnapshot(NamedTuple):
    """The outgoing half of a `LegSdp` at one moment (see `LegSdp.snapshot`)."""

    version: int
    local: bytes | None
    last_content: int | None


def is_sdp(content_type: str | None) -> bool:
    """True for `application/sdp` bodies (parameters and case ignored)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/sdp"


class LegSdp:
    __slots__ = ("session_id", "version", "local", "remote", "_last_content")

    def __init__(self) -> None:
        # RFC 4566 §5.2: sess-id and sess-version are numeric; an NTP-like size keeps peers happy.
        self.session_id = int.from_bytes(random_bytes(4), "big") | 1
        self.version = self.session_id
        self.local: bytes | None = None  # the last SDP we sent on this leg
        self.remote: bytes | None = None  # the last SDP the peer sent
        self._last_content: int | None = None  # hash of the last SDP sent, o= line left out

    def outgoing(self, body: bytes, parsed: SessionDescription | None = None) -> bytes:
        """`body` with our o= line, version bumped when the content changed. Raises SdpError.
        `parsed`: `body` already parsed by the caller, unedited (the output is spliced from
        `body`; the parse is changed here, and not kept)."""
        sdp = parsed if parsed is not None else SessionDescription.parse(body)
        session = sdp.session
        at = next((i for i, line in enumerate(session) if line.type == "o"), None)
        if at is None:
            raise SdpError("SDP has no o= line")
        origin = session[at]
        # The body is spliced around its o= line rather than written out line by line: it is
        # the text of `sdp` (the parse round-trips byte for byte), so the o= line starts where
        # the lines before it end (only v= in any sane SDP).
        start = len("".join(line.text() for line in session[:at]).encode("utf-8", "surrogateescape"))
        head = body[:start]
        tail = body[start + len(origin.text().encode("utf-8", "surrogateescape")):]
        # A hash, not the text, tells "changed": it is kept for the leg's whole life.
        content = hash((head, tail))
        if self._last_content is not None and content != self._last_content:
            self.version += 1
        self._last_content = content
        address = _origin_address(sdp)
        addr_type = "IP6" if ":" in address else "IP4"
        origin.value = f"- {self.session_id} {self.version} IN {addr_type} {address}"
        out = head + origin.text().encode("utf-8", "surrogateescape") + tail
        self.local = out
        return out

    def incoming(self, body: bytes) -> None:
        self.remote = body

    @property
    def peer_held(self) -> bool:
        """The peer's last SDP holds every active stream (or has none active)."""
        return _holds(self.remote)

    @property
    def local_held(self) -> bool:
        """The last SDP we sent on this leg holds every active stream: the peer is on hold."""
        return _holds(self.local)

    def redirected(self, hold: bool) -> bytes:
        """A new offer: the last SDP we sent, every active stream held (`hold`) or resumed, with
        our o= line and the version bumped when that changed anything. Raises SdpError when we
        have sent nothing yet. The result becomes `local`, like anything `outgoing` returns."""
        if self.local is None:
            raise SdpError("no SDP has been sent on this leg yet")
        sdp = SessionDescription.parse(self.local)
        table = _HOLD if hold else _RESUME
        for i, m in enumerate(sdp.media):
            if not m.disabled:
                m.set_direction(table[sdp.direction(i)])  # media level wins over a session-level one
        return self.outgoing(sdp.serialize())

    def snapshot(self) -> SdpSnapshot:
        """What `restore` needs to undo the SDP sent after this moment."""
        return SdpSnapshot(self.version, self.local, self._last_content)

    def restore(self, snapshot: SdpSnapshot) -> None:
        """The peer refused the offer sent since `snapshot`: the session is as it was before it."""
        self.version, self.local, self._last_content = snapshot


def _holds(body: bytes | None) -> bool:
    if body is None:
        return False
    try:
        sdp = SessionDescription.parse(body)
    except SdpError:
        return False
    active = [i for i, m in enumerate(sdp.media) if not m.disabled]
    return bool(active) and all(sdp.is_hold(i) for i in active)


def _origin_address(sdp: SessionDescription) -> str:
    """The address to name in o=: the session-level c= if it is a usable IP, else the old o=."""
    conn = sdp.connection
    candidates = [conn.address if conn is not None else None, sdp.origin_address]
    candidates += [m.connection.address for m in sdp.media if m.connection is not None]
    for candidate in candidates:
        if candidate is not None and _usable_ip(candidate):
            return candidate
    return sdp.origin_address or "0.0.0.0"


def _usable_ip(candidate: str) -> bool:
    """An IP address other than the unspecified one."""
    if not is_ip_literal(candidate):
        return False
    if ":" not in candidate:
        return candidate != "0.0.0.0"
    return not ipaddress.ip_address(candidate).is_unspecified
