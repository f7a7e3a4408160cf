"""parse_message on well-formed, tortuous and malformed input; StreamFramer on byte streams.

The messages are our own, modelled on the kinds of cases in RFC 4475 (SIP torture tests).
"""

from __future__ import annotations

import pytest

from b2bua.sip.headers import parse_name_addr, parse_replaces
from b2bua.sip.message import Request, Response
from b2bua.sip.parser import FramingError, ParseError, StreamFramer, parse_message
from b2bua.sip.uri import SipUri


def crlf(text: str) -> bytes:
    """Test messages are written with '\n' line ends; the wire wants CRLF."""
    return text.replace("\n", "\r\n").encode()


def req(text: str) -> Request:
    m = parse_message(crlf(text))
    assert isinstance(m, Request)
    return m


def core_accessors_work(m: Request) -> None:
    assert m.vias and m.top_via is m.vias[0]
    _ = (m.cseq, m.call_id, m.from_, m.to, m.from_tag, m.to_tag, m.max_forwards, m.branch)


BASIC = """\
OPTIONS sip:carol@chicago.example.org SIP/2.0
Via: SIP/2.0/UDP host1.example.net:5060;branch=z9hG4bKop1
Max-Forwards: 70
To: <sip:carol@chicago.example.org>
From: "Dan" <sip:dan@example.net>;tag=d1
Call-ID: opt-1@host1.example.net
CSeq: 1 OPTIONS
Content-Length: 0

"""


def test_basic_request() -> None:
    m = req(BASIC)
    assert m.method == "OPTIONS" and str(m.uri) == "sip:carol@chicago.example.org"
    assert m.body == b"" and m.max_forwards == 70 and m.from_tag == "d1" and m.to_tag is None
    core_accessors_work(m)
    assert parse_message(m.serialize()).serialize() == m.serialize()


TORTUOUS = """\
INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"""


def test_tortuous_invite() -> None:
    m = req(TORTUOUS)
    core_accessors_work(m)
    assert m.max_forwards == 68
    assert m.cseq.seq == 9 and m.cseq.method == "INVITE"
    assert m.to_tag == "1918181833n" and m.from_tag == "98asjd8"
    assert m.from_.display == '"J Rosenberg \\\\\\""'
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert [(v.transport, v.host) for v in m.vias] == [
        ("UDP", "192.0.2.2"), ("TCP", "spindle.example.com"), ("UDP", "192.168.255.111"),
    ]
    assert m.vias[2].branch == "z9hG4bK30239"
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.headers.get("Subject") == ""
    c = m.contacts[0]
    assert c.param("newparam") == "newvalue" and c.param("q") == "0.33" and "secondparam" in dict(c.params)
    assert len(m.body) == 150 and m.body.endswith(b"a=rtpmap:31 LPC\r\n")
    again = parse_message(m.serialize())
    assert again.serialize() == m.serialize()
    assert list(again.headers.remove("l")) == list(m.headers.remove("l"))


def test_odd_method_token_and_header_names() -> None:
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    m = req(f"""\
{method} sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,;;*:&it=should(be)+valid@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="w;tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}}{{
CSeq: 139122385 {method}
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb
Content-Length: 0

""".encode("latin-1").decode("utf-8", "surrogateescape"))
    core_accessors_work(m)
    assert m.method == method and m.cseq.method == method
    assert isinstance(m.uri, SipUri) and m.uri.host == "example.com"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.headers.get("extensionHeader-!.%*+_`'~") is not None
    assert parse_message(m.serialize()).serialize() == m.serialize()


def test_escaped_request_uri_and_user() -> None:
    m = req(BASIC.replace("sip:carol@chicago.example.org SIP", "sip:sips%3Auser%40example.com@example.net SIP"))
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "sips%3Auser%40example.com" and m.uri.user_unescaped == "sips:user@example.com"
    assert m.serialize().startswith(b"OPTIONS sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n")


