"""Property tests: generated messages round-trip; garbage and mutations only raise ParseError."""

from __future__ import annotations

import contextlib
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b2bua.sip.headers import HeaderError, quote_display_name
from b2bua.sip.message import Headers, Request, Response
from b2bua.sip.parser import FramingError, ParseError, StreamFramer, parse_message
from b2bua.sip.uri import SipUri, UriError, escape_header_value, parse_uri

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
alnum = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(1, 65535)

# user: unreserved and user-unreserved characters, plus %-escapes of anything
user_chars = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
escapes = st.binary(min_size=1, max_size=2).map(lambda b: "".join(f"%{x:02X}" for x in b))
users = st.lists(st.one_of(st.text(user_chars, min_size=1, max_size=6), escapes), min_size=1, max_size=3).map(
    "".join
)
param_value_chars = string.ascii_letters + string.digits + "-_.!~*'()[]/:&+$"
uri_params = st.lists(
    st.tuples(tokens, st.none() | st.text(param_value_chars, min_size=1, max_size=8)), max_size=4
).map(tuple)
uri_headers = st.lists(
    st.tuples(
        st.text(string.ascii_letters + "-", min_size=1, max_size=8), st.text(max_size=12).map(escape_header_value)
    ),
    max_size=3,
).map(tuple)


@st.composite
def sip_uris(draw: st.DrawFn, with_headers: bool = True) -> SipUri:
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=draw(st.none() | users),
        password=None,
        host=draw(hosts),
        port=draw(ports),
        params=draw(uri_params),
        headers=draw(uri_headers) if with_headers else (),
    )


# Unknown-header values: any text on one line, no LWS at the edges (LWS there is not part of it).
line_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
).map(lambda s: s.strip(" \t"))
display_names = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12).map(quote_display_name),
    st.lists(tokens, min_size=1, max_size=3).map(" ".join),
)
methods = st.one_of(st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REFER", "NOTIFY"]), tokens)


@st.composite
def name_addrs(draw: st.DrawFn, tag: bool) -> str:
    uri = draw(sip_uris())
    display = draw(display_names)
    head = f"{display} <{uri}>" if display is not None else f"<{uri}>"
    if tag:
        head += f";tag={draw(alnum)}"
    return head


@st.composite
def common_headers(draw: st.DrawFn, method: str) -> list[tuple[str, str]]:
    vias = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {draw(hosts)}"
        + (f":{p}" if (p := draw(ports)) else "")
        + f";branch=z9hG4bK{draw(alnum)}"
        + draw(st.sampled_from(["", ";rport", ";received=192.0.2.1;rport=5060"]))
        for _ in range(draw(st.integers(1, 3)))
    ]
    items: list[tuple[str, str]] = []
    if draw(st.booleans()):
        items.append((draw(st.sampled_from(["Via", "v"])), ", ".join(vias)))
    else:
        items.extend(("Via", v) for v in vias)
    items += [
        (draw(st.sampled_from(["From", "f"])), draw(name_addrs(tag=True))),
        (draw(st.sampled_from(["To", "t"])), draw(name_addrs(tag=draw(st.booleans())))),
        (draw(st.sampled_from(["Call-ID", "i", "call-id"])), f"{draw(alnum)}@{draw(hostnames)}"),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    if draw(st.booleans()):
        items.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    extra = draw(st.lists(st.tuples(tokens.map(lambda t: "X-" + t), line_text), max_size=4))
    items += extra
    if draw(st.booleans()):
        items.append(("Contact", draw(name_addrs(tag=False))))
    order = draw(st.permutations(range(len(items))))
    return [items[i] for i in order]


bodies = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"v=0\r\n\r\n--b\r\n\r\n"))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(methods)
    uri = draw(sip_uris(with_headers=False))
    return Request(method, uri, Headers(draw(common_headers(method))), draw(bodies))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(methods)
    reason = draw(line_text)
    return Response(draw(st.integers(100, 699)), reason, Headers(draw(common_headers(method))), draw(bodies))


def without_cl(h: Headers) -> list[tuple[str, str]]:
    return list(h.remove("Content-Length"))


def core_accessors_work(m: Request) -> None:
    assert m.vias
    _ = (m.top_via, m.cseq, m.call_id, m.from_, m.to, m.from_tag, m.to_tag, m.max_forwards, m.branch)
    with contextlib.suppress(HeaderError, UriError):  # the only errors these may raise
        _ = (m.contacts, m.record_route)


@FAST
@given(requests())
def test_request_round_trip(m: Request) -> None:
    data = m.serialize()
    p = parse_message(data)
    assert isinstance(p, Request)
    assert p.method == m.method and str(p.uri) == str(m.uri) and p.uri == m.uri
    assert without_cl(p.headers) == without_cl(m.headers)
    assert p.body == m.body
    assert p.serialize() == data
    core_accessors_work(p)
    assert p.from_ == m.from_ and p.to == m.to and p.vias == m.vias and p.cseq == m.cseq


@FAST
@given(responses())
def test_response_round_trip(m: Response) -> None:
    data = m.serialize()
    p = parse_message(data)
    assert isinstance(p, Response)
    assert (p.status, p.reason, p.body) == (m.status, m.reason, m.body)
    assert without_cl(p.headers) == without_cl(m.headers)
    assert p.serialize() == data


@FAST
@given(sip_uris())
def test_uri_round_trip(uri: SipUri) -> None:
    text = str(uri)
    assert parse_uri(text) == uri
    assert str(parse_uri(text)) == text


def parse_safely(data: bytes) -> None:
    try:
        m = parse_message(data)
    except ParseError as exc:
        assert exc.reason
        assert exc.status in (0, 400, 505)
        if exc.status:
            assert exc.request is not None
            assert not any(c in exc.reason for c in '"<>\\\r\n')
        return
    if isinstance(m, Request):
        core_accessors_work(m)
        m.serialize()
    else:
        _ = (m.vias, m.cseq, m.call_id, m.from_, m.to)
        m.serialize()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes(data: bytes) -> None:
    parse_safely(data)


SIP_ALPHABET = st.sampled_from(
    [b"\r\n", b"\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"/", b"=", b"%",
     b"[", b"]", b"?", b"&", b"SIP/2.0", b"sip:", b"Via", b"v", b"i", b"l", b"0", b"9", b"\xff", b"\xc2\xb2",
     b"\x00", b"\r\n ", b"99999999999999999999", b"-"]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    m = draw(st.one_of(requests(), responses()))
    data = bytearray(m.serialize())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(SIP_ALPHABET)
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    parse_safely(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 400), max_size=5))
def test_framer_reassembles_any_split(msgs: list[Request], cuts: list[int]) -> None:
    stream = b"".join(m.serialize() for m in msgs)
    points = sorted({min(c, len(stream)) for c in cuts})
    f = StreamFramer()
    out: list[bytes] = []
    prev = 0
    for c in [*points, len(stream)]:
        out += f.feed(stream[prev:c])
        prev = c
    assert out == [m.serialize() for m in msgs]
    assert f.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_framer_garbage(data: bytes) -> None:
    f = StreamFramer(max_message_size=300)
    try:
        for frame in f.feed(data):
            if frame != StreamFramer.KEEPALIVE_PING:
                parse_safely(frame)
    except FramingError:
        pass
