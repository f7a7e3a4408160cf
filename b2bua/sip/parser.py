"""Bytes to SIP messages, and framing of SIP over byte streams (RFC 3261 §7, §18.3).

How this works: `parse_message` turns one whole message (a UDP datagram, or one frame cut by
`StreamFramer`) into a `Request` or `Response`. It checks the start line and the headers every
layer above relies on (Via, Call-ID, CSeq, From, To, Max-Forwards) and raises `ParseError` when a
message is malformed. The error says what to do about it: `status` is the response to send (400
with a reason naming the problem, 505 for a wrong version) and `request` is the partial request to
answer, or `status == 0` when the message cannot be answered (a bad response, a request without a
usable Via) and must be dropped and counted. Nothing here raises any other exception for any input:
the property tests feed it garbage to keep that true.
"""

from __future__ import annotations

import re
from typing import ClassVar

from .headers import HeaderError
from .message import SIP_VERSION, Headers, Request, Response
from .uri import UriError, ascii_int, parse_uri

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)", re.IGNORECASE | re.MULTILINE)
_PLACEHOLDER_URI = parse_uri("sip:invalid.invalid")

# Header names we know are tokens; checking them skips the regex on the hot path.
_KNOWN_NAMES = frozenset(
    n for name in (
        "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Max-Forwards", "Contact", "m",
        "Content-Type", "c", "Content-Length", "l", "Route", "Record-Route", "Allow", "Supported",
        "k", "Require", "User-Agent", "Server", "Expires", "Event", "o", "Refer-To", "r",
        "Referred-By", "b", "Replaces", "Accept", "Subscription-State", "Session-Expires", "x",
        "Min-SE", "Authorization", "Proxy-Authorization", "WWW-Authenticate", "Proxy-Authenticate",
        "Allow-Events", "u", "P-Asserted-Identity", "Date", "Reason", "Content-Disposition",
    )
    for n in (name, name.lower(), name.upper())
)
# Headers a request must carry exactly once (RFC 3261 §8.1.1, §20); Max-Forwards at most once.
_SINGLE = {"call-id": "Call-ID", "from": "From", "to": "To", "cseq": "CSeq"}


