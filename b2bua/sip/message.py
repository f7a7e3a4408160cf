"""SIP requests and responses as immutable values (RFC 3261 §7).

How this works: a message is a start line, an ordered tuple of `(name, raw value)` header pairs and
a body kept as bytes (multipart and unknown content types pass through untouched). Messages are
values: code that wants a different message builds one (`with_headers`, `Headers.set`...), so a
message that was handed to a transaction can never change under it. Their fields are `Final`:
mypy refuses an assignment anywhere but the constructor, and the compiled build (b2bua/native.py)
makes them read-only at run time. Structured views (`vias`, `cseq`, `from_`, `to`...) are parsed
on first use and kept in slots of their own. This module is compiled with mypyc when it can be,
so it stays within what mypyc compiles (no `cls.__new__`, no instance `__dict__`). `serialize()` always
writes a Content-Length that matches the body, so framing over TCP can never be wrong because of us.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Final, Self

from mypy_extensions import mypyc_attr

from .headers import (
    LIST_HEADERS,
    CSeq,
    HeaderError,
    NameAddr,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_token_list,
    parse_via,
    split_list,
)
from .uri import Uri, ascii_int

SIP_VERSION = "SIP/2.0"

# Header name as written -> (canonical name, lower-case lookup key), both interned: every message
# then shares one string object per header name instead of lower-casing a new one per line. A call
# keeps several messages of ten-odd lines for its whole life, so this is memory per concurrent call
# as much as time per message. Bounded, so a peer inventing names cannot grow it without limit.
_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_MAX = 4096


def _name_key(name: str) -> tuple[str, str]:
    hit = _NAMES.get(name)
    if hit is None:
        canon = canonical_name(name)
        hit = (sys.intern(canon), sys.intern(canon.lower()))
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = hit
    return hit


def _key(name: str) -> str:
    """The lower-case lookup key of a header name in any case or compact form."""
    hit = _NAMES.get(name)
    return hit[1] if hit is not None else _name_key(name)[1]


@mypyc_attr(acyclic=True)
class Headers:
    """An immutable, ordered multi-map of header lines with case-insensitive lookup.

    Kept as three parallel tuples (names as written canonically, values, lower-case keys) rather
    than a tuple of (name, value) pairs: the names and keys are shared interned strings, so a
    message's headers cost three tuples and its value strings, with no pair tuple per line (a
    call holds several messages for its whole life). Iteration still yields (name, value) pairs.
    """

    __slots__ = ("_names", "_values", "_keys")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        names, values, keys = [], [], []
        known = _NAMES.get  # `_name_key` inlined for names seen before: a dozen lines a message
        for n, v in items:
            canon, key = known(n) or _name_key(n)
            names.append(canon)
            values.append(v)
            keys.append(key)
        self._names: tuple[str, ...] = tuple(names)
        self._values: tuple[str, ...] = tuple(values)
        self._keys: tuple[str, ...] = tuple(keys)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return zip(self._names, self._values, strict=True)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._keys

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._names == other._names and self._values == other._values

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    # Lookups scan the keys with tuple methods (C loops; the keys are interned, so a match is
    # usually the same object) rather than a Python loop: a message is asked for a header some
    # eighty times in a call's life, most often for one it does not have.
    def get(self, name: str) -> str | None:
        keys = self._keys
        hit = _NAMES.get(name)  # `_key` inlined: some eighty lookups a call
        key = hit[1] if hit is not None else _name_key(name)[1]
        return self._values[keys.index(key)] if key in keys else None

    def get_all(self, name: str) -> list[str]:
        """Every line of this header, in order (not split on commas)."""
        keys = self._keys
        key = _key(name)
        count = keys.count(key)
        if count == 0:
            return []
        if count == 1:
            return [self._values[keys.index(key)]]
        return [v for k, v in zip(keys, self._values, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """Every value of a list header, lines split on commas (RFC 3261 §7.3.1)."""
        lines = self.get_all(name)
        if _key(name) not in LIST_HEADERS:
            return lines
        out: list[str] = []
        for line in lines:
            out.extend(split_list(line))
        return out

    def set(self, name: str, value: str | Iterable[str]) -> Headers:
        """Replace every line of `name` with `value` (one line per item), at the first's place."""
        name, key = _name_key(name)
        new = [value] if isinstance(value, str) else list(value)
        names: list[str] = []
        values: list[str] = []
        keys: list[str] = []
        placed = False
        for n, v, k in zip(self._names, self._values, self._keys, strict=True):
            if k == key:
                if not placed:
                    names.extend([name] * len(new))
                    values.extend(new)
                    keys.extend([key] * len(new))
                    placed = True
            else:
                names.append(n)
                values.append(v)
                keys.append(k)
        if not placed:
            names.extend([name] * len(new))
            values.extend(new)
            keys.extend([key] * len(new))
        return trusted_headers(names, values, keys)

    def add(self, name: str, value: str, *, first: bool = False) -> Headers:
        """Add one line: at the top of the message (Via, Record-Route) or at the end."""
        name, key = _name_key(name)
        if first:
            return trusted_headers((name, *self._names), (value, *self._values), (key, *self._keys))
        return trusted_headers((*self._names, name), (*self._values, value), (*self._keys, key))

    def remove(self, *names: str) -> Headers:
        drop = {_key(n) for n in names}
        kept = [i for i, k in enumerate(self._keys) if k not in drop]
        return trusted_headers([self._names[i] for i in kept], [self._values[i] for i in kept],
                                [self._keys[i] for i in kept])

    def pop_first_value(self, name: str) -> Headers:
        """Remove the first value of a list header (the top Via, the first Route).

        For a header that is not a list (From, WWW-Authenticate...) the first line goes whole:
        its commas are not separators."""
        key = _key(name)
        is_list = key in LIST_HEADERS
        names: list[str] = []
        values: list[str] = []
        keys: list[str] = []
        done = False
        for n, v, k in zip(self._names, self._values, self._keys, strict=True):
            if k == key and not done:
                done = True
                rest = split_list(v)[1:] if is_list else None
                if rest:
                    names.append(n)
                    values.append(", ".join(rest))
                    keys.append(k)
                continue
            names.append(n)
            values.append(v)
            keys.append(k)
        return trusted_headers(names, values, keys)


