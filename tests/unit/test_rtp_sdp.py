"""SDP: exact round trips, reading c=/m=/direction/a=rtcp, and token-level rewrites."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp_relay.sdp import Connection, SdpError, SessionDescription

OFFER = (
    "v=0\r\n"
    "o=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\n"
    "s=call\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "t=0 0\r\n"
    "a=tool:x-unknown session attribute\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "b=AS:64\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=rtcp:49171 IN IP4 192.0.2.10\r\n"
    "a=x-vendor-thing:42\r\n"
    "a=sendrecv\r\n"
    "m=video 51372/2 RTP/AVP 99\r\n"
    "c=IN IP4 198.51.100.7/127\r\n"
    "a=rtpmap:99 h263-1998/90000\r\n"
    "a=recvonly\r\n"
)


def test_unmodified_round_trip_is_exact() -> None:
    for text in (OFFER, OFFER.replace("\r\n", "\n"), OFFER.rstrip("\r\n"), OFFER + "\r\n"):
        assert SessionDescription.parse(text.encode()).serialize() == text.encode()


def test_non_utf8_bytes_survive() -> None:
    raw = OFFER.replace("s=call", "s=caf\xe9").encode("latin-1")
    assert SessionDescription.parse(raw).serialize() == raw


def test_reading() -> None:
    sdp = SessionDescription.parse(OFFER)
    assert len(sdp.media) == 2
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == ("audio", 49170, "RTP/AVP", ("0", "8", "101"))
    assert (video.port, video.port_count) == (51372, 2)
    assert sdp.connection == Connection("IN", "IP4", "192.0.2.10")
    assert sdp.connection_for(0).address == "192.0.2.10"  # inherited from session level
    assert sdp.connection_for(1) == Connection("IN", "IP4", "198.51.100.7", "/127")
    assert sdp.direction(0) == "sendrecv" and sdp.direction(1) == "recvonly"
    assert sdp.rtcp_for(0) == ("192.0.2.10", 49171)
    assert sdp.rtcp_for(1) == ("198.51.100.7", 51373)
    assert audio.attribute("fmtp") == "101 0-15"
    assert audio.clock_rate() == 8000 and video.clock_rate() == 90000
    assert audio.clock_rate(101) == 8000
    assert sdp.origin_address == "192.0.2.10"
    assert sdp.session_attribute("tool") == "x-unknown session attribute"


def test_rewrite_session_and_media_level() -> None:
    sdp = SessionDescription.parse(OFFER)
    sdp.set_connection_address("203.0.113.5")
    sdp.media[0].port = 30000
    sdp.media[0].set_rtcp(30001, "203.0.113.5")
    sdp.media[1].port = 30002
    sdp.set_origin_address("203.0.113.5")
    out = sdp.serialize().decode()
    expected = (OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 203.0.113.5")
                .replace("IN IP4 192.0.2.10\r\ns=", "IN IP4 203.0.113.5\r\ns=")
                .replace("m=audio 49170 ", "m=audio 30000 ")
                .replace("a=rtcp:49171 IN IP4 192.0.2.10", "a=rtcp:30001 IN IP4 203.0.113.5")
                .replace("m=video 51372/2 ", "m=video 30002/2 ")
                .replace("c=IN IP4 198.51.100.7/127", "c=IN IP4 203.0.113.5/127"))
    assert out == expected
    # everything else kept, in order
    assert "a=x-vendor-thing:42\r\na=sendrecv" in out and "a=fmtp:101 0-15" in out


def test_rewrite_to_ipv6_changes_addr_type() -> None:
    sdp = SessionDescription.parse(OFFER)
    sdp.set_connection_address("2001:db8::1")
    assert sdp.connection == Connection("IN", "IP6", "2001:db8::1")


@pytest.mark.parametrize("direction_line, conn, hold", [
    ("a=sendonly", "192.0.2.10", True),
    ("a=inactive", "192.0.2.10", True),
    ("a=recvonly", "192.0.2.10", False),
    ("a=sendrecv", "0.0.0.0", True),  # RFC 2543 hold
    ("a=sendrecv", "192.0.2.10", False),
])
def test_hold_detection(direction_line: str, conn: str, hold: bool) -> None:
    text = OFFER.replace("a=sendrecv", direction_line).replace("c=IN IP4 192.0.2.10", f"c=IN IP4 {conn}")
    assert SessionDescription.parse(text).is_hold(0) is hold


def test_session_level_direction_is_inherited() -> None:
    text = OFFER.replace("a=sendrecv\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    sdp = SessionDescription.parse(text)
    assert sdp.direction(0) == "sendonly" and sdp.direction(1) == "recvonly"
    sdp.media[0].set_direction("inactive")
    assert sdp.direction(0) == "inactive"


def test_port_zero_and_rtcp_mux() -> None:
    text = OFFER.replace("m=video 51372/2", "m=video 0").replace("a=sendrecv", "a=rtcp-mux")
    text = text.replace("a=rtcp:49171 IN IP4 192.0.2.10\r\n", "")
    sdp = SessionDescription.parse(text)
    assert sdp.media[1].disabled and sdp.rtcp_for(1) is None
    assert sdp.rtcp_for(0) == ("192.0.2.10", 49170)


@pytest.mark.parametrize("bad", [
    "", "o=x\r\nv=0\r\n", "v=0\r\nthis is not sdp\r\n", "v=0\r\nm=audio\r\n", "v=0\r\nm=audio x RTP/AVP 0\r\n",
    "v=0\r\nc=IN IP4\r\n", "v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
])
def test_malformed(bad: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(bad)


line = st.sampled_from(["a=foo:bar", "a=sendonly", "b=AS:64", "i=info text", "a=rtcp:9", "k=clear:x", "a=x y  z"])


@settings(max_examples=100, deadline=None)
@given(st.lists(line, max_size=5), st.lists(st.tuples(st.integers(0, 65535), st.lists(line, max_size=4)), max_size=3),
       st.sampled_from(["\r\n", "\n"]))
def test_round_trip_property(session: list[str], media: list[tuple[int, list[str]]], eol: str) -> None:
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0", *session]
    for port, attrs in media:
        lines += [f"m=audio {port} RTP/AVP 0", *attrs]
    text = eol.join(lines) + eol
    sdp = SessionDescription.parse(text)
    assert sdp.to_text() == text
    assert len(sdp.media) == len(media)


def test_line_ends_are_kept_as_written_and_only_cr_lf_end_a_line() -> None:
    # CRLF, bare LF, bare CR and a missing last end; a form feed and U+2028 inside a value are
    # characters of that line, not line ends (str.splitlines would break on them).
    text = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\ns=a\x0cb\u2028c\rc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0"
    sdp = SessionDescription.parse(text.encode("utf-8"))
    assert [line.eol for line in sdp.session] == ["\r\n", "\n", "\r", "\r\n", "\r\n"]
    assert sdp.session[2].value == "a\x0cb\u2028c"
    assert sdp.serialize() == text.encode("utf-8")
    plain = SessionDescription.parse(b"v=0\r\ns=-\r\n\r\nt=0 0\n")
    assert [(line.type, line.eol) for line in plain.session] == [
        ("v", "\r\n"), ("s", "\r\n"), ("", "\r\n"), ("t", "\n")]
