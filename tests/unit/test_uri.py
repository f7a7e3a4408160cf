"""SIP/SIPS/tel URIs: parts, parameters, embedded headers and exact round trips."""

from __future__ import annotations

import pytest

from b2bua.sip.headers import parse_replaces
from b2bua.sip.uri import (
    AbsoluteUri,
    SipUri,
    UriError,
    ascii_int,
    escape_header_value,
    is_token,
    parse_params,
    parse_uri,
    split_hostport,
    split_outside_quotes,
    unescape,
)


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:carol@chicago.example.org",
        "sips:carol@chicago.example.org:5061",
        "sip:carol:secret@chicago.example.org",
        "sip:10.1.2.3",
        "sip:10.1.2.3:5070;transport=tcp",
        "sip:[2001:db8::10]",
        "sip:[2001:db8::10]:5070",
        "sip:dave@[2001:db8::a:b]:5070;transport=tcp;lr",
        "sip:proxy7.example.net;lr",
        "sip:gw.example.net;maddr=239.255.255.1;ttl=15;method=INVITE",
        "sip:+15551230000;phone-context=example.net@gw.example.net;user=phone",
        "sip:ann%20lee@example.com",
        "sip:ann@example.com;X-Odd-Param;other=%41b",
        "sip:bob@biloxi.example.org?Replaces=z71%40host7%3Bto-tag%3Dab1%3Bfrom-tag%3Dcd2",
        "sip:bob@biloxi.example.org;method=REFER?Subject=hi%20there&Priority=urgent",
        "sip:bob@biloxi.example.org?X-Empty=",
        "sip:host-with-dash.example.com.",
        "sip:_sip._udp.example.com",
    ],
)
def test_round_trip_exact(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_parts() -> None:
    u = sip("sips:alice:pw@Atlanta.Example.COM:5061;transport=TCP;lr;maddr=10.0.0.1")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sips", "alice", "pw", "Atlanta.Example.COM", 5061)
    assert u.params == (("transport", "TCP"), ("lr", None), ("maddr", "10.0.0.1"))
    assert u.transport == "tcp"
    assert u.has_param("LR") and u.param("lr") is None
    assert u.param("MADDR") == "10.0.0.1"
    assert not u.has_param("ttl")


def test_scheme_case_insensitive_and_default_transport() -> None:
    assert sip("SIP:a@h").scheme == "sip"
    assert sip("sip:a@h").transport == "udp"
    assert sip("sips:a@h").transport == "tls"


def test_ipv6() -> None:
    u = sip("sip:[2001:db8::1]:5080")
    assert u.host == "[2001:db8::1]" and u.port == 5080 and u.host_bare == "2001:db8::1"
    u = sip("sip:user@[::ffff:192.0.2.1]")
    assert u.port is None and u.host_bare == "::ffff:192.0.2.1"


def test_user_with_semicolon_and_escapes() -> None:
    u = sip("sip:user;par=u%40example.net@example.com")
    assert u.user == "user;par=u%40example.net"
    assert u.host == "example.com"
    assert u.user_unescaped == "user;par=u@example.net"
    assert sip("sip:sips%3Auser%40example.com@example.net").user_unescaped == "sips:user@example.com"


def test_headers_decoding_replaces() -> None:
    u = sip("sip:bob@b.example.org?Replaces=71x%40pc33%3Bto-tag%3D9a%3Bfrom-tag%3D8b%3Bearly-only")
    assert u.headers == (("Replaces", "71x%40pc33%3Bto-tag%3D9a%3Bfrom-tag%3D8b%3Bearly-only"),)
    value = u.header("replaces")
    assert value == "71x@pc33;to-tag=9a;from-tag=8b;early-only"
    r = parse_replaces(value)
    assert (r.call_id, r.to_tag, r.from_tag, r.early_only) == ("71x@pc33", "9a", "8b", True)
    assert u.header("Missing") is None
    assert str(u.without_headers()) == "sip:bob@b.example.org"


def test_escape_header_value_round_trip() -> None:
    raw = "71x@pc33;to-tag=9a;from-tag=8b"
    esc = escape_header_value(raw)
    assert "@" not in esc and ";" not in esc and "=" not in esc
    uri = sip(f"sip:bob@h?Replaces={esc}")
    assert uri.header("Replaces") == raw
    assert str(parse_uri(str(uri))) == str(uri)
    # Text decoded from a peer's invalid UTF-8 must not make escaping raise.
    assert escape_header_value(b"a\xffb".decode("utf-8", "surrogateescape")) == "a%FFb"


def test_with_and_without_param() -> None:
    u = sip("sip:a@h;transport=udp")
    u2 = u.with_param("transport", "tcp").with_param("lr")
    assert str(u2) == "sip:a@h;transport=tcp;lr"
    assert str(u2.without_param("TRANSPORT")) == "sip:a@h;lr"
    assert str(u) == "sip:a@h;transport=udp"  # immutable


def test_tel_and_other_schemes_kept_whole() -> None:
    for text in ("tel:+1-201-555-0123;phone-context=+1", "urn:service:sos", "http://x.example/a?b=c"):
        u = parse_uri(text)
        assert isinstance(u, AbsoluteUri)
        assert str(u) == text
    assert parse_uri("TEL:+1").scheme == "tel"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no-scheme-here",
        "sip:",
        "sip:@host",
        "sip:alice@",
        "sip:alice@host:",
        "sip:alice@host:0",
        "sip:alice@host:65536",
        "sip:alice@host:50a",
        "sip:alice@host:\u00b2",  # superscript two: isdigit() but not a port
        "sip:alice@host:" + "9" * 5000,
        "sip:alice@ho st",
        "sip:alice@host:5060:5061",
        "sip:alice@-host",
        "sip:alice@host-",
        "sip:alice@a..b",
        "sip:alice@.host",
        "sip:alice@ho/st",
        "sip:alice@[2001:db8::1",
        "sip:alice@[2001:db8::1]x",
        "sip:alice@[2001:db8::1]:",
        "sip:alice@[zz::1]",
        "sip:alice@[1:2:3:4:5:6:7:8:9]",
        "sip:alice@host;;lr",
        "sip:alice@host;",
        "sip:alice@host;=x",
        "sip:alice@host?",
        "sip:alice@host?novalue",
        "sip:alice@host?a=b&",
        "sip:al<ice@host",
        'sip:"alice"@host',
        "sip:alice@host\tx",
        "tel:+1 555",
    ],
)
def test_errors(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_split_hostport() -> None:
    assert split_hostport("example.com") == ("example.com", None)
    assert split_hostport("example.com:5060") == ("example.com", 5060)
    assert split_hostport("[::1]:5060") == ("[::1]", 5060)
    with pytest.raises(UriError):
        split_hostport("")


def test_params_helpers() -> None:
    assert parse_params(";a=1; b ;c = \"x;y\"") == (("a", "1"), ("b", None), ("c", '"x;y"'))
    with pytest.raises(UriError):
        parse_params(";=1")
    assert split_outside_quotes('a,"b,c",<d,e>,f', ",") == ["a", '"b,c"', "<d,e>", "f"]
    assert split_outside_quotes('"a\\",b",c', ",") == ['"a\\",b"', "c"]


def test_small_helpers() -> None:
    assert unescape("a%20b") == "a b" and unescape("plain") == "plain"
    assert unescape("%zz") == "%zz"
    assert is_token("INVITE") and is_token("!interesting-Method0123456789_*+`.%indeed'~")
    assert not is_token("IN VITE") and not is_token("") and not is_token("A\n")
    assert ascii_int("0068", 3) is None and ascii_int("068", 3) == 68
    assert ascii_int("\u0661", 3) is None and ascii_int("", 3) is None
