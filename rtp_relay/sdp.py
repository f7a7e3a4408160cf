"""SDP (RFC 4566) as an editable document that round-trips byte for byte.

How this works: `SessionDescription.parse` splits the body into lines, keeping each line's own end
of line (CRLF, or LF from sloppy peers) and its text verbatim, and groups them into the session
part (everything before the first `m=`) and one `MediaDescription` per `m=` line. Only the lines a
media relay or a B2BUA must understand are interpreted: `c=`, `m=`, `o=`, `a=rtcp` (RFC 3605),
`a=rtpmap`, and the direction attributes `a=sendrecv|sendonly|recvonly|inactive` (RFC 3264 §5.1).
Every other line (unknown attributes, `a=fmtp` of telephone-event, `b=`, ICE candidates, blank
lines) is kept in place and written back untouched. Editing helpers rewrite a single token of a
line and leave its spacing and suffixes alone, so `serialize()` of an unmodified document returns
exactly the input, and an edit changes only what it names. Text is decoded as UTF-8 with
`surrogateescape`, so even non-UTF-8 bytes survive a round trip.

Typical use::

    sdp = SessionDescription.parse(body)
    sdp.connection_for(0)            # Connection('IN', 'IP4', '192.0.2.1')
    sdp.direction(0), sdp.is_hold(0)  # 'sendonly', True
    sdp.set_connection_address("203.0.113.5")   # session level and every media-level c=
    sdp.media[0].port = 30000
    body = sdp.serialize()
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Final

from mypy_extensions import mypyc_attr

from b2bua.value import Value

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 §6: static payload types that a relay may need a clock rate for without an rtpmap.
STATIC_CLOCK_RATES = {0: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000, 9: 8000,
                      10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025,
                      17: 22050, 18: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000,
                      33: 90000, 34: 90000}

_EOL = re.compile(r"\r\n|\n|\r")
_OTHER_BREAKS = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # str.splitlines breaks on these too
_TYPE_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class SdpError(ValueError):
    """A body that is not an SDP session description."""


@mypyc_attr(acyclic=True)
class Connection(Value):
    """`c=<nettype> <addrtype> <address>[/ttl[/count]]`; `suffix` keeps the `/...` part verbatim."""

    __slots__ = ("net_type", "addr_type", "address", "suffix")

    def __init__(self, net_type: str, addr_type: str, address: str, suffix: str = "") -> None:
        self.net_type: Final = net_type
        self.addr_type: Final = addr_type
        self.address: Final = address
        self.suffix: Final = suffix

    def key(self) -> tuple[str, str, str, str]:
        return (self.net_type, self.addr_type, self.address, self.suffix)

    @property
    def is_null(self) -> bool:
        """RFC 2543 hold: `c=IN IP4 0.0.0.0` (also `::` for IPv6)."""
        return self.address in ("0.0.0.0", "::")

    @property
    def is_ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.net_type} {self.addr_type} {self.address}{self.suffix}"


@mypyc_attr(acyclic=True)
class Rtcp(Value):
    """RFC 3605 `a=rtcp:<port> [<nettype> <addrtype> <address>]`."""

    __slots__ = ("port", "connection")

    def __init__(self, port: int, connection: Connection | None = None) -> None:
        self.port: Final = port
        self.connection: Final = connection

    def key(self) -> tuple[int, Connection | None]:
        return (self.port, self.connection)


class Line:
    """One `<type>=<value>` line with its own end of line. A blank line has type ''."""

    __slots__ = ("type", "value", "eol")

    def __init__(self, type: str, value: str, eol: str = "\r\n") -> None:
        self.type = type
        self.value = value
        self.eol = eol

    def text(self) -> str:
        return (f"{self.type}={self.value}" if self.type else self.value) + self.eol

    def attribute(self) -> tuple[str, str | None] | None:
        """For an `a=` line: (name, value or None); None for other lines."""
        if self.type != "a":
            return None
        name, colon, value = self.value.partition(":")
        return (name, value if colon else None)

    def __repr__(self) -> str:
        return f"Line({self.type!r}, {self.value!r})"


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"malformed c= line: {value!r}")
    address, slash, rest = parts[2].partition("/")
    return Connection(parts[0], parts[1], address, slash + rest)


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


class MediaDescription:
    """One `m=` section: `lines[0]` is the m= line, the rest are its c=, b=, a= ... lines."""

    __slots__ = ("lines", "media", "_port", "_port_count", "proto", "formats", "_rest")

    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines
        value = lines[0].value
        parts = value.split(" ", 2)
        if len(parts) < 3:
            raise SdpError(f"malformed m= line: {value!r}")
        self.media = parts[0]
        port_text, slash, count_text = parts[1].partition("/")
        try:
            self._port = int(port_text)
            self._port_count = int(count_text) if slash else None
        except ValueError:
            raise SdpError(f"malformed port in m= line: {value!r}") from None
        if not 0 <= self._port <= 65535:
            raise SdpError(f"port out of range in m= line: {value!r}")
        self._rest = parts[2]  # "<proto> <fmt> ..." kept verbatim
        proto_and_fmts = parts[2].split()
        self.proto = proto_and_fmts[0] if proto_and_fmts else ""
        self.formats = tuple(proto_and_fmts[1:])

    # -- the m= line ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @port.setter
    def port(self, port: int) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        self._port = port
        count = f"/{self._port_count}" if self._port_count is not None else ""
        self.lines[0].value = f"{self.media} {port}{count} {self._rest}"

    @property
    def port_count(self) -> int | None:
        return self._port_count

    @property
    def disabled(self) -> bool:
        """RFC 3264 §6: a port of zero rejects or removes the stream."""
        return self._port == 0

    # -- attributes ----------------------------------------------------------------------------

    def attributes(self) -> Iterator[tuple[str, str | None]]:
        for line in self.lines[1:]:
            attr = line.attribute()
            if attr is not None:
                yield attr

    def attribute(self, name: str) -> str | None:
        """Value of the first `a=name:value` ('' for a flag attribute `a=name`), or None if absent."""
        for n, v in self.attributes():
            if n == name:
                return "" if v is None else v
        return None

    @property
    def connection(self) -> Connection | None:
        """The media-level `c=` line, if any (see SessionDescription.connection_for)."""
        for line in self.lines[1:]:
            if line.type == "c":
                return _parse_connection(line.value)
        return None

    @property
    def direction(self) -> str | None:
        """The media-level direction attribute, or None when the media section has none."""
        for line in self.lines[1:]:
            if line.type == "a" and line.value in DIRECTIONS:
                return line.value
        return None

    @property
    def rtcp(self) -> Rtcp | None:
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        try:
            port = int(parts[0])
        except (ValueError, IndexError):
            raise SdpError(f"malformed a=rtcp: {value!r}") from None
        conn = _parse_connection(" ".join(parts[1:4])) if len(parts) >= 4 else None
        return Rtcp(port, conn)

    @property
    def rtcp_mux(self) -> bool:
        return self.attribute("rtcp-mux") is not None

    def clock_rate(self, payload_type: int | None = None) -> int | None:
        """Clock rate of `payload_type` (default: the first format) from a=rtpmap or RFC 3551."""
        if payload_type is None:
            if not self.formats or not self.formats[0].isdigit():
                return None
            payload_type = int(self.formats[0])
        for name, value in self.attributes():
            if name == "rtpmap" and value:
                pt, _, encoding = value.partition(" ")
                if pt.strip() == str(payload_type):
                    fields = encoding.strip().split("/")
                    if len(fields) >= 2 and fields[1].isdigit():
                        return int(fields[1])
                    return None
        return STATIC_CLOCK_RATES.get(payload_type)

    # -- edits ---------------------------------------------------------------------------------

    def set_connection_address(self, address: str, addr_type: str | None = None) -> bool:
        """Rewrite the address of the media-level c= line(s); returns whether there was one."""
        found = False
        for line in self.lines[1:]:
            if line.type == "c":
                old = _parse_connection(line.value)
                line.value = str(Connection(old.net_type, addr_type or _addr_type(address), address, old.suffix))
                found = True
        return found

    def set_rtcp(self, port: int, address: str | None = None) -> bool:
        """Rewrite an existing a=rtcp line's port (and its address when it carries one)."""
        for line in self.lines[1:]:
            attr = line.attribute()
            if attr is None or attr[0] != "rtcp" or attr[1] is None:
                continue
            parts = attr[1].split()
            if len(parts) >= 4 and address is not None:
                line.value = f"rtcp:{port} {parts[1]} {_addr_type(address)} {address}"
            else:
                line.value = "rtcp:" + " ".join([str(port), *parts[1:]])
            return True
        return False

    def set_direction(self, direction: str) -> None:
        """Replace the media-level direction attribute, adding one at the end if there is none."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        for line in self.lines[1:]:
            if line.type == "a" and line.value in DIRECTIONS:
                line.value = direction
                return
        self.lines.append(Line("a", direction, self.lines[-1].eol or "\r\n"))

    def __repr__(self) -> str:
        return f"MediaDescription({self.lines[0].value!r})"


class SessionDescription:
    """A parsed SDP body. `session` holds the lines before the first m=, `media` the m= sections."""

    __slots__ = ("session", "media")

    def __init__(self, session: list[Line], media: list[MediaDescription]) -> None:
        self.session = session
        self.media = media

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes | bytearray) else data
        session: list[Line] = []
        media: list[MediaDescription] = []
        current: list[Line] | None = None
        for text_line, eol in _split_lines(text):
            line = _make_line(text_line, eol)
            if line.type == "m":
                if current is not None:
                    media.append(MediaDescription(current))
                current = [line]
            elif current is None:
                session.append(line)
            else:
                current.append(line)
        if current is not None:
            media.append(MediaDescription(current))
        if not session or session[0].type != "v":
            raise SdpError("SDP must start with a v= line")
        sdp = cls(session, media)
        sdp.connection  # noqa: B018 -- validate the session-level c= line early
        for m in media:
            m.connection  # noqa: B018
        return sdp

    def serialize(self) -> bytes:
        return self.to_text().encode("utf-8", "surrogateescape")

    def to_text(self) -> str:
        parts = [line.text() for line in self.session]
        for m in self.media:
            parts.extend(line.text() for line in m.lines)
        return "".join(parts)

    def copy(self) -> SessionDescription:
        return SessionDescription.parse(self.to_text())

    # -- reading -------------------------------------------------------------------------------

    def _session_line(self, type: str) -> Line | None:
        for line in self.session:
            if line.type == type:
                return line
        return None

    @property
    def connection(self) -> Connection | None:
        """The session-level c= line."""
        line = self._session_line("c")
        return _parse_connection(line.value) if line else None

    @property
    def origin_address(self) -> str | None:
        line = self._session_line("o")
        if line is None:
            return None
        parts = line.value.split()
        return parts[5] if len(parts) >= 6 else None

    def session_attribute(self, name: str) -> str | None:
        for line in self.session:
            attr = line.attribute()
            if attr is not None and attr[0] == name:
                return "" if attr[1] is None else attr[1]
        return None

    def connection_for(self, index: int) -> Connection | None:
        """RFC 4566 §5.7: the media-level c= if present, otherwise the session-level one."""
        return self.media[index].connection or self.connection

    def direction(self, index: int) -> str:
        """RFC 3264 §5.1: media-level attribute, else session-level, else sendrecv."""
        media_level = self.media[index].direction
        if media_level is not None:
            return media_level
        for line in self.session:
            if line.type == "a" and line.value in DIRECTIONS:
                return line.value
        return "sendrecv"

    def is_hold(self, index: int) -> bool:
        """The stream is held by this side: sendonly/inactive, or the RFC 2543 c=0.0.0.0 form."""
        if self.direction(index) in ("sendonly", "inactive"):
            return True
        conn = self.connection_for(index)
        return conn is not None and conn.is_null

    def rtcp_for(self, index: int) -> tuple[str | None, int] | None:
        """Where RTCP of stream `index` goes: a=rtcp, else rtcp-mux (the RTP port), else port + 1.

        Returns (address or None when unknown, port), or None for a disabled stream.
        """
        m = self.media[index]
        if m.disabled:
            return None
        conn = self.connection_for(index)
        address = conn.address if conn is not None else None
        rtcp = m.rtcp
        if rtcp is not None:
            return (rtcp.connection.address if rtcp.connection else address, rtcp.port)
        if m.rtcp_mux:
            return (address, m.port)
        return (address, m.port + 1)

    # -- edits ---------------------------------------------------------------------------------

    def set_connection_address(self, address: str, *, session: bool = True, media: bool = True) -> None:
        """Point c= lines at `address`: the session-level one and/or every media-level one."""
        addr_type = _addr_type(address)
        if session:
            for line in self.session:
                if line.type == "c":
                    old = _parse_connection(line.value)
                    line.value = str(Connection(old.net_type, addr_type, address, old.suffix))
        if media:
            for m in self.media:
                m.set_connection_address(address, addr_type)

    def set_origin_address(self, address: str) -> bool:
        line = self._session_line("o")
        if line is None:
            return False
        parts = line.value.split(" ")
        if len(parts) < 6:
            return False
        parts[4] = _addr_type(address)
        parts[5] = address
        line.value = " ".join(parts)
        return True

    def __repr__(self) -> str:
        return f"SessionDescription({len(self.session)} session lines, {len(self.media)} media)"


def _split_lines(text: str) -> list[tuple[str, str]]:
    """`text` cut into (line, its end of line), each ending CRLF, LF or CR (the last maybe none).

    When every end of line is CRLF (nearly every SDP), one `str.split` does it. Otherwise
    `str.splitlines` does the cutting, except when the text holds one of the other characters it
    also breaks on (form feed, U+2028...), which SDP does not treat as line ends. Not
    `re.finditer` in the common cases: on CPython 3.11 a finditer scan interleaved with allocations
    that live on leaves a small block behind about every hundred scans (measured with
    sys.getallocatedblocks), and those strays pin the allocator's arenas after a load peak."""
    crlf = text.count("\r\n")
    if crlf == text.count("\n") == text.count("\r"):
        lines = text.split("\r\n")
        last = lines.pop()  # "" after a final CRLF, else a last line without an end of line
        out = [(line, "\r\n") for line in lines]
        if last:
            out.append((last, ""))
        return out
    if _OTHER_BREAKS.search(text):
        out, pos = [], 0
        for match in _EOL.finditer(text):
            out.append((text[pos:match.start()], match.group()))
            pos = match.end()
        if pos < len(text):
            out.append((text[pos:], ""))
        return out
    pieces = []
    for piece in text.splitlines(keepends=True):
        if piece.endswith("\r\n"):
            pieces.append((piece[:-2], "\r\n"))
        elif piece.endswith(("\n", "\r")):
            pieces.append((piece[:-1], piece[-1]))
        else:
            pieces.append((piece, ""))
    return pieces


def _make_line(text: str, eol: str) -> Line:
    if text[1:2] == "=" and text[:1] in _TYPE_LETTERS:  # <letter>= (a regex match costs more)
        return Line(text[0], text[2:], eol)
    if text.strip() == "":
        return Line("", text, eol)
    raise SdpError(f"not an SDP line: {text[:40]!r}")
