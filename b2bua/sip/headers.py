"""Header names and the structured header values the stack reads (RFC 3261 §7.3, §20, §25.1).

How this works: a message keeps every header as a `(name, raw value)` pair exactly as received
(folded lines joined), and this module turns a raw value into a structure only when someone asks:
`NameAddr` for From/To/Contact/Route/Refer-To, `Via`, `CSeq`. Parsing lazily keeps the hot path
cheap (a proxy-like B2BUA reads five headers of twenty) and means an unknown header or parameter
can never be damaged by us. Names are canonicalised on the way in (compact forms expanded,
`call-id` -> `Call-ID`) so lookups are simple; unknown names keep their own spelling.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

from ..value import Value
from .uri import (
    AbsoluteUri,
    Params,
    SipUri,
    Uri,
    UriError,
    ascii_int,
    find_outside_quotes,
    find_param,
    format_params,
    parse_params,
    parse_uri,
    remembered,
    set_param,
    split_hostport,
    split_outside_quotes,
)
from .uri import is_token as _is_token

_COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
    "v": "Via", "o": "Event", "r": "Refer-To", "b": "Referred-By", "u": "Allow-Events",
    "x": "Session-Expires", "a": "Accept-Contact", "j": "Reject-Contact",
    "d": "Request-Disposition", "y": "Identity",
}

_KNOWN = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
    "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization",
    "P-Asserted-Identity", "P-Preferred-Identity", "Priority", "Privacy", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-Sub",
    "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To", "Request-Disposition",
    "Require", "Retry-After", "Route", "RSeq", "Server", "Session-Expires", "Subject",
    "Subscription-State", "Supported", "Target-Dialog", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate", "Diversion", "History-Info", "Path",
    "Service-Route", "Remote-Party-ID",
]
_CANONICAL = {name.lower(): name for name in _KNOWN}
_CANONICAL.update({k: v for k, v in _COMPACT.items()})

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): several values may share a
# line, and lines may be combined. Others (From, To, WWW-Authenticate, Date...) must not be split.
LIST_HEADERS = frozenset(
    n.lower()
    for n in (
        "Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require",
        "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
        "Allow-Events", "Content-Encoding", "Content-Language", "In-Reply-To", "Path",
        "Service-Route", "Alert-Info", "Call-Info", "Error-Info", "Warning", "Reason",
        "P-Asserted-Identity", "History-Info", "Diversion",
    )
)


def canonical_name(name: str) -> str:
    """`v` -> `Via`, `call-id` -> `Call-ID`; unknown names are returned unchanged."""
    return _CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Split a list header value on commas outside quotes and angle brackets."""
    return [v.strip() for v in split_outside_quotes(value, ",") if v.strip()]


class HeaderError(ValueError):
    """A header value that does not follow its grammar; the message names the header."""


# -- name-addr / addr-spec (From, To, Contact, Route, Record-Route, Refer-To, Referred-By) ------


@mypyc_attr(acyclic=True)
class NameAddr(Value):
    __slots__ = ("uri", "display", "params", "bracketed", "wildcard")

    def __init__(self, uri: Uri, display: str | None = None, params: Params = (), bracketed: bool = True,
                 wildcard: bool = False) -> None:
        self.uri: Final = uri
        self.display: Final = display  # as written, quotes included
        self.params: Final = params
        self.bracketed: Final = bracketed
        self.wildcard: Final = wildcard  # Contact: *

    def key(self) -> tuple[Uri, str | None, Params, bool, bool]:
        return (self.uri, self.display, self.params, self.bracketed, self.wildcard)

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        uri = str(self.uri)
        if self.display:
            head = f"{self.display} <{uri}>"
        elif self.bracketed or _needs_brackets(self.uri):
            head = f"<{uri}>"
        else:
            head = uri
        return head + format_params(self.params)

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)[1]

    def with_param(self, name: str, value: str | None) -> NameAddr:
        return NameAddr(self.uri, self.display, set_param(self.params, name, value), self.bracketed, self.wildcard)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    @property
    def display_name(self) -> str | None:
        """The display name as text: quotes removed and `\\x` escapes resolved."""
        d = self.display
        if d is None:
            return None
        if len(d) >= 2 and d[0] == '"' and d[-1] == '"':
            return _unquote(d[1:-1])
        return d

    @property
    def sip_uri(self) -> SipUri:
        if not isinstance(self.uri, SipUri):
            raise HeaderError(f"expected a sip/sips URI, got {self.uri.scheme}:")
        return self.uri