def test_escaped_nul_in_user_and_semicolon_user() -> None:
    m = req(BASIC.replace("sip:carol@chicago.example.org SIP", "sip:null-%00-null@example.com SIP"))
    assert m.uri.user_unescaped == "null-\x00-null"  # type: ignore[union-attr]
    m = req(BASIC.replace("sip:carol@chicago.example.org SIP", "sip:user;par=u%40example.net@example.com SIP"))
    assert m.uri.host == "example.com"  # type: ignore[union-attr]


def test_ipv6_everywhere() -> None:
    m = req("""\
REGISTER sip:[2001:db8::10] SIP/2.0
To: sip:user@[2001:db8::10]
From: sip:user@[2001:db8::10];tag=81x2
Via: SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas3-111;received=2001:db8::9:255
Call-ID: SSG9559905523997077@hlau_4100
Max-Forwards: 70
Contact: "Caller" <sip:caller@[2001:db8::9:1]:5070>
CSeq: 98176 REGISTER
Content-Length: 0

""")
    assert m.top_via.host == "[2001:db8::9:1]" and m.top_via.port == 5070
    assert m.top_via.param("received") == "2001:db8::9:255"
    assert m.from_tag == "81x2" and m.from_.uri.host == "[2001:db8::10]"  # type: ignore[union-attr]
    assert m.contacts[0].uri.port == 5070  # type: ignore[union-attr]


def test_refer_to_with_replaces_round_trips_exactly() -> None:
    refer_to = "<sip:bob@b.example.org?Replaces=abc-1%40a.example%3Bto-tag%3D7%3Bfrom-tag%3D8%3Bearly-only>"
    m = req(BASIC.replace("OPTIONS", "REFER").replace("Content-Length: 0", f"Refer-To: {refer_to}\nContent-Length: 0"))
    assert m.headers.get("r") == refer_to
    assert f"Refer-To: {refer_to}\r\n".encode() in m.serialize()
    target = parse_name_addr(m.headers.get("Refer-To") or "").sip_uri
    assert str(target) == refer_to[1:-1]
    rep = parse_replaces(target.header("Replaces") or "")
    assert (rep.call_id, rep.to_tag, rep.from_tag, rep.early_only) == ("abc-1@a.example", "7", "8", True)


MULTIPART_BODY = (
    b"--boundary42\r\n"
    b"Content-Type: application/sdp\r\n\r\n"
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\r\n"
    b"--boundary42\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n"
    b"\x00\xff\r\n\r\n\xfe binary\r\n"
    b"--boundary42--\r\n"
)


def test_multipart_body_passthrough() -> None:
    head = crlf(BASIC.replace("OPTIONS", "INVITE").replace("Content-Length: 0\n\n", ""))
    data = (
        head
        + b'Content-Type: multipart/mixed;boundary="boundary42"\r\n'
        + b"Content-Length: %d\r\n\r\n" % len(MULTIPART_BODY)
        + MULTIPART_BODY
    )
    m = parse_message(data)
    assert m.body == MULTIPART_BODY
    assert m.headers.get("Content-Type") == 'multipart/mixed;boundary="boundary42"'
    assert parse_message(m.serialize()).body == MULTIPART_BODY
    assert m.serialize() == data


def test_content_length_shorter_than_datagram_truncates() -> None:
    data = crlf(BASIC.replace("Content-Length: 0", "Content-Length: 4")) + b"v=0\r\nEXTRA JUNK"
    assert parse_message(data).body == b"v=0\r"


def test_missing_content_length_takes_rest_of_datagram() -> None:
    data = crlf(BASIC.replace("Content-Length: 0\n", "")) + b"body\r\n\r\nmore"
    assert parse_message(data).body == b"body\r\n\r\nmore"


def test_content_length_zero_drops_trailing_bytes() -> None:
    assert parse_message(crlf(BASIC) + b"garbage").body == b""


def test_leading_crlfs_and_bare_lf() -> None:
    m = parse_message(b"\r\n\r\n\n" + crlf(BASIC))
    assert isinstance(m, Request) and m.method == "OPTIONS"
    m2 = parse_message(BASIC.encode() + b"body")
    assert m2.headers == m.headers
    assert m2.body == b""  # Content-Length: 0
    mixed = BASIC.replace("Content-Length: 0\n\n", "Content-Length: 2\n\r\nab").encode()
    assert parse_message(mixed).body == b"ab"


