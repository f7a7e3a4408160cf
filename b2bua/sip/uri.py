"""SIP, SIPS and other absolute URIs (RFC 3261 §19.1, §25.1).

How this works: `parse_uri` splits a URI into its parts but keeps every part in its *escaped* wire
form, so `str(parse_uri(s)) == s` for any URI we accept. That matters for a transfer server: a
Refer-To such as `<sip:bob@host?Replaces=abc%40pc%3Bto-tag%3D1%3Bfrom-tag%3D2>` must reach the next
hop byte for byte. Callers that need the decoded value of a user part or an embedded header ask for
it explicitly (`unescape`, `SipUri.header`). URIs of schemes other than sip/sips (tel, urn, http...)
are kept whole as `AbsoluteUri`; the daemon decides whether it supports them (416 otherwise).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

from mypy_extensions import mypyc_attr

from ..value import Value

Params = tuple[tuple[str, str | None], ...]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+\-.]*):")
# Hostnames: letters, digits, '-', '.' (and '_', seen in the wild); label rules are checked in
# `_valid_host` without a backtracking regex, since hosts come from peers and may be long.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Never legal unescaped inside a SIP URI; seeing one means the URI (or its framing) is broken.
_URI_BAD_CHARS = re.compile(r'[\s<>"]')


class UriError(ValueError):
    """A URI that does not follow the grammar; the message names what is wrong."""


def unescape(text: str) -> str:
    """%-decode a URI component (user part, parameter or header value)."""
    return unquote(text) if "%" in text else text


def escape_header_value(text: str) -> str:
    """%-encode a value for a URI `?header=value` (RFC 3261 §19.1.1 hvalue).

    Text decoded from a peer's bytes may hold surrogate escapes; they go back out as the original
    bytes rather than raising."""
    return quote(text.encode("utf-8", "surrogateescape"), safe="[]/?:+$!*'()-_.~")


def ascii_int(text: str, max_digits: int) -> int | None:
    """`text` as a non-negative int if it is 1..max_digits ASCII digits, else None.

    `str.isdigit` alone accepts '²' or Arabic-Indic digits (int() then raises or surprises), and
    int() refuses very long digit strings; peers send both."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_params(text: str) -> Params:
    """Parse `;a=b;c` (the leading ';' optional) into ordered (name, value|None) pairs.

    Quoted values (`;+sip.instance="<urn:...>"`) keep their quotes so they serialize unchanged.
    """
    out: list[tuple[str, str | None]] = []
    for part in split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not name:
            raise UriError(f"empty parameter name in {text[:80]!r}")
        out.append((name, value.strip() if sep else None))
    return tuple(out)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def find_param(params: Params, name: str) -> tuple[bool, str | None]:
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return True, v
    return False, None


def set_param(params: Params, name: str, value: str | None) -> Params:
    lname = name.lower()
    out = [(k, v) for k, v in params if k.lower() != lname]
    out.append((name, value))
    return tuple(out)


