"""REFER parsing, Refer-To with Replaces in both directions, sipfrag, NOTIFY headers and the refer
subscription's rules. REFERs are built from raw text through the real parser, as a peer would send."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b2bua.call.refer import (
    ReferError,
    ReferNotify,
    ReferRequest,
    ReferSubscription,
    notify_headers,
    parse_refer,
    parse_sipfrag,
    refer_to_with_replaces,
    sipfrag,
)
from b2bua.sip.headers import TargetDialog
from b2bua.sip.message import REASONS, Request
from b2bua.sip.parser import ParseError, parse_message
from b2bua.sip.uri import AbsoluteUri, SipUri, parse_uri

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEAD = """\
REFER sip:b2bua@192.0.2.10:5060 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKrefer1
Max-Forwards: 70
From: "Alice" <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b1
Call-ID: call-1@192.0.2.1
CSeq: 7 REFER
Contact: <sip:alice@192.0.2.1:5060>
"""


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def refer_request(extra: str) -> Request:
    """A REFER carrying the header lines in `extra` (written with '\\n' line ends)."""
    m = parse_message(crlf(HEAD + extra + "Content-Length: 0\n\n"))
    assert isinstance(m, Request)
    return m


def ok(extra: str) -> ReferRequest:
    r = parse_refer(refer_request(extra))
    assert isinstance(r, ReferRequest), r
    return r


def refused(extra: str) -> ReferError:
    r = parse_refer(refer_request(extra))
    assert isinstance(r, ReferError), r
    return r


# -- Refer-To forms seen in the wild ----------------------------------------------------------------


@pytest.mark.parametrize("line, target, replaces", [
    # RFC 3891 §3 form, upper-case escapes (Polycom-like)
    ("Refer-To: <sip:1002@pbx.example.com?Replaces=5c1a8e3f-90c2a4d1%40192.168.1.5%3Bto-tag%3Das7c2a8e58"
     "%3Bfrom-tag%3D3e2d1c7f>",
     "sip:1002@pbx.example.com", ("5c1a8e3f-90c2a4d1@192.168.1.5", "as7c2a8e58", "3e2d1c7f", False)),
    # port in the target, numeric tags (Yealink-like)
    ("Refer-To: <sip:1003@10.0.0.1:5060?Replaces=0_2786510915%4010.0.0.2%3Bto-tag%3D1551926562"
     "%3Bfrom-tag%3D3541092958>",
     "sip:1003@10.0.0.1:5060", ("0_2786510915@10.0.0.2", "1551926562", "3541092958", False)),
    # lower-case escapes (Cisco-like)
    ("Refer-To: <sip:2001@10.1.1.1?Replaces=a1b2c3d4-5e6f%4010.1.1.2%3bto-tag%3d98765%3bfrom-tag%3d12345>",
     "sip:2001@10.1.1.1", ("a1b2c3d4-5e6f@10.1.1.2", "98765", "12345", False)),
    # URI parameters before the headers, from-tag first (Zoiper-like)
    ("Refer-To: <sip:103@sip.example.com;transport=UDP?Replaces=ZTk0YmRl%40192.168.0.3%3Bfrom-tag%3Ddef"
     "%3Bto-tag%3Dabc>",
     "sip:103@sip.example.com;transport=UDP", ("ZTk0YmRl@192.168.0.3", "abc", "def", False)),
    # the brief's example, early-only, and the compact form r:
    ("r: <sip:carol@example.com?Replaces=abc%40host%3Bto-tag%3D111%3Bfrom-tag%3D222%3Bearly-only>",
     "sip:carol@example.com", ("abc@host", "111", "222", True)),
    # display name and a Refer-To header parameter around an escaped Replaces
    ('Refer-To: "Carol" <sip:carol@example.com?Replaces=x%40y%3Bto-tag%3D1%3Bfrom-tag%3D2>;x-note=1',
     "sip:carol@example.com", ("x@y", "1", "2", False)),
    # legacy UAs that forget to escape: unambiguous inside angle brackets, so accepted
    ("Refer-To: <sip:carol@example.com?Replaces=abc@host;to-tag=111;from-tag=222>",
     "sip:carol@example.com", ("abc@host", "111", "222", False)),
    # the header name in the URI in another case
    ("Refer-To: <sip:carol@example.com?replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2>",
     "sip:carol@example.com", ("abc@host", "1", "2", False)),
])
def test_attended_transfer_refer_to_forms(line: str, target: str, replaces: tuple[str, str, str, bool]) -> None:
    r = ok(line + "\n")
    assert r.replaces is not None and r.attended
    assert (r.replaces.call_id, r.replaces.to_tag, r.replaces.from_tag, r.replaces.early_only) == replaces
    assert str(r.target) == target
    assert isinstance(r.target, SipUri) and r.target.headers == ()
    assert r.embedded_headers == ()


@pytest.mark.parametrize("line, target", [
    ("Refer-To: sip:carol@example.com", "sip:carol@example.com"),
    ("Refer-To: <sip:carol@example.com>", "sip:carol@example.com"),
    ("r: <sip:carol@example.com>", "sip:carol@example.com"),
    ('Refer-To: "Carol Smith" <sip:+15551230000@example.com;user=phone>;x-param=1',
     "sip:+15551230000@example.com;user=phone"),
    ("Refer-To:   <sips:carol@example.com:5061;transport=tls>  ", "sips:carol@example.com:5061;transport=tls"),
    ("Refer-To: Carol <sip:carol@[2001:db8::7]>", "sip:carol@[2001:db8::7]"),
])
def test_blind_transfer_refer_to_forms(line: str, target: str) -> None:
    r = ok(line + "\n")
    assert r.replaces is None and not r.attended
    assert str(r.target) == target


def test_refer_to_name_addr_is_kept_for_the_caller() -> None:
    r = ok('Refer-To: "Carol" <sip:carol@example.com?Replaces=x%40y%3Bto-tag%3D1%3Bfrom-tag%3D2>;x-note=1\n')
    assert r.refer_to.display_name == "Carol" and r.refer_to.param("x-note") == "1"
    # the URI as received, escapes intact, so a passthrough can relay it byte for byte
    assert str(r.refer_to.uri) == "sip:carol@example.com?Replaces=x%40y%3Bto-tag%3D1%3Bfrom-tag%3D2"


def test_target_drops_method_and_headers_and_keeps_other_embedded_headers() -> None:
    r = ok("Refer-To: <sip:carol@example.com;transport=tcp;method=INVITE?X-Info=hello%20world"
           "&Replaces=c%40h%3Bto-tag%3D1%3Bfrom-tag%3D2&Accept-Contact=*%3Bmobility%3D%22fixed%22>\n")
    assert str(r.target) == "sip:carol@example.com;transport=tcp"  # RFC 3261 §19.1.1 Table 1
    assert r.embedded_headers == (("X-Info", "hello world"), ("Accept-Contact", '*;mobility="fixed"'))
    assert r.replaces is not None and r.replaces.call_id == "c@h"


def test_embedded_header_names_are_canonicalised() -> None:
    r = ok("Refer-To: <sip:carol@example.com?x-custom=1&subject=Hi>\n")
    assert r.embedded_headers == (("x-custom", "1"), ("Subject", "Hi"))


def test_method_invite_in_any_case_is_accepted() -> None:
    for m in ("INVITE", "invite", "Invite"):
        assert str(ok(f"Refer-To: <sip:carol@example.com;method={m}>\n").target) == "sip:carol@example.com"


@pytest.mark.parametrize("method", ["BYE", "REFER", "SUBSCRIBE", "X-CUSTOM"])
def test_non_invite_method_is_refused_403(method: str) -> None:
    assert refused(f"Refer-To: <sip:carol@example.com;method={method}>\n") == ReferError(
        403, "Only INVITE transfers are allowed")


def test_method_parameter_without_value_is_400() -> None:
    assert refused("Refer-To: <sip:carol@example.com;method>\n").status == 400


def test_tel_target_is_accepted_as_is() -> None:
    r = ok("Refer-To: <tel:+1-212-555-0100;phone-context=+1>\n")
    assert r.target == AbsoluteUri("tel", "tel:+1-212-555-0100;phone-context=+1")
    assert r.replaces is None


@pytest.mark.parametrize("uri", ["tel:call-me", "tel:-().", "tel:+", "tel:"])
def test_tel_target_without_a_number_is_400(uri: str) -> None:
    assert refused(f"Refer-To: <{uri}>\n") == ReferError(400, "Malformed tel URI in Refer-To")


@pytest.mark.parametrize("uri", ["http://example.com/transfer", "mailto:carol@example.com",
                                 "urn:service:sos", "im:carol@example.com"])
def test_unsupported_scheme_is_416(uri: str) -> None:
    assert refused(f"Refer-To: <{uri}>\n") == ReferError(416, "Unsupported URI scheme in Refer-To")


# -- refusals of malformed REFERs --------------------------------------------------------------------


def test_missing_refer_to_is_400() -> None:
    assert refused("") == ReferError(400, "Missing Refer-To")
    assert refused("Refer-To: \n") == ReferError(400, "Missing Refer-To")


def test_several_refer_to_values_are_400() -> None:
    two_lines = "Refer-To: <sip:carol@example.com>\nr: <sip:dave@example.com>\n"
    assert refused(two_lines) == ReferError(400, "Multiple Refer-To values")
    one_line = "Refer-To: <sip:carol@example.com>, <sip:dave@example.com>\n"
    assert refused(one_line) == ReferError(400, "Multiple Refer-To values")


def test_commas_inside_brackets_or_quotes_are_not_several_values() -> None:
    r = ok('Refer-To: "Smith, Carol" <sip:carol,smith@example.com>\n')
    assert isinstance(r.target, SipUri) and r.target.user == "carol,smith"


@pytest.mark.parametrize("line", [
    "Refer-To: <sip:carol@example.com",
    "Refer-To: *",
    "Refer-To: carol@example.com",
    "Refer-To: <sip:>",
    'Refer-To: Ca"rol <sip:carol@example.com>',
    "Refer-To: <sip:carol@example.com?Replaces>",
])
def test_malformed_refer_to_is_400(line: str) -> None:
    assert refused(line + "\n") == ReferError(400, "Malformed Refer-To")


@pytest.mark.parametrize("replaces", [
    "abc%40host%3Bto-tag%3D1",  # no from-tag
    "abc%40host%3Bfrom-tag%3D2",  # no to-tag
    "%3Bto-tag%3D1%3Bfrom-tag%3D2",  # no call-id
])
def test_malformed_replaces_is_400(replaces: str) -> None:
    assert refused(f"Refer-To: <sip:carol@example.com?Replaces={replaces}>\n") == ReferError(
        400, "Malformed Replaces in Refer-To")


def test_unescaped_replaces_without_brackets_is_400() -> None:
    # The ';' end the URI in an addr-spec (RFC 3261 §20): the tags become header parameters and the
    # Replaces that is left has no tags. Guessing them back would be reading a different header.
    line = "Refer-To: sip:carol@example.com?Replaces=abc@host;to-tag=111;from-tag=222\n"
    assert refused(line) == ReferError(400, "Malformed Replaces in Refer-To")


def test_escaped_replaces_without_brackets_is_accepted() -> None:
    r = ok("Refer-To: sip:carol@example.com?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2\n")
    assert r.replaces is not None and r.replaces.call_id == "abc@host"


def test_two_replaces_are_400() -> None:
    line = ("Refer-To: <sip:carol@example.com?Replaces=a%40h%3Bto-tag%3D1%3Bfrom-tag%3D2"
            "&Replaces=b%40h%3Bto-tag%3D3%3Bfrom-tag%3D4>\n")
    assert refused(line) == ReferError(400, "Multiple Replaces in Refer-To")


@pytest.mark.parametrize("value", ["a%0D%0AVia:%20SIP/2.0/UDP%20evil", "a%0Ab", "a%00b"])
def test_embedded_header_that_would_break_a_line_is_400(value: str) -> None:
    assert refused(f"Refer-To: <sip:carol@example.com?X-Foo={value}>\n") == ReferError(
        400, "Malformed header in Refer-To")


def test_line_break_smuggled_in_replaces_is_400() -> None:
    line = "Refer-To: <sip:carol@example.com?Replaces=a%40h%3Bto-tag%3D1%3Bfrom-tag%3D2%0D%0AX:%20y>\n"
    assert refused(line).status == 400


def test_embedded_header_name_must_be_a_token() -> None:
    assert refused("Refer-To: <sip:carol@example.com?X%20Y=1>\n") == ReferError(400, "Malformed header in Refer-To")


def test_parse_refer_is_for_refer_only() -> None:
    m = parse_message(crlf(HEAD.replace("REFER", "INVITE") + "Content-Length: 0\n\n"))
    assert isinstance(m, Request)
    with pytest.raises(ValueError):
        parse_refer(m)


# -- Referred-By, Refer-Sub, norefersub, Target-Dialog, CSeq --------------------------------------


def test_referred_by_is_kept_verbatim() -> None:
    value = '"Alice" <sip:alice@example.com>;cid="20398823.2UWQFN309shb3@referrer.example"'
    assert ok(f"Refer-To: <sip:carol@example.com>\nReferred-By: {value}\n").referred_by == value
    assert ok("Refer-To: <sip:carol@example.com>\nb: sip:alice@example.com\n").referred_by == "sip:alice@example.com"


def test_referred_by_absent_unreadable_or_repeated_is_none() -> None:
    base = "Refer-To: <sip:carol@example.com>\n"
    assert ok(base).referred_by is None
    assert ok(base + "Referred-By: <sip:alice@example.com\n").referred_by is None
    assert ok(base + "Referred-By: *\n").referred_by is None
    assert ok(base + "Referred-By: <sip:a@example.com>\nReferred-By: <sip:b@example.com>\n").referred_by is None


@pytest.mark.parametrize("header, refer_sub, wanted, accept", [
    ("", None, True, []),
    ("Refer-Sub: false\n", False, False, [("Refer-Sub", "false")]),
    ("Refer-Sub: FALSE\n", False, False, [("Refer-Sub", "false")]),
    ("Refer-Sub: false;x=1\n", False, False, [("Refer-Sub", "false")]),
    ("Refer-Sub: true\n", True, True, []),
    ("Refer-Sub: maybe\n", None, True, []),  # unreadable: RFC 3515 behaviour, a subscription
    ("Refer-Sub: false\nRefer-Sub: true\n", None, True, []),
])
def test_refer_sub(header: str, refer_sub: bool | None, wanted: bool, accept: list[tuple[str, str]]) -> None:
    r = ok("Refer-To: <sip:carol@example.com>\n" + header)
    assert r.refer_sub is refer_sub
    assert r.subscription_wanted is wanted
    assert r.accept_headers() == accept


@pytest.mark.parametrize("header, expected", [
    ("", False),
    ("Supported: replaces, norefersub\n", True),
    ("k: NoReferSub\n", True),
    ("Require: norefersub\n", True),
    ("Supported: replaces\nSupported: tdialog\n", False),
    ("Supported: norefersubx\n", False),
])
def test_norefersub_option_tag(header: str, expected: bool) -> None:
    assert ok("Refer-To: <sip:carol@example.com>\n" + header).norefersub is expected


def test_target_dialog_is_parsed() -> None:
    r = ok("Refer-To: <sip:carol@example.com>\nTarget-Dialog: 1234@192.0.2.1;local-tag=abc;remote-tag=def\n")
    assert isinstance(r.target_dialog, TargetDialog)
    assert (r.target_dialog.call_id, r.target_dialog.local_tag, r.target_dialog.remote_tag) == (
        "1234@192.0.2.1", "abc", "def")
    # the tags are the recipient's view of the dialog: local-tag is our own tag
    assert r.target_dialog.matches("1234@192.0.2.1", our_local_tag="abc", our_remote_tag="def")
    assert not r.target_dialog.matches("1234@192.0.2.1", our_local_tag="def", our_remote_tag="abc")


@pytest.mark.parametrize("extra, reason", [
    ("Target-Dialog: 1234@h;local-tag=abc\n", "Malformed Target-Dialog"),
    ("Target-Dialog: ;local-tag=a;remote-tag=b\n", "Malformed Target-Dialog"),
    ("Target-Dialog: a@h;local-tag=a;remote-tag=b\nTarget-Dialog: b@h;local-tag=a;remote-tag=b\n",
     "Multiple Target-Dialog values"),
])
def test_bad_target_dialog_is_400(extra: str, reason: str) -> None:
    assert refused("Refer-To: <sip:carol@example.com>\n" + extra) == ReferError(400, reason)


def test_cseq_is_the_event_id_source() -> None:
    assert ok("Refer-To: <sip:carol@example.com>\n").cseq == 7


# -- refer_to_with_replaces ------------------------------------------------------------------------


def test_refer_to_with_replaces_escapes_as_rfc_3891() -> None:
    assert refer_to_with_replaces("sip:carol@example.com", "abc@host", "111", "222") == (
        "<sip:carol@example.com?Replaces=abc%40host%3Bto-tag%3D111%3Bfrom-tag%3D222>")
    assert refer_to_with_replaces("sip:carol@example.com", "abc@host", "111", "222", early_only=True) == (
        "<sip:carol@example.com?Replaces=abc%40host%3Bto-tag%3D111%3Bfrom-tag%3D222%3Bearly-only>")


def test_refer_to_with_replaces_keeps_params_and_other_headers_and_replaces_a_replaces() -> None:
    value = refer_to_with_replaces("sip:carol@example.com;transport=tcp?X-A=1&Replaces=old", "c@h", "t", "f")
    assert value == "<sip:carol@example.com;transport=tcp?X-A=1&Replaces=c%40h%3Bto-tag%3Dt%3Bfrom-tag%3Df>"


@pytest.mark.parametrize("target, call_id, to_tag, from_tag", [
    ("tel:+15550100", "c@h", "t", "f"),
    ("<sip:carol@example.com>", "c@h", "t", "f"),
    ("carol@example.com", "c@h", "t", "f"),
    ("sip:carol@example.com", "c h", "t", "f"),
    ("sip:carol@example.com", "c;h", "t", "f"),
    ("sip:carol@example.com", "", "t", "f"),
    ("sip:carol@example.com", "c@h@i", "t", "f"),
    ("sip:carol@example.com", "c@h", "t;x", "f"),
    ("sip:carol@example.com", "c@h", "t", "f=g"),
    ("sip:carol@example.com", "c@h", "", "f"),
])
def test_refer_to_with_replaces_refuses_what_cannot_round_trip(target: str, call_id: str, to_tag: str,
                                                               from_tag: str) -> None:
    with pytest.raises(ValueError):
        refer_to_with_replaces(target, call_id, to_tag, from_tag)


# RFC 3261 §25.1: Call-ID = word ["@" word]; tags are tokens.
WORD_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~()<>:\\\"/[]?{}"
TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
words = st.text(WORD_CHARS, min_size=1, max_size=16)
call_ids = st.tuples(words, st.none() | words).map(lambda t: t[0] if t[1] is None else f"{t[0]}@{t[1]}")
tags = st.text(TOKEN_CHARS, min_size=1, max_size=16)
targets = st.sampled_from([
    "sip:carol@example.com", "sips:carol@example.com:5061", "sip:pbx.example.com",
    "sip:+15551230000@gw.example.com;user=phone", "sip:carol@[2001:db8::5];transport=tcp",
    "sip:carol@example.com?X-Info=1", "sip:10.0.0.1:5080",
])


@FAST
@given(targets, call_ids, tags, tags, st.booleans())
def test_refer_to_with_replaces_round_trips_through_parse_refer(target: str, call_id: str, to_tag: str,
                                                                from_tag: str, early_only: bool) -> None:
    value = refer_to_with_replaces(target, call_id, to_tag, from_tag, early_only)
    # through the wire format twice: our serializer must not damage what the parser read
    m = refer_request(f"Refer-To: {value}\n")
    again = parse_message(m.serialize())
    assert isinstance(again, Request)
    r = parse_refer(again)
    assert isinstance(r, ReferRequest), r
    assert r.replaces is not None
    assert (r.replaces.call_id, r.replaces.to_tag, r.replaces.from_tag, r.replaces.early_only) == (
        call_id, to_tag, from_tag, early_only)
    base = parse_uri(target)
    assert isinstance(base, SipUri)
    assert r.target == base.without_headers()
    assert r.embedded_headers == tuple((k, v) for k, v in base.headers)


@FAST
@given(st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=["Cs"]), max_size=80))
def test_parse_refer_never_raises_on_garbage_refer_to(garbage: str) -> None:
    for line in (f"Refer-To: {garbage}\n", f"Refer-To: <sip:c@h?{garbage}>\n", f"Refer-To: <sip:c@h;{garbage}>\n",
                 f"Refer-To: <sip:c@h>\nTarget-Dialog: {garbage}\nReferred-By: {garbage}\nRefer-Sub: {garbage}\n"):
        try:
            m = refer_request(line)
        except ParseError:
            continue
        assert isinstance(parse_refer(m), ReferRequest | ReferError)


# -- sipfrag ----------------------------------------------------------------------------------------


def test_sipfrag_is_one_crlf_terminated_status_line() -> None:
    assert sipfrag(100) == b"SIP/2.0 100 Trying\r\n"
    assert sipfrag(200) == b"SIP/2.0 200 OK\r\n"
    assert sipfrag(503) == b"SIP/2.0 503 Service Unavailable\r\n"
    assert sipfrag(603, "Declined") == b"SIP/2.0 603 Declined\r\n"
    assert sipfrag(499) == b"SIP/2.0 499 Client Error\r\n"  # no phrase in the table: the class's


def test_sipfrag_flattens_line_breaks_in_a_relayed_reason() -> None:
    assert sipfrag(486, "Busy\r\nX-Injected: 1") == b"SIP/2.0 486 Busy X-Injected: 1\r\n"
    assert sipfrag(180, "Ringing \u00e9") == "SIP/2.0 180 Ringing \u00e9\r\n".encode()


@pytest.mark.parametrize("status", [0, 99, 700, 1000, -200])
def test_sipfrag_refuses_non_status_codes(status: int) -> None:
    with pytest.raises(ValueError):
        sipfrag(status)


@pytest.mark.parametrize("body, expected", [
    (b"SIP/2.0 100 Trying\r\n", (100, "Trying")),
    (b"SIP/2.0 200 OK", (200, "OK")),  # no line end
    (b"SIP/2.0 180 Ringing\n", (180, "Ringing")),  # bare LF
    (b"SIP/2.0 486 Busy Here\r\nWarning: 399 pbx \"busy\"\r\nContent-Length: 0\r\n\r\n", (486, "Busy Here")),
    (b"SIP/2.0 200 OK\nContact: <sip:carol@192.0.2.5>\n", (200, "OK")),
    (b"\r\nSIP/2.0 603 Declined\r\n", (603, "Declined")),  # a stray blank line first
    (b"sip/2.0 183 Session Progress\r\n", (183, "Session Progress")),
    (b"SIP/2.0 200\r\n", (200, "")),  # empty reason phrase
    (b"SIP/2.0 200 \r\n", (200, "")),
    (b"SIP/2.0  404   Not  Found \r\n", (404, "Not  Found")),
    (b"SIP/2.0 480 Temporarily \xc3\xa9\r\n", (480, "Temporarily \u00e9")),
])
def test_parse_sipfrag_is_tolerant(body: bytes, expected: tuple[int, str]) -> None:
    assert parse_sipfrag(body) == expected


@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"hello", b"INVITE sip:carol@example.com SIP/2.0\r\n", b"SIP/2.0 99 Odd\r\n",
    b"SIP/2.0 700 Nope\r\n", b"SIP/2.0 2000 OK\r\n", b"SIP/2.0 20 OK\r\n", b"SIP/2.0200 OK\r\n",
    b"HTTP/1.1 200 OK\r\n", b"\xff\xfe\x00\x01", b"SIP/2.0 abc OK\r\n",
    b"Content-Type: text/plain\r\n\r\nSIP/2.0 200 OK",
])
def test_parse_sipfrag_rejects_garbage(body: bytes) -> None:
    assert parse_sipfrag(body) is None


@pytest.mark.parametrize("status", sorted(REASONS))
def test_sipfrag_round_trips_every_known_status(status: int) -> None:
    assert parse_sipfrag(sipfrag(status)) == (status, REASONS[status])


@FAST
@given(st.integers(100, 699),
       st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs", "Cc")), max_size=40))
def test_sipfrag_round_trips(status: int, reason: str) -> None:
    assert parse_sipfrag(sipfrag(status, reason)) == (status, reason.strip())


@FAST
@given(st.binary(max_size=200))
def test_parse_sipfrag_never_raises(body: bytes) -> None:
    result = parse_sipfrag(body)
    assert result is None or 100 <= result[0] <= 699


# -- NOTIFY headers ---------------------------------------------------------------------------------


def test_notify_headers_active_with_event_id() -> None:
    assert notify_headers(7, "active", 60) == [
        ("Event", "refer;id=7"),
        ("Subscription-State", "active;expires=60"),
        ("Content-Type", "message/sipfrag;version=2.0"),
    ]


def test_notify_headers_without_event_id_and_pending() -> None:
    assert notify_headers(None, "pending", 30)[:2] == [("Event", "refer"), ("Subscription-State", "pending;expires=30")]


def test_notify_headers_terminated_reasons() -> None:
    assert notify_headers(3, "terminated")[1] == ("Subscription-State", "terminated;reason=noresource")
    assert notify_headers(3, "terminated", reason="timeout")[1] == ("Subscription-State", "terminated;reason=timeout")


@pytest.mark.parametrize("args", [
    (1, "active", None, None),
    (1, "active", -1, None),
    (1, "active", 60, "timeout"),
    (1, "terminated", 60, None),
    (1, "expired", 60, None),
])
def test_notify_headers_refuses_inconsistent_arguments(args: tuple[int, str, int | None, str | None]) -> None:
    with pytest.raises(ValueError):
        notify_headers(*args)


# -- ReferSubscription ------------------------------------------------------------------------------


def state(n: ReferNotify | None) -> str:
    assert n is not None
    return dict(n.headers)["Subscription-State"]


def test_subscription_reports_progress_then_final_once() -> None:
    sub = ReferSubscription(7, now=100.0)
    first = sub.progress(100, 100.0)
    assert first == ReferNotify(
        (("Event", "refer;id=7"), ("Subscription-State", "active;expires=60"),
         ("Content-Type", "message/sipfrag;version=2.0")),
        b"SIP/2.0 100 Trying\r\n", 100, False)
    assert sub.progress(100, 101.0) is None  # the 100 from the target adds nothing
    ringing = sub.progress(180, 110.2)
    assert ringing is not None and ringing.body == b"SIP/2.0 180 Ringing\r\n"
    assert state(ringing) == "active;expires=50"  # time left, rounded up, not the original 60
    assert sub.progress(180, 111.0) is None
    done = sub.final(200)
    assert done is not None and done.terminated and done.body == b"SIP/2.0 200 OK\r\n"
    assert state(done) == "terminated;reason=noresource"
    assert sub.terminated and sub.expires_at is None
    assert sub.final(200) is None and sub.final(486) is None and sub.progress(180, 112.0) is None


def test_subscription_only_the_last_status_counts_as_a_duplicate() -> None:
    sub = ReferSubscription(None, now=0.0)
    sent = [n.status for s in (100, 180, 180, 183, 183, 180, 100) if (n := sub.progress(s, 1.0)) is not None]
    assert sent == [100, 180, 183, 180, 100]
    assert sub.last_status == 100


def test_progress_with_a_final_status_ends_the_subscription() -> None:
    sub = ReferSubscription(9, now=0.0)
    sub.progress(100, 0.0)
    n = sub.progress(486, 5.0, "Busy Here")
    assert n is not None and n.terminated and n.body == b"SIP/2.0 486 Busy Here\r\n"
    assert state(n) == "terminated;reason=noresource"
    assert sub.progress(487, 6.0) is None


def test_final_alone_is_a_complete_minimal_report() -> None:
    sub = ReferSubscription(2, now=0.0)
    n = sub.final(503)
    assert n is not None and n.body == b"SIP/2.0 503 Service Unavailable\r\n" and sub.terminated


def test_relayed_reason_phrase_is_used() -> None:
    sub = ReferSubscription(2, now=0.0)
    n = sub.progress(183, 0.0, "Queued for agent")
    assert n is not None and n.body == b"SIP/2.0 183 Queued for agent\r\n"


def test_no_notifies_when_no_subscription_is_wanted() -> None:
    sub = ReferSubscription(7, now=0.0, wanted=False)
    assert sub.terminated and sub.expires_at is None
    assert sub.progress(100, 0.0) is None
    assert sub.progress(200, 1.0) is None
    assert sub.final(200) is None
    assert sub.handle_timer(1000.0) is None
    assert sub.refresh(60, 1.0) is None


def test_expiry_ends_the_subscription_with_timeout_and_the_latest_status() -> None:
    sub = ReferSubscription(4, now=10.0, expires=30)
    assert sub.expires_at == 40.0
    sub.progress(100, 10.0)
    sub.progress(180, 12.0)
    assert not sub.expired(39.9) and sub.handle_timer(39.9) is None
    assert sub.expired(40.0)
    n = sub.handle_timer(40.0)
    assert n is not None and n.terminated and n.body == b"SIP/2.0 180 Ringing\r\n"
    assert state(n) == "terminated;reason=timeout"
    assert sub.handle_timer(41.0) is None and not sub.expired(41.0)
    assert sub.final(200) is None  # the referrer let it lapse: the answer is not reported


def test_progress_after_expiry_reports_it_in_the_terminating_notify() -> None:
    sub = ReferSubscription(4, now=0.0, expires=60)
    sub.progress(100, 0.0)
    n = sub.progress(180, 60.0)
    assert n is not None and n.status == 180 and state(n) == "terminated;reason=timeout"


def test_expiry_before_any_notify_reports_trying() -> None:
    n = ReferSubscription(4, now=0.0, expires=5).handle_timer(5.0)
    assert n is not None and n.body == b"SIP/2.0 100 Trying\r\n"


def test_refresh_extends_and_renotifies_current_state() -> None:
    sub = ReferSubscription(4, now=0.0, expires=60)
    sub.progress(180, 0.0, "Ringing")
    n = sub.refresh(120, 50.0)
    assert n is not None and not n.terminated and state(n) == "active;expires=120"
    assert n.body == b"SIP/2.0 180 Ringing\r\n"  # sent again: a refresh always gets a NOTIFY
    assert sub.expires_at == 170.0 and not sub.expired(100.0)
    end = sub.refresh(0, 60.0)
    assert end is not None and end.terminated and state(end) == "terminated;reason=timeout"
    assert sub.refresh(60, 61.0) is None  # answer that SUBSCRIBE 481


def test_abandon_ends_silently() -> None:
    sub = ReferSubscription(4, now=0.0)
    sub.progress(100, 0.0)
    sub.abandon()
    assert sub.terminated and sub.final(200) is None and sub.handle_timer(100.0) is None


@pytest.mark.parametrize("bad", [0, -1])
def test_subscription_needs_positive_expires(bad: int) -> None:
    with pytest.raises(ValueError):
        ReferSubscription(1, now=0.0, expires=bad)


def test_subscription_refuses_non_status_codes() -> None:
    sub = ReferSubscription(1, now=0.0)
    with pytest.raises(ValueError):
        sub.progress(99, 0.0)
    with pytest.raises(ValueError):
        sub.final(700)
    with pytest.raises(ValueError):
        sub.refresh(-1, 0.0)