class ParseError(Exception):
    """A malformed message. `status` 0 means: drop it, it cannot be answered.

    `reason` is fit to be the reason phrase of the response (fixed text, never the peer's bytes);
    `detail` says what exactly was wrong, for logs.
    """

    def __init__(self, reason: str, *, status: int = 400, kind: str = "syntax",
                 request: Request | None = None, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.status = status if request is not None else 0
        self.kind = kind
        self.request = request
        self.detail = detail

    @property
    def answerable(self) -> bool:
        return self.status != 0


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Header section and the rest, cut at the first empty line (CRLF or bare LF endings)."""
    end = data.find(b"\r\n\r\n")
    limit = end + 2 if end >= 0 else len(data)
    # A bare-LF blank line earlier than the CRLF one ("...\n\n" or "...\n\r\n") ends the head.
    lf = data.find(b"\n\n", 0, limit)
    lfcr = data.find(b"\n\r\n", 0, limit)
    if lf >= 0 and (lfcr < 0 or lf < lfcr):
        return data[:lf], data[lf + 2 :]
    if lfcr >= 0:
        return data[:lfcr], data[lfcr + 3 :]
    if end >= 0:
        return data[:end], data[end + 4 :]
    # No empty line: accept a message that is all headers (a common sloppiness in keep-alives).
    return data.rstrip(b"\r\n"), b""


def _header_lines(lines: list[str]) -> tuple[list[tuple[str, str]], str]:
    """(name, value) pairs with folded lines joined; a malformed line is skipped and reported."""
    headers: list[tuple[str, str]] = []
    error = ""
    last_ok = False
    known = _KNOWN_NAMES
    for line in lines:
        if not line:
            continue
        if line[0] == " " or line[0] == "\t":
            if not last_ok:
                error = error or "continuation line without a header"
                continue
            cont = line.strip(" \t")
            if cont:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {cont}" if value else cont)
            continue
        name, sep, value = line.partition(":")
        if name not in known:
            name = name.rstrip(" \t")
            if not sep or _TOKEN.fullmatch(name) is None:
                error = error or f"malformed header line {line[:40]!r}"
                last_ok = False
                continue
        headers.append((name, value.strip(" \t")))
        last_ok = True
    return headers, error


def _split_lines(head: str) -> list[str]:
    lines = head.split("\n")
    if "\r" in head:
        lines = [ln[:-1] if ln[-1:] == "\r" else ln for ln in lines]
    return lines


def parse_message(data: bytes) -> Request | Response:
    """Parse one complete message; raises ParseError (see module docstring)."""
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    head_b, body = _split_head(data)
    head = head_b.decode("utf-8", "surrogateescape")
    lines = _split_lines(head)
    start = lines[0]
    if not start:
        raise ParseError("Empty message", kind="empty")
    items, header_error = _header_lines(lines[1:])
    headers = Headers(items)
    body, cl_error = _frame_body(headers, body)
    if start[:4].upper() == "SIP/":
        if header_error:
            raise ParseError("Malformed header line", kind="header", detail=header_error)
        if cl_error:
            raise ParseError(cl_error, kind="content-length")
        return _parse_response(start, headers, body)
    return _parse_request(start, headers, body, header_error, cl_error)


def _frame_body(headers: Headers, body: bytes) -> tuple[bytes, str]:
    """The body cut to Content-Length, and an error reason ("" when fine)."""
    cl = headers.get("Content-Length")
    if cl is None:
        return body, ""  # datagram: the body is the rest of it (RFC 3261 §18.3)
    length = ascii_int(cl.strip(" \t"), 10)
    if length is None:
        return body, "Malformed Content-Length"
    if length > len(body):
        return body, "Content-Length larger than message body"
    return (body[:length] if length < len(body) else body), ""


def _parse_response(start: str, headers: Headers, body: bytes) -> Response:
    parts = start.split(" ", 2)
    status = ascii_int(parts[1], 3) if len(parts) >= 2 and len(parts[1]) == 3 else None
    if parts[0].upper() != SIP_VERSION or status is None:
        raise ParseError("Malformed status line", kind="status-line", detail=repr(start[:60]))
    if not 100 <= status <= 699:
        raise ParseError("Status code out of range", kind="status-line", detail=str(status))
    resp = Response(status, parts[2] if len(parts) > 2 else "", headers, body)
    try:
        if not resp.vias:
            raise HeaderError("missing Via")
        resp.cseq  # noqa: B018 - parse and cache what the transaction layer reads
        resp.call_id  # noqa: B018
        resp.from_  # noqa: B018
        resp.to  # noqa: B018
    except (HeaderError, UriError) as exc:
        raise ParseError("Malformed response", kind="response-header", detail=str(exc)) from None
    return resp


def _split_request_line(start: str) -> tuple[str, str, str, str]:
    """(method, uri text, version, error) from a request line; error is "" when well formed."""
    parts = start.split(" ")
    if len(parts) == 3 and parts[1] and parts[2]:
        return parts[0], parts[1], parts[2], ""
    if len(parts) > 3:
        if not parts[-1]:
            stripped = start.rstrip(" ")  # trailing SP after the version: tolerated
            return _split_request_line(stripped) if stripped else ("", "", "", "Empty request line")
        # Extra SP between the elements, or inside the Request-URI (then parse_uri refuses it):
        # the method and version still read, so the request can be answered (RFC 4475 §3.1.2.7).
        return parts[0], " ".join(parts[1:-1]), parts[-1], ""
    return parts[0], "", SIP_VERSION, "Malformed request line"


def _parse_request(start: str, headers: Headers, body: bytes, header_error: str,
                   cl_error: str) -> Request:
    method, uri_text, version, line_error = _split_request_line(start)
    if _TOKEN.fullmatch(method) is None:
        # Not recognisably a request at all: nothing to answer.
        raise ParseError("Malformed request line", kind="request-line", detail=repr(start[:60]))
    uri_error = ""
    # Each `except ... as` below has a name of its own: compiled (b2bua/native.py), a variable
    # keeps one type for the whole function, so a UriError name cannot later hold a HeaderError.
    if not line_error:
        try:
            uri = parse_uri(uri_text)
        except UriError as bad_uri:
            uri, uri_error = _PLACEHOLDER_URI, str(bad_uri)
    else:
        uri = _PLACEHOLDER_URI
    req = Request(method, uri, headers, body, SIP_VERSION)

    # A request can be answered only when its Vias can be read: responses follow them (§18.2.2).
    try:
        if not req.vias:
            raise HeaderError("missing Via")
    except (HeaderError, UriError) as via_error:
        raise ParseError("Unanswerable request", kind="via", detail=str(via_error)) from None

    # An ACK is never answered (RFC 3261 §17.1.1.3); a malformed one is dropped and counted.
    answer_with = None if method == "ACK" else req

    def fail(reason: str, kind: str, detail: str = "", status: int = 400) -> ParseError:
        return ParseError(reason, status=status, kind=kind, request=answer_with, detail=detail)

    if line_error:
        raise fail(line_error, "request-line", repr(start[:60]))
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if version[:4].upper() == "SIP/":
            raise fail("SIP Version Not Supported", "version", version[:12], 505)
        raise fail("Malformed request line", "request-line", repr(start[:60]))
    if header_error:
        raise fail("Malformed header line", "header", header_error)
    if cl_error:
        raise fail(cl_error, "content-length")
    if uri_error:
        raise fail("Malformed Request-URI", "request-uri", uri_error)

    counts = dict.fromkeys(_SINGLE, 0)
    mf_count = 0
    for key in headers._keys:
        if key in counts:
            counts[key] += 1
        elif key == "max-forwards":
            mf_count += 1
    for key, name in _SINGLE.items():
        if counts[key] == 0:
            raise fail(f"Missing {name} header", "missing-header")
        if counts[key] > 1:
            raise fail(f"Multiple {name} headers", "header")
    try:
        req.call_id  # noqa: B018
    except HeaderError as id_error:
        raise fail("Malformed Call-ID header", "header", str(id_error)) from None
    for name in ("From", "To"):
        try:
            getattr(req, "from_" if name == "From" else "to")
        except (HeaderError, UriError) as addr_error:
            raise fail(f"Malformed {name} header", "header", str(addr_error)) from None
    try:
        cseq = req.cseq
    except HeaderError as cseq_error:
        raise fail("Malformed CSeq header", "cseq", str(cseq_error)) from None
    if cseq.method != method:
        raise fail("CSeq method does not match request method", "cseq")
    if mf_count:
        mf = headers.get("Max-Forwards") or ""
        value = ascii_int(mf.strip(" \t"), 10)
        if mf_count > 1 or value is None or value > 255:
            raise fail("Malformed Max-Forwards header", "max-forwards", repr(mf[:10]))
    return req


class FramingError(Exception):
    """A stream that cannot be framed any more (no or bad Content-Length, oversize message)."""


class StreamFramer:
    """Cuts SIP messages out of a byte stream by Content-Length (RFC 3261 §18.3).

    `feed()` returns whole messages; a lone CRLF CRLF keep-alive ping (RFC 5626 §4.4.1) is
    returned as `KEEPALIVE_PING` so the transport can answer it with a CRLF pong.
    """

    KEEPALIVE_PING: ClassVar[bytes] = b"\r\n\r\n"

    def __init__(self, max_message_size: int = 65535) -> None:
        self._buf = bytearray()
        self._max = max_message_size
        self._scan = 0  # where the search for the end of the header section resumes
        self._total = -1  # length of the message at the head of the buffer, once known

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while buf:
            if self._total < 0:
                # Leading CRLFs between messages are allowed; a double CRLF alone is a ping.
                if buf[0] in (13, 10):
                    i = 0
                    n = len(buf)
                    while i < n and buf[i] in (13, 10):
                        i += 1
                    if i == n and i < 4:
                        break  # may be the first half of a ping: wait for more
                    if i >= 4:
                        out.append(self.KEEPALIVE_PING)
                    del buf[:i]
                    self._scan = 0
                    continue
                # Resume where the last feed stopped looking (less the 3 bytes that may hold
                # the start of a split CRLF CRLF), so trickled input is not rescanned.
                end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
                if end < 0:
                    if len(buf) > self._max:
                        raise FramingError("header section exceeds the maximum message size")
                    self._scan = len(buf)
                    break
                m = _CONTENT_LENGTH.search(buf, 0, end)
                if m is None:
                    raise FramingError("message on a stream without Content-Length")
                length = m.group(1)
                if not (length.isdigit() and len(length) <= 10):
                    raise FramingError("malformed Content-Length on a stream")
                total = end + 4 + int(length)
                if total > self._max:
                    raise FramingError("message exceeds the maximum message size")
                self._total = total
            total = self._total
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._total = -1
            self._scan = 0
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