def test_message_without_blank_line() -> None:
    m = parse_message(crlf(BASIC).rstrip(b"\r\n"))
    assert isinstance(m, Request) and m.body == b""


def test_compact_forms_and_comma_combined_vias() -> None:
    m = req("""\
BYE sip:b@h SIP/2.0
v: SIP/2.0/UDP a;branch=z9hG4bK1,SIP/2.0/TCP b:5061;branch=z9hG4bK2
Via: SIP/2.0/UDP c;branch=z9hG4bK3
f: <sip:a@h>;tag=1
t: <sip:b@h>;tag=2
i: c1
CSeq: 2 BYE
l: 0

""")
    assert [v.branch for v in m.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert m.to_tag == "2" and m.call_id == "c1" and m.max_forwards is None
    assert b"\r\nFrom: <sip:a@h>;tag=1\r\n" in m.serialize()


def test_lowercase_version_accepted_and_trailing_space() -> None:
    assert req(BASIC.replace(" SIP/2.0\n", " sip/2.0\n")).version == "SIP/2.0"
    assert req(BASIC.replace(" SIP/2.0\n", " SIP/2.0  \n")).method == "OPTIONS"
    # Extra SP between the elements is tolerated (RFC 4475 §3.1.2.7 allows either answer).
    assert str(req(BASIC.replace("OPTIONS sip:", "OPTIONS  sip:")).uri) == "sip:carol@chicago.example.org"


def test_responses() -> None:
    data = crlf("""\
SIP/2.0 200 OK, really \xe2\x9c\x93
Via: SIP/2.0/UDP host1.example.net:5060;branch=z9hG4bKop1;received=192.0.2.9
To: <sip:carol@chicago.example.org>;tag=93810874
From: "Dan" <sip:dan@example.net>;tag=d1
Call-ID: opt-1@host1.example.net
CSeq: 1 OPTIONS
Contact: <sip:carol@cheap.example.org>

""".encode("latin-1").decode("utf-8"))
    m = parse_message(data)
    assert isinstance(m, Response)
    assert m.status == 200 and m.reason == "OK, really \u2713" and m.to_tag == "93810874"
    assert parse_message(m.serialize()).serialize() == m.serialize()
    empty_reason = parse_message(data.replace("200 OK, really \u2713".encode(), b"100 "))
    assert isinstance(empty_reason, Response) and empty_reason.reason == ""


# -- malformed requests: answered ------------------------------------------------------------------


def bad(text: str | bytes) -> ParseError:
    data = crlf(text) if isinstance(text, str) else text
    with pytest.raises(ParseError) as info:
        parse_message(data)
    return info.value


def without(header: str) -> str:
    return "".join(line + "\n" for line in BASIC.split("\n")[:-1] if not line.startswith(header + ":"))


@pytest.mark.parametrize(
    ("text", "status", "words"),
    [
        (BASIC.replace(" SIP/2.0\n", " SIP/7.0\n", 1), 505, "version"),
        (BASIC.replace(" SIP/2.0\n", " HTTP/1.1\n", 1), 400, "request line"),
        (BASIC.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"), 400, "cseq method"),
        (BASIC.replace("CSeq: 1 OPTIONS", "CSeq: 1"), 400, "cseq"),
        (BASIC.replace("CSeq: 1 OPTIONS", "CSeq: 4294967296 OPTIONS"), 400, "cseq"),
        (BASIC.replace("CSeq: 1 OPTIONS", "CSeq: \u00b9 OPTIONS"), 400, "cseq"),
        (without("Call-ID"), 400, "missing call-id"),
        (without("From"), 400, "missing from"),
        (without("To"), 400, "missing to"),
        (without("CSeq"), 400, "missing cseq"),
        (BASIC.replace("Call-ID: opt-1@host1.example.net", "Call-ID:"), 400, "call-id"),
        (BASIC.replace("Max-Forwards: 70", "Max-Forwards: 256"), 400, "max-forwards"),
        (BASIC.replace("Max-Forwards: 70", "Max-Forwards: seventy"), 400, "max-forwards"),
        (BASIC.replace("Max-Forwards: 70", "Max-Forwards: \u0667"), 400, "max-forwards"),
        (BASIC.replace("Max-Forwards: 70", "Max-Forwards: -1"), 400, "max-forwards"),
        (BASIC.replace("sip:carol@chicago.example.org SIP", "sip:carol@chicago.example.org:99999 SIP"), 400,
         "request-uri"),
        (BASIC.replace("sip:carol@chicago.example.org SIP", "<sip:carol@chicago.example.org> SIP"), 400,
         "request-uri"),
        (BASIC.replace("sip:carol@chicago.example.org SIP", "sip:carol@chicago.example.org; lr SIP"), 400,
         "request-uri"),
        (BASIC.replace("sip:carol@chicago.example.org SIP", "sip:user name@example.org SIP"), 400, "request-uri"),
        (BASIC.replace("OPTIONS sip:carol@chicago.example.org SIP/2.0", "OPTIONS sip:carol@chicago.example.org"),
         400, "request line"),
        (BASIC.replace('"Dan" <sip:dan@example.net>', '"Dan <sip:dan@example.net>'), 400, "from"),
        (BASIC.replace("To: <sip:carol@chicago.example.org>", "To: <sip:carol@chicago.example.org"), 400, "to"),
        (BASIC.replace("Content-Length: 0", "Content-Length: 10"), 400, "content-length"),
        (BASIC.replace("Content-Length: 0", "Content-Length: zero"), 400, "content-length"),
        (BASIC.replace("Content-Length: 0", "Content-Length: " + "9" * 5000), 400, "content-length"),
        (BASIC.replace("Max-Forwards: 70", "Max-Forwards 70"), 400, "header line"),
        (BASIC.replace("Max-Forwards: 70", "Bad Header: 70"), 400, "header line"),
        (BASIC.replace("Call-ID: opt-1", "Call-ID: two\nCall-ID: opt-1"), 400, "multiple call-id"),
        (BASIC.replace("To: <sip:", "To: <sip:a@b>\nTo: <sip:"), 400, "multiple to"),
    ],
)
def test_malformed_requests_are_answered(text: str, status: int, words: str) -> None:
    err = bad(text)
    assert err.status == status and err.answerable
    assert words in err.reason.lower()
    assert err.request is not None
    core_via = err.request.top_via
    assert core_via.branch == "z9hG4bKop1"
    # The reason goes on the wire as a reason phrase: no quotes, brackets, CR or LF.
    assert not any(c in err.reason for c in '"<>\\\r\n')


def test_malformed_ack_is_dropped() -> None:
    text = BASIC.replace("OPTIONS", "ACK").replace("CSeq: 1 ACK", "CSeq: 1 BYE")
    err = bad(text)
    assert err.status == 0 and not err.answerable and "cseq" in err.reason.lower()


# -- malformed: dropped ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        crlf(without("Via")),
        crlf(BASIC.replace("Via: SIP/2.0/UDP host1.example.net:5060;branch=z9hG4bKop1", "Via: SIP/2.0/UDP")),
        crlf(BASIC.replace("host1.example.net:5060;", "host1.example.net:5060:1;")),
        crlf(BASIC.replace("Max-Forwards: 70", "Via: garbage")),
        crlf(BASIC.replace("OPTIONS sip:", "OPT\x01IONS sip:")),
        crlf(BASIC.replace("OPTIONS", "OPT<IONS", 1)),
        b"SIP/2.0 200\r\n\r\n",
        b"SIP/2.0 20 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        crlf("SIP/2.0 4294967301 better not break the receiver\n" + BASIC.split("\n", 1)[1]),
        crlf("SIP/2.0 099 Too Low\n" + BASIC.split("\n", 1)[1]),
        crlf("SIP/2.0 2\u00b900 OK\n" + BASIC.split("\n", 1)[1]),
        crlf("SIP/3.0 200 OK\n" + BASIC.split("\n", 1)[1]),
        crlf("SIP/2.0 200 OK\n" + without("Call-ID").split("\n", 1)[1]),
        crlf("SIP/2.0 200 OK\n" + without("CSeq").split("\n", 1)[1]),
        crlf("SIP/2.0 200 OK\n" + without("Via").split("\n", 1)[1]),
        crlf("SIP/2.0 200 OK\n" + BASIC.replace("Content-Length: 0", "Content-Length: 9").split("\n", 1)[1]),
        crlf("SIP/2.0 200 OK\n" + BASIC.replace("To: <", "To <").split("\n", 1)[1]),
        crlf("SIP/2.0 200 OK\n continuation first\n" + BASIC.split("\n", 1)[1]),
        b"\x00\xff\xfe garbage",
    ],
)
def test_unanswerable_messages_are_dropped(data: bytes) -> None:
    err = bad(data)
    assert err.status == 0 and not err.answerable and err.reason


