"""Calls, legs and media streams, and the ng commands that drive them; sans-IO.

How this works: a `Call` (one ng `call-id`) holds `Leg`s, one per party, keyed by SIP tag. An
`offer` comes from the `from-tag` party X and is for the party Y it is in dialogue with (`to-tag`
when known, else a pending leg whose tag the `answer` fills in). For every m= line the relay makes
a `MediaStream`: two `Endpoint`s, one per party, each owning an RTP and an RTCP `RelayPort`
(an even/odd pair from the `PortAllocator`). Party E sends to and receives from its own endpoint's
ports, so the offer X sent is rewritten to carry Y's endpoint ports (Y will send there, and the
relay forwards to X) and the answer Y sent carries X's endpoint ports. Every offer or answer
records the sender's signalled address for the stream and reopens latching of that party only
(see forwarder.py); a re-offer/answer for a known tag pair keeps the same ports. Streams with port
0 are released, TCP media (MSRP, BFCP) is passed through untouched.

Nothing here touches a socket or a clock: binding goes through an injected `PortOpener` (the
asyncio shell binds real sockets, tests use a fake), and time comes in as `now` (monotonic
seconds; `wall_offset` converts to Unix time for replies). `tick(now)`, called once a second,
derives each stream's last activity from its packet counters moving, flags media timeouts (no
packet in either direction for `media_timeout`, or `hold_timeout` while on hold) and deletes calls
that stayed timed out for `timeout_delete`. A peer's bad request raises `NgError` inside and is
answered `result: error` with its reason; `handle` never raises.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from .forwarder import Addr, RelayPort
from .ports import PortAllocator, PortsExhausted
from .sdp import SdpError, SessionDescription
from .stats import RtpReceiveStats

BIND_ATTEMPTS = 8


class NgError(Exception):
    """A request we answer with `result: error` and this text as `error-reason`."""


class PortOpener(Protocol):
    def open(self, rtp: RelayPort, rtcp: RelayPort) -> None:
        """Bind rtp.port and rtcp.port and attach the RelayPorts; OSError if either is taken."""

    def close(self, port: RelayPort) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayConfig:
    advertised_address: str  # written into rewritten SDP (c=, a=rtcp, o= when asked)
    media_timeout: float = 60.0
    hold_timeout: float = 3600.0  # 0: a held stream never times out
    timeout_delete: float = 60.0  # 0: a timed-out call stays until deleted over ng


@dataclass(frozen=True, slots=True)
class MediaTimedOut:
    call_id: str


@dataclass(frozen=True, slots=True)
class CallExpired:
    call_id: str
    ports_released: int


class Endpoint:
    """One party's side of one media stream: the relay ports that party talks to."""

    __slots__ = ("leg", "index", "rtp", "rtcp", "stream", "media_type", "proto", "signalled_rtp",
                 "signalled_rtcp", "direction", "hold", "seen", "last_packet")

    def __init__(self, leg: Leg, index: int, rtp: RelayPort, rtcp: RelayPort) -> None:
        self.leg = leg
        self.index = index
        self.rtp = rtp
        self.rtcp = rtcp
        self.stream: MediaStream | None = None
        self.media_type = ""
        self.proto = ""
        self.signalled_rtp: Addr | None = None
        self.signalled_rtcp: Addr | None = None
        self.direction = "sendrecv"
        self.hold = False
        self.seen = 0
        self.last_packet: float | None = None

    @property
    def signalled(self) -> bool:
        return bool(self.media_type)


class MediaStream:
    __slots__ = ("index", "a", "b", "last_activity", "seen", "timed_out")

    def __init__(self, index: int, a: Endpoint, b: Endpoint, now: float) -> None:
        self.index = index
        self.a = a
        self.b = b
        self.last_activity = now
        self.seen = 0
        self.timed_out = False

    @property
    def held(self) -> bool:
        return self.a.hold or self.b.hold

    def ports(self) -> tuple[RelayPort, RelayPort, RelayPort, RelayPort]:
        return (self.a.rtp, self.a.rtcp, self.b.rtp, self.b.rtcp)