def trusted_headers(names: Iterable[str], values: Iterable[str], keys: Iterable[str]) -> Headers:
    """Headers from names already canonical and their keys (no lookups, no copies of tuples)."""
    h = Headers()
    h._names = names if isinstance(names, tuple) else tuple(names)
    h._values = values if isinstance(values, tuple) else tuple(values)
    h._keys = keys if isinstance(keys, tuple) else tuple(keys)
    return h


@mypyc_attr(acyclic=True)
class _Message:
    """What Request and Response share: headers, body, version, and the structured views
    (`vias`, `cseq`, `from_`...), each parsed on first use and kept in its own slot.

    Treat a message as immutable: `Final` makes mypy refuse an assignment to a field anywhere
    but the constructor, and the views are caches of what the headers already say. Slots rather
    than a `__dict__`: a call keeps several messages for its whole life, and the mypyc-compiled
    build (see `b2bua/native.py`) turns them into C struct fields."""

    __slots__ = ("headers", "body", "version", "_vias", "_cseq", "_call_id", "_from", "_to",
                 "_contacts", "_record_route")

    def __init__(self, headers: Headers, body: bytes, version: str) -> None:
        self.headers: Final = headers
        self.body: Final = body
        self.version: Final = version
        self._vias: list[Via] | None = None
        self._cseq: CSeq | None = None
        self._call_id: str | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._contacts: list[NameAddr] | None = None
        self._record_route: list[NameAddr] | None = None

    @property
    def vias(self) -> list[Via]:
        vias = self._vias
        if vias is None:
            vias = self._vias = [parse_via(v) for v in self.headers.values("Via")]
        return vias

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise HeaderError("missing Via")
        return vias[0]

    @property
    def cseq(self) -> CSeq:
        cseq = self._cseq
        if cseq is None:
            v = self.headers.get("CSeq")
            if v is None:
                raise HeaderError("missing CSeq")
            cseq = self._cseq = parse_cseq(v)
        return cseq

    @property
    def call_id(self) -> str:
        call_id = self._call_id
        if call_id is None:
            v = self.headers.get("Call-ID")
            if not v:
                raise HeaderError("missing Call-ID")
            call_id = self._call_id = v.strip()
        return call_id

    @property
    def from_(self) -> NameAddr:
        value = self._from
        if value is None:
            value = self._from = _required_name_addr(self.headers, "From")
        return value

    @property
    def to(self) -> NameAddr:
        value = self._to
        if value is None:
            value = self._to = _required_name_addr(self.headers, "To")
        return value

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def contacts(self) -> list[NameAddr]:
        value = self._contacts
        if value is None:
            value = self._contacts = [parse_name_addr(v) for v in self.headers.values("Contact")]
        return value

    @property
    def record_route(self) -> list[NameAddr]:
        value = self._record_route
        if value is None:
            value = self._record_route = [parse_name_addr(v) for v in self.headers.values("Record-Route")]
        return value

    def option_tags(self, name: str) -> list[str]:
        """Require / Supported / Proxy-Require / Unsupported as lower-case tokens."""
        return parse_token_list(self.headers.get_all(name))

    @property
    def content_type(self) -> str | None:
        v = self.headers.get("Content-Type")
        return v.split(";", 1)[0].strip().lower() if v else None

    def shed(self) -> None:
        """Forget the parsed views (Via, From, To, CSeq, Contact...); the next use parses again.

        For a message kept long after it was handled: a call's INVITEs for the call's life, a
        transaction's request while it waits out Timer J/L/M. The views are a dozen small objects
        each, which cost memory per call and, worse, time in every pass of the cycle collector.
        The Call-ID (a plain string) stays."""
        self._vias = self._cseq = self._from = self._to = None
        self._contacts = self._record_route = None

    def with_headers(self, headers: Headers) -> Self:
        """The same message with other headers, and none of the views parsed. Request and Response
        each build their own kind; `_Message` itself is never made."""
        raise NotImplementedError

    def with_top_via(self, via: Via) -> Self:
        """The same message with its top Via replaced (RFC 3581 stamping on receipt).

        Keeps every structured view already parsed (From, To, CSeq, Call-ID...): only Via changed,
        so parsing the rest again, once per received request, would be wasted work.
        """
        new = self.with_headers(self.headers.pop_first_value("Via").add("Via", str(via), first=True))
        new._cseq, new._call_id, new._from, new._to = self._cseq, self._call_id, self._from, self._to
        new._contacts, new._record_route = self._contacts, self._record_route
        if self._vias is not None:
            new._vias = [via, *self._vias[1:]]
        return new

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


