"""Header names, structured header values (name-addr, Via, CSeq, Replaces, Target-Dialog) and splitting."""

from __future__ import annotations

import pytest

from b2bua.sip.headers import (
    CSeq,
    HeaderError,
    NameAddr,
    Replaces,
    TargetDialog,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_replaces,
    parse_target_dialog,
    parse_token_list,
    parse_via,
    quote_display_name,
    split_list,
)
from b2bua.sip.uri import AbsoluteUri, SipUri, parse_uri


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("v", "Via"), ("V", "Via"), ("i", "Call-ID"), ("call-id", "Call-ID"), ("CALL-ID", "Call-ID"),
        ("f", "From"), ("t", "To"), ("m", "Contact"), ("l", "Content-Length"), ("c", "Content-Type"),
        ("k", "Supported"), ("r", "Refer-To"), ("b", "Referred-By"), ("o", "Event"),
        ("cseq", "CSeq"), ("www-authenticate", "WWW-Authenticate"), ("max-forwards", "Max-Forwards"),
        ("X-Unknown-Thing", "X-Unknown-Thing"), ("x-unknown-thing", "x-unknown-thing"),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


# -- name-addr / addr-spec ------------------------------------------------------------------------


def test_name_addr_params_belong_to_header_outside_brackets() -> None:
    na = parse_name_addr("<sip:alice@atlanta.example.com;transport=tcp>;tag=88sja8x")
    assert isinstance(na.uri, SipUri)
    assert na.uri.params == (("transport", "tcp"),)
    assert na.params == (("tag", "88sja8x"),)
    assert na.tag == "88sja8x" and na.bracketed and na.display is None


def test_addr_spec_params_belong_to_header() -> None:
    na = parse_name_addr("sip:alice@atlanta.example.com;tag=88sja8x;transport=tcp")
    assert na.uri == parse_uri("sip:alice@atlanta.example.com")
    assert na.params == (("tag", "88sja8x"), ("transport", "tcp"))
    assert not na.bracketed
    assert str(na) == "sip:alice@atlanta.example.com;tag=88sja8x;transport=tcp"


def test_quoted_display_with_escapes_and_commas() -> None:
    na = parse_name_addr('"Lee, \\"Ann\\" \\\\ Sales" <sip:ann@example.com>;tag=7')
    assert na.display == '"Lee, \\"Ann\\" \\\\ Sales"'
    assert na.display_name == 'Lee, "Ann" \\ Sales'
    assert na.tag == "7"
    assert parse_name_addr(str(na)) == na


def test_display_forms() -> None:
    assert parse_name_addr("Bob <sip:bob@b.example>").display_name == "Bob"
    assert parse_name_addr("caller<sip:caller@example.com>;tag=1").display == "caller"
    assert parse_name_addr('"" <sip:x@h>').display_name == ""
    assert parse_name_addr('"a <b>" <sip:x@h>').uri == parse_uri("sip:x@h")
    assert quote_display_name('Doe, "JD"') == '"Doe, \\"JD\\""'
    quoted = quote_display_name("x\\y")
    assert parse_name_addr(quoted + " <sip:h>").display_name == "x\\y"


def test_name_addr_serialization() -> None:
    na = NameAddr(parse_uri("sip:a@h;lr"), bracketed=False)
    assert str(na) == "<sip:a@h;lr>"  # URI params force brackets
    na = NameAddr(parse_uri("sip:a@h"), display='"A"', params=(("tag", "1"),))
    assert str(na) == '"A" <sip:a@h>;tag=1'
    assert str(na.with_param("tag", "2")) == '"A" <sip:a@h>;tag=2'
    assert str(parse_name_addr("*")) == "*" and parse_name_addr(" * ").wildcard


def test_name_addr_header_params_with_quotes_and_lws() -> None:
    na = parse_name_addr('<sip:a@h> ; +sip.instance="<urn:uuid:1;2>" ; q = 0.5 ;expires=60')
    assert na.param("+sip.instance") == '"<urn:uuid:1;2>"'
    assert na.param("q") == "0.5" and na.param("expires") == "60"


def test_name_addr_non_sip_uri() -> None:
    na = parse_name_addr("<tel:+15551234>;tag=x")
    assert isinstance(na.uri, AbsoluteUri) and na.tag == "x"
    with pytest.raises(HeaderError):
        _ = na.sip_uri


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<sip:a@h",
        "<>",
        "<sip:a@h> junk;tag=1",
        '"unterminated <sip:a@h>',
        '"a" b <sip:a@h>',
        'a"b <sip:a@h>',
        "<sip:a@h:99999>",
        "<sip:a b@h>",
        "sip:a@h;=x",
        "no uri at all",
    ],
)
def test_name_addr_errors(text: str) -> None:
    with pytest.raises(HeaderError):
        parse_name_addr(text)