class Leg:
    __slots__ = ("tag", "created", "streams", "peer")

    def __init__(self, tag: str | None, now: float) -> None:
        self.tag = tag  # None until the answer names it
        self.created = now
        self.streams: list[Endpoint | None] = []
        self.peer: Leg | None = None

    def stream(self, index: int) -> Endpoint | None:
        return self.streams[index] if index < len(self.streams) else None


class Call:
    __slots__ = ("call_id", "created", "last_signal", "legs", "streams", "timed_out_since", "last_activity")

    def __init__(self, call_id: str, now: float) -> None:
        self.call_id = call_id
        self.created = now
        self.last_signal = now
        self.last_activity = now
        self.legs: dict[str, Leg] = {}
        self.streams: list[MediaStream] = []
        self.timed_out_since: float | None = None

    @property
    def timed_out(self) -> bool:
        return self.timed_out_since is not None


@dataclass(slots=True)
class Totals:
    """Counters of released ports, so totals survive the calls they belong to."""

    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    undeliverable: int = 0
    errors: int = 0

    def add(self, port: RelayPort) -> None:
        self.packets += port.packets
        self.bytes += port.bytes
        self.dropped += port.dropped
        self.undeliverable += port.undeliverable
        self.errors += port.errors


# -- request field helpers -----------------------------------------------------------------------


def _text(msg: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = msg.get(key)
    if value is None:
        if required:
            raise NgError(f"No {key} in message")
        return None
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise NgError(f"{key} is not valid UTF-8") from None
    elif isinstance(value, str):
        text = value
    else:
        raise NgError(f"{key} must be a string")
    if required and not text:
        raise NgError(f"Empty {key} in message")
    return text


def _words(msg: dict[str, Any], key: str) -> list[str]:
    """A list of strings (`flags`, `replace`), normalised to lower case with hyphens."""
    value = msg.get(key)
    if value is None:
        return []
    if isinstance(value, bytes | str):
        value = [value]  # tolerate a single string where a list is meant
    if not isinstance(value, list):
        raise NgError(f"{key} must be a list")
    out = []
    for item in value:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if not isinstance(item, str):
            raise NgError(f"{key} must be a list of strings")
        out.append(item.strip().lower().replace(" ", "-").replace("_", "-"))
    return out


def _received_from(msg: dict[str, Any]) -> str | None:
    value = msg.get("received-from")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, bytes) for v in value):
        raise NgError("received-from must be a list [family, address]")
    address = value[1].decode("ascii", "replace")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise NgError(f"received-from address {address!r} is not an IP address") from None
    return address


def _ip_or_none(address: str | None) -> str | None:
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # a host name: we do not resolve, latching will find the party
    return None if ip.is_unspecified else address