_SKELETON_KEYS = frozenset(_key(name) for name in ("From", "To", "Call-ID", "CSeq"))


def _required_name_addr(headers: Headers, name: str) -> NameAddr:
    v = headers.get(name)
    if v is None:
        raise HeaderError(f"missing {name}")
    return parse_name_addr(v)


@mypyc_attr(acyclic=True)
class Request(_Message):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: Uri, headers: Headers, body: bytes = b"",
                 version: str = SIP_VERSION) -> None:
        self.method: Final = method
        self.uri: Final = uri
        super().__init__(headers, body, version)

    def with_headers(self, headers: Headers) -> Request:
        return Request(self.method, self.uri, headers, self.body, self.version)

    def serialize(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {self.version}")

    @property
    def branch(self) -> str | None:
        return self.top_via.branch

    @property
    def max_forwards(self) -> int | None:
        v = self.headers.get("Max-Forwards")
        if v is None:
            return None
        return ascii_int(v.strip(), 10)

    def skeleton(self) -> Request:
        """This request cut down to its start line and the headers that name its dialog (From,
        To, Call-ID, CSeq), with no body: what a call keeps of its INVITEs once their exchange is
        over, for the call's whole life (a few hundred bytes of a kilobyte or two)."""
        h = self.headers
        kept = [i for i, key in enumerate(h._keys) if key in _SKELETON_KEYS]
        return Request(self.method, self.uri, trusted_headers(
            [h._names[i] for i in kept], [h._values[i] for i in kept], [h._keys[i] for i in kept]))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


@mypyc_attr(acyclic=True)
class Response(_Message):
    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"",
                 version: str = SIP_VERSION) -> None:
        self.status: Final = status
        self.reason: Final = reason
        super().__init__(headers, body, version)

    def with_headers(self, headers: Headers) -> Response:
        return Response(self.status, self.reason, headers, self.body, self.version)

    def serialize(self) -> bytes:
        return self._serialize(f"{self.version} {self.status} {self.reason}")

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Request | Response

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 422: "Session Interval Too Small",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def reason_for(status: int) -> str:
    return REASONS.get(status) or {1: "Progress", 2: "OK", 3: "Redirect", 4: "Client Error",
                                   5: "Server Error", 6: "Global Failure"}.get(status // 100, "Unknown")


# Headers a response copies from its request (RFC 3261 §8.2.6.2).
_COPIED_TO_RESPONSE = ("Via", "From", "To", "Call-ID", "CSeq")


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request`: Via, From, To, Call-ID and CSeq copied; a To tag added if given
    and the request's To has none (RFC 3261 §8.2.6.2). Record-Route is copied for 18x/2xx to
    dialog-creating requests by the dialog layer, not here."""
    items: list[tuple[str, str]] = []
    for name, value in request.headers:
        if name in _COPIED_TO_RESPONSE:
            if name == "To" and to_tag is not None and status != 100:
                try:
                    if request.to.tag is None:
                        value = f"{value};tag={to_tag}"
                except ValueError:
                    pass
            items.append((name, value))
    items.extend(headers)
    return Response(status, reason or reason_for(status), Headers(items), body)
