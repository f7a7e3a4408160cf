"""answer_with: an SDP answer to one offer made from another party's SDP (call pickup)."""

from __future__ import annotations

from b2bua.media.answer import answer_with
from rtp_relay.sdp import SessionDescription

OFFER = ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
         "m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
         "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
SOURCE = ("v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
          "m=audio 30000 RTP/AVP 0 18 100\r\na=rtpmap:100 telephone-event/8000\r\na=fmtp:100 0-15\r\n"
          "a=sendrecv\r\na=ptime:20\r\n")


def test_common_formats_in_the_offers_numbers_and_unmatched_streams_rejected():
    answer = SessionDescription.parse(answer_with(OFFER.encode(), SOURCE.encode()))
    audio, video = answer.media
    assert audio.port == 30000 and audio.formats == ("0", "101")
    assert audio.attribute("rtpmap") == "101 telephone-event/8000"
    assert ("fmtp", "101 0-15") in list(audio.attributes())
    assert audio.attribute("ptime") == "20" and audio.direction == "sendrecv"
    assert video.port == 0 and video.media == "video"  # the source has no video: rejected
    assert answer.connection is not None and answer.connection.address == "127.0.0.1"


def test_the_direction_answers_the_offers():
    held = OFFER.replace("m=video", "a=sendonly\r\nm=video")
    answer = SessionDescription.parse(answer_with(held.encode(), SOURCE.encode()))
    assert answer.media[0].direction == "recvonly"
    inactive = SOURCE.replace("a=sendrecv", "a=sendonly")
    answer = SessionDescription.parse(answer_with(held.encode(), inactive.encode()))
    assert answer.media[0].direction == "inactive"


def test_no_common_codec_rejects_the_stream():
    only_g729 = SOURCE.replace("RTP/AVP 0 18 100", "RTP/AVP 18")
    answer = SessionDescription.parse(answer_with(OFFER.encode(), only_g729.encode()))
    assert answer.media[0].port == 0