def _needs_brackets(uri: Uri) -> bool:
    if isinstance(uri, AbsoluteUri):
        return any(c in uri.raw for c in ",;?")
    return bool(uri.params or uri.headers)


def quote_display_name(text: str) -> str:
    """`Doe, "JD" John` -> `"Doe, \\"JD\\" John"`: a quoted-string for `NameAddr.display`."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(inner: str) -> str:
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\" and i + 1 < len(inner):
            i += 1
            c = inner[i]
        out.append(c)
        i += 1
    return "".join(out)


def _check_display(display: str, value: str) -> None:
    """A display name is one quoted-string or unquoted words (RFC 3261 §25.1 display-name).

    Unquoted words are accepted liberally (real UAs put parentheses and dots there), but a
    stray quote means the header cannot be read reliably."""
    if display[0] == '"':
        if _quoted_end(display) != len(display) - 1:
            raise HeaderError(f"malformed quoted display name in {value[:80]!r}")
    elif '"' in display:
        raise HeaderError(f"stray quote in display name in {value[:80]!r}")


@remembered
def parse_name_addr(value: str) -> NameAddr:
    """Parse `"Alice" <sip:a@h>;tag=1`, `<sip:a@h>`, or `sip:a@h;tag=1` (params to the header).
    Remembered, like `parse_uri` (uri.py, PARSED_KEPT)."""
    text = value.strip()
    if text == "*":
        return NameAddr(uri=AbsoluteUri("*", "*"), wildcard=True, bracketed=False)
    lt = _find_unquoted(text, "<")
    try:
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise HeaderError(f"missing '>' in {value[:80]!r}")
            display = text[:lt].strip() or None
            if display is not None:
                _check_display(display, value)
            uri = parse_uri(text[lt + 1 : gt])
            tail = text[gt + 1 :].lstrip()
            if tail and tail[0] != ";":
                raise HeaderError(f"junk after '>' in {value[:80]!r}")
            params = parse_params(tail) if tail else ()
            return NameAddr(uri, display, params, True)
        # addr-spec: the URI cannot carry params or headers; everything after ';' is the header's.
        uri_text, _, ptext = text.partition(";")
        return NameAddr(parse_uri(uri_text), None, parse_params(ptext), False)
    except UriError as exc:
        raise HeaderError(str(exc)) from None


def _quoted_end(text: str) -> int:
    """Index of the quote closing the quoted-string that opens `text`, or -1."""
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    return -1


def _find_unquoted(text: str, ch: str) -> int:
    if '"' not in text:
        return text.find(ch)
    return find_outside_quotes(text, ch)


# -- Via -----------------------------------------------------------------------------------------


@mypyc_attr(acyclic=True)
class Via(Value):
    __slots__ = ("transport", "host", "port", "params", "protocol")

    def __init__(self, transport: str, host: str, port: int | None = None, params: Params = (),
                 protocol: str = "SIP/2.0") -> None:
        self.transport: Final = transport  # upper case as on the wire: UDP, TCP, TLS, WS...
        self.host: Final = host
        self.port: Final = port
        self.params: Final = params
        self.protocol: Final = protocol

    def key(self) -> tuple[str, str, int | None, Params, str]:
        return (self.transport, self.host, self.port, self.params, self.protocol)

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hp}{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None) -> Via:
        return Via(self.transport, self.host, self.port, set_param(self.params, name, value), self.protocol)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def host_bare(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


@remembered
def parse_via(value: str) -> Via:
    """`SIP/2.0/UDP host:port;params`; LWS is allowed around '/' and ':' (RFC 3261 §25.1).
    Remembered, like `parse_uri` (the provisional and final responses of one transaction carry
    the same Via)."""
    parts = value.split("/", 2)
    if len(parts) != 3:
        raise HeaderError(f"malformed Via sent-protocol in {value[:80]!r}")
    name = parts[0].strip()
    version = parts[1].strip()
    tail = parts[2].split(None, 1)
    if len(tail) != 2 or not (_is_token(name) and _is_token(version) and _is_token(tail[0])):
        raise HeaderError(f"malformed Via sent-protocol in {value[:80]!r}")
    transport = tail[0]
    sent_by, sep, ptext = tail[1].partition(";")
    if " " in sent_by or "\t" in sent_by:
        sent_by = "".join(sent_by.split())
    try:
        host, port = split_hostport(sent_by)
        params = parse_params(ptext) if sep else ()
    except UriError as exc:
        raise HeaderError(f"malformed Via sent-by: {exc}") from None
    return Via(transport.upper(), host, port, params, f"{name.upper()}/{version}")


# -- CSeq, Max-Forwards, Replaces, token lists ---------------------------------------------------


@mypyc_attr(acyclic=True)
class CSeq(Value):
    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq: Final = seq
        self.method: Final = method

    def key(self) -> tuple[int, str]:
        return (self.seq, self.method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    seq = ascii_int(parts[0], 10) if len(parts) == 2 else None
    if seq is None or not _is_token(parts[1]):
        raise HeaderError(f"malformed CSeq {value[:40]!r}")
    if seq >= 2**31:  # RFC 3261 §8.1.1.5: less than 2**31
        raise HeaderError(f"CSeq number out of range {value[:40]!r}")
    return CSeq(seq, parts[1])


@mypyc_attr(acyclic=True)
class Replaces(Value):
    """RFC 3891 Replaces: call-id;to-tag=..;from-tag=..[;early-only]."""

    __slots__ = ("call_id", "to_tag", "from_tag", "early_only", "params")

    def __init__(self, call_id: str, to_tag: str, from_tag: str, early_only: bool = False,
                 params: Params = ()) -> None:
        self.call_id: Final = call_id
        self.to_tag: Final = to_tag
        self.from_tag: Final = from_tag
        self.early_only: Final = early_only
        self.params: Final = params

    def key(self) -> tuple[str, str, str, bool, Params]:
        return (self.call_id, self.to_tag, self.from_tag, self.early_only, self.params)

    def __str__(self) -> str:
        # Parameters keep the order they were received in (so a parsed Replaces is written back
        # as it came); the three RFC 3891 ones always reflect the fields.
        missing = {"to-tag": True, "from-tag": True, "early-only": self.early_only}
        rest: list[tuple[str, str | None]] = []
        for k, v in self.params:
            lk = k.lower()
            if lk == "to-tag" or lk == "from-tag" or lk == "early-only":
                if missing[lk]:
                    missing[lk] = False
                    value = self.to_tag if lk == "to-tag" else self.from_tag if lk == "from-tag" else v
                    rest.append((k, value))
                continue
            rest.append((k, v))
        head: list[tuple[str, str | None]] = []
        if missing["to-tag"]:
            head.append(("to-tag", self.to_tag))
        if missing["from-tag"]:
            head.append(("from-tag", self.from_tag))
        if missing["early-only"]:
            head.append(("early-only", None))
        return self.call_id + format_params(tuple(head + rest))


def parse_replaces(value: str) -> Replaces:
    """`call-id;to-tag=a;from-tag=b[;early-only]` (the decoded value of a Replaces header or of
    a Refer-To URI's `?Replaces=`)."""
    call_id, _, ptext = value.strip().partition(";")
    call_id = call_id.strip()
    try:
        params = parse_params(ptext)
    except UriError as exc:
        raise HeaderError(f"malformed Replaces: {exc}") from None
    to_tag = find_param(params, "to-tag")[1]
    from_tag = find_param(params, "from-tag")[1]
    if not call_id or to_tag is None or from_tag is None:
        raise HeaderError(f"Replaces needs call-id, to-tag and from-tag: {value[:80]!r}")
    return Replaces(call_id, to_tag, from_tag, find_param(params, "early-only")[0], params)


@mypyc_attr(acyclic=True)
class TargetDialog(Value):
    """RFC 4538 Target-Dialog: `call-id;local-tag=..;remote-tag=..`.

    The tags name the dialog as the *recipient* of the request knows it (local-tag is the
    recipient's own tag), as Replaces does with to-tag/from-tag (RFC 3891 §3): the sender may be a
    third party that only learnt the dialog's identifiers, so only the recipient's view is common
    ground. `matches` compares against the recipient's dialog."""

    __slots__ = ("call_id", "local_tag", "remote_tag", "params")

    def __init__(self, call_id: str, local_tag: str, remote_tag: str, params: Params = ()) -> None:
        self.call_id: Final = call_id
        self.local_tag: Final = local_tag
        self.remote_tag: Final = remote_tag
        self.params: Final = params

    def key(self) -> tuple[str, str, str, Params]:
        return (self.call_id, self.local_tag, self.remote_tag, self.params)

    def __str__(self) -> str:
        # Received parameter order is kept (as for Replaces); the two tags always reflect the fields.
        missing = {"local-tag": self.local_tag, "remote-tag": self.remote_tag}
        out: list[tuple[str, str | None]] = []
        for k, v in self.params:
            lk = k.lower()
            if lk not in ("local-tag", "remote-tag"):
                out.append((k, v))
            elif lk in missing:  # a repeated tag parameter is written once
                out.append((k, missing.pop(lk)))
        return self.call_id + format_params((*missing.items(), *out))

    def matches(self, call_id: str, our_local_tag: str, our_remote_tag: str | None) -> bool:
        """True when this names the recipient's dialog (call_id, our_local_tag, our_remote_tag)."""
        return (self.call_id == call_id and self.local_tag == our_local_tag
                and self.remote_tag == our_remote_tag)


def parse_target_dialog(value: str) -> TargetDialog:
    """`call-id;local-tag=a;remote-tag=b` (RFC 4538 §7). Both tags are required: without them the
    header cannot name one dialog."""
    call_id, _, ptext = value.strip().partition(";")
    call_id = call_id.strip()
    try:
        params = parse_params(ptext)
    except UriError as exc:
        raise HeaderError(f"malformed Target-Dialog: {exc}") from None
    local_tag = find_param(params, "local-tag")[1]
    remote_tag = find_param(params, "remote-tag")[1]
    if not call_id or not local_tag or not remote_tag:
        raise HeaderError(f"Target-Dialog needs call-id, local-tag and remote-tag: {value[:80]!r}")
    return TargetDialog(call_id, local_tag, remote_tag, params)


def parse_token_list(values: list[str]) -> list[str]:
    """Option tags and method lists (Require, Supported, Allow) as lower-case tokens."""
    out: list[str] = []
    for v in values:
        out.extend(t.strip().lower() for t in v.split(",") if t.strip())
    return out


__all__ = [
    "CSeq", "HeaderError", "LIST_HEADERS", "NameAddr", "Replaces", "TargetDialog", "Via", "canonical_name",
    "parse_cseq", "parse_name_addr", "parse_replaces", "parse_target_dialog", "parse_token_list", "parse_via",
    "quote_display_name", "split_list",
]