def test_parse_error_str_has_detail() -> None:
    err = bad(BASIC.replace("Max-Forwards: 70", "Max-Forwards: 7x"))
    assert err.reason == "Malformed Max-Forwards header" and err.kind == "max-forwards"
    assert "7x" in str(err) and "7x" in err.detail


# -- StreamFramer ---------------------------------------------------------------------------------

STREAM_MSG = crlf(BASIC.replace("Content-Length: 0", "Content-Length: 5")) + b"ab\r\nc"


def test_framer_every_split_point() -> None:
    data = STREAM_MSG + STREAM_MSG
    for cut in range(len(data) + 1):
        f = StreamFramer()
        out = f.feed(data[:cut]) + f.feed(data[cut:])
        assert out == [STREAM_MSG, STREAM_MSG], cut
        assert f.pending == 0


def test_framer_byte_by_byte_and_pings() -> None:
    data = b"\r\n\r\n" + STREAM_MSG + b"\r\n" + STREAM_MSG + b"\r\n\r\n"
    f = StreamFramer()
    out: list[bytes] = []
    for i in range(len(data)):
        out += f.feed(data[i : i + 1])
    assert out == [StreamFramer.KEEPALIVE_PING, STREAM_MSG, STREAM_MSG, StreamFramer.KEEPALIVE_PING]
    assert f.pending == 0