def test_split_list_respects_quotes_and_brackets() -> None:
    value = '"Doe, John" <sip:j@h;a=1,2>;q=1, <sip:k@h>,sip:l@h;tag=x , "x\\",y" <sip:m@h>'
    assert split_list(value) == [
        '"Doe, John" <sip:j@h;a=1,2>;q=1',
        "<sip:k@h>",
        "sip:l@h;tag=x",
        '"x\\",y" <sip:m@h>',
    ]
    assert split_list(" a ,, b,") == ["a", "b"]


# -- Via ------------------------------------------------------------------------------------------


def test_via_basic() -> None:
    v = parse_via("SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776asdhds;rport")
    assert (v.protocol, v.transport, v.host, v.port) == ("SIP/2.0", "UDP", "pc33.atlanta.example.com", 5066)
    assert v.branch == "z9hG4bK776asdhds" and v.has_param("rport") and v.param("rport") is None
    assert str(v) == "SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776asdhds;rport"


def test_via_ipv6_lws_received_rport() -> None:
    v = parse_via("SIP / 2.0 / tcp   [2001:db8::9] : 5070 ; branch = z9hG4bKx ; received=2001:db8::1;rport=5071")
    assert v.transport == "TCP" and v.host == "[2001:db8::9]" and v.host_bare == "2001:db8::9"
    assert v.port == 5070 and v.branch == "z9hG4bKx"
    assert v.param("received") == "2001:db8::1" and v.param("rport") == "5071"
    v2 = v.with_param("received", "192.0.2.4")
    assert str(v2).endswith(";rport=5071;received=192.0.2.4")
    assert parse_via(str(v2)) == v2


def test_via_tab_separator_and_unknown_transport() -> None:
    v = parse_via("SIP/2.0/SCTP\thost.example;branch=z9hG4bK1")
    assert v.transport == "SCTP" and v.port is None
    assert parse_via(str(Via("UDP", "h", 5060, (("branch", "b"),)))).port == 5060


@pytest.mark.parametrize(
    "text",
    [
        "", "SIP/2.0", "SIP/2.0/UDP", "SIP/2.0/UDP ", "SIP/2.0/UDP ;branch=1", "SIP/2.0 UDP host",
        "SIP//UDP host", "SIP/2.0/UDP host:port", "SIP/2.0/UDP [::1", "SIP/2.0/UDP host;=x",
        "SIP/2.0/UDP host:\u0665", "SIP/2.0/U<P host",
    ],
)
def test_via_errors(text: str) -> None:
    with pytest.raises(HeaderError):
        parse_via(text)


# -- CSeq -----------------------------------------------------------------------------------------


def test_cseq() -> None:
    assert parse_cseq("4711 INVITE") == CSeq(4711, "INVITE")
    assert parse_cseq("  0009   INVITE ") == CSeq(9, "INVITE")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    assert parse_cseq("2147483647 ACK").seq == 2**31 - 1


@pytest.mark.parametrize(
    "text",
    ["", "INVITE", "1", "1 INVITE extra", "-1 INVITE", "x INVITE", "2147483648 INVITE",
     "12345678901 INVITE", "\u00b2 INVITE", "1 IN<VITE", "9" * 5000 + " INVITE"],
)
def test_cseq_errors(text: str) -> None:
    with pytest.raises(HeaderError):
        parse_cseq(text)


# -- Replaces -------------------------------------------------------------------------------------


def test_replaces_parse_serialize() -> None:
    r = parse_replaces("425928@bobster.example.org;to-tag=7743;from-tag=6472")
    assert r == Replaces("425928@bobster.example.org", "7743", "6472", False, r.params)
    assert str(r) == "425928@bobster.example.org;to-tag=7743;from-tag=6472"
    assert not r.early_only


def test_replaces_early_only_and_order_preserved() -> None:
    text = "98732@sip.example.com;from-tag=r33th4x0r;early-only;x-extra=1;to-tag=ff87ff"
    r = parse_replaces(text)
    assert r.early_only and r.to_tag == "ff87ff" and r.from_tag == "r33th4x0r"
    assert str(r) == text
    assert parse_replaces(str(r)) == r