def drop_param(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple((k, v) for k, v in params if k.lower() != lname)


def find_outside_quotes(text: str, ch: str, start: int = 0, *, in_angles: bool = True) -> int:
    """Index of the first `ch` at or after `start` that is outside double quotes (which may hold
    backslash escapes) and, unless `in_angles`, outside <...>; -1 if none."""
    in_quotes = False
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == ch and (in_angles or depth == 0):
            return i
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        i += 1
    return -1


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` except inside double quotes (with backslash escapes) and <...>."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    while (i := find_outside_quotes(text, sep, start, in_angles=False)) >= 0:
        parts.append(text[start:i])
        start = i + 1
    parts.append(text[start:])
    return parts


@mypyc_attr(acyclic=True)
class AbsoluteUri(Value):
    """A URI of a scheme we do not interpret (tel:, urn:, http: ...), kept verbatim."""

    __slots__ = ("scheme", "raw")

    def __init__(self, scheme: str, raw: str) -> None:
        self.scheme: Final = scheme
        self.raw: Final = raw

    def key(self) -> tuple[str, str]:
        return (self.scheme, self.raw)

    def __str__(self) -> str:
        return self.raw


@mypyc_attr(acyclic=True)
class SipUri(Value):
    """A sip: or sips: URI. `user`, params and headers stay in escaped wire form."""

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers")

    def __init__(self, scheme: str = "sip", user: str | None = None, password: str | None = None,
                 host: str = "", port: int | None = None, params: Params = (),
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.scheme: Final = scheme
        self.user: Final = user
        self.password: Final = password
        self.host: Final = host
        self.port: Final = port
        self.params: Final = params
        self.headers: Final = headers

    def key(self) -> tuple[str, str | None, str | None, str, int | None, Params, tuple[tuple[str, str], ...]]:
        return (self.scheme, self.user, self.password, self.host, self.port, self.params, self.headers)

    def _with(self, params: Params, headers: tuple[tuple[str, str], ...]) -> SipUri:
        return SipUri(self.scheme, self.user, self.password, self.host, self.port, params, headers)

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        if self.params:
            parts.append(format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(parts)

    # -- parameters ---------------------------------------------------------------------
    def param(self, name: str) -> str | None:
        return find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        return self._with(set_param(self.params, name, value), self.headers)

    def without_param(self, name: str) -> SipUri:
        return self._with(drop_param(self.params, name), self.headers)

    def header(self, name: str) -> str | None:
        """Decoded value of an embedded `?name=value` header (case-insensitive name)."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return unescape(v)
        return None

    def with_headers(self, headers: tuple[tuple[str, str], ...]) -> SipUri:
        """This URI with its embedded `?name=value` headers replaced (escaped wire form)."""
        return self._with(self.params, headers)

    def without_headers(self) -> SipUri:
        return self._with(self.params, ())

    @property
    def transport(self) -> str:
        """The transport the URI asks for (RFC 3263 default: udp for sip:, tcp for sips:)."""
        t = self.param("transport")
        if t:
            return t.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def host_bare(self) -> str:
        """Host without IPv6 brackets, as socket calls want it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)


Uri = SipUri | AbsoluteUri


T = TypeVar("T")

# Parsed URIs and name-addrs are immutable values, and the same text comes back again and again:
# a dialog's From and To in each of its messages, our own Contact as the Request-URI of every ACK
# and BYE sent to us. So the last few thousand parses are remembered (functools.lru_cache, keyed by
# the text; a refused text is not remembered and raises each time). A hit costs ~0.1 us against
# 10-20 us to parse. Only texts up to PARSED_KEPT_LEN characters are remembered, so a peer sending
# huge headers cannot make the caches hold more than a few megabytes. Vias are remembered the same
# way (headers.py). `forget_parsed` empties all three (after a load peak: b2bua/trim.py through
# Core.compact).
PARSED_KEPT = 4096
PARSED_KEPT_LEN = 256


_REMEMBERED: list[Any] = []


def forget_parsed() -> None:
    """Empty the remembered parses: after a load peak they are the last calls' objects, kept for
    nothing, scattered through memory the allocator could give back."""
    for cached in _REMEMBERED:
        cached.cache_clear()


def remembered(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse`, with its results for short texts remembered (see PARSED_KEPT); `.cache` is the
    lru_cache wrapper (cache_clear, cache_info)."""
    cached = functools.lru_cache(maxsize=PARSED_KEPT)(parse)
    _REMEMBERED.append(cached)

    @functools.wraps(parse)
    def parse_text(text: str) -> T:
        return cached(text) if len(text) <= PARSED_KEPT_LEN else parse(text)

    parse_text.cache = cached  # type: ignore[attr-defined]
    return parse_text


@remembered
def parse_uri(text: str) -> Uri:
    """Parse a URI; raises UriError naming the problem. Remembered (see PARSED_KEPT)."""
    text = text.strip()
    m = _SCHEME_RE.match(text)
    if not m:
        raise UriError(f"URI has no scheme: {text[:80]!r}")
    bad = _URI_BAD_CHARS.search(text)
    if bad is not None:
        raise UriError(f"URI contains {bad.group()!r}: {text[:80]!r}")
    scheme = m.group(1).lower()
    if scheme not in ("sip", "sips"):
        return AbsoluteUri(scheme, text)
    rest = text[m.end():]
    if not rest:
        raise UriError("SIP URI has no host")

    headers: tuple[tuple[str, str], ...] = ()
    at = rest.find("@")
    qpos = rest.find("?", at + 1 if at >= 0 else 0)
    if qpos >= 0:
        hpart = rest[qpos + 1:]
        rest = rest[:qpos]
        hdrs = []
        # RFC 3261 §19.1.1: header = hname "=" hvalue, joined by '&'. Anything else could not be
        # written back byte for byte, so it is refused rather than silently normalised.
        for item in hpart.split("&"):
            k, sep, v = item.partition("=")
            if not k or not sep:
                raise UriError(f"malformed URI header {item[:40]!r}")
            hdrs.append((k, v))
        headers = tuple(hdrs)

    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
        else:
            user = userinfo
        if user == "":
            raise UriError("SIP URI has an empty user part before '@'")

    hostport, sep, ptext = rest.partition(";")
    params = _parse_uri_params(ptext) if sep else ()
    host, port = split_hostport(hostport)
    return SipUri(scheme, user, password, host, port, params, headers)


def _parse_uri_params(text: str) -> Params:
    """URI parameters, strictly: every `;` starts a non-empty `name[=value]`. No LWS, quotes or
    brackets reach here (`parse_uri` refuses them), so a plain split is exact."""
    out: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if not name:
            raise UriError(f"empty URI parameter in {text[:80]!r}")
        out.append((name, value if sep else None))
    return tuple(out)


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return (
        _HOSTNAME_RE.fullmatch(host) is not None
        and host[0] not in ".-"
        and host[-1] != "-"
        and ".." not in host
        and ".-" not in host
        and "-." not in host
    )


def split_hostport(hostport: str) -> tuple[str, int | None]:
    """`host[:port]` with IPv6 references in brackets; raises UriError."""
    hostport = hostport.strip()
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UriError(f"unterminated IPv6 reference in {hostport[:80]!r}")
        host, tail = hostport[: end + 1], hostport[end + 1:]
        port_text = tail[1:] if tail.startswith(":") else None
        if tail and port_text is None:
            raise UriError(f"junk after IPv6 reference in {hostport[:80]!r}")
    else:
        host, sep, port_text_s = hostport.partition(":")
        port_text = port_text_s if sep else None
    if not host or not _valid_host(host):
        raise UriError(f"invalid host {host[:80]!r}")
    port = None
    if port_text is not None:
        port = ascii_int(port_text, 5)
        if port is None or not 0 < port < 65536:
            raise UriError(f"invalid port {port_text[:20]!r}")
    return host, port


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None