def test_framer_many_in_one_feed_and_parse() -> None:
    f = StreamFramer()
    out = f.feed(STREAM_MSG * 3 + STREAM_MSG[:10])
    assert out == [STREAM_MSG] * 3 and f.pending == 10
    assert [parse_message(x).body for x in out] == [b"ab\r\nc"] * 3
    assert f.feed(STREAM_MSG[10:]) == [STREAM_MSG]


def test_framer_compact_content_length() -> None:
    msg = crlf(BASIC.replace("Content-Length: 0", "l  :  2")) + b"hi"
    assert StreamFramer().feed(msg + msg) == [msg, msg]


def test_framer_lone_crlf_then_message() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n") == []
    assert f.feed(STREAM_MSG) == [STREAM_MSG]


@pytest.mark.parametrize(
    "data",
    [
        crlf(BASIC.replace("Content-Length: 0\n", "")),
        crlf(BASIC.replace("Content-Length: 0", "Content-Length: abc")),
        crlf(BASIC.replace("Content-Length: 0", "Content-Length: " + "1" * 5000)),
        crlf(BASIC.replace("Content-Length: 0", "Content-Length: 70000")),
    ],
)
def test_framer_errors(data: bytes) -> None:
    with pytest.raises(FramingError):
        StreamFramer().feed(data)


def test_framer_oversize_header_section() -> None:
    f = StreamFramer(max_message_size=1000)
    with pytest.raises(FramingError):
        for _ in range(20):
            f.feed(b"X-Filler: " + b"a" * 80 + b"\r\n")
