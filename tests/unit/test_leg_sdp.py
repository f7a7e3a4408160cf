"""LegSdp.outgoing: our o= line written into the SDP a leg sends, the rest left byte for byte."""

from __future__ import annotations

import pytest

from b2bua.media.leg_sdp import LegSdp, SdpError
from rtp_relay.sdp import SessionDescription

BODY = ("v=0\r\no=caller 1001 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 6000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


def origin_of(body: bytes) -> list[str]:
    line = next(ln for ln in body.decode().splitlines() if ln.startswith("o="))
    return line[2:].split()


@pytest.mark.parametrize("eol", ["\r\n", "\n", "\r"])
def test_only_the_origin_changes_whatever_the_line_ends(eol: str) -> None:
    body = BODY.replace("\r\n", eol).encode()
    leg = LegSdp()
    out = leg.outgoing(body)
    assert origin_of(out) == ["-", str(leg.session_id), str(leg.version), "IN", "IP4", "127.0.0.1"]
    before, _, after = body.partition(b"o=caller 1001 1 IN IP4 192.0.2.7" + eol.encode())
    assert out.startswith(before) and out.endswith(after)
    assert leg.local == out


def test_the_version_goes_up_exactly_when_the_content_changed() -> None:
    leg = LegSdp()
    first = origin_of(leg.outgoing(BODY.encode()))
    # Another origin from the far side is not a change of content: same version.
    same = origin_of(leg.outgoing(BODY.replace("o=caller 1001 1", "o=other 5 9").encode()))
    changed = origin_of(leg.outgoing(BODY.replace("6000", "6002").encode()))
    assert same == first
    assert changed[:2] == first[:2] and int(changed[2]) == int(first[2]) + 1


def test_the_callers_parse_is_used_as_given() -> None:
    body = BODY.encode()
    leg_a, leg_b = LegSdp(), LegSdp()
    leg_b.session_id = leg_b.version = leg_a.session_id
    assert leg_a.outgoing(body, SessionDescription.parse(body)) == leg_b.outgoing(body)


def test_the_origin_names_a_usable_address() -> None:
    held = BODY.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0").encode()
    assert origin_of(LegSdp().outgoing(held))[-1] == "192.0.2.7"  # the old o= address


def test_no_origin_is_refused() -> None:
    with pytest.raises(SdpError):
        LegSdp().outgoing(BODY.replace("o=caller 1001 1 IN IP4 192.0.2.7\r\n", "").encode())