def test_replaces_constructed() -> None:
    assert str(Replaces("c@h", "t", "f", early_only=True)) == "c@h;to-tag=t;from-tag=f;early-only"
    assert str(Replaces("c@h", "t", "f")) == "c@h;to-tag=t;from-tag=f"
    r = parse_replaces("c@h;to-tag=t;from-tag=f;early-only")
    assert str(Replaces(r.call_id, "t2", r.from_tag, False, r.params)) == "c@h;to-tag=t2;from-tag=f"


@pytest.mark.parametrize(
    "text", ["", "abc", "abc;to-tag=1", "abc;from-tag=1", ";to-tag=1;from-tag=2", "abc;=1;to-tag=1;from-tag=2"]
)
def test_replaces_errors(text: str) -> None:
    with pytest.raises(HeaderError):
        parse_replaces(text)


# -- Target-Dialog (RFC 4538) ---------------------------------------------------------------------


def test_target_dialog_parse_serialize() -> None:
    td = parse_target_dialog("090459243588173445@pc.example;local-tag=7553452;remote-tag=31431")
    assert (td.call_id, td.local_tag, td.remote_tag) == ("090459243588173445@pc.example", "7553452", "31431")
    assert str(td) == "090459243588173445@pc.example;local-tag=7553452;remote-tag=31431"


def test_target_dialog_keeps_order_and_other_params() -> None:
    text = "c@h;x-a=1;Remote-Tag=r;local-tag=l;flag"
    td = parse_target_dialog(text)
    assert td.remote_tag == "r" and td.local_tag == "l"
    assert str(td) == text
    assert str(TargetDialog(td.call_id, "l2", td.remote_tag, td.params)) == "c@h;x-a=1;Remote-Tag=r;local-tag=l2;flag"
    assert str(TargetDialog("c@h", "l", "r")) == "c@h;local-tag=l;remote-tag=r"


def test_target_dialog_matches_the_recipients_view() -> None:
    td = TargetDialog("c@h", "mine", "theirs")
    assert td.matches("c@h", "mine", "theirs")
    assert not td.matches("c@h", "theirs", "mine")
    assert not td.matches("d@h", "mine", "theirs")
    assert not td.matches("c@h", "mine", None)


@pytest.mark.parametrize("text", ["", "c@h", "c@h;local-tag=l", "c@h;remote-tag=r", ";local-tag=l;remote-tag=r",
                                  "c@h;local-tag=;remote-tag=r", "c@h;=x;local-tag=l;remote-tag=r"])
def test_target_dialog_errors(text: str) -> None:
    with pytest.raises(HeaderError):
        parse_target_dialog(text)


def test_token_list() -> None:
    assert parse_token_list(["Replaces, 100rel", " Timer ,", "norefersub"]) == [
        "replaces", "100rel", "timer", "norefersub",
    ]


def test_parses_are_remembered_and_refusals_are_not() -> None:
    from b2bua.sip.headers import HeaderError as _HeaderError
    from b2bua.sip.headers import parse_name_addr, parse_via
    from b2bua.sip.uri import forget_parsed, parse_uri

    forget_parsed()
    text = '"Alice" <sip:alice@127.0.0.1:5070>;tag=a1'
    first = parse_name_addr(text)
    assert parse_name_addr(text) is first  # one immutable object for one text
    via = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"
    assert parse_via(via) is parse_via(via)
    assert parse_uri("sip:b2bua@127.0.0.1:5060") is parse_uri("sip:b2bua@127.0.0.1:5060")
    for _ in range(2):  # a refused text raises each time: nothing is remembered for it
        with pytest.raises(_HeaderError):
            parse_name_addr("<sip:alice@127.0.0.1")
    assert parse_name_addr.cache.cache_info().currsize == 1  # type: ignore[attr-defined]
    # A long text is parsed but not remembered: the caches stay small whatever a peer sends.
    long = f'"{"x" * 300}" <sip:alice@127.0.0.1>'
    assert parse_name_addr(long) == parse_name_addr(long) and parse_name_addr(long) is not parse_name_addr(long)
    assert parse_name_addr.cache.cache_info().currsize == 1  # type: ignore[attr-defined]
    forget_parsed()
    for parse in (parse_name_addr, parse_via, parse_uri):
        assert parse.cache.cache_info().currsize == 0  # type: ignore[attr-defined]
    assert parse_name_addr(text) == first and parse_name_addr(text) is not first