class Relay:
    def __init__(self, config: RelayConfig, ports: PortAllocator, opener: PortOpener) -> None:
        self.config = config
        self.ports = ports
        self.opener = opener
        self.calls: dict[str, Call] = {}
        self.wall_offset = 0.0  # Unix time minus the monotonic `now`, set by the shell
        self.totals = {"rtp": Totals(), "rtcp": Totals()}
        self.commands: Counter[tuple[str, str]] = Counter()  # (command, ok|error)
        self.media_timeouts = 0
        self.calls_expired = 0
        self.internal_errors = 0

    # -- the ng entry point ------------------------------------------------------------------------

    def handle(self, msg: Any, now: float) -> dict[str, Any]:
        """Answer one decoded ng request; never raises."""
        command = "?"
        try:
            if not isinstance(msg, dict):
                raise NgError("Message is not a dictionary")
            command = (_text(msg, "command") or "").lower()
            handler = _COMMANDS.get(command)
            if handler is None:
                command = "unknown"
                raise NgError(f"Unrecognized command {msg.get('command')!r}")
            reply = handler(self, msg, now)
        except NgError as exc:
            self.commands[(command, "error")] += 1
            return {"result": "error", "error-reason": str(exc)}
        except Exception as exc:  # our bug, not the client's: answer, count, let tests see it
            self.internal_errors += 1
            self.commands[(command, "error")] += 1
            return {"result": "error", "error-reason": f"internal error: {type(exc).__name__}"}
        self.commands[(command, "ok")] += 1
        return reply

    def _ping(self, msg: dict[str, Any], now: float) -> dict[str, Any]:
        return {"result": "pong"}

    def _list(self, msg: dict[str, Any], now: float) -> dict[str, Any]:
        limit = msg.get("limit")
        ids = list(self.calls)
        if isinstance(limit, int) and limit >= 0:
            ids = ids[:limit]
        timed_out = [cid for cid, call in self.calls.items() if call.timed_out]
        return {"result": "ok", "calls": ids, "timed-out": timed_out}

    # -- offer / answer ----------------------------------------------------------------------------

    def _offer(self, msg: dict[str, Any], now: float) -> dict[str, Any]:
        call_id, from_tag = _text(msg, "call-id"), _text(msg, "from-tag")
        to_tag = _text(msg, "to-tag", required=False) or None
        assert call_id is not None and from_tag is not None
        sdp = self._parse_sdp(msg)
        call = self.calls.get(call_id)
        new_call = call is None
        if call is None:
            call = Call(call_id, now)
        x = call.legs.get(from_tag)
        y: Leg | None
        if x is not None:
            y = x.peer
            assert y is not None  # legs are created and deleted in pairs
            if to_tag is not None and y.tag != to_tag and (y.tag is not None or to_tag in call.legs):
                raise NgError(f"from-tag {from_tag!r} is not in dialogue with to-tag {to_tag!r}")
        else:
            if to_tag is not None and to_tag in call.legs:
                raise NgError(f"to-tag {to_tag!r} is in dialogue with another tag")
            x = Leg(from_tag, now)
            y = Leg(to_tag, now)
            x.peer, y.peer = y, x
        new_legs = x.tag not in call.legs
        created = self._ensure_streams(call, x, y, sdp, now)
        try:
            reply_sdp = self._apply(call, sender=x, receiver=y, sdp=sdp, msg=msg, now=now)
        except Exception:
            for stream in created:
                self._release_stream(call, stream)
            raise
        if new_legs:
            call.legs[from_tag] = x
            if y.tag is not None:
                call.legs[y.tag] = y
        elif to_tag is not None and y.tag is None:
            y.tag = to_tag
            call.legs[to_tag] = y
        if new_call:
            self.calls[call_id] = call
        call.last_signal = now
        return {"result": "ok", "sdp": reply_sdp}

    def _answer(self, msg: dict[str, Any], now: float) -> dict[str, Any]:
        call_id, from_tag, to_tag = _text(msg, "call-id"), _text(msg, "from-tag"), _text(msg, "to-tag")
        assert call_id is not None and from_tag is not None and to_tag is not None
        sdp = self._parse_sdp(msg)
        call = self.calls.get(call_id)
        if call is None:
            raise NgError("Unknown call-id")
        x = call.legs.get(from_tag)
        if x is None:
            raise NgError(f"Unknown from-tag {from_tag!r}")
        y = x.peer
        assert y is not None
        if y.tag != to_tag:
            if to_tag in call.legs:
                raise NgError(f"from-tag {from_tag!r} is not in dialogue with to-tag {to_tag!r}")
            # The pending leg gets its tag; a later answer with another tag (a forked early dialogue)
            # takes the leg over with the same ports: a B2BUA has one dialogue per leg anyway.
            if y.tag is not None:
                del call.legs[y.tag]
            y.tag = to_tag
            call.legs[to_tag] = y
        for i, m in enumerate(sdp.media):
            if x.stream(i) is None and not m.disabled and not _passthrough(m.proto):
                raise NgError(f"answer has media section {i + 1} that was not offered")
        reply_sdp = self._apply(call, sender=y, receiver=x, sdp=sdp, msg=msg, now=now)
        call.last_signal = now
        return {"result": "ok", "sdp": reply_sdp}

    def _parse_sdp(self, msg: dict[str, Any]) -> SessionDescription:
        raw = msg.get("sdp")
        if raw is None:
            raise NgError("No SDP body in message")
        if not isinstance(raw, bytes | str):
            raise NgError("sdp must be a string")
        try:
            return SessionDescription.parse(raw)
        except SdpError as exc:
            raise NgError(f"Failed to parse SDP: {exc}") from None

    def _ensure_streams(self, call: Call, x: Leg, y: Leg, sdp: SessionDescription, now: float) -> list[MediaStream]:
        """Allocate a stream for each new, enabled, UDP m= line; all or nothing."""
        created: list[MediaStream] = []
        try:
            for i, m in enumerate(sdp.media):
                if m.disabled or _passthrough(m.proto) or x.stream(i) is not None:
                    continue
                a = self._new_endpoint(x, i)
                try:
                    b = self._new_endpoint(y, i)
                except Exception:
                    self._close_endpoint(a)
                    raise
                a.rtp.pair(b.rtp)
                a.rtcp.pair(b.rtcp)
                stream = MediaStream(i, a, b, now)
                a.stream = b.stream = stream
                for leg, ep in ((x, a), (y, b)):
                    while len(leg.streams) <= i:
                        leg.streams.append(None)
                    leg.streams[i] = ep
                call.streams.append(stream)
                created.append(stream)
        except Exception:
            for stream in created:
                self._release_stream(call, stream)
            raise
        return created

    def _new_endpoint(self, leg: Leg, index: int) -> Endpoint:
        for _ in range(BIND_ATTEMPTS):
            try:
                port = self.ports.allocate()
            except PortsExhausted as exc:
                raise NgError(f"Ran out of ports: {exc}") from None
            rtp = RelayPort(port, "rtp", RtpReceiveStats())
            rtcp = RelayPort(port + 1, "rtcp")
            try:
                self.opener.open(rtp, rtcp)
            except OSError:
                self.ports.release(port, quarantine=True)  # held by someone else: try the next pair
                continue
            return Endpoint(leg, index, rtp, rtcp)
        raise NgError(f"Could not bind a port pair after {BIND_ATTEMPTS} attempts")

    def _apply(self, call: Call, sender: Leg, receiver: Leg, sdp: SessionDescription, msg: dict[str, Any],
               now: float) -> bytes:
        """Record the sender's SDP on its endpoints, reopen its latching, rewrite for the receiver."""
        flags = set(_words(msg, "flags"))
        replace = set(_words(msg, "replace"))
        received_from = _received_from(msg)
        sip_source = "sip-source-address" in flags and "trust-address" not in flags
        # Read everything first: the rewrite below changes the c= lines we read from.
        updates = []
        for i, m in enumerate(sdp.media):
            if _passthrough(m.proto):
                continue
            ep = sender.stream(i)
            if m.disabled:
                if ep is not None and ep.stream is not None:
                    self._release_stream(call, ep.stream)
                continue
            if ep is None:
                continue
            conn = sdp.connection_for(i)
            if conn is not None and conn.is_null:
                address = None  # RFC 2543 hold: send this party nothing until it speaks
            elif sip_source and received_from is not None:
                address = received_from
            else:
                address = _ip_or_none(conn.address if conn is not None else None)
            rtcp_addr, rtcp_port = sdp.rtcp_for(i) or (None, m.port + 1)
            if rtcp_addr is not None and rtcp_addr != (conn.address if conn else None):
                rtcp_addr = _ip_or_none(rtcp_addr)  # a=rtcp with an address of its own
            else:
                rtcp_addr = address
            updates.append((ep, m, address, rtcp_addr, rtcp_port, sdp.direction(i), sdp.is_hold(i),
                            m.clock_rate()))
        for ep, m, address, rtcp_addr, rtcp_port, direction, hold, clock_rate in updates:
            ep.media_type = m.media
            ep.proto = m.proto
            ep.signalled_rtp = (address, m.port) if address else None
            ep.signalled_rtcp = (rtcp_addr, rtcp_port) if rtcp_addr else None
            ep.direction = direction
            ep.hold = hold
            if clock_rate and ep.rtp.rx is not None:
                ep.rtp.rx.clock_rate = clock_rate
            ep.rtp.relatch(ep.signalled_rtp)
            ep.rtcp.relatch(ep.signalled_rtcp)
            stream = ep.stream
            assert stream is not None
            stream.last_activity = now  # new signalling restarts the media timeout
            stream.timed_out = False
        call.timed_out_since = None
        # The rewrite: the receiver talks to its own endpoint's ports.
        advertised = self.config.advertised_address
        for i, m in enumerate(sdp.media):
            if _passthrough(m.proto) or m.disabled:
                continue
            ep = receiver.stream(i)
            if ep is None:
                continue
            m.port = ep.rtp.port
            m.set_connection_address(advertised)
            m.set_rtcp(ep.rtcp.port, advertised)
        sdp.set_connection_address(advertised, media=False)
        if "origin" in replace:
            sdp.set_origin_address(advertised)
        return sdp.serialize()

    # -- delete / query ----------------------------------------------------------------------------

    def _delete(self, msg: dict[str, Any], now: float) -> dict[str, Any]:
        call_id = _text(msg, "call-id")
        assert call_id is not None
        call = self.calls.get(call_id)
        if call is None:
            raise NgError("Unknown call-id")
        reply = self._query_reply(call, now)
        tag = _text(msg, "from-tag", required=False) or _text(msg, "to-tag", required=False)
        if tag:
            leg = call.legs.get(tag)
            if leg is None:
                raise NgError(f"Unknown tag {tag!r}")
            self._delete_pair(call, leg)
            if not call.legs:
                del self.calls[call_id]
        else:
            self._delete_call(call)
        return reply

    def _query(self, msg: dict[str, Any], now: float) -> dict[str, Any]:
        call_id = _text(msg, "call-id")
        assert call_id is not None
        call = self.calls.get(call_id)
        if call is None:
            raise NgError("Unknown call-id")
        return self._query_reply(call, now)

    def _unix(self, t: float | None) -> int:
        return 0 if t is None else int(t + self.wall_offset)

    def _query_reply(self, call: Call, now: float) -> dict[str, Any]:
        totals = {"RTP": {"packets": 0, "bytes": 0, "errors": 0, "dropped": 0},
                  "RTCP": {"packets": 0, "bytes": 0, "errors": 0, "dropped": 0}}
        tags: dict[str, Any] = {}
        seen: set[int] = set()
        legs = list(call.legs.values())
        for leg in legs:
            if leg.peer is not None and leg.peer.tag is None and id(leg.peer) not in seen:
                legs.append(leg.peer)  # the pending side of an unanswered offer
            seen.add(id(leg))
        for leg in legs:
            medias = []
            for ep in leg.streams:
                if ep is None or ep.stream is None:
                    continue
                streams = []
                for port, key in ((ep.rtp, "RTP"), (ep.rtcp, "RTCP")):
                    t = totals[key]
                    t["packets"] += port.packets
                    t["bytes"] += port.bytes
                    t["errors"] += port.errors
                    t["dropped"] += port.dropped
                    streams.append(self._stream_info(ep, port))
                st = ep.stream
                medias.append({
                    "index": ep.index + 1, "type": ep.media_type, "protocol": ep.proto,
                    "direction": ep.direction, "flags": (["on hold"] if ep.hold else []) +
                    (["timed out"] if st.timed_out else []),
                    "streams": streams,
                })
            key = leg.tag or ""
            tags[key] = {
                "tag": key, "created": self._unix(leg.created),
                "in dialogue with": (leg.peer.tag or "") if leg.peer else "",
                "medias": medias,
            }
        return {
            "result": "ok", "created": self._unix(call.created), "last signal": self._unix(call.last_signal),
            "last activity": self._unix(call.last_activity), "timed out": int(call.timed_out),
            "tags": tags, "totals": totals,
        }

    def _stream_info(self, ep: Endpoint, port: RelayPort) -> dict[str, Any]:
        signalled = ep.signalled_rtp if port.kind == "rtp" else ep.signalled_rtcp
        info: dict[str, Any] = {
            "local port": port.port,
            "endpoint": _endpoint_dict(port.source or signalled),
            "advertised endpoint": _endpoint_dict(signalled),
            "last packet": self._unix(ep.last_packet),
            "flags": [port.kind.upper()] + (["latched"] if port.source is not None else ["learning"]),
            "stats": {"packets": port.packets, "bytes": port.bytes, "errors": port.errors,
                      "dropped-hijack": port.dropped, "undeliverable": port.undeliverable},
        }
        rx = port.rx
        if rx is not None:
            info["stats"].update({
                "lost": max(rx.lost, 0), "expected": rx.expected, "jitter": int(round(rx.jitter)),
                "jitter-us": int(round(rx.jitter_ms * 1000)), "clock-rate": rx.clock_rate,
                "ssrc": rx.ssrc or 0,
            })
        return info

    # -- releasing ---------------------------------------------------------------------------------

    def _close_endpoint(self, ep: Endpoint) -> None:
        for port in (ep.rtp, ep.rtcp):
            self.totals[port.kind].add(port)
            self.opener.close(port)
            port.close()
        self.ports.release(ep.rtp.port)

    def _release_stream(self, call: Call, stream: MediaStream) -> None:
        if stream not in call.streams:
            return
        call.streams.remove(stream)
        for ep in (stream.a, stream.b):
            self._close_endpoint(ep)
            if ep.leg.stream(ep.index) is ep:
                ep.leg.streams[ep.index] = None
            ep.stream = None

    def _delete_pair(self, call: Call, leg: Leg) -> None:
        for ep in list(leg.streams):
            if ep is not None and ep.stream is not None:
                self._release_stream(call, ep.stream)
        for gone in (leg, leg.peer):
            if gone is not None and gone.tag is not None and call.legs.get(gone.tag) is gone:
                del call.legs[gone.tag]

    def _delete_call(self, call: Call) -> None:
        for stream in list(call.streams):
            self._release_stream(call, stream)
        call.legs.clear()
        self.calls.pop(call.call_id, None)

    def shutdown(self) -> int:
        """Release every call; returns how many ports were released."""
        before = self.ports.ports_in_use
        for call in list(self.calls.values()):
            self._delete_call(call)
        return before - self.ports.ports_in_use

    # -- time --------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[MediaTimedOut | CallExpired]:
        """The once-a-second sweep: last activity, media timeouts, expiry of timed-out calls."""
        events: list[MediaTimedOut | CallExpired] = []
        cfg = self.config
        for call in list(self.calls.values()):
            latest = call.last_signal
            all_timed_out = True
            for st in call.streams:
                for ep in (st.a, st.b):
                    n = ep.rtp.packets + ep.rtcp.packets
                    if n != ep.seen:
                        ep.seen = n
                        ep.last_packet = now
                        st.last_activity = now
                        st.timed_out = False
                limit = cfg.hold_timeout if st.held else cfg.media_timeout
                if limit and now - st.last_activity >= limit:
                    st.timed_out = True
                if not st.timed_out:
                    all_timed_out = False
                latest = max(latest, st.last_activity)
            call.last_activity = latest
            if not call.streams:
                all_timed_out = bool(cfg.media_timeout) and now - call.last_signal >= cfg.media_timeout
            if not all_timed_out:
                call.timed_out_since = None
                continue
            if call.timed_out_since is None:
                call.timed_out_since = now
                self.media_timeouts += 1
                events.append(MediaTimedOut(call.call_id))
            elif cfg.timeout_delete and now - call.timed_out_since >= cfg.timeout_delete:
                released = 4 * len(call.streams)
                self._delete_call(call)
                self.calls_expired += 1
                events.append(CallExpired(call.call_id, released))
        return events

    # -- metrics -----------------------------------------------------------------------------------

    def live_ports(self) -> list[RelayPort]:
        return [p for call in self.calls.values() for st in call.streams for p in st.ports()]


def _passthrough(proto: str) -> bool:
    return "TCP" in proto.upper()


def _endpoint_dict(addr: Addr | None) -> dict[str, Any]:
    if addr is None:
        return {}
    host = str(addr[0])
    return {"family": "IPv6" if ":" in host else "IPv4", "address": host, "port": int(addr[1])}


_COMMANDS = {
    "ping": Relay._ping,
    "offer": Relay._offer,
    "answer": Relay._answer,
    "delete": Relay._delete,
    "query": Relay._query,
    "list": Relay._list,
}
